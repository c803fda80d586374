"""Tests of tfnorms.attacks: threat-model invariants, losses, BN mode, XLA, config, validation."""

import numpy as np
import pytest
import keras
import tensorflow as tf
from hypothesis import given, settings, strategies as st

from tfnorms import attacks
from tfnorms.attacks import losses, projections, starts


def small_cnn(seed=0, batch_norm=False, num_classes=3, dtype=None):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, activation="relu", dtype=dtype)]
    if batch_norm:
        layers.append(keras.layers.BatchNormalization(momentum=0.9, dtype=dtype))
    layers += [keras.layers.Flatten(dtype=dtype), keras.layers.Dense(num_classes, dtype=dtype)]
    return keras.Sequential(layers)


def per_example_distance(x_adv, x, ord):
    diff = (np.asarray(x_adv, np.float64) - np.asarray(x, np.float64)).reshape(len(x), -1)
    return np.abs(diff).max(axis=1) if ord == np.inf else np.linalg.norm(diff, axis=1)


@st.composite
def attack_cases(draw, ord):
    eps = draw(st.floats(0.005, 0.5) if ord == np.inf else st.floats(0.05, 3.0))
    step_size = draw(st.floats(0.1, 2.0)) * eps
    steps = draw(st.integers(1, 4))
    loss = draw(st.sampled_from(["ce", "kl", "cw", "dlr"]))
    random_start = draw(st.sampled_from(["uniform", "normal", None]))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    # Inputs include pixels on the box boundary, where clipping matters.
    x = rng.random((3, 8, 8, 1))
    corner = rng.random(x.shape)
    x = np.where(corner < 0.2, 0.0, np.where(corner > 0.8, 1.0, x)).astype("float32")
    return attacks.PGD(eps, step_size, steps, ord=ord, loss=loss, random_start=random_start), x, seed


@pytest.mark.parametrize("ord", [np.inf, 2])
def test_pgd_output_stays_in_ball_and_box(ord):
    @settings(max_examples=12, deadline=None)
    @given(attack_cases(ord))
    def check(case):
        attack, x, seed = case
        model = small_cnn(seed % 7)
        # Scale the weights so gradients are large and steps hit the constraints.
        for weight in model.trainable_weights:
            weight.assign(weight * 5.0)
        y = np.array([0, 1, 2])
        x_adv = attack(model, x, y).numpy()
        assert x_adv.dtype == np.float32 and x_adv.shape == x.shape
        assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
        assert np.all(per_example_distance(x_adv, x, ord) <= attack.eps * (1 + 1e-5) + 1e-6)

    check()


@pytest.mark.parametrize("ord", [np.inf, 2])
def test_fgsm_and_cw_stay_in_ball_and_box(ord):
    model = small_cnn(1)
    x = np.random.default_rng(0).random((4, 8, 8, 1)).astype("float32")
    y = np.array([0, 1, 2, 0])
    eps = 0.1 if ord == np.inf else 1.0
    for attack in (attacks.FGSM(eps, ord=ord), attacks.CW(eps, eps / 4, 3, ord=ord)):
        x_adv = attack(model, x, y).numpy()
        assert 0.0 <= x_adv.min() and x_adv.max() <= 1.0
        assert np.all(per_example_distance(x_adv, x, ord) <= eps * (1 + 1e-5) + 1e-6)


def test_fgsm_matches_manual_sign_step():
    model = small_cnn(2)
    x = np.random.default_rng(1).uniform(0.2, 0.8, (4, 8, 8, 1)).astype("float32")
    y = np.array([0, 1, 2, 1])
    x_tensor = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x_tensor)
        loss = keras.losses.sparse_categorical_crossentropy(y, model(x_tensor), from_logits=True)
    expected = np.clip(x + 0.05 * np.sign(tape.gradient(loss, x_tensor).numpy()), 0, 1)
    np.testing.assert_allclose(attacks.FGSM(0.05)(model, x, y).numpy(), expected, atol=1e-6)


def test_attack_increases_its_loss():
    model = small_cnn(3)
    x = np.random.default_rng(2).random((16, 8, 8, 1)).astype("float32")
    y = np.arange(16) % 3
    x_adv = attacks.PGD(0.1, 0.02, 10, seed=0)(model, x, y)
    before = losses.cross_entropy(model(x), y).numpy().mean()
    after = losses.cross_entropy(model(x_adv), y).numpy().mean()
    assert after > before + 0.05


def test_attack_loss_vectors():
    z = np.array([[2.0, 1.0, 0.5, -1.0, 0.0]], "float32")
    np.testing.assert_allclose(losses.dlr(z, np.array([0])).numpy(), [-1.0 / 1.5], rtol=1e-5)
    np.testing.assert_allclose(losses.targeted_dlr(z, np.array([0]), np.array([1])).numpy(), [-1.0 / 1.75], rtol=1e-5)
    # CW margin with the -inf mask: the best other logit is -0.5 even though it is negative.
    negative = np.array([[1.0, -0.5, -2.0]], "float32")
    np.testing.assert_allclose(losses.cw_margin(negative, np.array([0])).numpy(), [-1.5])
    np.testing.assert_allclose(losses.cw_margin(negative, np.array([1])).numpy(), [0.0])
    # One-hot labels give the same value as class ids.
    np.testing.assert_allclose(losses.dlr(z, np.eye(5)[[0]]).numpy(), losses.dlr(z, np.array([[0]])).numpy())
    rng = np.random.default_rng(3)
    logits, clean = rng.normal(size=(2, 6, 4)).astype("float32")
    labels = np.array([0, 1, 2, 3, 0, 1])
    expected_ce = -np.log(np.exp(logits) / np.exp(logits).sum(1, keepdims=True))[np.arange(6), labels]
    np.testing.assert_allclose(losses.cross_entropy(logits, labels).numpy(), expected_ce, rtol=1e-5)
    p = np.exp(clean) / np.exp(clean).sum(1, keepdims=True)
    q = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(
        losses.kl_divergence(logits, labels, clean).numpy(), (p * np.log(p / q)).sum(1), rtol=1e-4, atol=1e-6
    )
    with pytest.raises(ValueError, match="at least 3 classes"):
        losses.dlr(np.zeros((1, 2), "float32"), np.array([0]))


def test_projection_and_starts():
    x = np.random.default_rng(4).random((5, 3, 3, 1)).astype("float32")
    far = x + np.random.default_rng(5).normal(size=x.shape).astype("float32")
    for ord, eps in ((np.inf, 0.1), (2, 0.3)):
        projected = projections.project(far, x, eps, ord).numpy()
        assert np.all(per_example_distance(projected, x, ord) <= eps * (1 + 1e-5))
        start = starts.get("uniform")(tf.constant(x), eps, ord, seed=7).numpy()
        assert np.all(per_example_distance(start, x, ord) <= eps * (1 + 1e-5))
        assert np.all(per_example_distance(start, x, ord) > 0)
    normal = starts.get("normal")(tf.constant(x), 0.1, np.inf, seed=1).numpy() - x
    assert 0.0005 < normal.std() < 0.002


def test_seed_makes_attack_reproducible():
    model = small_cnn(4)
    x = np.random.default_rng(6).random((4, 8, 8, 1)).astype("float32")
    y = np.array([0, 1, 2, 0])
    seeded = attacks.PGD(0.1, 0.02, 2, seed=3)
    np.testing.assert_array_equal(seeded(model, x, y).numpy(), seeded(model, x, y).numpy())
    unseeded = attacks.PGD(0.1, 0.02, 2)
    assert not np.array_equal(unseeded(model, x, y).numpy(), unseeded(model, x, y).numpy())


def test_attack_leaves_batch_norm_statistics_alone():
    model = small_cnn(5, batch_norm=True)
    batch_norm = model.layers[1]
    x = np.random.default_rng(7).random((8, 8, 8, 1)).astype("float32") * 3.0
    y = np.arange(8) % 3
    before = [v.numpy().copy() for v in batch_norm.non_trainable_weights]
    attacks.PGD(0.1, 0.02, 5)(model, np.clip(x, 0, 1), y)
    for old, new in zip(before, batch_norm.non_trainable_weights):
        np.testing.assert_array_equal(old, new.numpy())
    # The documented switch runs the attack in training mode, which updates the statistics.
    attacks.PGD(0.1, 0.02, 5, training=True)(model, np.clip(x, 0, 1), y)
    assert not np.array_equal(before[0], batch_norm.non_trainable_weights[0].numpy())


def test_attack_compiles_with_xla():
    model = small_cnn(6, batch_norm=True)
    attack = attacks.PGD(0.1, 0.03, 4, loss="kl", random_start="normal")
    x = np.random.default_rng(8).random((4, 8, 8, 1)).astype("float32")
    y = np.array([0, 1, 2, 0])
    compiled = tf.function(lambda x, y: attack(model, x, y), jit_compile=True)
    x_adv = compiled(tf.constant(x), tf.constant(y)).numpy()
    assert np.all(per_example_distance(x_adv, x, np.inf) <= 0.1 + 1e-6)
    assert per_example_distance(x_adv, x, np.inf).max() > 0.05


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_attack_under_mixed_precision(policy):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        model = small_cnn(7)
    finally:
        keras.config.set_dtype_policy(previous)
    x = np.random.default_rng(9).random((4, 8, 8, 1)).astype("float32")
    y = np.array([0, 1, 2, 0])
    # The TRADES attack starts 0.001 * N from x, where the KL gradient is tiny: it must not underflow.
    x_adv = attacks.PGD(0.05, 0.02, 3, loss="kl", random_start="normal")(model, x, y)
    assert x_adv.dtype == tf.float32
    assert per_example_distance(x_adv.numpy(), x, np.inf).min() > 0.03


def test_config_round_trip():
    for attack in (
        attacks.PGD(0.5, 0.1, 7, ord=2, loss="dlr", random_start=None, training=True, seed=3),
        attacks.FGSM(0.03, loss="cw"),
        attacks.CW(0.031, 0.007, 20, confidence=1.0, stop_at_misclassification=True),
    ):
        config = attack.get_config()
        restored = type(attack).from_config(config)
        assert restored.get_config() == config
        rebuilt = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(attack))
        assert type(rebuilt) is type(attack) and rebuilt.get_config() == config
    assert attacks.PGD(0.1, 0.1, 1, ord=2).get_config()["ord"] == "2"


@pytest.mark.parametrize(
    "kwargs, argument, accepted",
    [
        (dict(eps=-0.1), "eps", "> 0"),
        (dict(steps=0), "steps", "int >= 1"),
        (dict(ord=1), "ord", "numpy.inf, 2"),
        (dict(loss="xent"), "loss", "'ce', 'kl', 'cw', 'dlr'"),
        (dict(random_start="gaussian"), "random_start", "'uniform', 'normal', None"),
        (dict(training="no"), "training", "True or False"),
    ],
)
def test_invalid_arguments_name_argument_and_accepted_values(kwargs, argument, accepted):
    arguments = dict(eps=0.1, step_size=0.01, steps=3)
    arguments.update(kwargs)
    with pytest.raises(ValueError) as error:
        attacks.PGD(**arguments)
    message = str(error.value)
    assert f"argument `{argument}`" in message and accepted in message and "Received:" in message
