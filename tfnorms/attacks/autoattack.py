"""AutoAttack (Croce & Hein 2020), standard l_inf version, native TensorFlow, with sanity checks.

The standard version runs APGD-CE, APGD-T (9 targets), FAB-T (9 targets) and
Square (5000 queries) **in cascade**: each attack only sees the points that
are still classified correctly, and a point is robust only if it survives all
four (docs/theory.md#autoattack). Every adversarial example an attack returns is
projected onto the threat model and re-checked with a separate forward pass
before it counts, so the reported robust accuracy is that of points
verified to be in the eps-ball, in [0, 1] and misclassified.

Example:
    >>> import numpy as np, keras
    >>> from tfnorms.attacks import AutoAttack
    >>> model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    >>> x = np.random.rand(8, 8, 8, 1).astype("float32"); y = np.arange(8)
    >>> evaluation = AutoAttack(eps=8 / 255, version="custom", attacks=["apgd-ce"], seed=0,
    ...                         verbose=0).evaluate(model, x, y)
    >>> evaluation.robust_accuracy <= evaluation.clean_accuracy
    True
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import warnings
from typing import Dict, List, Optional

import keras
import numpy as np
import tensorflow as tf

from tfnorms import _inputs
from tfnorms import _args
from tfnorms.attacks import _common, base, losses, projections
from tfnorms.attacks.apgd import APGD, share_compiled_runs
from tfnorms.attacks.fab import FAB
from tfnorms.attacks.square import Square

VERSIONS = ("standard", "rand", "custom")
ATTACK_NAMES = ("apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square")
STANDARD_ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")
RAND_ATTACKS = ("apgd-ce", "apgd-dlr")
_BALL_TOLERANCE = 1e-6
_SQUARE_ALPHA = 0.002  # the reference's threshold for the Square flag (a share of all points)


class AutoAttackWarning(UserWarning):
    """A sanity check of :class:`AutoAttack` failed: the evaluation may overstate robustness."""


@dataclasses.dataclass
class AutoAttackResult:
    """Per-point results and the report of one :meth:`AutoAttack.evaluate` call.

    Attributes:
        clean_correct: ``[n]`` bool, the clean point is classified correctly.
        robust: ``[n]`` bool, correct at the clean point and no attack broke it.
        broken_by: ``[n]`` str, the attack that broke the point (``"clean"`` if
            misclassified without attack, ``"non-finite"`` if the clean logits
            have a NaN or an Inf, ``""`` if robust).
        adversarial: ``[n, ...]`` float32, the verified adversarial example
            where a point was broken, the clean input otherwise.
        report: the JSON-safe report (see :meth:`AutoAttack.evaluate`).
    """

    clean_correct: np.ndarray
    robust: np.ndarray
    broken_by: np.ndarray
    adversarial: np.ndarray
    report: Dict

    @property
    def clean_accuracy(self) -> float:
        return float(self.clean_correct.mean())

    @property
    def robust_accuracy(self) -> float:
        return float(self.robust.mean())

    @property
    def flags(self) -> List[str]:
        return list(self.report["flags"])

    def to_json(self, path: str) -> None:
        """Writes :attr:`report` to ``path``."""
        with open(path, "w") as f:
            json.dump(self.report, f, indent=2)


def _materialize(x, y):
    if isinstance(x, tf.data.Dataset):
        if y is not None:
            raise ValueError("Invalid value for argument `y`. Expected None when `x` is a tf.data.Dataset of (x, y).")
        xs, ys = [], []
        for x_batch, y_batch in x:
            xs.append(np.asarray(x_batch))
            ys.append(np.asarray(y_batch))
        if not xs:
            raise ValueError("Invalid value for argument `x`. Expected a non-empty data set.")
        x, y = np.concatenate(xs), np.concatenate(ys)
    elif y is None:
        raise ValueError("Invalid value for argument `y`. Expected labels for the arrays in `x`. Received: y=None")
    x = _inputs.check_images(_inputs.check_nonempty(np.asarray(x)))
    y = np.asarray(y)
    if len(x) != len(y):
        raise ValueError(
            f"Invalid value for arguments `x`, `y`. Expected as many labels as inputs. "
            f"Received: {len(x)} inputs and {len(y)} labels"
        )
    return x.astype(np.float32), y


def _checked_attacks(version, attacks):
    """The ``attacks`` argument, checked against ``version``: ``None``, or for ``"custom"`` a list of names / attacks."""
    if version != "custom":
        if attacks is not None:
            raise ValueError(
                "Invalid value for argument `attacks`. Expected None unless version='custom' (the standard and "
                f"rand versions have fixed attack lists). Received: attacks={attacks!r} with version={version!r}"
            )
        return None
    if not attacks or isinstance(attacks, (str, bytes)):
        raise ValueError(
            "Invalid value for argument `attacks`. Expected a non-empty list of attack names "
            f"{', '.join(repr(n) for n in ATTACK_NAMES)} or attack objects for version='custom'. "
            f"Received: attacks={attacks!r}"
        )
    for attack in attacks:
        if isinstance(attack, str) and attack not in ATTACK_NAMES:
            raise ValueError(
                f"Invalid value for argument `attacks`. Expected names from "
                f"{', '.join(repr(n) for n in ATTACK_NAMES)} or attack objects. Received: {attack!r}"
            )
        if not isinstance(attack, str) and not callable(attack):
            raise ValueError(
                f"Invalid value for argument `attacks`. Expected names or callables "
                f"`attack(model, x, y) -> x_adv`. Received: {attack!r}"
            )
    return list(attacks)


def _stacklevel_outside() -> int:
    """The ``stacklevel`` (seen from the caller) of the first frame outside this module: the user's call."""
    frame, level = sys._getframe(1), 1  # the caller (level 1) is in this module
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        frame, level = frame.f_back, level + 1
    return level


def _candidate(attack, model, x_batch, y_batch, seed):
    """``attack``'s adversarial points for one batch; attacks with restarts get the cascade's per-call seed."""
    if isinstance(attack, base.RestartAttack):
        return attack.run(model, x_batch, y_batch, seed=seed).adversarial
    return attack(model, x_batch, y_batch)


@dataclasses.dataclass
class _Evaluation:
    """The state of one :meth:`AutoAttack.evaluate` call: data, clean pass, per-point results, counts, flags."""

    x: np.ndarray
    labels: np.ndarray
    num_classes: int
    seed: int
    flags: List[str] = dataclasses.field(default_factory=list)
    clean_correct: Optional[np.ndarray] = None
    non_finite: int = 0
    robust: Optional[np.ndarray] = None
    broken_by: Optional[np.ndarray] = None
    adversarial: Optional[np.ndarray] = None
    robust_after: Dict[str, float] = dataclasses.field(default_factory=dict)
    broken_count: Dict[str, int] = dataclasses.field(default_factory=dict)
    rejected_count: Dict[str, int] = dataclasses.field(default_factory=dict)
    seconds: Dict[str, float] = dataclasses.field(default_factory=dict)


@keras.saving.register_keras_serializable(package="tfnorms")
class AutoAttack(base.Attack):
    """AutoAttack l_inf: a cascade of attacks, per-point results, robust accuracy, sanity flags and a report.

    Versions (docs/theory.md#autoattack):

    * ``"standard"``: APGD-CE (100 iterations, 1 restart), APGD-T (targeted
      DLR, 9 target classes), FAB-T (9 target classes), Square (5000 queries).
    * ``"rand"``: for randomised models, APGD-CE and APGD-DLR with gradients
      averaged over 20 forward passes (EOT), 1 restart each.
    * ``"custom"``: the attacks in ``attacks``: names from
      ``"apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square"`` or attack
      objects (:class:`APGD`, :class:`FAB`, :class:`Square`, :class:`PGD`, or
      any callable ``attack(model, x, y) -> x_adv``). A
      :class:`~tfnorms.attacks.RestartAttack` gets a per-call seed derived
      from ``seed``; other attacks are called as they are.

    Sanity checks (as the reference's flags): outputs that look like
    probabilities (rows >= 0 summing to 1: pass logits), randomness in the
    forward pass (use ``version="rand"``), points with a zero input gradient
    (gradient masking), Square breaking more than 0.2% of the points after the
    white-box attacks failed on them (gradient masking), and fewer classes
    than targets. Each failed check emits an :class:`AutoAttackWarning` and is
    listed in the report's ``"flags"``.

    AutoAttack is itself an :class:`~tfnorms.attacks.Attack`:
    ``auto(model, x, y)`` returns the verified adversarial examples (the clean
    input where no attack succeeded), eagerly.

    Args:
        eps: l_inf radius (e.g. ``8 / 255`` or ``0.031``); the only positional argument.
        version: ``"standard"``, ``"rand"`` or ``"custom"``.
        attacks: the attack list of ``version="custom"`` (must be ``None`` otherwise).
        seed: an int for a reproducible evaluation. ``None`` draws a seed,
            which is recorded in the report so the run can be repeated.
        batch_size: points per attack call.
        n_iter: iterations of APGD and FAB (100 in the standard version).
        n_queries: queries of Square (5000 in the standard version). Smaller
            budgets give a weaker evaluation; the report records both.
        verbose: 1 shows a progress bar per attack, 0 is silent.

    Example:
        >>> AutoAttack(8 / 255).attack_names
        ['apgd-ce', 'apgd-t', 'fab-t', 'square']
    """

    name = "autoattack"

    def __init__(
        self,
        eps,
        *,
        version="standard",
        attacks=None,
        seed=None,
        batch_size=256,
        n_iter=100,
        n_queries=5000,
        verbose=1,
    ):
        self.eps = _args.positive(eps, "eps")
        if version not in VERSIONS:
            raise ValueError(
                f"Invalid value for argument `version`. Expected one of 'standard', 'rand', 'custom'. "
                f"Received: version={version!r}"
            )
        self.version = version
        self.attacks = _checked_attacks(version, attacks)
        self.seed = _args.integer(seed, "seed", allow_none=True)
        self.batch_size = _args.positive_int(batch_size, "batch_size")
        self.n_iter = _args.positive_int(n_iter, "n_iter")
        self.n_queries = _args.positive_int(n_queries, "n_queries")
        if verbose not in (0, 1, 2, True, False):
            raise ValueError(f"Invalid value for argument `verbose`. Expected 0, 1 or 2. Received: verbose={verbose!r}")
        self.verbose = int(verbose)
        self._attack_cache = None
        self._clean_pass = _common.AnyBatchFunction(self._clean_outputs)
        self._predict = _common.AnyBatchFunction(self._predictions)

    # ------------------------------------------------------------------ attacks
    def _build(self, name):
        eps, n_iter = self.eps, self.n_iter
        if name == "apgd-ce":
            return APGD(eps, "ce", n_iter=n_iter, eot_iter=20 if self.version == "rand" else 1)
        if name == "apgd-dlr":
            return APGD(eps, "dlr", n_iter=n_iter, eot_iter=20 if self.version == "rand" else 1)
        if name == "apgd-t":
            return APGD(eps, "dlr", targeted=True, n_iter=n_iter, n_target_classes=9)
        if name == "fab-t":
            return FAB(eps, n_target_classes=9, n_iter=n_iter)
        return Square(eps, n_queries=self.n_queries, p_init=0.8)

    def _attack_list(self):
        # Built once and reused, so their compiled runs are traced once per model and shape.
        if self._attack_cache is None:
            self._attack_cache = self._make_attack_list()
        return self._attack_cache

    def _make_attack_list(self):
        if self.version == "standard":
            items = list(STANDARD_ATTACKS)
        elif self.version == "rand":
            items = list(RAND_ATTACKS)
        else:
            items = self.attacks
        named, seen = [], {}
        for item in items:
            attack = self._build(item) if isinstance(item, str) else item
            name = item if isinstance(item, str) else self._name_of(attack)
            seen[name] = seen.get(name, 0) + 1
            named.append((name if seen[name] == 1 else f"{name}_{seen[name]}", attack))
        # The APGD attacks built here (not the caller's objects) share one compiled run: one trace, not one each.
        share_compiled_runs([attack for item, (_, attack) in zip(items, named) if isinstance(item, str)])
        return named

    @staticmethod
    def _name_of(attack) -> str:
        """An :class:`~tfnorms.attacks.Attack`'s ``name``; for other callables their type's name in lower case."""
        return attack.name if isinstance(attack, base.Attack) else type(attack).__name__.lower()

    @property
    def attack_names(self) -> List[str]:
        """Names of the attacks run, in cascade order."""
        return [name for name, _ in self._attack_list()]

    def tracing_counts(self) -> Dict[str, int]:
        """How often each compiled function of the cascade has been traced so far (a profiling aid).

        Each is traced once per model and input shape, for any number of
        points (:class:`~tfnorms.attacks._common.AnyBatchFunction`); the APGD
        attacks of the standard and rand versions share one compiled run
        (:func:`~tfnorms.attacks.apgd.share_compiled_runs`), so each of them
        shows that run's count; attacks
        that have not run yet count 0, attacks that are not
        :class:`~tfnorms.attacks.RestartAttack` are left out.

        Example:
            >>> AutoAttack(8 / 255).tracing_counts()
            {'clean_pass': 0, 'predict': 0, 'apgd-ce': 0, 'apgd-t': 0, 'fab-t': 0, 'square': 0}
        """
        counts = {"clean_pass": self._clean_pass.tracing_count(), "predict": self._predict.tracing_count()}
        for name, attack in self._attack_list():
            if isinstance(attack, base.RestartAttack):
                counts[name] = attack.tracing_count()
        return counts

    # ------------------------------------------------------------------ checks
    @staticmethod
    def _clean_outputs(model, x, y):
        with tf.GradientTape() as tape:
            tape.watch(x)
            outputs = _common.logits(model, x)
            loss = tf.reduce_sum(losses.cross_entropy(outputs, y))
        gradient = tape.gradient(loss, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return outputs, projections.per_example_norm(gradient, 1)

    @staticmethod
    def _predictions(model, x):
        """Arg-max class and whether the logits are finite (``[batch]`` each)."""
        outputs = _common.logits(model, x)
        return tf.argmax(outputs, axis=-1), _inputs.finite_rows(outputs)

    def _flag(self, flags, message):
        if message in flags:  # e.g. the same attack on several batches
            return
        flags.append(message)
        warnings.warn(f"AutoAttack sanity check: {message}", AutoAttackWarning, stacklevel=_stacklevel_outside())

    def _load(self, model, x, y) -> _Evaluation:
        """The data in memory, checked (images, labels against the model's classes), and the evaluation's seed."""
        x, y = _materialize(x, y)
        seed = self.seed if self.seed is not None else _common.fresh_seed()
        num_classes = int(_common.logits(model, tf.constant(x[:1])).shape[-1])
        labels = _common.class_ids(_inputs.check_labels(y, num_classes, batch_size=len(x))).numpy()
        return _Evaluation(x, labels, num_classes, seed)

    def _clean_pass_in_batches(self, model, ev: _Evaluation):
        """Clean logits and the l1 norms of the input gradients of the cross-entropy, in batches."""
        outputs, gradient_norms, bs = [], [], self.batch_size
        for start in range(0, len(ev.x), bs):
            out, grad = self._clean_pass(
                model, tf.constant(ev.x[start:start + bs]), tf.constant(ev.labels[start:start + bs])
            )
            outputs.append(out.numpy())
            gradient_norms.append(grad.numpy())
        return np.concatenate(outputs), np.concatenate(gradient_norms)

    def _check_model_outputs(self, model, ev: _Evaluation, clean_outputs):
        """Flags outputs that look like probabilities, and forward passes that differ (a randomised model)."""
        if (clean_outputs.min() >= 0.0 and clean_outputs.max() <= 1.0
                and np.all(np.abs(clean_outputs.sum(-1) - 1.0) <= 1e-5)):
            self._flag(ev.flags, "the model outputs look like probabilities (non-negative rows summing to 1). "
                                 "Attacks need logits: remove the final softmax.")
        if self.version != "rand":
            first = ev.x[:self.batch_size]
            repeats = [np.asarray(_common.logits(model, tf.constant(first))) for _ in range(2)]
            repeats.append(clean_outputs[:self.batch_size])
            normalised = [r / (np.linalg.norm(r, axis=-1, keepdims=True) + 1e-10) for r in repeats]
            differences = max(np.abs(a - b).max() for a in normalised for b in normalised)
            predictions_differ = any((a.argmax(-1) != repeats[0].argmax(-1)).any() for a in repeats)
            if differences > 1e-4 or predictions_differ:
                self._flag(ev.flags, "two forward passes on the same inputs differ: the model is randomised "
                                     "(or runs dropout / batch statistics at inference). Use version='rand'.")

    def _check_clean_points(self, ev: _Evaluation, clean_outputs, gradient_norms):
        """Which points are correct at the clean input; flags non-finite logits and zero input gradients.

        A point whose clean logits are not all finite has no prediction: never
        correct, never broken by an attack (``broken_by`` ``"non-finite"``),
        counted in the report and flagged.
        """
        finite = np.all(np.isfinite(clean_outputs), axis=-1)
        ev.non_finite = int(np.sum(~finite))
        if ev.non_finite:
            self._flag(ev.flags, f"{ev.non_finite} points have non-finite clean logits (NaN or Inf): they count as "
                                 "neither correct nor broken (broken_by 'non-finite'). Check the model's weights and "
                                 "numerics.")
        ev.clean_correct = np.logical_and(finite, clean_outputs.argmax(-1) == ev.labels)
        zero_gradient = int(np.sum(np.logical_and(gradient_norms == 0.0, ev.clean_correct)))
        if zero_gradient:
            self._flag(ev.flags, f"{zero_gradient} correctly classified points have a zero input gradient; "
                                 "gradient-based attacks are unreliable on them (gradient masking).")
        ev.robust = ev.clean_correct.copy()
        ev.broken_by = np.where(ev.clean_correct, "", np.where(finite, "clean", "non-finite")).astype(object)
        ev.adversarial = ev.x.copy()

    def _check_targets(self, ev: _Evaluation):
        """Flags targeted attacks that ask for more target classes than the model has classes other than the label."""
        capped = [(name, attack.n_target_classes) for name, attack in self._attack_list()
                  if isinstance(attack, base.RestartAttack) and attack.targeted
                  and attack.target_classes(ev.num_classes) < attack.n_target_classes]
        if capped:
            self._flag(ev.flags, f"the model has {ev.num_classes} classes, fewer than "
                                 f"{max(n for _, n in capped)} + 1: the targeted attacks "
                                 f"({', '.join(name for name, _ in capped)}) use {ev.num_classes - 1} target classes.")

    def _check_square(self, ev: _Evaluation):
        """Flags Square (black-box) breaking more than 0.2% of the points on which the white-box attacks failed."""
        names = list(ev.robust_after)
        if "square" not in names or len(names) < 2 or names.index("square") == 0:
            return
        before_square = ev.robust_after[names[names.index("square") - 1]]
        if ev.robust_after["square"] < before_square - _SQUARE_ALPHA:
            self._flag(ev.flags, f"Square, a black-box attack, broke {ev.broken_count['square']} points "
                                 f"({before_square - ev.robust_after['square']:.2%}) on which the white-box attacks "
                                 "failed: the gradients are likely masked or obfuscated.")

    # ------------------------------------------------------------------ the cascade
    def _verify(self, model, ev: _Evaluation, name, batch, candidate):
        """Counts the points of ``batch`` that ``candidate`` breaks, after checking them.

        A candidate must be finite and inside the eps-ball and [0, 1] (the
        projection only removes float round-off), then misclassified with
        finite logits. A NaN / Inf point or prediction is never a break.
        """
        xb = tf.constant(ev.x[batch])
        candidate = np.asarray(candidate, np.float32).reshape(xb.shape)
        finite_point = np.all(np.isfinite(candidate.reshape(len(batch), -1)), axis=1)
        candidate = np.where(_common.broadcast(finite_point, xb).numpy(), candidate, ev.x[batch])
        projected = projections.project(candidate, xb, self.eps, np.inf).numpy()
        if np.abs(projected - candidate).max() > _BALL_TOLERANCE:
            self._flag(ev.flags, f"{name} returned points outside the eps-ball or [0, 1]; they were projected "
                                 "back before checking.")
        prediction, finite_logits = (v.numpy() for v in self._predict(model, tf.constant(projected)))
        valid = np.logical_and(finite_point, finite_logits)
        fooled = np.logical_and(valid, prediction != ev.labels[batch])
        ev.rejected_count[name] += int(np.sum(~valid))
        broken = batch[fooled]
        ev.robust[broken] = False
        ev.broken_by[broken] = name
        ev.adversarial[broken] = projected[fooled]
        ev.broken_count[name] += int(fooled.sum())

    def _run_attack(self, model, ev: _Evaluation, attack_index, name, attack):
        """One attack of the cascade, in batches, on the points still robust."""
        attack_start = time.time()
        indices = np.flatnonzero(ev.robust)
        ev.broken_count[name] = ev.rejected_count[name] = 0
        reason = attack.unmet_requirement(ev.num_classes) if isinstance(attack, base.RestartAttack) else None
        if reason:
            self._flag(ev.flags, f"{name} skipped: {reason}.")
            return
        progress = keras.utils.Progbar(len(indices), verbose=self.verbose, unit_name="point") if self.verbose else None
        if self.verbose:
            print(f"{name}: {len(indices)} points left")
        for batch_number, start in enumerate(range(0, len(indices), self.batch_size)):
            batch = indices[start:start + self.batch_size]
            call_seed = ev.seed + 1_000_003 * (attack_index + 1) + batch_number
            candidate = _candidate(attack, model, tf.constant(ev.x[batch]), tf.constant(ev.labels[batch]), call_seed)
            self._verify(model, ev, name, batch, candidate)
            if progress is not None:
                progress.add(len(batch), values=[("robust_accuracy", float(ev.robust.mean()))])
        if ev.rejected_count[name]:
            self._flag(ev.flags, f"{name} returned {ev.rejected_count[name]} points with NaN / Inf values or "
                                 "non-finite logits; they were not counted as broken.")
        ev.robust_after[name] = float(ev.robust.mean())
        ev.seconds[name] = round(time.time() - attack_start, 3)
        if self.verbose:
            print(f"robust accuracy after {name}: {ev.robust.mean():.2%} ({ev.seconds[name]:.1f} s)")

    def _report(self, model, ev: _Evaluation, model_name, dataset, start_time) -> Dict:
        """The JSON-safe report of :meth:`evaluate`."""
        robust_accuracy = float(ev.robust.mean())
        return {
            "name": model_name or getattr(model, "name", type(model).__name__),
            "dataset": dataset,
            "threat_model": "Linf",
            "eps": self.eps,
            "clean_acc": f"{100 * ev.clean_correct.mean():.2f}",
            "autoattack_acc": f"{100 * robust_accuracy:.2f}",
            "clean_accuracy": float(ev.clean_correct.mean()),
            "robust_accuracy": robust_accuracy,
            "robust_accuracy_per_attack": ev.robust_after,
            "points_broken_per_attack": ev.broken_count,
            "non_finite_points": ev.non_finite,
            "non_finite_candidates_per_attack": ev.rejected_count,
            "seconds_per_attack": ev.seconds,
            "version": self.version,
            "attacks": [
                {"name": name, "config": attack.get_config() if isinstance(attack, base.Attack) else repr(attack)}
                for name, attack in self._attack_list()
            ],
            "n_iter": self.n_iter,
            "n_queries": self.n_queries,
            "n_points": len(ev.x),
            "seed": ev.seed,
            "flags": ev.flags,
            "seconds": round(time.time() - start_time, 3),
            "library": "tfnorms",
            "tensorflow": tf.__version__,
        }

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, model, x, y=None, *, model_name: Optional[str] = None, dataset: Optional[str] = None):
        """Runs the cascade on a whole data set, in batches.

        Args:
            model: a callable returning **logits** for inputs in [0, 1]
                (``keras.Model``; called with ``training=False``).
            x: ``[n, H, W, C]`` inputs in [0, 1], or a ``tf.data.Dataset`` of
                batched ``(x, y)`` (materialised in memory).
            y: class ids (or one-hot rows) for array inputs.
            model_name: name in the report (default: ``model.name``).
            dataset: data set name in the report.

        Returns:
            An :class:`AutoAttackResult`. Its ``report`` holds, in the field
            names of RobustBench's model cards, ``name``, ``dataset``,
            ``threat_model``, ``eps``, ``clean_acc`` and ``autoattack_acc``
            (percent, two decimals, as strings), plus ``clean_accuracy`` and
            ``robust_accuracy`` (fractions), ``robust_accuracy_per_attack``
            (after each attack of the cascade), ``points_broken_per_attack``,
            ``seconds_per_attack``, ``version``, ``attacks`` (their configs),
            ``n_points``, ``seed``, ``flags`` and ``seconds``.

            Non-finite predictions are never counted as correct nor as broken:
            points whose clean logits have a NaN or an Inf are not correct,
            ``broken_by == "non-finite"``, counted in ``non_finite_points``;
            an attack's output point with NaN / Inf values, or whose logits are
            not finite, is not a break (the point stays robust unless another
            attack breaks it) and is counted in
            ``non_finite_candidates_per_attack``. Both come with a flag.

        Raises:
            ValueError: for an empty data set, images that are not floats in
                [0, 1], or labels that are not class ids / distribution rows
                of the model's classes (``tfnorms._inputs``).

        Example:
            >>> import numpy as np, keras
            >>> model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(5)])
            >>> x = np.random.rand(4, 4, 4, 1).astype("float32")
            >>> result = AutoAttack(0.05, version="custom", attacks=["apgd-ce"], n_iter=2, seed=0,
            ...                     verbose=0).evaluate(model, x, np.arange(4))
            >>> result.report["n_points"], result.report["seed"]
            (4, 0)
        """
        start_time = time.time()
        ev = self._load(model, x, y)
        clean_outputs, gradient_norms = self._clean_pass_in_batches(model, ev)
        self._check_model_outputs(model, ev, clean_outputs)
        self._check_clean_points(ev, clean_outputs, gradient_norms)
        self._check_targets(ev)
        if self.verbose:
            print(f"AutoAttack ({self.version}, eps={self.eps:.5g}, seed={ev.seed}) on {len(ev.x)} points: "
                  f"clean accuracy {ev.clean_correct.mean():.2%}")
        for attack_index, (name, attack) in enumerate(self._attack_list()):
            self._run_attack(model, ev, attack_index, name, attack)
        self._check_square(ev)
        report = self._report(model, ev, model_name, dataset, start_time)
        return AutoAttackResult(ev.clean_correct, ev.robust, ev.broken_by.astype(str), ev.adversarial, report)

    def run(self, model, x, y=None, *, clean_logits=None) -> AutoAttackResult:
        """The :class:`~tfnorms.attacks.Attack` entry point: :meth:`evaluate` (``clean_logits`` are not read)."""
        del clean_logits
        return self.evaluate(model, x, y)

    def get_config(self):
        """JSON-safe constructor arguments (custom attack objects serialised with Keras)."""
        return {
            "eps": self.eps,
            "version": self.version,
            "attacks": base.serialize(self.attacks),
            "seed": self.seed,
            "batch_size": self.batch_size,
            "n_iter": self.n_iter,
            "n_queries": self.n_queries,
            "verbose": self.verbose,
        }
