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


def grid(count, seed):
    """Small shapes: kernel 1-5, channels 1-4, inputs 6-16, every padding; dense Gram side <= 512."""
    rng = random.Random(seed)
    paddings = ["circular", "same", "valid", ((1, 0), (2, 1)), ((0, 3), (1, 1))]
    cases = []
    while len(cases) < count:
        kh, kw, c_in, c_out = (rng.randint(1, 5), rng.randint(1, 5), rng.randint(1, 4), rng.randint(1, 4))
        hw = (rng.randint(6, 16), rng.randint(6, 16))
        if min(c_in, c_out) * hw[0] * hw[1] <= 512:
            cases.append((kh, kw, c_in, c_out, hw, paddings[len(cases) % len(paddings)]))
    return cases


@pytest.fixture(scope="module")
def measured():
    """``(padding, bound / dense norm)`` over the grid, float32 kernels, default 8 steps."""
    rng = np.random.default_rng(0)
    rows = []
    for kh, kw, c_in, c_out, hw, padding in grid(20, seed=3):
        kernel = rng.normal(size=(kh, kw, c_in, c_out))
        if padding == "circular":
            exact = l2(bf.circular_matrix(kernel, hw))
        else:
            exact = l2(bf.dense_conv_matrix(kernel, *hw, 1, bf.tf_padding(padding), 1))
        bound = norms.conv2d_spectral_norm(kernel.astype("float32"), input_shape=hw, padding=padding, method="gram")
        rows.append((str(padding), float(bound) / exact))
    return rows


def test_never_below_the_dense_norm(measured):
    assert min(ratio for _, ratio in measured) >= 1.0


def test_circular_within_one_percent(measured):
    circular = [ratio for padding, ratio in measured if padding == "circular"]
    assert len(circular) == 4 and max(circular) <= 1.01


def test_zero_padding_is_the_circular_bound_on_the_enclosing_torus():
    # 3x3 "same" on 7x5 pads (1, 1): torus (8, 6); 5x5 "valid" on 6x6: no padding, torus (6, 6).
    kernel = np.random.default_rng(1).normal(size=(3, 3, 2, 3)).astype("float32")
    for padding, hw, torus in [("same", (7, 5), (8, 6)), ("valid", (6, 6), (6, 6)), (((0, 4), (2, 0)), (6, 6), (8, 8))]:
        zero = norms.conv2d_spectral_norm(kernel, input_shape=hw, padding=padding, method="gram")
        circular = norms.conv2d_spectral_norm(kernel, input_shape=torus, padding="circular")
        np.testing.assert_allclose(zero, circular, rtol=2e-5)


def test_dense_gram_bound():
    rng = np.random.default_rng(2)
    for shape in [(1, 1), (3, 7), (12, 5), (40, 40)]:
        kernel = rng.normal(size=shape)
        exact = np.linalg.norm(kernel, 2)
        bound = float(norms.dense_spectral_norm(kernel.astype("float32"), method="gram"))
        assert exact <= bound <= 1.01 * exact


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
])
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()
