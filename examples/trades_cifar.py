"""Adversarial training of a WideResNet (TRADES by default) with norm traces.

Defaults reproduce the GPU setting of the papers: CIFAR-10, WRN-34-10, TRADES
beta 6, l_inf eps 0.031, 10 attack steps of 0.007, SGD 0.1 with momentum 0.9,
coupled weight decay 2e-4, 100 epochs with the step schedule (x0.1 at epochs
75, 90, 100). ``--quickstart`` switches to a CPU-sized run on the embedded
digits data set that finishes in a few minutes and trains a naturally trained
twin for comparison.

    python examples/trades_cifar.py --quickstart
    python examples/trades_cifar.py --dataset=cifar10 --data_dir=~/tensorflow_datasets
    python examples/trades_cifar.py --distribution=mirrored --precision=mixed_bfloat16

Every run writes to ``--logdir``: TensorBoard logs (loss curves, clean and
adversarial accuracy, robust accuracy and stability on the validation subset,
layer-norm traces), a backup for resuming an interrupted run (rerun the same
command), the trained classifier ``model.keras`` and ``evaluation.json``, and
``state.json``, the finished phases of the run (``tfnorms.resume``): a rerun
never retrains or rewrites a finished model or evaluation. With
``--distribution=multi_worker`` (every worker runs the same command, ``TF_CONFIG``
set; docs/distributed.md#distributed) only the chief writes there, the other
workers into ``<logdir>/workertemp_worker_<index>``.

Training goes through ``tfnorms.experiments.train_classifier`` (the pipeline of
the paper studies too) inside ``tfnorms.resume.train_once``; the final
evaluation is one ``tfnorms.metrics.evaluate`` over PGD and CW (per attack and
worst case per example).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfnorms  # noqa: E402,F401  (registers the tfnorms Keras objects for loading)
from tfnorms import attacks, data, experiments, metrics, resume  # noqa: E402

FLAGS = flags.FLAGS
_FLAGS_DEFINED_ELSEWHERE = frozenset(FLAGS)  # absl's own (see run_config)

# Data, model, adversarial training and optimisation: the flags shared with the other examples.
experiments.define_flags(
    dataset="cifar10", data_dir=None, image_size=16, model="wrn", depth=34, width=10, beta=None, eps=0.031,
    step_size=0.007, attack_steps=10, eval_steps=20, eval_step_size=0.007, eval_examples=0, epochs=100,
    batch_size=128, lr=0.1, lr_milestones=["75", "90", "100"], weight_decay=2e-4, norm_decay_momentum=0.0,
    svc_every=100, seed=0,
)
flags.DEFINE_enum("method", "trades", ["pgd", "pgd_lambda", "trades", "mart", "alp", "natural"],
                  "Training method ('natural' = plain cross-entropy).")
flags.DEFINE_integer("val_examples", 1000, "Test examples evaluated (clean + PGD) after every epoch; 0 = none.")
flags.DEFINE_enum("final_eval", "pgd", ["pgd", "autoattack"],
                  "Final evaluation: PGD and CW only, or also AutoAttack (standard version; slow on CPU).")
flags.DEFINE_bool("natural_twin", False, "Also train and evaluate a naturally trained twin.")
flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
# Norm control.
flags.DEFINE_enum("norm_decay_ord", "none", ["none", "1", "inf", "both"], "Norm decay on Conv2D/Dense kernels.")
flags.DEFINE_float("norm_decay_factor", 1e-4, "Norm decay strength beta.")
flags.DEFINE_float("svc_clip", 0.0, "Singular value clipping bound (0 = off).")
# Performance and bookkeeping.
flags.DEFINE_enum("precision", "float32", ["float32", "mixed_float16", "mixed_bfloat16"], "Keras dtype policy.")
flags.DEFINE_bool("jit", False, "Compile the train step with XLA (measure first: slower on some CPUs).")
flags.DEFINE_enum("distribution", "none", ["none", "mirrored", "multi_worker"],
                  "tf.distribute strategy: 'mirrored' = all local GPUs, 'multi_worker' = TF_CONFIG cluster.")
flags.DEFINE_string("logdir", "runs/trades_cifar", "Output directory (TensorBoard, backup, model, evaluation).")
flags.DEFINE_bool("quickstart", False,
                  "CPU-sized preset: digits, WRN-10-2, 8 epochs, eps 0.1, natural twin. Explicit flags override it.")

QUICKSTART = dict(
    dataset="digits", depth=10, width=2, epochs=8, batch_size=64, lr=0.05, eps=0.1, step_size=0.025,
    attack_steps=5, eval_step_size=0.01, lr_milestones=["7"], natural_twin=True, val_examples=200,
    weight_decay=5e-4, logdir="runs/quickstart",
)


EXAMPLE_FLAGS = sorted(set(FLAGS) - _FLAGS_DEFINED_ELSEWHERE)
# Flags that may change when an interrupted run is resumed (where it runs, not what it computes).
RESUME_MAY_CHANGE = ("logdir", "data_dir", "quickstart", "distribution", "jit")


def run_config():
    """The values of this example's flags that a resumed run must share with the interrupted one."""
    return {name: FLAGS[name].value for name in EXAMPLE_FLAGS if name not in RESUME_MAY_CHANGE}


def apply_quickstart():
    """Overrides defaults with the quick-start preset, keeping flags given explicitly."""
    if FLAGS.quickstart:
        for name, value in QUICKSTART.items():
            if not FLAGS[name].present:
                setattr(FLAGS, name, value)


def make_strategy(kind):
    """The ``tf.distribute`` strategy of ``--distribution``."""
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()
    if kind == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def eval_attacks():
    """The final evaluation's attacks: PGD-k and CW-k (``--eval_steps``, ``--eval_step_size``)."""
    return experiments.evaluation_attacks(FLAGS.eps, FLAGS.eval_steps, FLAGS.eval_step_size, kind="pgd_cw",
                                          seed=FLAGS.seed)


# --norm_decay_ord -> the ord of train_classifier's norm_decay (None: no norm decay).
_NORM_DECAY_ORDS = {"none": None, "1": "l1", "inf": "linf", "both": "both"}


def train(method, log_dir, train_ds, val_ds, info, strategy, extra_callbacks=()):
    """Trains one classifier with ``method``; returns it (resuming from ``log_dir/backup`` if interrupted)."""
    with strategy.scope():
        classifier = experiments.build_classifier(FLAGS.model, info, FLAGS.depth, FLAGS.width)
    ord = _NORM_DECAY_ORDS[FLAGS.norm_decay_ord]
    experiments.train_classifier(
        classifier, train_ds, method=method, epochs=FLAGS.epochs, lr=FLAGS.lr, momentum=FLAGS.momentum,
        milestones=[int(m) for m in FLAGS.lr_milestones], weight_decay=FLAGS.weight_decay, beta=FLAGS.beta,
        attack=experiments.training_attack(method, FLAGS.eps, FLAGS.step_size, FLAGS.attack_steps),
        eval_attack=eval_attacks()[f"pgd{FLAGS.eval_steps}"],  # robust accuracy on the validation subset
        norm_decay=(ord, FLAGS.norm_decay_factor) if ord else None, norm_decay_momentum=FLAGS.norm_decay_momentum,
        svc=(FLAGS.svc_clip, FLAGS.svc_every) if FLAGS.svc_clip > 0 else None,
        extra_callbacks=[*extra_callbacks, *resume.fault_injection(method)], validation_data=val_ds,
        log_dir=log_dir, backup_dir=os.path.join(log_dir, "backup"), strategy=strategy, jit_compile=FLAGS.jit,
        verbose=2,
    )
    return classifier


def evaluate(classifier, test_ds, phase="evaluation"):
    """Clean accuracy, robust accuracy and stability under PGD and CW (and AutoAttack) on ``test_ds``.

    Returns:
        The :meth:`tfnorms.metrics.RobustnessReport.flat` row (worst case and
        per attack, ``examples``), its full report under ``"robustness"``, and
        with ``--final_eval=autoattack`` ``"autoattack_robust_accuracy"`` and
        the AutoAttack report under ``"autoattack"``.
    """
    report = metrics.evaluate(classifier, test_ds, attacks=eval_attacks())
    results = dict(report.flat(), robustness=report.to_json())
    resume.fault_point(f"{phase}:1")
    if FLAGS.final_eval == "autoattack":
        evaluation = attacks.AutoAttack(FLAGS.eps, seed=FLAGS.seed).evaluate(classifier, test_ds, dataset=FLAGS.dataset)
        results["autoattack_robust_accuracy"] = evaluation.robust_accuracy
        results["autoattack"] = evaluation.report
        resume.fault_point(f"{phase}:2")
    return results


def run(extra_callbacks=()):
    """Runs the example with the current FLAGS; returns the evaluation report."""
    keras.utils.set_random_seed(FLAGS.seed)
    keras.mixed_precision.set_dtype_policy(FLAGS.precision)
    strategy = make_strategy(FLAGS.distribution)
    # Several workers: the chief writes to --logdir, every other worker to a directory of its own in it.
    logdir = resume.worker_dir(FLAGS.logdir, strategy)
    os.makedirs(logdir, exist_ok=True)
    FLAGS.append_flags_into_file(os.path.join(logdir, "flags.txt"))
    info = data.dataset_info(FLAGS.dataset, FLAGS.image_size if FLAGS.dataset == "digits" else None)
    size = dict(image_size=FLAGS.image_size) if FLAGS.dataset == "digits" else {}
    train_ds = data.load(FLAGS.dataset, "train", batch_size=FLAGS.batch_size, data_dir=FLAGS.data_dir,
                         seed=FLAGS.seed, **size)
    test_ds = data.load(FLAGS.dataset, "test", batch_size=FLAGS.batch_size, data_dir=FLAGS.data_dir, **size)
    val_ds = None
    if FLAGS.val_examples:
        val_ds = test_ds.take(max(1, FLAGS.val_examples // FLAGS.batch_size))
    eval_ds = test_ds if not FLAGS.eval_examples else test_ds.take(max(1, FLAGS.eval_examples // FLAGS.batch_size))

    runs = [FLAGS.method] + (["natural"] if FLAGS.natural_twin and FLAGS.method != "natural" else [])
    report = dict(dataset=FLAGS.dataset, model=FLAGS.model, depth=FLAGS.depth, width=FLAGS.width,
                  eps=FLAGS.eps, epochs=FLAGS.epochs, runs={})
    # Phases: "<method>" (training, one per run), "evaluation/<method>", "report". A finished phase is
    # never redone: its model is loaded, its results are read back from state.json.
    state = resume.RunState(os.path.join(logdir, "state.json"), config=run_config())
    trained = {}
    for method in runs:
        log_dir = logdir if method == FLAGS.method else os.path.join(logdir, "natural_twin")
        trained[method], _ = resume.train_once(
            state, method, os.path.join(log_dir, "model.keras"),
            lambda method=method, log_dir=log_dir: train(method, log_dir, train_ds, val_ds, info, strategy,
                                                         extra_callbacks),
            backup_dir=os.path.join(log_dir, "backup"),
        )
    for method in runs:
        def evaluation(method=method):
            classifier = trained[method]
            if classifier is None:  # trained by an earlier, interrupted run
                classifier = resume.load_finished_model(state, method)
            training = state.result(method)
            return dict(evaluate(classifier, eval_ds, phase=f"evaluation/{method}"),
                        train_seconds=training["train_seconds"], model_path=training["model_path"])

        report["runs"][method] = state.run_once(f"evaluation/{method}", evaluation)
    if state.is_done("report") and os.path.exists(os.path.join(logdir, "evaluation.json")):
        print(f"{logdir} holds a finished run (state.json); nothing to do. "
              "Use another --logdir, or delete this one, to train again.")
        print_report(report)
    else:
        write_report(report, logdir)
        state.finish("report")
    return report


def write_report(report, logdir):
    """Writes ``<logdir>/evaluation.json`` (atomically) and prints the table."""
    path = os.path.join(logdir, "evaluation.json")
    resume.write_json_atomic(path, report, hint="Free disk space and rerun: the finished phases are kept.")
    print_report(report)
    print(f"wrote {path}")


def print_report(report):
    """Prints one row per trained model: clean, worst-case and per-attack accuracy and stability."""
    keys = [k for k in next(iter(report["runs"].values())) if k.endswith(("accuracy", "stability"))]
    print(f"\nEvaluation on {next(iter(report['runs'].values()))['examples']} test examples "
          f"({report['dataset']}, eps={report['eps']}; robust_accuracy and stability: worst case over the attacks):")
    print(f"{'method':>10} " + " ".join(f"{k:>24}" for k in keys))
    for method, results in report["runs"].items():
        print(f"{method:>10} " + " ".join(f"{results[k]:>24.4f}" for k in keys))


def main(argv):
    del argv
    apply_quickstart()
    run()


if __name__ == "__main__":
    app.run(main)
