"""The ``tfnorms`` command: layer norms and robustness evaluation of a saved model from the shell.

    tfnorms norms runs/quickstart/model.keras                 # l1, l_inf, spectral per layer
    tfnorms norms model.keras --ord=1,inf --json              # the same as JSON on stdout
    tfnorms evaluate model.keras --dataset=cifar10 --data_dir=~/tensorflow_datasets --eps=0.031 \\
        --examples=1000 --attack=autoattack --output=report.json

``python -m tfnorms`` is the same command. Both subcommands are thin parsers
over the library: ``norms`` prints :func:`tfnorms.experiments.norm_table`,
``evaluate`` runs :func:`tfnorms.experiments.robustness_report` (the report of
``examples/evaluate.py``). Bad arguments and unreadable models end with a
one-line error on stderr and exit code 2.

Example:
    >>> build_parser().parse_args(["norms", "m.keras", "--ord=1,inf"]).ord
    (1, inf)
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from tfnorms import _args

EXIT_USAGE = 2  # argparse's code for bad arguments; also unreadable models


class CommandError(Exception):
    """A problem with the command's input (bad argument, unreadable model): one line, exit code 2."""


def load_model(options):
    """The classifier of ``options.model``: a ``.keras`` file, or a PyTorch checkpoint with ``--architecture``.

    Every subcommand loads its model here, through
    :func:`tfnorms.experiments.load_evaluated_model` (an ``AdversarialTrainer``
    gives its classifier; a PyTorch architecture is built for ``--dataset``
    if the subcommand has one, else with the builder's defaults).

    Raises:
        CommandError: the file is missing, unreadable or not a model of that architecture.
    """
    from tfnorms import experiments

    path = options.model
    if not os.path.isfile(path):
        raise CommandError(f"cannot read model {path!r}: no such file")
    try:
        return experiments.load_evaluated_model(
            path, options.architecture, dataset=options.dataset, image_size=options.image_size, depth=options.depth, width=options.width,
            mean=options.mean, std=options.std)
    except Exception as error:  # Keras and PyTorch raise many types for a corrupt or foreign file
        raise CommandError(f"cannot load model {path!r}: {_one_line(error)}") from error


def _add_model_arguments(parser):
    """The model path and, for a PyTorch checkpoint, its architecture (docs/pytorch.md)."""
    from tfnorms import models

    parser.add_argument("model", help="a saved .keras model, or a PyTorch .pt / .pth checkpoint with --architecture")
    parser.add_argument("--architecture", default=None, type=_checked(lambda v: _args.choice(
        v, "--architecture", models.TORCH_ARCHITECTURES)),
        help=f"architecture of a PyTorch checkpoint: one of {', '.join(models.TORCH_ARCHITECTURES)}")
    parser.add_argument("--depth", type=_checked(_count("--depth", 1)), default=None,
                        help="WideResNet depth of a --architecture=wide_resnet checkpoint (default 34)")
    parser.add_argument("--width", type=_checked(_count("--width", 1)), default=None,
                        help="WideResNet widening factor of a --architecture=wide_resnet checkpoint (default 10)")
    parser.add_argument("--mean", type=_checked(_floats("--mean")), default=None,
                        help="comma-separated per-channel input mean of the checkpoint's normalization, with --std")
    parser.add_argument("--std", type=_checked(_floats("--std")), default=None,
                        help="comma-separated per-channel input std of the checkpoint's normalization, with --mean")


def _one_line(error):
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _checked(check):
    """An argparse ``type`` from a ``tfnorms._args`` check (its message becomes argparse's error)."""

    def parse(text):
        try:
            return check(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


def _ords(text):
    try:
        return _args.ords(text.split(","), "--ord", allowed=(1, np.inf, 2))
    except ValueError:
        raise _args.invalid("--ord", "comma-separated norms among 1, inf, 2", text) from None


def _number(name, **limits):
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise _args.invalid(name, "a number", text) from None
        return _args.number(value, name, **limits)

    return parse


def _count(name, minimum):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise _args.invalid(name, f"an int >= {minimum}", text) from None
        return _args.positive_int(value, name, minimum=minimum)

    return parse


def _floats(name):
    def parse(text):
        try:
            return [float(part) for part in text.split(",")]
        except ValueError:
            raise _args.invalid(name, "comma-separated numbers", text) from None

    return parse


def _attacks(text):
    from tfnorms.experiments import EVALUATION_REPORT_ATTACKS

    kinds = text.split(",")
    for kind in kinds:
        _args.choice(kind, "--attack", EVALUATION_REPORT_ATTACKS)
    return tuple(dict.fromkeys(kinds))


def build_parser():
    """The ``tfnorms`` argument parser (subcommands ``norms`` and ``evaluate``)."""
    from tfnorms import data

    parser = argparse.ArgumentParser(
        prog="tfnorms", description="Exact layer norms and robustness evaluation of saved Keras classifiers.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{norms,evaluate}")

    norms = commands.add_parser(
        "norms", help="operator norms of every layer and their product over the network",
        description="A table of every Conv2D, DepthwiseConv2D, Dense and BatchNormalization layer: name, type, "
                    "geometry, exact l1 and l_inf norms, the spectral norm (exact for BatchNorm; a certified upper "
                    "bound by Gram iteration, or with --spectral=power exact for Dense and a power-iteration "
                    "estimate from below for convolutions), and the products over the network, "
                    "an upper bound on its Lipschitz constant only for a chain of layers (caveats are printed).")
    _add_model_arguments(norms)
    norms.add_argument("--dataset", default=None, type=_checked(lambda v: _args.choice(v, "--dataset", sorted(
        data.DATASETS))), help="the data set a PyTorch checkpoint's architecture is built for (its classes and "
                               "image shape; default: the builder's, 10 classes of 32x32x3)")
    norms.add_argument("--image_size", type=_checked(_count("--image_size", 1)), default=None,
                       help="side of the 'digits' images a PyTorch architecture is built for")
    norms.add_argument("--ord", type=_checked(_ords), default=(1, np.inf, 2),
                       help="comma-separated norms among 1, inf, 2 (default: 1,inf,2)")
    norms.add_argument("--spectral", default="gram", type=_checked(lambda v: _args.choice(
        v, "--spectral", ("gram", "power"))),
        help="spectral norms of convolutions and Dense layers: 'gram' (default, certified upper bounds) or "
             "'power' (power iteration: estimates from below for convolutions)")
    norms.add_argument("--json", action="store_true", help="print the table as JSON on stdout")

    evaluate = commands.add_parser(
        "evaluate", help="clean and robust accuracy (PGD, CW, AutoAttack) with a JSON report",
        description="Clean accuracy and l_inf robust accuracy of a saved logits classifier (inputs in [0, 1]) "
                    "under PGD, CW and AutoAttack; prints a table and writes the JSON report (AutoAttack's "
                    "RobustBench-style fields under results.autoattack).")
    _add_model_arguments(evaluate)
    evaluate.add_argument("--dataset", required=True, type=_checked(lambda v: _args.choice(v, "--dataset", sorted(
        data.DATASETS))), help=f"one of {', '.join(sorted(data.DATASETS))} ('digits' is embedded and offline)")
    evaluate.add_argument("--data_dir", default=None, help="tensorflow-datasets directory with pre-downloaded data")
    evaluate.add_argument("--split", default="test", help="split to evaluate (default: test)")
    evaluate.add_argument("--image_size", type=_checked(_count("--image_size", 1)), default=None,
                          help="side of the 'digits' images (default: the model's input size)")
    evaluate.add_argument("--eps", required=True, type=_checked(_number("--eps", low=0, low_open=True)),
                          help="l_inf radius, e.g. 0.031")
    evaluate.add_argument("--examples", type=_checked(_count("--examples", 0)), default=0,
                          help="evaluate the first N points of the split (default 0: all)")
    evaluate.add_argument("--attack", type=_checked(_attacks), default=("autoattack",),
                          help="comma-separated attacks among autoattack, pgd, cw (default: autoattack)")
    evaluate.add_argument("--steps", type=_checked(_count("--steps", 1)), default=20, help="PGD / CW steps")
    evaluate.add_argument("--step_size", type=_checked(_number("--step_size", low=0, low_open=True)), default=None,
                          help="PGD / CW step size (default: eps / 4)")
    evaluate.add_argument("--version", type=_checked(lambda v: _args.choice(v, "--version", ("standard", "rand"))),
                          default="standard", help="AutoAttack version: standard or rand")
    evaluate.add_argument("--n_iter", type=_checked(_count("--n_iter", 1)), default=100,
                          help="APGD / FAB iterations (100 = standard)")
    evaluate.add_argument("--n_queries", type=_checked(_count("--n_queries", 1)), default=5000,
                          help="Square queries (5000 = standard)")
    evaluate.add_argument("--batch_size", type=_checked(_count("--batch_size", 1)), default=256, help="batch size")
    evaluate.add_argument("--seed", type=_checked(_count("--seed", 0)), default=None,
                          help="seed of the attacks (default: drawn and recorded in the report)")
    evaluate.add_argument("--output", default=None, help="JSON report path (default: <model>.evaluation.json)")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _geometry_text(geometry):
    def value(v):
        if isinstance(v, list) and all(isinstance(i, int) for i in v):
            return "x".join(map(str, v))
        return str(v).replace(" ", "")

    return " ".join(f"{key}={value(v)}" for key, v in geometry.items())


_SPECTRAL_MARKS = {"upper bound": "^", "estimate from below": "*"}  # exact values are unmarked
_SPECTRAL_LEGEND = {"upper bound": "certified upper bound of the spectral norm (Gram iteration)",
                    "estimate from below": "power-iteration estimate from below (zero-padded convolution), not a bound"}


def _format_norms(table):
    ords = table["ords"]
    rows = [(row["path"], row["type"], _geometry_text(row["geometry"]),
             [f"{row[name]:.5g}" + _SPECTRAL_MARKS.get(row.get("l2_kind") if name == "l2" else None, "")
              for name in ords])
            for row in table["layers"]]
    widths = [max(len(heading), *(len(row[i]) for row in rows)) for i, heading in enumerate(("layer", "type"))]
    header = f"{'layer':<{widths[0]}}  {'type':<{widths[1]}}" + "".join(f"  {name:>12}" for name in ords) + "  geometry"
    lines = [header]
    for path, kind, geometry, values in rows:
        lines.append(f"{path:<{widths[0]}}  {kind:<{widths[1]}}" + "".join(f"  {v:>12}" for v in values)
                     + f"  {geometry}")
    products = table["products"]
    lines.append(f"{'product over the network':<{widths[0] + widths[1] + 2}}"
                 + "".join(f"  {products[name]['value']:>12.5g}" for name in ords))
    kinds = {row.get("l2_kind") for row in table["layers"]} if "l2" in ords else set()
    lines += [f"{mark} {_SPECTRAL_LEGEND[kind]}" for kind, mark in _SPECTRAL_MARKS.items() if kind in kinds]
    for name in ords:
        product = products[name]
        verdict = "an upper bound on the Lipschitz constant" if product["upper_bound"] else "NOT a Lipschitz bound"
        lines.append(f"{name} product: {verdict}" + "".join(f"\n  - {caveat}" for caveat in product["caveats"]))
    return "\n".join(lines)


def _norms(options):
    from tfnorms import experiments

    model = load_model(options)
    table = experiments.norm_table(model, options.ord, spectral=options.spectral)
    if not table["layers"]:
        raise CommandError(f"model {options.model!r} has no Conv2D, DepthwiseConv2D, Dense or BatchNormalization layer")
    print(json.dumps(table, indent=2) if options.json else _format_norms(table))


def _evaluate(options):
    from tfnorms import experiments

    model = load_model(options)
    try:
        x, y = experiments.load_arrays(options.dataset, options.split, examples=options.examples,
                                       image_size=options.image_size, model=model, batch_size=options.batch_size,
                                       data_dir=options.data_dir)
    except (ValueError, RuntimeError, ImportError) as error:
        raise CommandError(f"cannot load {options.dataset!r}: {_one_line(error)}") from error
    report = {"model": os.path.basename(options.model), "model_path": options.model,
              "architecture": options.architecture, "dataset": options.dataset, "split": options.split}
    try:
        report.update(experiments.robustness_report(
            model, x, y, eps=options.eps, kinds=options.attack, steps=options.steps, step_size=options.step_size,
            seed=options.seed, batch_size=options.batch_size, version=options.version, n_iter=options.n_iter,
            n_queries=options.n_queries, dataset=options.dataset, verbose=0 if options.quiet else 1))
    except ValueError as error:  # e.g. images of another shape than the model's input, or labels beyond its classes
        raise CommandError(f"cannot evaluate {options.model!r} on {options.dataset!r}: {_one_line(error)}") from error
    output = options.output or os.path.splitext(options.model)[0] + ".evaluation.json"
    experiments.write_json(output, report)
    experiments.print_robustness_report(report)
    print(f"wrote {output}")


def main(argv=None):
    """Runs the command with ``argv`` (default ``sys.argv[1:]``); returns the exit code (the console script's entry)."""
    parser = build_parser()
    options = parser.parse_args(argv)
    try:
        {"norms": _norms, "evaluate": _evaluate}[options.command](options)
    except CommandError as error:
        print(f"tfnorms {options.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    return 0
