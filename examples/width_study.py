"""Width study (Wu et al., NeurIPS 2021): wider networks, a fixed lambda, two lambda rules and a lambda grid.

Trains WideResNets of several widths with TRADES, over ``--seeds`` seeds, with
the schedules of ``--schedules``:

* ``fixed``: the lambda tuned on the narrow network (``--beta``) at every width;
* ``ratio``: :class:`tfnorms.war.RatioMatchingLambda`, which matches the narrow
  run's robust-to-natural ratio ``lambda * R / L_nat``;
* ``stability``: :class:`tfnorms.war.StabilityMatchingLambda`, which enlarges
  lambda while the wide model's held-out perturbation stability trails the
  narrow run's at the same epoch.

Both rules are designed from Wu et al.'s principle, not their exact
Algorithm 1 (docs/reproducing.md). The narrowest width's fixed run is the tuned
reference of both rules (its held-out stability is measured every epoch). With
``--lambda_grid`` the widest network is also trained at every grid lambda (the
expensive way to tune), and the report compares the grid's best robust
accuracy with each rule's, next to each approach's cost in training runs and
minutes. The held-out points of the stability rule are the first
``--stability_examples`` test points; they are not evaluated.

For every run it reports natural accuracy, PGD robust accuracy, perturbation
stability and the local-Lipschitz estimate, as mean ± std over the seeds, and
writes ``results.json`` (rows with ``per_seed``, ``mean`` and ``std``),
``results.md``, ``width_study.png`` (the metrics against width, like the paper's
Figure 3(d), with error bars and the seeds' points) and ``war_lambda.png``
(lambda during training) into ``--output_dir``.

CPU default (embedded digits data, WRN-10-{1,2}, 3 seeds, no grid; 17.2 minutes measured on 2
cores), and the tuning-cost comparison with the grid 3,6,12,18 at width 2 (about 40 minutes):

    python examples/width_study.py
    python examples/width_study.py --lambda_grid=3,6,12,18

Longer CPU preset (WRN-10-{1,4}, the fixed lambda and the stability rule, 3 seeds, about
45 minutes; docs/reproducing.md#width-study-long):

    python examples/width_study.py --widths=1,4 --schedules=fixed,stability \
        --output_dir=runs/width_study_long

Full scale (CIFAR-10, WRN-34-{1,5,10,15,20}, the reference settings of docs/theory.md#reference-settings; GPUs):

    python examples/width_study.py --dataset=cifar10 --data_dir=~/tensorflow_datasets \
        --depth=34 --widths=1,5,10,15,20 --epochs=100 --batch_size=128 --lr=0.1 \
        --milestones=75,90,100 --weight_decay=2e-4 --eps=0.031 --step_size=0.007 \
        --attack_steps=10 --eval_step_size=0.007 --beta=6 --stability_examples=1000 \
        --output_dir=runs/width_cifar10

To reuse a narrow run tuned elsewhere for the ratio rule, pass its
``reference_run.json`` with ``--reference_summary``.
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow's oneDNN kernels: on by default only on CPUs with AVX-512 VNNI / BF16 / AMX; on an
# AVX2 CPU they trained these studies' models 1.1-1.4x faster (docs/benchmarks.md#onednn). Set
# before TensorFlow is imported; TF_ENABLE_ONEDNN_OPTS=0 turns them off.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from absl import app, flags  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from tfnorms import attacks, experiments  # noqa: E402
from tfnorms.war import RatioMatchingLambda, StabilityMatchingLambda, reference_ratio  # noqa: E402

FLAGS = flags.FLAGS

experiments.define_flags(
    dataset="digits", data_dir=None, image_size=16, depth=10, beta=6.0, epochs=8, batch_size=64, lr=0.05,
    milestones=["7"], weight_decay=5e-4, eps=0.1, step_size=0.025, attack_steps=5, eval_steps=20,
    eval_step_size=None, train_examples=0, eval_batch_size=512, eval_examples=0, output_dir="runs/width_study",
    seed=0, seeds=3,
    helps=dict(beta="Fixed lambda, tuned on the narrow network.",
               eps="l_inf radius of training and evaluation attacks (0.031 on CIFAR-10).",
               eval_steps="PGD evaluation steps.",
               seed="First random seed (the same initialisation per width and seed for every schedule)."),
)
SCHEDULES = ("fixed", "ratio", "stability")
flags.DEFINE_list("widths", ["1", "2"], "Widening factors; the smallest is the tuned narrow network.")
flags.DEFINE_list("schedules", list(SCHEDULES), "Lambda schedules of the wider networks: fixed, ratio, stability.")
flags.DEFINE_list("lambda_grid", [],
                  "Fixed lambdas to train the widest network with (the grid search, e.g. 3,6,12,18); empty: none.")
flags.DEFINE_enum("method", "trades", ["trades", "pgd_lambda", "mart", "alp"], "Training objective L_nat + lambda R.")
flags.DEFINE_integer("lipschitz_examples", 256, "Test examples for the local-Lipschitz estimate.")
flags.DEFINE_enum("war_reference", "per_epoch", ["per_epoch", "final"],
                  "Ratio rule: match the narrow run's ratio epoch by epoch, or its mean over the last half.")
flags.DEFINE_string("reference_summary", None, "Ratio rule: a narrow run's reference_run.json to take the ratio from.")
flags.DEFINE_float("war_ema", 0.5, "Ratio rule: EMA factor of the measured per-epoch averages.")
flags.DEFINE_float("war_max_factor", 4.0, "Both rules: upper bound of lambda as a multiple of --beta.")
flags.DEFINE_integer("war_warmup_epochs", 1, "Both rules: epochs before the first lambda update.")
flags.DEFINE_bool("war_enlarge_only", True, "Ratio rule: never decrease lambda.")
flags.DEFINE_integer("stability_examples", 128, "Stability rule: held-out test points (not evaluated).")
flags.DEFINE_integer("stability_steps", 5, "Stability rule: steps of its cheap PGD (eps --eps, step eps / 4).")
flags.DEFINE_float("stability_gain", 5.0, "Stability rule: 1 / (d stability / d log lambda).")
flags.DEFINE_float("stability_max_step", 1.5, "Stability rule: largest factor of lambda per epoch.")

METRICS = ("clean_accuracy", "robust_accuracy", "stability", "local_lipschitz", "final_lambda", "train_seconds")


def _train_and_measure(width, seed, data, beta, extra_callbacks=()):
    """Trains WRN-depth-``width`` from the seed's initialisation; returns its table row and history."""
    info, train_ds, test_ds = data
    keras.utils.set_random_seed(seed * 1000 + width)
    classifier = experiments.build_classifier("wrn", info, depth=FLAGS.depth, width=width)
    start = time.time()
    history = experiments.train_classifier(
        classifier, train_ds, method=FLAGS.method, epochs=FLAGS.epochs, lr=FLAGS.lr,
        milestones=[int(m) for m in FLAGS.milestones], weight_decay=FLAGS.weight_decay, beta=beta,
        attack=experiments.training_attack(FLAGS.method, FLAGS.eps, FLAGS.step_size, FLAGS.attack_steps),
        extra_callbacks=extra_callbacks,
    )
    train_seconds = time.time() - start
    attack = experiments.evaluation_attacks(FLAGS.eps, FLAGS.eval_steps, FLAGS.eval_step_size)
    row = experiments.evaluate(classifier, test_ds, attack)
    row["local_lipschitz"] = experiments.mean_local_lipschitz(
        classifier, test_ds, FLAGS.eps, FLAGS.step_size, steps=10, max_examples=FLAGS.lipschitz_examples)
    row.update(width=width, seed=seed, beta=beta, params=int(classifier.count_params()),
               train_seconds=round(train_seconds, 1), final_lambda=float(history.get("lambda", [beta])[-1]))
    print(f"w{width} seed {seed} lambda {beta:g} -> {row['final_lambda']:.3g}: clean {row['clean_accuracy']:.4f} "
          f"robust {row['robust_accuracy']:.4f} stability {row['stability']:.4f} ({train_seconds:.0f} s)", flush=True)
    return row, history


def _ratio_target(narrow, seed, history):
    """Writes the narrow run's ``reference_run_s<seed>.json``; returns the ratio the ratio rule matches."""
    summary_path = os.path.join(FLAGS.output_dir, f"reference_run_s{seed}.json")
    experiments.write_json(summary_path, dict(width=narrow, depth=FLAGS.depth, method=FLAGS.method, seed=seed,
                                              beta=FLAGS.beta, history=history))
    source = FLAGS.reference_summary or summary_path
    if FLAGS.war_reference == "per_epoch":
        return reference_ratio(source, per_epoch=True)
    return reference_ratio(source, last_epochs=max(1, len(reference_ratio(source, per_epoch=True)) // 2))


def _checked_flags():
    """``(widths, schedules, grid)`` from the flags, with errors naming the flag."""
    widths = sorted({int(w) for w in FLAGS.widths})
    unknown = [s for s in FLAGS.schedules if s not in SCHEDULES]
    if unknown or not FLAGS.schedules:
        raise ValueError(f"Invalid value for flag `schedules`. Expected some of {', '.join(SCHEDULES)}. "
                         f"Received: {FLAGS.schedules!r}")
    grid = [float(v) for v in FLAGS.lambda_grid]
    if any(not v > 0 for v in grid):
        raise ValueError(f"Invalid value for flag `lambda_grid`. Expected positive lambdas. Received: {grid!r}")
    if len(widths) < 2:
        raise ValueError(f"Invalid value for flag `widths`. Expected at least two widths (the narrowest is the "
                         f"tuned reference). Received: {FLAGS.widths!r}")
    return widths, list(dict.fromkeys(FLAGS.schedules)), grid


def _schedule_callbacks(schedule, width, seed, target, narrow_history, holdout):
    """The lambda callbacks of one wide run."""
    log_dir = os.path.join(FLAGS.output_dir, f"tensorboard_{schedule}_w{width}_s{seed}")
    if schedule == "ratio":
        return [RatioMatchingLambda(
            target, ema=FLAGS.war_ema, enlarge_only=FLAGS.war_enlarge_only, min_value=0.0,
            max_value=FLAGS.war_max_factor * FLAGS.beta, warmup_epochs=FLAGS.war_warmup_epochs, log_dir=log_dir)]
    if schedule == "stability":
        return [_stability_callback(holdout, narrow_history, log_dir)]
    return []


def _stability_callback(holdout, reference=None, log_dir=None):
    """The stability rule on the held-out points (measure-only without ``reference``)."""
    cheap = attacks.PGD(FLAGS.eps, FLAGS.eps / 4, FLAGS.stability_steps, random_start="uniform", seed=0)
    return StabilityMatchingLambda(
        *holdout, cheap, reference_stability=reference, gain=FLAGS.stability_gain,
        max_step=FLAGS.stability_max_step, max_factor=FLAGS.war_max_factor, warmup_epochs=FLAGS.war_warmup_epochs,
        log_dir=log_dir)


def _one_seed(seed, widths, schedules, grid):
    """All runs of one seed: ``(rows, histories)``."""
    info, train_ds, test_ds = experiments.study_data(FLAGS, seed=seed)
    holdout = None
    if "stability" in schedules:
        holdout, test_ds = experiments.split_holdout(test_ds, FLAGS.stability_examples)
    data = (info, train_ds, test_ds)
    rows, histories = [], {}

    measure = [_stability_callback(holdout)] if holdout is not None else []
    row, narrow_history = _train_and_measure(widths[0], seed, data, FLAGS.beta, measure)
    rows.append(dict(row, schedule="narrow reference"))
    histories[f"narrow_w{widths[0]}_s{seed}"] = narrow_history
    target = _ratio_target(widths[0], seed, narrow_history) if "ratio" in schedules else None

    for width in widths[1:]:
        for schedule in schedules:
            callbacks = _schedule_callbacks(schedule, width, seed, target, narrow_history, holdout)
            row, history = _train_and_measure(width, seed, data, FLAGS.beta, callbacks)
            if callbacks and schedule == "ratio":
                row["proposals"] = [u["proposed_lambda"] for u in callbacks[0].records]
            rows.append(dict(row, schedule=schedule))
            histories[f"{schedule}_w{width}_s{seed}"] = history

    for value in grid:
        reuse = [r for r in rows if r["schedule"] == "fixed" and r["width"] == widths[-1] and value == FLAGS.beta]
        row = reuse[0] if reuse else _train_and_measure(widths[-1], seed, data, value)[0]
        rows.append(dict(row, schedule=f"grid {value:g}"))
    return rows, histories


def _cost_table(rows, widths, schedules, grid):
    """Per seed: the grid's best lambda (by mean robust accuracy), each rule; runs and minutes of each approach."""
    widest = [r for r in rows if r["width"] == widths[-1]]
    narrow = {r["seed"]: r for r in rows if r["schedule"] == "narrow reference"}
    table = []
    if grid:
        means = {v: np.mean([r["robust_accuracy"] for r in widest if r["schedule"] == f"grid {v:g}"]) for v in grid}
        best = max(grid, key=lambda v: means[v])
        chosen = [r for r in widest if r["schedule"] == f"grid {best:g}"]
        minutes = {s: sum(r["train_seconds"] for r in widest if r["seed"] == s and r["schedule"].startswith("grid"))
                   / 60 for s in narrow}
        table.append(experiments.summarize_seeds(
            [dict(r, runs=len(grid), minutes=minutes[r["seed"]]) for r in chosen], _COST_METRICS,
            approach=f"grid best (lambda {best:g} of {', '.join(f'{v:g}' for v in grid)})"))
    for schedule in schedules:
        chosen = [r for r in widest if r["schedule"] == schedule]
        extra = 0 if schedule == "fixed" else 1  # the rules need the narrow reference run
        table.append(experiments.summarize_seeds(
            [dict(r, runs=1 + extra, minutes=(r["train_seconds"] + extra * narrow[r["seed"]]["train_seconds"]) / 60)
             for r in chosen], _COST_METRICS, approach=schedule))
    return table


_COST_METRICS = ("final_lambda", "clean_accuracy", "robust_accuracy", "stability", "runs", "minutes")


def run():
    """Runs the study with the current FLAGS; returns the report dict."""
    widths, schedules, grid = _checked_flags()
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    rows, histories = [], {}
    for seed in experiments.seed_values(FLAGS.seed, FLAGS.seeds):
        seed_rows, seed_histories = _one_seed(seed, widths, schedules, grid)
        rows += seed_rows
        histories.update(seed_histories)

    summary = experiments.summarize_runs(rows, ["schedule", "width", "beta"], METRICS)
    cost = _cost_table(rows, widths, schedules, grid)
    report = dict(
        study="width", dataset=FLAGS.dataset, depth=FLAGS.depth, method=FLAGS.method, beta=FLAGS.beta,
        eps=FLAGS.eps, epochs=FLAGS.epochs, seeds=FLAGS.seeds, schedules=schedules, lambda_grid=grid,
        rules="ratio and stability matching, designed from Wu et al.'s principle (not the paper's Algorithm 1)",
        runs=summary, cost=cost, histories=histories,
    )
    narrow = [r for r in summary if r["schedule"] == "narrow reference"]
    curves = {s: narrow + [r for r in summary if r["schedule"] == s] for s in schedules}
    proposals = {f"ratio_w{r['width']}_s{r['seed']}": r["proposals"] for r in rows if "proposals" in r}
    examples = rows[0]["examples"]
    return experiments.write_results(
        FLAGS.output_dir, report,
        header=(f"Width study: {FLAGS.dataset}, WRN-{FLAGS.depth}-w, {FLAGS.method}, lambda {FLAGS.beta}, "
                f"eps {FLAGS.eps}, {FLAGS.epochs} epochs, {examples} test examples, "
                f"{experiments.over_seeds(FLAGS.seeds)}\n\n"),
        rows=summary,
        columns=["schedule", "width", "beta", "final_lambda", "clean_accuracy", "robust_accuracy", "stability",
                 "local_lipschitz", "train_seconds"],
        tables=[((f"Tuning cost at width {widths[-1]} (training runs and minutes per seed; the grid's best lambda "
                  "is chosen on the evaluated test points, which favours the grid)"),
                 cost, ["approach", "final_lambda", "robust_accuracy", "stability", "clean_accuracy", "runs",
                        "minutes"])],
        plots={
            "width_study.png": lambda path: experiments.plot_metrics_vs_width(
                curves, path, title=f"{FLAGS.dataset}, WRN-{FLAGS.depth}-w, {FLAGS.method}"),
            "war_lambda.png": lambda path: experiments.plot_lambda_schedules(
                histories, path, fixed=FLAGS.beta, proposals=proposals),
        },
    )


def main(argv):
    del argv
    run()


if __name__ == "__main__":
    app.run(main)
