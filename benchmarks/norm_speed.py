"""Speed of exact l1 / l_inf conv norms versus power iteration and FFT+SVD.

Reproduces the protocol of Liang & Huang's speed comparison (docs/benchmarks.md#norm-speed):
N(0, 1) kernels, stride 1, no padding, 32x32 input, on this machine, in one
run. Methods per kernel shape:

* ``ours_l1``, ``ours_linf``: :func:`tfnorms.norms.conv2d_l1_norm` /
  ``conv2d_linf_norm`` with the input size, compiled with XLA;
* ``power_iteration``: 500 iterations of single-vector power iteration on the
  conv operator (:func:`tfnorms.norms.conv2d_spectral_norm` with ``tol=0``,
  ``block_size=1``), the paper's baseline;
* ``fft_svd``: the reference FFT+SVD formulation (full ``n x n`` complex FFT of
  the padded kernel, complex SVD of all ``n**2`` transfer matrices);
* ``ours_fft_spectral``: our real-FFT + realified-Gram spectral norm (circular).

Also times all l1 and l_inf norms of every layer of a WRN-34-10 in one call,
and compares the zero-padding spectral norm with one power-iteration vector
against the default block of 4 (time and relative error at the default
stopping rule) on two operators: a small one whose two largest singular values
nearly coincide (error against a dense SVD) and a WRN-sized 3x3 layer (error
against a float64 run of a block of 8 for 3000 iterations).

Usage:
    python benchmarks/norm_speed.py            # full run (a few minutes on 2 cores)
    python benchmarks/norm_speed.py --quick    # seconds; smoke test
Writes benchmarks/results/norm_speed.json (or --output).
"""

from __future__ import annotations

import statistics
import time

from _machine import define_common_flags, machine_facts, write_json
from absl import app, flags
import keras
import numpy as np
import tensorflow as tf
import torch

from tfnorms import _keras, norms
from tfnorms.models import wide_resnet

FLAGS = flags.FLAGS
define_common_flags("norm_speed")
flags.DEFINE_integer("repeats", 100, "Timed calls per exact-norm measurement (the paper: 100).")
flags.DEFINE_integer("power_iterations", 500, "Power iterations (the paper: 500).")
flags.DEFINE_integer("gram_steps", 8, "Gram iteration steps of the spectral bound.")
flags.DEFINE_integer("gram_frequencies", 64, "Frequencies kept for the last 3 Gram steps in the pruned row.")
flags.DEFINE_list("gram_shapes", ["3x32x32", "3x128x256", "3x256x512"],
                  "Kernel shapes k x c_in x c_out of the Gram table (the paper's: add 3x32x128, 5x256x128, 5x512x256).")
flags.DEFINE_string("gram_model", "34x10", "WideResNet depth x width of the whole-model Gram table.")
flags.DEFINE_list("parts", ["exact", "peer", "gram", "gram_model", "block"],
                  "Which tables to run: exact, peer, gram, gram_model, block.")

PAPER_SHAPES = [(3, 32, 32), (3, 32, 128), (3, 128, 256), (3, 256, 512), (5, 256, 128), (5, 512, 256)]
INPUT = (32, 32)


def median_seconds(fn, repeats):
    fn()  # trace / compile / warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        np.asarray(out)  # block until the value exists
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def reference_fft_svd(kernel, size):
    """Full complex FFT of the kernel padded to ``size`` and complex SVD (Sedghi et al.)."""
    kh, kw = kernel.shape[:2]
    torch_layout = tf.transpose(kernel, (3, 2, 0, 1))  # (c_out, c_in, kh, kw)
    padded = tf.pad(torch_layout, [[0, 0], [0, 0], [0, size[0] - kh], [0, size[1] - kw]])
    transfer = tf.signal.fft2d(tf.cast(padded, tf.complex64))
    return tf.linalg.svd(tf.transpose(transfer, (2, 3, 0, 1)), compute_uv=False)


def benchmark_shape(k, c_in, c_out, repeats, power_iterations, rng):
    kernel = tf.constant(rng.normal(size=(k, k, c_in, c_out)).astype(np.float32))
    common = dict(input_shape=INPUT, padding="valid")
    l1 = tf.function(lambda w: norms.conv2d_l1_norm(w, **common), jit_compile=True)
    linf = tf.function(lambda w: norms.conv2d_linf_norm(w, **common), jit_compile=True)
    spectral_fft = tf.function(
        lambda w: norms.conv2d_spectral_norm(w, input_shape=INPUT, padding="circular")
    )
    power = tf.function(
        lambda w: norms.conv2d_spectral_norm(w, **common, tol=0.0, max_iter=power_iterations, block_size=1)
    )
    fft_svd = tf.function(lambda w: reference_fft_svd(w, INPUT))
    slow_repeats = 1 if power_iterations >= 100 else 3
    return {
        "ours_l1": median_seconds(lambda: l1(kernel), repeats),
        "ours_linf": median_seconds(lambda: linf(kernel), repeats),
        "ours_fft_spectral": median_seconds(lambda: spectral_fft(kernel), 3),
        "fft_svd": median_seconds(lambda: fft_svd(kernel), 3),
        "power_iteration": median_seconds(lambda: power(kernel), slow_repeats),
    }


def spectral_block_rows(quick):
    """Single-vector versus block power iteration: seconds and relative error at the default ``tol``."""
    near_degenerate = np.random.default_rng(76).uniform(-0.3, 0.3, (2, 3, 3, 4))  # sigma_2 / sigma_1 = 0.99956
    args = dict(input_shape=(5, 7), strides=(1, 2), padding="valid")
    size = 5 * 7 * 3
    basis = np.eye(size).reshape((size, 5, 7, 3))
    dense = tf.nn.conv2d(basis, near_degenerate, (1, 1, 2, 1), "VALID").numpy().reshape(size, -1)
    cases = [("2x3 3->4 on 5x7, stride (1, 2), valid", near_degenerate, args, np.linalg.norm(dense, 2))]
    c_in, c_out, hw = (4, 8, 8) if quick else (16, 64, 32)
    wide = np.random.default_rng(0).normal(size=(3, 3, c_in, c_out)) * 0.05
    wide_args = dict(input_shape=(hw, hw), padding="same")
    reference = float(norms.conv2d_spectral_norm(wide, **wide_args, block_size=8, tol=0.0,
                                                 max_iter=300 if quick else 3000))
    cases.append((f"3x3 {c_in}->{c_out} on {hw}x{hw}, same", wide, wide_args, reference))
    rows = []
    for label, kernel, kwargs, exact in cases:
        kernel = tf.constant(kernel.astype(np.float32))
        for block_size in (1, 4):
            def estimate(kernel=kernel, kwargs=kwargs, block_size=block_size):
                return norms.conv2d_spectral_norm(kernel, **kwargs, block_size=block_size)
            seconds = median_seconds(estimate, 1 if quick else 3)
            error = abs(float(estimate()) - exact) / exact
            rows.append(dict(operator=label, block_size=block_size, median_seconds=seconds, relative_error=error))
            print(f"{label:>40} block {block_size}: {seconds:7.2f} s, relative error {error:.1e}")
    return rows


def torch_layers(model):
    """The model's supported layers as PyTorch tensors in PyTorch layout: (kind, tensors, stride)."""
    layers = []
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.Conv2D):
            weight = torch.from_numpy(np.ascontiguousarray(np.transpose(layer.kernel.numpy(), (3, 2, 0, 1))))
            layers.append(("conv", (weight,), int(layer.strides[0])))
        elif isinstance(layer, keras.layers.Dense):
            layers.append(("dense", (torch.from_numpy(np.ascontiguousarray(layer.kernel.numpy().T)),), 1))
        elif isinstance(layer, keras.layers.BatchNormalization):
            bn = (torch.from_numpy(layer.gamma.numpy()), torch.from_numpy(layer.moving_variance.numpy()))
            layers.append(("bn", bn + (layer.epsilon,), 1))
    return layers


def torch_official_norm(kind, tensors, stride, ord):
    """The official formulation, per layer: l1 = max over input channels and stride classes of
    sums of |W| over output channels and the class's kernel positions; l_inf = max over output
    channels of sums of |W| (PyTorch layout ``(c_out, c_in, kh, kw)``)."""
    if kind == "bn":
        gamma, variance, eps = tensors
        return (gamma.abs() / torch.sqrt(variance + eps)).max()
    weight = tensors[0].abs()
    if kind == "dense":
        return weight.sum(0).max() if ord == 1 else weight.sum(1).max()
    if ord != 1:
        return weight.sum((1, 2, 3)).max()
    per_input = weight.sum(0)  # (c_in, kh, kw)
    classes = [per_input[:, p::stride, q::stride].sum((1, 2)) for p in range(stride) for q in range(stride)]
    return torch.stack(classes).max()


def peer_rows(depth, width, repeats):
    """All l1 / l_inf norms of a WRN: tfnorms vs a PyTorch re-implementation of the official code vs the memory floor."""
    model = wide_resnet(depth=depth, width=width)
    layers = torch_layers(model)
    kernels = [layer.kernel for layer in model._flatten_layers(include_self=False) if hasattr(layer, "kernel")]
    weights = sum(int(np.prod(k.shape)) for k in kernels)
    floor = tf.function(lambda: tf.add_n([tf.reduce_sum(tf.abs(k)) for k in kernels]))
    threads = torch.get_num_threads()
    rows = []
    for ord, name in ((1, "l1"), (np.inf, "linf")):
        ours = {k: float(v) for k, v in norms.model_norms(model, ord).items()}
        with torch.no_grad():
            peer = torch.stack([torch_official_norm(*layer, ord) for layer in layers]).tolist()
        agreement = float(np.max(np.abs(np.array(list(ours.values())) - peer) / np.array(peer)))
        _, vector = norms.compiled_model_norms(model, ord)
        with torch.no_grad():
            times = {
                "tfnorms_model_norms": median_seconds(
                    lambda ord=ord: [float(v) for v in norms.model_norms(model, ord).values()], repeats),
                "tfnorms_compiled_vector": median_seconds(lambda vector=vector: vector().numpy(), repeats),
                "pytorch_official_formulation": median_seconds(
                    lambda ord=ord: torch.stack([torch_official_norm(*layer, ord) for layer in layers]).tolist(),
                    repeats),
                "memory_floor_sum_abs": median_seconds(lambda: floor().numpy(), repeats),
            }
        torch.set_num_threads(1)  # the peer gets its faster thread count (contention with TensorFlow's pools)
        with torch.no_grad():
            single = median_seconds(
                lambda ord=ord: torch.stack([torch_official_norm(*layer, ord) for layer in layers]).tolist(), repeats)
        torch.set_num_threads(threads)
        times["pytorch_official_formulation"] = min(times["pytorch_official_formulation"], single)
        peer_seconds = times["pytorch_official_formulation"]
        for method, seconds in times.items():
            rows.append(dict(model=f"WRN-{depth}-{width}", ord=name, method=method, median_seconds=seconds,
                             speedup_vs_pytorch=peer_seconds / seconds, layers=len(ours), weights=weights,
                             max_relative_difference_to_pytorch=agreement))
        print(f"WRN-{depth}-{width} {name} ({len(ours)} layers, {weights / 1e6:.1f} M weights; "
              f"max rel. difference to PyTorch {agreement:.1e}):")
        for method, seconds in times.items():
            print(f"   {method:>30}: {seconds * 1e3:8.1f} ms   x{peer_seconds / seconds:5.2f} vs PyTorch")
    return rows


def per_call_rows(repeats):
    """One small kernel (3x3 32->32 on 32x32): what a single call costs and what is left of it."""
    kernel = tf.constant(np.random.default_rng(1).normal(size=(3, 3, 32, 32)).astype(np.float32))
    compiled = tf.function(lambda: norms.conv2d_l1_norm(kernel, input_shape=INPUT))
    empty = tf.function(lambda: tf.constant(0.0))
    weight = torch.from_numpy(np.ascontiguousarray(np.transpose(kernel.numpy(), (3, 2, 0, 1))))
    with torch.no_grad():
        times = {
            "tfnorms_eager_conv2d_l1_norm": median_seconds(
                lambda: float(norms.conv2d_l1_norm(kernel, input_shape=INPUT)), repeats),
            "tfnorms_tf_function": median_seconds(lambda: float(compiled()), repeats),
            "empty_tf_function_call": median_seconds(lambda: float(empty()), repeats),
            "pytorch_official_formulation": median_seconds(
                lambda: float(torch_official_norm("conv", (weight,), 1, 1)), repeats),
        }
    print("One 3x3 32->32 kernel, l1, per call:")
    for method, seconds in times.items():
        print(f"   {method:>30}: {seconds * 1e6:8.0f} us")
    return [dict(shape="3x3 32->32", method=m, median_seconds=t) for m, t in times.items()]


def gram_rows(shapes, power_iterations, steps, keep):
    """Gram-iteration bound (all frequencies, and pruned) vs power iteration and FFT+SVD, "same" on 32x32."""
    rng = np.random.default_rng(2)
    args = dict(input_shape=INPUT, padding="same")
    rows = []
    print(f'Spectral norm, "same" padding on {INPUT}: Gram iteration ({steps} steps; pruned: the last 3 on '
          f"{keep} frequencies) vs {power_iterations} power iterations vs FFT+SVD (circular)")
    for k, c_in, c_out in shapes:
        kernel = tf.constant(rng.normal(size=(k, k, c_in, c_out)).astype(np.float32))
        gram = tf.function(lambda w: norms.conv2d_spectral_norm(w, **args, method="gram", gram_iterations=steps))
        pruned = tf.function(lambda w: norms.conv2d_spectral_norm(
            w, **args, method="gram", gram_iterations=steps, gram_frequencies=keep))
        power = tf.function(lambda w: norms.conv2d_spectral_norm(
            w, **args, tol=0.0, max_iter=power_iterations, block_size=1))
        fft_svd = tf.function(lambda w: tf.reduce_max(reference_fft_svd(w, INPUT)))
        bound, pruned_bound, lower = float(gram(kernel)), float(pruned(kernel)), float(power(kernel))
        times = {"gram": median_seconds(lambda gram=gram, kernel=kernel: gram(kernel), 3),
                 "gram_pruned": median_seconds(lambda pruned=pruned, kernel=kernel: pruned(kernel), 3),
                 "power_iteration": median_seconds(lambda power=power, kernel=kernel: power(kernel), 1),
                 "fft_svd": median_seconds(lambda fft_svd=fft_svd, kernel=kernel: fft_svd(kernel), 1)}
        gap, pruned_gap = bound / lower - 1, pruned_bound / lower - 1  # >= the true gaps: power iteration is a lower bound
        label = f"{k}x{k} {c_in}->{c_out}"
        print(f"{label:>16} gram {times['gram']:7.2f} s (x{times['power_iteration'] / times['gram']:5.1f}, "
              f"gap <= {gap:.2%})  pruned {times['gram_pruned']:7.2f} s "
              f"(x{times['power_iteration'] / times['gram_pruned']:5.1f}, gap <= {pruned_gap:.2%})  "
              f"power {times['power_iteration']:7.2f} s  FFT+SVD {times['fft_svd']:7.2f} s")
        rows.append(dict(shape=label, gram_seconds=times["gram"], gram_pruned_seconds=times["gram_pruned"],
                         power_seconds=times["power_iteration"], fft_svd_seconds=times["fft_svd"],
                         gram_bound=bound, gram_pruned_bound=pruned_bound, power_estimate=lower,
                         gap_upper_bound=gap, pruned_gap_upper_bound=pruned_gap, gram_steps=steps,
                         gram_frequencies=keep, power_iterations=power_iterations))
    return rows


def gram_model_rows(depth, width, steps, image_size=32):
    """Every conv / dense layer of a WRN: Gram bound vs block power iteration (default stopping rule)."""
    model = wide_resnet(depth=depth, width=width, input_shape=(image_size, image_size, 3))
    pairs = []
    for layer in _keras.flatten_layers(model):
        if isinstance(layer, keras.layers.Conv2D):
            geom = norms.conv_geometry(layer)
            pairs.append((lambda g=geom: norms.conv2d_spectral_norm(**g, method="gram", gram_iterations=steps),
                          lambda g=geom: norms.conv2d_spectral_norm(**g)))
        elif isinstance(layer, keras.layers.Dense):
            pairs.append((lambda k=layer.kernel: norms.dense_spectral_norm(k, method="gram", gram_iterations=steps),
                          lambda k=layer.kernel: norms.dense_spectral_norm(k)))
    gram_all = tf.function(lambda: tf.stack([g() for g, _ in pairs]))
    start = time.perf_counter()
    bounds = gram_all().numpy()
    gram_first = time.perf_counter() - start
    gram_seconds = median_seconds(lambda: gram_all(), 1)
    start = time.perf_counter()
    estimates = np.array([float(p()) for _, p in pairs])
    power_seconds = time.perf_counter() - start
    gaps = bounds / estimates - 1
    print(f"WRN-{depth}-{width}, {len(pairs)} conv/dense layers: Gram {gram_seconds:.1f} s (first call with "
          f"tracing {gram_first:.1f} s), block power iteration {power_seconds:.1f} s; gap <= {gaps.max():.2%} "
          f"(median {np.median(gaps):.2%}); log10 product of bounds {np.sum(np.log10(bounds)):.2f}")
    return dict(model=f"WRN-{depth}-{width}", layers=len(pairs), gram_seconds=gram_seconds,
                gram_first_call_seconds=gram_first, power_seconds=power_seconds, max_gap_upper_bound=float(gaps.max()),
                median_gap_upper_bound=float(np.median(gaps)), log10_product_of_bounds=float(np.sum(np.log10(bounds))))


def wrn_all_norms_seconds(depth, width, repeats):
    model = wide_resnet(depth=depth, width=width)

    @tf.function(jit_compile=True)
    def all_norms():
        return [norms.model_norms(model, o) for o in (1, np.inf)]

    return median_seconds(all_norms, repeats), len(norms.model_norms(model, 1))


def exact_rows(shapes, repeats, iterations, rng):
    header = (
        f"{'kernel':>16} {'ours l1':>10} {'ours linf':>10} {'FFT+SVD':>10} {'power it':>10} "
        f"{'ours FFT l2':>11} {'FFT+SVD/ours':>13} {'powerit/ours':>13}"
    )
    print(f"Exact norms vs spectral baselines, input {INPUT}, {iterations} power iterations")
    print(header)
    rows = []
    for k, c_in, c_out in shapes:
        times = benchmark_shape(k, c_in, c_out, repeats, iterations, rng)
        ours = max(times["ours_l1"], times["ours_linf"])
        label = f"{k}x{k} {c_in}->{c_out}"
        print(
            f"{label:>16} {times['ours_l1'] * 1e6:>8.0f}us {times['ours_linf'] * 1e6:>8.0f}us "
            f"{times['fft_svd'] * 1e3:>8.1f}ms {times['power_iteration']:>9.2f}s "
            f"{times['ours_fft_spectral'] * 1e3:>9.1f}ms {times['fft_svd'] / ours:>12.0f}x "
            f"{times['power_iteration'] / ours:>12.0f}x"
        )
        for method, seconds in times.items():
            rows.append(dict(shape=label, method=method, median_seconds=seconds, ratio_to_ours=seconds / ours))
    return rows


def main(argv):
    del argv
    tf.get_logger().setLevel("ERROR")  # one tf.function per shape and method: retracing is expected
    rng = np.random.default_rng(0)
    shapes = PAPER_SHAPES[:1] if FLAGS.quick else PAPER_SHAPES
    repeats = 3 if FLAGS.quick else FLAGS.repeats
    iterations = 20 if FLAGS.quick else FLAGS.power_iterations
    depth, width = (16, 2) if FLAGS.quick else (34, 10)
    result = dict(benchmark="norm_speed", machine=machine_facts(tensorflow=tf.__version__, torch=torch.__version__),
                  input=list(INPUT), power_iterations=iterations, gram_steps=FLAGS.gram_steps)
    if "exact" in FLAGS.parts:
        rows = exact_rows(shapes, repeats, iterations, rng)
        seconds, layers = wrn_all_norms_seconds(depth, width, 3 if FLAGS.quick else 20)
        print(f"All l1 and l_inf norms of the {layers} layers of a WRN-{depth}-{width}: {seconds * 1e3:.1f} ms")
        rows.append(dict(shape=f"WRN-{depth}-{width} ({layers} layers)", method="ours_all_l1_linf",
                         median_seconds=seconds, ratio_to_ours=1.0))
        result["rows"] = rows
    if "peer" in FLAGS.parts:
        result["peer"] = peer_rows(depth, width, 3 if FLAGS.quick else 20)
        result["per_call"] = per_call_rows(20 if FLAGS.quick else 200)
    if "gram" in FLAGS.parts:
        gram_shapes = [tuple(int(v) for v in shape.split("x")) for shape in FLAGS.gram_shapes]
        result["gram"] = gram_rows(shapes if FLAGS.quick else gram_shapes, iterations, FLAGS.gram_steps,
                                   FLAGS.gram_frequencies)
    if "gram_model" in FLAGS.parts:
        model_depth, model_width = (10, 1) if FLAGS.quick else map(int, FLAGS.gram_model.split("x"))
        result["gram_model"] = gram_model_rows(model_depth, model_width, FLAGS.gram_steps, 16 if FLAGS.quick else 32)
    if "block" in FLAGS.parts:
        print("Zero-padding spectral norm, default stopping rule (tol 1e-7, max_iter 1000):")
        result["spectral_block"] = spectral_block_rows(FLAGS.quick)
    write_json(result, FLAGS.output)


if __name__ == "__main__":
    app.run(main)
