"""Images per second of one TRADES training step: tfnorms (float32, mixed_bfloat16) vs a PyTorch reference.

Setting (issue "Adversarial training in one compiled train_step"): TRADES with
10 attack steps (l_inf, eps 0.031, step 0.007, ``0.001 * N`` start, KL loss)
and beta 6 on a WRN-16-4 (:func:`tfnorms.models.wide_resnet`), batch 64,
32x32x3 inputs, SGD with momentum 0.9, on this machine's CPU.

* ``tfnorms_float32`` / ``tfnorms_mixed_bfloat16``: ``AdversarialTrainer`` with
  ``method="trades"`` (one clean inference pass for the KL target, then 10
  forward/backward attack steps, then one clean and one adversarial training
  pass); ``--xla`` adds ``tfnorms_float32_xla`` (``jit_compile=True``).
* ``pytorch_reference``: the official TRADES formulation (docs/theory.md#trades) on
  the same architecture (docs/theory.md#reference-models): the clean forward pass is re-run at
  every attack step and again inside the outer loss. Only when ``torch`` is
  importable (an optional benchmark dependency, never a package dependency).
* ``pytorch_same_passes``: the same PyTorch code with tfnorms' passes (clean
  logits once for the attack's KL target; one clean training pass shared by the
  cross-entropy and the KL): the ratio to it is framework and kernel speed alone.

All implementations are timed in the same run, interleaved round by round
(the machine is shared), after one warm-up step each; the table reports the
median step time. ``--threads=N`` gives both frameworks N intra-op threads;
the 1-minute load average before and after is recorded, since PyTorch's
OpenMP threads slow down badly when other processes hold the cores. Pass
counting alone predicts about 1.44x for ours over the reference in float32
(27 against 39 forward-pass equivalents, an input-gradient backward counted as
one and a weight-and-input backward as two); the remainder of the measured
ratio is kernel speed, which ``fp32_vs_pytorch_same_passes`` measures alone.
Whether ``mixed_bfloat16`` pays off depends on the CPU (its bf16 instructions
and TensorFlow's oneDNN kernels for them): the CPU model, family and bf16
flags go in the JSON.

Usage:
    python benchmarks/train_step_throughput.py            # full run (several minutes on 2 cores)
    python benchmarks/train_step_throughput.py --quick    # seconds; smoke test
Writes benchmarks/results/train_step_throughput.json (or --output).
"""

from __future__ import annotations

import os
import statistics
import time

from _machine import define_common_flags, machine_facts, write_json
from _torch_wrn import torch_wide_resnet
from absl import app, flags
import keras
import numpy as np
import tensorflow as tf

from tfnorms.attacks import PGD
from tfnorms.models import wide_resnet
from tfnorms.training import AdversarialTrainer

FLAGS = flags.FLAGS
define_common_flags("train_step_throughput", "Tiny configuration (WRN-10-1, batch 8, 16x16, 2 attack steps) for a smoke test.")
flags.DEFINE_integer("rounds", 3, "Timed steps per implementation (interleaved rounds).")
flags.DEFINE_bool("xla", False, "Also time tfnorms float32 with jit_compile=True.")
flags.DEFINE_integer("threads", 0, "Intra-op threads for both TensorFlow and PyTorch (0: library defaults).")
flags.DEFINE_bool("torch", True, "Time the PyTorch reference when torch is importable.")

EPS, STEP_SIZE, BETA = 0.031, 0.007, 6.0


def make_tfnorms_step(config, policy, jit_compile):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        model = wide_resnet(config["depth"], config["width"], num_classes=10, input_shape=config["input_shape"])
        attack = PGD(EPS, STEP_SIZE, config["attack_steps"], loss="kl", random_start="normal")
        trainer = AdversarialTrainer(model, method="trades", beta=BETA, attack=attack)
        trainer.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), jit_compile=jit_compile)
    finally:
        keras.config.set_dtype_policy(previous)
    rng = np.random.default_rng(0)
    x = rng.random((config["batch"],) + tuple(config["input_shape"])).astype("float32")
    y = rng.integers(0, 10, config["batch"])

    def step():
        logs = trainer.train_on_batch(x, y, return_dict=True)  # returns NumPy values: the step has finished
        if not np.isfinite(logs["loss"]):
            raise RuntimeError(f"non-finite loss under {policy}")

    return step


def make_torch_step(config):
    import torch
    import torch.nn.functional as F

    if FLAGS.threads:
        torch.set_num_threads(FLAGS.threads)
    torch.manual_seed(0)
    model = torch_wide_resnet(config["depth"], config["width"])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    rng = np.random.default_rng(0)
    height, width, channels = config["input_shape"]
    x = torch.from_numpy(rng.random((config["batch"], channels, height, width)).astype("float32"))
    y = torch.from_numpy(rng.integers(0, 10, config["batch"]))

    def kl_sum(adversarial_logits, clean_logits):
        return F.kl_div(F.log_softmax(adversarial_logits, dim=1), F.softmax(clean_logits, dim=1), reduction="sum")

    def step(same_passes):
        model.eval()
        x_adv = x + 0.001 * torch.randn_like(x)
        if same_passes:
            with torch.no_grad():
                clean_target = model(x)
        for _ in range(config["attack_steps"]):
            x_adv.requires_grad_(True)
            # The official code re-runs the clean pass at every step.
            loss = kl_sum(model(x_adv), clean_target if same_passes else model(x))
            (gradient,) = torch.autograd.grad(loss, [x_adv])
            x_adv = x_adv.detach() + STEP_SIZE * gradient.sign()
            x_adv = torch.clamp(torch.min(torch.max(x_adv, x - EPS), x + EPS), 0.0, 1.0)
        model.train()
        x_adv = torch.clamp(x_adv, 0.0, 1.0).detach()
        optimizer.zero_grad()
        clean_logits = model(x)
        natural = F.cross_entropy(clean_logits, y)
        # The official code runs a fresh clean pass for the KL target.
        robust = kl_sum(model(x_adv), clean_logits if same_passes else model(x)) / config["batch"]
        loss = natural + BETA * robust
        loss.backward()
        optimizer.step()
        if not torch.isfinite(loss):
            raise RuntimeError("non-finite loss in the PyTorch reference")

    steps = {"pytorch_reference": lambda: step(False), "pytorch_same_passes": lambda: step(True)}
    return steps, dict(torch=torch.__version__, torch_threads=torch.get_num_threads())


def main(argv):
    del argv
    if FLAGS.quick:
        config = dict(depth=10, width=1, batch=8, input_shape=(16, 16, 3), attack_steps=2, rounds=1)
    else:
        config = dict(depth=16, width=4, batch=64, input_shape=(32, 32, 3), attack_steps=10, rounds=FLAGS.rounds)

    if FLAGS.threads:
        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
        tf.config.threading.set_inter_op_parallelism_threads(FLAGS.threads)
    machine = machine_facts(tensorflow=tf.__version__, keras=keras.__version__)
    steps = {"tfnorms_float32": make_tfnorms_step(config, "float32", False),
             "tfnorms_mixed_bfloat16": make_tfnorms_step(config, "mixed_bfloat16", False)}
    if FLAGS.xla:
        steps["tfnorms_float32_xla"] = make_tfnorms_step(config, "float32", True)
    if FLAGS.torch:
        try:
            torch_steps, torch_info = make_torch_step(config)
        except ImportError:
            print("torch is not importable: skipping the PyTorch reference")
        else:
            steps.update(torch_steps)
            machine.update(torch_info)

    for name, step in steps.items():  # warm up: tracing, compilation, allocator
        start = time.perf_counter()
        step()
        print(f"warm-up {name}: {time.perf_counter() - start:.2f} s", flush=True)
    seconds = {name: [] for name in steps}
    for round_index in range(config["rounds"]):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            seconds[name].append(time.perf_counter() - start)
            print(f"round {round_index + 1} {name}: {seconds[name][-1]:.2f} s", flush=True)

    machine["threads_flag"] = FLAGS.threads
    rows = []
    for name, times in seconds.items():
        median = statistics.median(times)
        rows.append(dict(implementation=name, median_step_seconds=median, step_seconds=times,
                         images_per_second=config["batch"] / median))
    throughput = {row["implementation"]: row["images_per_second"] for row in rows}
    ratios = {"bf16_vs_fp32": throughput["tfnorms_mixed_bfloat16"] / throughput["tfnorms_float32"]}
    if "pytorch_reference" in throughput:
        ratios["fp32_vs_pytorch"] = throughput["tfnorms_float32"] / throughput["pytorch_reference"]
        ratios["bf16_vs_pytorch"] = throughput["tfnorms_mixed_bfloat16"] / throughput["pytorch_reference"]
        ratios["fp32_vs_pytorch_same_passes"] = throughput["tfnorms_float32"] / throughput["pytorch_same_passes"]
    if "tfnorms_float32_xla" in throughput:
        ratios["xla_vs_fp32"] = throughput["tfnorms_float32_xla"] / throughput["tfnorms_float32"]

    model_name = f"WRN-{config['depth']}-{config['width']}"
    print(f"\nTRADES step, {model_name}, batch {config['batch']}, input {config['input_shape']}, "
          f"{config['attack_steps']} attack steps, beta {BETA}, median of {config['rounds']}")
    print(f"{'implementation':<26}{'s / step':>10}{'images / s':>12}")
    for row in rows:
        print(f"{row['implementation']:<26}{row['median_step_seconds']:>10.2f}{row['images_per_second']:>12.2f}")
    targets = dict(fp32_vs_pytorch=1.5, bf16_vs_fp32=1.5)
    for name, value in ratios.items():
        verdict = ""
        if name in targets:
            verdict = f" (target {targets[name]}x: {'met' if value >= targets[name] else 'NOT met'})"
        print(f"{name}: {value:.2f}x{verdict}")
    print(f"CPU: {machine['cpu_model']} ({machine['cpu_id']}); "
          f"1-minute load average before: {machine['load_average_before']:.2f}, after: {os.getloadavg()[0]:.2f}")

    result = dict(benchmark="train_step_throughput", quick=FLAGS.quick, model=model_name, config=config,
                  machine=machine, rows=rows, ratios=ratios, targets=targets)
    write_json(result, FLAGS.output)


if __name__ == "__main__":
    app.run(main)
