"""Lambda schedules for wide networks, after Wu et al.'s Width Adjusted Regularization (WAR).

Wu et al. (NeurIPS 2021) tune the robust-regularization weight ``lambda`` on a
narrow network and enlarge it on wider ones: at a fixed lambda, a wider network
has a larger local Lipschitz constant and a worse perturbation stability
(their sections 4-5). The exact update rule of their Algorithm 1 was not
available to us; this module holds two rules **designed from that principle**,
neither of which is the paper's algorithm.

* :class:`RatioMatchingLambda` (docs/theory.md#ratio-matching-lambda): with the
  objective ``L_nat + lambda * R``, matches the robust-to-natural ratio
  ``rho = lambda * mean(R) / mean(L_nat)`` of the wide run to the narrow run's
  ``rho_0`` by the damped fixed-point update
  ``lambda <- rho_0 * EMA(L_nat) / EMA(R)`` (clipped, by default never below
  the current ``lambda``). :func:`war_lambda` is one update on plain numbers,
  :func:`reference_ratio` reads ``rho_0`` from a narrow run.
* :class:`StabilityMatchingLambda` (docs/theory.md#stability-matching-lambda):
  measures the wide model's perturbation stability on held-out points after
  every epoch and enlarges lambda, by a damped multiplicative step, while it
  trails the tuned narrow run's stability at the same epoch.
  :func:`stability_lambda` is one update on plain numbers,
  :func:`reference_stability` reads the narrow run's per-epoch stability.

Both are Keras callbacks that assign ``trainer.beta`` of a
:class:`tfnorms.AdversarialTrainer` during ``fit``. ``WidthAdjustedRegularization``
is the deprecated former name of :class:`RatioMatchingLambda`.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping

import keras
import numpy as np
import tensorflow as tf

from tfnorms import _args, _keras, metrics

__all__ = [
    "RatioMatchingLambda",
    "StabilityMatchingLambda",
    "WidthAdjustedRegularization",
    "reference_ratio",
    "reference_stability",
    "stability_lambda",
    "war_lambda",
]

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


def _load_history(history, key):
    """``(run summary dict or {}, per-epoch logs)`` of a History, a logs dict, a summary or a JSON path."""
    if isinstance(history, (str, os.PathLike)):
        with open(history) as f:
            history = json.load(f)
    if isinstance(history, keras.callbacks.History):
        return {}, history.history
    if isinstance(history, Mapping):
        return history, (history.get("history", history) if key not in history else history)
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
    summary, logs = _load_history(history, "natural_loss")
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


def _ratios(value):
    if isinstance(value, (str, os.PathLike)):
        return reference_ratio(value)
    return _number_list(value, "reference_ratio", low_open=True, high=None)


def _number_list(value, name, low_open, high):
    """A number, or a non-empty list of numbers, ``> 0`` / ``>= 0`` (``low_open``) and ``<= high`` (if given)."""
    expected = {"low": 0.0, "low_open": low_open, "high": high}
    if isinstance(value, (list, tuple, np.ndarray)):
        values = [_args.number(v, name, **expected) for v in np.ravel(value)]
        if not values:
            raise _args.invalid(name, "a non-empty list", value)
        return values
    return _args.number(value, name, **expected)


def _at_epoch(reference, epoch):
    """Entry ``epoch`` of a per-epoch reference (its last entry afterwards), or the one number."""
    if isinstance(reference, list):
        return reference[min(epoch, len(reference) - 1)]
    return reference


class _LambdaSchedule(keras.callbacks.Callback):
    """What both schedules share: the trainer check, lambda, the TensorBoard writer, the configuration."""

    _CONFIG = ()  # the constructor arguments that get_config returns as they are stored

    def __init__(self, log_dir):
        super().__init__()
        if log_dir is not None and not isinstance(log_dir, (str, os.PathLike)):
            raise _args.invalid("log_dir", "a path or None", log_dir)
        self.log_dir = None if log_dir is None else os.fspath(log_dir)
        self._writer = None

    def _check_trainer(self):
        model, name = self.model, type(self).__name__
        for attribute in ("beta", "natural_loss_tracker", "robust_loss_tracker"):
            if not hasattr(model, attribute):
                raise ValueError(
                    f"{name} needs a tfnorms.AdversarialTrainer (a model with `beta`, "
                    f"`natural_loss_tracker` and `robust_loss_tracker`). Received a {type(model).__name__}."
                )
        if getattr(model, "method", None) == "pgd":
            raise ValueError(f"{name}: method='pgd' has no lambda; use 'pgd_lambda' or 'trades'.")

    def _lambda(self):
        return float(keras.ops.convert_to_numpy(self.model.beta))

    def _write(self, step, scalars, descriptions=None):
        """Writes the finite ``{tag: value}`` to ``<log_dir>/train`` (the keras TensorBoard layout)."""
        if self.log_dir is None:
            return
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "train"))
        with self._writer.as_default(step=step):
            for tag, value in scalars.items():
                if value is not None and math.isfinite(value):
                    tf.summary.scalar(tag, value, description=(descriptions or {}).get(tag))
        self._writer.flush()

    def on_train_begin(self, logs=None):
        _keras.bind_before_training(self.model)  # as every tfnorms callback: the norm control of the model is exact
        self._check_trainer()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def get_config(self):
        return {name: getattr(self, name) for name in (*self._CONFIG, "log_dir")}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="tfnorms")
class RatioMatchingLambda(_LambdaSchedule):
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

    Measured on small networks, a wide network's ratio at the tuned lambda is
    often *higher* than the narrow one's, so the rule proposes a smaller lambda
    and enlarge-only keeps it; :class:`StabilityMatchingLambda` follows the
    stability gap instead (docs/reproducing.md#the-ratio-matching-rule).

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
        >>> rule = tfnorms.war.RatioMatchingLambda(reference_ratio=0.2, warmup_epochs=0)
        >>> x = np.random.rand(16, 8, 8, 1).astype("float32"); y = np.arange(16) % 2
        >>> history = trainer.fit(x, y, batch_size=8, epochs=2, callbacks=[rule], verbose=0)
        >>> len(history.history["lambda"]), float(trainer.beta.numpy()) >= 6.0
        (2, True)
    """

    _CONFIG = ("reference_ratio", "update_freq", "ema", "enlarge_only", "min_value", "max_value", "warmup_epochs")

    def __init__(self, reference_ratio, update_freq="epoch", ema=0.5, enlarge_only=True, min_value=0.0,
                 max_value=None, warmup_epochs=1, log_dir=None):
        super().__init__(log_dir)
        self.reference_ratio = _ratios(reference_ratio)
        self.update_freq = _args.update_freq(update_freq)
        self.ema = _args.number(ema, "ema", low=0.0, high=1.0, high_open=True)
        self.enlarge_only = _args.boolean(enlarge_only, "enlarge_only")
        self.min_value = _args.number(min_value, "min_value", low=0.0)
        self.max_value = _args.number(max_value, "max_value", low=0.0, low_open=True, allow_none=True)
        if self.max_value is not None and self.max_value < self.min_value:
            raise _args.invalid("max_value", f"None or >= min_value={self.min_value}", max_value)
        self.warmup_epochs = _args.positive_int(warmup_epochs, "warmup_epochs", minimum=0)
        self._reset_state()

    def _reset_state(self):
        self.smoothed_natural = None
        self.smoothed_robust = None
        self._epoch = 0
        self._mark = None
        self._since_update = 0
        self.records = []

    # -- measurement

    def _totals(self):
        natural, robust = self.model.natural_loss_tracker, self.model.robust_loss_tracker
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

    # -- update

    def _update(self, step):
        means = self._period_means()
        if means is None:
            return None
        natural, robust = means
        current = self._lambda()
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
            proposal = war_lambda(_at_epoch(self.reference_ratio, self._epoch), self.smoothed_natural,
                                  self.smoothed_robust, current, enlarge_only=False, min_value=self.min_value,
                                  max_value=self.max_value)
            new = max(proposal, current) if self.enlarge_only else proposal
            self.model.beta.assign(new)
        ratio = current * robust / max(natural, _EPS)
        record = {"step": int(step), "epoch": self._epoch, "natural_loss": natural, "robust_loss": robust,
                  "ratio": ratio, "proposed_lambda": proposal, "old_lambda": current, "new_lambda": new}
        self.records.append(record)
        self._write(record["step"], {"war/lambda": new, "war/ratio": ratio, "war/proposed_lambda": proposal},
                    {"war/lambda": "Robust-term weight after the ratio-matching update.",
                     "war/ratio": "Measured lambda * R / L_nat before the update."})
        return record

    # -- callback hooks

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
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
            logs["lambda"] = self._lambda()



@keras.saving.register_keras_serializable(package="tfnorms")
class WidthAdjustedRegularization(RatioMatchingLambda):
    """Deprecated name of :class:`RatioMatchingLambda` (same arguments and behaviour).

    Kept registered under its old name so that saved configurations still
    load; constructing it warns with a ``DeprecationWarning``.
    """

    def __init__(self, *args, **kwargs):
        warnings.warn(
            "tfnorms.war.WidthAdjustedRegularization is deprecated: it is a ratio-matching rule, not Wu et al.'s "
            "WAR. Use tfnorms.war.RatioMatchingLambda (same arguments and behaviour).",
            DeprecationWarning, stacklevel=2)
        super().__init__(*args, **kwargs)


# ------------------------------------------------------------------ stability matching


def stability_lambda(current_lambda, stability, target_stability, *, floor, ceiling, gain=5.0, max_step=1.5,
                     tolerance=0.0):
    """One update of the stability-matching rule (docs/theory.md#stability-matching-lambda).

    A Newton-like step on ``log(lambda)`` towards the lambda at which the wide
    model's stability equals the reference's, damped and bounded:

        gap    = max(target_stability - stability - tolerance, 0)
        lambda <- clip(lambda * min(exp(gain * gap), max_step), floor, ceiling)

    Args:
        current_lambda: lambda in use (> 0).
        stability: measured stability of the wide model, in [0, 1].
        target_stability: the tuned narrow run's stability at the same epoch, in [0, 1].
        floor: lowest lambda (the tuned lambda).
        ceiling: highest lambda (>= floor).
        gain: ``1 / (d stability / d log lambda)``, the assumed slope's inverse (> 0).
        max_step: largest factor per update (> 1).
        tolerance: gaps up to this are noise and leave lambda alone (>= 0).

    Returns:
        The new lambda, a Python float.

    Example:
        >>> round(stability_lambda(6.0, 0.80, 0.85, floor=6.0, ceiling=24.0, gain=5.0), 4)
        7.7042
        >>> stability_lambda(6.0, 0.50, 0.85, floor=6.0, ceiling=24.0, max_step=1.5)
        9.0
        >>> stability_lambda(6.0, 0.90, 0.85, floor=6.0, ceiling=24.0)
        6.0
    """
    gap = max(target_stability - stability - tolerance, 0.0)
    factor = math.exp(min(gain * gap, math.log(max_step)))  # the cap first: exp cannot overflow
    return float(min(max(current_lambda * factor, floor), ceiling))


def reference_stability(history):
    """The narrow run's per-epoch held-out stability, logged by :class:`StabilityMatchingLambda`.

    Args:
        history: the narrow run's ``keras.callbacks.History``, its ``history``
            dict, a run summary dict with such a dict under ``"history"``, or the
            path of a JSON file with one of these; it needs the per-epoch
            ``"heldout_stability"`` log.

    Returns:
        A list of floats in [0, 1], one per epoch.

    Example:
        >>> reference_stability({"history": {"heldout_stability": [0.7, 0.8]}})
        [0.7, 0.8]
    """
    _, logs = _load_history(history, "heldout_stability")
    if not logs.get("heldout_stability"):
        raise _args.invalid("history", "a non-empty per-epoch 'heldout_stability' log (a StabilityMatchingLambda "
                            "run's history)", sorted(logs))
    return [_args.number(v, "heldout_stability", low=0.0, high=1.0) for v in logs["heldout_stability"]]


def _stabilities(value):
    if value is None:
        return None
    if isinstance(value, (str, os.PathLike, Mapping, keras.callbacks.History)):
        return reference_stability(value)
    return _number_list(value, "reference_stability", low_open=False, high=1.0)


@keras.saving.register_keras_serializable(package="tfnorms")
class StabilityMatchingLambda(_LambdaSchedule):
    """Enlarges lambda while the wide model's perturbation stability trails the tuned narrow run's.

    Wu et al. (sections 4-5) trace the loss of robustness of wide networks at a
    fixed lambda to a larger local Lipschitz constant and a worse perturbation
    stability. This schedule measures that quantity directly: after every epoch
    of ``fit`` of a :class:`tfnorms.AdversarialTrainer` it evaluates the
    classifier's perturbation stability (the share of the held-out points
    ``x`` whose prediction ``attack`` does not change, through
    :func:`tfnorms.metrics.evaluate`) and compares it with the narrow reference
    run's stability at the same epoch. While the wide model trails, lambda grows
    by the damped multiplicative step of :func:`stability_lambda`; it never
    falls below the lambda the run started with (the tuned lambda) nor rises
    above ``max_factor`` times it. The new lambda takes effect from the next
    epoch. This is a rule designed from the paper's mechanism, not its
    Algorithm 1 (docs/theory.md#stability-matching-lambda).

    Without ``reference_stability`` the callback only measures: run it so on
    the tuned narrow network, and pass that run's history (or its summary JSON)
    as the wide run's ``reference_stability``.

    Logged: ``lambda`` and ``heldout_stability`` in the epoch logs (so
    ``History`` records them); ``records`` (one dict per epoch); with
    ``log_dir``, the scalars ``war/lambda``, ``war/stability`` and
    ``war/reference_stability`` per epoch in ``<log_dir>/train``.

    Args:
        x: held-out images (an array of floats in [0, 1], not trained on).
        y: their labels (class ids).
        attack: a cheap attack, e.g. ``tfnorms.attacks.PGD(eps, eps / 4, 5)``.
        reference_stability: ``None`` (measure only), a number in [0, 1], a
            per-epoch list (epoch ``e`` uses entry ``e``, the last one
            afterwards), a reference run's history or the path of its
            summary JSON (read with :func:`reference_stability`).
        gain: the inverse of the assumed slope ``d stability / d log lambda`` (> 0).
        max_step: largest factor of lambda per epoch (> 1).
        max_factor: upper bound of lambda as a multiple of the tuned lambda (>= 1).
        tolerance: stability gaps up to this leave lambda alone (>= 0; e.g. the
            sampling standard deviation ``sqrt(s (1 - s) / len(x))``).
        warmup_epochs: epochs measured before the first update (>= 0).
        batch_size: batch size of the evaluation.
        log_dir: TensorBoard log directory, or ``None``.

    Example:
        >>> import keras, numpy as np, tfnorms
        >>> x = np.random.rand(24, 6, 6, 1).astype("float32"); y = np.arange(24) % 3
        >>> rule = tfnorms.war.StabilityMatchingLambda(x[16:], y[16:], tfnorms.attacks.PGD(0.1, 0.05, 2),
        ...                                             reference_stability=1.0)
        >>> trainer = tfnorms.AdversarialTrainer(keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Flatten(),
        ...                                                        keras.layers.Dense(3)]), beta=2.0)
        >>> trainer.compile(optimizer="sgd")
        >>> history = trainer.fit(x[:16], y[:16], batch_size=8, epochs=2, callbacks=[rule], verbose=0)
        >>> sorted(k for k in history.history if k in ("lambda", "heldout_stability"))
        ['heldout_stability', 'lambda']
    """

    _CONFIG = ("reference_stability", "gain", "max_step", "max_factor", "tolerance", "warmup_epochs", "batch_size")

    def __init__(self, x, y, attack, reference_stability=None, gain=5.0, max_step=1.5, max_factor=4.0,
                 tolerance=0.0, warmup_epochs=0, batch_size=256, log_dir=None):
        super().__init__(log_dir)
        self.x = np.asarray(x, dtype=np.float32)
        self.y = np.asarray(y)
        if self.x.ndim < 2 or len(self.x) == 0:
            raise _args.invalid("x", "a non-empty batch of held-out images", getattr(x, "shape", x))
        if self.y.shape[:1] != self.x.shape[:1] or not np.issubdtype(self.y.dtype, np.integer):
            raise _args.invalid("y", f"{len(self.x)} integer class ids (one per held-out image)", self.y.shape)
        if isinstance(attack, Mapping):
            attack = keras.saving.deserialize_keras_object(attack)
        if not callable(attack):
            raise _args.invalid("attack", "an attack, e.g. tfnorms.attacks.PGD(eps, eps / 4, 5)", attack)
        self.attack = attack
        self.reference_stability = _stabilities(reference_stability)
        self.gain = _args.positive(gain, "gain")
        self.max_step = _args.number(max_step, "max_step", low=1.0, low_open=True)
        self.max_factor = _args.number(max_factor, "max_factor", low=1.0)
        self.tolerance = _args.nonnegative(tolerance, "tolerance")
        self.warmup_epochs = _args.positive_int(warmup_epochs, "warmup_epochs", minimum=0)
        self.batch_size = _args.positive_int(batch_size, "batch_size")
        self.tuned_lambda = None
        self.records = []

    def measure(self):
        """The classifier's stability on the held-out points under ``attack`` (a float in [0, 1])."""
        report = metrics.evaluate(self.model.model, self.x, self.y, {"heldout": self.attack},
                                  batch_size=self.batch_size)
        return report.stability

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.tuned_lambda = self._lambda()
        self.records = []

    def on_epoch_end(self, epoch, logs=None):
        stability, current = self.measure(), self._lambda()
        target = None if self.reference_stability is None else _at_epoch(self.reference_stability, epoch)
        new = current
        if target is not None and epoch >= self.warmup_epochs:
            new = stability_lambda(current, stability, target, floor=self.tuned_lambda,
                                   ceiling=self.max_factor * self.tuned_lambda, gain=self.gain,
                                   max_step=self.max_step, tolerance=self.tolerance)
            self.model.beta.assign(new)
        record = {"epoch": int(epoch), "stability": stability, "reference_stability": target,
                  "old_lambda": current, "new_lambda": new}
        self.records.append(record)
        self._write(int(epoch), {"war/lambda": new, "war/stability": stability, "war/reference_stability": target},
                    {"war/lambda": "Robust-term weight after the stability-matching update.",
                     "war/stability": "Held-out perturbation stability after the epoch."})
        if logs is not None:
            logs["lambda"] = new
            logs["heldout_stability"] = stability

    def get_config(self):
        config = super().get_config()
        config.update(x=self.x.tolist(), y=self.y.tolist(), attack=keras.saving.serialize_keras_object(self.attack))
        return config
