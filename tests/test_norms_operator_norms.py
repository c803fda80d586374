"""tfnorms.norms.operator_norms (exact l1 / l_inf norms) against dense operator matrices built by brute force."""

import zlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from norm_bruteforce import dense_conv_matrix, dense_matrix_of, l1, l2, linf, tf_padding
from norm_fixtures import GRID, circular_matrix, float64_keras, kdet  # noqa: F401 (float64_keras: autouse)
from tfnorms import norms


@pytest.mark.parametrize("shape,strides,dilation,padding,hw", GRID)
def test_conv_l1_linf_match_dense_matrix(shape, strides, dilation, padding, hw):
    rng = np.random.default_rng(zlib.crc32(repr((shape, strides, dilation, padding, hw)).encode()))
    kernel = rng.normal(size=shape)
    a = dense_conv_matrix(tf.constant(kernel), *hw, strides, tf_padding(padding), dilation)
    kwargs = dict(input_shape=hw, strides=strides, padding=padding, dilation_rate=dilation)
    np.testing.assert_allclose(norms.conv2d_l1_norm(kernel, **kwargs).numpy(), l1(a), rtol=1e-5)
    np.testing.assert_allclose(norms.conv2d_linf_norm(kernel, **kwargs).numpy(), linf(a), rtol=1e-5)


@pytest.mark.parametrize("groups,padding,strides", [(2, "same", 1), (3, "valid", 2), (6, "same", 2)])
def test_grouped_conv_norms_match_dense_matrix(groups, padding, strides):
    rng = np.random.default_rng(groups)
    c_in, c_out = 6, 6
    kernel = rng.normal(size=(3, 3, c_in // groups, c_out))
    a = dense_matrix_of(
        lambda x: tf.nn.conv2d(x, tf.constant(kernel), strides, padding.upper()), (6, 5, c_in)
    )
    kwargs = dict(input_shape=(6, 5), strides=strides, padding=padding, groups=groups)
    np.testing.assert_allclose(norms.conv2d_l1_norm(kernel, **kwargs), l1(a), rtol=1e-6)
    np.testing.assert_allclose(norms.conv2d_linf_norm(kernel, **kwargs), linf(a), rtol=1e-6)
    np.testing.assert_allclose(
        norms.conv2d_spectral_norm(kernel, tol=1e-12, max_iter=5000, **kwargs), l2(a), rtol=1e-4
    )
    if strides == 1 and padding == "same":
        circ = norms.conv2d_spectral_norm(kernel, input_shape=(6, 5), padding="circular", groups=groups)
        dense_kernel = np.zeros((3, 3, c_in, c_out))
        per = c_out // groups
        for g in range(groups):
            dense_kernel[:, :, g * (c_in // groups):(g + 1) * (c_in // groups), g * per:(g + 1) * per] = (
                kernel[:, :, :, g * per:(g + 1) * per]
            )
        np.testing.assert_allclose(circ, l2(circular_matrix(dense_kernel, 6, 5)), rtol=1e-9)


# docs/theory.md#test-vectors: (k, stride, padding, n, l1, linf)
SPEC_VECTORS = [
    (3, 1, ((1, 1), (1, 1)), 6, 52, 78),
    (3, 2, ((1, 1), (1, 1)), 6, 22, 78),
    (3, 2, "same", 6, 22, 78),
    (1, 2, "valid", 6, 7, 10),
    (5, 1, ((2, 2), (2, 2)), 6, 144, 210),
    (3, 1, "valid", 3, 7, 78),
    (3, 1, ((1, 1), (1, 1)), 2, 27, 37),
]


@pytest.mark.parametrize("k,stride,padding,n,expected_l1,expected_linf", SPEC_VECTORS)
def test_methods_test_vectors(k, stride, padding, n, expected_l1, expected_linf):
    kwargs = dict(input_shape=(n, n), strides=stride, padding=padding)
    assert float(norms.conv2d_l1_norm(kdet(k), **kwargs)) == expected_l1
    assert float(norms.conv2d_linf_norm(kdet(k), **kwargs)) == expected_linf


@pytest.mark.parametrize("k,stride,dilation", [(3, 1, 1), (3, 2, 1), (5, 3, 1), (2, 2, 1), (3, 1, 2), (4, 3, 1)])
def test_closed_form_equals_large_input_norm(k, stride, dilation):
    rng = np.random.default_rng(k * stride * dilation)
    kernel = rng.normal(size=(k, k, 3, 4))
    kwargs = dict(strides=stride, dilation_rate=dilation)
    for padding in ("same", "valid"):
        big = dict(kwargs, padding=padding, input_shape=(24, 24))
        np.testing.assert_allclose(norms.conv2d_l1_norm(kernel, **kwargs), norms.conv2d_l1_norm(kernel, **big))
        np.testing.assert_allclose(norms.conv2d_linf_norm(kernel, **kwargs), norms.conv2d_linf_norm(kernel, **big))
    # The large-input closed forms (docs/theory.md#large-input-norms): full filter sums, stride residue classes.
    magnitude = np.abs(kernel)
    np.testing.assert_allclose(norms.conv2d_linf_norm(kernel), magnitude.sum(axis=(0, 1, 2)).max())
    classes = [
        magnitude[a::stride, b::stride].sum(axis=(0, 1, 3)).max() for a in range(stride) for b in range(stride)
    ]
    if dilation == 1:
        np.testing.assert_allclose(norms.conv2d_l1_norm(kernel, strides=stride), max(classes))


def test_dense_norms_and_spec_vector():
    torch_weight = np.array([[1.0, -2.0, 3.0], [-4.0, 5.0, -6.0]])
    keras_kernel = torch_weight.T
    assert float(norms.dense_l1_norm(keras_kernel)) == 9.0
    assert float(norms.dense_linf_norm(keras_kernel)) == 15.0
    rng = np.random.default_rng(0)
    for shape in [(7, 3), (3, 7), (5, 5), (1, 4)]:
        kernel = rng.normal(size=shape)
        matrix = kernel.T  # y = x @ kernel  <=>  y = kernel.T x
        np.testing.assert_allclose(norms.dense_l1_norm(kernel), l1(matrix))
        np.testing.assert_allclose(norms.dense_linf_norm(kernel), linf(matrix))
        np.testing.assert_allclose(norms.dense_spectral_norm(kernel), l2(matrix), rtol=1e-10)


def test_batch_norm_norm():
    gamma = np.array([0.5, -2.0, 1.0])
    variance = np.array([0.25, 3.0, 0.01])
    expected = np.max(np.abs(gamma) / np.sqrt(variance + 1e-3))
    np.testing.assert_allclose(norms.batch_norm_norm(gamma, variance, 1e-3), expected)
    np.testing.assert_allclose(norms.batch_norm_norm(None, variance, 1e-3), np.max(1 / np.sqrt(variance + 1e-3)))


# ---------------------------------------------------------------------------
# Gradients, compilation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("ord", [1, np.inf])
@pytest.mark.parametrize("strides,padding,hw", [(1, "same", (5, 5)), (2, "same", (6, 6)), (3, "valid", (8, 7))])
def test_gradient_is_sign_on_maximal_group(ord, strides, padding, hw):
    """The gradient of our norm equals the gradient of the brute-force norm."""
    rng = np.random.default_rng(11)
    kernel = tf.Variable(rng.normal(size=(3, 3, 2, 3)))
    with tf.GradientTape(persistent=True) as tape:
        ours = (norms.conv2d_l1_norm if ord == 1 else norms.conv2d_linf_norm)(
            kernel, input_shape=hw, strides=strides, padding=padding
        )
        size = hw[0] * hw[1] * 2
        basis = tf.reshape(tf.eye(size, dtype=tf.float64), (size, hw[0], hw[1], 2))
        matrix = tf.transpose(tf.reshape(tf.nn.conv2d(basis, kernel, strides, padding.upper()), (size, -1)))
        brute = tf.reduce_max(tf.reduce_sum(tf.abs(matrix), axis=0 if ord == 1 else 1))
    np.testing.assert_allclose(ours.numpy(), brute.numpy())
    grad = tape.gradient(ours, kernel).numpy()
    # Brute force spreads the gradient evenly over tied (identical) columns.
    brute_grad = tape.gradient(brute, kernel).numpy()
    np.testing.assert_allclose(grad, brute_grad, atol=1e-12)
    support = grad != 0
    np.testing.assert_array_equal(grad[support], np.sign(kernel.numpy())[support])


def test_norms_compile_with_xla():
    rng = np.random.default_rng(3)
    kernel = tf.constant(rng.normal(size=(3, 3, 4, 6)).astype(np.float32))
    dense = tf.constant(rng.normal(size=(10, 4)).astype(np.float32))

    @tf.function(jit_compile=True)
    def all_norms(kernel, dense):
        return tf.stack([
            norms.conv2d_l1_norm(kernel, input_shape=(8, 8), strides=2),
            norms.conv2d_linf_norm(kernel, input_shape=(8, 8), strides=2),
            norms.conv2d_spectral_norm(kernel, input_shape=(8, 8), padding="circular"),
            norms.conv2d_spectral_norm(kernel, input_shape=(8, 8), strides=2, max_iter=3000),
            norms.dense_l1_norm(dense),
            norms.dense_linf_norm(dense),
            norms.dense_spectral_norm(dense),
        ])

    compiled = all_norms(kernel, dense).numpy()
    eager = np.array([
        norms.conv2d_l1_norm(kernel, input_shape=(8, 8), strides=2),
        norms.conv2d_linf_norm(kernel, input_shape=(8, 8), strides=2),
        norms.conv2d_spectral_norm(kernel, input_shape=(8, 8), padding="circular"),
        norms.conv2d_spectral_norm(kernel, input_shape=(8, 8), strides=2, max_iter=3000),
        norms.dense_l1_norm(dense),
        norms.dense_linf_norm(dense),
        norms.dense_spectral_norm(dense),
    ])
    np.testing.assert_allclose(compiled, eager, rtol=1e-4)


# ---------------------------------------------------------------------------
# Errors name the argument and the accepted values
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: norms.conv2d_l1_norm(np.ones((3, 3, 1, 1)), padding="full"), "`padding`.*same.*valid"),
        (lambda: norms.conv2d_l1_norm(np.ones((3, 3, 1, 1)), strides=0), "`strides`"),
        (lambda: norms.conv2d_l1_norm(np.ones((3, 3, 1, 1)), strides=2, dilation_rate=2), "strides.*dilation_rate"),
        (lambda: norms.conv2d_l1_norm(np.ones((3, 3, 1)), input_shape=(4, 4)), "`kernel`.*rank-4"),
        (lambda: norms.conv2d_l1_norm(np.ones((3, 3, 1, 1)), input_shape=(4, 4, 1)), "`input_shape`"),
        (lambda: norms.conv2d_l1_norm(np.ones((3, 3, 1, 1)), input_shape=(2, 2), padding="valid"), "no output"),
        (lambda: norms.conv2d_l1_norm(np.ones((3, 3, 1, 3)), groups=2), "`groups`"),
        (lambda: norms.conv2d_spectral_norm(np.ones((3, 3, 1, 1)), input_shape=None), "`input_shape`"),
        (lambda: norms.conv2d_spectral_norm(np.ones((3, 3, 1, 1)), input_shape=(4, 4), strides=2,
                                            padding="circular"), "circular.*stride 1"),
        (lambda: norms.dense_l1_norm(np.ones((3,))), "`kernel`.*rank-2"),
        (lambda: norms.layer_norm(keras.layers.Dense(2), 3), "`ord`.*1, 2, numpy.inf"),
        (lambda: norms.layer_norm(keras.layers.Conv1D(2, 3), 1), "Conv1D.*Supported"),
        (lambda: norms.model_norms(keras.Sequential(), 1, on_unsupported="skip"), "`on_unsupported`"),
    ],
)
def test_errors_name_argument_and_accepted_values(call, match):
    with pytest.raises(ValueError, match=match):
        call()
