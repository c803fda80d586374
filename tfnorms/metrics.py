"""Robustness metrics: robust accuracy, perturbation stability, local Lipschitzness.

Per-batch building blocks (:func:`correct`, :func:`unchanged`), streaming
Keras metrics (:class:`RobustAccuracy`, :class:`PerturbationStability`) and
whole-data-set functions (:func:`evaluate_robustness`, :func:`robust_accuracy`,
:func:`perturbation_stability`, :func:`local_lipschitz`), all usable outside
:class:`tfnorms.AdversarialTrainer`.

* Robust accuracy: fraction of points classified correctly at the attack's
  output ``x_adv``.
* Perturbation stability (methods.md §2.2): fraction of **all** points whose
  predicted label the attack does not change, ``1 - mean(argmax f(x_adv) != argmax f(x))``.
  ``robust_accuracy >= clean_accuracy + stability - 1``.
* Local Lipschitzness (methods.md §2.3): during a TRADES attack (KL to the
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

from typing import Dict

import keras
import numpy as np
import tensorflow as tf

from tfnorms import _inputs
from tfnorms.attacks import PGD, loop


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
class RobustAccuracy(keras.metrics.Mean):
    """Streaming accuracy of logits for class-id or one-hot labels.

    Fed with the logits of adversarial inputs it is robust accuracy; fed with
    clean logits, clean accuracy. Rows with a NaN or an Inf logit make the
    result NaN (see :func:`correct`); labels are checked (an out-of-range class
    id is an error).

    Example:
        >>> import numpy as np
        >>> metric = RobustAccuracy()
        >>> metric.update_state(np.array([0, 1]), np.array([[2.0, 0.0], [3.0, 1.0]]))
        >>> float(metric.result())
        0.5
    """

    def __init__(self, name="robust_accuracy", dtype=None):
        super().__init__(name=name, dtype=dtype)

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Adds a batch: ``y_true`` labels, ``y_pred`` logits (of the adversarial inputs)."""
        return super().update_state(correct(y_true, y_pred), sample_weight=sample_weight)


@keras.saving.register_keras_serializable(package="tfnorms")
class PerturbationStability(keras.metrics.Mean):
    """Streaming perturbation stability (methods.md §2.2): share of predictions the attack leaves unchanged.

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
            raise ValueError("Invalid value for argument `y`. Expected None when `x` is a tf.data.Dataset of (x, y).")
        return x
    if y is None:
        raise ValueError("Invalid value for argument `y`. Expected labels for the arrays in `x`. Received: y=None")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"Invalid value for argument `batch_size`. Expected an int >= 1. Received: batch_size={batch_size!r}")
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)


def evaluate_robustness(model, x, y=None, attack=None, batch_size=128, training=False) -> Dict[str, float]:
    """Clean accuracy, robust accuracy and perturbation stability under ``attack`` on a whole data set.

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
        ValueError: (eagerly, per batch, before the attack runs) for images
            that are not floats in [0, 1], labels that are not class ids /
            distribution rows of the model's classes, an empty batch or an
            empty data set (zero points have no accuracy); and, after a batch,
            for non-finite clean or adversarial logits (NaN / Inf: a model
            with NaN weights has no prediction, so no accuracy).
    """
    if attack is None:
        attack = PGD(0.031, 0.007, 20)
    clean_accuracy = RobustAccuracy(name="clean_accuracy")
    adversarial_accuracy = RobustAccuracy()
    stability = PerturbationStability()

    def batch_outputs(x_batch, y_batch):
        clean_logits = model(x_batch, training=training)
        if getattr(attack, "requires_clean_logits", False) and getattr(attack, "training", False) == training:
            x_adv = attack(model, x_batch, y_batch, clean_logits=clean_logits)
        else:
            x_adv = attack(model, x_batch, y_batch)
        return clean_logits, model(x_adv, training=training)

    # One trace per call, for any batch size (the last batch is usually smaller): a
    # concrete function with an unknown batch dimension.
    compiled = None
    for x_batch, y_batch in _batches(x, y, batch_size):
        x_batch, y_batch = _inputs.check_batch(model, x_batch, y_batch, run_model=False)
        x_batch = tf.cast(x_batch, tf.float32)
        if compiled is None:
            compiled = tf.function(batch_outputs).get_concrete_function(
                tf.TensorSpec((None,) + tuple(x_batch.shape[1:]), x_batch.dtype),
                tf.TensorSpec((None,) + tuple(y_batch.shape[1:]), y_batch.dtype),
            )
        clean_logits, adversarial_logits = compiled(x_batch, y_batch)
        _inputs.check_finite_logits(clean_logits, inputs="x")
        _inputs.check_labels(y_batch, clean_logits.shape[-1])  # a plain callable's class count is known only now
        _inputs.check_finite_logits(adversarial_logits, inputs="the attack's outputs")
        clean_accuracy.update_state(y_batch, clean_logits)
        adversarial_accuracy.update_state(y_batch, adversarial_logits)
        stability.update_state(clean_logits, adversarial_logits)
    if compiled is None:
        raise ValueError("Invalid value for argument `x`. Expected at least one point (zero points have no "
                         "accuracy). Received: an empty data set")
    return {
        "clean_accuracy": float(clean_accuracy.result()),
        "robust_accuracy": float(adversarial_accuracy.result()),
        "stability": float(stability.result()),
    }


def robust_accuracy(model, x, y=None, attack=None, batch_size=128) -> float:
    """Fraction of points still classified correctly under ``attack`` (see :func:`evaluate_robustness`)."""
    return evaluate_robustness(model, x, y, attack=attack, batch_size=batch_size)["robust_accuracy"]


def perturbation_stability(model, x, y=None, attack=None, batch_size=128) -> float:
    """Fraction of points whose prediction ``attack`` does not change (methods.md §2.2)."""
    return evaluate_robustness(model, x, y, attack=attack, batch_size=batch_size)["stability"]


_REDUCTIONS = ("mean", "sum", "none")


def local_lipschitz(
    model, x, eps=0.031, step_size=0.007, steps=10, ord=np.inf, reduction="mean", training=False, seed=None
):
    """Local-Lipschitz estimate of Wu et al. (methods.md §2.3) on one batch.

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
