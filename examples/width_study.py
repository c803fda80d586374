"""Width study (Wu et al., NeurIPS 2021): wider networks, fixed lambda versus a ratio-matching lambda.

Trains WideResNets of several widths with TRADES at a fixed lambda (``--beta``)
and with :class:`tfnorms.callbacks.WidthAdjustedRegularization`, a
ratio-matching lambda schedule designed from Wu et al.'s WAR principle (not
their exact Algorithm 1; see docs/reproducing.md). The narrowest width's
fixed-lambda run is the tuned reference: its robust-to-natural ratio
``lambda * R / L_nat`` is what the wider WAR runs match. For every run it
reports natural accuracy, PGD-20 robust accuracy, perturbation stability and
the local-Lipschitz estimate, and writes ``results.json``, ``results.md``,
``width_study.png`` (the metrics against width, like the paper's Figure 3(d))
and ``war_lambda.png`` (lambda during training) into ``--output_dir``.

CPU default (embedded digits data, WRN-10-{1,2,4}, about 10 minutes on 2 cores):

    python examples/width_study.py

Full scale (CIFAR-10, WRN-34-{1,5,10,15,20}, the reference settings of docs/theory.md#reference-settings; GPUs):

    python examples/width_study.py --dataset=cifar10 --data_dir=~/tensorflow_datasets \
        --depth=34 --widths=1,5,10,15,20 --epochs=100 --batch_size=128 --lr=0.1 \
        --milestones=75,90,100 --weight_decay=2e-4 --eps=0.031 --step_size=0.007 \
        --attack_steps=10 --eval_step_size=0.007 --beta=6 --output_dir=runs/width_cifar10

To reuse a narrow run tuned elsewhere, pass its ``reference_run.json`` with
``--reference_summary`` (then the narrow width is not retrained for the reference).
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
import keras  # noqa: E402

from tfnorms import experiments  # noqa: E402
from tfnorms.war import WidthAdjustedRegularization, reference_ratio  # noqa: E402

FLAGS = flags.FLAGS

experiments.define_flags(
    dataset="digits", data_dir=None, image_size=16, depth=10, beta=6.0, epochs=8, batch_size=64, lr=0.05,
    milestones=["7"], weight_decay=5e-4, eps=0.1, step_size=0.025, attack_steps=5, eval_steps=20,
    eval_step_size=None, train_examples=0, eval_batch_size=512, eval_examples=0, output_dir="runs/width_study",
    seed=0,
    helps=dict(beta="Fixed lambda, tuned on the narrow network.",
               eps="l_inf radius of training and evaluation attacks (0.031 on CIFAR-10).",
               eval_steps="PGD evaluation steps.",
               seed="Random seed (same initialisation per width for both schedules)."),
)
flags.DEFINE_list("widths", ["1", "2", "4"], "Widening factors; the smallest is the tuned narrow network.")
flags.DEFINE_enum("method", "trades", ["trades", "pgd_lambda", "mart", "alp"], "Training objective L_nat + lambda R.")
flags.DEFINE_integer("lipschitz_examples", 256, "Test examples for the local-Lipschitz estimate.")
flags.DEFINE_enum("war_reference", "per_epoch", ["per_epoch", "final"],
                  "Match the narrow run's ratio epoch by epoch, or its mean over the last half of training.")
flags.DEFINE_string("reference_summary", None, "A narrow run's reference_run.json to take the ratio from.")
flags.DEFINE_float("war_ema", 0.5, "EMA factor of the measured per-epoch averages.")
flags.DEFINE_float("war_max_factor", 4.0, "Upper bound of lambda as a multiple of --beta.")
flags.DEFINE_integer("war_warmup_epochs", 1, "Epochs before the first lambda update.")
flags.DEFINE_bool("war_enlarge_only", True, "Never decrease lambda.")


def _train_and_measure(width, info, train_ds, test_ds, extra_callbacks=()):
    keras.utils.set_random_seed(FLAGS.seed + width)
    classifier = experiments.build_classifier("wrn", info, depth=FLAGS.depth, width=width)
    start = time.time()
    history = experiments.train_classifier(
        classifier, train_ds, method=FLAGS.method, epochs=FLAGS.epochs, lr=FLAGS.lr,
        milestones=[int(m) for m in FLAGS.milestones], weight_decay=FLAGS.weight_decay, beta=FLAGS.beta,
        attack=experiments.training_attack(FLAGS.method, FLAGS.eps, FLAGS.step_size, FLAGS.attack_steps),
        extra_callbacks=extra_callbacks,
    )
    train_seconds = time.time() - start
    attack = experiments.evaluation_attacks(FLAGS.eps, FLAGS.eval_steps, FLAGS.eval_step_size)
    row = experiments.evaluate(classifier, test_ds, attack)
    row["local_lipschitz"] = experiments.mean_local_lipschitz(
        classifier, test_ds, FLAGS.eps, FLAGS.step_size, steps=10, max_examples=FLAGS.lipschitz_examples)
    row.update(width=width, params=int(classifier.count_params()), train_seconds=round(train_seconds, 1),
               final_lambda=float(history.get("lambda", [FLAGS.beta])[-1]))
    return row, history


def _war_target(narrow, history):
    """Writes the narrow run's ``reference_run.json``; returns ``(the ratio WAR matches, its source file)``."""
    summary_path = os.path.join(FLAGS.output_dir, "reference_run.json")
    experiments.write_json(summary_path, dict(width=narrow, depth=FLAGS.depth, method=FLAGS.method,
                                              beta=FLAGS.beta, history=history))
    source = FLAGS.reference_summary or summary_path
    if FLAGS.war_reference == "per_epoch":
        return reference_ratio(source, per_epoch=True), source
    return reference_ratio(source, last_epochs=max(1, len(reference_ratio(source, per_epoch=True)) // 2)), source


def run():
    """Runs the study with the current FLAGS; returns the report dict."""
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    info, train_ds, test_ds = experiments.study_data(FLAGS)
    widths = sorted({int(w) for w in FLAGS.widths})
    fixed, war, histories = [], [], {}

    row, history = _train_and_measure(widths[0], info, train_ds, test_ds)
    fixed.append(dict(row, schedule="fixed"))
    histories[f"fixed_w{widths[0]}"] = history
    target, source = _war_target(widths[0], history)
    # The narrow network is the tuned reference: WAR on it reproduces the fixed run.
    war.append(dict(row, schedule="WAR (ratio-matching)", note="narrow reference: the fixed run by construction"))

    for width in widths[1:]:
        row, history = _train_and_measure(width, info, train_ds, test_ds)
        fixed.append(dict(row, schedule="fixed"))
        histories[f"fixed_w{width}"] = history
        schedule = WidthAdjustedRegularization(
            target, ema=FLAGS.war_ema, enlarge_only=FLAGS.war_enlarge_only, min_value=0.0,
            max_value=FLAGS.war_max_factor * FLAGS.beta, warmup_epochs=FLAGS.war_warmup_epochs,
            log_dir=os.path.join(FLAGS.output_dir, f"tensorboard_war_w{width}"))
        row, history = _train_and_measure(width, info, train_ds, test_ds, extra_callbacks=[schedule])
        war.append(dict(row, schedule="WAR (ratio-matching)", updates=schedule.records))
        histories[f"war_w{width}"] = history

    report = dict(
        study="width", dataset=FLAGS.dataset, depth=FLAGS.depth, method=FLAGS.method, beta=FLAGS.beta,
        eps=FLAGS.eps, epochs=FLAGS.epochs, reference_ratio=target, reference_source=source,
        war_rule="ratio-matching lambda schedule after Wu et al. (not the paper's exact Algorithm 1)",
        fixed=fixed, war=war, histories=histories,
    )
    proposals = {f"war_w{row['width']}": [u["proposed_lambda"] for u in row["updates"]] for row in war[1:]}
    return experiments.write_results(
        FLAGS.output_dir, report,
        header=(f"Width study: {FLAGS.dataset}, WRN-{FLAGS.depth}-w, {FLAGS.method}, lambda {FLAGS.beta}, "
                f"eps {FLAGS.eps}, {FLAGS.epochs} epochs, {fixed[0]['examples']} test examples\n\n"),
        rows=fixed + war[1:],
        columns=["schedule", "width", "params", "final_lambda", "clean_accuracy", "robust_accuracy", "stability",
                 "local_lipschitz", "train_seconds"],
        plots={
            "width_study.png": lambda path: experiments.plot_metrics_vs_width(
                {"fixed lambda": fixed, "WAR (ratio-matching)": war}, path,
                title=f"{FLAGS.dataset}, WRN-{FLAGS.depth}-w, {FLAGS.method}"),
            "war_lambda.png": lambda path: experiments.plot_lambda_schedules(
                histories, path, fixed=FLAGS.beta, proposals=proposals),
        },
    )


def main(argv):
    del argv
    run()


if __name__ == "__main__":
    app.run(main)
