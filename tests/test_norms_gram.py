"""Gram-iteration spectral bounds: never below the dense-operator norm, tight for circular and dense maps."""

import random

import norm_bruteforce as bf
import numpy as np
import pytest
import tensorflow as tf

from tfnorms import norms
from tfnorms.norms.gram import log_gram_bound


def l2(matrix):
    """Largest singular value through the smaller Gram matrix (float64; faster than an SVD)."""
    gram = matrix @ matrix.T if matrix.shape[0] <= matrix.shape[1] else matrix.T @ matrix
    return float(np.sqrt(np.linalg.eigvalsh(gram)[-1]))


PADDINGS = ["circular", "same", "valid", ((1, 0), (2, 1)), ((0, 3), (1, 1))]


def grid(count, seed):
    """Small shapes: kernel 1-5, channels 1-4, inputs 6-16, every padding; strides or dilations 1-2 (zero padding)."""
    rng = random.Random(seed)
    cases = []
    while len(cases) < count:
        padding = PADDINGS[len(cases) % len(PADDINGS)]
        kh, kw, c_in, c_out = (rng.randint(1, 5), rng.randint(1, 5), rng.randint(1, 4), rng.randint(1, 4))
        hw = (rng.randint(6, 16), rng.randint(6, 16))
        strides, dilation = (1, 1), (1, 1)
        if padding != "circular" and len(cases) % 3 == 1:
            strides = (rng.randint(1, 2), 2)
        elif padding != "circular" and len(cases) % 3 == 2:
            dilation = (2, rng.randint(1, 2))  # TensorFlow has no strided dilated convolution
        reach = [(k - 1) * d + 1 for k, d in zip((kh, kw), dilation)]
        pads = {"circular": ((9, 9), (9, 9)), "same": ((9, 9), (9, 9)), "valid": ((0, 0), (0, 0))}.get(padding, padding)
        if any(n + sum(pad) < e for n, pad, e in zip(hw, pads, reach)):  # no output
            continue
        if c_in * hw[0] * hw[1] <= 600:  # the Gram side of the dense route: keeps the test fast
            cases.append((kh, kw, c_in, c_out, hw, padding, strides, dilation))
    return cases


def dense_norm(kernel, hw, padding, strides, dilation):
    if padding == "circular":
        return l2(bf.circular_matrix(kernel, hw))
    return l2(bf.dense_conv_matrix(kernel, *hw, strides, bf.tf_padding(padding), dilation))


@pytest.fixture(scope="module")
def measured():
    """``(padding, dtype, bound / dense norm)`` over the grid, float32 and float64 kernels, default 8 steps."""
    rng = np.random.default_rng(0)
    rows = []
    for index, (kh, kw, c_in, c_out, hw, padding, strides, dilation) in enumerate(grid(30, seed=3)):
        kernel = rng.normal(size=(kh, kw, c_in, c_out))
        exact = dense_norm(kernel, hw, padding, strides, dilation)
        dtype = ("float32", "float64")[index % 2]
        bound = norms.conv2d_spectral_norm(kernel.astype(dtype), input_shape=hw, padding=padding, strides=strides,
                                           dilation_rate=dilation, method="gram")
        rows.append((str(padding), dtype, float(bound) / exact))
    return rows


def test_never_below_the_dense_norm(measured):
    assert min(ratio for *_, ratio in measured) >= 1.0


def test_within_one_percent_for_every_padding_and_dtype(measured):
    for padding in map(str, PADDINGS):
        for dtype in ("float32", "float64"):
            ratios = [ratio for p, d, ratio in measured if (p, d) == (padding, dtype)]
            assert ratios and max(ratios) <= 1.01, (padding, dtype, ratios)


def test_grouped_zero_padding_uses_the_dense_blocks():
    kernel = np.random.default_rng(6).normal(size=(3, 3, 2, 4))
    layer = tf.keras.layers.Conv2D(4, 3, padding="same", groups=2, use_bias=False)
    layer.build((None, 7, 6, 4))
    layer.kernel.assign(kernel)
    exact = l2(bf.dense_matrix_of(layer, (7, 6, 4)))
    bound = float(norms.conv2d_spectral_norm(kernel, input_shape=(7, 6), padding="same", groups=2, method="gram"))
    assert exact <= bound <= 1.01 * exact


def test_above_the_dense_limit_zero_padding_is_the_circular_bound_on_the_enclosing_torus():
    # 3x3 "same" on 7x5 pads (1, 1): torus (8, 6); 5x5 "valid" on 6x6: no padding, torus (6, 6).
    kernel = np.random.default_rng(1).normal(size=(3, 3, 2, 3)).astype("float32")
    for padding, hw, torus in [("same", (7, 5), (8, 6)), ("valid", (6, 6), (6, 6)), (((0, 4), (2, 0)), (6, 6), (8, 8))]:
        zero = norms.conv2d_spectral_norm(kernel, input_shape=hw, padding=padding, method="gram", gram_dense_limit=0)
        circular = norms.conv2d_spectral_norm(kernel, input_shape=torus, padding="circular")
        np.testing.assert_allclose(zero, circular, rtol=2e-5)


def test_dense_route_gradient_matches_a_finite_difference():
    kernel = tf.Variable(np.random.default_rng(7).normal(size=(3, 2, 2, 3)))
    args = {"input_shape": (6, 7), "padding": "same", "strides": (2, 1), "method": "gram", "gram_iterations": 10}
    with tf.GradientTape() as tape:
        value = norms.conv2d_spectral_norm(kernel, **args)
    gradient = tape.gradient(value, kernel).numpy()
    assert np.all(np.isfinite(gradient))
    direction = np.random.default_rng(8).normal(size=kernel.shape)
    step = 1e-6
    plus = norms.conv2d_spectral_norm(kernel + step * direction, **args)
    minus = norms.conv2d_spectral_norm(kernel - step * direction, **args)
    np.testing.assert_allclose((plus - minus) / (2 * step), np.sum(gradient * direction), rtol=1e-5)


def test_dense_gram_bound():
    rng = np.random.default_rng(2)
    for shape in [(1, 1), (3, 7), (12, 5), (40, 40)]:
        kernel = rng.normal(size=shape)
        exact = np.linalg.norm(kernel, 2)
        bound = float(norms.dense_spectral_norm(kernel.astype("float32"), method="gram"))
        assert exact <= bound <= 1.01 * exact
    # The worst case: 256 equal singular values. 8 fixed steps would be 256^(1/512) = 1.1% loose;
    # the default step count keeps every kernel within 0.1%.
    flat = 3.0 * np.linalg.qr(rng.normal(size=(256, 256)))[0]
    bound = float(norms.dense_spectral_norm(flat.astype("float32"), method="gram"))
    assert 3.0 * (1 - 1e-6) <= bound <= 3.0 * 1.001
    assert float(norms.dense_spectral_norm(flat.astype("float32"), method="gram", gram_iterations=8)) > 3.0 * 1.01


def test_rescaling_keeps_huge_and_tiny_kernels_finite():
    for scale in (1e30, 1e-30):
        kernel = (np.random.default_rng(3).normal(size=(3, 3, 2, 2)) * scale).astype("float32")
        exact = float(norms.conv2d_spectral_norm(kernel.astype("float64"), input_shape=(6, 6), padding="circular"))
        bound = float(norms.conv2d_spectral_norm(kernel, input_shape=(6, 6), padding="circular", method="gram"))
        assert np.isfinite(bound) and exact <= bound <= 1.01 * exact
    assert float(np.exp(log_gram_bound(np.zeros((3, 2), "float32")))) < 1e-30


def test_complex_gram_matches_complex_matrices():
    rng = np.random.default_rng(4)
    matrices = rng.normal(size=(5, 3, 4)) + 1j * rng.normal(size=(5, 3, 4))
    bounds = np.exp(log_gram_bound(matrices.real, matrices.imag, iterations=10))
    exact = np.linalg.norm(matrices, 2, axis=(1, 2))
    assert np.all(bounds >= exact) and np.all(bounds <= exact * (1 + 1e-6))


def test_differentiable_and_compiles_with_xla():
    kernel = tf.Variable(np.random.default_rng(5).normal(size=(3, 3, 2, 3)).astype("float32"))
    args = {"input_shape": (8, 8), "padding": "circular"}
    gram = {"method": "gram", "gram_iterations": 2}
    compiled = tf.function(lambda: norms.conv2d_spectral_norm(kernel, **args, **gram), jit_compile=True)
    np.testing.assert_allclose(compiled(), norms.conv2d_spectral_norm(kernel, **args, **gram), rtol=1e-5)
    with tf.GradientTape() as tape:
        value = norms.conv2d_spectral_norm(kernel, **args, method="gram", gram_iterations=10)
    gradient = tape.gradient(value, kernel)
    with tf.GradientTape() as tape:
        exact = norms.conv2d_spectral_norm(kernel, **args)
    # After 10 steps the bound is the norm to float precision, so is its gradient (u v^T folded onto the kernel).
    np.testing.assert_allclose(value, exact, rtol=1e-5)
    np.testing.assert_allclose(gradient, tape.gradient(exact, kernel), atol=1e-4)


@pytest.mark.parametrize("call,match", [
    (lambda: norms.conv2d_spectral_norm(np.ones((3, 3, 1, 1)), input_shape=(6, 6), method="svd"), "`method`"),
    (lambda: norms.dense_spectral_norm(np.ones((2, 2)), method="gram", gram_iterations=0), "`gram_iterations`"),
    (lambda: log_gram_bound(np.ones((2, 2)), iterations=1.5), "`iterations`"),
    (lambda: norms.conv2d_spectral_norm(np.ones((3, 3, 1, 1)), input_shape=(6, 6), method="gram",
                                        gram_dense_limit=-1), "`gram_dense_limit`"),
    (lambda: norms.conv2d_spectral_norm(np.ones((3, 3, 1, 1)), input_shape=(6, 6), method="gram",
                                        gram_frequencies=0), "`gram_frequencies`"),
])
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_pruned_frequencies_keep_the_bound_certified_and_tight():
    rng = np.random.default_rng(9)
    # Equal taps put the symbol's peak at frequency (0, 0), far above the others.
    peaked = np.tile(rng.normal(size=(1, 1, 8, 8)), (3, 3, 1, 1)) + 0.5 * rng.normal(size=(3, 3, 8, 8))
    for kernel, keep in [(peaked, 2), (rng.normal(size=(3, 3, 3, 4)), 1)]:
        exact = l2(bf.circular_matrix(kernel, (8, 8)))
        args = {"input_shape": (8, 8), "padding": "circular", "method": "gram"}
        full = float(norms.conv2d_spectral_norm(kernel, **args, gram_iterations=6))
        pruned = float(norms.conv2d_spectral_norm(kernel, **args, gram_iterations=6, gram_frequencies=keep))
        coarse = float(norms.conv2d_spectral_norm(kernel, **args, gram_iterations=3))  # where 6 steps prune
        assert exact <= full <= pruned <= coarse
        if keep == 2:  # the peak is kept and refined: the pruned bound is the full one
            np.testing.assert_allclose(pruned, full, rtol=1e-9)
            assert coarse > 1.005 * full  # so the kept frequency's refinement is what made it tight
