"""tfnorms.norms.estimates: the power-iteration lower bound and the FFT upper bound, against dense matrices."""

import numpy as np
import pytest
import tensorflow as tf

import norm_bruteforce as bf
from tfnorms import norms

# (kernel shape, strides, padding, dilation, input size); padding as tfnorms takes it.
CASES = [
    ((3, 3, 2, 3), 1, "same", 1, (6, 5)),
    ((3, 3, 2, 2), 2, "same", 1, (7, 6)),
    ((2, 3, 1, 3), (1, 2), "valid", 1, (5, 7)),
    ((3, 3, 3, 2), 1, ((1, 0), (2, 1)), 1, (4, 6)),
    ((3, 2, 2, 2), 1, "same", 2, (6, 6)),
]


def zero_padded_matrix(kernel, strides, padding, dilation, hw):
    pair = lambda v: (v, v) if isinstance(v, int) else v  # noqa: E731
    return bf.dense_conv_matrix(tf.constant(kernel), *hw, pair(strides), bf.tf_padding(padding), pair(dilation))


@pytest.mark.parametrize("shape,strides,padding,dilation,hw", CASES)
def test_power_iteration_is_a_lower_bound_that_converges(shape, strides, padding, dilation, hw):
    kernel = np.random.default_rng(sum(shape) + len(hw)).normal(size=shape)
    sigma = bf.l2(zero_padded_matrix(kernel, strides, padding, dilation, hw))
    geom = dict(strides=strides, padding=padding, dilation_rate=dilation)
    start = np.random.default_rng(1).normal(size=(1, *hw, shape[2]))
    estimates, vector = [], start
    for _ in range(4):  # warm starts: each call continues from the previous vector
        estimate, vector = norms.conv2d_power_iteration(kernel, vector, num_iterations=50, **geom)
        estimates.append(float(estimate))
    assert vector.shape == start.shape
    assert float(tf.norm(vector)) == pytest.approx(1.0, rel=1e-9)
    assert all(e <= sigma * (1 + 1e-9) for e in estimates), (estimates, sigma)
    assert all(b >= a * (1 - 1e-12) for a, b in zip(estimates, estimates[1:]))  # ||A v|| grows along the iteration
    assert estimates[-1] > estimates[0]  # a warm start continues: a restart would repeat the first estimate
    assert estimates[-1] == pytest.approx(sigma, rel=1e-3)  # slowest case: sigma_2 / sigma_1 = 0.999
    one_step, _ = norms.conv2d_power_iteration(kernel, start, num_iterations=1, **geom)
    assert float(one_step) < estimates[-1]


def test_power_iteration_gradient_is_the_gradient_of_norm_a_v_at_the_returned_v():
    rng = np.random.default_rng(3)
    kernel = tf.Variable(rng.normal(size=(3, 3, 2, 2)))
    with tf.GradientTape() as tape:
        estimate, vector = norms.conv2d_power_iteration(kernel, tf.ones((1, 5, 5, 2), tf.float64), num_iterations=3)
    grad = tape.gradient(estimate, kernel).numpy()
    v = vector.numpy().ravel()
    norm_a_v = lambda k: np.linalg.norm(bf.dense_conv_matrix(tf.constant(k), 5, 5, (1, 1), "SAME", (1, 1)) @ v)  # noqa: E731
    assert float(estimate) == pytest.approx(norm_a_v(kernel.numpy()), rel=1e-9)
    # v held fixed (3 iterations: not yet the top singular vector, so a gradient through v would differ).
    direction, eps = rng.normal(size=kernel.shape), 1e-6
    slope = (norm_a_v(kernel.numpy() + eps * direction) - norm_a_v(kernel.numpy() - eps * direction)) / (2 * eps)
    assert np.sum(grad * direction) == pytest.approx(slope, rel=1e-6)


def test_power_iteration_replaces_a_zero_start_and_refuses_circular_padding():
    kernel = np.random.default_rng(4).normal(size=(3, 3, 1, 2))
    estimate, vector = norms.conv2d_power_iteration(kernel, np.zeros((1, 4, 4, 1)), num_iterations=200)
    assert np.all(np.isfinite(vector.numpy()))
    assert float(estimate) == pytest.approx(bf.l2(bf.conv_matrix(kernel, (4, 4))), rel=1e-6)
    with pytest.raises(ValueError, match="`padding`.*circular"):
        norms.conv2d_power_iteration(kernel, np.ones((1, 4, 4, 1)), padding="circular")
    with pytest.raises(ValueError, match="`num_iterations`"):
        norms.conv2d_power_iteration(kernel, np.ones((1, 4, 4, 1)), num_iterations=0)


@pytest.mark.parametrize("shape,strides,padding,dilation,hw", CASES)
def test_fft_bound_is_the_circular_norm_on_the_enlarged_torus(shape, strides, padding, dilation, hw):
    kernel = np.random.default_rng(sum(shape) * 7).normal(size=shape)
    bound = float(norms.conv2d_spectral_norm_bound(kernel, input_shape=hw, dilation_rate=dilation))
    pair = (dilation, dilation) if isinstance(dilation, int) else dilation
    torus = tuple(n + (k - 1) * d for n, k, d in zip(hw, shape[:2], pair))
    assert bound == pytest.approx(bf.l2(bf.circular_matrix(kernel, torus, pair)), rel=1e-9)
    assert bound >= bf.l2(zero_padded_matrix(kernel, strides, padding, dilation, hw)) * (1 - 1e-9)


def test_fft_bound_needs_the_input_size():
    with pytest.raises(ValueError, match="`input_shape`"):
        norms.conv2d_spectral_norm_bound(np.ones((3, 3, 1, 1)), input_shape=None)
    with pytest.raises(ValueError, match="`input_shape`"):
        norms.conv2d_spectral_norm_bound(np.ones((3, 3, 1, 1)), input_shape=(4, None))
