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
never retrains or rewrites a finished model or evaluation.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfnorms  # noqa: E402
from tfnorms import attacks, callbacks, data, experiments, metrics, optimization, regularizers, resume  # noqa: E402

FLAGS = flags.FLAGS
_FLAGS_DEFINED_ELSEWHERE = frozenset(FLAGS)  # absl's own (see run_config)

# Data and model.
flags.DEFINE_enum("dataset", "cifar10", sorted(data.DATASETS), "Data set ('digits' is embedded and offline).")
flags.DEFINE_string("data_dir", None, "tensorflow-datasets directory with pre-downloaded data.")
flags.DEFINE_integer("image_size", 16, "Side of the upsampled images of the 'digits' data set.")
flags.DEFINE_enum("model", "wrn", list(experiments.CLASSIFIERS), "Architecture.")
flags.DEFINE_integer("depth", 34, "WideResNet depth (6n + 4).")
flags.DEFINE_integer("width", 10, "WideResNet widening factor (small_cnn: base width).")
# Adversarial training.
flags.DEFINE_enum("method", "trades", ["pgd", "pgd_lambda", "trades", "mart", "alp", "natural"],
                  "Training method ('natural' = plain cross-entropy).")
flags.DEFINE_float("beta", None, "Robust-term weight (TRADES beta / Wu et al.'s lambda); method default if unset.")
flags.DEFINE_float("eps", 0.031, "l_inf radius of the training and evaluation attacks.")
flags.DEFINE_float("step_size", 0.007, "Step size of the training attack.")
flags.DEFINE_integer("attack_steps", 10, "Steps of the training attack.")
flags.DEFINE_integer("eval_steps", 20, "Steps of the PGD / CW evaluation attacks.")
flags.DEFINE_float("eval_step_size", 0.007, "Step size of the evaluation attacks.")
flags.DEFINE_integer("val_examples", 1000, "Test examples evaluated (clean + PGD) after every epoch; 0 = none.")
flags.DEFINE_integer("eval_examples", 0, "Test examples in the final evaluation; 0 = the whole test set.")
flags.DEFINE_enum("final_eval", "pgd", ["pgd", "autoattack"],
                  "Final evaluation: PGD and CW only, or also AutoAttack (standard version; slow on CPU).")
flags.DEFINE_bool("natural_twin", False, "Also train and evaluate a naturally trained twin.")
# Optimisation.
flags.DEFINE_integer("epochs", 100, "Training epochs.")
flags.DEFINE_integer("batch_size", 128, "Global batch size.")
flags.DEFINE_float("lr", 0.1, "Initial SGD learning rate.")
flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
flags.DEFINE_list("lr_milestones", ["75", "90", "100"], "1-based epochs where the learning rate is multiplied by 0.1.")
flags.DEFINE_float("weight_decay", 2e-4, "Coupled (PyTorch-style) L2 weight decay on all parameters.")
# Norm control.
flags.DEFINE_enum("norm_decay_ord", "none", ["none", "1", "inf", "both"], "Norm decay on Conv2D/Dense kernels.")
flags.DEFINE_float("norm_decay_factor", 1e-4, "Norm decay strength beta.")
flags.DEFINE_float("norm_decay_momentum", 0.0, "Liang & Huang's decaying memory of maximal groups (0.5 in the paper; 0 = off).")
flags.DEFINE_float("svc_clip", 0.0, "Singular value clipping bound (0 = off).")
flags.DEFINE_integer("svc_every", 100, "Clip singular values every N training steps.")
# Performance and bookkeeping.
flags.DEFINE_enum("precision", "float32", ["float32", "mixed_float16", "mixed_bfloat16"], "Keras dtype policy.")
flags.DEFINE_bool("jit", False, "Compile the train step with XLA (measure first: slower on some CPUs).")
flags.DEFINE_enum("distribution", "none", ["none", "mirrored", "multi_worker"],
                  "tf.distribute strategy: 'mirrored' = all local GPUs, 'multi_worker' = TF_CONFIG cluster.")
flags.DEFINE_string("logdir", "runs/trades_cifar", "Output directory (TensorBoard, backup, model, evaluation).")
flags.DEFINE_integer("seed", 0, "Random seed.")
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
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()
    if kind == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def add_norm_control(model):
    """Norm decay regularizers on every Conv2D/Dense kernel, configured from the model."""
    if FLAGS.norm_decay_ord == "none":
        return
    ords = {"1": 1, "inf": np.inf, "both": [1, np.inf]}[FLAGS.norm_decay_ord]
    regularizers.add_norm_decay(model, FLAGS.norm_decay_factor, ord=ords)


def make_optimizer(steps_per_epoch):
    schedule = optimization.piecewise_learning_rate(
        FLAGS.lr, steps_per_epoch, [int(m) for m in FLAGS.lr_milestones if int(m) <= FLAGS.epochs]
    )
    optimizer = keras.optimizers.SGD(schedule, momentum=FLAGS.momentum)
    if FLAGS.norm_decay_ord != "none" and FLAGS.norm_decay_momentum > 0:
        optimizer = regularizers.NormDecayMomentum(optimizer, momentum=FLAGS.norm_decay_momentum)
    return optimizer


def eval_attacks():
    return {
        f"pgd{FLAGS.eval_steps}": attacks.PGD(FLAGS.eps, FLAGS.eval_step_size, FLAGS.eval_steps, random_start="uniform", seed=FLAGS.seed),
        f"cw{FLAGS.eval_steps}": attacks.CW(FLAGS.eps, FLAGS.eval_step_size, FLAGS.eval_steps, seed=FLAGS.seed),
    }


def train(method, log_dir, train_ds, val_ds, info, strategy, extra_callbacks=()):
    """Trains one classifier with ``method``; returns it (resuming from ``log_dir/backup`` if interrupted)."""
    steps_per_epoch = int(train_ds.cardinality())
    with strategy.scope():
        classifier = experiments.build_classifier(FLAGS.model, info, FLAGS.depth, FLAGS.width)
        add_norm_control(classifier)
        optimization.add_coupled_weight_decay(classifier, FLAGS.weight_decay)
        if method == "natural":
            model = classifier
            model.compile(make_optimizer(steps_per_epoch),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                          metrics=[keras.metrics.SparseCategoricalAccuracy(name="clean_accuracy")],
                          jit_compile=FLAGS.jit)
        else:
            beta = FLAGS.beta if method != "pgd" else None
            eval_attack = attacks.PGD(FLAGS.eps, FLAGS.eval_step_size, FLAGS.eval_steps, seed=FLAGS.seed)
            attack = experiments.training_attack(method, FLAGS.eps, FLAGS.step_size, FLAGS.attack_steps)
            model = tfnorms.AdversarialTrainer(
                classifier, method=method, beta=beta, attack=attack, eval_attack=eval_attack
            )
            model.compile(make_optimizer(steps_per_epoch), jit_compile=FLAGS.jit)
    tensorboard = keras.callbacks.TensorBoard(log_dir)
    fit_callbacks = [
        resume.AtomicBackupAndRestore(os.path.join(log_dir, "backup")),  # first: an epoch is backed up, then logged
        tensorboard,
        callbacks.LayerNormLogger(log_dir, ords=(1, np.inf)),
        *extra_callbacks,
    ]
    if FLAGS.svc_clip > 0:
        fit_callbacks.append(callbacks.SingularValueClipping(FLAGS.svc_clip, every_n_steps=FLAGS.svc_every))
    fit_callbacks += [resume.FlushTensorBoard(tensorboard), *resume.fault_injection(method)]
    # shuffle=False: the tf.data pipeline shuffles (Keras warns that it would ignore shuffle=True).
    model.fit(train_ds, epochs=FLAGS.epochs, validation_data=val_ds, callbacks=fit_callbacks, verbose=2, shuffle=False)
    return classifier


def evaluate(classifier, test_ds, phase="evaluation"):
    """Clean accuracy, robust accuracy and stability under PGD and CW (and AutoAttack) on ``test_ds``."""
    results = {}
    for step, (name, attack) in enumerate(eval_attacks().items(), 1):
        scores = metrics.evaluate_robustness(classifier, test_ds, attack=attack)
        results["clean_accuracy"] = scores["clean_accuracy"]
        results[f"{name}_robust_accuracy"] = scores["robust_accuracy"]
        results[f"{name}_stability"] = scores["stability"]
        resume.fault_point(f"{phase}:{step}")
    if FLAGS.final_eval == "autoattack":
        evaluation = attacks.AutoAttack(FLAGS.eps, seed=FLAGS.seed).evaluate(classifier, test_ds, dataset=FLAGS.dataset)
        results["autoattack_robust_accuracy"] = evaluation.robust_accuracy
        results["autoattack"] = evaluation.report
    results["examples"] = int(sum(int(tf.shape(y)[0]) for _, y in test_ds))
    return results


def run(extra_callbacks=()):
    """Runs the example with the current FLAGS; returns the evaluation report."""
    keras.utils.set_random_seed(FLAGS.seed)
    keras.mixed_precision.set_dtype_policy(FLAGS.precision)
    strategy = make_strategy(FLAGS.distribution)
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
    state = resume.RunState(os.path.join(FLAGS.logdir, "state.json"), config=run_config())
    trained = {}
    for method in runs:
        log_dir = FLAGS.logdir if method == FLAGS.method else os.path.join(FLAGS.logdir, "natural_twin")
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
    if state.is_done("report") and os.path.exists(os.path.join(FLAGS.logdir, "evaluation.json")):
        print(f"{FLAGS.logdir} holds a finished run (state.json); nothing to do. "
              "Use another --logdir, or delete this one, to train again.")
        print_report(report)
    else:
        write_report(report)
        state.finish("report")
    return report


def write_report(report):
    """Writes ``<logdir>/evaluation.json`` (atomically) and prints the table."""
    path = os.path.join(FLAGS.logdir, "evaluation.json")
    resume.write_json_atomic(path, report, hint="Free disk space and rerun: the finished phases are kept.")
    print_report(report)
    print(f"wrote {path}")


def print_report(report):
    keys = [k for k in next(iter(report["runs"].values())) if k.endswith(("accuracy", "stability"))]
    print(f"\nEvaluation on {next(iter(report['runs'].values()))['examples']} test examples "
          f"({report['dataset']}, eps={report['eps']}):")
    print(f"{'method':>10} " + " ".join(f"{k:>24}" for k in keys))
    for method, results in report["runs"].items():
        print(f"{method:>10} " + " ".join(f"{results[k]:>24.4f}" for k in keys))


def main(argv):
    del argv
    apply_quickstart()
    os.makedirs(FLAGS.logdir, exist_ok=True)
    FLAGS.append_flags_into_file(os.path.join(FLAGS.logdir, "flags.txt"))
    run()


if __name__ == "__main__":
    app.run(main)
