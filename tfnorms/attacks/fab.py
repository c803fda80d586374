"""FAB-T, the targeted l_inf fast adaptive boundary attack of AutoAttack (docs/theory.md#fab-t).

FAB is a minimum-norm attack: it walks towards the decision boundary between
the true class ``y`` and a target class ``t`` by projecting onto the
linearised boundary, and keeps the smallest adversarial perturbation found.
For AutoAttack a point counts as broken only if that perturbation is
misclassified **and** has l_inf norm at most ``eps``.

Example:
    >>> import numpy as np, keras
    >>> from tfnorms.attacks import FAB
    >>> model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(5)])
    >>> x = np.random.rand(3, 8, 8, 1).astype("float32")
    >>> x_adv = FAB(eps=0.1, n_iter=5, n_target_classes=2, seed=0)(model, x, np.array([0, 1, 2]))
    >>> bool(np.abs(x_adv - x).max() <= 0.1 + 1e-6)
    True
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import keras
import tensorflow as tf

from tfnorms import _args
from tfnorms.attacks import _common, base, loop

_NO_SUCCESS = 1e10


def project_linf_box(points, w, c):
    """Minimal-l_inf step onto a hyperplane inside the [0, 1] box (the projection of FAB, docs/theory.md#fab-t).

    Solves ``min ||d||_inf`` subject to ``<w, d> = c`` and ``0 <= p + d <= 1``
    per example. The optimum moves every coordinate with ``w_i != 0`` by
    ``sign(c w_i) min(t, r_i)``, where ``r_i`` is the room to the box in that
    direction, and ``t`` is the smallest value for which
    ``h(t) = sum_i |w_i| min(t, r_i)`` reaches ``|c|``. ``h`` is piecewise
    linear and non-decreasing with breakpoints at the sorted ``r_i``, so ``t``
    follows from cumulative sums over the sorted breakpoints. Where even the
    box corner (``t = max r_i``) does not reach the hyperplane, the corner is
    returned (the largest progress towards it).

    Args:
        points: ``[batch, d]`` points ``p`` in [0, 1].
        w: ``[batch, d]`` hyperplane normals.
        c: ``[batch]`` required values of ``<w, d>``.

    Returns:
        ``[batch, d]`` steps ``d``.

    Example:
        >>> import numpy as np
        >>> project_linf_box(np.array([[0.5, 0.5]], "float32"), np.array([[1.0, 1.0]], "float32"),
        ...                  np.array([0.4], "float32")).numpy()
        array([[0.2, 0.2]], dtype=float32)
    """
    points = tf.convert_to_tensor(points, tf.float32)
    w = tf.convert_to_tensor(w, tf.float32)
    c = tf.convert_to_tensor(c, tf.float32)
    direction = tf.sign(c)[:, None] * tf.sign(w)
    weight = tf.abs(w)
    room = tf.where(direction > 0, 1.0 - points, points)
    room = tf.where(direction == 0, 0.0, tf.maximum(room, 0.0))
    order = tf.argsort(room, axis=-1)
    room_sorted = tf.gather(room, order, batch_dims=1)
    weight_sorted = tf.gather(weight, order, batch_dims=1)
    reached = tf.cumsum(weight_sorted * room_sorted, axis=-1)  # sum over coordinates already at the box
    weight_at_box = tf.cumsum(weight_sorted, axis=-1)
    total_weight = weight_at_box[:, -1:]
    progress = reached + room_sorted * (total_weight - weight_at_box)  # h at each breakpoint
    target = tf.abs(c)[:, None]
    position = tf.reduce_sum(tf.cast(progress < target, tf.int32), axis=-1)  # first breakpoint with h >= |c|
    dimension = tf.shape(points)[1]
    previous = tf.maximum(position - 1, 0)
    reached_before = tf.where(position > 0, tf.gather(reached, previous, batch_dims=1), 0.0)
    weight_before = tf.where(position > 0, tf.gather(weight_at_box, previous, batch_dims=1), 0.0)
    t = (target[:, 0] - reached_before) / tf.maximum(total_weight[:, 0] - weight_before, 1e-12)
    t = tf.where(position >= dimension, room_sorted[:, -1], t)  # infeasible: go to the box corner
    t = tf.where(target[:, 0] > 0, t, 0.0)
    return direction * tf.minimum(t[:, None], room)


class FABResult(NamedTuple):
    """What :meth:`FAB.run` returns.

    Attributes:
        adversarial: ``[batch, ...]`` the smallest adversarial perturbation
            found where it is within ``eps`` (success), the input otherwise.
        success: ``[batch]`` bool, misclassified (at the clean input or at a
            point found) with l_inf perturbation ``<= eps``.
        norm: ``[batch]`` l_inf norm of the smallest adversarial perturbation
            found (0 for clean misclassified points, ``1e10`` if none was found).
    """

    adversarial: tf.Tensor
    success: tf.Tensor
    norm: tf.Tensor


@keras.saving.register_keras_serializable(package="tfnorms")
class FAB(base.RestartAttack):
    """FAB-T (l_inf): targeted minimum-norm boundary attack, as run by AutoAttack.

    For each of ``n_target_classes`` targets ``t`` (the 2nd, 3rd, ... largest
    clean logit) and each restart, ``n_iter`` iterations of (docs/theory.md#fab-t):
    linearise ``g = z_t - z_y`` at the iterate, compute the minimal l_inf steps
    ``d1`` from the iterate and ``d2`` from the original point onto
    ``{g + <grad g, . - x1> = 0}`` inside the [0, 1] box
    (:func:`project_linf_box`), move to
    ``clip((x1 + eta d1)(1 - a) + (x + eta d2) a, 0, 1)`` with
    ``a = min(max(|d1| / (|d1| + |d2|), 0), alpha_max)``, and when the new
    iterate is misclassified, record it if its norm is the smallest so far
    and pull it back, ``x1 <- x + backward_step (x1 - x)`` (the paper's
    ``beta``). Restarts after the first start at a random point at l_inf
    radius ``min(best norm, eps) / 2``.

    Args:
        eps: radius of the threat model; success needs ``||delta||_inf <= eps``
            (the only positional argument).
        n_target_classes: targets per point (9 in AutoAttack), capped at ``num_classes - 1``.
        n_iter: iterations per run (100).
        n_restarts: runs per target (1 in AutoAttack's standard version).
        alpha_max: cap of the bias towards the original point (0.1).
        eta: overshoot of the projection step (1.05).
        backward_step: the factor in (0, 1] that pulls an adversarial iterate
            back towards ``x`` (0.9; ``beta`` in the FAB paper).
        seed: ``None`` or an int, for the random restarts.
        beta: deprecated name of ``backward_step`` (``beta`` is the TRADES
            weight elsewhere in the library); still accepted, with a
            ``DeprecationWarning``, so that saved configs load.

    Example:
        >>> FAB(8 / 255).get_config()["backward_step"]
        0.9
    """

    name = "fab-t"
    targeted = True

    def __init__(
        self, eps, *, n_target_classes=9, n_iter=100, n_restarts=1, alpha_max=0.1, eta=1.05, backward_step=0.9,
        seed=None, beta=None,
    ):
        super().__init__(eps, n_restarts=n_restarts, seed=seed)
        self.n_target_classes = _args.positive_int(n_target_classes, "n_target_classes")
        self.n_iter = _args.positive_int(n_iter, "n_iter")
        self.alpha_max = _args.number(alpha_max, "alpha_max", low=0.0, high=1.0, low_open=False)
        self.eta = _args.number(eta, "eta", low=0.0, high=10.0, low_open=True)
        if beta is not None:
            if backward_step != 0.9:
                raise ValueError(
                    "Invalid value for argument `beta`. Expected only `backward_step` (its new name). "
                    f"Received: beta={beta!r} and backward_step={backward_step!r}"
                )
            warnings.warn(
                "FAB's `beta` is now called `backward_step` (`beta` is the TRADES weight elsewhere in tfnorms); "
                "`beta` will be removed.", DeprecationWarning, stacklevel=2,
            )
            backward_step = beta
        self.backward_step = _args.number(backward_step, "backward_step", low=0.0, high=1.0, low_open=True)

    def _single_run(self, model, x, labels, targets, start_radius, *, seed):
        """One run on all points from ``x`` + a random point at l_inf radius ``start_radius`` (``[batch]``).

        Returns (best adversarial point, its l_inf norm or 1e10).
        """
        batch = tf.shape(x)[0]
        flat = lambda v: tf.reshape(v, [batch, -1])  # noqa: E731
        t = tf.random.stateless_uniform(tf.shape(x), seed, -1.0, 1.0)
        t = t / _common.broadcast(tf.maximum(tf.reduce_max(tf.abs(flat(t)), axis=1), 1e-12), x)
        x1 = tf.clip_by_value(x + _common.broadcast(start_radius, x) * t, 0.0, 1.0)
        x0 = flat(x)

        def difference_and_gradient(x1):
            with tf.GradientTape() as tape:
                tape.watch(x1)
                z = _common.logits(model, x1)
                difference = tf.gather(z, targets, batch_dims=1) - tf.gather(z, labels, batch_dims=1)
                total = tf.reduce_sum(difference)
            return difference, tf.stop_gradient(tape.gradient(total, x1, unconnected_gradients=tf.UnconnectedGradients.ZERO))

        def body(*state):
            return _common.keep_shapes(step(*state), state)

        def step(i, x1, adversarial, norm):
            difference, gradient = difference_and_gradient(x1)
            w = flat(gradient)
            # Hyperplane {p : difference + <w, p - x1> = 0}; steps from x1 and from the original x.
            c1 = -difference
            c0 = -difference + tf.reduce_sum(w * (flat(x1) - x0), axis=1)
            d = project_linf_box(tf.concat([flat(x1), x0], 0), tf.concat([w, w], 0), tf.concat([c1, c0], 0))
            d1, d2 = d[:batch], d[batch:]
            a1 = tf.maximum(tf.reduce_max(tf.abs(d1), axis=1), 1e-8)
            a2 = tf.maximum(tf.reduce_max(tf.abs(d2), axis=1), 1e-8)
            alpha = tf.clip_by_value(a1 / (a1 + a2), 0.0, self.alpha_max)[:, None]
            x1_flat = tf.clip_by_value((flat(x1) + self.eta * d1) * (1.0 - alpha) + (x0 + self.eta * d2) * alpha, 0.0, 1.0)
            x1 = tf.reshape(x1_flat, tf.shape(x))
            is_adversarial = loop.misclassified(_common.logits(model, x1), labels)
            distance = tf.reduce_max(tf.abs(x1_flat - x0), axis=1)
            smaller = tf.logical_and(is_adversarial, distance < norm)
            adversarial = tf.where(_common.broadcast(smaller, x), x1, adversarial)
            norm = tf.where(smaller, distance, norm)
            x1 = tf.where(_common.broadcast(is_adversarial, x), x + self.backward_step * (x1 - x), x1)
            return i + 1, x1, adversarial, norm

        _, _, adversarial, norm = tf.while_loop(
            lambda i, *_: i < self.n_iter,
            body,
            (tf.constant(0), x1, x, tf.fill([batch], _NO_SUCCESS)),
            parallel_iterations=1,
        )
        return adversarial, norm

    def _initial_state(self, x, clean_logits, labels):
        return dict(adversarial=x, norm=tf.where(loop.misclassified(clean_logits, labels), 0.0, _NO_SUCCESS))

    def _still_robust(self, state):
        return state["norm"] > self.eps

    def _updates(self, model, rows, run):
        old_norm = rows["norm"]
        start_radius = 0.5 * tf.minimum(old_norm, self.eps) if run.restart > 0 else tf.zeros_like(old_norm)
        found, found_norm = self._compiled(model, run.x, run.labels, run.targets, start_radius, seed=run.seed)
        better = tf.logical_and(found_norm < old_norm, old_norm > self.eps)
        return dict(
            adversarial=tf.where(_common.broadcast(better, run.x), found, rows["adversarial"]),
            norm=tf.where(better, found_norm, old_norm),
        )

    def _result(self, state, x, clean_logits, labels) -> FABResult:
        success = state["norm"] <= self.eps
        # Only perturbations inside the threat model are returned (AutoAttack's success criterion).
        broken = tf.logical_and(success, tf.logical_not(loop.misclassified(clean_logits, labels)))
        return FABResult(tf.where(_common.broadcast(broken, x), state["adversarial"], x), success, state["norm"])

    def get_config(self):
        """JSON-safe constructor arguments."""
        return {
            "eps": self.eps,
            "n_target_classes": self.n_target_classes,
            "n_iter": self.n_iter,
            "n_restarts": self.n_restarts,
            "alpha_max": self.alpha_max,
            "eta": self.eta,
            "backward_step": self.backward_step,
            "seed": self.seed,
        }
