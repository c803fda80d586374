"""tfnorms.norms.layers (norms of built Keras layers and models): brute force through the layer itself."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from norm_bruteforce import dense_matrix_of, l1, l2, linf
from norm_fixtures import float64_keras  # noqa: F401 (autouse)
from tfnorms import norms


def layer_matrix(fn, input_shape):
    """Dense matrix of the linear part of ``fn`` (the bias removed)."""
    zero = fn(tf.zeros((1,) + tuple(input_shape), tf.float64))
    return dense_matrix_of(lambda x: fn(x) - zero, input_shape)


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
