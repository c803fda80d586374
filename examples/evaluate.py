"""Evaluates a saved classifier (``.keras``, or a PyTorch checkpoint): clean accuracy, PGD-k, CW-k and AutoAttack.

The model must take images in [0, 1] and return logits (AutoAttack warns when
its outputs look like probabilities). A PyTorch ``.pt`` / ``.pth`` checkpoint
of a :mod:`tfnorms.models` architecture loads with ``--architecture`` (and
``--depth`` / ``--width`` for the WideResNet, ``--mean`` / ``--std`` if its
input normalization is not in the checkpoint); see docs/pytorch.md#evaluate-trades.
The data come from ``tfnorms.data`` (default: the embedded, offline ``digits``).

    python examples/evaluate.py --model=runs/quickstart/model.keras --eps=0.1
    python examples/evaluate.py --model=wrn.keras --dataset=cifar10 --data_dir=~/tensorflow_datasets \\
        --eps=0.031 --examples=1000
    python examples/evaluate.py --model=m.keras --version=custom --attacks=apgd-ce,apgd-t   # faster, weaker
    python examples/evaluate.py --model=model_cifar_wrn.pt --architecture=wide_resnet --depth=34 --width=10 \\
        --dataset=cifar10 --data_dir=~/tensorflow_datasets --eps=0.031      # the TRADES release

Prints a table and writes a JSON report (``--output``; default next to the model):
``{"model", "dataset", "eps", "n_points", "results": {"clean_accuracy", "pgd20": {...},
"cw20": {...}, "autoattack": <AutoAttack report>}, "robustness": <tfnorms.metrics.evaluate
report of PGD and CW: per attack and worst case>}``.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import tfnorms  # noqa: E402,F401  (registers the tfnorms Keras objects for loading)
from tfnorms import attacks, data, experiments, metrics, models  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "Path of the classifier (logits, inputs in [0, 1]): a saved .keras model, or a "
                    "PyTorch .pt / .pth checkpoint with --architecture.", required=True)
flags.DEFINE_enum("architecture", None, list(models.TORCH_ARCHITECTURES),
                  "Architecture of a PyTorch checkpoint (a tfnorms.models builder); unset for .keras.")
experiments.define_flags(
    dataset="digits", data_dir=None, image_size=None, eps=8 / 255, batch_size=256, seed=None, depth=34, width=10,
    helps=dict(image_size="Side of the 'digits' images (default: the model's input size).", eps="l_inf radius.",
               batch_size="Batch size.", seed="Seed (default: drawn and recorded in the report).",
               depth="WideResNet depth of a --architecture=wide_resnet checkpoint.",
               width="WideResNet widening factor of a --architecture=wide_resnet checkpoint."),
)
flags.DEFINE_list("mean", None, "Per-channel input mean of a PyTorch checkpoint's normalization, with --std "
                  "(unset: none, or the checkpoint's normalize.mean).")
flags.DEFINE_list("std", None, "Per-channel input std of a PyTorch checkpoint's normalization, with --mean.")
flags.DEFINE_string("split", "test", "Split to evaluate.")
flags.DEFINE_integer("examples", 0, "Number of points (the first ones of the split); 0 = all.")
flags.DEFINE_integer("steps", 20, "Steps of PGD and CW.")
flags.DEFINE_float("step_size", None, "Step size of PGD and CW (default eps / 4).")
flags.DEFINE_enum("version", "standard", ["standard", "rand", "custom"], "AutoAttack version.")
flags.DEFINE_list("attacks", None, "Attacks of --version=custom (apgd-ce, apgd-dlr, apgd-t, fab-t, square).")
flags.DEFINE_integer("n_iter", 100, "Iterations of APGD / FAB (100 = standard).")
flags.DEFINE_integer("n_queries", 5000, "Queries of Square (5000 = standard).")
flags.DEFINE_bool("autoattack", True, "Run AutoAttack (False: clean, PGD and CW only).")
flags.DEFINE_string("output", None, "JSON report path (default: <model>.evaluation.json).")


def load_model():
    """The classifier of ``--model`` through ``tfnorms.models.load_classifier``.

    For a PyTorch checkpoint the builder gets the data set's classes and image
    shape, ``--depth`` / ``--width`` (WideResNet) and ``--mean`` / ``--std``.
    """
    torch_only = [f"--{name}" for name in ("architecture", "depth", "width", "mean", "std") if FLAGS[name].present]
    if FLAGS.architecture is None:
        if torch_only:
            raise app.UsageError(f"{', '.join(torch_only)} apply to a PyTorch checkpoint with --architecture.")
        return models.load_classifier(FLAGS.model)
    if FLAGS.architecture != "wide_resnet" and (FLAGS["depth"].present or FLAGS["width"].present):
        raise app.UsageError("--depth and --width apply to --architecture=wide_resnet only.")
    if (FLAGS.mean is None) != (FLAGS.std is None):
        raise app.UsageError("--mean and --std go together.")
    info = data.dataset_info(FLAGS.dataset, FLAGS.image_size if FLAGS.dataset == "digits" else None)
    kwargs = {"num_classes": info.num_classes, "input_shape": info.image_shape}
    if FLAGS.architecture == "wide_resnet":
        kwargs.update(depth=FLAGS.depth, width=FLAGS.width)
    if FLAGS.mean is not None:
        kwargs["normalization"] = ([float(v) for v in FLAGS.mean], [float(v) for v in FLAGS.std])
    return models.load_classifier(FLAGS.model, FLAGS.architecture, **kwargs)


def load_arrays(model):
    image_size = FLAGS.image_size
    if FLAGS.dataset == "digits" and image_size is None:
        image_size = int(model.input_shape[1])
    size = dict(image_size=image_size) if FLAGS.dataset == "digits" else {}
    dataset = data.load(FLAGS.dataset, FLAGS.split, batch_size=FLAGS.batch_size, data_dir=FLAGS.data_dir,
                        training=False, **size)
    xs, ys, count = [], [], 0
    for x_batch, y_batch in dataset:
        xs.append(x_batch.numpy())
        ys.append(y_batch.numpy())
        count += len(ys[-1])
        if FLAGS.examples and count >= FLAGS.examples:
            break
    x, y = np.concatenate(xs), np.concatenate(ys)
    if FLAGS.examples:
        x, y = x[:FLAGS.examples], y[:FLAGS.examples]
    return x, y


def evaluate(model, x, y):
    """Evaluates ``model`` on ``(x, y)``; returns ``(RobustnessReport of PGD and CW, results dict)``.

    The results are ``{"clean_accuracy", "pgd<k>": {"robust_accuracy",
    "stability", "config"}, "cw<k>": {...}, "autoattack": <AutoAttack report>}``.
    """
    seed = FLAGS.seed if FLAGS.seed is not None else int(np.random.default_rng().integers(2**31 - 1))
    robustness = metrics.evaluate(
        model, x, y, experiments.evaluation_attacks(FLAGS.eps, FLAGS.steps, FLAGS.step_size, kind="pgd_cw", seed=seed),
        batch_size=FLAGS.batch_size)
    results = {"clean_accuracy": robustness.clean_accuracy}
    for name, scores in robustness.per_attack.items():
        results[name] = dict(scores, config=robustness.attacks[name])
    if FLAGS.autoattack:
        auto = attacks.AutoAttack(
            FLAGS.eps, version=FLAGS.version, attacks=FLAGS.attacks if FLAGS.version == "custom" else None,
            seed=seed, batch_size=FLAGS.batch_size, n_iter=FLAGS.n_iter, n_queries=FLAGS.n_queries,
        )
        results["autoattack"] = auto.evaluate(model, x, y, dataset=FLAGS.dataset).report
    return robustness, results


def print_table(report):
    """Prints clean accuracy, robust accuracy per attack and worst case, then AutoAttack's."""
    results = report["results"]
    print(f"\n{report['model']} on {report['n_points']} {report['dataset']} points, l_inf eps={report['eps']:.5g}")
    print(f"{'evaluation':>24} {'accuracy':>10}")
    print(f"{'clean':>24} {results['clean_accuracy']:>10.2%}")
    robustness = report["robustness"]
    for name, scores in robustness["per_attack"].items():
        print(f"{name:>24} {scores['robust_accuracy']:>10.2%}")
    print(f"{' + '.join(robustness['per_attack']) + ' (worst)':>24} {robustness['robust_accuracy']:>10.2%}")
    if "autoattack" in results:
        value = results["autoattack"]
        for attack, accuracy in value["robust_accuracy_per_attack"].items():
            print(f"{'  after ' + attack:>24} {accuracy:>10.2%}")
        print(f"{'AutoAttack (' + value['version'] + ')':>24} {value['robust_accuracy']:>10.2%}")
        for flag in value["flags"]:
            print(f"  FLAG: {flag}")


def main(argv):
    del argv
    model = load_model()
    x, y = load_arrays(model)
    robustness, results = evaluate(model, x, y)
    report = {"model": os.path.basename(FLAGS.model), "model_path": FLAGS.model, "architecture": FLAGS.architecture,
              "dataset": FLAGS.dataset,
              "split": FLAGS.split, "eps": FLAGS.eps, "n_points": int(len(y)), "results": results,
              "robustness": robustness.to_json()}
    output = FLAGS.output or os.path.splitext(FLAGS.model)[0] + ".evaluation.json"
    experiments.write_json(output, report)
    print_table(report)
    print(f"wrote {output}")


if __name__ == "__main__":
    app.run(main)
