"""Tests of tfnorms.attacks: threat-model invariants, losses, BN mode, XLA, config, validation."""

import json

import numpy as np
import pytest
import keras
import tensorflow as tf
from hypothesis import given, settings, strategies as st

from tfnorms import attacks
from tfnorms.attacks import loop, losses, projections, starts


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


# ---------------------------------------------------------------------------------------- the interface
def every_attack():
    """One instance of each exported attack, with non-default settings."""
    return [
        attacks.PGD(0.1, 0.02, 2, ord=2, loss="kl", random_start="normal", seed=1),
        attacks.FGSM(0.1, loss="cw", seed=2),
        attacks.CW(0.1, 0.02, 2, confidence=0.5, stop_at_misclassification=True),
        attacks.APGD(0.1, "dlr", targeted=True, n_iter=3, n_target_classes=2, n_restarts=2, seed=3),
        attacks.FAB(0.1, n_iter=3, n_target_classes=2, backward_step=0.8, seed=4),
        attacks.Square(0.1, n_queries=5, p_init=0.5, seed=5),
        attacks.AutoAttack(0.1, version="custom", attacks=["apgd-ce", attacks.PGD(0.1, 0.02, 2)], seed=6, verbose=0),
    ]


NOT_ATTACKS = {"AttackResult", "APGDResult", "FABResult", "SquareResult", "AutoAttackResult", "AutoAttackWarning"}


def test_every_exported_attack_is_an_attack():
    exported = {name: getattr(attacks, name) for name in attacks.__all__ if isinstance(getattr(attacks, name), type)}
    assert {name for name, cls in exported.items() if not issubclass(cls, attacks.Attack)} == NOT_ATTACKS
    concrete = {name for name, cls in exported.items() if name not in NOT_ATTACKS and not getattr(cls, "__abstractmethods__")}
    assert concrete == {"PGD", "FGSM", "CW", "APGD", "FAB", "Square", "AutoAttack"}
    assert {type(attack).__name__ for attack in every_attack()} == concrete
    assert {type(a).__name__ for a in every_attack() if isinstance(a, attacks.RestartAttack)} == {"APGD", "FAB", "Square"}
    with pytest.raises(TypeError):
        attacks.Attack()


@pytest.mark.parametrize("attack", every_attack(), ids=lambda a: type(a).__name__)
def test_every_attack_round_trips_its_config(attack):
    config = attack.get_config()
    json.dumps(config)
    restored = type(attack).from_config(config)
    assert type(restored) is type(attack) and restored.get_config() == config
    rebuilt = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(attack))
    assert type(rebuilt) is type(attack) and rebuilt.get_config() == config
    assert repr(attack).startswith(f"{type(attack).__name__}(eps=0.1")
    assert isinstance(attack.name, str) and attack.name


@pytest.mark.parametrize("build", [
    lambda: attacks.PGD(0.1, 0.02, 3, np.inf),
    lambda: attacks.FGSM(0.1, np.inf),
    lambda: attacks.CW(0.1, 0.02, 3, np.inf),
    lambda: attacks.APGD(0.1, "ce", True),
    lambda: attacks.FAB(0.1, 9),
    lambda: attacks.Square(0.1, 100),
    lambda: attacks.AutoAttack(0.1, "custom"),
    # FGSM and CW fix some of PGD's arguments.
    lambda: attacks.FGSM(0.1, steps=3),
    lambda: attacks.FGSM(0.1, stop_at_misclassification=True),
    lambda: attacks.CW(0.1, 0.02, 3, loss="ce"),
], ids=["PGD", "FGSM", "CW", "APGD", "FAB", "Square", "AutoAttack", "FGSM-steps", "FGSM-stop", "CW-loss"])
def test_positional_arguments_beyond_the_allowed_ones_are_rejected(build):
    with pytest.raises(TypeError):
        build()


def test_the_allowed_positional_arguments_still_work():
    assert attacks.PGD(0.031, 0.007, 20).get_config()["steps"] == 20
    assert attacks.CW(0.031, 0.007, 20).get_config()["step_size"] == 0.007
    assert attacks.FGSM(0.03).eps == 0.03
    assert attacks.APGD(0.03, "dlr").loss == "dlr"
    assert attacks.FAB(0.03).eps == attacks.Square(0.03).eps == attacks.AutoAttack(0.03).eps == 0.03
    model, x, y = small_cnn(9), np.zeros((2, 8, 8, 1), "float32"), np.array([0, 1])
    with pytest.raises(TypeError):  # clean_logits is keyword-only
        attacks.PGD(0.1, 0.02, 1)(model, x, y, model(x))
    with pytest.raises(TypeError):  # so is a restart attack's per-call seed
        attacks.APGD(0.1, n_iter=1).run(model, x, y, 3)


def test_clean_logits_are_accepted_from_the_attacks_own_mode_only():
    trades = attacks.PGD(0.1, 0.02, 2, loss="kl", random_start="normal", seed=0)
    assert trades.requires_clean_logits and trades.accepts_clean_logits(training=False)
    assert not trades.accepts_clean_logits(training=True)
    in_train_mode = attacks.PGD(0.1, 0.02, 2, loss="kl", training=True)
    assert in_train_mode.accepts_clean_logits(training=True) and not in_train_mode.accepts_clean_logits(False)
    for attack in every_attack()[1:]:  # cross-entropy, CW, DLR, FAB, Square, the cascade: no clean logits
        assert not attack.requires_clean_logits
        assert not attack.accepts_clean_logits(False) and not attack.accepts_clean_logits(True)
    # Handing over the logits the attack would compute changes nothing.
    model = small_cnn(10)
    x = np.random.default_rng(11).random((4, 8, 8, 1)).astype("float32")
    y = np.array([0, 1, 2, 0])
    np.testing.assert_allclose(trades(model, x, y, clean_logits=model(x, training=False)), trades(model, x, y),
                               atol=1e-6)


class Recorder(attacks.RestartAttack):
    """A toy restart attack: run ``i`` breaks the points ``breaks[i]``; it records what each run was given."""

    def __init__(self, eps=0.1, *, n_restarts=1, targeted=False, n_target_classes=0, breaks=(), seed=0):
        super().__init__(eps, n_restarts=n_restarts, seed=seed)
        self.targeted, self.n_target_classes, self.breaks, self.runs = targeted, n_target_classes, breaks, []

    def _single_run(self, model, x, labels, *args):
        return x

    def _initial_state(self, x, clean_logits, labels):
        return dict(adversarial=x, broken=tf.zeros(tf.shape(labels), tf.bool))

    def _still_robust(self, state):
        return tf.logical_not(state["broken"])

    def _updates(self, model, rows, run):
        self.runs.append(dict(indices=run.indices.numpy().tolist(), targets=run.targets.numpy().tolist(),
                              seed=run.seed.numpy().tolist(), restart=run.restart))
        hit = np.isin(run.indices.numpy(), self.breaks[len(self.runs) - 1] if len(self.runs) <= len(self.breaks) else [])
        moved = rows["adversarial"] + 0.01 * hit.astype("float32")[:, None, None, None]
        return dict(adversarial=moved, broken=tf.logical_or(rows["broken"], hit))

    def _result(self, state, x, clean_logits, labels):
        return loop.AttackResult(state["adversarial"], tf.cast(state["broken"], tf.float32))

    def get_config(self):
        return dict(eps=self.eps, n_restarts=self.n_restarts, seed=self.seed)


def test_the_restart_loop_reruns_only_the_points_still_robust():
    model = small_cnn(12, num_classes=4)
    x = np.random.default_rng(12).random((4, 8, 8, 1)).astype("float32")
    y = np.array([0, 1, 2, 3])
    attack = Recorder(n_restarts=3, breaks=[[0, 2], [1]], seed=5)
    result = attack.run(model, x, y)
    assert [run["indices"] for run in attack.runs] == [[0, 1, 2, 3], [1, 3], [3]]
    assert [run["restart"] for run in attack.runs] == [0, 1, 2]
    assert [run["seed"] for run in attack.runs] == [[5, 0], [5, 1], [5, 2]]
    assert [run["targets"] for run in attack.runs] == [[0, 1, 2, 3], [1, 3], [3]]  # untargeted: the labels
    np.testing.assert_array_equal(result.max_gradient_norm.numpy(), [1, 1, 1, 0])
    np.testing.assert_allclose(result.adversarial.numpy() - x, np.where(np.array([1, 1, 1, 0]) > 0, 0.01, 0.0)[
        :, None, None, None] * np.ones_like(x), atol=1e-6)
    # Runs stop once no point is left; a per-call seed overrides the attack's.
    done = Recorder(n_restarts=3, breaks=[[0, 1, 2, 3]], seed=5)
    done.run(model, x, y, seed=8)
    assert [run["seed"] for run in done.runs] == [[8, 0]]


def test_the_restart_loop_runs_each_target_class_with_its_restarts():
    model = small_cnn(13, num_classes=4)
    x = np.random.default_rng(13).random((3, 8, 8, 1)).astype("float32")
    y = np.array([0, 1, 2])
    attack = Recorder(n_restarts=2, targeted=True, n_target_classes=5, seed=1)
    assert attack.target_classes(num_classes=4) == 3 and Recorder().target_classes(num_classes=4) == 0
    attack.run(model, x, y)
    ranked = np.argsort(-model(x).numpy(), axis=1, kind="stable")
    assert [run["restart"] for run in attack.runs] == [0, 1] * 3
    assert [run["seed"][1] for run in attack.runs] == list(range(6))
    assert [run["targets"] for run in attack.runs] == [ranked[:, rank].tolist() for rank in (1, 1, 2, 2, 3, 3)]


def test_restart_attacks_check_their_inputs_and_their_model_once_at_the_entry():
    model = small_cnn(14, num_classes=3)
    x = np.random.default_rng(14).random((2, 8, 8, 1)).astype("float32")
    with pytest.raises(ValueError, match=r"images in \[0, 1\]"):
        Recorder().run(model, x * 255, np.array([0, 1]))
    with pytest.raises(ValueError, match="Expected integer class ids in"):
        Recorder()(model, x, np.array([0, 7]))
    apgd_t = attacks.APGD(0.1, "dlr", targeted=True, n_iter=2)
    assert apgd_t.unmet_requirement(3) == "the targeted DLR loss needs at least 4 classes"
    assert apgd_t.unmet_requirement(4) is None and attacks.APGD(0.1).unmet_requirement(2) is None
    with pytest.raises(ValueError, match="apgd-t: the targeted DLR loss needs at least 4 classes; the model has 3"):
        apgd_t(model, x, np.array([0, 1]))
    # The cascade skips it instead, with a flag; and only targeted attacks count as capped.
    auto = attacks.AutoAttack(0.1, version="custom", attacks=["apgd-ce", "apgd-t", "fab-t"], n_iter=1, seed=0,
                              verbose=0)
    with pytest.warns(attacks.AutoAttackWarning, match="apgd-t skipped"):
        evaluation = auto.evaluate(model, x, np.array([0, 1]))
    capped = [flag for flag in evaluation.flags if "target classes" in flag]
    assert capped == ["the model has 3 classes, fewer than 9 + 1: the targeted attacks (apgd-t, fab-t) use 2 "
                      "target classes."]
    assert list(evaluation.report["robust_accuracy_per_attack"]) == ["apgd-ce", "fab-t"]
    assert evaluation.report["points_broken_per_attack"]["apgd-t"] == 0


def test_fab_beta_is_now_backward_step_and_old_configs_still_load():
    with pytest.warns(DeprecationWarning, match="backward_step"):
        old = attacks.FAB(0.1, beta=0.7)
    assert old.backward_step == 0.7 and "beta" not in old.get_config()
    saved = dict(attacks.FAB(0.1, n_iter=2).get_config())
    saved["beta"] = saved.pop("backward_step")
    with pytest.warns(DeprecationWarning):
        assert attacks.FAB.from_config(saved).get_config() == attacks.FAB(0.1, n_iter=2).get_config()
    with pytest.raises(ValueError, match="backward_step"):
        attacks.FAB(0.1, beta=0.7, backward_step=0.5)
    with pytest.raises(ValueError, match="argument `backward_step`"):
        attacks.FAB(0.1, backward_step=1.5)


class Shift(attacks.Attack):
    """A user's attack: moves every input by ``eps`` towards 0.5."""

    def __init__(self, eps):
        self.eps = eps

    def run(self, model, x, y, *, clean_logits=None):
        x = tf.convert_to_tensor(x, tf.float32)
        return loop.AttackResult(x + self.eps * tf.sign(0.5 - x), tf.zeros(tf.shape(x)[:1]))

    def get_config(self):
        return {"eps": self.eps}


def test_autoattack_runs_any_attack_through_the_interface():
    model = small_cnn(15, num_classes=3)
    x = np.random.default_rng(15).random((4, 8, 8, 1)).astype("float32")
    auto = attacks.AutoAttack(0.1, version="custom", attacks=[Shift(0.1), Shift(0.05)], seed=0, verbose=0)
    assert auto.attack_names == ["shift", "shift_2"]
    evaluation = auto.evaluate(model, x, np.array([0, 1, 2, 0]))
    assert [entry["config"] for entry in evaluation.report["attacks"]] == [{"eps": 0.1}, {"eps": 0.05}]
    np.testing.assert_array_equal(auto(model, x, np.array([0, 1, 2, 0])), evaluation.adversarial)
