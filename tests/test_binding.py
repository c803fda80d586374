"""tfnorms.bind: norm control that binds itself, survives composition, save/load and weight decay.

Each test here fails on the code before ``tfnorms.bind`` existed: there, an
unbound strided / depthwise kernel was silently penalised with another norm,
weight decay hid NormDecay from the momentum wrapper, and penalties put on by
the helpers vanished after ``model.save`` + ``keras.models.load_model``.
"""

from __future__ import annotations

import os
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfnorms
from tfnorms import norms
from tfnorms.constraints import MaxBatchNormNorm, MaxOperatorNorm
from tfnorms.optimization import add_coupled_weight_decay
from tfnorms.regularizers import NormDecay, NormDecayMomentum, Sum, add_norm_decay, norm_decay_terms


def _data(n=16, size=9, channels=1, classes=3):
    rng = np.random.default_rng(0)
    return rng.random((n, size, size, channels)).astype("float32"), rng.integers(0, classes, n)


def _strided_model(regularizer=None):
    return keras.Sequential(
        [
            keras.Input((9, 9, 1)),
            keras.layers.Conv2D(16, 3, strides=2, padding="same", kernel_regularizer=regularizer, name="conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(3, name="fc"),
        ],
        name="net",
    )


def _depthwise_model(regularizer):
    return keras.Sequential(
        [
            keras.Input((6, 6, 3)),
            keras.layers.DepthwiseConv2D(3, depth_multiplier=2, depthwise_regularizer=regularizer, name="dw"),
            keras.layers.Flatten(),
            keras.layers.Dense(3, name="fc"),
        ],
        name="dwnet",
    )


def _penalty(model):
    return sum(float(loss) for loss in model.losses)


def _exact(layer, ord=1):
    return float(norms.layer_norm(layer, ord))


@pytest.fixture
def unbound_is_error():
    with warnings.catch_warnings():
        warnings.simplefilter("error", tfnorms.UnboundWarning)
        yield


# ---------------------------------------------------------------- 1. binding


def test_unbound_strided_conv_in_plain_fit_warns_once_naming_the_weight_and_the_fix():
    model = _strided_model(NormDecay(1e-3))
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = _data()
    with pytest.warns(tfnorms.UnboundWarning, match=r"'net/conv/kernel'.*tfnorms\.bind\(model\)") as record:
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert sum(issubclass(r.category, tfnorms.UnboundWarning) for r in record) == 1


def test_bind_makes_the_strided_penalty_exact():
    model = _strided_model(NormDecay(1e-3))
    conv = model.get_layer("conv")
    with pytest.warns(tfnorms.UnboundWarning):
        unbound = _penalty(model)
    exact = 1e-3 * _exact(conv)
    assert unbound / exact > 2.0  # the stride-1 norm: the silent wrong number of before
    tfnorms.bind(model)
    assert conv.kernel_regularizer.geometry["strides"] == (2, 2)
    assert conv.kernel.regularizer is conv.kernel_regularizer
    np.testing.assert_allclose(_penalty(model), exact, rtol=1e-6)


def test_depthwise_inf_penalty_is_exact_after_bind_without_the_depthwise_flag():
    model = _depthwise_model(NormDecay(1e-3, ord=np.inf))
    layer = model.get_layer("dw")
    with pytest.warns(tfnorms.UnboundWarning):
        unbound = _penalty(model)
    exact = 1e-3 * _exact(layer, np.inf)
    assert unbound / exact > 2.0
    tfnorms.bind(model)
    assert layer.depthwise_regularizer.depthwise is True
    np.testing.assert_allclose(_penalty(model), exact, rtol=1e-6)


@pytest.mark.parametrize("build", [_strided_model, _depthwise_model])
def test_adversarial_trainer_binds_by_itself(build, unbound_is_error):
    model = build(NormDecay(1e-3, ord=[1, np.inf]))
    trainer = tfnorms.AdversarialTrainer(
        model, method="trades", attack=tfnorms.attacks.PGD(0.03, 0.01, 1), eval_attack=tfnorms.attacks.PGD(0.03, 0.01, 1)
    )
    trainer.compile(keras.optimizers.SGD(0.0))
    size, channels = model.input_shape[1], model.input_shape[3]
    x, y = _data(size=size, channels=channels)
    trainer.fit(x, y, batch_size=8, epochs=1, verbose=0)
    layer = model.layers[0]
    expected = 1e-3 * (_exact(layer, 1) + _exact(layer, np.inf))
    np.testing.assert_allclose(_penalty(model), expected, rtol=1e-6)


def test_trainer_binds_a_model_that_is_built_only_inside_fit(unbound_is_error):
    model = keras.Sequential(
        [keras.layers.Conv2D(4, 3, strides=2, kernel_regularizer=NormDecay(1e-3), name="conv"), keras.layers.Flatten(),
         keras.layers.Dense(3)]
    )
    trainer = tfnorms.AdversarialTrainer(model, method="pgd", attack=tfnorms.attacks.PGD(0.03, 0.01, 1))
    trainer.compile(keras.optimizers.SGD(0.0))
    trainer.fit(*_data(), batch_size=8, epochs=1, verbose=0)
    conv = model.get_layer("conv")
    assert conv.kernel.regularizer.geometry["strides"] == (2, 2)
    assert conv.kernel.regularizer.geometry["input_shape"] == (9, 9)


@pytest.mark.parametrize("make", ["logger", "clipping"])
def test_tfnorms_callbacks_bind_in_on_train_begin_also_on_a_second_fit(make, tmp_path, unbound_is_error):
    model = _strided_model(NormDecay(1e-3))
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = _data()
    callback = (
        tfnorms.callbacks.LayerNormLogger(str(tmp_path), ords=(1,))
        if make == "logger"
        else tfnorms.callbacks.SingularValueClipping(10.0, every_n_steps=100)
    )
    for _ in range(2):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[callback])
    np.testing.assert_allclose(_penalty(model), 1e-3 * _exact(model.get_layer("conv")), rtol=1e-6)


def test_bind_is_idempotent_and_retraces_nothing_the_second_time():
    model = _strided_model(NormDecay(1e-3))
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    first = tfnorms.bind(model)
    model.fit(*_data(), batch_size=8, epochs=1, verbose=0)
    function = model.train_function
    second = tfnorms.bind(model)
    assert model.train_function is function
    assert first["regularizers"]["net/conv/kernel"] is second["regularizers"]["net/conv/kernel"]


def test_a_shared_instance_gets_one_bound_copy_per_layer():
    shared = NormDecay(1e-3)
    model = keras.Sequential(
        [keras.Input((9, 9, 1)), keras.layers.Conv2D(2, 3, strides=2, kernel_regularizer=shared, name="a"),
         keras.layers.Conv2D(2, 3, strides=1, kernel_regularizer=shared, name="b")]
    )
    tfnorms.bind(model)
    a, b = model.get_layer("a").kernel_regularizer, model.get_layer("b").kernel_regularizer
    assert a.geometry["strides"] == (2, 2) and b.geometry["strides"] == (1, 1)
    assert a.geometry["input_shape"] == (9, 9) and b.geometry["input_shape"] == (4, 4)


@pytest.mark.parametrize(
    "layer",
    [
        lambda: keras.layers.Conv2D(2, 3, bias_regularizer=NormDecay()),
        lambda: keras.layers.Conv2D(2, 3, bias_constraint=MaxOperatorNorm(1.0)),
        lambda: keras.layers.BatchNormalization(beta_constraint=MaxBatchNormNorm(1.0)),
    ],
)
def test_a_tfnorms_object_on_an_unsupported_weight_is_an_error_naming_it(layer):
    model = keras.Sequential([keras.Input((5, 5, 2)), layer()])
    with pytest.raises(ValueError, match=r"weight '.*/(bias|beta)'"):
        tfnorms.bind(model)


def test_bind_refuses_an_unbuilt_model():
    with pytest.raises(ValueError, match="not built"):
        tfnorms.bind(keras.Sequential([keras.layers.Dense(2, kernel_regularizer=NormDecay())]))


# ---------------------------------------------------------------- 2. composition with weight decay


def _norm_and_weight_decay_model(factor=1e-2):
    model = _strided_model()
    add_norm_decay(model, factor, ord=1)
    add_coupled_weight_decay(model, 5e-4)
    return model


def test_weight_decay_after_norm_decay_keeps_the_exact_penalty():
    model = _norm_and_weight_decay_model()
    conv = model.get_layer("conv")
    assert isinstance(conv.kernel_regularizer, Sum)
    (term,) = norm_decay_terms(conv.kernel.regularizer)
    assert term.geometry["strides"] == (2, 2)
    kernel = conv.kernel.numpy()
    expected = 1e-2 * _exact(conv) + 5e-4 / 2 * float(np.sum(kernel**2))
    np.testing.assert_allclose(float(conv.kernel.regularizer(conv.kernel)), expected, rtol=1e-5)
    assert sorted(tfnorms.bind(model)["regularizers"]) == ["net/conv/kernel", "net/fc/kernel"]


def _train(model, optimizer, steps=3):
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = _data()
    model.fit(x, y, batch_size=16, epochs=steps, verbose=0, shuffle=False)
    return [v.numpy() for v in model.trainable_variables]


def test_norm_decay_momentum_sees_norm_decay_through_weight_decay():
    # A large factor makes the maximal group move between steps, so the memory acts.
    keras.utils.set_random_seed(1)
    with_memory = _norm_and_weight_decay_model(factor=0.5)
    keras.utils.set_random_seed(1)
    plain = _norm_and_weight_decay_model(factor=0.5)
    np.testing.assert_array_equal(plain.get_layer("conv").kernel.numpy(), with_memory.get_layer("conv").kernel.numpy())
    optimizer = NormDecayMomentum(keras.optimizers.SGD(0.05, momentum=0.9), momentum=0.5)
    after_memory = _train(with_memory, optimizer)
    after_plain = _train(plain, keras.optimizers.SGD(0.05, momentum=0.9))
    memory = [v.numpy() for v in optimizer.variables if "norm_decay_memory" in v.path]
    assert len(memory) == 2  # the conv and the dense kernel
    assert all(np.abs(m).sum() > 0 for m in memory)
    assert np.abs(after_memory[0] - after_plain[0]).max() > 1e-3


def test_norm_decay_momentum_warns_when_it_finds_no_norm_decay():
    model = _strided_model()
    with pytest.warns(UserWarning, match="NormDecayMomentum found no NormDecay"):
        _train(model, NormDecayMomentum(keras.optimizers.SGD(0.01)), steps=1)


def test_sum_round_trips_through_its_config_and_flattens():
    total = Sum([Sum([NormDecay(1e-3, strides=2)]), keras.regularizers.L2(1e-4)])
    assert len(total.regularizers) == 2
    config = keras.saving.serialize_keras_object(total)
    again = keras.saving.deserialize_keras_object(config)
    assert isinstance(again, Sum)
    x = tf.random.normal((3, 3, 2, 4))
    np.testing.assert_allclose(float(again(x)), float(total(x)), rtol=1e-6)
    with pytest.raises(ValueError, match="argument `regularizers`"):
        Sum([])


# ---------------------------------------------------------------- 3. save / load


def _all_layers_model():
    inputs = keras.Input((9, 9, 2))
    h = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="strided")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(h)
    h = keras.layers.Conv2D(4, 3, padding="same", name="conv")(h)
    h = keras.layers.Flatten()(h)
    outputs = keras.layers.Dense(3, name="fc")(h)
    return keras.Model(inputs, outputs, name="all")


HELPERS = {
    "norm_decay_l1": lambda m: add_norm_decay(m, 1e-2, ord=1),
    "norm_decay_both": lambda m: add_norm_decay(m, 1e-2, ord=[1, "inf"]),
    "weight_decay": lambda m: add_coupled_weight_decay(m, 5e-4),
    "norm_then_weight_decay": lambda m: (add_norm_decay(m, 1e-2), add_coupled_weight_decay(m, 5e-4)),
}


@pytest.mark.parametrize("helper", sorted(HELPERS))
def test_penalties_and_momentum_memory_survive_save_and_load(helper, tmp_path):
    keras.utils.set_random_seed(2)
    model = _all_layers_model()
    HELPERS[helper](model)
    optimizer = keras.optimizers.SGD(0.01)
    if helper != "weight_decay":
        optimizer = NormDecayMomentum(optimizer, momentum=0.5)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = _data(channels=2)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", tfnorms.UnboundWarning)
        loaded = keras.models.load_model(path)
        before = sorted(float(loss) for loss in model.losses)
        after = sorted(float(loss) for loss in loaded.losses)
    assert len(before) == len(after) > 0
    np.testing.assert_allclose(after, before, rtol=1e-6)
    memory = lambda m: {  # noqa: E731  (keyed without the optimizer's instance name)
        v.path.split("/")[-1]: v.numpy() for v in m.optimizer.variables if "norm_decay_memory" in v.path
    }
    assert memory(loaded).keys() == memory(model).keys()
    for key, value in memory(model).items():
        np.testing.assert_array_equal(memory(loaded)[key], value)
    if helper != "weight_decay":
        assert len(memory(model)) >= 4  # strided, dw, conv, fc kernels


def test_max_batch_norm_norm_binding_is_restored_by_the_trainer_after_load(tmp_path):
    model = keras.Sequential(
        [keras.Input((6, 6, 1)), keras.layers.Conv2D(2, 3, kernel_constraint=MaxOperatorNorm(1.0), name="conv"),
         keras.layers.BatchNormalization(gamma_constraint=MaxBatchNormNorm(0.5), name="bn"),
         keras.layers.Flatten(), keras.layers.Dense(2)]
    )
    trainer = tfnorms.AdversarialTrainer(model, method="pgd", attack=tfnorms.attacks.PGD(0.03, 0.01, 1))
    assert model.get_layer("bn").gamma.constraint.is_bound
    assert model.get_layer("conv").kernel.constraint.bound
    trainer.compile(keras.optimizers.SGD(0.5))
    x, y = _data(size=6, classes=2)
    trainer.fit(x, y, batch_size=8, epochs=1, verbose=0)
    path = os.path.join(tmp_path, "trainer.keras")
    trainer.save(path)
    loaded = keras.models.load_model(path)
    bn = loaded.model.get_layer("bn")
    assert bn.gamma.constraint.is_bound and bn.gamma.constraint._moving_variance is bn.moving_variance
    loaded.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert float(norms.layer_norm(bn, np.inf)) <= 0.5 * (1 + 1e-5)

    plain = keras.models.load_model(path).model  # a plain model needs bind (or a clear error)
    plain.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    plain.get_layer("bn").gamma.constraint = MaxBatchNormNorm(0.5)
    with pytest.raises(ValueError, match=r"tfnorms\.bind\(model\)"):
        plain.fit(x, y, batch_size=8, epochs=1, verbose=0)
    tfnorms.bind(plain)
    plain.fit(x, y, batch_size=8, epochs=1, verbose=0)
