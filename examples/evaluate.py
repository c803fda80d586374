"""Evaluates a classifier (``.keras``, or a PyTorch checkpoint): clean accuracy, PGD-k, CW-k and AutoAttack.

The model must take images in [0, 1] and return logits (AutoAttack warns when
its outputs look like probabilities). The data come from ``tfnorms.data``
(default: the embedded, offline ``digits``).

    python examples/evaluate.py --model=runs/quickstart/model.keras --eps=0.1
    python examples/evaluate.py --model=wrn.keras --dataset=cifar10 --data_dir=~/tensorflow_datasets \\
        --eps=0.031 --examples=1000
    python examples/evaluate.py --model=m.keras --version=custom --attacks=apgd-ce,apgd-t   # faster, weaker
    python examples/evaluate.py --model=model_cifar_wrn.pt --architecture=wide_resnet --depth=34 --width=10 \\
        --dataset=cifar10 --eps=0.031   # a PyTorch checkpoint (docs/pytorch.md)

Prints a table and writes a JSON report (``--output``; default next to the model):
``{"model", "dataset", "eps", "n_points", "results": {"clean_accuracy", "pgd20": {...},
"cw20": {...}, "autoattack": <AutoAttack report>}, "robustness": <tfnorms.metrics.evaluate
report of PGD and CW: per attack and worst case>}`` (``tfnorms.experiments.robustness_report``;
the ``tfnorms evaluate`` command writes the same report).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

import tfnorms  # noqa: E402,F401  (registers the tfnorms Keras objects for loading)
from tfnorms import experiments, models  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "Path of the classifier (logits, inputs in [0, 1]): a saved .keras model, or a "
                    "PyTorch .pt / .pth checkpoint with --architecture.", required=True)
flags.DEFINE_enum("architecture", None, list(models.TORCH_ARCHITECTURES),
                  "Architecture of a PyTorch checkpoint (a tfnorms.models builder); unset for .keras.")
experiments.define_flags(
    dataset="digits", data_dir=None, image_size=None, eps=8 / 255, batch_size=256, seed=None, depth=None, width=None,
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


def main(argv):
    del argv
    model = experiments.load_evaluated_model(
        FLAGS.model, FLAGS.architecture, dataset=FLAGS.dataset, image_size=FLAGS.image_size, depth=FLAGS.depth,
        width=FLAGS.width, mean=FLAGS.mean, std=FLAGS.std)
    x, y = experiments.load_arrays(FLAGS.dataset, FLAGS.split, examples=FLAGS.examples, image_size=FLAGS.image_size,
                                   model=model, batch_size=FLAGS.batch_size, data_dir=FLAGS.data_dir)
    kinds = ["pgd", "cw"] + (["autoattack"] if FLAGS.autoattack else [])
    report = {"model": os.path.basename(FLAGS.model), "model_path": FLAGS.model, "architecture": FLAGS.architecture,
              "dataset": FLAGS.dataset, "split": FLAGS.split}
    report.update(experiments.robustness_report(
        model, x, y, eps=FLAGS.eps, kinds=kinds, steps=FLAGS.steps, step_size=FLAGS.step_size, seed=FLAGS.seed,
        batch_size=FLAGS.batch_size, version=FLAGS.version, custom_attacks=FLAGS.attacks, n_iter=FLAGS.n_iter,
        n_queries=FLAGS.n_queries, dataset=FLAGS.dataset, verbose=1))
    output = FLAGS.output or os.path.splitext(FLAGS.model)[0] + ".evaluation.json"
    experiments.write_json(output, report)
    experiments.print_robustness_report(report)
    print(f"wrote {output}")


if __name__ == "__main__":
    app.run(main)
