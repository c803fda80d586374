"""model_norms through one cached compiled function: same values, traced once, weakly cached, differentiable."""

import gc
import weakref

import keras
import numpy as np
import pytest
import tensorflow as tf
from norm_bruteforce import dense_matrix_of, l1, l2, linf
from norm_fixtures import float64_keras  # noqa: F401 (autouse)

from tfnorms import norms
from tfnorms.norms import layers as norm_layers


def small_model():
    inputs = keras.Input((7, 7, 2))
    x = keras.layers.ZeroPadding2D(1)(inputs)
    x = keras.layers.Conv2D(3, 3, name="c1")(x)
    x = keras.layers.BatchNormalization(name="bn", gamma_initializer="random_uniform")(x)
    x = keras.layers.DepthwiseConv2D(3, strides=2, depth_multiplier=2, padding="same", name="dw")(x)
    x = keras.layers.Conv2D(4, (2, 3), strides=(1, 2), padding="valid", name="c2")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(3, name="fc")(x)
    return keras.Model(inputs, x, name="net")


@pytest.fixture(scope="module")
def model():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float64")
    built = small_model()
    keras.config.set_dtype_policy(previous)
    return built


@pytest.mark.parametrize("ord", [1, np.inf, 2])
def test_compiled_values_equal_per_layer_norms_and_dense_matrices(model, ord):
    layers = {layer.path: layer for layer in model._flatten_layers(include_self=False)}
    values = norms.model_norms(model, ord)
    assert list(values) == ["c1", "bn", "dw", "c2", "fc"]
    for path, value in values.items():
        np.testing.assert_allclose(float(value), float(norms.layer_norm(layers[path], ord)), rtol=1e-6 if ord == 2 else 1e-12)
    # Brute force: the dense matrix of each layer's linear map on the input it sees.
    sub = keras.Model(model.inputs, [layers[p].input for p in values])
    seen = dict(zip(values, sub([np.random.default_rng(0).normal(size=(1, 7, 7, 2))])))
    norm_of = {1: l1, np.inf: linf, 2: l2}[ord]
    for path, value in values.items():
        layer, shape = layers[path], tuple(seen[path].shape[1:])
        if path == "c1":  # folded ZeroPadding2D: the padded conv on the 7x7 input
            fn, shape = (lambda x, layer=layer: layer(keras.layers.ZeroPadding2D(1)(x))), (7, 7, 2)
        elif path == "bn":
            fn = lambda x, layer=layer: layer(x, training=False)
        else:
            fn = layer
        zero = fn(tf.zeros((1,) + shape, tf.float64))
        exact = norm_of(dense_matrix_of(lambda x, fn=fn, zero=zero: fn(x) - zero, shape))
        np.testing.assert_allclose(float(value), exact, rtol=1e-4 if ord == 2 else 1e-10)


def test_traced_once_cached_and_tracks_weight_updates(model):
    norms.model_norms(model, 1)
    paths, function = norms.compiled_model_norms(model, 1)
    assert norms.compiled_model_norms(model, 1)[1] is function
    fc = model.get_layer("fc")
    before = float(norms.model_norms(model, 1)["fc"])
    fc.kernel.assign(fc.kernel * 2.0)
    after = float(norms.model_norms(model, 1)["fc"])
    fc.kernel.assign(fc.kernel / 2.0)
    np.testing.assert_allclose(after, 2.0 * before, rtol=1e-12)
    assert function.experimental_get_tracing_count() == 1
    vector = function()
    assert vector.shape == (len(paths),) and vector.dtype == tf.float64


def test_differentiable_eagerly_and_inside_tf_function(model):
    fc = model.get_layer("fc")
    with tf.GradientTape() as tape:
        total = tf.add_n(list(norms.model_norms(model, np.inf).values()))
    grad = tape.gradient(total, fc.kernel)
    column = np.abs(fc.kernel.numpy()).sum(axis=0).argmax()  # dense l_inf: largest kernel column sum
    np.testing.assert_allclose(grad.numpy()[:, column], np.sign(fc.kernel.numpy()[:, column]))

    @tf.function(autograph=False)
    def traced():
        return norms.model_norms(model, np.inf)["fc"]

    np.testing.assert_allclose(float(traced()), float(norms.model_norms(model, np.inf)["fc"]), rtol=1e-12)


def test_cache_is_weak():
    built = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    norms.model_norms(built, 1)
    assert built in norm_layers._COMPILED
    alive = weakref.ref(built)
    del built
    gc.collect()
    # The cache must not keep the model alive (other tests' models may be
    # collected at the same time, so the cache's size is not compared).
    assert alive() is None
    assert all(model is not None for model in norm_layers._COMPILED.keys())


def test_gram_spectral_bounds_bound_every_layer(model):
    bounds = norms.model_norms(model, 2, spectral_method="gram")
    norms_now = norms.model_norms(model, 2)
    for path, bound in bounds.items():
        assert float(bound) >= float(norms_now[path]) * (1 - 1e-6)
    with pytest.raises(ValueError, match="`spectral_method`"):
        norms.model_norms(model, 2, spectral_method="svd")


def test_many_models_do_not_warn_of_retracing(caplog):
    """One function per model, each traced once: no "excessive retracing" warning after five models
    (TensorFlow counts traces per code object, which one lambda for every model would share)."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float64")
    try:
        models = [small_model() for _ in range(7)]
    finally:
        keras.config.set_dtype_policy(previous)
    with caplog.at_level("WARNING"):
        for each in models:
            norms.model_norms(each, 1)
    assert not [r for r in caplog.records if "retracing" in r.getMessage()]
    assert all(norms.compiled_model_norms(each, 1)[1].experimental_get_tracing_count() == 1 for each in models)
