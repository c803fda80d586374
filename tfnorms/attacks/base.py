"""The attack interface: :class:`Attack`, and :class:`RestartAttack` for attacks run by restarts and targets.

Every attack of :mod:`tfnorms.attacks` is an :class:`Attack`:

* ``attack(model, x, y, *, clean_logits=None) -> x_adv`` (float32, the shape
  of ``x``, in the threat model); ``attack.run(...)`` returns a result whose
  ``adversarial`` field is that ``x_adv``, with what else the attack knows
  (gradient norms, per-point success, losses, query counts);
* ``requires_clean_logits`` and ``training`` declare whether the attack reads
  the logits of the clean input and in which model mode it runs, and
  :meth:`Attack.accepts_clean_logits` decides whether clean logits computed in
  a given mode may be handed over (what the trainer and the metrics ask);
* ``get_config`` / ``from_config`` (JSON-safe; Keras-serialisable through
  ``keras.saving.register_keras_serializable``) and a ``repr`` built from them;
* ``name``: the attack's short name (AutoAttack's report).

:class:`RestartAttack` adds the loop shared by APGD, FAB and Square: the
inputs are checked and the clean logits computed once, then compiled single
runs (one per target class and restart) re-run only the points still robust,
each with its own seed, and their results are merged row by row. A subclass
says what its per-point state is, which points are still robust, how a run's
results update the state and what it returns.

Example:
    >>> import numpy as np, keras
    >>> from tfnorms import attacks
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> pgd = attacks.PGD(0.1, 0.05, 3, loss="kl")
    >>> isinstance(pgd, attacks.Attack), pgd.requires_clean_logits
    (True, True)
    >>> pgd.accepts_clean_logits(training=False), pgd.accepts_clean_logits(training=True)
    (True, False)
    >>> x_adv = pgd(model, np.random.rand(2, 4).astype("float32"), np.array([0, 2]))
    >>> x_adv.shape
    TensorShape([2, 4])
"""

from __future__ import annotations

import abc
from typing import Dict, NamedTuple, Optional

import keras
import tensorflow as tf

from tfnorms import _args
from tfnorms.attacks import _common


def serialize(value):
    """A constructor argument for ``get_config``: strings and ``None`` as they are, objects Keras-serialised."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return [serialize(item) for item in value]
    return keras.saving.serialize_keras_object(value)


def deserialize(value):
    """The inverse of :func:`serialize` (for ``from_config``)."""
    if isinstance(value, dict):
        return keras.saving.deserialize_keras_object(value)
    if isinstance(value, list):
        return [deserialize(item) for item in value]
    return value


class Attack(abc.ABC):
    """An adversarial attack: ``attack(model, x, y) -> x_adv``.

    Subclasses implement :meth:`run` and :meth:`get_config`. Constructors take
    the threat model's radius ``eps`` (and for the projected-gradient attacks
    ``step_size`` and ``steps``) positionally and every other argument by keyword.

    Attributes:
        requires_clean_logits: the attack's objective reads the logits of the
            clean input (e.g. the TRADES KL). Callers that have them can pass
            them as ``clean_logits=`` and save a forward pass.
        training: the mode the model runs in during the attack (``False``:
            inference mode, batch norm uses its moving statistics).

    Example:
        >>> from tfnorms import attacks
        >>> attack = attacks.APGD(8 / 255, n_iter=10)
        >>> attack.name, attack.requires_clean_logits, attack.training
        ('apgd-ce', False, False)
        >>> attacks.APGD.from_config(attack.get_config()).get_config() == attack.get_config()
        True
    """

    requires_clean_logits: bool = False
    training: bool = False

    @property
    def name(self) -> str:
        """Short name of the attack (its class name in lower case unless a subclass says otherwise)."""
        return type(self).__name__.lower()

    def accepts_clean_logits(self, training) -> bool:
        """Whether clean logits computed with the model in mode ``training`` should be handed to this attack.

        True when the attack reads clean logits (:attr:`requires_clean_logits`)
        and runs the model in the same mode (:attr:`training`), so the logits
        are the ones it would compute itself.

        Args:
            training: the mode (``model(x, training=training)``) the caller's
                clean logits were computed in.

        Example:
            >>> from tfnorms import attacks
            >>> attacks.PGD(0.03, 0.01, 5, loss="kl").accepts_clean_logits(training=False)
            True
            >>> attacks.PGD(0.03, 0.01, 5).accepts_clean_logits(training=False)  # cross-entropy
            False
        """
        return bool(self.requires_clean_logits) and bool(training) == bool(self.training)

    def __call__(self, model, x, y, *, clean_logits=None):
        """Adversarial examples for ``x`` (float32, the shape of ``x``), without gradient.

        Args:
            model: a callable returning logits for inputs in [0, 1].
            x: ``[batch, ...]`` inputs in [0, 1].
            y: class ids (``[batch]`` / ``[batch, 1]``) or distribution rows.
            clean_logits: optional logits of ``x`` in the attack's mode; read
                only by attacks that require them (see :meth:`accepts_clean_logits`).
        """
        return self.run(model, x, y, clean_logits=clean_logits).adversarial

    @abc.abstractmethod
    def run(self, model, x, y, *, clean_logits=None):
        """Runs the attack; returns a result with an ``adversarial`` field (and per-attack extras)."""

    @abc.abstractmethod
    def get_config(self) -> Dict:
        """JSON-safe constructor arguments (objects Keras-serialised with :func:`serialize`)."""

    @classmethod
    def from_config(cls, config):
        """The attack of ``config`` (from :meth:`get_config`; Keras-serialised objects are deserialised)."""
        return cls(**{key: deserialize(value) for key, value in config.items()})

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_config().items())})"


class Run(NamedTuple):
    """One compiled single run of a :class:`RestartAttack`, on the points still robust.

    Attributes:
        indices: ``[m]`` int32 rows of the batch the run is on.
        x: ``[m, ...]`` their inputs.
        labels: ``[m]`` int32 class ids.
        targets: ``[m]`` int32 target classes (the labels for untargeted runs).
        seed: ``[2]`` int32 seed of the run's stateless random ops.
        restart: 0 for the first run on a target class, 1, 2, ... for restarts.
    """

    indices: tf.Tensor
    x: tf.Tensor
    labels: tf.Tensor
    targets: tf.Tensor
    seed: tf.Tensor
    restart: int


class RestartAttack(Attack):
    """An attack run as compiled single runs over target classes and restarts on the points still robust.

    :meth:`run` checks the inputs, computes the clean logits once (inference
    mode), and for each target class (the 2nd, 3rd, ... largest clean logit;
    one pass for untargeted attacks) and each of ``n_restarts`` restarts runs
    :meth:`_single_run` (compiled once per model and shape) on the points
    still robust, with the seed ``(seed, run index)``, and merges its results.
    Eagerly, runs stop as soon as no point is left; inside a ``tf.function``
    every run covers every point and only the robust ones are updated.

    Subclasses set ``targeted`` / ``n_target_classes`` and implement
    ``_single_run``, ``_initial_state``, ``_still_robust``, ``_updates`` and ``_result``.

    Args:
        eps: radius of the threat model.
        n_restarts: runs per target class.
        seed: ``None`` (fresh randomness per call) or an int (reproducible).

    Example:
        >>> import numpy as np, keras
        >>> from tfnorms import attacks
        >>> model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(5)])
        >>> fab = attacks.FAB(0.1, n_iter=3, n_target_classes=2, seed=0)
        >>> isinstance(fab, attacks.RestartAttack), fab.target_classes(num_classes=5)
        (True, 2)
        >>> result = fab.run(model, np.random.rand(2, 8, 8, 1).astype("float32"), np.array([0, 1]), seed=3)
        >>> result.adversarial.shape
        TensorShape([2, 8, 8, 1])
    """

    targeted: bool = False
    n_target_classes: int = 0

    def __init__(self, eps, *, n_restarts, seed):
        self.eps = _args.positive(eps, "eps")
        self.n_restarts = _args.positive_int(n_restarts, "n_restarts")
        self.seed = _args.integer(seed, "seed", allow_none=True)
        self._compiled = None

    def target_classes(self, num_classes: int) -> int:
        """Target classes run on a model with ``num_classes`` classes (0 for an untargeted attack)."""
        return min(self.n_target_classes, num_classes - 1) if self.targeted else 0

    def unmet_requirement(self, num_classes: int) -> Optional[str]:
        """Why the attack cannot run on a model with ``num_classes`` classes, or ``None`` if it can."""
        del num_classes
        return None

    def tracing_count(self) -> int:
        """How often the compiled single run has been traced (0 before the first run; then 1 per model and shape)."""
        return 0 if self._compiled is None else self._compiled.tracing_count()

    def run(self, model, x, y, *, seed=None, clean_logits=None):
        """Runs every target class and restart on a batch.

        Args:
            model: a callable returning logits for inputs in [0, 1].
            x: ``[batch, ...]`` inputs in [0, 1].
            y: class ids (``[batch]`` / ``[batch, 1]``) or one-hot rows.
            seed: overrides the attack's ``seed`` for this call.
            clean_logits: not read (the attack computes the clean logits in
                inference mode and checks them itself).

        Returns:
            The attack's result (``APGDResult``, ``FABResult``, ``SquareResult``).

        Raises:
            ValueError: for an empty batch, images that are not floats in
                [0, 1], non-finite clean logits (a model with NaN weights),
                labels that are not class ids / distribution rows of the
                model's classes, or a model the attack cannot run on
                (:meth:`unmet_requirement`).
        """
        del clean_logits
        if self._compiled is None:
            self._compiled = _common.AnyBatchFunction(self._single_run)
        x, clean_logits, labels = _common.checked_inputs(model, x, y)
        num_classes = clean_logits.shape[-1]
        reason = self.unmet_requirement(num_classes)
        if reason:
            raise ValueError(f"{self.name}: {reason}; the model has {num_classes}.")
        base_seed = seed if seed is not None else (self.seed if self.seed is not None else _common.fresh_seed())
        state = self._initial_state(x, clean_logits, labels)
        targets = [labels]
        if self.targeted:
            ranked = tf.argsort(clean_logits, axis=-1, direction="DESCENDING", stable=True)
            targets = [ranked[:, rank] for rank in range(1, self.target_classes(num_classes) + 1)]
        schedule = [(target, restart) for target in targets for restart in range(self.n_restarts)]
        for run_index, (target, restart) in enumerate(schedule):
            indices = _common.subset_indices(self._still_robust(state))
            if _common.nothing_left(indices):
                break
            run = Run(indices, tf.gather(x, indices), tf.gather(labels, indices), tf.gather(target, indices),
                      _common.seed_pair(base_seed, run_index), restart)
            updates = self._updates(model, _common.gather_rows(state, indices), run)
            state = _common.scatter_rows(state, indices, updates)
        return self._result(state, x, clean_logits, labels)

    @abc.abstractmethod
    def _single_run(self, model, x, labels, *args, seed):
        """One compiled run on every point of ``x``; ``seed`` is the ``[2]`` seed, the other arguments are per point.

        Traced once per model and input shape, for any number of points
        (:class:`~tfnorms.attacks._common.AnyBatchFunction`).
        """

    @abc.abstractmethod
    def _initial_state(self, x, clean_logits, labels) -> Dict[str, tf.Tensor]:
        """The per-point state before the first run (a dict of ``[batch, ...]`` tensors)."""

    @abc.abstractmethod
    def _still_robust(self, state) -> tf.Tensor:
        """``[batch]`` bool: the points the next run is for."""

    @abc.abstractmethod
    def _updates(self, model, rows, run: Run) -> Dict[str, tf.Tensor]:
        """Runs ``self._compiled`` for ``run``; returns the new values of the state's ``rows`` (``run.indices``)."""

    @abc.abstractmethod
    def _result(self, state, x, clean_logits, labels):
        """The result returned by :meth:`run` (a named tuple with ``adversarial`` first)."""
