"""Ratio-matching lambda schedule, after Wu et al.'s Width Adjusted Regularization (WAR).

Wu et al. (NeurIPS 2021) tune the robust-regularization weight ``lambda`` on a
narrow network and enlarge it on wider ones so that the balance between the
natural risk and the robust regularization term stays what it was on the
tuned narrow network (docs/theory.md#ratio-matching-lambda). The exact update rule of their
Algorithm 1 was not available to us. :class:`WidthAdjustedRegularization`
implements a rule **designed from that principle**; it is not the paper's
algorithm. With the objective ``L_nat + lambda * R`` the rule matches the
robust-to-natural ratio

    rho = lambda * mean(R) / mean(L_nat)

of the wide run to the narrow run's ``rho_0``, by the damped fixed-point
update ``lambda <- rho_0 * EMA(L_nat) / EMA(R)`` (clipped to bounds, and by
default never below the current ``lambda``). The derivation is in
``docs/reproducing.md`` ("The ratio-matching rule").

* :func:`war_lambda`: the rule on plain numbers (one update).
* :func:`reference_ratio`: ``rho_0`` from a narrow run's history or summary JSON.
* :class:`WidthAdjustedRegularization`: a Keras callback that assigns
  ``trainer.beta`` of a :class:`tfnorms.AdversarialTrainer` during ``fit``.
"""

from __future__ import annotations

import json
import math
import os
from typing import Mapping

import keras
import numpy as np
import tensorflow as tf

from tfnorms import _args, _keras

__all__ = ["WidthAdjustedRegularization", "reference_ratio", "war_lambda"]

_EPS = 1e-12


def war_lambda(target_ratio, natural_loss, robust_loss, current_lambda, *, enlarge_only=True,
               min_value=0.0, max_value=None):
    """One update of the ratio-matching rule.

    Returns ``clip(rho_0 * natural_loss / robust_loss, min_value, max_value)``,
    raised to ``current_lambda`` when ``enlarge_only``. When the robust term
    is (numerically) zero the ratio cannot be matched by any finite lambda:
    the result is ``max_value`` if given, else ``current_lambda``.

    Args:
        target_ratio: ``rho_0 = lambda_0 * R_0 / L_nat_0`` of the tuned narrow run (> 0).
        natural_loss: measured (smoothed) natural risk ``L_nat`` of the wide run (>= 0).
        robust_loss: measured (smoothed) robust term ``R`` (without lambda, >= 0).
        current_lambda: lambda in use (>= 0).
        enlarge_only: never return less than ``current_lambda``.
        min_value: lower bound.
        max_value: upper bound or ``None``.

    Returns:
        The new lambda, a Python float.

    Example:
        >>> war_lambda(0.5, natural_loss=1.0, robust_loss=0.05, current_lambda=6.0)
        10.0
        >>> war_lambda(0.5, natural_loss=1.0, robust_loss=0.5, current_lambda=6.0)
        6.0
    """
    if robust_loss <= _EPS:
        proposal = max_value if max_value is not None else current_lambda
    else:
        proposal = target_ratio * natural_loss / robust_loss
    proposal = max(proposal, min_value)
    if max_value is not None:
        proposal = min(proposal, max_value)
    if enlarge_only:
        proposal = max(proposal, current_lambda)
    return float(proposal)


def _history_dict(history):
    if isinstance(history, keras.callbacks.History):
        return history.history
    if isinstance(history, Mapping):
        return history.get("history", history) if "natural_loss" not in history else history
    raise _args.invalid("history", "a keras History, a dict of per-epoch lists, or a run summary", history)


def reference_ratio(history, beta=None, last_epochs=None, per_epoch=False):
    """The narrow run's robust-to-natural ratio ``rho_0 = beta * mean(R) / mean(L_nat)``.

    Args:
        history: the narrow run's ``keras.callbacks.History`` (of a
            :class:`tfnorms.AdversarialTrainer` fit), its ``history`` dict of
            per-epoch ``natural_loss`` / ``robust_loss`` lists, a run summary
            dict holding such a dict under ``"history"`` (and optionally
            ``"beta"``), or the path of a JSON file with one of these.
        beta: the narrow run's lambda; if ``None``, taken from the summary's
            ``"beta"`` key or the per-epoch ``"lambda"`` log of a WAR run.
        last_epochs: average over only the last this many epochs (default: all).
        per_epoch: return the list of per-epoch ratios instead of one number
            (the callback then matches the ratio epoch by epoch).

    Returns:
        A float, or a list of floats with ``per_epoch=True``.

    Example:
        >>> history = {"natural_loss": [1.5, 0.5], "robust_loss": [0.01, 0.09]}
        >>> round(reference_ratio(history, beta=6.0), 6)
        0.3
        >>> tuple(round(r, 6) for r in reference_ratio(history, beta=6.0, per_epoch=True))
        (0.04, 1.08)
    """
    if isinstance(history, (str, os.PathLike)):
        with open(history) as f:
            history = json.load(f)
    summary = history if isinstance(history, Mapping) else {}
    logs = _history_dict(history)
    try:
        natural = np.asarray(logs["natural_loss"], dtype=np.float64)
        robust = np.asarray(logs["robust_loss"], dtype=np.float64)
    except KeyError as error:
        raise _args.invalid("history", "per-epoch 'natural_loss' and 'robust_loss' logs", sorted(logs)) from error
    if beta is None:
        beta = summary.get("beta")
    if beta is None and "lambda" in logs:
        beta = np.asarray(logs["lambda"], dtype=np.float64)
    if beta is None:
        raise _args.invalid("beta", "the narrow run's lambda (none found in the history or summary)", beta)
    beta = np.broadcast_to(np.asarray(beta, dtype=np.float64), natural.shape)
    if natural.size == 0 or natural.shape != robust.shape:
        raise _args.invalid("history", "non-empty, equally long 'natural_loss' and 'robust_loss' lists", logs)
    if last_epochs is not None:
        last_epochs = _args.positive_int(last_epochs, "last_epochs")
        natural, robust, beta = natural[-last_epochs:], robust[-last_epochs:], beta[-last_epochs:]
    if per_epoch:
        return [float(b * r / max(n, _EPS)) for b, r, n in zip(beta, robust, natural)]
    return float(np.mean(beta * robust) / max(np.mean(natural), _EPS))


def _resolve_reference(value):
    if isinstance(value, (str, os.PathLike)):
        return reference_ratio(value)
    if isinstance(value, (list, tuple, np.ndarray)):
        ratios = [_args.number(v, "reference_ratio", low=0.0, low_open=True) for v in np.ravel(value)]
        if not ratios:
            raise _args.invalid("reference_ratio", "a non-empty list", value)
        return ratios
    return _args.number(value, "reference_ratio", low=0.0, low_open=True)


@keras.saving.register_keras_serializable(package="tfnorms")
class WidthAdjustedRegularization(keras.callbacks.Callback):
    """Ratio-matching lambda schedule, after Wu et al.'s WAR (not the paper's exact Algorithm 1).

    During ``fit`` of a :class:`tfnorms.AdversarialTrainer` (objective
    ``L_nat + lambda * R``), measures the averages of ``natural_loss`` and
    ``robust_loss`` over each update period (from the trainer's metric
    trackers, so the averages are exact over the period's batches), smooths
    them with an exponential moving average and sets

        lambda <- clip(rho_0 * EMA(L_nat) / EMA(R), min_value, max_value)

    (never below the current lambda with ``enlarge_only``), so that the wide
    network's robust-to-natural ratio ``lambda * R / L_nat`` matches the
    ratio ``rho_0`` measured on the tuned narrow network. The new lambda is
    assigned to ``trainer.beta`` and takes effect from the next training step.

    Logged: ``lambda`` in the epoch logs (so ``History`` records it), and,
    with ``log_dir``, the scalars ``war/lambda``, ``war/ratio`` (the measured
    ``lambda * R / L_nat`` before the update) and ``war/proposed_lambda`` in
    ``<log_dir>/train`` (the ``keras.callbacks.TensorBoard`` layout). Steps are
    epochs with ``update_freq="epoch"`` and optimizer steps otherwise.

    Args:
        reference_ratio: ``rho_0 > 0``: a number, a per-epoch list (epoch ``e``
            uses entry ``e``, the last entry afterwards), or the path of a
            narrow run's summary JSON (read with :func:`reference_ratio`).
        update_freq: ``"epoch"`` or a positive int (every N optimizer steps).
        ema: smoothing factor in ``[0, 1)`` of the measured period averages
            (0: none). Per-epoch updates want little smoothing (default 0.5);
            per-step updates more (e.g. 0.9 - 0.99).
        enlarge_only: never decrease lambda (Wu et al. enlarge lambda on wide models).
        min_value: lower bound of lambda (>= 0).
        max_value: upper bound of lambda, or ``None``.
        warmup_epochs: epochs before the first update; their measurements do
            not enter the averages (the robust term of a freshly initialised
            network is nearly 0, which would blow lambda up).
        log_dir: TensorBoard log directory, or ``None``.

    Example:
        >>> import keras, numpy as np, tfnorms
        >>> model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(2)])
        >>> trainer = tfnorms.AdversarialTrainer(model, method="trades", beta=6.0)
        >>> trainer.compile(optimizer="sgd")
        >>> war = tfnorms.callbacks.WidthAdjustedRegularization(reference_ratio=0.2, warmup_epochs=0)
        >>> x = np.random.rand(16, 8, 8, 1).astype("float32"); y = np.arange(16) % 2
        >>> history = trainer.fit(x, y, batch_size=8, epochs=2, callbacks=[war], verbose=0)
        >>> len(history.history["lambda"]), float(trainer.beta.numpy()) >= 6.0
        (2, True)
    """

    def __init__(self, reference_ratio, update_freq="epoch", ema=0.5, enlarge_only=True, min_value=0.0,
                 max_value=None, warmup_epochs=1, log_dir=None):
        super().__init__()
        self.reference_ratio = _resolve_reference(reference_ratio)
        self.update_freq = _args.update_freq(update_freq)
        self.ema = _args.number(ema, "ema", low=0.0, high=1.0, high_open=True)
        self.enlarge_only = _args.boolean(enlarge_only, "enlarge_only")
        self.min_value = _args.number(min_value, "min_value", low=0.0)
        self.max_value = _args.number(max_value, "max_value", low=0.0, low_open=True, allow_none=True)
        if self.max_value is not None and self.max_value < self.min_value:
            raise _args.invalid("max_value", f"None or >= min_value={self.min_value}", max_value)
        self.warmup_epochs = _args.positive_int(warmup_epochs, "warmup_epochs", minimum=0)
        if log_dir is not None and not isinstance(log_dir, (str, os.PathLike)):
            raise _args.invalid("log_dir", "a path or None", log_dir)
        self.log_dir = None if log_dir is None else os.fspath(log_dir)
        self._writer = None
        self._reset_state()

    def _reset_state(self):
        self.smoothed_natural = None
        self.smoothed_robust = None
        self._epoch = 0
        self._mark = None
        self._since_update = 0
        self.records = []

    # -- measurement

    def _trackers(self):
        model = self.model
        for name in ("beta", "natural_loss_tracker", "robust_loss_tracker"):
            if not hasattr(model, name):
                raise ValueError(
                    "WidthAdjustedRegularization needs a tfnorms.AdversarialTrainer (a model with `beta`, "
                    f"`natural_loss_tracker` and `robust_loss_tracker`). Received a {type(model).__name__}."
                )
        if getattr(model, "method", None) == "pgd":
            raise ValueError("WidthAdjustedRegularization: method='pgd' has no lambda; use 'pgd_lambda' or 'trades'.")
        return model.natural_loss_tracker, model.robust_loss_tracker

    def _totals(self):
        natural, robust = self._trackers()
        variables = (natural.total, natural.count, robust.total, robust.count)
        values = [float(keras.ops.convert_to_numpy(v)) for v in variables]
        return np.array(values, dtype=np.float64)

    def _period_means(self):
        """Means of natural and robust loss since the last mark (trackers reset each epoch)."""
        now = self._totals()
        delta = now - self._mark if self._mark is not None else now
        if delta[1] <= 0 or delta[3] <= 0:  # trackers were reset: the epoch restarted the sums
            delta = now
        self._mark = now
        if delta[1] <= 0 or delta[3] <= 0:
            return None
        return delta[0] / delta[1], delta[2] / delta[3]

    def _target(self):
        if isinstance(self.reference_ratio, list):
            return self.reference_ratio[min(self._epoch, len(self.reference_ratio) - 1)]
        return self.reference_ratio

    # -- update

    def _update(self, step):
        means = self._period_means()
        if means is None:
            return None
        natural, robust = means
        current = float(keras.ops.convert_to_numpy(self.model.beta))
        if self._epoch < self.warmup_epochs:  # warm-up periods do not enter the averages
            new = current
            proposal = float("nan")
        else:
            if self.smoothed_natural is None:
                self.smoothed_natural, self.smoothed_robust = natural, robust
            else:
                a = self.ema
                self.smoothed_natural = a * self.smoothed_natural + (1.0 - a) * natural
                self.smoothed_robust = a * self.smoothed_robust + (1.0 - a) * robust
            proposal = war_lambda(self._target(), self.smoothed_natural, self.smoothed_robust, current,
                                  enlarge_only=False, min_value=self.min_value, max_value=self.max_value)
            new = max(proposal, current) if self.enlarge_only else proposal
            self.model.beta.assign(new)
        ratio = current * robust / max(natural, _EPS)
        record = dict(step=int(step), epoch=self._epoch, natural_loss=natural, robust_loss=robust,
                      ratio=ratio, proposed_lambda=proposal, old_lambda=current, new_lambda=new)
        self.records.append(record)
        self._write(record)
        return record

    def _write(self, record):
        if self.log_dir is None:
            return
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "train"))
        with self._writer.as_default(step=record["step"]):
            tf.summary.scalar("war/lambda", record["new_lambda"],
                              description="Robust-term weight after the ratio-matching update.")
            tf.summary.scalar("war/ratio", record["ratio"],
                              description="Measured lambda * R / L_nat before the update.")
            if math.isfinite(record["proposed_lambda"]):
                tf.summary.scalar("war/proposed_lambda", record["proposed_lambda"])
        self._writer.flush()

    # -- callback hooks

    def on_train_begin(self, logs=None):
        _keras.bind_before_training(self.model)  # as every tfnorms callback: the norm control of the model is exact
        self._trackers()
        self._mark = None
        self._since_update = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = int(epoch)
        self._mark = None  # the trainer resets its trackers at every epoch start

    def on_train_batch_end(self, batch, logs=None):
        if self.update_freq == "epoch":
            return
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        if step // self.update_freq > self._since_update // self.update_freq:
            self._update(step)
        self._since_update = step

    def on_epoch_end(self, epoch, logs=None):
        if self.update_freq == "epoch":
            self._update(epoch)
        if logs is not None:
            logs["lambda"] = float(keras.ops.convert_to_numpy(self.model.beta))

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def get_config(self):
        return {
            "reference_ratio": self.reference_ratio,
            "update_freq": self.update_freq,
            "ema": self.ema,
            "enlarge_only": self.enlarge_only,
            "min_value": self.min_value,
            "max_value": self.max_value,
            "warmup_epochs": self.warmup_epochs,
            "log_dir": self.log_dir,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
