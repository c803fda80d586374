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
import numpy as np
import tensorflow as tf

from tfnorms import norms
from tfnorms.models import wide_resnet

FLAGS = flags.FLAGS
define_common_flags("norm_speed")
flags.DEFINE_integer("repeats", 100, "Timed calls per exact-norm measurement (the paper: 100).")
flags.DEFINE_integer("power_iterations", 500, "Power iterations (the paper: 500).")

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


def wrn_all_norms_seconds(depth, width, repeats):
    model = wide_resnet(depth=depth, width=width)

    @tf.function(jit_compile=True)
    def all_norms():
        return [norms.model_norms(model, o) for o in (1, np.inf)]

    return median_seconds(all_norms, repeats), len(norms.model_norms(model, 1))


def main(argv):
    del argv
    tf.get_logger().setLevel("ERROR")  # one tf.function per shape and method: retracing is expected
    rng = np.random.default_rng(0)
    shapes = PAPER_SHAPES[:2] if FLAGS.quick else PAPER_SHAPES
    repeats = 5 if FLAGS.quick else FLAGS.repeats
    iterations = 20 if FLAGS.quick else FLAGS.power_iterations
    rows = []
    header = (
        f"{'kernel':>16} {'ours l1':>10} {'ours linf':>10} {'FFT+SVD':>10} {'power it':>10} "
        f"{'ours FFT l2':>11} {'FFT+SVD/ours':>13} {'powerit/ours':>13}"
    )
    print(f"Exact norms vs spectral baselines, input {INPUT}, {iterations} power iterations")
    print(header)
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
    depth, width = (16, 2) if FLAGS.quick else (34, 10)
    seconds, layers = wrn_all_norms_seconds(depth, width, 3 if FLAGS.quick else 20)
    print(f"All l1 and l_inf norms of the {layers} layers of a WRN-{depth}-{width}: {seconds * 1e3:.1f} ms")
    rows.append(dict(shape=f"WRN-{depth}-{width} ({layers} layers)", method="ours_all_l1_linf",
                     median_seconds=seconds, ratio_to_ours=1.0))
    print("Zero-padding spectral norm, default stopping rule (tol 1e-7, max_iter 1000):")
    spectral_rows = spectral_block_rows(FLAGS.quick)
    result = dict(
        benchmark="norm_speed",
        machine=machine_facts(tensorflow=tf.__version__),
        input=list(INPUT),
        power_iterations=iterations,
        rows=rows,
        spectral_block=spectral_rows,
    )
    write_json(result, FLAGS.output)


if __name__ == "__main__":
    app.run(main)
