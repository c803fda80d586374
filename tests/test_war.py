"""The lambda schedules of tfnorms.war (ratio and stability matching) against NumPy re-derivations."""

import glob
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfnorms
from tfnorms.war import (RatioMatchingLambda, StabilityMatchingLambda, WidthAdjustedRegularization,
                         reference_ratio, reference_stability, stability_lambda, war_lambda)


# ------------------------------------------------------------- NumPy reference


def numpy_schedule(target, periods, beta0, ema, enlarge_only=True, min_value=0.0, max_value=None, warmup=0):
    """lambda after every period: EMA of the period means, lambda* = rho_0 L / R, clip, enlarge-only."""
    lam, smooth, out = beta0, None, []
    for index, (natural, robust) in enumerate(periods):
        if index >= warmup:
            pair = np.array([natural, robust], dtype=np.float64)
            smooth = pair if smooth is None else ema * smooth + (1 - ema) * pair
            rho = target[min(index, len(target) - 1)] if isinstance(target, list) else target
            proposal = rho * smooth[0] / smooth[1]
            proposal = np.clip(proposal, min_value, np.inf if max_value is None else max_value)
            lam = max(lam, proposal) if enlarge_only else proposal
        out.append(float(lam))
    return out


class _StubTrainer:
    """What the callback reads from an AdversarialTrainer: beta, the two loss trackers, the step counter."""

    def __init__(self, beta=6.0, method="trades"):
        self.beta = tf.Variable(beta, dtype=tf.float32, trainable=False)
        self.natural_loss_tracker = keras.metrics.Mean()
        self.robust_loss_tracker = keras.metrics.Mean()
        self.method = method
        self.optimizer = type("Opt", (), {})()
        self.optimizer.iterations = tf.Variable(0, dtype=tf.int64)


def drive(callback, trainer, epochs):
    """Feeds per-batch (natural, robust) values epoch by epoch like ``fit`` does."""
    callback.set_model(trainer)
    callback.on_train_begin()
    for epoch, batches in enumerate(epochs):
        trainer.natural_loss_tracker.reset_state()
        trainer.robust_loss_tracker.reset_state()
        callback.on_epoch_begin(epoch)
        for batch, (natural, robust) in enumerate(batches):
            trainer.natural_loss_tracker.update_state(natural)
            trainer.robust_loss_tracker.update_state(robust)
            trainer.optimizer.iterations.assign_add(1)
            callback.on_train_batch_end(batch)
        logs = {}
        callback.on_epoch_end(epoch, logs)
    callback.on_train_end()
    return logs


def synthetic_epochs(seed=0, epochs=6, batches=4):
    rng = np.random.default_rng(seed)
    natural = np.linspace(2.0, 0.6, epochs)[:, None] * rng.uniform(0.8, 1.2, (epochs, batches))
    robust = np.linspace(0.02, 0.15, epochs)[:, None] * rng.uniform(0.8, 1.2, (epochs, batches))
    return [list(zip(n, r)) for n, r in zip(natural, robust)]


# ------------------------------------------------------------- the rule


def test_update_matches_the_reference_ratio():
    new = war_lambda(0.3, natural_loss=1.2, robust_loss=0.04, current_lambda=6.0, enlarge_only=False)
    assert new * 0.04 / 1.2 == pytest.approx(0.3)


def test_enlarge_only_and_bounds():
    assert war_lambda(0.3, 1.0, 0.5, current_lambda=6.0) == 6.0  # proposal 0.6 < 6
    assert war_lambda(0.3, 1.0, 0.5, current_lambda=6.0, enlarge_only=False) == pytest.approx(0.6)
    assert war_lambda(0.3, 1.0, 0.5, current_lambda=6.0, enlarge_only=False, min_value=2.0) == 2.0
    assert war_lambda(0.3, 1.0, 0.001, current_lambda=6.0, max_value=24.0) == 24.0
    # No robust signal: no finite lambda matches; stay, or go to the cap.
    assert war_lambda(0.3, 1.0, 0.0, current_lambda=6.0) == 6.0
    assert war_lambda(0.3, 1.0, 0.0, current_lambda=6.0, max_value=24.0) == 24.0


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(ema=0.0, enlarge_only=False),
        dict(ema=0.5, enlarge_only=True),
        dict(ema=0.8, enlarge_only=False, min_value=1.0, max_value=9.0),
        dict(ema=0.3, enlarge_only=True, max_value=20.0, warmup=2),
    ],
)
def test_epoch_schedule_matches_numpy(kwargs):
    epochs = synthetic_epochs()
    warmup = kwargs.pop("warmup", 0)
    callback = RatioMatchingLambda(0.25, warmup_epochs=warmup, **kwargs)
    trainer = _StubTrainer(beta=6.0)
    drive(callback, trainer, epochs)
    periods = [(np.mean([b[0] for b in e]), np.mean([b[1] for b in e])) for e in epochs]
    expected = numpy_schedule(0.25, periods, 6.0, warmup=warmup, **kwargs)
    got = [r["new_lambda"] for r in callback.records]
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert float(trainer.beta.numpy()) == pytest.approx(expected[-1], rel=1e-5)
    if warmup:
        assert got[:warmup] == [6.0] * warmup


def test_schedule_without_enlarge_only_differs_when_ratio_is_high():
    epochs = synthetic_epochs()
    periods = [(np.mean([b[0] for b in e]), np.mean([b[1] for b in e])) for e in epochs]
    free = numpy_schedule(0.01, periods, 6.0, ema=0.0, enlarge_only=False)
    assert min(free) < 6.0  # the test data exercises the enlarge-only branch
    callback = RatioMatchingLambda(0.01, ema=0.0, warmup_epochs=0)
    trainer = _StubTrainer(beta=6.0)
    drive(callback, trainer, epochs)
    assert all(r["new_lambda"] >= 6.0 for r in callback.records)


def test_per_epoch_reference_and_step_updates():
    epochs = synthetic_epochs(seed=1, epochs=3, batches=4)
    targets = [0.05, 0.2, 0.4]
    callback = RatioMatchingLambda(targets, ema=0.0, enlarge_only=False, warmup_epochs=0)
    drive(callback, _StubTrainer(), epochs)
    periods = [(np.mean([b[0] for b in e]), np.mean([b[1] for b in e])) for e in epochs]
    np.testing.assert_allclose([r["new_lambda"] for r in callback.records],
                               numpy_schedule(targets, periods, 6.0, 0.0, enlarge_only=False), rtol=1e-5)

    # Every 2 steps: the period means are those of the last two batches.
    callback = RatioMatchingLambda(0.2, update_freq=2, ema=0.0, enlarge_only=False, warmup_epochs=0)
    drive(callback, _StubTrainer(), epochs)
    flat = [batch for epoch in epochs for batch in epoch]
    periods = [tuple(np.mean(flat[i:i + 2], axis=0)) for i in range(0, len(flat), 2)]
    np.testing.assert_allclose([r["new_lambda"] for r in callback.records],
                               numpy_schedule(0.2, periods, 6.0, 0.0, enlarge_only=False), rtol=1e-5)
    assert [r["step"] for r in callback.records] == [2, 4, 6, 8, 10, 12]


def test_measured_ratio_is_logged_before_the_update():
    callback = RatioMatchingLambda(0.5, ema=0.0, enlarge_only=False, warmup_epochs=0)
    logs = drive(callback, _StubTrainer(beta=2.0), [[(1.0, 0.1)], [(1.0, 0.1)]])
    first, second = callback.records
    assert first["ratio"] == pytest.approx(2.0 * 0.1 / 1.0)
    assert first["new_lambda"] == pytest.approx(5.0)
    assert second["ratio"] == pytest.approx(0.5)  # matched after one update on stationary losses
    assert logs["lambda"] == pytest.approx(5.0)


# ------------------------------------------------------------- reference ratio


def test_reference_ratio_from_history_summary_and_file(tmp_path):
    history = {"natural_loss": [2.0, 1.0, 0.5], "robust_loss": [0.01, 0.05, 0.1]}
    assert reference_ratio(history, beta=6.0) == pytest.approx(6.0 * np.mean([0.01, 0.05, 0.1]) / np.mean([2, 1, 0.5]))
    assert reference_ratio(history, beta=6.0, last_epochs=1) == pytest.approx(6.0 * 0.1 / 0.5)
    assert reference_ratio(history, beta=6.0, per_epoch=True) == pytest.approx([0.03, 0.3, 1.2])
    path = tmp_path / "summary.json"
    path.write_text(json.dumps({"beta": 6.0, "history": history}))
    assert reference_ratio(str(path), last_epochs=1) == pytest.approx(1.2)
    callback = RatioMatchingLambda(str(path))
    assert callback.reference_ratio == pytest.approx(reference_ratio(history, beta=6.0))
    # A WAR run's own history carries its per-epoch lambda.
    assert reference_ratio(dict(history, **{"lambda": [1.0, 2.0, 4.0]}), per_epoch=True) == pytest.approx(
        [0.005, 0.1, 0.8])
    with pytest.raises(ValueError, match="beta"):
        reference_ratio(history)
    with pytest.raises(ValueError, match="history"):
        reference_ratio({"loss": [1.0]}, beta=1.0)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(reference_ratio=0.0), "reference_ratio"),
        (dict(reference_ratio=-1.0), "reference_ratio"),
        (dict(reference_ratio=float("nan")), "reference_ratio"),
        (dict(reference_ratio=[]), "reference_ratio"),
        (dict(reference_ratio="0.3x"), None),
        (dict(reference_ratio=0.3, update_freq=0), "update_freq"),
        (dict(reference_ratio=0.3, update_freq="batch"), "update_freq"),
        (dict(reference_ratio=0.3, ema=1.0), "ema"),
        (dict(reference_ratio=0.3, ema=-0.1), "ema"),
        (dict(reference_ratio=0.3, enlarge_only="yes"), "enlarge_only"),
        (dict(reference_ratio=0.3, min_value=-1.0), "min_value"),
        (dict(reference_ratio=0.3, min_value=5.0, max_value=2.0), "max_value"),
        (dict(reference_ratio=0.3, warmup_epochs=-1), "warmup_epochs"),
        (dict(reference_ratio=0.3, log_dir=3), "log_dir"),
    ],
)
def test_invalid_arguments(kwargs, name):
    if name is None:  # a path that does not exist
        with pytest.raises(FileNotFoundError):
            RatioMatchingLambda(**kwargs)
        return
    with pytest.raises(ValueError, match=f"Invalid value for argument `{name}`"):
        RatioMatchingLambda(**kwargs)


def test_config_round_trip():
    callback = RatioMatchingLambda([0.1, 0.2], update_freq=5, ema=0.9, enlarge_only=False, min_value=1.0,
                                           max_value=30.0, warmup_epochs=2, log_dir="/tmp/war")
    config = callback.get_config()
    json.dumps(config)
    clone = RatioMatchingLambda.from_config(config)
    assert clone.get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(callback))
    assert isinstance(restored, RatioMatchingLambda) and restored.get_config() == config


def test_deprecated_name_warns_and_old_configs_load():
    with pytest.warns(DeprecationWarning, match="RatioMatchingLambda"):
        old = tfnorms.callbacks.WidthAdjustedRegularization(0.3, ema=0.2)
    assert isinstance(old, RatioMatchingLambda) and tfnorms.callbacks.WidthAdjustedRegularization is \
        WidthAdjustedRegularization
    saved = {"module": None, "class_name": "WidthAdjustedRegularization", "registered_name":
             "tfnorms>WidthAdjustedRegularization", "config": old.get_config()}
    with pytest.warns(DeprecationWarning):
        restored = keras.saving.deserialize_keras_object(saved)
    assert isinstance(restored, RatioMatchingLambda) and restored.get_config() == old.get_config()


# ------------------------------------------------------------- inside fit


def _tiny_trainer(beta=6.0, method="trades"):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])
    attack = tfnorms.attacks.PGD(0.1, 0.05, 2, loss="kl" if method == "trades" else "ce", random_start="normal", seed=0)
    trainer = tfnorms.AdversarialTrainer(model, method=method, beta=beta, attack=attack)
    trainer.compile(optimizer=keras.optimizers.SGD(0.1))
    rng = np.random.default_rng(0)
    x = rng.random((32, 6, 6, 1)).astype("float32")
    y = (x.reshape(32, -1).sum(-1) > 18).astype("int32") + (x[:, 0, 0, 0] > 0.5)
    return trainer, x, y


def test_callback_assigns_trainer_beta_inside_fit(tmp_path):
    trainer, x, y = _tiny_trainer()
    war = RatioMatchingLambda(0.5, ema=0.5, enlarge_only=False, warmup_epochs=0, log_dir=str(tmp_path))
    seen = []

    class BetaProbe(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append(float(self.model.beta.numpy()))

    history = trainer.fit(x, y, batch_size=8, epochs=3, callbacks=[war, BetaProbe()], verbose=0).history
    periods = list(zip(history["natural_loss"], history["robust_loss"]))
    expected = numpy_schedule(0.5, periods, 6.0, ema=0.5, enlarge_only=False)
    np.testing.assert_allclose(history["lambda"], expected, rtol=1e-4)
    assert float(trainer.beta.numpy()) == pytest.approx(expected[-1], rel=1e-4)
    np.testing.assert_allclose(seen, [6.0] + expected[:-1], rtol=1e-4)  # the next epoch trains with it
    assert expected[-1] != pytest.approx(6.0)

    tags = set()
    for path in glob.glob(os.path.join(str(tmp_path), "train", "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(value.tag for value in event.summary.value)
    assert {"war/lambda", "war/ratio", "war/proposed_lambda"} <= tags


def test_callback_rejects_models_without_lambda():
    trainer, x, y = _tiny_trainer(beta=None, method="pgd")
    with pytest.raises(ValueError, match="pgd"):
        trainer.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[RatioMatchingLambda(0.5)])
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    plain.compile("sgd", "mse")
    with pytest.raises(ValueError, match="AdversarialTrainer"):
        plain.fit(np.zeros((4, 3)), np.zeros((4, 2)), epochs=1, verbose=0,
                  callbacks=[RatioMatchingLambda(0.5)])


# ------------------------------------------------------------- stability matching


def numpy_stability_schedule(measured, reference, lam0, gain, max_step, max_factor, tolerance=0.0, warmup=0):
    """lambda after every epoch: log(lambda) += min(gain * max(gap - tol, 0), log(max_step)), in [lam0, k lam0]."""
    log_lam, out = np.log(lam0), []
    for epoch, stability in enumerate(measured):
        target = reference[min(epoch, len(reference) - 1)]
        if epoch >= warmup:
            gap = max(target - stability - tolerance, 0.0)
            log_lam = np.clip(log_lam + min(gain * gap, np.log(max_step)), np.log(lam0), np.log(max_factor * lam0))
        out.append(float(np.exp(log_lam)))
    return out


@pytest.mark.parametrize("seed", range(4))
def test_stability_update_matches_numpy(seed):
    rng = np.random.default_rng(seed)
    for _ in range(20):
        current, floor = rng.uniform(3, 12), 3.0
        stability, target = rng.uniform(0.5, 1.0, 2)
        gain, max_step, tolerance = rng.uniform(0.5, 20), rng.uniform(1.05, 2.0), rng.uniform(0, 0.05)
        gap = max(target - stability - tolerance, 0.0)
        expected = np.clip(current * min(np.exp(gain * gap), max_step), floor, 24.0)
        got = stability_lambda(current, stability, target, floor=floor, ceiling=24.0, gain=gain, max_step=max_step,
                               tolerance=tolerance)
        assert got == pytest.approx(expected, rel=1e-12)
    # Ahead of the reference, or behind within the tolerance: lambda stays; a huge gain does not overflow.
    assert stability_lambda(6.0, 0.9, 0.8, floor=6.0, ceiling=24.0) == 6.0
    assert stability_lambda(6.0, 0.79, 0.8, floor=6.0, ceiling=24.0, tolerance=0.02) == 6.0
    assert stability_lambda(6.0, 0.0, 1.0, floor=6.0, ceiling=24.0, gain=1e300, max_step=2.0) == 12.0
    assert stability_lambda(20.0, 0.0, 1.0, floor=6.0, ceiling=24.0, max_step=2.0) == 24.0


def _stub_stability_run(callback, measured, beta=6.0):
    """Drives ``callback`` over len(measured) epochs with ``measure`` returning the given stabilities."""
    values = iter(measured)
    callback.measure = lambda: next(values)
    epochs = [[(1.0, 0.1)]] * len(measured)
    trainer = _StubTrainer(beta=beta)
    drive(callback, trainer, epochs)
    return trainer


HELD_OUT = (np.zeros((4, 6, 6, 1), np.float32), np.arange(4) % 3)


@pytest.mark.parametrize("kwargs", [
    {"gain": 5.0, "max_step": 1.5, "max_factor": 4.0},
    {"gain": 40.0, "max_step": 1.2, "max_factor": 2.0, "tolerance": 0.01, "warmup_epochs": 2},
])
def test_stability_schedule_matches_numpy(kwargs):
    measured = [0.70, 0.72, 0.75, 0.80, 0.86, 0.90]
    reference = [0.80, 0.84, 0.86, 0.87, 0.88]
    callback = StabilityMatchingLambda(*HELD_OUT, tfnorms.attacks.PGD(0.1, 0.05, 1), reference_stability=reference,
                                       **kwargs)
    trainer = _stub_stability_run(callback, measured)
    warmup = kwargs.pop("warmup_epochs", 0)
    expected = numpy_stability_schedule(measured, reference, 6.0, warmup=warmup, **kwargs)
    np.testing.assert_allclose([r["new_lambda"] for r in callback.records], expected, rtol=1e-6)
    assert float(trainer.beta.numpy()) == pytest.approx(expected[-1], rel=1e-6)
    assert expected[-1] > 6.0 and expected[-1] <= kwargs["max_factor"] * 6.0 + 1e-9
    assert [r["reference_stability"] for r in callback.records] == reference + reference[-1:]


def test_measure_only_without_reference():
    callback = StabilityMatchingLambda(*HELD_OUT, tfnorms.attacks.PGD(0.1, 0.05, 1))
    logs = _stub_stability_run(callback, [0.1, 0.2]) and callback.records
    assert [r["new_lambda"] for r in logs] == [6.0, 6.0] and [r["stability"] for r in logs] == [0.1, 0.2]


@pytest.fixture(scope="module")
def stability_runs(tmp_path_factory):
    """A measured narrow run, then a run whose synthetic reference (stability 1) forces enlargements."""
    attack = tfnorms.attacks.PGD(0.3, 0.1, 3, random_start=None)
    trainer, x, y = _tiny_trainer(beta=2.0)
    narrow = StabilityMatchingLambda(x[:16], y[:16], attack)
    narrow_history = trainer.fit(x, y, batch_size=16, epochs=1, callbacks=[narrow], verbose=0).history
    log_dir = tmp_path_factory.mktemp("stability")
    trainer, x, y = _tiny_trainer(beta=2.0)
    wide = StabilityMatchingLambda(x[:16], y[:16], attack, reference_stability=[1.0], gain=10.0, max_step=1.5,
                                   max_factor=3.0, log_dir=str(log_dir))
    seen = []

    class BetaProbe(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append(float(self.model.beta.numpy()))

    history = trainer.fit(x, y, batch_size=16, epochs=2, callbacks=[wide, BetaProbe()], verbose=0).history
    return narrow, narrow_history, wide, history, seen, trainer, log_dir


def test_stability_callback_measures_with_metrics_evaluate(stability_runs):
    narrow, narrow_history, *_ = stability_runs
    assert narrow_history["lambda"] == [2.0]  # measure only: lambda untouched
    assert reference_stability({"history": narrow_history}) == pytest.approx(narrow_history["heldout_stability"])
    report = tfnorms.metrics.evaluate(narrow.model.model, narrow.x, narrow.y, narrow.attack)
    assert narrow_history["heldout_stability"][-1] == pytest.approx(report.stability)


def test_synthetic_reference_forces_enlargement_inside_fit(stability_runs):
    *_, wide, history, seen, trainer, log_dir = stability_runs
    measured = history["heldout_stability"]
    assert min(measured) < 1.0  # the reference of 1.0 is ahead: the rule must act
    expected = numpy_stability_schedule(measured, [1.0], 2.0, gain=10.0, max_step=1.5, max_factor=3.0)
    np.testing.assert_allclose(history["lambda"], expected, rtol=1e-5)
    assert expected[-1] > 2.0
    np.testing.assert_allclose(seen, [2.0] + expected[:-1], rtol=1e-5)  # the next epoch trains with it
    assert float(trainer.beta.numpy()) == pytest.approx(expected[-1], rel=1e-5)
    tags = set()
    for path in glob.glob(os.path.join(str(log_dir), "train", "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(value.tag for value in event.summary.value)
    assert {"war/lambda", "war/stability", "war/reference_stability"} <= tags


def test_stability_config_round_trip(tmp_path):
    path = tmp_path / "reference.json"
    path.write_text(json.dumps({"history": {"heldout_stability": [0.5, 0.75]}}))
    callback = StabilityMatchingLambda(*HELD_OUT, tfnorms.attacks.PGD(0.1, 0.05, 2), reference_stability=str(path),
                                       gain=3.0, max_step=1.25, max_factor=2.0, tolerance=0.01, warmup_epochs=1,
                                       batch_size=2, log_dir="/tmp/stab")
    assert callback.reference_stability == [0.5, 0.75]
    config = callback.get_config()
    json.dumps(config)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(callback))
    assert isinstance(restored, StabilityMatchingLambda) and restored.get_config() == config
    assert restored.attack.get_config() == callback.attack.get_config()
    np.testing.assert_array_equal(restored.x, callback.x)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(x=np.zeros((0, 6, 6, 1))), "x"),
        ({"y": np.arange(3)}, "y"),
        ({"y": np.zeros(4)}, "y"),
        ({"attack": "pgd"}, "attack"),
        ({"reference_stability": 1.5}, "reference_stability"),
        ({"reference_stability": []}, "reference_stability"),
        ({"reference_stability": {"history": {"loss": [1.0]}}}, "history"),
        ({"gain": 0.0}, "gain"),
        ({"max_step": 1.0}, "max_step"),
        ({"max_factor": 0.5}, "max_factor"),
        ({"tolerance": -0.1}, "tolerance"),
        ({"warmup_epochs": -1}, "warmup_epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"log_dir": 3}, "log_dir"),
    ],
)
def test_stability_invalid_arguments(kwargs, name):
    arguments = {"x": HELD_OUT[0], "y": HELD_OUT[1], "attack": tfnorms.attacks.PGD(0.1, 0.05, 1)}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=f"Invalid value for argument `{name}`"):
        StabilityMatchingLambda(**arguments)
