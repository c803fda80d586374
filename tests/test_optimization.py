"""tfnorms.optimization: the reference step schedule and coupled (PyTorch-style) weight decay."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfnorms.optimization import add_coupled_weight_decay, piecewise_learning_rate
from tfnorms.regularizers import Sum

# ---------------------------------------------------------------- piecewise_learning_rate


def reference_learning_rate(base_lr, epoch):
    """The reference ``adjust_learning_rate(optimizer, epoch)``, run before each 1-based ``epoch``."""
    lr = base_lr
    if epoch >= 75:
        lr = base_lr * 0.1
    if epoch >= 90:
        lr = base_lr * 0.01
    if epoch >= 100:
        lr = base_lr * 0.001
    return lr


@pytest.mark.parametrize("steps_per_epoch", [1, 3, 7, 391])
def test_schedule_matches_the_reference_rule_at_every_step(steps_per_epoch):
    schedule = piecewise_learning_rate(0.1, steps_per_epoch)
    # Step s is the (s+1)-th update: the optimizer has applied s updates, so it is in epoch s // spe + 1.
    steps = np.arange(0, 105 * steps_per_epoch)
    if steps_per_epoch > 7:  # every step around each epoch boundary, not all 40k
        steps = np.unique(np.concatenate([np.arange(e * steps_per_epoch - 3, e * steps_per_epoch + 3)
                                          for e in range(1, 105)]))
    got = schedule(tf.constant(steps)).numpy()
    expected = np.array([reference_learning_rate(0.1, s // steps_per_epoch + 1) for s in steps])
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    # The decays start exactly at the first step of epochs 75, 90 and 100.
    for epoch, lr in ((75, 0.01), (90, 0.001), (100, 0.0001)):
        first = (epoch - 1) * steps_per_epoch
        assert float(schedule(first)) == pytest.approx(lr)
        assert float(schedule(first - 1)) == pytest.approx(lr * 10)


def test_schedule_drives_the_optimizer_step_by_step():
    """An SGD step with gradient 1 moves a variable by exactly the schedule's rate at that step."""
    schedule = piecewise_learning_rate(1.0, steps_per_epoch=2, milestones=(2, 4), factor=0.5)
    optimizer = keras.optimizers.SGD(schedule)
    variable = keras.Variable(0.0)
    moves = []
    for _ in range(8):
        before = float(variable.numpy())
        optimizer.apply([tf.constant(1.0)], [variable])
        moves.append(before - float(variable.numpy()))
    # Epochs 1..4 of 2 steps: 1 (epoch 1), 0.5 (epochs 2, 3), 0.25 (epoch 4 on).
    np.testing.assert_allclose(moves, [1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25])


def test_schedule_without_milestones_is_the_constant_rate():
    assert piecewise_learning_rate(0.05, 10, milestones=()) == 0.05
    schedule = piecewise_learning_rate(0.2, 5, milestones=(3,), factor=0.5)
    np.testing.assert_allclose(schedule(tf.constant([0, 9, 10, 10_000])).numpy(), [0.2, 0.2, 0.1, 0.1])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(base_lr=0.0), "`base_lr`"),
        (dict(base_lr=-0.1), "`base_lr`"),
        (dict(steps_per_epoch=0), "`steps_per_epoch`"),
        (dict(steps_per_epoch=2.5), "`steps_per_epoch`"),
        (dict(milestones=(1, 90)), "`milestones`.*>= 2"),
        (dict(milestones=(90, 75)), "`milestones`.*increasing"),
        (dict(milestones=(75, 75)), "`milestones`.*increasing"),
    ],
)
def test_schedule_argument_errors_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        piecewise_learning_rate(**{"base_lr": 0.1, "steps_per_epoch": 10, **kwargs})


# ---------------------------------------------------------------- add_coupled_weight_decay


def small_model(kernel_regularizer=None):
    return keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            keras.layers.Conv2D(3, 3, name="conv", kernel_regularizer=kernel_regularizer),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.Flatten(),
            keras.layers.Dense(2, name="fc"),
        ],
        name="net",
    )


def penalty_gradients(model):
    with tf.GradientTape() as tape:
        total = tf.add_n(model.losses)
    return total, tape.gradient(total, model.trainable_variables)


def test_penalty_gradient_is_weight_decay_times_w_on_every_trainable_variable():
    model = small_model()
    for variable in model.trainable_variables:  # biases and BatchNorm offsets start at 0: make them count
        variable.assign(np.random.default_rng(len(variable.path)).normal(size=variable.shape))
    assert add_coupled_weight_decay(model, 0.3) == len(model.trainable_variables) == 6
    total, grads = penalty_gradients(model)
    weights = [v.numpy() for v in model.trainable_variables]
    assert float(total) == pytest.approx(0.3 / 2 * sum(float(np.sum(w**2)) for w in weights), rel=1e-5)
    for variable, weight, grad in zip(model.trainable_variables, weights, grads):
        np.testing.assert_allclose(grad.numpy(), 0.3 * weight, rtol=1e-5, err_msg=variable.path)
    # Non-trainable variables (BatchNorm moving statistics) get no penalty.
    assert all(v.regularizer is None for v in model.non_trainable_variables)


def test_an_existing_regularizer_is_kept_and_summed():
    model = small_model(kernel_regularizer=keras.regularizers.L1(0.01))
    add_coupled_weight_decay(model, 0.2)
    conv = model.get_layer("conv")
    assert isinstance(conv.kernel_regularizer, Sum) and conv.kernel.regularizer is conv.kernel_regularizer
    assert [type(r) for r in conv.kernel_regularizer.regularizers] == [keras.regularizers.L1, keras.regularizers.L2]
    kernel = conv.kernel.numpy()
    np.testing.assert_allclose(
        float(conv.kernel.regularizer(conv.kernel)), 0.01 * np.abs(kernel).sum() + 0.1 * np.sum(kernel**2), rtol=1e-5
    )
    _, grads = penalty_gradients(model)
    index = [v.path for v in model.trainable_variables].index(conv.kernel.path)
    np.testing.assert_allclose(grads[index].numpy(), 0.01 * np.sign(kernel) + 0.2 * kernel, rtol=1e-5)


def test_penalty_survives_save_and_load(tmp_path):
    model = small_model(kernel_regularizer=keras.regularizers.L1(0.01))
    add_coupled_weight_decay(model, 5e-2)
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    before = sorted(float(loss) for loss in model.losses)
    after = sorted(float(loss) for loss in loaded.losses)
    assert len(after) == len(model.trainable_variables)
    np.testing.assert_allclose(after, before, rtol=1e-6)
    assert isinstance(loaded.get_layer("conv").kernel_regularizer, Sum)
    assert isinstance(loaded.get_layer("bn").gamma_regularizer, keras.regularizers.L2)


class Scale(keras.layers.Layer):
    """A custom layer whose weight has no ``*_regularizer`` constructor argument."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="scale")

    def call(self, x):
        return x * self.scale


def test_a_custom_layer_weight_gets_the_penalty_with_a_warning_that_it_is_not_saved():
    model = keras.Sequential([keras.Input((4,)), Scale(name="scale"), keras.layers.Dense(2, name="fc")], name="net")
    with pytest.warns(UserWarning, match=r"not saved.*net/scale/scale") as record:
        assert add_coupled_weight_decay(model, 0.5) == 3
    (message,) = [str(w.message) for w in record if "not saved" in str(w.message)]
    assert "net/fc/" not in message  # Dense saves its regularizers
    _, grads = penalty_gradients(model)
    paths = [v.path for v in model.trainable_variables]
    np.testing.assert_allclose(grads[paths.index("net/scale/scale")].numpy(), 0.5 * np.ones(4))


def test_zero_weight_decay_changes_nothing():
    model = small_model(kernel_regularizer=keras.regularizers.L1(0.01))
    assert add_coupled_weight_decay(model, 0) == 0
    assert add_coupled_weight_decay(model, 0.0) == 0
    assert type(model.get_layer("conv").kernel_regularizer) is keras.regularizers.L1
    assert [v.path for v in model.trainable_variables if v.regularizer is not None] == ["net/conv/kernel"]
    assert len(model.losses) == 1


@pytest.mark.parametrize("weight_decay", [-1e-4, float("nan"), float("inf"), "5e-4", None, True])
def test_invalid_weight_decay_raises_naming_the_argument(weight_decay):
    model = small_model()
    with pytest.raises(ValueError, match="`weight_decay`"):
        add_coupled_weight_decay(model, weight_decay)
    assert not model.losses


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(base_lr=float("nan")), "base_lr"),
        (dict(base_lr="0.1"), "base_lr"),
        (dict(steps_per_epoch=True), "steps_per_epoch"),
        (dict(factor=0.0), "factor"),
        (dict(factor=1.5), "factor"),
        (dict(factor=float("nan")), "factor"),
        (dict(milestones=(74.9, 90)), "milestones"),
        (dict(milestones=(90, 75)), "milestones"),
    ],
)
def test_schedule_arguments_are_checked_with_the_one_vocabulary(kwargs, argument):
    arguments = dict(base_lr=0.1, steps_per_epoch=10, milestones=(75, 90), factor=0.1)
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=f"Invalid value for argument `{argument}`"):
        piecewise_learning_rate(**arguments)


def test_schedule_accepts_numpy_ints():
    schedule = piecewise_learning_rate(0.1, np.int64(10), milestones=(np.int64(3),))
    assert float(schedule(19)) == pytest.approx(0.1) and float(schedule(20)) == pytest.approx(0.01)
