"""Attack objectives: per-example float32 losses that an attack maximises.

Every loss has the signature ``loss(logits, labels, clean_logits=None)`` and
returns a ``[batch]`` float32 tensor. ``logits`` are cast to float32 first, so
the objective is computed in full precision under mixed precision. ``labels``
are integer class ids (``[batch]`` or ``[batch, 1]``) or one-hot rows
(``[batch, classes]``). A loss that needs the logits of the clean input (the
TRADES KL) says so with the attribute ``requires_clean_logits = True``.

The attack loop reduces with a **sum** over the batch, so the gradient with
respect to each input is the gradient of that example's own loss
(docs/theory.md#pgd-attacks) and stays large enough not to underflow in float16 backward passes.

Example:
    >>> import numpy as np
    >>> from tfnorms.attacks import losses
    >>> z = np.array([[2.0, 1.0, 0.5, -1.0, 0.0]], "float32")
    >>> round(float(losses.dlr(z, np.array([0]))[0]), 4)
    -0.6667
"""

from __future__ import annotations

import tensorflow as tf

_MARGIN_EPSILON = 1e-12


def one_hot_labels(labels, num_classes: int) -> tf.Tensor:
    """Float32 one-hot rows from integer labels (or one-hot rows, returned as float32).

    Args:
        labels: ``[batch]`` or ``[batch, 1]`` class ids, or ``[batch, num_classes]``
            one-hot (or probability) rows.
        num_classes: number of logits.

    Returns:
        A ``[batch, num_classes]`` float32 tensor.
    """
    labels = tf.convert_to_tensor(labels)
    rank = labels.shape.rank
    if rank is None:  # e.g. a trace relaxed to an unknown rank: ids and rows cannot be told apart
        raise ValueError(
            "Invalid value for argument `labels`. Expected a static rank (class ids [batch] or rows "
            "[batch, classes]; tfnorms._inputs.check_labels normalises them). Received: labels of unknown rank"
        )
    if rank >= 2 and num_classes > 1 and labels.shape[-1] == num_classes:
        return tf.cast(labels, tf.float32)
    class_ids = tf.cast(tf.reshape(labels, [-1]), tf.int32)
    return tf.one_hot(class_ids, num_classes, dtype=tf.float32)


def _as_float32(logits) -> tf.Tensor:
    return tf.cast(tf.convert_to_tensor(logits), tf.float32)


def _num_classes(logits: tf.Tensor, minimum: int, loss_name: str) -> int:
    num_classes = logits.shape[-1]
    if num_classes is None:
        raise ValueError(f"The `{loss_name}` loss needs a static number of classes (last logits axis).")
    if num_classes < minimum:
        raise ValueError(
            f"The `{loss_name}` loss needs at least {minimum} classes. Received logits with shape {logits.shape}."
        )
    return num_classes


def true_and_best_other_logit(logits, labels):
    """Returns ``(z_y, max_{j != y} z_j)`` per example (the "other" max masks ``y`` with -inf)."""
    logits = _as_float32(logits)
    one_hot = one_hot_labels(labels, _num_classes(logits, 2, "margin"))
    true_logit = tf.reduce_sum(one_hot * logits, axis=-1)
    other_logits = tf.where(one_hot > 0, tf.constant(-float("inf"), tf.float32), logits)
    return true_logit, tf.reduce_max(other_logits, axis=-1)


def cross_entropy(logits, labels, clean_logits=None) -> tf.Tensor:
    """Per-example softmax cross-entropy ``-log softmax(z)_y`` (PGD, MART, ALP attacks)."""
    del clean_logits
    logits = _as_float32(logits)
    one_hot = one_hot_labels(labels, _num_classes(logits, 2, "ce"))
    return -tf.reduce_sum(one_hot * tf.nn.log_softmax(logits, axis=-1), axis=-1)


def kl_divergence(logits, labels, clean_logits=None) -> tf.Tensor:
    """Per-example ``KL(softmax(clean_logits) || softmax(logits))`` (TRADES attack, docs/theory.md#trades).

    Computed from ``log_softmax`` of both arguments (no probability clipping);
    ``labels`` are not used.
    """
    del labels
    if clean_logits is None:
        raise ValueError("The `kl` attack loss needs `clean_logits` (the logits of the clean input).")
    log_q = tf.nn.log_softmax(_as_float32(logits), axis=-1)
    log_p = tf.nn.log_softmax(_as_float32(clean_logits), axis=-1)
    return tf.reduce_sum(tf.exp(log_p) * (log_p - log_q), axis=-1)


kl_divergence.requires_clean_logits = True


def cw_margin(logits, labels, clean_logits=None, confidence: float = 0.0) -> tf.Tensor:
    """Per-example CW margin objective ``-max(z_y - max_{j != y} z_j + confidence, 0)`` (docs/theory.md#pgd-attacks).

    Maximising it drives the true logit below the best other logit by
    ``confidence``; the gradient vanishes once that is reached. The best other
    logit is taken over ``j != y`` with ``y`` masked by ``-inf`` (the clean
    margin). The reference code of Wu et al. masks by multiplying with a 0/1
    mask, i.e. it uses ``max(max_{j != y} z_j, 0)``; the two differ only when
    every wrong-class logit is negative.
    """
    del clean_logits
    true_logit, other_logit = true_and_best_other_logit(logits, labels)
    return -tf.nn.relu(true_logit - other_logit + confidence)


def dlr(logits, labels, clean_logits=None) -> tf.Tensor:
    """Per-example untargeted DLR loss of AutoAttack (docs/theory.md#dlr); needs >= 3 classes.

    ``-(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3 + 1e-12)`` with ``pi`` the
    logits sorted in descending order.
    """
    del clean_logits
    logits = _as_float32(logits)
    _num_classes(logits, 3, "dlr")
    true_logit, other_logit = true_and_best_other_logit(logits, labels)
    top3 = tf.math.top_k(logits, k=3).values
    return -(true_logit - other_logit) / (top3[:, 0] - top3[:, 2] + _MARGIN_EPSILON)


def targeted_dlr(logits, labels, target_labels) -> tf.Tensor:
    """Per-example targeted DLR of AutoAttack's APGD-T (docs/theory.md#dlr); needs >= 4 classes.

    ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)``.
    """
    logits = _as_float32(logits)
    num_classes = _num_classes(logits, 4, "targeted_dlr")
    true_logit = tf.reduce_sum(one_hot_labels(labels, num_classes) * logits, axis=-1)
    target_logit = tf.reduce_sum(one_hot_labels(target_labels, num_classes) * logits, axis=-1)
    top4 = tf.math.top_k(logits, k=4).values
    return -(true_logit - target_logit) / (top4[:, 0] - 0.5 * (top4[:, 2] + top4[:, 3]) + _MARGIN_EPSILON)


LOSSES = {"ce": cross_entropy, "kl": kl_divergence, "cw": cw_margin, "dlr": dlr}


def get(identifier):
    """Returns the loss function named ``identifier`` (one of ``LOSSES``) or ``identifier`` if callable."""
    if isinstance(identifier, str) and identifier in LOSSES:
        return LOSSES[identifier]
    if callable(identifier) and not isinstance(identifier, str):
        return identifier
    raise ValueError(
        "Invalid value for argument `loss`. Expected one of "
        f"{', '.join(repr(name) for name in LOSSES)} or a callable "
        f"`loss(logits, labels, clean_logits) -> [batch]`. Received: loss={identifier!r}"
    )


def requires_clean_logits(loss_fn) -> bool:
    """Whether ``loss_fn`` reads ``clean_logits``."""
    return bool(getattr(loss_fn, "requires_clean_logits", False))
