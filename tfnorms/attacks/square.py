"""Square attack (l_inf), the score-based black-box attack of AutoAttack (docs/theory.md#square).

Random search on the margin ``z_y - max_{k != y} z_k``: it uses the model's
outputs only, never its gradients, so it still works where gradients are
masked. In AutoAttack it runs last; when it breaks points that the white-box
attacks could not, the gradients are suspect (the sanity check of
:class:`tfnorms.attacks.AutoAttack`).

Example:
    >>> from tfnorms.attacks import square_fraction
    >>> [square_fraction(i, 0.8) for i in (0, 10, 11, 51, 8001)]
    [0.8, 0.8, 0.4, 0.2, 0.0015625]
"""

from __future__ import annotations

from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

from tfnorms import _args
from tfnorms.attacks import _common, base, losses, projections

_HALVING_AFTER = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_fraction(iteration, p_init=0.8):
    """Fraction ``p_i`` of the image area changed at 0-based query ``iteration`` (docs/theory.md#square).

    ``p_init`` halved after iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000
    and 8000 (AutoAttack does not rescale the schedule to the query budget).
    Works on Python numbers and on scalar tensors.
    """
    if isinstance(iteration, (int, np.integer)):
        return p_init / 2 ** sum(iteration > threshold for threshold in _HALVING_AFTER)
    halvings = tf.reduce_sum(tf.cast(iteration > tf.constant(_HALVING_AFTER), tf.float32))
    return p_init / tf.pow(2.0, halvings)


class SquareResult(NamedTuple):
    """What :meth:`Square.run` returns.

    Attributes:
        adversarial: ``[batch, ...]`` best point found (lowest margin).
        success: ``[batch]`` bool, margin ``<= 0`` at ``adversarial``.
        queries: ``[batch]`` int32 model queries spent on each point (the start counts as one,
            so at most ``n_queries + 1``, as in the reference).
    """

    adversarial: tf.Tensor
    success: tf.Tensor
    queries: tf.Tensor


def _margin(model, x, labels):
    true_logit, other_logit = losses.true_and_best_other_logit(_common.logits(model, x), labels)
    return true_logit - other_logit


@keras.saving.register_keras_serializable(package="tfnorms")
class Square(base.RestartAttack):
    """Square attack, l_inf: random search with square-shaped updates (score-based, no gradients).

    Start at ``x + eps * s`` with a random sign ``s`` per example, channel and
    column (vertical stripes), clipped to [0, 1]. At query ``i`` draw a square
    of side ``round(sqrt(p_i H W))`` (:func:`square_fraction`) at a random
    position and a random sign per channel (shared by the batch, as in
    AutoAttack), add ``2 eps * sign`` inside the square to each point's best
    point, project to the eps-ball and [0, 1], and keep it for the points
    whose margin decreases or becomes ``<= 0``. Points with margin ``<= 0``
    stop; the loop stops when all have.

    Args:
        eps: l_inf radius (the only positional argument).
        n_queries: query budget per point (5000 in AutoAttack).
        p_init: initial fraction of the image changed per query (0.8).
        n_restarts: runs on the points still robust (1 in AutoAttack).
        seed: ``None`` or an int.

    Inputs are NHWC images (``[batch, H, W, C]``) with static ``H, W, C``.

    Example:
        >>> Square(8 / 255, n_queries=1000).get_config()["n_queries"]
        1000
    """

    name = "square"

    def __init__(self, eps, *, n_queries=5000, p_init=0.8, n_restarts=1, seed=None):
        super().__init__(eps, n_restarts=n_restarts, seed=seed)
        self.n_queries = _args.positive_int(n_queries, "n_queries")
        self.p_init = _args.number(p_init, "p_init", low=0.0, high=1.0, low_open=True)

    def _single_run(self, model, x, labels, *, seed):
        if x.shape.rank != 4 or None in x.shape[1:]:
            raise ValueError(f"Square expects NHWC images with a static shape [batch, H, W, C]. Received: {x.shape}")
        height, width, channels = x.shape[1:]
        batch = tf.shape(x)[0]
        eps = self.eps
        stripes = tf.random.stateless_uniform([batch, 1, width, channels], seed) < 0.5
        x_best = tf.clip_by_value(x + eps * tf.where(stripes, 1.0, -1.0), 0.0, 1.0)
        margin = _margin(model, x_best, labels)
        queries = tf.ones([batch], tf.int32)
        rows, columns = tf.range(height), tf.range(width)

        def body(*state):
            return _common.keep_shapes(step(*state), state)

        def step(i, x_best, margin, queries):
            p = square_fraction(i, self.p_init)
            side = tf.cast(tf.round(tf.sqrt(p * float(height * width))), tf.int32)
            side = tf.clip_by_value(side, 1, min(height, width))
            step_seed = tf.random.experimental.stateless_fold_in(seed, i)
            corner = tf.random.stateless_uniform(
                [2], step_seed, minval=0, maxval=tf.int32.max, dtype=tf.int32
            ) % tf.stack([height - side + 1, width - side + 1])
            signs = tf.where(tf.random.stateless_uniform([channels], step_seed + 1) < 0.5, 1.0, -1.0)
            in_rows = tf.logical_and(rows >= corner[0], rows < corner[0] + side)
            in_columns = tf.logical_and(columns >= corner[1], columns < corner[1] + side)
            window = tf.cast(tf.logical_and(in_rows[:, None], in_columns[None, :]), tf.float32)
            delta = 2.0 * eps * window[:, :, None] * signs  # [H, W, C], shared by the batch
            candidate = projections.project(x_best + delta, x, eps, np.inf)
            new_margin = _margin(model, candidate, labels)
            active = margin > 0.0
            accept = tf.logical_and(active, tf.logical_or(new_margin < margin, new_margin <= 0.0))
            x_best = tf.where(_common.broadcast(accept, x), candidate, x_best)
            margin = tf.where(accept, new_margin, margin)
            return i + 1, x_best, margin, queries + tf.cast(active, tf.int32)

        _, x_best, margin, queries = tf.while_loop(
            lambda i, x_best, margin, queries: tf.logical_and(i < self.n_queries, tf.reduce_any(margin > 0.0)),
            body,
            (tf.constant(0), x_best, margin, queries),
            parallel_iterations=1,
        )
        return x_best, margin, queries

    def _initial_state(self, x, clean_logits, labels):
        true_logit, other_logit = losses.true_and_best_other_logit(clean_logits, labels)
        return dict(adversarial=x, margin=true_logit - other_logit, queries=tf.zeros(tf.shape(labels), tf.int32))

    def _still_robust(self, state):
        return state["margin"] > 0.0

    def _updates(self, model, rows, run):
        found, found_margin, used = self._compiled(model, run.x, run.labels, seed=run.seed)
        active = rows["margin"] > 0.0
        better = tf.logical_and(active, found_margin < rows["margin"])
        return dict(
            adversarial=tf.where(_common.broadcast(better, found), found, rows["adversarial"]),
            margin=tf.where(better, found_margin, rows["margin"]),
            queries=rows["queries"] + used * tf.cast(active, tf.int32),
        )

    def _result(self, state, x, clean_logits, labels) -> SquareResult:
        return SquareResult(state["adversarial"], state["margin"] <= 0.0, state["queries"])

    def get_config(self):
        """JSON-safe constructor arguments."""
        return {
            "eps": self.eps,
            "n_queries": self.n_queries,
            "p_init": self.p_init,
            "n_restarts": self.n_restarts,
            "seed": self.seed,
        }
