"""Behaviour tests of tfnorms.regularizers (NormDecay, NormDecayMomentum, configure_norm_decay)."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import norm_bruteforce as bf
from tfnorms import norms
from tfnorms.regularizers import NormDecay, NormDecayMomentum, configure_norm_decay



def small_cnn(regularizer=None, strides=2, seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(8, 3, strides=strides, padding="same", kernel_regularizer=regularizer, name="conv"),
            keras.layers.ReLU(),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(4, name="dense"),
        ]
    )


def compile_sgd(model, optimizer=None, **kwargs):
    model.compile(
        optimizer=optimizer or keras.optimizers.SGD(0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        **kwargs,
    )


# ---------------------------------------------------------------- exact sub-gradient


@pytest.mark.parametrize(
    "ord, strides, padding, hw",
    [(1, 1, "same", (6, 6)), (1, 2, "same", (6, 6)), (1, 2, "valid", (7, 5)), (np.inf, 1, "same", (2, 2)),
     (np.inf, 2, "same", (6, 6)), (1, 1, "same", (2, 3))],
)
def test_conv_gradient_is_factor_sign_on_max_group(ord, strides, padding, hw):
    rng = np.random.default_rng(1)
    kernel = rng.normal(size=(3, 3, 4, 5))
    reg = NormDecay(0.3, ord=ord, input_shape=hw, strides=strides, padding=padding)
    w = tf.Variable(kernel)
    with tf.GradientTape() as tape:
        penalty = reg(w)
    grad = tape.gradient(penalty, w).numpy()
    matrix = bf.conv_matrix(kernel, hw, strides, padding)
    expected_norm = bf.l1(matrix) if ord == 1 else bf.linf(matrix)
    best, mask = bf.conv_max_group_mask(kernel, ord, hw, strides, padding)
    np.testing.assert_allclose(best, expected_norm, rtol=1e-12)
    np.testing.assert_allclose(float(penalty), 0.3 * expected_norm, rtol=1e-6)
    np.testing.assert_allclose(grad, 0.3 * np.sign(kernel) * mask, atol=1e-7)
    # The pure-math mask agrees with the brute-force group.
    np.testing.assert_array_equal(
        norms.max_group_mask(kernel, ord, input_shape=hw, strides=strides, padding=padding).numpy(), mask
    )


@pytest.mark.parametrize("ord", [1, np.inf])
def test_dense_gradient_is_factor_sign_on_max_group(ord):
    kernel = np.random.default_rng(2).normal(size=(6, 4))
    w = tf.Variable(kernel)
    with tf.GradientTape() as tape:
        penalty = NormDecay(0.5, ord=ord)(w)
    grad = tape.gradient(penalty, w).numpy()
    axis = 1 if ord == 1 else 0  # Keras kernel (in, out): l1 = max row sum, linf = max column sum
    sums = np.abs(kernel).sum(axis=axis)
    mask = np.zeros_like(kernel)
    if ord == 1:
        mask[np.argmax(sums), :] = 1
    else:
        mask[:, np.argmax(sums)] = 1
    np.testing.assert_allclose(float(penalty), 0.5 * sums.max())
    np.testing.assert_allclose(grad, 0.5 * np.sign(kernel) * mask)


def test_both_ords_sum_and_spec_vector():
    torch_weight = np.array([[1.0, -2.0, 3.0], [-4.0, 5.0, -6.0]])
    reg = NormDecay(2.0, ord=[1, "inf"])
    assert float(reg(torch_weight.T)) == pytest.approx(2.0 * (9 + 15))
    assert reg.ord == (1, np.inf)


def test_without_geometry_strided_conv_uses_stride_one_closed_form():
    kernel = bf.kdet()
    exact = NormDecay(1.0, input_shape=(6, 6), strides=2)(kernel)
    unconfigured = NormDecay(1.0)(kernel)
    assert float(exact) == pytest.approx(22.0)  # docs/theory.md#test-vectors
    assert float(unconfigured) == pytest.approx(52.0)  # stride-1 norm: an overestimate


# ---------------------------------------------------------------- configure_norm_decay


def test_configure_norm_decay_reads_geometry_and_unshares_instances():
    shared = NormDecay(1.0)
    model = keras.Sequential(
        [
            keras.Input((6, 6, 3)),
            keras.layers.Conv2D(2, 3, strides=2, padding="same", kernel_regularizer=shared, name="a"),
            keras.layers.Conv2D(2, 3, padding="same", kernel_regularizer=shared, name="b"),
            keras.layers.Flatten(),
            keras.layers.Dense(3, kernel_regularizer=shared),
        ]
    )
    model.layers[0].kernel.assign(bf.kdet().astype("float32"))
    configured = configure_norm_decay(model)
    assert len(configured) == 3
    a, b = model.layers[0].kernel_regularizer, model.layers[1].kernel_regularizer
    assert a is not b and a is not shared
    assert a.geometry["strides"] == (2, 2) and a.geometry["input_shape"] == (6, 6)
    assert b.geometry["input_shape"] == (3, 3)
    assert float(a(model.layers[0].kernel)) == pytest.approx(22.0)
    assert model.layers[0].kernel.regularizer is a  # the variable (what Keras calls) sees it too
    assert float(model.losses[0]) == pytest.approx(22.0)


# ---------------------------------------------------------------- training behaviour


def conv_l1_after_training(regularizer, steps=240, **compile_kwargs):
    x, y = bf.synthetic_data(n=480)
    model = small_cnn(regularizer)
    configure_norm_decay(model)
    optimizer = compile_kwargs.pop("optimizer", None)
    compile_sgd(model, optimizer, **compile_kwargs)
    model.fit(x, y, batch_size=32, epochs=steps // 15, verbose=0, shuffle=False)
    conv = model.get_layer("conv")
    return float(norms.layer_norm(conv, 1)), model


def test_norm_decay_reduces_the_targeted_norm():
    plain, _ = conv_l1_after_training(None)
    decayed, model = conv_l1_after_training(NormDecay(0.05, ord=1))
    assert model.get_layer("conv").kernel_regularizer.geometry["strides"] == (2, 2)
    assert decayed < 0.6 * plain, (decayed, plain)


# ---------------------------------------------------------------- momentum variant


def reference_momentum_run(kernel, factor, momentum, lr, steps, ord):
    """Liang & Huang's update (docs/theory.md#norm-decay-momentum) in NumPy, on a loss-free kernel."""
    w, h = kernel.copy(), np.zeros_like(kernel)
    for _ in range(steps):
        _, mask = bf.conv_max_group_mask(w, ord, (6, 6), 2, "same")
        h = momentum * h
        h[mask == 1] = np.sign(w)[mask == 1]
        w = w - lr * factor * h
    return w


@pytest.mark.parametrize("ord", [1, np.inf])
def test_momentum_variant_matches_reference_update(ord):
    kernel = np.random.default_rng(3).normal(size=(3, 3, 2, 3))
    reg = NormDecay(0.7, ord=ord, input_shape=(6, 6), strides=2)
    w = keras.Variable(kernel.astype("float32"), name="kernel")
    w.regularizer = reg
    optimizer = NormDecayMomentum(keras.optimizers.SGD(0.5), momentum=0.5)
    for _ in range(6):
        with tf.GradientTape() as tape:
            penalty = reg(w)
        optimizer.apply([tape.gradient(penalty, w.value)], [w])
    expected = reference_momentum_run(kernel, 0.7, 0.5, 0.5, 6, ord)
    np.testing.assert_allclose(w.numpy(), expected, atol=1e-5)
    # Without the wrapper (momentum 0) the memory vanishes: plain sub-gradient descent.
    assert not np.allclose(expected, reference_momentum_run(kernel, 0.7, 0.0, 0.5, 6, ord), atol=1e-3)


def fit_weights(strategy=None, jit_compile=False, steps=4):
    x, y = bf.synthetic_data(n=64)

    def build():
        model = small_cnn(NormDecay(0.05, ord=[1, np.inf]))
        configure_norm_decay(model)
        compile_sgd(model, NormDecayMomentum(keras.optimizers.SGD(0.05, momentum=0.9)), jit_compile=jit_compile)
        return model

    if strategy is None:
        model = build()
    else:
        with strategy.scope():
            model = build()
    model.fit(x, y, batch_size=16, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)
    return [w.numpy() for w in model.weights], model


def test_momentum_variant_same_under_xla_and_mirrored_strategy(two_cpu_strategy):
    reference, model = fit_weights()
    memory = [v for v in model.optimizer.variables if "norm_decay_memory" in v.path]
    assert len(memory) == 2 and np.abs(memory[0].numpy()).max() > 0.1  # state lives in the optimizer
    jitted, _ = fit_weights(jit_compile=True)
    assert two_cpu_strategy.num_replicas_in_sync == 2
    mirrored, _ = fit_weights(two_cpu_strategy)
    for a, b, c in zip(reference, jitted, mirrored):
        np.testing.assert_allclose(a, b, atol=2e-5)
        np.testing.assert_allclose(a, c, atol=2e-5)


def test_mixed_precision_training_runs_and_decays():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        x, y = bf.synthetic_data(n=64)
        model = small_cnn(NormDecay(0.05))
        configure_norm_decay(model)
        compile_sgd(model, NormDecayMomentum(keras.optimizers.SGD(0.05)))
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        before = float(norms.layer_norm(model.get_layer("conv"), 1))
        history = model.fit(x, y, batch_size=16, epochs=3, verbose=0)
        assert np.all(np.isfinite(history.history["loss"]))
        assert float(norms.layer_norm(model.get_layer("conv"), 1)) < before
    finally:
        keras.config.set_dtype_policy(previous)


# ---------------------------------------------------------------- config and errors


def test_get_config_is_json_and_round_trips():
    reg = NormDecay(1e-4, ord=[1, np.inf], input_shape=(32, 32), strides=2, padding=((0, 1), (0, 1)))
    config = json.loads(json.dumps(reg.get_config()))
    assert config["ord"] == [1, "inf"]
    clone = keras.regularizers.deserialize(keras.regularizers.serialize(reg))
    assert isinstance(clone, NormDecay) and clone.get_config() == reg.get_config()
    kernel = np.random.default_rng(0).normal(size=(3, 3, 2, 2))
    assert float(clone(kernel)) == pytest.approx(float(reg(kernel)))
    optimizer = NormDecayMomentum(keras.optimizers.SGD(0.1, momentum=0.9), momentum=0.25)
    clone = keras.optimizers.deserialize(json.loads(json.dumps(keras.optimizers.serialize(optimizer))))
    assert isinstance(clone, NormDecayMomentum) and clone.momentum == 0.25
    assert isinstance(clone.inner_optimizer, keras.optimizers.SGD) and clone.inner_optimizer.momentum == 0.9


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(factor=-1.0), "argument `factor`.*Received: factor=-1.0"),
        (dict(ord=2), r"argument `ord`. Expected one of 1, numpy.inf.*Received: ord=2"),
        (dict(ord=[]), "argument `ord`"),
        (dict(strides=0), "argument `strides`"),
        (dict(padding="full"), 'argument `padding`. Expected one of "same", "valid"'),
        (dict(input_shape=(0, 3)), "argument `input_shape`"),
        (dict(strides=2, dilation_rate=2), "strides"),
    ],
)
def test_invalid_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NormDecay(**kwargs)


def test_invalid_kernel_and_optimizer_arguments():
    with pytest.raises(ValueError, match="Dense kernel \\(rank 2\\) or a Conv2D kernel"):
        NormDecay()(np.ones((3, 2, 2)))
    with pytest.raises(ValueError, match="argument `momentum`. Expected a number in \\[0, 1\\)"):
        NormDecayMomentum("sgd", momentum=1.0)
