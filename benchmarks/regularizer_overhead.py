"""Cost of norm decay in a training step, and of one SVC pass, on a WRN-16-4.

1. Step time of a compiled natural-training step (SGD momentum 0.9, batch 128,
   CIFAR-sized random data, CPU) of a WRN-16-4 with, on every Conv2D and Dense
   kernel: no regularizer; Keras ``L2(5e-4)``; ``tfnorms.NormDecay`` l1;
   NormDecay l_inf; NormDecay l1 with the momentum variant
   (``NormDecayMomentum``). Geometry is filled in by ``tfnorms.bind``.
   Variants are timed in interleaved rounds (same process, same data) and the
   median step time is reported with its ratio to the plain step.
   Target: NormDecay adds at most 3%.
2. Time of one singular-value-clipping pass over all conv layers of the same
   WRN-16-4 (each at its own input size): the reference formulation (full
   ``n x n`` complex FFT + complex SVD, CPU only) versus ours
   (``tfnorms.norms.conv2d_clip_singular_values``: real FFT, realified
   matrices, Gram eigendecomposition; and the real-SVD variant), each in one
   ``tf.function``; ``ours_hermitian`` uses the complex Hermitian Gram
   eigendecomposition instead of the realified one. Target: ours at least 2x
   faster.

Usage:
    python benchmarks/regularizer_overhead.py           # full run (several minutes on 2 cores)
    python benchmarks/regularizer_overhead.py --quick   # seconds; smoke test
Writes benchmarks/results/regularizer_overhead.json (or --output) and prints
a Markdown table.
"""

from __future__ import annotations

import statistics
import time

from _machine import define_common_flags, machine_facts, write_json
from absl import app, flags
import keras
import numpy as np
import tensorflow as tf

from tfnorms import norms
from tfnorms.models import wide_resnet
import tfnorms
from tfnorms import _keras
from tfnorms.regularizers import NormDecay, NormDecayMomentum

FLAGS = flags.FLAGS
define_common_flags("regularizer_overhead")
flags.DEFINE_integer("batch_size", 128, "Training batch size.")
flags.DEFINE_integer("rounds", 4, "Interleaved timing rounds per variant.")
flags.DEFINE_integer("steps", 3, "Timed steps per variant and round.")
flags.DEFINE_integer("svc_repeats", 3, "Timed SVC passes per formulation.")

VARIANTS = ("none", "l2", "norm_decay_l1", "norm_decay_linf", "norm_decay_momentum")


def build(variant, depth, width, seed=0):
    keras.utils.set_random_seed(seed)
    model = wide_resnet(depth=depth, width=width)
    regularizer = {
        "none": None,
        "l2": keras.regularizers.L2(5e-4),
        "norm_decay_l1": NormDecay(1e-3, ord=1),
        "norm_decay_linf": NormDecay(1e-3, ord=np.inf),
        "norm_decay_momentum": NormDecay(1e-3, ord=1),
    }[variant]
    if regularizer is not None:
        for layer in _keras.flatten_layers(model):
            if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
                layer.kernel_regularizer = regularizer
                layer.kernel.regularizer = regularizer
    if variant.startswith("norm_decay"):
        tfnorms.bind(model)
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    if variant == "norm_decay_momentum":
        optimizer = NormDecayMomentum(optimizer, momentum=0.5)
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def time_steps(depth, width, batch_size, rounds, steps, warmup=2):
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(batch_size, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, batch_size)
    models = {}
    for variant in VARIANTS:
        models[variant] = build(variant, depth, width)
        for _ in range(warmup):  # trace, compile, warm up
            models[variant].train_on_batch(x, y)
    times = {variant: [] for variant in VARIANTS}
    for _ in range(rounds):
        for variant in VARIANTS:
            for _ in range(steps):
                start = time.perf_counter()
                models[variant].train_on_batch(x, y)
                times[variant].append(time.perf_counter() - start)
    base = statistics.median(times["none"])
    return [
        dict(
            name=variant,
            median_seconds=statistics.median(times[variant]),
            ratio_to_none=statistics.median(times[variant]) / base,
            samples=len(times[variant]),
        )
        for variant in VARIANTS
    ]


def reference_clip(kernel, clip_to, size):
    return norms.conv2d_clip_singular_values_reference(kernel, clip_to, input_shape=size)


def time_svc(depth, width, repeats, clip_to=1.0):
    model = wide_resnet(depth=depth, width=width)
    layers = []
    for layer in _keras.flatten_layers(model):
        if isinstance(layer, keras.layers.Conv2D):
            geom = norms.conv_geometry(layer)
            shape = tuple(int(n) for n in geom["input_shape"])
            if shape[0] >= geom["kernel"].shape[0]:
                layers.append((layer.kernel, shape))

    def make(fn):
        return tf.function(lambda: [fn(tf.convert_to_tensor(k), s) for k, s in layers], autograph=False)

    formulations = {
        "reference": make(lambda k, s: reference_clip(k, clip_to, s)),
        "ours_gram": make(lambda k, s: norms.conv2d_clip_singular_values(k, clip_to, input_shape=s)),
        "ours_svd": make(lambda k, s: norms.conv2d_clip_singular_values(k, clip_to, input_shape=s, method="svd")),
        "ours_hermitian": make(
            lambda k, s: norms.conv2d_clip_singular_values(k, clip_to, input_shape=s, method="hermitian")
        ),
    }
    outputs, rows = {}, []
    for name, fn in formulations.items():
        outputs[name] = [o.numpy() for o in fn()]  # trace and warm up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            [o.numpy() for o in fn()]
            times.append(time.perf_counter() - start)
        rows.append(dict(name=name, median_seconds=statistics.median(times), samples=repeats))
    reference_time = rows[0]["median_seconds"]
    for row in rows:
        row["speedup_vs_reference"] = reference_time / row["median_seconds"]
        row["max_abs_diff_vs_reference"] = float(
            max(np.abs(a - b).max() for a, b in zip(outputs[row["name"]], outputs["reference"]))
        )
    return rows, len(layers)


def markdown(result):
    lines = [
        f"WRN-{result['depth']}-{result['width']}, batch {result['batch_size']}, "
        f"{result['machine']['cpus']} CPU cores ({result['machine']['cpu_model']}), "
        f"TF {result['machine']['tensorflow']}",
        "",
        "| training step | median s/step | ratio to none |",
        "|---|---|---|",
    ]
    for row in result["step_time"]:
        lines.append(f"| {row['name']} | {row['median_seconds']:.4f} | {row['ratio_to_none']:.3f} |")
    lines += [
        "",
        f"| SVC pass ({result['svc_layers']} conv layers) | median s | speed-up vs reference | max abs diff |",
        "|---|---|---|---|",
    ]
    for row in result["svc_pass"]:
        lines.append(
            f"| {row['name']} | {row['median_seconds']:.3f} | {row['speedup_vs_reference']:.2f}x | "
            f"{row['max_abs_diff_vs_reference']:.1e} |"
        )
    return "\n".join(lines)


def main(argv):
    del argv
    if FLAGS.quick:
        depth, width, batch, rounds, steps, svc_repeats = 10, 1, 8, 1, 1, 1
    else:
        depth, width, batch = 16, 4, FLAGS.batch_size
        rounds, steps, svc_repeats = FLAGS.rounds, FLAGS.steps, FLAGS.svc_repeats
    step_rows = time_steps(depth, width, batch, rounds, steps, warmup=1 if FLAGS.quick else 2)
    svc_rows, svc_layers = time_svc(depth, width, svc_repeats)
    result = dict(
        depth=depth,
        width=width,
        batch_size=batch,
        quick=FLAGS.quick,
        step_time=step_rows,
        svc_pass=svc_rows,
        svc_layers=svc_layers,
        machine=machine_facts(tensorflow=tf.__version__, keras=keras.__version__),
    )
    write_json(result, FLAGS.output)
    print(markdown(result))


if __name__ == "__main__":
    app.run(main)
