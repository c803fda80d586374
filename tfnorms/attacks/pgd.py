"""Projected gradient attacks: :class:`PGD`, :class:`FGSM` and :class:`CW` (CW-l_inf).

All three are the one loop of :mod:`tfnorms.attacks.loop` with different
components; each is an :class:`~tfnorms.attacks.Attack`,
``attack(model, x, y) -> x_adv``, that returns float32 inputs inside the
eps-ball around ``x`` and inside [0, 1]. ``eps``, ``step_size`` and ``steps``
may be given positionally (``PGD(0.031, 0.007, 20)``), every other argument
by keyword; :class:`FGSM` and :class:`CW` take PGD's keyword arguments
(except the ones they fix) without listing them again.

Example:
    >>> import numpy as np, keras, tfnorms
    >>> model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(2)])
    >>> attack = tfnorms.attacks.PGD(eps=8 / 255, step_size=2 / 255, steps=10)
    >>> x = np.random.rand(4, 8, 8, 1).astype("float32")
    >>> x_adv = attack(model, x, np.array([0, 1, 0, 1]))
    >>> bool(np.abs(x_adv - x).max() <= 8 / 255 + 1e-6)
    True
"""

from __future__ import annotations

import functools

import keras
import numpy as np
import tensorflow as tf

from tfnorms import _inputs
from tfnorms import _args
from tfnorms.attacks import base, loop, projections
from tfnorms.attacks import losses as losses_lib
from tfnorms.attacks import starts as starts_lib
from tfnorms.attacks import steps as steps_lib


def _reject_fixed(attack, options, fixed):
    """Raises the ``TypeError`` of an unknown keyword for the PGD arguments ``attack`` fixes itself."""
    for name in fixed:
        if name in options:
            raise TypeError(f"{attack}.__init__() got an unexpected keyword argument '{name}' ({attack} fixes it)")


@keras.saving.register_keras_serializable(package="tfnorms")
class PGD(base.Attack):
    """Projected gradient descent (ascent on the attack loss) in an l_inf or l2 ball.

    ``x_0 = project(start(x))``; ``steps`` times
    ``x_{t+1} = project(x_t + step(grad_x sum_i loss_i(model(x_t))))`` with the
    sign step for l_inf and the l2-normalised step for l2; returns the final
    iterate (docs/theory.md#pgd-attacks), or with ``stop_at_misclassification=True`` each
    example's first misclassified iterate.

    Args:
        eps: radius of the threat model (e.g. ``8 / 255`` or ``0.031``).
        step_size: step length per iteration (``2 / 255``, ``0.007``).
        steps: number of iterations.
        ord: ``numpy.inf`` or ``2``.
        loss: ``"ce"`` (cross-entropy), ``"kl"`` (KL from the clean softmax,
            TRADES), ``"cw"`` (CW margin), ``"dlr"`` (AutoAttack DLR) or a
            callable ``loss(logits, labels, clean_logits) -> [batch]`` to maximise.
        random_start: ``"uniform"`` (in the ball), ``"normal"`` (``0.001 * N(0, I)``,
            TRADES/MART training attacks) or ``None``.
        training: run the model in training mode during the attack. Default
            ``False``: inference mode, so batch norm uses its moving statistics
            and does not update them (docs/theory.md#attacks-inference-mode); ``True`` reproduces code
            that attacks a model left in train mode.
        stop_at_misclassification: keep each example's first misclassified
            iterate instead of the final one. For a fixed ``seed`` the robust
            accuracy then never increases with ``steps``.
        seed: ``None`` (a fresh random start per call) or an int (a
            deterministic start for a given input shape, for reproducible evaluation).

    Calling ``attack(model, x, y, *, clean_logits=None)`` takes a callable
    ``model`` returning logits, ``[batch, ...]`` inputs ``x`` in [0, 1], labels
    ``y`` (class ids ``[batch]`` / ``[batch, 1]`` or one-hot rows) and
    optionally the logits of ``x`` in the attack's mode (saves a forward pass
    for the ``"kl"`` loss); it returns float32 adversarial inputs of the shape
    of ``x``, without gradient.

    ``eps``, ``step_size`` and ``steps`` may be positional, the rest are keyword-only.

    Example:
        >>> trades_attack = PGD(0.031, 0.007, 10, loss="kl", random_start="normal")
        >>> trades_attack.get_config()["loss"], trades_attack.requires_clean_logits
        ('kl', True)
    """

    def __init__(
        self,
        eps,
        step_size,
        steps,
        *,
        ord=np.inf,
        loss="ce",
        random_start="uniform",
        training=False,
        stop_at_misclassification=False,
        seed=None,
    ):
        self.eps = _args.positive(eps, "eps")
        self.step_size = _args.positive(step_size, "step_size")
        self.steps = _args.positive_int(steps, "steps")
        self.ord = projections.validate_ord(ord)
        self.loss = loss
        self.loss_fn = losses_lib.get(loss)
        starts_lib.get(random_start)
        self.random_start = random_start
        self.training = _args.boolean(training, "training")
        self.stop_at_misclassification = _args.boolean(stop_at_misclassification, "stop_at_misclassification")
        self.seed = _args.integer(seed, "seed", allow_none=True)
        self._eager_function = None

    @property
    def requires_clean_logits(self) -> bool:
        """Whether the loss reads the logits of the clean input."""
        return losses_lib.requires_clean_logits(self.loss_fn)

    def _components(self):
        start = starts_lib.get(self.random_start)
        return dict(
            loss_fn=self.loss_fn,
            step_fn=functools.partial(steps_lib.get(self.ord), step_size=self.step_size),
            project_fn=functools.partial(projections.project, eps=self.eps, ord=self.ord),
            start_fn=functools.partial(start, eps=self.eps, ord=self.ord, seed=self.seed),
            steps=self.steps,
            training=self.training,
            stop_at_misclassification=self.stop_at_misclassification,
            gradient_norm_ord=projections.dual_ord(self.ord),
        )

    def run(self, model, x, y, *, clean_logits=None) -> loop.AttackResult:
        """Runs the attack and also returns the per-example maximum dual norm of the gradient.

        Args:
            model: a callable returning logits for inputs in [0, 1].
            x: ``[batch, ...]`` inputs in [0, 1].
            y: class ids or distribution rows (one-hot / soft labels); checked
                and normalised before the compiled loop (:mod:`tfnorms._inputs`).
            clean_logits: optional logits of ``x`` in the attack's mode.

        Returns:
            :class:`tfnorms.attacks.AttackResult` ``(adversarial, max_gradient_norm)``;
            the gradient norm is l1 for l_inf attacks and l2 for l2 attacks.

        Raises:
            ValueError: for an empty batch, images that are not floats in
                [0, 1] or invalid labels (see :func:`tfnorms.attacks.loop.run`).
        """
        # Checked here, before any trace: the compiled function only ever sees int32 ids [batch] or
        # float32 rows [batch, classes], so a trace for one kind of labels is never reused for the other.
        x, y = _inputs.check_batch(model, x, y)
        if tf.executing_eagerly():
            # An eager Python loop of forward/backward passes is slow; trace once per model and shape.
            if self._eager_function is None:
                self._eager_function = tf.function(self._run, reduce_retracing=True)
            return self._eager_function(model, x, y, clean_logits)
        return self._run(model, x, y, clean_logits)

    def _run(self, model, x, y, clean_logits):
        return loop.iterate(model, x, y, clean_logits=clean_logits, **self._components())

    def get_config(self):
        """JSON-safe constructor arguments (``ord`` as ``"inf"`` / ``"2"``, a callable loss Keras-serialised)."""
        return {
            "eps": self.eps,
            "step_size": self.step_size,
            "steps": self.steps,
            "ord": projections.ord_to_config(self.ord),
            "loss": base.serialize(self.loss),
            "random_start": self.random_start,
            "training": self.training,
            "stop_at_misclassification": self.stop_at_misclassification,
            "seed": self.seed,
        }


@keras.saving.register_keras_serializable(package="tfnorms")
class FGSM(PGD):
    """Fast gradient sign method: one step of length ``eps`` from ``x`` (``PGD`` with ``steps=1``).

    With ``ord=2`` it is the fast gradient method (one normalised step).

    Args:
        eps: radius of the threat model.
        random_start: as in :class:`PGD` (default ``None``: start at ``x``).
        **options: the other keyword arguments of :class:`PGD` (``ord``,
            ``loss``, ``training``, ``seed``); ``step_size``, ``steps`` and
            ``stop_at_misclassification`` are fixed.

    Example:
        >>> FGSM(8 / 255, ord=2).steps
        1
    """

    _FIXED = ("step_size", "steps", "stop_at_misclassification")

    def __init__(self, eps, *, random_start=None, **options):
        _reject_fixed("FGSM", options, self._FIXED)
        super().__init__(eps, eps, 1, random_start=random_start, **options)

    def get_config(self):
        config = super().get_config()
        for key in self._FIXED:
            config.pop(key)
        return config


@keras.saving.register_keras_serializable(package="tfnorms")
class CW(PGD):
    """CW-l_inf as used for evaluation by Wu et al.: PGD on the CW margin loss (docs/theory.md#pgd-attacks).

    The objective is ``-max(z_y - max_{j != y} z_j + confidence, 0)`` with the
    best wrong logit taken over ``j != y`` (the clean margin; see
    :func:`tfnorms.attacks.losses.cw_margin` for how it differs from the
    reference code's 0/1-mask).

    Args:
        eps: radius of the threat model (CW-20 of Wu et al.: ``CW(0.031, 0.007, 20)``).
        step_size: step length per iteration.
        steps: number of iterations.
        confidence: the margin ``kappa`` >= 0 (0 in the papers).
        **options: the other keyword arguments of :class:`PGD` (``ord``,
            ``random_start``, ``training``, ``stop_at_misclassification``,
            ``seed``); the loss is fixed.

    Example:
        >>> CW(0.031, 0.007, 20, ord=2).get_config()["confidence"]
        0.0
    """

    def __init__(self, eps, step_size, steps, *, confidence=0.0, **options):
        _reject_fixed("CW", options, ("loss",))
        self.confidence = _args.nonnegative(confidence, "confidence")
        super().__init__(eps, step_size, steps, loss="cw", **options)
        self.loss_fn = functools.partial(losses_lib.cw_margin, confidence=self.confidence)

    def get_config(self):
        config = super().get_config()
        config.pop("loss")
        config["confidence"] = self.confidence
        return config
