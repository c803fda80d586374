"""The main example runs end to end on mock tfds data and resumes after an interruption; the pieces it shares.

The pieces of :mod:`tfnorms.experiments` that the example scripts share are
tested here too: the absl flags, ``train_classifier``'s logs, backups,
validation attack and strategy (its optimisation and regularizers are tested
in ``tests/test_experiments.py``), the PGD + CW evaluation and the study outputs.
"""

import json
import sys

import keras
import numpy as np
import pytest
import tensorflow_datasets as tfds
from absl import flags

from tfnorms import attacks, experiments, resume
from tfnorms.regularizers import NormDecay, norm_decay_terms

TINY = [
    "--dataset=cifar10", "--model=small_cnn", "--width=4", "--batch_size=8", "--epochs=2",
    "--attack_steps=2", "--eval_steps=2", "--val_examples=8", "--eval_examples=16",
    "--lr_milestones=2", "--norm_decay_ord=1", "--svc_clip=2.0", "--svc_every=2",
]


def parse(module, *args):
    module.FLAGS.unparse_flags()
    module.FLAGS(["trades_cifar", *args])
    module.apply_quickstart()


class Preempted(Exception):
    pass


class Interrupt(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:
            raise Preempted("simulated preemption")


class RecordEpochs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


def test_example_trains_evaluates_and_resumes(trades_cifar, tmp_path):
    logdir = tmp_path / "run"
    parse(trades_cifar, *TINY, f"--logdir={logdir}")
    with tfds.testing.mock_data(num_examples=32):
        with pytest.raises(Preempted):
            trades_cifar.run(extra_callbacks=[Interrupt()])
        assert (logdir / "backup").exists()  # the epoch-0 checkpoint survived the interruption
        recorder = RecordEpochs()
        report = trades_cifar.run(extra_callbacks=[recorder])
    assert recorder.epochs == [1]  # resumed at the second epoch, not from scratch
    results = report["runs"]["trades"]
    for key in ("clean_accuracy", "pgd2_robust_accuracy", "pgd2_stability", "cw2_robust_accuracy"):
        assert 0.0 <= results[key] <= 1.0
    assert results["pgd2_robust_accuracy"] <= results["clean_accuracy"]
    # One evaluation (tfnorms.metrics.evaluate): per attack, and worst case per example over PGD and CW.
    assert results["robust_accuracy"] <= min(results["pgd2_robust_accuracy"], results["cw2_robust_accuracy"])
    robustness = results["robustness"]
    assert robustness["n_points"] == results["examples"] == 16
    assert robustness["robust_accuracy"] == results["robust_accuracy"]
    assert robustness["per_attack"]["cw2"] == {"robust_accuracy": results["cw2_robust_accuracy"],
                                               "stability": results["cw2_stability"]}
    assert robustness["attacks"]["pgd2"]["steps"] == 2 and robustness["attacks"]["cw2"]["seed"] == 0
    assert json.loads((logdir / "evaluation.json").read_text()) == report
    reloaded = keras.models.load_model(results["model_path"])
    assert reloaded.output_shape == (None, 10)
    events = [p for p in logdir.rglob("events.out.tfevents.*")]
    assert events, "no TensorBoard event files"


def test_quickstart_preset_keeps_explicit_flags(trades_cifar, tmp_path):
    parse(trades_cifar, "--quickstart", "--epochs=3", f"--logdir={tmp_path}")
    assert trades_cifar.FLAGS.dataset == "digits"
    assert trades_cifar.FLAGS.epochs == 3
    assert trades_cifar.FLAGS.natural_twin
    parse(trades_cifar)
    assert trades_cifar.FLAGS.dataset == "cifar10" and trades_cifar.FLAGS.depth == 34
    assert trades_cifar.FLAGS.method == "trades" and trades_cifar.FLAGS.epochs == 100


# ---------------------------------------------------------------- the shared flags


def test_define_flags_defines_the_shared_flags_with_the_scripts_defaults_for_the_calling_module():
    values = flags.FlagValues()
    names = experiments.define_flags(values, dataset="cifar10", model="wrn", lr_milestones=["75"], beta=None,
                                     attack="pgd", helps={"beta": "Fixed lambda."})
    assert names == ["dataset", "model", "lr_milestones", "beta", "attack"]
    values(["script", "--lr_milestones=7,9", "--model=small_cnn"])
    assert (values.dataset, values.model, values.lr_milestones, values.beta, values.attack) == (
        "cifar10", "small_cnn", ["7", "9"], None, "pgd")
    assert values["beta"].help == "Fixed lambda."
    assert values["dataset"].help.endswith(": Data set ('digits' is embedded and offline).")  # after the choices
    key_flags = {flag.name for flag in values.get_key_flags_for_module(sys.modules[__name__])}
    assert set(names) <= key_flags  # listed by the calling script's --helpshort
    with pytest.raises(flags.IllegalFlagValueError):
        values["model"].parse("resnet1000")
    with pytest.raises(ValueError, match="'logdir'"):
        experiments.define_flags(flags.FlagValues(), logdir="runs")


def test_the_main_example_defines_the_shared_flags_through_define_flags(trades_cifar):
    shared = [name for name in trades_cifar.EXAMPLE_FLAGS if name in experiments._SHARED_FLAGS]
    assert len(shared) > 15
    for name in shared:
        assert trades_cifar.FLAGS[name].help.endswith(experiments._SHARED_FLAGS[name][1]), name


# ---------------------------------------------------------------- the PGD + CW evaluation


def test_evaluation_attacks_pgd_and_cw_share_steps_step_size_and_seed():
    named = experiments.evaluation_attacks(0.1, steps=3, kind="pgd_cw", seed=7)
    assert list(named) == ["pgd3", "cw3"]
    pgd, cw = named.values()
    assert type(pgd) is attacks.PGD and type(cw) is attacks.CW
    for attack in (pgd, cw):
        assert (attack.eps, attack.step_size, attack.steps, attack.seed, attack.random_start) == (
            pytest.approx(0.1), pytest.approx(0.025), 3, 7, "uniform")


# ---------------------------------------------------------------- train_classifier: logs, backups, strategy


def digits(train_examples=16, eval_examples=8):
    """``(info, train_ds, test_ds)``: a few embedded 8x8 digits in batches of 8."""
    return experiments.load_study_data("digits", batch_size=8, image_size=8, train_examples=train_examples,
                                       eval_examples=eval_examples)


def train_trades(tmp_path, extra_callbacks):
    keras.utils.set_random_seed(0)
    info, train_ds, val_ds = digits()
    classifier = experiments.build_classifier("small_cnn", info, width=4)
    history = experiments.train_classifier(
        classifier, train_ds, method="trades", epochs=2, lr=0.05, beta=2.0,
        attack=experiments.training_attack("trades", 0.05, 0.02, 1),
        eval_attack=experiments.evaluation_attacks(0.05, steps=2)["pgd2"], norm_decay=("both", 1e-4),
        svc=(2.0, 1), validation_data=val_ds, log_dir=str(tmp_path / "logs"), backup_dir=str(tmp_path / "backup"),
        extra_callbacks=extra_callbacks, jit_compile=False)
    return classifier, history


def test_train_classifier_logs_backs_up_and_resumes_an_interrupted_run(tmp_path):
    with pytest.raises(Preempted):
        train_trades(tmp_path, [Interrupt()])
    assert resume.AtomicBackupAndRestore(tmp_path / "backup").read_metadata()["epoch"] == 1
    recorder = RecordEpochs()
    classifier, history = train_trades(tmp_path, [recorder])
    assert recorder.epochs == [1]  # resumed at the second epoch
    assert {"robust_loss", "val_robust_accuracy", "val_stability"} <= set(history)
    (term,) = norm_decay_terms(classifier.get_layer("conv1").kernel_regularizer)
    assert type(term) is NormDecay and term.ords == (1, np.inf)
    assert {path.parent.name for path in (tmp_path / "logs").rglob("events.out.tfevents.*")} >= {"train", "validation"}
    metadata = json.loads((tmp_path / "backup" / "training_metadata.json").read_text())
    assert metadata["epoch"] == 2 and metadata["train_seconds"] > 0


class RecordModel(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.trained = self.model


def test_train_classifier_creates_the_trainer_and_optimizer_in_the_strategy_scope(two_cpu_strategy):
    info, train_ds, _ = digits()
    with two_cpu_strategy.scope():
        classifier = experiments.build_classifier("small_cnn", info, width=4)
    recorder = RecordModel()
    experiments.train_classifier(classifier, train_ds, method="trades", epochs=1, lr=0.05,
                                 attack=experiments.training_attack("trades", 0.05, 0.02, 1),
                                 strategy=two_cpu_strategy, extra_callbacks=[recorder], jit_compile=False)
    trainer = recorder.trained
    for variable in (trainer.beta, trainer.optimizer.iterations):  # created by train_classifier
        assert two_cpu_strategy.extended.variable_created_in_scope(variable.value), variable.path
    assert int(trainer.optimizer.iterations.numpy()) == 2


# ---------------------------------------------------------------- study outputs


def test_study_data_reads_the_studys_flags():
    values = flags.FlagValues()
    experiments.define_flags(values, dataset="digits", data_dir=None, image_size=8, batch_size=8, train_examples=16,
                             eval_examples=12, eval_batch_size=64, seed=0)
    values(["study"])
    info, train_ds, test_ds = experiments.study_data(values)
    assert info.image_shape == (8, 8, 1)
    assert int(train_ds.cardinality()) == 2
    assert sum(int(y.shape[0]) for _, y in test_ds) == 12


def test_write_results_writes_json_markdown_and_plots_and_prints_the_table(tmp_path, capsys):
    drawn = []
    report = {"study": "tiny", "value": float("nan")}
    returned = experiments.write_results(str(tmp_path), report, "Tiny study\n\n", [{"run": "a", "clean_accuracy": 0.5}],
                                         ["run", "clean_accuracy"], plots={"a.png": drawn.append})
    assert returned is report
    assert json.loads((tmp_path / "results.json").read_text()) == {"study": "tiny", "value": None}
    table = "Tiny study\n\n| run | clean_accuracy |\n|---|---|\n| a | 0.5000 |"
    assert (tmp_path / "results.md").read_text() == table + "\n"
    assert drawn == [str(tmp_path / "a.png")]
    assert capsys.readouterr().out == f"{table}\nwrote {tmp_path}/results.json, results.md, a.png\n"
