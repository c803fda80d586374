"""Ratio-matching lambda schedule (after Wu et al.'s WAR) against a NumPy re-derivation."""

import glob
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfnorms
from tfnorms.war import WidthAdjustedRegularization, reference_ratio, war_lambda


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
    callback = WidthAdjustedRegularization(0.25, warmup_epochs=warmup, **kwargs)
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
    callback = WidthAdjustedRegularization(0.01, ema=0.0, warmup_epochs=0)
    trainer = _StubTrainer(beta=6.0)
    drive(callback, trainer, epochs)
    assert all(r["new_lambda"] >= 6.0 for r in callback.records)


def test_per_epoch_reference_and_step_updates():
    epochs = synthetic_epochs(seed=1, epochs=3, batches=4)
    targets = [0.05, 0.2, 0.4]
    callback = WidthAdjustedRegularization(targets, ema=0.0, enlarge_only=False, warmup_epochs=0)
    drive(callback, _StubTrainer(), epochs)
    periods = [(np.mean([b[0] for b in e]), np.mean([b[1] for b in e])) for e in epochs]
    np.testing.assert_allclose([r["new_lambda"] for r in callback.records],
                               numpy_schedule(targets, periods, 6.0, 0.0, enlarge_only=False), rtol=1e-5)

    # Every 2 steps: the period means are those of the last two batches.
    callback = WidthAdjustedRegularization(0.2, update_freq=2, ema=0.0, enlarge_only=False, warmup_epochs=0)
    drive(callback, _StubTrainer(), epochs)
    flat = [batch for epoch in epochs for batch in epoch]
    periods = [tuple(np.mean(flat[i:i + 2], axis=0)) for i in range(0, len(flat), 2)]
    np.testing.assert_allclose([r["new_lambda"] for r in callback.records],
                               numpy_schedule(0.2, periods, 6.0, 0.0, enlarge_only=False), rtol=1e-5)
    assert [r["step"] for r in callback.records] == [2, 4, 6, 8, 10, 12]


def test_measured_ratio_is_logged_before_the_update():
    callback = WidthAdjustedRegularization(0.5, ema=0.0, enlarge_only=False, warmup_epochs=0)
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
    callback = WidthAdjustedRegularization(str(path))
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
            WidthAdjustedRegularization(**kwargs)
        return
    with pytest.raises(ValueError, match=f"Invalid value for argument `{name}`"):
        WidthAdjustedRegularization(**kwargs)


def test_config_round_trip():
    callback = WidthAdjustedRegularization([0.1, 0.2], update_freq=5, ema=0.9, enlarge_only=False, min_value=1.0,
                                           max_value=30.0, warmup_epochs=2, log_dir="/tmp/war")
    config = callback.get_config()
    json.dumps(config)
    clone = WidthAdjustedRegularization.from_config(config)
    assert clone.get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(callback))
    assert isinstance(restored, WidthAdjustedRegularization) and restored.get_config() == config
    assert tfnorms.callbacks.WidthAdjustedRegularization is WidthAdjustedRegularization


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
    war = WidthAdjustedRegularization(0.5, ema=0.5, enlarge_only=False, warmup_epochs=0, log_dir=str(tmp_path))
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
        trainer.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[WidthAdjustedRegularization(0.5)])
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    plain.compile("sgd", "mse")
    with pytest.raises(ValueError, match="AdversarialTrainer"):
        plain.fit(np.zeros((4, 3)), np.zeros((4, 2)), epochs=1, verbose=0,
                  callbacks=[WidthAdjustedRegularization(0.5)])
