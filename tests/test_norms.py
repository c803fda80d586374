"""tfnorms.norms against dense operator matrices built by brute force."""

import random
import warnings
import zlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfnorms import norms
from tfnorms.norms import geometry

# ---------------------------------------------------------------------------
# Brute-force oracles: the dense matrix of the operator, built by applying the
# real TensorFlow op (or the Keras layer) to every basis vector of the input.
# ---------------------------------------------------------------------------


def dense_conv_matrix(kernel, h, w, strides, padding, dilation):
    """Rows = flattened outputs, columns = flattened inputs (tf.nn.conv2d on e_k)."""
    c_in = kernel.shape[2] * 1  # grouped kernels: tf infers groups from the input
    return dense_matrix_of(
        lambda x: tf.nn.conv2d(
            x, kernel, strides=strides, padding=padding, dilations=dilation
        ),
        (h, w, c_in),
    )


def dense_matrix_of(fn, input_shape):
    size = int(np.prod(input_shape))
    basis = tf.reshape(tf.eye(size, dtype=tf.float64), (size,) + tuple(input_shape))
    out = fn(basis)
    return tf.reshape(out, (size, -1)).numpy().T


def tf_padding(padding):
    if isinstance(padding, str):
        return padding.upper()
    return [[0, 0], list(padding[0]), list(padding[1]), [0, 0]]


def circular_matrix(kernel, n_h, n_w, dilation=(1, 1)):
    """Dense circular cross-correlation y[u,v,j] = sum K[r,c,i,j] x[(u+r d) % n, (v+c d) % n, i]."""
    kh, kw, c_in, c_out = kernel.shape
    a = np.zeros((n_h * n_w * c_out, n_h * n_w * c_in))
    for u in range(n_h):
        for v in range(n_w):
            for r in range(kh):
                for c in range(kw):
                    a_in = (u + r * dilation[0]) % n_h
                    b_in = (v + c * dilation[1]) % n_w
                    rows = (u * n_w + v) * c_out + np.arange(c_out)
                    cols = (a_in * n_w + b_in) * c_in + np.arange(c_in)
                    a[np.ix_(rows, cols)] += kernel[r, c].T
    return a


def l1(a):
    return np.abs(a).sum(axis=0).max()


def linf(a):
    return np.abs(a).sum(axis=1).max()


def l2(a):
    return np.linalg.norm(a, 2)


def kdet(k, c_in=3, c_out=2):
    """Test-vector kernel of docs/theory.md#test-vectors: K[j,i,r,c] = ((7j + 5i + 3r + c) mod 11) - 5, Keras layout."""
    j, i, r, c = np.meshgrid(np.arange(c_out), np.arange(c_in), np.arange(k), np.arange(k), indexing="ij")
    torch_layout = ((7 * j + 5 * i + 3 * r + c) % 11) - 5
    return np.transpose(torch_layout, (2, 3, 1, 0)).astype(np.float64)


def random_configs(count, seed):
    rng = random.Random(seed)
    configs = []
    while len(configs) < count:
        kh, kw = rng.randint(1, 5), rng.randint(1, 5)
        stride = (rng.randint(1, 3), rng.randint(1, 3))
        dilation = (1, 1) if max(stride) > 1 else (rng.randint(1, 2), rng.randint(1, 2))
        padding = rng.choice(["same", "valid", "explicit"])
        if padding == "explicit":
            padding = ((rng.randint(0, 2), rng.randint(0, 2)), (rng.randint(0, 2), rng.randint(0, 2)))
        h, w = rng.randint(1, 9), rng.randint(1, 9)
        c_in, c_out = rng.randint(1, 4), rng.randint(1, 4)
        pads = geometry.normalize_padding(padding)
        sizes = [
            geometry.output_size(n, k, s, d, p)
            for n, k, s, d, p in zip((h, w), (kh, kw), stride, dilation, pads)
        ]
        if min(sizes) == 0:
            continue
        configs.append(((kh, kw, c_in, c_out), stride, dilation, padding, (h, w)))
    return configs


GRID = random_configs(120, seed=1234)


@pytest.mark.parametrize("shape,strides,dilation,padding,hw", GRID)
def test_conv_l1_linf_match_dense_matrix(shape, strides, dilation, padding, hw):
    rng = np.random.default_rng(zlib.crc32(repr((shape, strides, dilation, padding, hw)).encode()))
    kernel = rng.normal(size=shape)
    a = dense_conv_matrix(tf.constant(kernel), *hw, strides, tf_padding(padding), dilation)
    kwargs = dict(input_shape=hw, strides=strides, padding=padding, dilation_rate=dilation)
    np.testing.assert_allclose(norms.conv2d_l1_norm(kernel, **kwargs).numpy(), l1(a), rtol=1e-5)
    np.testing.assert_allclose(norms.conv2d_linf_norm(kernel, **kwargs).numpy(), linf(a), rtol=1e-5)


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


def test_tf_same_padding_is_asymmetric():
    assert geometry.axis_padding(6, 3, 2, 1, "same") == (0, 1, 3)
    assert geometry.axis_padding(32, 3, 2, 1, "same") == (0, 1, 16)
    assert geometry.axis_padding(7, 3, 2, 1, "same") == (1, 1, 4)


def test_svc_spectral_test_vector():
    values = norms.conv2d_singular_values(kdet(3), input_shape=(4, 4)).numpy()
    np.testing.assert_allclose(values[:5], [39.5368, 39.5368, 28.4338, 28.4338, 21.9805], atol=1e-4)
    circ = norms.conv2d_spectral_norm(kdet(3), input_shape=(4, 4), padding="circular")
    np.testing.assert_allclose(float(circ), 39.5368, atol=1e-4)


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


# ---------------------------------------------------------------------------
# Keras layers and models: brute force through the layer itself
# ---------------------------------------------------------------------------


def layer_matrix(fn, input_shape):
    """Dense matrix of the linear part of ``fn`` (the bias removed)."""
    zero = fn(tf.zeros((1,) + tuple(input_shape), tf.float64))
    return dense_matrix_of(lambda x: fn(x) - zero, input_shape)


@pytest.fixture(autouse=True)
def float64_keras():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float64")
    yield
    keras.config.set_dtype_policy(previous)


@pytest.mark.parametrize(
    "layer_fn,input_shape",
    [
        (lambda: keras.layers.Conv2D(3, 3, strides=2, padding="same", bias_initializer="ones"), (6, 6, 2)),
        (lambda: keras.layers.Conv2D(4, (2, 3), strides=(1, 2), padding="valid"), (5, 7, 3)),
        (lambda: keras.layers.Conv2D(2, 3, dilation_rate=2, padding="same"), (5, 5, 2)),
        (lambda: keras.layers.Conv2D(4, 3, padding="same", groups=2), (4, 4, 4)),
        (lambda: keras.layers.DepthwiseConv2D(3, strides=2, depth_multiplier=2, padding="same"), (6, 5, 3)),
        (lambda: keras.layers.Dense(3), (5,)),
    ],
)
def test_layer_norm_matches_layer_matrix(layer_fn, input_shape):
    inputs = keras.Input(input_shape)
    layer = layer_fn()
    model = keras.Model(inputs, layer(inputs))
    matrix = layer_matrix(lambda x: model(x), input_shape)
    np.testing.assert_allclose(norms.layer_norm(layer, 1), l1(matrix), rtol=1e-6)
    np.testing.assert_allclose(norms.layer_norm(layer, np.inf), linf(matrix), rtol=1e-6)
    np.testing.assert_allclose(norms.layer_norm(layer, 2), l2(matrix), rtol=1e-4)


def test_batch_norm_layer_uses_inference_map():
    layer = keras.layers.BatchNormalization(epsilon=1e-5)
    inputs = keras.Input((3, 3, 4))
    model = keras.Model(inputs, layer(inputs))
    rng = np.random.default_rng(0)
    layer.gamma.assign(rng.normal(size=4))
    layer.moving_variance.assign(rng.uniform(0.1, 2.0, size=4))
    layer.moving_mean.assign(rng.normal(size=4))
    matrix = layer_matrix(lambda x: model(x, training=False), (3, 3, 4))
    for ord in (1, 2, np.inf):
        np.testing.assert_allclose(norms.layer_norm(layer, ord), [l1, l2, linf][[1, 2, np.inf].index(ord)](matrix))


def test_zero_padding_is_folded_into_the_convolution():
    """ZeroPadding2D(1) + "valid" stride 2 is PyTorch's padding=1: norm of the composite."""
    inputs = keras.Input((6, 6, 2))
    padded = keras.layers.ZeroPadding2D(1)(inputs)
    conv = keras.layers.Conv2D(2, 3, strides=2, padding="valid", use_bias=False)
    model = keras.Model(inputs, conv(padded))
    matrix = layer_matrix(lambda x: model(x), (6, 6, 2))
    np.testing.assert_allclose(norms.layer_norm(conv, 1), l1(matrix), rtol=1e-6)
    np.testing.assert_allclose(norms.layer_norm(conv, 2), l2(matrix), rtol=1e-4)
    unfolded = layer_matrix(lambda x: conv(x), (8, 8, 2))
    np.testing.assert_allclose(norms.layer_norm(conv, 1, fold_padding=False), l1(unfolded), rtol=1e-6)


def test_model_norms_order_nesting_and_unsupported_report():
    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="inner_dense")], name="inner")
    inputs = keras.Input((8, 8, 2))
    x = keras.layers.Conv2D(3, 3, name="c1")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="c2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = inner(x)
    x = keras.layers.Reshape((3, 1))(x)
    x = keras.layers.Conv1D(2, 1, name="c1d")(x)
    model = keras.Model(inputs, x)
    with pytest.warns(UserWarning, match="c1d"):
        result = norms.model_norms(model, 1)
    assert [p.split("/")[-1] for p in result] == ["c1", "bn", "c2", "inner_dense"]
    for path, value in result.items():
        layer = {l.path: l for l in model._flatten_layers(include_self=False)}[path]
        assert float(value) == float(norms.layer_norm(layer, 1))
    with pytest.raises(ValueError, match="Conv1D"):
        norms.model_norms(model, 1, on_unsupported="raise")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        norms.model_norms(model, np.inf, on_unsupported="ignore")


def test_unbuilt_and_unknown_size_layers():
    conv = keras.layers.Conv2D(2, 3)
    with pytest.raises(ValueError, match="not built"):
        norms.layer_norm(conv, 1)
    conv(tf.zeros((1, 5, 5, 1)))
    fully_conv = keras.layers.Conv2D(2, 3, strides=2)
    fully_conv.build((None, None, None, 1))
    np.testing.assert_allclose(
        norms.layer_norm(fully_conv, 1), norms.conv2d_l1_norm(fully_conv.kernel, strides=2)
    )
    with pytest.raises(ValueError, match="input_shape"):
        norms.layer_norm(fully_conv, 2)
    np.testing.assert_allclose(
        norms.layer_norm(fully_conv, 2, input_shape=(6, 6)),
        norms.conv2d_spectral_norm(fully_conv.kernel, input_shape=(6, 6), strides=2, padding="valid"),
        rtol=1e-6,
    )


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
