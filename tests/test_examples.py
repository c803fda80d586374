"""The main example runs end to end on mock tfds data, and resumes after an interruption."""

import json

import keras
import pytest
import tensorflow_datasets as tfds

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
