"""Robustness metrics: robust accuracy, perturbation stability, local Lipschitzness.

Per-batch building blocks (:func:`correct`, :func:`unchanged`), streaming
Keras metrics (:class:`RobustAccuracy`, :class:`PerturbationStability`) and
whole-data-set functions (:func:`evaluate_robustness`, :func:`robust_accuracy`,
:func:`perturbation_stability`, :func:`local_lipschitz`), all usable outside
:class:`tfnorms.AdversarialTrainer`.

* Robust accuracy: fraction of points classified correctly at the attack's
  output ``x_adv``.
* Perturbation stability (docs/theory.md#perturbation-stability): fraction of **all** points whose
  predicted label the attack does not change, ``1 - mean(argmax f(x_adv) != argmax f(x))``.
  ``robust_accuracy >= clean_accuracy + stability - 1``.
* Local Lipschitzness (docs/theory.md#local-lipschitz): during a TRADES attack (KL to the
  clean softmax, ``0.001 * N`` start), the largest l1 norm (dual of l_inf) of
  the input gradient of each example's KL over the attack steps.

Example:
    >>> import numpy as np, keras, tfnorms
    >>> model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(2)])
    >>> x = np.random.rand(32, 8, 8, 1).astype("float32"); y = np.arange(32) % 2
    >>> attack = tfnorms.attacks.PGD(eps=0.031, step_size=0.007, steps=5)
    >>> result = tfnorms.metrics.evaluate_robustness(model, x, y, attack, batch_size=16)
    >>> sorted(result)
    ['clean_accuracy', 'robust_accuracy', 'stability']
"""

from __future__ import annotations

import dataclasses
import json
from typing import Dict, Mapping

import keras
import numpy as np
import tensorflow as tf

from tfnorms import _args, _inputs
from tfnorms.attacks import PGD, Attack, loop


def _nan_where_not_finite(values, *logits):
    """``values`` with NaN in the rows where any of ``logits`` has a NaN or an Inf (no prediction there)."""
    finite = tf.reduce_all(tf.stack([_inputs.finite_rows(z) for z in logits]), axis=0)
    return tf.where(finite, values, tf.constant(float("nan"), values.dtype))


def correct(labels, logits) -> tf.Tensor:
    """``[batch]`` float32: 1 where ``argmax(logits)`` is the label, 0 where it is not, NaN without a prediction.

    ``labels`` are class ids or distribution rows (checked by
    ``tfnorms._inputs.check_labels``: an out-of-range id is an error, not class 0).
    A row whose logits are not all finite (a model with NaN weights) has no
    prediction: it is NaN, neither correct nor wrong, so a mean over it is
    NaN rather than a plausible accuracy.
    """
    logits = tf.cast(tf.convert_to_tensor(logits), tf.float32)
    labels = _inputs.check_labels(labels, logits.shape[-1], name="labels")
    return _nan_where_not_finite(1.0 - tf.cast(loop.misclassified(logits, labels), tf.float32), logits)


def unchanged(clean_logits, adversarial_logits) -> tf.Tensor:
    """``[batch]`` float32, 1 where the predicted class is the same for both logits (NaN where either is not finite)."""
    clean = tf.argmax(tf.cast(clean_logits, tf.float32), axis=-1)
    adversarial = tf.argmax(tf.cast(adversarial_logits, tf.float32), axis=-1)
    return _nan_where_not_finite(tf.cast(tf.equal(clean, adversarial), tf.float32), clean_logits, adversarial_logits)


@keras.saving.register_keras_serializable(package="tfnorms")
class LogitAccuracy(keras.metrics.Mean):
    """Streaming accuracy of logits for class-id or distribution-row labels.

    Unlike Keras' ``SparseCategoricalAccuracy`` / ``CategoricalAccuracy`` (one
    label kind each), it takes both, checks them (an out-of-range class id is
    an error), and never counts a row with a NaN or an Inf logit as correct:
    such rows make the result NaN (see :func:`correct`). The trainer uses it for
    clean accuracy; :class:`RobustAccuracy` is the same on adversarial logits.

    Example:
        >>> import numpy as np
        >>> metric = LogitAccuracy(name="clean_accuracy")
        >>> metric.update_state(np.array([0, 1]), np.array([[2.0, 0.0], [3.0, 1.0]]))
        >>> float(metric.result())
        0.5
    """

    def __init__(self, name="accuracy", dtype=None):
        super().__init__(name=name, dtype=dtype)

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Adds a batch: ``y_true`` labels, ``y_pred`` logits."""
        return super().update_state(correct(y_true, y_pred), sample_weight=sample_weight)


@keras.saving.register_keras_serializable(package="tfnorms")
class RobustAccuracy(LogitAccuracy):
    """:class:`LogitAccuracy` fed with the logits of adversarial inputs (named ``robust_accuracy``).

    Example:
        >>> import numpy as np
        >>> metric = RobustAccuracy()
        >>> metric.update_state(np.array([0, 1]), np.array([[2.0, 0.0], [3.0, 1.0]]))
        >>> float(metric.result())
        0.5
    """

    def __init__(self, name="robust_accuracy", dtype=None):
        super().__init__(name=name, dtype=dtype)


@keras.saving.register_keras_serializable(package="tfnorms")
class PerturbationStability(keras.metrics.Mean):
    """Streaming perturbation stability (docs/theory.md#perturbation-stability): share of predictions the attack leaves unchanged.

    Example:
        >>> import numpy as np
        >>> metric = PerturbationStability()
        >>> metric.update_state(np.array([[2.0, 0.0], [0.0, 1.0]]), np.array([[1.0, 0.0], [1.0, 0.0]]))
        >>> float(metric.result())
        0.5
    """

    def __init__(self, name="stability", dtype=None):
        super().__init__(name=name, dtype=dtype)

    def update_state(self, clean_logits, adversarial_logits, sample_weight=None):
        """Adds a batch of clean and adversarial logits of the same inputs."""
        return super().update_state(unchanged(clean_logits, adversarial_logits), sample_weight=sample_weight)


def _batches(x, y, batch_size):
    if isinstance(x, tf.data.Dataset):
        if y is not None:
            raise _args.invalid("y", "None when `x` is a tf.data.Dataset of (x, y)", y)
        return x
    if y is None:
        raise _args.invalid("y", "labels for the arrays in `x`", y)
    _args.positive_int(batch_size, "batch_size")
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)


def attack_outputs(attack, model, x, y, clean_logits, training=False):
    """``attack(model, x, y)``, handing over ``clean_logits`` when the attack accepts them.

    A :class:`tfnorms.attacks.Attack` says whether clean logits computed in
    mode ``training`` are the ones it would compute itself
    (:meth:`~tfnorms.attacks.Attack.accepts_clean_logits`); any other callable
    ``attack(model, x, y)`` computes its own.
    """
    if isinstance(attack, Attack) and clean_logits is not None and attack.accepts_clean_logits(training):
        return attack(model, x, y, clean_logits=clean_logits)
    return attack(model, x, y)


def _named_attacks(attacks):
    """``{name: attack}`` from ``None`` (PGD-20), one attack, a list or a mapping."""
    expected = "None, an attack, a list of attacks or a dict {name: attack}"
    if attacks is None:
        return {"pgd20": PGD(0.031, 0.007, 20)}
    if callable(attacks):
        attacks = [attacks]
    if isinstance(attacks, (list, tuple)):
        named = {}
        for attack in attacks:
            name = type(attack).__name__.lower()
            named[name if name not in named else f"{name}_{len(named)}"] = attack
        attacks = named
    if not isinstance(attacks, Mapping) or not attacks or not all(callable(a) for a in attacks.values()):
        raise _args.invalid("attacks", expected, attacks)
    return dict(attacks)


@dataclasses.dataclass(frozen=True)
class RobustnessReport:
    """What :func:`evaluate` measured: accuracies over ``n_points``, worst case over the attacks.

    Attributes:
        n_points: points evaluated.
        clean_accuracy: accuracy on the clean inputs.
        robust_accuracy: share of points that every attack leaves correctly classified.
        stability: share of points whose prediction no attack changes.
        per_attack: ``{name: {"robust_accuracy", "stability"}}`` for each attack alone.
        attacks: ``{name: attack config}``.
    """

    n_points: int
    clean_accuracy: float
    robust_accuracy: float
    stability: float
    per_attack: Dict[str, Dict[str, float]]
    attacks: Dict[str, dict]

    def summary(self) -> Dict[str, float]:
        """``{"clean_accuracy", "robust_accuracy", "stability"}`` (worst case over the attacks)."""
        return {"clean_accuracy": self.clean_accuracy, "robust_accuracy": self.robust_accuracy,
                "stability": self.stability}

    def flat(self) -> Dict[str, float]:
        """:meth:`summary` plus ``<name>_robust_accuracy`` / ``<name>_stability`` and ``examples`` (one table row)."""
        row = self.summary()
        for name, scores in self.per_attack.items():
            row.update({f"{name}_{key}": value for key, value in scores.items()})
        row["examples"] = self.n_points
        return row

    def to_json(self) -> dict:
        """A JSON-safe dict (attack configs through ``json``-compatible values)."""
        return json.loads(json.dumps(dataclasses.asdict(self), default=_json_default))


def _json_default(value):
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    return repr(value)


class _Tally:
    """Per-attack and worst-case counts over batches."""

    def __init__(self, names):
        self.names = list(names)
        self.count = 0
        self.sums = dict.fromkeys(["clean", "robust", "stable"] + [f"{n}/{k}" for n in names for k in "cu"], 0.0)

    def add(self, labels, clean, adversarial):
        correct_clean = correct(labels, clean).numpy()
        robust = np.ones_like(correct_clean)
        stable = np.ones_like(correct_clean)
        for name in self.names:
            c, u = correct(labels, adversarial[name]).numpy(), unchanged(clean, adversarial[name]).numpy()
            robust, stable = robust * c, stable * u
            self.sums[f"{name}/c"] += c.sum()
            self.sums[f"{name}/u"] += u.sum()
        self.sums["clean"] += correct_clean.sum()
        self.sums["robust"] += robust.sum()
        self.sums["stable"] += stable.sum()
        self.count += len(correct_clean)

    def report(self, configs):
        mean = {key: float(value / self.count) for key, value in self.sums.items()}
        per_attack = {n: {"robust_accuracy": mean[f"{n}/c"], "stability": mean[f"{n}/u"]} for n in self.names}
        return RobustnessReport(self.count, mean["clean"], mean["robust"], mean["stable"], per_attack, configs)


def _batch_function(model, attack, training, x, y):
    """A concrete function ``(x, y) -> (clean logits, adversarial logits)``, one trace for every batch size."""

    def outputs(x_batch, y_batch):
        clean_logits = model(x_batch, training=training)
        x_adv = attack_outputs(attack, model, x_batch, y_batch, clean_logits, training)
        return clean_logits, model(x_adv, training=training)

    return tf.function(outputs).get_concrete_function(
        tf.TensorSpec((None,) + tuple(x.shape[1:]), x.dtype), tf.TensorSpec((None,) + tuple(y.shape[1:]), y.dtype)
    )


def _points(x, max_examples):
    """How many points :func:`evaluate` will read (``None`` if a data set's length is unknown)."""
    total = None if isinstance(x, tf.data.Dataset) else len(x)
    return max_examples if total is None else min(total, max_examples or total)


def _first(x_batch, y_batch, limit):
    return (x_batch, y_batch) if limit is None else (x_batch[:limit], y_batch[:limit])


def evaluate(model, x, y=None, attacks=None, *, batch_size=128, training=False, max_examples=None,
             verbose=0) -> RobustnessReport:
    """The one robustness evaluation: clean accuracy, and robust accuracy and stability per attack and worst case.

    A point is robust only if every attack leaves it correctly classified, and
    stable only if no attack changes its prediction
    (docs/theory.md#perturbation-stability). Each attack runs with the model in
    the same mode as the evaluation forward passes, inside one compiled
    function per attack traced once for every batch size.

    Args:
        model: a callable returning logits for images in [0, 1].
        x: images (array) or a ``tf.data.Dataset`` of batched ``(x, y)``.
        y: labels for array inputs (class ids or distribution rows).
        attacks: ``None`` (PGD-20: l_inf, eps 0.031, step 0.007, uniform
            start), one attack, a list, or a dict ``{name: attack}``.
        batch_size: batch size for array inputs.
        training: mode of the evaluation forward passes.
        max_examples: evaluate only the first ``max_examples`` points.
        verbose: 1 shows a progress bar over the points (with the running
            worst-case robust accuracy), 0 is silent.

    Returns:
        A :class:`RobustnessReport`.

    Raises:
        ValueError: for images that are not floats in [0, 1], labels that are
            not class ids / distribution rows of the model's classes, an
            empty data set (zero points have no accuracy), or non-finite
            clean or adversarial logits (a model with NaN weights has no
            prediction, so no accuracy).

    Example:
        >>> import numpy as np, keras, tfnorms
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        >>> x, y = np.random.rand(8, 4).astype("float32"), np.arange(8) % 3
        >>> report = evaluate(model, x, y, {"pgd": tfnorms.attacks.PGD(0.1, 0.05, 2),
        ...                                 "cw": tfnorms.attacks.CW(0.1, 0.05, 2)})
        >>> report.robust_accuracy <= min(s["robust_accuracy"] for s in report.per_attack.values())
        True
    """
    named = _named_attacks(attacks)
    max_examples = _args.positive_int(max_examples, "max_examples", allow_none=True)
    _args.choice(verbose, "verbose", (0, 1))
    tally, functions = _Tally(named), {}
    progress = keras.utils.Progbar(_points(x, max_examples), unit_name="point") if verbose else None
    for x_batch, y_batch in _batches(x, y, batch_size):
        if max_examples is not None and tally.count >= max_examples:
            break
        x_batch, y_batch = _first(x_batch, y_batch, None if max_examples is None else max_examples - tally.count)
        x_batch, y_batch = _inputs.check_batch(model, x_batch, y_batch, run_model=False)
        x_batch = tf.cast(x_batch, tf.float32)
        adversarial = {}
        for name, attack in named.items():
            if name not in functions:
                functions[name] = _batch_function(model, attack, training, x_batch, y_batch)
            clean, adversarial[name] = functions[name](x_batch, y_batch)
            _inputs.check_finite_logits(clean, inputs="x")
            _inputs.check_labels(y_batch, clean.shape[-1])  # a plain callable's class count is known only now
            _inputs.check_finite_logits(adversarial[name], inputs=f"the outputs of attack {name!r}")
        tally.add(y_batch, clean, adversarial)
        if progress is not None:
            progress.add(len(y_batch), values=[("robust_accuracy", tally.sums["robust"] / tally.count)])
    if tally.count == 0:
        raise _args.invalid("x", "at least one point (zero points have no accuracy)", "an empty data set")
    return tally.report({name: attack.get_config() for name, attack in named.items()})


def evaluate_robustness(model, x, y=None, attack=None, batch_size=128, training=False) -> Dict[str, float]:
    """:func:`evaluate` with one attack, as ``{"clean_accuracy", "robust_accuracy", "stability"}``.

    Args:
        model: a callable returning logits for inputs in [0, 1].
        x: inputs (array) or a ``tf.data.Dataset`` of batched ``(x, y)``.
        y: labels for array inputs (class ids or one-hot rows).
        attack: a ``tfnorms.attacks`` attack; default PGD-20 (l_inf, eps 0.031,
            step 0.007, uniform start), as in the trainer's evaluation.
        batch_size: batch size for array inputs.
        training: mode of the evaluation forward passes (the attack has its own switch).

    Returns:
        ``{"clean_accuracy", "robust_accuracy", "stability"}`` as Python floats.

    Raises:
        ValueError: as :func:`evaluate`.
    """
    attacks = None if attack is None else {"attack": attack}
    return evaluate(model, x, y, attacks, batch_size=batch_size, training=training).summary()


def robust_accuracy(model, x, y=None, attack=None, batch_size=128) -> float:
    """Fraction of points still classified correctly under ``attack`` (see :func:`evaluate_robustness`)."""
    return evaluate_robustness(model, x, y, attack=attack, batch_size=batch_size)["robust_accuracy"]


def perturbation_stability(model, x, y=None, attack=None, batch_size=128) -> float:
    """Fraction of points whose prediction ``attack`` does not change (docs/theory.md#perturbation-stability)."""
    return evaluate_robustness(model, x, y, attack=attack, batch_size=batch_size)["stability"]


_REDUCTIONS = ("mean", "sum", "none")


def local_lipschitz(
    model, x, eps=0.031, step_size=0.007, steps=10, ord=np.inf, reduction="mean", training=False, seed=None
):
    """Local-Lipschitz estimate of Wu et al. (docs/theory.md#local-lipschitz) on one batch.

    Runs the TRADES attack (KL to the clean softmax, ``0.001 * N`` start) and
    returns, per example, ``max_t ||grad_x KL(softmax f(x) || softmax f(x_t))||_*``
    over the ``steps`` iterates (``||.||_*`` is l1 for ``ord=numpy.inf``, l2 for
    ``ord=2``).

    Args:
        model: a callable returning logits.
        x: ``[batch, ...]`` inputs in [0, 1].
        eps: attack radius (reference: 0.031).
        step_size: attack step (reference: 0.007).
        steps: attack steps (reference: 10).
        ord: ``numpy.inf`` (reference) or ``2``.
        reduction: ``"mean"`` over the batch (default, independent of the batch
            size), ``"sum"`` (the quantity Wu et al. log per batch) or ``"none"``.
        training: model mode during the attack (reference: ``False``).
        seed: optional int for a reproducible start.

    Returns:
        A float32 scalar (``"mean"``, ``"sum"``) or a ``[batch]`` tensor (``"none"``).

    Example:
        >>> import numpy as np, keras
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        >>> float(local_lipschitz(model, np.random.rand(8, 4).astype("float32"), steps=2)) >= 0
        True
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(
            f"Invalid value for argument `reduction`. Expected one of 'mean', 'sum', 'none'. "
            f"Received: reduction={reduction!r}"
        )
    attack = PGD(eps, step_size, steps, ord=ord, loss="kl", random_start="normal", training=training, seed=seed)
    labels = tf.zeros([tf.shape(x)[0]], tf.int32)  # the KL objective does not read labels
    per_example = attack.run(model, x, labels).max_gradient_norm
    if reduction == "mean":
        return tf.reduce_mean(per_example)
    if reduction == "sum":
        return tf.reduce_sum(per_example)
    return per_example
