"""TensorFlow's oneDNN kernels on this CPU: training and attack steps with ``TF_ENABLE_ONEDNN_OPTS`` 0 and 1.

TensorFlow turns its oneDNN kernels on by default only on x86 CPUs with
AVX-512 VNNI, BF16 or AMX; elsewhere (for example AVX2-only AMD EPYC) it uses
its Eigen kernels unless ``TF_ENABLE_ONEDNN_OPTS=1`` is set before TensorFlow
is imported. The switch can only be read at import, so every measurement runs
in a child process per setting, the settings alternating round by round (the
machine may be shared; the ratio of each round's pair is what counts):

* ``trades_wrn16_4_32px``: one TRADES ``AdversarialTrainer`` step (10 attack
  steps, batch 64, WRN-16-4, 32x32x3), the setting of
  ``train_step_throughput.py``;
* ``pgd_at_wrn10_1_16px``: one PGD-AT step (5 attack steps, batch 64,
  WRN-10-1, 16x16x1), the studies' CPU setting in examples/;
* ``input_gradient_wrn16_4_32px``: a forward and input-gradient pass of the
  WRN-16-4 on 32 points, the inner step of every attack.

Each child reports the median of ``--steps`` timed calls after one warm-up
call. The table gives the median per setting over ``--rounds`` rounds and the
speed-up ``off / on``.

Usage:
    python benchmarks/onednn_speed.py                       # 3 rounds: about 30 minutes on 2 busy cores
    python benchmarks/onednn_speed.py --rounds=1 --steps=3  # about 7 minutes beside another job
    python benchmarks/onednn_speed.py --quick    # smoke test
Writes benchmarks/results/onednn_speed.json (or --output).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

from _machine import define_common_flags, machine_facts, write_json
from absl import app, flags

FLAGS = flags.FLAGS
define_common_flags("onednn_speed", "Tiny configuration (one round, small models and batches).")
flags.DEFINE_integer("rounds", 3, "Alternating rounds (one child process per setting and round).")
flags.DEFINE_integer("steps", 5, "Timed calls per measurement in a child.")
flags.DEFINE_string("child", None, "Internal: run the measurements in this process and print JSON.")

MEASUREMENTS = ("trades_wrn16_4_32px", "pgd_at_wrn10_1_16px", "input_gradient_wrn16_4_32px")


def _child(quick, steps):
    """Runs in a fresh process (the oneDNN switch is read when TensorFlow is imported)."""
    import time

    import keras
    import numpy as np
    import tensorflow as tf

    from tfnorms.attacks import PGD
    from tfnorms.models import wide_resnet
    from tfnorms.training import AdversarialTrainer

    def median_seconds(call):
        call()
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    rng = np.random.default_rng(0)

    def train_step(method, depth, width, shape, attack_steps, batch):
        keras.utils.set_random_seed(0)
        model = wide_resnet(depth, width, num_classes=10, input_shape=shape)
        attack = PGD(0.031, 0.007, attack_steps, loss="kl" if method == "trades" else "ce", random_start="normal")
        trainer = AdversarialTrainer(model, method=method, beta=6.0 if method == "trades" else None, attack=attack)
        trainer.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
        x = rng.random((batch,) + shape).astype("float32")
        y = rng.integers(0, 10, batch)
        return median_seconds(lambda: trainer.train_on_batch(x, y))

    small = quick
    results = {
        "trades_wrn16_4_32px": train_step("trades", 10 if small else 16, 1 if small else 4, (16, 16, 3) if small
                                          else (32, 32, 3), 2 if small else 10, 8 if small else 64),
        "pgd_at_wrn10_1_16px": train_step("pgd", 10, 1, (16, 16, 1), 2 if small else 5, 8 if small else 64),
    }
    keras.utils.set_random_seed(0)
    model = wide_resnet(10 if small else 16, 1 if small else 4, num_classes=10,
                        input_shape=(16, 16, 3) if small else (32, 32, 3))
    x = tf.constant(rng.random((8 if small else 32,) + tuple(model.input_shape[1:])).astype("float32"))

    @tf.function
    def input_gradient(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(model(x, training=False))
        return tape.gradient(loss, x)

    results["input_gradient_wrn16_4_32px"] = median_seconds(lambda: input_gradient(x).numpy())
    print(json.dumps(results))


def _measure(setting):
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=setting, TF_CPP_MIN_LOG_LEVEL="2")
    command = [sys.executable, os.path.abspath(__file__), f"--child={setting}", f"--steps={FLAGS.steps}",
               f"--quick={FLAGS.quick}"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"TF_ENABLE_ONEDNN_OPTS={setting}: the child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(_):
    if FLAGS.child is not None:
        _child(FLAGS.quick, FLAGS.steps)
        return
    import tensorflow as tf

    rounds = 1 if FLAGS.quick else FLAGS.rounds
    runs = {"0": [], "1": []}
    for _ in range(rounds):
        for setting in ("0", "1"):
            runs[setting].append(_measure(setting))
    rows = []
    print(f"{'measurement':>30} {'oneDNN off (s)':>15} {'oneDNN on (s)':>14} {'off / on':>9}")
    for name in MEASUREMENTS:
        off = statistics.median(r[name] for r in runs["0"])
        on = statistics.median(r[name] for r in runs["1"])
        per_round = [a[name] / b[name] for a, b in zip(runs["0"], runs["1"])]
        rows.append(dict(measurement=name, off_seconds=off, on_seconds=on, speedup=off / on,
                         per_round_speedups=per_round))
        print(f"{name:>30} {off:15.4f} {on:14.4f} {off / on:8.2f}x")
    result = dict(machine=machine_facts(tensorflow=tf.__version__), rounds=rounds, steps=FLAGS.steps,
                  quick=FLAGS.quick, rows=rows)
    write_json(result, FLAGS.output)


if __name__ == "__main__":
    app.run(main)
