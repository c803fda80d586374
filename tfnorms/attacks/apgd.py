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

from typing import List, NamedTuple

import keras
import numpy as np
import tensorflow as tf

from tfnorms.attacks import _common, loop, projections
from tfnorms.attacks import losses as losses_lib
from tfnorms.attacks import steps as steps_lib
from tfnorms.attacks.pgd import _bool, _positive_float, _seed

_LOSSES = ("ce", "dlr")


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
    n_iter = _common.positive_int("n_iter", n_iter)
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
class APGD(_common.ResultAttack):
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
    also returns the per-example success and best loss.

    Example:
        >>> apgd_t = APGD(eps=8 / 255, loss="dlr", targeted=True)
        >>> apgd_t.get_config()["n_target_classes"]
        9
    """

    def __init__(
        self,
        eps,
        loss="ce",
        targeted=False,
        n_iter=100,
        n_restarts=1,
        ord=np.inf,
        n_target_classes=9,
        rho=0.75,
        eot_iter=1,
        seed=None,
    ):
        self.eps = _positive_float("eps", eps)
        if loss not in _LOSSES:
            raise ValueError(f"Invalid value for argument `loss`. Expected one of 'ce', 'dlr'. Received: loss={loss!r}")
        self.loss = loss
        self.targeted = _bool("targeted", targeted)
        self.n_iter = _common.positive_int("n_iter", n_iter)
        self.n_restarts = _common.positive_int("n_restarts", n_restarts)
        self.ord = projections.validate_ord(ord)
        self.n_target_classes = _common.positive_int("n_target_classes", n_target_classes)
        self.rho = _common.float_in("rho", rho, 0.0, 1.0, low_open=False)
        self.eot_iter = _common.positive_int("eot_iter", eot_iter)
        self.seed = _seed(seed)
        self._compiled = None

    @property
    def name(self) -> str:
        """AutoAttack's name for this configuration (``"apgd-ce"``, ``"apgd-dlr"``, ``"apgd-t"``, ...)."""
        if self.targeted:
            return "apgd-t" if self.loss == "dlr" else "apgd-t-ce"
        return f"apgd-{self.loss}"

    def _loss(self, logits, labels, targets):
        if not self.targeted:
            return losses_lib.get(self.loss)(logits, labels)
        if self.loss == "dlr":
            return losses_lib.targeted_dlr(logits, labels, targets)
        return -losses_lib.cross_entropy(logits, targets)

    def _loss_and_gradient(self, model, x_adv, labels, targets):
        def once():
            with tf.GradientTape() as tape:
                tape.watch(x_adv)
                logits = _common.logits(model, x_adv)
                loss = self._loss(logits, labels, targets)
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

    def _single_run(self, model, x, labels, targets, seed):
        """One APGD run on every point of the batch; returns (x_best, success, loss_best, x_best_adv)."""
        eps, ord, n_iter = self.eps, self.ord, self.n_iter
        step = steps_lib.get(ord)
        is_check, window = _schedule_tensors(n_iter)
        shape = tf.shape(x)
        batch = shape[0]

        if ord == np.inf:
            t = tf.random.stateless_uniform(shape, seed, -1.0, 1.0)
        else:
            t = tf.random.stateless_normal(shape, seed)
        norm = tf.maximum(projections.per_example_norm(t, ord), 1e-12)
        x_adv = tf.clip_by_value(x + eps * t / _common.broadcast(norm, x), 0.0, 1.0)

        logits, loss, gradient = self._loss_and_gradient(model, x_adv, labels, targets)
        success = loop.misclassified(logits, labels)
        state = dict(
            i=tf.constant(0),
            x_adv=x_adv,
            x_prev=x_adv,
            gradient=gradient,
            x_best=x_adv,
            gradient_best=gradient,
            loss_best=loss,
            x_best_adv=x_adv,
            success=success,
            loss_steps=tf.zeros([n_iter, batch], tf.float32),
            step_size=tf.fill([batch], 2.0 * eps),
            reduced_last_check=tf.ones([batch], tf.bool),
            loss_best_last_check=loss,
        )
        rows = tf.range(n_iter)

        def body(s):
            i = s["i"]
            momentum = tf.where(i > 0, 0.75, 1.0)
            x_adv, x_prev = s["x_adv"], s["x_prev"]
            z = projections.project(step(x_adv, s["gradient"], _common.broadcast(s["step_size"], x)), x, eps, ord)
            x_new = projections.project(
                x_adv + momentum * (z - x_adv) + (1.0 - momentum) * (x_adv - x_prev), x, eps, ord
            )
            logits, loss, gradient = self._loss_and_gradient(model, x_new, labels, targets)
            fooled = loop.misclassified(logits, labels)
            x_best_adv = tf.where(_common.broadcast(fooled, x), x_new, s["x_best_adv"])
            loss_steps = tf.where(tf.equal(rows, i)[:, None], loss[None, :], s["loss_steps"])
            improved = loss > s["loss_best"]
            x_best = tf.where(_common.broadcast(improved, x), x_new, s["x_best"])
            gradient_best = tf.where(_common.broadcast(improved, x), gradient, s["gradient_best"])
            loss_best = tf.where(improved, loss, s["loss_best"])

            # Checkpoint (docs/theory.md#apgd): count loss increases over the last k iterations. The row
            # before iteration 0 wraps around to the still-zero last row, as in the reference.
            check, k = is_check[i], window[i]
            increases = tf.cast(loss_steps > tf.roll(loss_steps, 1, axis=0), tf.float32)
            in_window = tf.cast(tf.logical_and(rows > i - k, rows <= i), tf.float32)
            n_increases = tf.reduce_sum(increases * in_window[:, None], axis=0)
            oscillating = n_increases <= self.rho * tf.cast(k, tf.float32)
            stalled = tf.logical_and(tf.logical_not(s["reduced_last_check"]), s["loss_best_last_check"] >= loss_best)
            halve = tf.logical_and(check, tf.logical_or(oscillating, stalled))
            reduced_last_check = tf.where(check, halve, s["reduced_last_check"])
            loss_best_last_check = tf.where(check, loss_best, s["loss_best_last_check"])
            step_size = tf.where(halve, s["step_size"] / 2.0, s["step_size"])
            x_next = tf.where(_common.broadcast(halve, x), x_best, x_new)
            gradient = tf.where(_common.broadcast(halve, x), gradient_best, gradient)
            return [_common.keep_shapes(dict(
                i=i + 1,
                x_adv=x_next,
                x_prev=x_adv,
                gradient=gradient,
                x_best=x_best,
                gradient_best=gradient_best,
                loss_best=loss_best,
                x_best_adv=x_best_adv,
                success=tf.logical_or(s["success"], fooled),
                loss_steps=loss_steps,
                step_size=step_size,
                reduced_last_check=reduced_last_check,
                loss_best_last_check=loss_best_last_check,
            ), s)]

        (state,) = tf.while_loop(
            lambda s: tf.constant(True), body, [state], maximum_iterations=n_iter, parallel_iterations=1
        )
        return state["x_best"], state["success"], state["loss_best"], state["x_best_adv"]

    def run(self, model, x, y, seed=None) -> APGDResult:
        """Runs the attack (all restarts and target classes) on a batch.

        Args:
            model: a callable returning logits for inputs in [0, 1].
            x: ``[batch, ...]`` inputs in [0, 1].
            y: class ids (``[batch]`` / ``[batch, 1]``) or one-hot rows.
            seed: overrides the attack's ``seed`` for this call.

        Returns:
            An :class:`APGDResult`.

        Raises:
            ValueError: for an empty batch, images that are not floats in
                [0, 1], non-finite clean logits (a model with NaN weights) or
                labels that are not class ids / distribution rows of the model's classes.
        """
        if self._compiled is None:
            self._compiled = tf.function(self._single_run, reduce_retracing=True)
        x, clean_logits, labels = _common.checked_inputs(model, x, y)
        num_classes = clean_logits.shape[-1]
        base_seed = seed if seed is not None else (self.seed if self.seed is not None else _common.fresh_seed())

        success = loop.misclassified(clean_logits, labels)
        adversarial = x
        best_loss = tf.fill(tf.shape(labels), -np.inf)
        if self.targeted:
            if self.loss == "dlr" and num_classes < 4:
                raise ValueError(f"APGD-T with the targeted DLR loss needs at least 4 classes; the model has {num_classes}.")
            ranked = tf.argsort(clean_logits, axis=-1, direction="DESCENDING", stable=True)
            target_ranks = range(1, min(self.n_target_classes, num_classes - 1) + 1)
        else:
            target_ranks = [None]
        run_index = 0
        for rank in target_ranks:
            for _ in range(self.n_restarts):
                indices = _common.subset_indices(tf.logical_not(success))
                if _common.nothing_left(indices):
                    return APGDResult(adversarial, success, best_loss)
                x_sub, labels_sub = tf.gather(x, indices), tf.gather(labels, indices)
                targets = labels_sub if rank is None else tf.gather(ranked[:, rank], indices)
                x_best, succeeded, loss_best, x_best_adv = self._compiled(
                    model, x_sub, labels_sub, targets, _common.seed_pair(base_seed, run_index)
                )
                run_index += 1
                active = tf.gather(tf.logical_not(success), indices)
                succeeded = tf.logical_and(succeeded, active)
                better = tf.logical_and(active, tf.logical_or(succeeded, loss_best > tf.gather(best_loss, indices)))
                point = tf.where(_common.broadcast(succeeded, x_sub), x_best_adv, x_best)
                point = tf.where(_common.broadcast(better, x_sub), point, tf.gather(adversarial, indices))
                adversarial = _common.scatter(adversarial, indices, point)
                best_loss = _common.scatter(best_loss, indices, tf.where(better, loss_best, tf.gather(best_loss, indices)))
                success = _common.scatter(success, indices, tf.logical_or(succeeded, tf.gather(success, indices)))
        return APGDResult(adversarial, success, best_loss)

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
