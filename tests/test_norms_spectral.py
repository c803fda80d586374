"""tfnorms.norms.spectral (FFT and power-iteration spectral norms) against dense operator matrices."""

import numpy as np
import pytest
import tensorflow as tf

from norm_bruteforce import dense_conv_matrix, l2, tf_padding
from norm_fixtures import GRID, circular_matrix, kdet
from tfnorms import norms


@pytest.mark.parametrize("shape,strides,dilation,padding,hw", GRID[:40])
def test_conv_spectral_power_iteration_matches_dense_matrix(shape, strides, dilation, padding, hw):
    rng = np.random.default_rng(7 + len(GRID) + sum(shape))
    kernel = rng.normal(size=shape)
    a = dense_conv_matrix(tf.constant(kernel), *hw, strides, tf_padding(padding), dilation)
    got = norms.conv2d_spectral_norm(
        kernel, input_shape=hw, strides=strides, padding=padding, dilation_rate=dilation,
        tol=1e-12, max_iter=5000,
    ).numpy()
    np.testing.assert_allclose(got, l2(a), rtol=1e-4)


@pytest.mark.parametrize(
    "k,hw,dilation,c_in,c_out",
    [(3, (4, 4), (1, 1), 3, 2), (3, (5, 7), (1, 1), 2, 4), (5, (3, 3), (1, 1), 2, 2),
     (3, (6, 5), (2, 1), 3, 3), (1, (4, 4), (1, 1), 4, 1), (4, (2, 9), (2, 2), 1, 3)],
)
def test_conv_spectral_circular_matches_dense_matrix(k, hw, dilation, c_in, c_out):
    rng = np.random.default_rng(k * 100 + c_in * 10 + c_out)
    kernel = rng.normal(size=(k, k, c_in, c_out))
    a = circular_matrix(kernel, *hw, dilation)
    got = norms.conv2d_spectral_norm(kernel, input_shape=hw, padding="circular", dilation_rate=dilation)
    np.testing.assert_allclose(got.numpy(), l2(a), rtol=1e-9)
    values = norms.conv2d_singular_values(kernel, input_shape=hw, dilation_rate=dilation).numpy()
    expected = np.linalg.svd(a, compute_uv=False)
    np.testing.assert_allclose(values, expected[: len(values)], rtol=1e-9, atol=1e-9)


def test_svc_spectral_test_vector():
    values = norms.conv2d_singular_values(kdet(3), input_shape=(4, 4)).numpy()
    np.testing.assert_allclose(values[:5], [39.5368, 39.5368, 28.4338, 28.4338, 21.9805], atol=1e-4)
    circ = norms.conv2d_spectral_norm(kdet(3), input_shape=(4, 4), padding="circular")
    np.testing.assert_allclose(float(circ), 39.5368, atol=1e-4)


def test_spectral_norm_gradient_is_outer_product():
    rng = np.random.default_rng(5)
    kernel = tf.Variable(rng.normal(size=(3, 3, 2, 2)))
    with tf.GradientTape() as tape:
        sigma = norms.conv2d_spectral_norm(kernel, input_shape=(5, 5), tol=1e-14, max_iter=5000)
    grad = tape.gradient(sigma, kernel).numpy()
    eps = 1e-6
    direction = rng.normal(size=kernel.shape)
    plus = norms.conv2d_spectral_norm(kernel + eps * direction, input_shape=(5, 5), tol=1e-14, max_iter=5000)
    minus = norms.conv2d_spectral_norm(kernel - eps * direction, input_shape=(5, 5), tol=1e-14, max_iter=5000)
    np.testing.assert_allclose((plus - minus).numpy() / (2 * eps), np.sum(grad * direction), rtol=1e-4)


def test_spectral_norm_with_nearly_equal_top_singular_values():
    """sigma_2 / sigma_1 = 0.99956 here: one power-iteration vector stalls, a block of 4 does not."""
    kernel = np.random.default_rng(76).uniform(-0.3, 0.3, (2, 3, 3, 4))
    singular_values = np.linalg.svd(dense_conv_matrix(kernel, 5, 7, (1, 2), "VALID", (1, 1)), compute_uv=False)
    assert singular_values[1] / singular_values[0] > 0.9995
    args = dict(input_shape=(5, 7), strides=(1, 2), padding="valid")
    block = float(norms.conv2d_spectral_norm(kernel.astype("float32"), **args))
    single = float(norms.conv2d_spectral_norm(kernel.astype("float32"), block_size=1, **args))
    assert block == pytest.approx(singular_values[0], rel=2e-6)
    assert abs(single - singular_values[0]) / singular_values[0] > 1e-4  # max_iter reached far from the norm


def test_spectral_norm_block_is_capped_and_validated():
    assert float(norms.conv2d_spectral_norm(np.full((1, 1, 1, 1), -3.0), input_shape=(1, 1), padding="valid")) == 3.0
    with pytest.raises(ValueError, match="`block_size`"):
        norms.conv2d_spectral_norm(np.ones((3, 3, 1, 1)), input_shape=(4, 4), block_size=0)
