"""Building blocks of the paper studies in ``examples/``: training, evaluation, norms, tables, plots.

The studies (``examples/width_study.py``, ``examples/norm_regularization.py``,
``examples/compare_norms.py``) are thin flag parsers over these functions, so
each piece is tested once and usable from a notebook:

* :func:`build_classifier`: a model of :mod:`tfnorms.models` by name.
* :func:`train_classifier`: natural (cross-entropy) or adversarial training
  (:class:`tfnorms.AdversarialTrainer`) with the reference SGD set-up, and
  optional norm decay, coupled weight decay or singular value clipping.
* :func:`evaluation_attacks`, :func:`evaluate`: clean and robust accuracy and
  perturbation stability, worst case over several attacks per example.
* :func:`mean_local_lipschitz`, :func:`layer_norms`: Wu et al.'s local
  Lipschitz estimate and per-layer exact operator norms as plain floats.
* :func:`format_table`, :func:`write_json`, and ``plot_*`` (matplotlib, an
  optional dependency: ``pip install tfnorms[examples]``).

Example:
    >>> from tfnorms import data, experiments
    >>> info = data.dataset_info("digits")
    >>> model = experiments.build_classifier("small_cnn", info, width=4)
    >>> model.output_shape
    (None, 10)
"""

from __future__ import annotations

import json
import math
import os
import warnings
from typing import Dict, Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from tfnorms import attacks, callbacks, metrics, models, norms, optimization, regularizers
from tfnorms.training import AdversarialTrainer

__all__ = [
    "build_classifier",
    "evaluate",
    "evaluation_attacks",
    "format_table",
    "layer_norms",
    "mean_local_lipschitz",
    "plot_layer_norms",
    "plot_metrics_vs_width",
    "plot_accuracies",
    "plot_lambda_schedules",
    "plot_norm_distributions",
    "train_classifier",
    "write_json",
]

TRAINING_METHODS = ("natural", "pgd", "pgd_lambda", "trades", "mart", "alp")


# Liang & Huang's four CIFAR models (docs/theory.md#reference-models), built by name with no size arguments.
_FIXED_ARCHITECTURES = {
    "preact_resnet18": models.preact_resnet18,
    "vgg11": models.vgg11,
    "resnet18": models.resnet18,
    "senet18": models.senet18,
    "regnetx_200mf": models.regnetx_200mf,
}
CLASSIFIERS = ("wrn", "small_cnn", *_FIXED_ARCHITECTURES)


def build_classifier(name, info, depth=34, width=10):
    """A model of :mod:`tfnorms.models` for the data set described by ``info``.

    Args:
        name: one of :data:`CLASSIFIERS`: ``"wrn"`` (WideResNet-``depth``-``width``),
            ``"small_cnn"`` (base width ``width``), ``"preact_resnet18"``, or
            Liang & Huang's ``"vgg11"``, ``"resnet18"``, ``"senet18"``,
            ``"regnetx_200mf"``.
        info: a :class:`tfnorms.data.DatasetInfo` (classes and image shape).
        depth: WideResNet depth.
        width: WideResNet widening factor or small-CNN base width.
    """
    if name == "wrn":
        return models.wide_resnet(depth, width, info.num_classes, info.image_shape)
    if name == "small_cnn":
        return models.small_cnn(info.num_classes, info.image_shape, width=width)
    if name in _FIXED_ARCHITECTURES:
        return _FIXED_ARCHITECTURES[name](info.num_classes, info.image_shape)
    raise ValueError(
        f"Invalid value for argument `name`. Expected one of {', '.join(map(repr, CLASSIFIERS))}. "
        f"Received: name={name!r}"
    )


def train_classifier(
    classifier,
    train_ds,
    *,
    method="natural",
    epochs=1,
    lr=0.1,
    momentum=0.9,
    milestones=(),
    weight_decay=0.0,
    beta=None,
    attack=None,
    norm_decay=None,
    norm_decay_momentum=0.5,
    svc=None,
    extra_callbacks=(),
    validation_data=None,
    verbose=0,
):
    """Trains ``classifier`` in place; returns the Keras ``History.history`` dict.

    Args:
        classifier: a ``keras.Model`` returning logits.
        train_ds: batched ``(images, labels)`` training data.
        method: ``"natural"`` (cross-entropy) or a :class:`tfnorms.AdversarialTrainer` method.
        epochs: training epochs.
        lr: initial SGD learning rate (multiplied by 0.1 at every milestone).
        momentum: SGD momentum.
        milestones: 1-based epochs of the x0.1 steps (:func:`tfnorms.optimization.piecewise_learning_rate`).
        weight_decay: coupled (PyTorch-style) L2 weight decay on every variable.
        beta: robust-term weight (method default if ``None``).
        attack: training attack (the trainer's reference PGD-10 if ``None``).
        norm_decay: ``None`` or ``("l1" | "linf", factor)``: Liang & Huang's norm decay on
            every Conv2D/Dense kernel, with their decaying memory ``norm_decay_momentum``.
        norm_decay_momentum: memory of :class:`tfnorms.NormDecayMomentum` (0.5 in the paper).
        svc: ``None`` or ``(clip_to, every_n_steps)``: singular value clipping.
        extra_callbacks: further Keras callbacks (e.g. a WAR schedule).
        validation_data: optional data for ``fit``'s validation.
        verbose: ``fit`` verbosity.
    """
    if method not in TRAINING_METHODS:
        raise ValueError(
            f"Invalid value for argument `method`. Expected one of {TRAINING_METHODS}. Received: method={method!r}"
        )
    steps_per_epoch = int(train_ds.cardinality())
    if steps_per_epoch < 1:
        raise ValueError("`train_ds` must have a known, positive number of batches.")
    if norm_decay is not None:
        ord, factor = norm_decay
        regularizers.add_norm_decay(classifier, factor, ord={"l1": 1, "linf": np.inf}[ord])
    optimization.add_coupled_weight_decay(classifier, weight_decay)
    schedule = optimization.piecewise_learning_rate(lr, steps_per_epoch, [m for m in milestones if m <= epochs])
    optimizer = keras.optimizers.SGD(schedule, momentum=momentum)
    if norm_decay is not None and norm_decay_momentum > 0:
        optimizer = regularizers.NormDecayMomentum(optimizer, momentum=norm_decay_momentum)
    if method == "natural":
        model = classifier
        model.compile(
            optimizer,
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="clean_accuracy")],
        )
    else:
        model = AdversarialTrainer(classifier, method=method, beta=None if method == "pgd" else beta, attack=attack)
        model.compile(optimizer)
    fit_callbacks = list(extra_callbacks)
    if svc is not None:
        clip_to, every = svc
        fit_callbacks.append(callbacks.SingularValueClipping(clip_to, every_n_steps=every))
    with warnings.catch_warnings():
        # Keras' notice at the end of a finite data set; other warnings (e.g. layers that
        # SingularValueClipping skips) stay visible.
        warnings.filterwarnings("ignore", message=".*ran out of data.*", category=UserWarning)
        # shuffle=False: the tf.data pipeline shuffles (Keras would warn that it ignores shuffle=True).
        history = model.fit(train_ds, epochs=epochs, callbacks=fit_callbacks, validation_data=validation_data,
                            verbose=verbose, shuffle=False)
    return {key: [float(v) for v in values] for key, values in history.history.items()}


def training_attack(method, eps, step_size, steps, seed=None):
    """The reference training attack: PGD from ``x + 0.001 N``, KL loss for TRADES, CE otherwise."""
    loss = "kl" if method == "trades" else "ce"
    return attacks.PGD(eps, step_size, steps, loss=loss, random_start="normal", seed=seed)


def evaluation_attacks(eps, steps=20, step_size=None, kind="pgd", seed=0, apgd_iter=100, n_target_classes=9):
    """Evaluation attacks by name.

    ``kind="pgd"``: ``{"pgd<steps>": PGD}`` (uniform start, CE, final
    iterate). ``kind="apgd"``: APGD-CE and APGD-T (Liang & Huang's reduced
    AutoAttack; ``apgd_iter`` iterations each, 100 in the standard version,
    ``n_target_classes`` targets for APGD-T) when :mod:`tfnorms.attacks`
    provides ``APGD``; otherwise it falls back to PGD plus CW with a warning.
    The returned names say which attacks ran.
    """
    step_size = step_size if step_size is not None else eps / 4
    if kind == "apgd":
        apgd = getattr(attacks, "APGD", None)
        if apgd is not None:
            try:
                return {"apgd-ce": apgd(eps=eps, loss="ce", n_iter=apgd_iter, seed=seed),
                        "apgd-t": apgd(eps=eps, loss="dlr", targeted=True, n_iter=apgd_iter,
                                       n_target_classes=n_target_classes, seed=seed)}
            except TypeError as error:  # an APGD with another signature
                warnings.warn(f"tfnorms.attacks.APGD could not be built ({error}); using PGD + CW.")
        else:
            warnings.warn("tfnorms.attacks has no APGD yet: robust accuracy uses PGD + CW (worst case).")
        return {f"pgd{steps}": attacks.PGD(eps, step_size, steps, random_start="uniform", seed=seed),
                f"cw{steps}": attacks.CW(eps, step_size, steps, seed=seed)}
    if kind != "pgd":
        raise ValueError(f"Invalid value for argument `kind`. Expected 'pgd' or 'apgd'. Received: kind={kind!r}")
    return {f"pgd{steps}": attacks.PGD(eps, step_size, steps, random_start="uniform", seed=seed)}


def evaluate(classifier, dataset, attack_dict: Mapping[str, object], max_examples=None) -> Dict[str, float]:
    """One table row of :func:`tfnorms.metrics.evaluate`: worst case over ``attack_dict`` and per attack.

    Returns:
        ``{"clean_accuracy", "robust_accuracy", "stability", "examples",
        "<name>_robust_accuracy", "<name>_stability", ...}``.
    """
    return metrics.evaluate(classifier, dataset, attack_dict, max_examples=max_examples).flat()


def mean_local_lipschitz(classifier, dataset, eps, step_size, steps=10, max_examples=256, seed=0) -> float:
    """Mean over examples of Wu et al.'s local-Lipschitz estimate (:func:`tfnorms.metrics.local_lipschitz`)."""
    values = []
    for x, _ in dataset:
        if sum(len(v) for v in values) >= max_examples:
            break
        per_example = metrics.local_lipschitz(classifier, tf.cast(x, tf.float32), eps=eps, step_size=step_size,
                                              steps=steps, reduction="none", seed=seed)
        values.append(np.asarray(per_example))
    return float(np.mean(np.concatenate(values)[:max_examples]))


def layer_norms(classifier, ord=1) -> Dict[str, float]:
    """Exact per-layer operator norms (Conv2D, Dense, BatchNorm) as ``{layer.path: float}``, in layer order."""
    return {path: float(value) for path, value in norms.model_norms(classifier, ord, on_unsupported="ignore").items()}


def write_json(path, payload):
    """Writes ``payload`` as indented JSON (NaN/inf become null), creating the directory."""

    def clean(value):
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        if isinstance(value, (np.floating, float)):
            return None if not math.isfinite(float(value)) else float(value)
        if isinstance(value, np.integer):
            return int(value)
        return value

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(clean(payload), f, indent=2)
    return path


def format_table(rows: Sequence[Mapping], columns: Sequence[str], floatfmt="{:.4f}") -> str:
    """A Markdown table of ``rows`` (dicts) with the given ``columns``.

    Example:
        >>> print(format_table([{"a": 1, "b": 0.5}], ["a", "b"]))
        | a | b |
        |---|---|
        | 1 | 0.5000 |
    """

    def cell(value):
        if isinstance(value, float):
            return "nan" if math.isnan(value) else floatfmt.format(value)
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def _pyplot():
    try:
        import matplotlib
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("The study plots need matplotlib: pip install tfnorms[examples]") from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_metrics_vs_width(results: Mapping[str, Sequence[Mapping]], path, metrics_to_plot=None, title=None):
    """One panel per metric against width, one line per schedule (like Wu et al.'s Figure 3(d)).

    Args:
        results: ``{schedule label: [row, ...]}`` with ``row["width"]`` and the metrics.
        path: PNG file to write.
        metrics_to_plot: ``[(key, label), ...]``; default natural accuracy,
            robust accuracy, stability and the local-Lipschitz estimate.
    """
    plt = _pyplot()
    metrics_to_plot = metrics_to_plot or [
        ("clean_accuracy", "natural accuracy"),
        ("robust_accuracy", "PGD-20 robust accuracy"),
        ("stability", "perturbation stability"),
        ("local_lipschitz", "local Lipschitz (mean l1 grad)"),
    ]
    fig, axes = plt.subplots(1, len(metrics_to_plot), figsize=(4 * len(metrics_to_plot), 3.4))
    for ax, (key, label) in zip(np.atleast_1d(axes), metrics_to_plot):
        for schedule, rows in results.items():
            rows = sorted(rows, key=lambda r: r["width"])
            ax.plot([r["width"] for r in rows], [r[key] for r in rows], marker="o", label=schedule)
        ax.set_xlabel("width factor")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].legend()
    if title:
        fig.suptitle(title)
    return _save(plt, fig, path)


def _save(plt, fig, path):
    """Lays out, writes (PNG, 110 dpi) and closes a figure; returns ``path``."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _short(path):
    return path.split("/", 1)[-1] if "/" in path else path


def plot_layer_norms(runs: Mapping[str, Mapping[str, float]], path, ylabel="l1 operator norm", title=None,
                     log_scale=True):
    """Grouped bars: per-layer norms (x axis, layer order of the first run), one bar per run."""
    plt = _pyplot()
    labels = list(runs)
    layers = list(next(iter(runs.values())))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(layers) * max(1, len(labels)) / 2), 4.2))
    width = 0.8 / max(1, len(labels))
    x = np.arange(len(layers))
    for i, label in enumerate(labels):
        values = [runs[label].get(layer, np.nan) for layer in layers]
        ax.bar(x + (i - (len(labels) - 1) / 2) * width, values, width, label=label)
    ax.set_xticks(x)
    ax.set_xticklabels([_short(layer) for layer in layers], rotation=75, fontsize=7)
    ax.set_ylabel(ylabel)
    if log_scale:
        ax.set_yscale("log")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if title:
        ax.set_title(title)
    return _save(plt, fig, path)


def plot_norm_distributions(runs: Mapping[str, Sequence[float]], path, xlabel="l1 operator norm (log scale)",
                            title=None):
    """Distribution of all layer norms of each run, as empirical CDFs (readable with few layers, unlike histograms)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    for label, values in runs.items():
        values = np.sort(np.asarray(values, float))
        fraction = np.arange(1, len(values) + 1) / len(values)
        ax.step(values, fraction, where="post", marker="o", markersize=3, linewidth=1.6, label=label)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction of layers with norm <= x")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    if title:
        ax.set_title(title)
    return _save(plt, fig, path)


def load_study_data(dataset="digits", *, batch_size=64, image_size=16, data_dir=None, train_examples=0,
                    eval_examples=0, eval_batch_size=None, seed=0):
    """``(info, train_ds, test_ds)`` for a study; ``*_examples > 0`` keeps only that many (whole batches).

    ``eval_batch_size`` (default ``batch_size``) batches the test set; large
    test batches mean fewer re-traces of attacks that work on shrinking
    subsets (APGD).

    ``image_size`` applies to the embedded ``"digits"`` set only. The test
    pipeline keeps its last partial batch, so every test example is evaluated.
    """
    from tfnorms import data  # local: data imports tensorflow-datasets lazily, keep it that way

    digits = dataset == "digits"
    info = data.dataset_info(dataset, image_size if digits else None)
    size = dict(image_size=image_size) if digits else {}
    train_ds = data.load(dataset, "train", batch_size=batch_size, data_dir=data_dir, seed=seed, **size)
    eval_batch_size = eval_batch_size or batch_size
    if eval_examples:
        eval_batch_size = min(eval_batch_size, eval_examples)
    test_ds = data.load(dataset, "test", batch_size=eval_batch_size, data_dir=data_dir, drop_remainder=False, **size)
    if train_examples:
        train_ds = train_ds.take(max(1, train_examples // batch_size))
    if eval_examples:
        test_ds = test_ds.take(max(1, math.ceil(eval_examples / eval_batch_size)))
    return info, train_ds, test_ds


def plot_lambda_schedules(histories: Mapping[str, Mapping], path, fixed=None, proposals=None):
    """Lambda after every epoch of each run whose history has a ``"lambda"`` log (a WAR schedule).

    ``proposals`` (optional) maps the same run names to the per-epoch lambda the
    rule proposed before enlarge-only and clipping (``None`` for warm-up epochs),
    drawn dashed in the run's colour.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.4, 3.6))
    if fixed is not None:
        ax.axhline(fixed, color="gray", linestyle="--", label=f"fixed lambda {fixed:g}")
    for name, history in histories.items():
        if "lambda" in history:
            epochs = range(1, len(history["lambda"]) + 1)
            (line,) = ax.plot(epochs, history["lambda"], marker="o", label=f"{name}: lambda used")
            if proposals and name in proposals:
                values = [np.nan if v is None else v for v in proposals[name]]
                ax.plot(range(1, len(values) + 1), values, linestyle=":", marker="x", color=line.get_color(),
                        label=f"{name}: rule's proposal")
    ax.set_xlabel("epoch")
    ax.set_ylabel("lambda after the epoch")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(plt, fig, path)


def plot_accuracies(rows: Sequence[Mapping], path, label_key="run", title=None):
    """Grouped bars of clean and robust accuracy per run."""
    plt = _pyplot()
    labels = [str(r[label_key]) for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(rows) + 2), 3.8))
    ax.bar(x - 0.2, [r["clean_accuracy"] for r in rows], 0.4, label="clean")
    ax.bar(x + 0.2, [r["robust_accuracy"] for r in rows], 0.4, label="robust")
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return _save(plt, fig, path)
