"""Auto-PGD (APGD) of Croce & Hein (2020), untargeted (CE, DLR) and targeted (APGD-T), l_inf and l2.

The step-size schedule, momentum and checkpoints follow docs/theory.md#apgd; the
losses are those of docs/theory.md#dlr (:mod:`tfnorms.attacks.losses`). One run is a
compiled ``tf.while_loop`` with a fixed trip count of ``n_iter`` and all
per-example state (step size, best point, best loss, loss history) in
tensors; restarts and target classes re-run only the points still robust.

Example:
    >>> import numpy as np, keras
    >>> from tfnorms.attacks import APGD, checkpoint_schedule
    >>> checkpoint_schedule(100)
    [22, 41, 57, 70, 80, 87, 93, 99]
    >>> model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(4)])
    >>> x = np.random.rand(3, 8, 8, 1).astype("float32")
    >>> x_adv = APGD(eps=8 / 255, n_iter=5, seed=0)(model, x, np.array([0, 1, 2]))
    >>> bool(np.abs(x_adv - x).max() <= 8 / 255 + 1e-6)
    True
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional

import keras
import numpy as np
import tensorflow as tf

from tfnorms import _args
from tfnorms.attacks import _common, base, loop, projections
from tfnorms.attacks import losses as losses_lib
from tfnorms.attacks import steps as steps_lib

_LOSSES = ("ce", "dlr")


def _unmet(loss, targeted, num_classes):
    """Why ``loss`` (targeted or not) cannot run on ``num_classes`` classes, or ``None``."""
    minimum = 4 if targeted else 3
    if loss == "dlr" and num_classes < minimum:
        return f"the {'targeted ' if targeted else ''}DLR loss needs at least {minimum} classes"
    return None


def _loss_value(kind, logits, labels, targets):
    """The per-example loss of ``kind = (loss, targeted)``: CE, DLR, targeted DLR or ``-CE(z, t)``."""
    loss, targeted = kind
    if not targeted:
        return losses_lib.get(loss)(logits, labels)
    if loss == "dlr":
        return losses_lib.targeted_dlr(logits, labels, targets)
    return -losses_lib.cross_entropy(logits, targets)


def share_compiled_runs(attacks) -> None:
    """Gives the :class:`APGD` attacks of ``attacks`` that differ only in their loss one compiled run.

    AutoAttack's APGD-CE and APGD-T (or the rand version's APGD-CE and
    APGD-DLR) have the same loop; their shared run computes each loss of the
    group (a few operations on the logits) and picks one with a tensor
    argument, so the model's forward and gradient passes are traced and
    optimised once instead of once per attack. The picked loss, its gradient
    and so the attack's result are exactly those of the attack alone (the
    other losses receive a zero gradient).

    Example:
        >>> ce, t = APGD(0.1, "ce", n_iter=5), APGD(0.1, "dlr", targeted=True, n_iter=5)
        >>> share_compiled_runs([ce, t])
        >>> ce._compiled is t._compiled, t._run_losses
        (True, (('ce', False), ('dlr', True)))
    """
    groups = {}
    for attack in attacks:
        if isinstance(attack, APGD):
            groups.setdefault((attack.eps, attack.n_iter, attack.ord, attack.rho, attack.eot_iter), []).append(attack)
    for group in groups.values():
        kinds = tuple(dict.fromkeys(attack._kind for attack in group))
        compiled = _common.AnyBatchFunction(group[0]._single_run)
        for attack in group:
            attack._run_losses, attack._compiled = kinds, compiled


def checkpoint_schedule(n_iter: int) -> List[int]:
    """Iteration counts after which APGD checks its step size (docs/theory.md#apgd).

    ``k = max(floor(0.22 N), 1)``, then after each check
    ``k <- max(k - max(floor(0.03 N), 1), max(floor(0.06 N), 1))``.

    Args:
        n_iter: number of iterations ``N``.

    Returns:
        The (1-based) iteration counts of the checks, e.g.
        ``[22, 41, 57, 70, 80, 87, 93, 99]`` for ``N = 100``.

    Example:
        >>> checkpoint_schedule(10)
        [2, 3, 4, 5, 6, 7, 8, 9, 10]
    """
    n_iter = _args.positive_int(n_iter, "n_iter")
    window = max(int(0.22 * n_iter), 1)
    decrease = max(int(0.03 * n_iter), 1)
    minimum = max(int(0.06 * n_iter), 1)
    checks, done = [], 0
    while done + window <= n_iter:
        done += window
        checks.append(done)
        window = max(window - decrease, minimum)
    return checks


def _schedule_tensors(n_iter):
    """Per 0-based iteration: whether it ends with a check, and the window length ``k`` of that check."""
    is_check = np.zeros(n_iter, bool)
    window = np.ones(n_iter, np.int32)
    previous = 0
    for check in checkpoint_schedule(n_iter):
        is_check[check - 1] = True
        window[check - 1] = check - previous
        previous = check
    return tf.constant(is_check), tf.constant(window)


class APGDResult(NamedTuple):
    """What :meth:`APGD.run` returns.

    Attributes:
        adversarial: ``[batch, ...]`` float32 points in the threat model: the
            last misclassified iterate where the attack succeeded, otherwise the
            highest-loss point found (the clean input for points misclassified
            from the start).
        success: ``[batch]`` bool, the attack found a misclassified point
            (including points misclassified at the clean input).
        loss: ``[batch]`` float32 best value of the attack loss (``-inf`` where
            the clean point was already misclassified).
    """

    adversarial: tf.Tensor
    success: tf.Tensor
    loss: tf.Tensor


@keras.saving.register_keras_serializable(package="tfnorms")
class APGD(base.RestartAttack):
    """Auto-PGD: PGD with momentum and a step size halved at checkpoints when progress stalls.

    One run (docs/theory.md#apgd): start at ``x0 = clip(x + eps * t / ||t||, 0, 1)``
    with ``t ~ U[-1, 1]^d`` (l_inf; ``N(0, I)`` for l2), step size ``2 eps``;
    iterate ``z = P(x + eta * step(g))``,
    ``x <- P(x + a (z - x) + (1 - a)(x - x_prev))`` with ``a = 1`` at the first
    iteration and ``0.75`` after. At the checks of :func:`checkpoint_schedule`
    the step size of an example is halved and its iterate reset to its best
    point when the loss increased in at most ``rho * k`` of the last ``k``
    iterations, or when the step size was not halved at the previous check and
    the best loss has not improved since. Restarts and target classes run
    only on the points still robust.

    ``eps`` and ``loss`` may be positional, the rest are keyword-only.

    Args:
        eps: radius of the threat model.
        loss: ``"ce"`` (cross-entropy) or ``"dlr"`` (difference of logits
            ratio). With ``targeted=True``: ``"dlr"`` is the targeted DLR of
            APGD-T, ``"ce"`` maximises ``-CE(z, t)``.
        targeted: APGD-T: for each of ``n_target_classes`` targets ``t`` = the
            2nd, 3rd, ... largest **clean** logit, maximise the targeted loss.
        n_iter: iterations per run (100 in AutoAttack).
        n_restarts: random restarts per target (1 in AutoAttack).
        ord: ``numpy.inf`` or ``2``.
        n_target_classes: number of target classes of APGD-T (9 in
            AutoAttack); capped at ``num_classes - 1`` for a given model.
        rho: fraction of loss increases below which a check halves the step.
        eot_iter: gradients averaged over this many forward passes
            (expectation over transformation, for randomised models; 1 by default).
        seed: ``None`` (fresh randomness per call) or an int (reproducible).

    Calling ``attack(model, x, y)`` returns the adversarial inputs; ``run``
    also returns the per-example success and best loss (the restart loop of
    :class:`~tfnorms.attacks.RestartAttack`).

    Example:
        >>> apgd_t = APGD(8 / 255, "dlr", targeted=True)
        >>> apgd_t.name, apgd_t.get_config()["n_target_classes"], apgd_t.unmet_requirement(3)
        ('apgd-t', 9, 'the targeted DLR loss needs at least 4 classes')
    """

    def __init__(
        self,
        eps,
        loss="ce",
        *,
        targeted=False,
        n_iter=100,
        n_restarts=1,
        ord=np.inf,
        n_target_classes=9,
        rho=0.75,
        eot_iter=1,
        seed=None,
    ):
        super().__init__(eps, n_restarts=n_restarts, seed=seed)
        if loss not in _LOSSES:
            raise ValueError(f"Invalid value for argument `loss`. Expected one of 'ce', 'dlr'. Received: loss={loss!r}")
        self.loss = loss
        self.targeted = _args.boolean(targeted, "targeted")
        self.n_iter = _args.positive_int(n_iter, "n_iter")
        self.ord = projections.validate_ord(ord)
        self.n_target_classes = _args.positive_int(n_target_classes, "n_target_classes")
        self.rho = _args.number(rho, "rho", low=0.0, high=1.0, low_open=False)
        self.eot_iter = _args.positive_int(eot_iter, "eot_iter")
        self._kind = (self.loss, self.targeted)
        self._run_losses = (self._kind,)  # the losses its compiled run computes (see share_compiled_runs)

    @property
    def name(self) -> str:
        """AutoAttack's name for this configuration (``"apgd-ce"``, ``"apgd-dlr"``, ``"apgd-t"``, ...)."""
        if self.targeted:
            return "apgd-t" if self.loss == "dlr" else "apgd-t-ce"
        return f"apgd-{self.loss}"

    def unmet_requirement(self, num_classes: int) -> Optional[str]:
        """The DLR losses need 3 classes (untargeted) or 4 (targeted, APGD-T); cross-entropy runs on any model."""
        return _unmet(self.loss, self.targeted, num_classes)

    def _loss(self, logits, labels, targets, loss_index):
        """The loss ``self._run_losses[loss_index]``; losses the model has too few classes for are never picked."""
        if len(self._run_losses) == 1:
            return _loss_value(self._run_losses[0], logits, labels, targets)
        num_classes = logits.shape[-1]
        values = [tf.zeros_like(labels, tf.float32) if _unmet(*kind, num_classes) else
                  _loss_value(kind, logits, labels, targets) for kind in self._run_losses]
        return tf.gather(tf.stack(values), loss_index)

    def _loss_and_gradient(self, model, x_adv, labels, targets, loss_index):
        def once():
            with tf.GradientTape() as tape:
                tape.watch(x_adv)
                logits = _common.logits(model, x_adv)
                loss = self._loss(logits, labels, targets, loss_index)
                # Summed over the batch: each example's gradient is that of its own loss (docs/theory.md#pgd-attacks).
                total = tf.reduce_sum(loss)
            return logits, loss, tf.stop_gradient(tape.gradient(total, x_adv, unconnected_gradients=tf.UnconnectedGradients.ZERO))

        logits, loss, gradient = once()
        if self.eot_iter > 1:
            def body(k, logits, loss, gradient_sum):
                new_logits, new_loss, new_gradient = once()
                return k + 1, new_logits, new_loss, gradient_sum + new_gradient

            _, logits, loss, gradient = tf.while_loop(
                lambda k, *_: k < self.eot_iter, body, (tf.constant(1), logits, loss, gradient)
            )
            gradient = gradient / float(self.eot_iter)
        return logits, loss, gradient

    def _single_run(self, model, x, labels, targets, *, seed, loss_index):
        """One APGD run on every point of the batch; returns (x_best, success, loss_best, x_best_adv).

        ``loss_index`` (a scalar int32 tensor) picks the loss from ``self._run_losses``.
        """
        schedule = _schedule_tensors(self.n_iter)
        x_adv = self._random_start(x, seed)
        logits, loss, gradient = self._loss_and_gradient(model, x_adv, labels, targets, loss_index)
        batch = tf.shape(x)[0]
        state = dict(
            i=tf.constant(0),
            x_adv=x_adv,
            x_prev=x_adv,
            gradient=gradient,
            x_best=x_adv,
            gradient_best=gradient,
            loss_best=loss,
            x_best_adv=x_adv,
            success=loop.misclassified(logits, labels),
            loss_steps=tf.zeros([self.n_iter, batch], tf.float32),
            step_size=tf.fill([batch], 2.0 * self.eps),
            reduced_last_check=tf.ones([batch], tf.bool),
            loss_best_last_check=loss,
        )

        def body(s):
            x_new = self._momentum_step(s, x)
            logits, loss, gradient = self._loss_and_gradient(model, x_new, labels, targets, loss_index)
            new = self._record(s, x, x_new, loss, loop.misclassified(logits, labels), gradient)
            return [_common.keep_shapes(self._checkpoint(new, s, x, schedule), s)]

        (state,) = tf.while_loop(
            lambda s: tf.constant(True), body, [state], maximum_iterations=self.n_iter, parallel_iterations=1
        )
        return state["x_best"], state["success"], state["loss_best"], state["x_best_adv"]

    def _random_start(self, x, seed):
        """``clip(x + eps * t / ||t||, 0, 1)`` with ``t ~ U[-1, 1]^d`` (l_inf) or ``N(0, I)`` (l2)."""
        shape = tf.shape(x)
        if self.ord == np.inf:
            t = tf.random.stateless_uniform(shape, seed, -1.0, 1.0)
        else:
            t = tf.random.stateless_normal(shape, seed)
        norm = tf.maximum(projections.per_example_norm(t, self.ord), 1e-12)
        return tf.clip_by_value(x + self.eps * t / _common.broadcast(norm, x), 0.0, 1.0)

    def _momentum_step(self, s, x):
        """``P(x + a (z - x) + (1 - a)(x - x_prev))`` with ``z = P(x + eta * step(g))``; ``a = 1`` first, then 0.75."""
        momentum = tf.where(s["i"] > 0, 0.75, 1.0)
        x_adv, x_prev = s["x_adv"], s["x_prev"]
        step = steps_lib.get(self.ord)
        z = projections.project(step(x_adv, s["gradient"], _common.broadcast(s["step_size"], x)), x, self.eps, self.ord)
        return projections.project(
            x_adv + momentum * (z - x_adv) + (1.0 - momentum) * (x_adv - x_prev), x, self.eps, self.ord
        )

    def _record(self, s, x, x_new, loss, fooled, gradient):
        """The state after evaluating the iterate ``x_new``: its loss in the history, best points, success."""
        rows = tf.range(self.n_iter)
        improved = loss > s["loss_best"]
        return dict(
            s,
            x_prev=s["x_adv"],
            gradient=gradient,
            x_best_adv=tf.where(_common.broadcast(fooled, x), x_new, s["x_best_adv"]),
            loss_steps=tf.where(tf.equal(rows, s["i"])[:, None], loss[None, :], s["loss_steps"]),
            x_best=tf.where(_common.broadcast(improved, x), x_new, s["x_best"]),
            gradient_best=tf.where(_common.broadcast(improved, x), gradient, s["gradient_best"]),
            loss_best=tf.where(improved, loss, s["loss_best"]),
            success=tf.logical_or(s["success"], fooled),
            x_adv=x_new,
        )

    def _checkpoint(self, new, old, x, schedule):
        """At a check: halve the step size and restart from the best point where progress stalled.

        The loss increases are counted over the last ``k`` iterations. The row
        before iteration 0 wraps around to the still-zero last row, as in the reference.
        """
        is_check, window = schedule
        i, rows = old["i"], tf.range(self.n_iter)
        check, k = is_check[i], window[i]
        loss_steps, loss_best = new["loss_steps"], new["loss_best"]
        increases = tf.cast(loss_steps > tf.roll(loss_steps, 1, axis=0), tf.float32)
        in_window = tf.cast(tf.logical_and(rows > i - k, rows <= i), tf.float32)
        n_increases = tf.reduce_sum(increases * in_window[:, None], axis=0)
        oscillating = n_increases <= self.rho * tf.cast(k, tf.float32)
        stalled = tf.logical_and(tf.logical_not(old["reduced_last_check"]), old["loss_best_last_check"] >= loss_best)
        halve = tf.logical_and(check, tf.logical_or(oscillating, stalled))
        return dict(
            new,
            i=i + 1,
            x_adv=tf.where(_common.broadcast(halve, x), new["x_best"], new["x_adv"]),
            gradient=tf.where(_common.broadcast(halve, x), new["gradient_best"], new["gradient"]),
            step_size=tf.where(halve, old["step_size"] / 2.0, old["step_size"]),
            reduced_last_check=tf.where(check, halve, old["reduced_last_check"]),
            loss_best_last_check=tf.where(check, loss_best, old["loss_best_last_check"]),
        )

    def _initial_state(self, x, clean_logits, labels):
        return dict(
            adversarial=x, success=loop.misclassified(clean_logits, labels), loss=tf.fill(tf.shape(labels), -np.inf)
        )

    def _still_robust(self, state):
        return tf.logical_not(state["success"])

    def _updates(self, model, rows, run):
        x_best, succeeded, loss_best, x_best_adv = self._compiled(
            model, run.x, run.labels, run.targets, seed=run.seed,
            loss_index=tf.constant(self._run_losses.index(self._kind), tf.int32))
        active = tf.logical_not(rows["success"])
        succeeded = tf.logical_and(succeeded, active)
        better = tf.logical_and(active, tf.logical_or(succeeded, loss_best > rows["loss"]))
        point = tf.where(_common.broadcast(succeeded, run.x), x_best_adv, x_best)
        return dict(
            adversarial=tf.where(_common.broadcast(better, run.x), point, rows["adversarial"]),
            loss=tf.where(better, loss_best, rows["loss"]),
            success=tf.logical_or(succeeded, rows["success"]),
        )

    def _result(self, state, x, clean_logits, labels) -> APGDResult:
        return APGDResult(state["adversarial"], state["success"], state["loss"])

    def get_config(self):
        """JSON-safe constructor arguments (``ord`` as ``"inf"`` / ``"2"``)."""
        return {
            "eps": self.eps,
            "loss": self.loss,
            "targeted": self.targeted,
            "n_iter": self.n_iter,
            "n_restarts": self.n_restarts,
            "ord": projections.ord_to_config(self.ord),
            "n_target_classes": self.n_target_classes,
            "rho": self.rho,
            "eot_iter": self.eot_iter,
            "seed": self.seed,
        }
