"""Building blocks of the examples in ``examples/``: flags, training, evaluation, norms, tables, plots.

The main example (``examples/trades_cifar.py``), ``examples/evaluate.py`` and
the paper studies (``examples/width_study.py``,
``examples/norm_regularization.py``, ``examples/compare_norms.py``) are thin
flag parsers over these functions, so each piece is written and tested once
and is usable from a notebook:

* :func:`build_classifier`: a model of :mod:`tfnorms.models` by name.
* :func:`train_classifier`: natural (cross-entropy) or adversarial training
  (:class:`tfnorms.AdversarialTrainer`) with the reference SGD set-up, and
  optional norm decay, coupled weight decay or singular value clipping,
  TensorBoard and layer-norm logs, resumable backups, a distribution strategy.
* :func:`evaluation_attacks`, :func:`evaluate`: clean and robust accuracy and
  perturbation stability, worst case over several attacks per example
  (:func:`tfnorms.metrics.evaluate`).
* :func:`mean_local_lipschitz`, :func:`layer_norms`: Wu et al.'s local
  Lipschitz estimate and per-layer exact operator norms as plain floats.
* :func:`format_table`, :func:`write_json`, :func:`write_results`, and
  ``plot_*`` (matplotlib, an optional dependency: ``pip install tfnorms[examples]``).
* :func:`define_flags`, :func:`study_data`: the absl flags that the examples
  share, and a study's data from its flags.

Example:
    >>> from tfnorms import data, experiments
    >>> info = data.dataset_info("digits")
    >>> model = experiments.build_classifier("small_cnn", info, width=4)
    >>> model.output_shape
    (None, 10)
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import warnings
from typing import Dict, Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from tfnorms import _args, _keras, attacks, callbacks, metrics, models, norms, optimization, regularizers, resume
from tfnorms.training import AdversarialTrainer

__all__ = [
    "build_classifier",
    "define_flags",
    "evaluate",
    "evaluation_attacks",
    "format_table",
    "layer_norm_spreads",
    "layer_norms",
    "load_arrays",
    "load_evaluated_model",
    "mean_local_lipschitz",
    "norm_table",
    "plot_layer_norms",
    "plot_metrics_vs_width",
    "plot_accuracies",
    "plot_lambda_schedules",
    "plot_norm_distributions",
    "print_robustness_report",
    "robustness_report",
    "seed_values",
    "split_holdout",
    "study_data",
    "summarize_runs",
    "summarize_seeds",
    "over_seeds",
    "train_classifier",
    "write_json",
    "write_results",
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
    eval_attack=None,
    norm_decay=None,
    norm_decay_momentum=0.5,
    svc=None,
    extra_callbacks=(),
    validation_data=None,
    log_dir=None,
    backup_dir=None,
    strategy=None,
    jit_compile="auto",
    verbose=0,
):
    """Trains ``classifier`` in place; returns the Keras ``History.history`` dict.

    The one training pipeline of the examples: SGD with the step schedule,
    coupled weight decay, optional norm decay (with
    :class:`tfnorms.NormDecayMomentum`) or singular value clipping, natural
    training or a :class:`tfnorms.AdversarialTrainer`, and optionally
    TensorBoard curves, layer-norm traces and resumable backups.

    Args:
        classifier: a ``keras.Model`` returning logits (built in ``strategy``'s
            scope when ``strategy`` is given).
        train_ds: batched ``(images, labels)`` training data.
        method: ``"natural"`` (cross-entropy) or a :class:`tfnorms.AdversarialTrainer` method.
        epochs: training epochs.
        lr: initial SGD learning rate (multiplied by 0.1 at every milestone).
        momentum: SGD momentum.
        milestones: 1-based epochs of the x0.1 steps (:func:`tfnorms.optimization.piecewise_learning_rate`).
        weight_decay: coupled (PyTorch-style) L2 weight decay on every variable.
        beta: robust-term weight (method default if ``None``; ignored by ``"pgd"``).
        attack: training attack (the trainer's reference PGD-10 if ``None``; unused by ``"natural"``).
        eval_attack: the trainer's validation attack (its reference PGD-20 if
            ``None``; unused by ``"natural"``).
        norm_decay: ``None`` or ``(ord, factor)`` with ``ord`` one of ``"l1"``,
            ``"linf"``, ``"both"``: Liang & Huang's norm decay on every
            Conv2D/Dense kernel, with their decaying memory ``norm_decay_momentum``.
        norm_decay_momentum: memory of :class:`tfnorms.NormDecayMomentum` (0.5 in the paper; 0 = off).
        svc: ``None`` or ``(clip_to, every_n_steps)``: singular value clipping.
        extra_callbacks: further Keras callbacks (e.g. a WAR schedule), after
            the backup, TensorBoard and layer-norm callbacks and before singular
            value clipping.
        validation_data: optional data for ``fit``'s validation.
        log_dir: if set, TensorBoard curves and the l1 / l_inf layer-norm traces
            (:class:`tfnorms.callbacks.LayerNormLogger`) go there, flushed after every epoch.
        backup_dir: if set, a :class:`tfnorms.resume.AtomicBackupAndRestore`
            there (the first callback) backs up every epoch and resumes an
            interrupted run; wrap the call in :func:`tfnorms.resume.train_once`.
        strategy: the ``tf.distribute`` strategy the classifier was built with;
            the regularizers, optimizer and trainer are created in its scope.
            Under ``MultiWorkerMirroredStrategy`` only the chief writes to
            ``log_dir`` and ``backup_dir``; other workers write to their
            :func:`tfnorms.resume.worker_dir`.
        jit_compile: ``compile``'s XLA switch (Keras' ``"auto"`` by default).
        verbose: ``fit`` verbosity.
    """
    if method not in TRAINING_METHODS:
        raise ValueError(
            f"Invalid value for argument `method`. Expected one of {TRAINING_METHODS}. Received: method={method!r}"
        )
    steps_per_epoch = int(train_ds.cardinality())
    if steps_per_epoch < 1:
        raise ValueError("`train_ds` must have a known, positive number of batches.")
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        if norm_decay is not None:
            ord, factor = norm_decay
            regularizers.add_norm_decay(classifier, factor, ord=_NORM_DECAY_ORDS[ord])
        optimization.add_coupled_weight_decay(classifier, weight_decay)
        schedule = optimization.piecewise_learning_rate(lr, steps_per_epoch, [m for m in milestones if m <= epochs])
        optimizer = keras.optimizers.SGD(schedule, momentum=momentum)
        if norm_decay is not None and norm_decay_momentum > 0:
            optimizer = regularizers.NormDecayMomentum(optimizer, momentum=norm_decay_momentum)
        model = _compiled(classifier, method, optimizer, beta, attack, eval_attack, jit_compile)
    # Several workers: only the chief writes log_dir / backup_dir, the others their own directories.
    log_dir, backup_dir = (None if d is None else resume.worker_dir(d, strategy) for d in (log_dir, backup_dir))
    fit_callbacks = _callbacks(log_dir, backup_dir, extra_callbacks, svc)
    with warnings.catch_warnings():
        # Keras' notice at the end of a finite data set; other warnings (e.g. layers that
        # SingularValueClipping skips) stay visible.
        warnings.filterwarnings("ignore", message=".*ran out of data.*", category=UserWarning)
        # shuffle=False: the tf.data pipeline shuffles (Keras would warn that it ignores shuffle=True).
        history = model.fit(train_ds, epochs=epochs, callbacks=fit_callbacks, validation_data=validation_data,
                            verbose=verbose, shuffle=False)
    return {key: [float(v) for v in values] for key, values in history.history.items()}


_NORM_DECAY_ORDS = {"l1": 1, "linf": np.inf, "both": [1, np.inf]}


def _compiled(classifier, method, optimizer, beta, attack, eval_attack, jit_compile):
    """The compiled model that ``fit`` trains: ``classifier`` itself, or a trainer around it."""
    if method == "natural":
        # With several workers a plain Keras model cannot fit (keras-team/keras#20585): fit a wrapper that can.
        model = _keras.MultiWorkerClassifier(classifier) if _keras.in_multi_worker_mode() else classifier
        model.compile(
            optimizer,
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="clean_accuracy")],
            jit_compile=jit_compile,
        )
        return model
    trainer = AdversarialTrainer(classifier, method=method, beta=None if method == "pgd" else beta, attack=attack,
                                 eval_attack=eval_attack)
    trainer.compile(optimizer, jit_compile=jit_compile)
    return trainer


def _callbacks(log_dir, backup_dir, extra_callbacks, svc):
    """``fit``'s callbacks: backup first (an epoch is backed up, then logged), the logs, ``extra``, SVC, flush."""
    fit_callbacks = [resume.AtomicBackupAndRestore(backup_dir)] if backup_dir else []
    tensorboard = None
    if log_dir:
        tensorboard = keras.callbacks.TensorBoard(log_dir)
        fit_callbacks += [tensorboard, callbacks.LayerNormLogger(log_dir, ords=(1, np.inf))]
    fit_callbacks += list(extra_callbacks)
    if svc is not None:
        clip_to, every = svc
        fit_callbacks.append(callbacks.SingularValueClipping(clip_to, every_n_steps=every))
    if tensorboard is not None:
        fit_callbacks.append(resume.FlushTensorBoard(tensorboard))
    return fit_callbacks


def training_attack(method, eps, step_size, steps, seed=None):
    """The reference training attack: PGD from ``x + 0.001 N``, KL loss for TRADES, CE otherwise."""
    loss = "kl" if method == "trades" else "ce"
    return attacks.PGD(eps, step_size, steps, loss=loss, random_start="normal", seed=seed)


EVALUATION_KINDS = ("pgd", "pgd_cw", "apgd")


def evaluation_attacks(eps, steps=20, step_size=None, kind="pgd", seed=0, apgd_iter=100, n_target_classes=9):
    """Evaluation attacks by name, for :func:`tfnorms.metrics.evaluate`.

    Args:
        eps: l_inf radius.
        steps: PGD / CW steps.
        step_size: PGD / CW step (``eps / 4`` if ``None``).
        kind: ``"pgd"``: ``{"pgd<steps>": PGD}`` (uniform start, CE, final
            iterate); ``"pgd_cw"``: that PGD and ``"cw<steps>"``, CW with the
            same steps; ``"apgd"``: ``{"apgd-ce", "apgd-t"}``, Liang & Huang's
            reduced AutoAttack.
        seed: seed of every attack.
        apgd_iter: iterations of APGD-CE and of APGD-T per target (100 in the standard AutoAttack).
        n_target_classes: targets of APGD-T.
    """
    if kind not in EVALUATION_KINDS:
        raise ValueError(
            f"Invalid value for argument `kind`. Expected one of {EVALUATION_KINDS}. Received: kind={kind!r}"
        )
    if kind == "apgd":
        return {"apgd-ce": attacks.APGD(eps=eps, loss="ce", n_iter=apgd_iter, seed=seed),
                "apgd-t": attacks.APGD(eps=eps, loss="dlr", targeted=True, n_iter=apgd_iter,
                                       n_target_classes=n_target_classes, seed=seed)}
    step_size = step_size if step_size is not None else eps / 4
    named = {f"pgd{steps}": attacks.PGD(eps, step_size, steps, random_start="uniform", seed=seed)}
    if kind == "pgd_cw":
        named[f"cw{steps}"] = attacks.CW(eps, step_size, steps, seed=seed)
    return named


def evaluate(classifier, dataset, attack_dict: Mapping[str, object], max_examples=None) -> Dict[str, float]:
    """One table row of :func:`tfnorms.metrics.evaluate`: worst case over ``attack_dict`` and per attack.

    Returns:
        ``{"clean_accuracy", "robust_accuracy", "stability", "examples",
        "<name>_robust_accuracy", "<name>_stability", ...}``.
    """
    return metrics.evaluate(classifier, dataset, attacks=attack_dict, max_examples=max_examples).flat()


EVALUATION_REPORT_ATTACKS = ("pgd", "cw", "autoattack")


def load_evaluated_model(path, architecture=None, *, dataset=None, image_size=None, depth=None, width=None,
                         mean=None, std=None):
    """The classifier to evaluate or inspect: a ``.keras`` file, or a PyTorch checkpoint and its architecture.

    The one loader of ``examples/evaluate.py`` and the ``tfnorms`` command, on
    top of :func:`tfnorms.models.load_classifier`. A saved
    :class:`~tfnorms.training.AdversarialTrainer` gives its classifier. For a
    PyTorch checkpoint the builder gets ``dataset``'s classes and image shape
    (the builder's defaults if ``dataset`` is None), ``depth`` / ``width``
    (``"wide_resnet"`` only) and the input normalization ``mean`` / ``std``.

    Args:
        path: a ``.keras``, ``.pt`` or ``.pth`` file.
        architecture: None for ``.keras``; for a PyTorch checkpoint one of
            ``tfnorms.models.TORCH_ARCHITECTURES``.
        dataset: a ``tfnorms.data`` name whose classes and image shape the
            PyTorch architecture is built for.
        image_size: side of the ``"digits"`` images.
        depth: WideResNet depth (``architecture="wide_resnet"``).
        width: WideResNet widening factor (``architecture="wide_resnet"``).
        mean: per-channel input mean of the checkpoint's normalization, with ``std``.
        std: per-channel input standard deviation, with ``mean``.

    Returns:
        An uncompiled ``keras.Model`` returning logits.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "tiny.keras")
        >>> models.small_cnn(input_shape=(8, 8, 1), width=4).save(path)
        >>> load_evaluated_model(path).name
        'small_cnn'
    """
    options = {"depth": depth, "width": width, "mean": mean, "std": std}
    if architecture is None:
        given = [name for name, value in options.items() if value is not None]
        if given:
            raise _args.invalid(given[0], "None unless `architecture` names a PyTorch checkpoint's architecture",
                                options[given[0]])
        model = models.load_classifier(path)
        return model.model if isinstance(model, AdversarialTrainer) else model
    if architecture != "wide_resnet" and (depth is not None or width is not None):
        raise _args.invalid("depth" if depth is not None else "width", "None unless architecture='wide_resnet'",
                            depth if depth is not None else width)
    if (mean is None) != (std is None):
        raise _args.invalid("mean" if mean is None else "std", "given together with the other of `mean` / `std`",
                            None)
    kwargs = {}
    if dataset is not None:
        from tfnorms import data  # local: data imports tensorflow-datasets lazily, keep it that way

        info = data.dataset_info(dataset, image_size if dataset == "digits" else None)
        kwargs.update(num_classes=info.num_classes, input_shape=info.image_shape)
    kwargs.update({name: value for name, value in (("depth", depth), ("width", width)) if value is not None})
    if mean is not None:
        kwargs["normalization"] = ([float(v) for v in mean], [float(v) for v in std])
    return models.load_classifier(path, architecture, **kwargs)


def load_arrays(dataset, split="test", *, examples=0, image_size=None, model=None, batch_size=256, data_dir=None):
    """The first ``examples`` points of a split of :func:`tfnorms.data.load` as arrays (0 = all).

    The embedded ``"digits"`` images have side ``image_size``, by default the
    input side of ``model`` if given (else 16).

    Returns:
        ``(x, y)``: float32 images in [0, 1] and int labels, in the split's order.

    Example:
        >>> x, y = load_arrays("digits", examples=5, image_size=8)
        >>> x.shape, y.shape
        ((5, 8, 8, 1), (5,))
    """
    from tfnorms import data  # local: data imports tensorflow-datasets lazily, keep it that way

    examples = _args.positive_int(examples, "examples", minimum=0)
    if dataset == "digits" and image_size is None and model is not None:
        image_size = int(model.input_shape[1])
    size = {"image_size": image_size} if dataset == "digits" else {}
    pipeline = data.load(dataset, split, batch_size=batch_size, data_dir=data_dir, training=False, **size)
    xs, ys, count = [], [], 0
    for x_batch, y_batch in pipeline:
        xs.append(x_batch.numpy())
        ys.append(y_batch.numpy())
        count += len(ys[-1])
        if examples and count >= examples:
            break
    x, y = np.concatenate(xs), np.concatenate(ys)
    return (x[:examples], y[:examples]) if examples else (x, y)


def robustness_report(model, x, y, *, eps, kinds=EVALUATION_REPORT_ATTACKS, steps=20, step_size=None, seed=None,
                      batch_size=256, version="standard", custom_attacks=None, n_iter=100, n_queries=5000,
                      dataset=None, verbose=0) -> dict:
    """Clean accuracy and robust accuracy under PGD-k, CW-k and AutoAttack: the report of ``tfnorms evaluate``.

    PGD and CW run in one :func:`tfnorms.metrics.evaluate` (per attack and
    worst case per example); AutoAttack (:class:`tfnorms.attacks.AutoAttack`)
    runs its own cascade and adds its RobustBench-style report.

    Args:
        model: a callable returning logits for images in [0, 1].
        x: images; y: labels (class ids or distribution rows).
        eps: l_inf radius.
        kinds: the attacks to run, a non-empty subset of ``("pgd", "cw", "autoattack")``.
        steps: steps of PGD and CW.
        step_size: step of PGD and CW (``eps / 4`` if ``None``).
        seed: seed of every attack; ``None`` draws one, recorded in the report.
        batch_size: points per batch.
        version: AutoAttack version (``"standard"``, ``"rand"``, ``"custom"``).
        custom_attacks: the attack list of ``version="custom"``.
        n_iter: APGD / FAB iterations; n_queries: Square queries.
        dataset: data set name in AutoAttack's report.
        verbose: 1 shows progress bars.

    Returns:
        ``{"eps", "n_points", "seed", "results": {"clean_accuracy", "pgd<k>":
        {"robust_accuracy", "stability", "config"}, "cw<k>": {...},
        "autoattack": <AutoAttack report>}, "robustness": <RobustnessReport.to_json()
        of PGD and CW>}`` with only the attacks asked for.
    """
    eps = _args.positive(eps, "eps")
    kinds = _evaluation_kinds(kinds)
    seed = int(np.random.default_rng().integers(2**31 - 1)) if seed is None else _args.integer(seed, "seed")
    report = {"eps": eps, "n_points": len(y), "seed": seed, "results": {}}
    results = report["results"]
    gradient_attacks = {
        name: attack for name, attack in evaluation_attacks(eps, steps, step_size, kind="pgd_cw", seed=seed).items()
        if name.rstrip("0123456789") in kinds
    }
    if gradient_attacks:
        robustness = metrics.evaluate(model, x, y, gradient_attacks, batch_size=batch_size, verbose=verbose)
        results["clean_accuracy"] = robustness.clean_accuracy
        for name, scores in robustness.per_attack.items():
            results[name] = dict(scores, config=robustness.attacks[name])
        report["robustness"] = robustness.to_json()
    if "autoattack" in kinds:
        auto = attacks.AutoAttack(eps, version=version, attacks=custom_attacks if version == "custom" else None,
                                  seed=seed, batch_size=batch_size, n_iter=n_iter, n_queries=n_queries,
                                  verbose=verbose)
        evaluation = auto.evaluate(model, x, y, dataset=dataset)
        results.setdefault("clean_accuracy", evaluation.clean_accuracy)
        results["autoattack"] = evaluation.report
    return report


def _evaluation_kinds(kinds):
    expected = f"a non-empty list of {', '.join(map(repr, EVALUATION_REPORT_ATTACKS))}"
    if isinstance(kinds, str) or not isinstance(kinds, (list, tuple)) or not kinds:
        raise _args.invalid("kinds", expected, kinds)
    for kind in kinds:
        if kind not in EVALUATION_REPORT_ATTACKS:
            raise _args.invalid("kinds", expected, kinds)
    return tuple(dict.fromkeys(kinds))


def print_robustness_report(report):
    """Prints a :func:`robustness_report` (with ``model`` and ``dataset`` keys): accuracy per attack, worst case."""
    results = report["results"]
    print(f"\n{report['model']} on {report['n_points']} {report['dataset']} points, l_inf eps={report['eps']:.5g}")
    print(f"{'evaluation':>24} {'accuracy':>10}")
    print(f"{'clean':>24} {results['clean_accuracy']:>10.2%}")
    robustness = report.get("robustness")
    if robustness is not None:
        for name, scores in robustness["per_attack"].items():
            print(f"{name:>24} {scores['robust_accuracy']:>10.2%}")
        if len(robustness["per_attack"]) > 1:
            print(f"{' + '.join(robustness['per_attack']) + ' (worst)':>24} {robustness['robust_accuracy']:>10.2%}")
    if "autoattack" in results:
        value = results["autoattack"]
        for attack, accuracy in value["robust_accuracy_per_attack"].items():
            print(f"{'  after ' + attack:>24} {accuracy:>10.2%}")
        print(f"{'AutoAttack (' + value['version'] + ')':>24} {value['robust_accuracy']:>10.2%}")
        for flag in value["flags"]:
            print(f"  FLAG: {flag}")


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


# Layers that combine several inputs: with them the network is not a chain of maps, and the product of
# the layer norms does not bound its Lipschitz constant (a residual block x + F(x) has up to 1 + Lip(F)).
_MERGE_LAYERS = (keras.layers.Add, keras.layers.Subtract, keras.layers.Multiply, keras.layers.Average,
                 keras.layers.Maximum, keras.layers.Minimum, keras.layers.Concatenate, keras.layers.Dot)


def _geometry(layer) -> dict:
    """What fixes a layer's operator, JSON-safe: kernel shape, and for convolutions input size, stride, ..."""
    if isinstance(layer, keras.layers.BatchNormalization):
        return {"channels": int(layer.gamma.shape[0]) if layer.gamma is not None else None}
    if isinstance(layer, keras.layers.Dense):
        return {"kernel": list(layer.kernel.shape)}
    geometry = norms.conv_geometry(layer)
    padding = geometry["padding"]
    return {
        "kernel": list(geometry["kernel"].shape),
        "input_shape": list(geometry["input_shape"]),
        "strides": list(geometry["strides"]),
        "padding": padding if isinstance(padding, str) else [list(pair) for pair in padding],
        "dilation_rate": list(geometry["dilation_rate"]),
        "groups": geometry["groups"],
    }


SPECTRAL_KINDS = ("gram", "power")


def norm_table(model, ords=(1, np.inf, 2), *, spectral="gram") -> dict:
    """Every layer's operator norms and their products over the network: the report of ``tfnorms norms``.

    l1 and l_inf norms are exact (:func:`tfnorms.norms.layer_norm`). The
    spectral norm (``ord=2``) of a BatchNormalization layer is exact; for
    convolutions and Dense layers, ``spectral="gram"`` gives certified upper
    bounds by Gram iteration (docs/norms.md#gram-iteration; tight for Dense
    and circular padding, up to tens of percent above the norm for large
    kernels on small zero-padded inputs), ``spectral="power"`` the exact Dense
    norm and, for convolutions, block power iteration converged to its
    tolerance: an estimate from below, not a bound.

    The product of a column is an upper bound on the network's Lipschitz
    constant in that norm (induced norms are submultiplicative) only when the
    network is a chain of these layers and of 1-Lipschitz maps (ReLU, max or
    average pooling with non-overlapping windows, flatten), with exact or
    upper-bounded factors. ``products[<ord>]["upper_bound"]`` says whether that
    holds as far as the model shows it, and ``"caveats"`` says why not:
    residual / merge layers, layers with weights and no norm here, pooling
    with overlapping windows (l1 and l2), or spectral estimates from below.
    Activations are not inspected.

    Args:
        model: a built ``keras.Model``.
        ords: some of ``1``, ``numpy.inf``, ``2`` (spellings of ``tfnorms._args.ords``).
        spectral: ``"gram"`` (certified upper bounds) or ``"power"``
            (estimates from below for convolutions), for ``ord=2``.

    Returns:
        ``{"model", "ords", "layers": [{"path", "type", "geometry", "l1", "linf", "l2",
        "l2_kind"}], "products": {"l1": {"value", "upper_bound", "caveats"}, ...}}``
        with only the ords asked for; ``l2_kind`` is ``"exact"``,
        ``"upper bound"`` or ``"estimate from below"``.

    Example:
        >>> import keras, numpy as np
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, kernel_initializer="ones"),
        ...                           keras.layers.ReLU(), keras.layers.Dense(1, kernel_initializer="ones")])
        >>> table = norm_table(model, ords=(1, np.inf))
        >>> [row["l1"] for row in table["layers"]], table["products"]["linf"]["value"]
        ([2.0, 1.0], 8.0)
    """
    ords = _args.ords(ords, "ords", allowed=(1, np.inf, 2))
    spectral = _args.choice(spectral, "spectral", SPECTRAL_KINDS)
    method = {"gram": "gram", "power": "auto"}[spectral]
    values = {ord: norms.model_norms(model, ord, on_unsupported="ignore", spectral_method=method) for ord in ords}
    rows = []
    for layer in _keras.flatten_layers(model):
        if not norms.is_supported(layer):
            continue
        row = {"path": layer.path, "type": type(layer).__name__, "geometry": _geometry(layer)}
        for ord in ords:
            row[_args.ord_name(ord)] = float(values[ord][layer.path])
        if 2 in ords:
            row["l2_kind"] = _spectral_kind(layer, spectral)
        rows.append(row)
    merges = [layer.path for layer in _keras.flatten_layers(model) if isinstance(layer, _MERGE_LAYERS)]
    unsupported = [layer.path for layer in norms.unsupported_layers(model)]
    overlapping = [layer.path for layer in _keras.flatten_layers(model)
                   if isinstance(layer, (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D))
                   and any(p > s for p, s in zip(layer.pool_size, layer.strides))]
    products = {}
    for ord in ords:
        name = _args.ord_name(ord)
        caveats = []
        if merges:
            caveats.append(f"merge layers ({', '.join(merges)}): the network is not a chain, the product of the "
                           "layer norms does not bound a residual block x + F(x)")
        if unsupported:
            caveats.append(f"layers with weights and no operator norm here: {', '.join(unsupported)}")
        if overlapping and ord != np.inf:
            caveats.append(f"pooling with overlapping windows ({', '.join(overlapping)}) is not 1-Lipschitz in {name}")
        if ord == 2 and any(row["l2_kind"] == "estimate from below" for row in rows):
            caveats.append("convolution spectral norms are power-iteration estimates from below, not bounds")
        products[name] = {"value": float(np.prod([row[name] for row in rows])), "upper_bound": not caveats,
                          "caveats": caveats}
    return {"model": model.name, "ords": [_args.ord_name(ord) for ord in ords], "spectral": spectral,
            "layers": rows, "products": products}


def _spectral_kind(layer, spectral):
    """What a ``norm_table`` spectral value of ``layer`` is: exact, a certified upper bound, or an estimate."""
    if isinstance(layer, keras.layers.BatchNormalization):
        return "exact"
    if spectral == "gram":
        return "upper bound"
    return "exact" if isinstance(layer, keras.layers.Dense) else "estimate from below"


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

    A column missing from a row but present in its ``"mean"`` (a row of
    :func:`summarize_seeds`) is written ``mean ± std`` (just the mean when the
    spread is undefined, i.e. from one seed).

    Example:
        >>> print(format_table([{"a": 1, "b": 0.5}], ["a", "b"]))
        | a | b |
        |---|---|
        | 1 | 0.5000 |
        >>> print(format_table([summarize_seeds([{"acc": 0.5}, {"acc": 0.7}], ["acc"])], ["acc"]))
        | acc |
        |---|
        | 0.6000 ± 0.1414 |
    """

    def cell(value):
        if isinstance(value, float):
            return "nan" if math.isnan(value) else floatfmt.format(value)
        return str(value)

    def entry(row, column):
        if column in row or column not in row.get("mean", {}):
            return cell(row.get(column, ""))
        mean, std = row["mean"][column], row["std"][column]
        return cell(mean) if std is None or math.isnan(std) else f"{cell(mean)} ± {cell(std)}"

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(entry(row, c) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def seed_values(seed, seeds):
    """The seeds of a study with ``--seed`` and ``--seeds``: ``seed, seed + 1, ..., seed + seeds - 1``."""
    return [_args.integer(seed, "seed") + i for i in range(_args.positive_int(seeds, "seeds"))]


def over_seeds(seeds) -> str:
    """How a study's table aggregates its seeds, for its header.

    Example:
        >>> over_seeds(3), over_seeds(1)
        ('mean ± std over 3 seeds', 'one seed (no spread)')
    """
    seeds = _args.positive_int(seeds, "seeds")
    return f"mean ± std over {seeds} seeds" if seeds > 1 else "one seed (no spread)"


def summarize_seeds(per_seed: Sequence[Mapping], metrics_keys: Sequence[str], **labels) -> dict:
    """One configuration's rows over seeds: ``labels``, ``per_seed``, and ``mean`` / ``std`` of each metric.

    ``std`` is the sample standard deviation (``ddof=1``), NaN from one seed
    (no spread is measured then; :func:`write_json` writes it as null).

    Args:
        per_seed: one row (dict) per seed, each with every key of ``metrics_keys``.
        metrics_keys: the numeric keys to summarise.
        **labels: keys naming the configuration (e.g. ``run="wd 0.01"``).

    Example:
        >>> row = summarize_seeds([{"acc": 0.5}, {"acc": 0.7}], ("acc",), run="none")
        >>> mean, std = row.pop("mean"), row.pop("std")
        >>> row.pop("run"), round(mean.pop("acc"), 4), round(std.pop("acc"), 4), len(row.pop("per_seed"))
        ('none', 0.6, 0.1414, 2)
    """
    if not per_seed:
        raise _args.invalid("per_seed", "at least one row", per_seed)
    values = {key: np.array([row[key] for row in per_seed], dtype=np.float64) for key in metrics_keys}
    std = {key: float(np.std(v, ddof=1)) if len(v) > 1 else float("nan") for key, v in values.items()}
    return dict(labels, per_seed=list(per_seed), mean={key: float(np.mean(v)) for key, v in values.items()}, std=std)


def summarize_runs(rows: Sequence[Mapping], by: Sequence[str], metrics_keys: Sequence[str]) -> list:
    """Groups per-seed ``rows`` by the values of the keys ``by`` (first-seen order); :func:`summarize_seeds` each.

    Example:
        >>> a0, a1, b0 = dict(run="a", seed=0, acc=0.5), dict(run="a", seed=1, acc=0.7), dict(run="b", seed=0, acc=0.9)
        >>> summaries = summarize_runs((a0, a1, b0), by=("run",), metrics_keys=("acc",))
        >>> {summary.get("run"): len(summary.get("per_seed")) for summary in summaries}
        {'a': 2, 'b': 1}
    """
    groups = {}
    for row in rows:
        groups.setdefault(tuple(row[key] for key in by), []).append(row)
    return [summarize_seeds(group, metrics_keys, **dict(zip(by, labels))) for labels, group in groups.items()]


def layer_norm_spreads(summaries: Mapping[str, Mapping]) -> dict:
    """``{run: {layer: (mean, std)}}`` from ``{run: summarize_seeds(per-seed layer-norm dicts)}``, for the plots."""
    return {run: {layer: _spread(summary, layer)[:2] for layer in summary["mean"]}
            for run, summary in summaries.items()}


def _spread(row, key):
    """``(mean, std, per-seed values)`` of ``key`` in a :func:`summarize_seeds` row, or of a plain row."""
    if "mean" in row and key in row["mean"]:
        std = row["std"][key]
        return row["mean"][key], (0.0 if std is None or math.isnan(std) else std), [r[key] for r in row["per_seed"]]
    return row[key], 0.0, [row[key]]


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

    Rows of :func:`summarize_seeds` are drawn as mean ± std with every seed's point.

    Args:
        results: ``{schedule label: [row, ...]}`` with ``row["width"]`` and the
            metrics (plain or summarised over seeds).
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
            widths = [r["width"] for r in rows]
            means, stds, points = zip(*(_spread(r, key) for r in rows))
            line = ax.errorbar(widths, means, yerr=stds, marker="o", capsize=3, label=schedule)
            for width, values in zip(widths, points):
                ax.scatter([width] * len(values), values, s=9, alpha=0.45, color=line.lines[0].get_color())
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
    """Grouped bars: per-layer norms (x axis, layer order of the first run), one bar per run.

    A value may be a number or a ``(mean, std)`` pair (drawn with an error bar).
    """
    plt = _pyplot()
    labels = list(runs)
    layers = list(next(iter(runs.values())))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(layers) * max(1, len(labels)) / 2), 4.2))
    width = 0.8 / max(1, len(labels))
    x = np.arange(len(layers))
    for i, label in enumerate(labels):
        pairs = [runs[label].get(layer, np.nan) for layer in layers]
        values, errors = np.array([(v, 0.0) if np.ndim(v) == 0 else v for v in pairs], dtype=float).T
        ax.bar(x + (i - (len(labels) - 1) / 2) * width, values, width, yerr=errors, capsize=2, label=label)
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
    """Grouped bars of clean and robust accuracy per run (mean ± std and the seeds' points for summarised rows)."""
    plt = _pyplot()
    labels = [str(r[label_key]) for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(rows) + 2), 3.8))
    for offset, key, name in ((-0.2, "clean_accuracy", "clean"), (0.2, "robust_accuracy", "robust")):
        means, stds, points = zip(*(_spread(r, key) for r in rows))
        ax.bar(x + offset, means, 0.4, yerr=stds, capsize=3, label=name)
        for position, values in zip(x + offset, points):
            ax.scatter([position] * len(values), values, s=9, color="black", alpha=0.5, zorder=3)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return _save(plt, fig, path)


# -- the examples' shared flags and study outputs

# Flags that several examples define: name -> (absl kind, help). Each script gives its own defaults.
_SHARED_FLAGS = {
    "dataset": ("enum", "Data set ('digits' is embedded and offline)."),
    "data_dir": ("string", "tensorflow-datasets directory with pre-downloaded data."),
    "image_size": ("integer", "Side of the upsampled images of the 'digits' data set."),
    "model": ("enum", "Architecture."),
    "depth": ("integer", "WideResNet depth (6n + 4)."),
    "width": ("integer", "WideResNet widening factor (small_cnn: base width)."),
    "beta": ("float", "Robust-term weight (TRADES beta / Wu et al.'s lambda); method default if unset."),
    "eps": ("float", "l_inf radius of the training and evaluation attacks."),
    "step_size": ("float", "Step size of the training attack."),
    "attack_steps": ("integer", "Steps of the training attack."),
    "eval_steps": ("integer", "Steps of the PGD / CW evaluation attacks."),
    "eval_step_size": ("float", "Step size of the evaluation attacks (unset: eps / 4)."),
    "attack": ("enum", "Evaluation attacks: apgd = APGD-CE + APGD-T (reduced AutoAttack); pgd = PGD."),
    "apgd_iter": ("integer", "Iterations of APGD-CE and of APGD-T per target (100 in AutoAttack)."),
    "train_examples": ("integer", "Use only this many training examples (0 = all)."),
    "eval_examples": ("integer", "Test examples in the final evaluation; 0 = the whole test set."),
    "eval_batch_size": ("integer", "Test batch size (large: fewer attack re-traces on CPU)."),
    "epochs": ("integer", "Training epochs."),
    "batch_size": ("integer", "Global batch size."),
    "lr": ("float", "Initial SGD learning rate."),
    "milestones": ("list", "1-based epochs where the learning rate is multiplied by 0.1."),
    "lr_milestones": ("list", "1-based epochs where the learning rate is multiplied by 0.1."),
    "weight_decay": ("float", "Coupled (PyTorch-style) L2 weight decay on all parameters."),
    "norm_decay_momentum": ("float", "Liang & Huang's decaying memory of maximal groups (0.5 in the paper; 0 = off)."),
    "svc_every": ("integer", "Clip singular values every N training steps."),
    "output_dir": ("string", "Output directory."),
    "seed": ("integer", "Random seed."),
    "seeds": ("integer", "Repeat every configuration with seeds seed, seed + 1, ...; report mean ± std."),
}


def define_flags(flag_values=None, *, helps=None, **defaults):
    """Defines the absl flags that the examples share, each with the calling script's default.

    Each shared flag (its kind, choices and help) is written once here; a
    script names the ones it uses with its own defaults, and replaces the help
    of a flag whose meaning it narrows.

    Args:
        flag_values: an ``absl.flags.FlagValues`` (default: ``absl.flags.FLAGS``).
        helps: ``{name: help}`` replacing the shared help of some of the flags.
        **defaults: ``name=default`` for each shared flag to define.

    Returns:
        The names defined, in the order given.

    Example:
        >>> from absl import flags
        >>> values = flags.FlagValues()
        >>> define_flags(values, dataset="digits", milestones=["7"], eps=0.1)
        ['dataset', 'milestones', 'eps']
        >>> _ = values(["study", "--milestones=11,14"])
        >>> values.dataset, values.milestones, values.eps
        ('digits', ['11', '14'], 0.1)
    """
    from absl import flags  # local: only the example scripts parse flags
    from tfnorms import data

    flag_values = flags.FLAGS if flag_values is None else flag_values
    unknown = sorted(set(defaults) - set(_SHARED_FLAGS))
    if unknown:
        raise ValueError(f"Invalid flag names {unknown}. Expected some of {sorted(_SHARED_FLAGS)}.")
    choices = {"dataset": sorted(data.DATASETS), "model": list(CLASSIFIERS), "attack": ["apgd", "pgd"]}
    # The flags belong to the calling script (named as absl names it), so that its --helpshort lists them.
    caller = sys._getframe(1).f_globals.get("__name__")
    module_name = sys.argv[0] if caller == "__main__" else caller
    for name, default in defaults.items():
        kind, help_text = _SHARED_FLAGS[name]
        args = (name, default, choices[name]) if kind == "enum" else (name, default)
        getattr(flags, f"DEFINE_{kind}")(*args, (helps or {}).get(name, help_text), flag_values=flag_values,
                                         module_name=module_name)
    return list(defaults)


def study_data(flag_values, seed=None):
    """:func:`load_study_data` with a study's parsed flags (``dataset``, ``batch_size``, ..., ``seed``).

    ``seed`` (default the ``seed`` flag) seeds the training data's shuffling.
    """
    names = ("batch_size", "image_size", "data_dir", "train_examples", "eval_examples", "eval_batch_size")
    kwargs = {name: getattr(flag_values, name) for name in names}
    return load_study_data(flag_values.dataset, seed=flag_values.seed if seed is None else seed, **kwargs)


def split_holdout(test_ds, examples):
    """``((x, y) arrays of the first ``examples`` test points, the batched rest)``: held out from the evaluation.

    A lambda schedule that watches held-out points (e.g.
    :class:`tfnorms.war.StabilityMatchingLambda`) must not watch the points the
    final evaluation scores, nor training points; these come first in the
    (unshuffled) test pipeline and are skipped by the returned one.
    """
    examples = _args.positive_int(examples, "examples")
    points = test_ds.unbatch()
    x, y = (np.stack(a) for a in zip(*[(xi.numpy(), yi.numpy()) for xi, yi in points.take(examples)]))
    if len(x) < examples:
        raise _args.invalid("examples", f"fewer than the {len(x)} test points", examples)
    batch = int(next(iter(test_ds))[0].shape[0])
    return (x, y), points.skip(examples).batch(batch)


def write_results(output_dir, report, header, rows, columns, plots=None, tables=()):
    """Writes a study's outputs into ``output_dir`` and prints its tables and the files written.

    Writes ``results.json`` (``report``), ``results.md`` (``header``, the
    Markdown table of ``rows`` and the further ``tables``, see
    :func:`format_table`; rows of :func:`summarize_seeds` show ``mean ± std``)
    and one figure per entry of ``plots``.

    Args:
        output_dir: an existing directory.
        report: the JSON payload (see :func:`write_json`).
        header: text above the table (ends with its own blank line).
        rows: table rows (dicts).
        columns: the table's columns.
        plots: ``{file name: function(path)}`` drawing each figure.
        tables: further ``(heading, rows, columns)`` tables below the first.

    Returns:
        ``report``.
    """
    plots = plots or {}
    write_json(os.path.join(output_dir, "results.json"), report)
    text = header + format_table(rows, columns)
    for heading, more_rows, more_columns in tables:
        text += f"\n\n{heading}\n\n" + format_table(more_rows, more_columns)
    with open(os.path.join(output_dir, "results.md"), "w") as f:
        f.write(text + "\n")
    print(text)
    for name, plot in plots.items():
        plot(os.path.join(output_dir, name))
    print(f"wrote {output_dir}/" + ", ".join(["results.json", "results.md", *plots]))
    return report
