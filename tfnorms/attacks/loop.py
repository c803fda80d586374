"""The one attack loop: ``start -> steps x (gradient, ascent step, projection)``.

A fixed trip count (``tf.while_loop`` with ``maximum_iterations=steps``) keeps
the graph small and compiles under ``tf.function(jit_compile=True)``. An
attack is the loop plus four components (docs/architecture.md#attack-composition): a loss
(:mod:`~tfnorms.attacks.losses`), a step (:mod:`~tfnorms.attacks.steps`), a
projection (:mod:`~tfnorms.attacks.projections`) and a start
(:mod:`~tfnorms.attacks.starts`).

Example:
    >>> import functools, numpy as np, keras
    >>> from tfnorms.attacks import loop, losses, projections, steps
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> x = np.random.rand(2, 4).astype("float32")
    >>> result = loop.run(
    ...     model, x, np.array([0, 1]), loss_fn=losses.cross_entropy,
    ...     step_fn=functools.partial(steps.sign_step, step_size=0.01),
    ...     project_fn=functools.partial(projections.project, eps=0.03, ord=np.inf),
    ...     steps=5)
    >>> result.adversarial.shape
    TensorShape([2, 4])
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import tensorflow as tf

from tfnorms import _inputs
from tfnorms.attacks import losses as losses_lib
from tfnorms.attacks.projections import per_example_norm


class AttackResult(NamedTuple):
    """What :func:`run` returns.

    Attributes:
        adversarial: ``[batch, ...]`` float32 adversarial inputs (no gradient flows through them).
        max_gradient_norm: ``[batch]`` maximum over the steps of the ``gradient_norm_ord``
            norm of the gradient of each example's loss with respect to its input
            (the local-Lipschitz log of docs/theory.md#local-lipschitz); zeros if ``steps == 0``.
    """

    adversarial: tf.Tensor
    max_gradient_norm: tf.Tensor


def logits_in_float32(model, x, training: bool) -> tf.Tensor:
    """``model(x, training=training)`` cast to float32 (the model may compute in float16 / bfloat16)."""
    return tf.cast(model(x, training=training), tf.float32)


def misclassified(logits: tf.Tensor, labels) -> tf.Tensor:
    """``[batch]`` bool: the arg-max logit is not the label, and every logit is finite.

    A row with a NaN or an infinite logit has no prediction (its arg-max would
    be 0): it never counts as misclassified, so no attack reports a success there.
    """
    one_hot = losses_lib.one_hot_labels(labels, logits.shape[-1])
    wrong = tf.not_equal(tf.argmax(logits, axis=-1), tf.argmax(one_hot, axis=-1))
    return tf.logical_and(wrong, _inputs.finite_rows(logits))


def run(
    model,
    x,
    labels,
    *,
    loss_fn: Callable,
    step_fn: Callable,
    project_fn: Callable,
    steps: int,
    start_fn: Optional[Callable] = None,
    training: bool = False,
    clean_logits=None,
    stop_at_misclassification: bool = False,
    gradient_norm_ord=1,
) -> AttackResult:
    """Runs ``steps`` iterations of projected gradient ascent on ``sum(loss_fn(model(x_adv), labels))``.

    Args:
        model: a callable ``model(x, training=...)`` returning logits.
        x: ``[batch, ...]`` clean inputs in [0, 1].
        labels: class ids (``[batch]`` / ``[batch, 1]``) or distribution rows
            (one-hot / soft, ``[batch, classes]``); checked, and passed to
            ``loss_fn`` normalised: int32 ids ``[batch]`` or float32 rows.
        loss_fn: ``loss_fn(logits, labels, clean_logits) -> [batch]`` to maximise.
        step_fn: ``step_fn(x_adv, gradient) -> x_adv`` (unprojected).
        project_fn: ``project_fn(x_adv, x) -> x_adv`` back into the threat model.
        steps: number of iterations (a Python int).
        start_fn: ``start_fn(x) -> x_start``; ``None`` starts at ``x``. The start is projected.
        training: the mode the model runs in. ``False`` (default): inference
            mode, so batch norm uses and keeps its moving statistics.
        clean_logits: logits of ``x`` for losses that need them; computed here
            (in the same mode) when the loss needs them and none are given.
        stop_at_misclassification: freeze each example at the first iterate the
            model misclassifies. With a fixed start this makes the success set
            grow monotonically with ``steps``.
        gradient_norm_ord: norm of the gradient logged in ``max_gradient_norm``
            (1, the dual of l_inf, by default).

    Returns:
        An :class:`AttackResult`.

    Raises:
        ValueError: for an empty batch, images that are not floats in [0, 1]
            or labels that are not class ids / distribution rows of the
            model's classes (checked by :func:`tfnorms._inputs.check_batch`).
    """
    x, labels = _inputs.check_batch(model, x, labels, y_name="labels")
    return iterate(
        model, x, labels, loss_fn=loss_fn, step_fn=step_fn, project_fn=project_fn, steps=steps, start_fn=start_fn,
        training=training, clean_logits=clean_logits, stop_at_misclassification=stop_at_misclassification,
        gradient_norm_ord=gradient_norm_ord,
    )


def iterate(
    model, x, labels, *, loss_fn, step_fn, project_fn, steps, start_fn=None, training=False, clean_logits=None,
    stop_at_misclassification=False, gradient_norm_ord=1,
) -> AttackResult:
    """The loop of :func:`run` on inputs and labels already checked (normalised by ``_inputs.check_batch``)."""
    x = tf.cast(x, tf.float32)
    if clean_logits is None and losses_lib.requires_clean_logits(loss_fn):
        clean_logits = logits_in_float32(model, x, training)
    if clean_logits is not None:
        clean_logits = tf.stop_gradient(tf.cast(clean_logits, tf.float32))

    x_adv = x if start_fn is None else start_fn(x)
    x_adv = tf.stop_gradient(project_fn(x_adv, x))
    batch = tf.shape(x)[0]
    max_gradient_norm = tf.zeros([batch], tf.float32)
    active = tf.ones([batch], tf.bool)

    def body(x_adv, max_gradient_norm, active):
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            logits = logits_in_float32(model, x_adv, training)
            # Sum, not mean: each example's gradient is that of its own loss (docs/theory.md#pgd-attacks).
            objective = tf.reduce_sum(loss_fn(logits, labels, clean_logits))
        gradient = tf.stop_gradient(tape.gradient(objective, x_adv))
        max_gradient_norm = tf.maximum(max_gradient_norm, per_example_norm(gradient, gradient_norm_ord))
        candidate = tf.stop_gradient(project_fn(step_fn(x_adv, gradient), x))
        if stop_at_misclassification:
            active = tf.logical_and(active, tf.logical_not(misclassified(logits, labels)))
            keep = tf.reshape(active, [-1] + [1] * (x.shape.rank - 1))
            candidate = tf.where(keep, candidate, x_adv)
        return candidate, max_gradient_norm, active

    if steps > 0:
        x_adv, max_gradient_norm, _ = tf.while_loop(
            lambda *_: tf.constant(True),
            body,
            (x_adv, max_gradient_norm, active),
            maximum_iterations=steps,
            parallel_iterations=1,
        )
    return AttackResult(tf.stop_gradient(x_adv), max_gradient_norm)
