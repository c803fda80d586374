"""Fault injection: runs killed with SIGKILL at chosen points resume without redoing or losing finished work.

The main example runs in subprocesses that kill themselves at a named point
(``TFNORMS_FAULT_AT``, see :mod:`tfnorms.resume`) and is then resumed
in-process. Damaged and deleted backups, a kill between the two files of a
backup and a full disk are simulated in-process on a tiny model.
"""

import collections
import errno
import hashlib
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfnorms import resume

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = [
    "--dataset=digits", "--image_size=8", "--model=small_cnn", "--width=2", "--batch_size=128", "--epochs=2",
    "--attack_steps=1", "--eval_steps=1", "--val_examples=0", "--eval_examples=128", "--lr_milestones=2",
    "--natural_twin",
]
RESULT_KEYS = {"clean_accuracy", "robust_accuracy", "stability", "pgd1_robust_accuracy", "pgd1_stability",
               "cw1_robust_accuracy", "cw1_stability", "examples", "robustness", "train_seconds", "model_path"}


def run_killed(logdir, fault):
    """Runs the example in a subprocess that SIGKILLs itself at the fault point; returns its output."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3", **{resume.FAULT_ENV: fault})
    command = [sys.executable, str(ROOT / "examples" / "trades_cifar.py"), *TINY, f"--logdir={logdir}"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == -signal.SIGKILL, f"not killed at {fault}:\n{result.stderr[-4000:]}"
    return result


def phases(logdir):
    return json.loads((logdir / "state.json").read_text())["phases"]


def fingerprint(path):
    return path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest()


def logged_steps(directory):
    """``{tag: sorted steps}`` of the curves in ``directory``'s TensorBoard event files; fails on a duplicate point.

    Keras writes the model's description (tag ``keras``) at the start of every run; it is not a curve.
    """
    points = collections.Counter()
    for path in pathlib.Path(directory).glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            points.update((value.tag, event.step) for value in event.summary.value if value.tag != "keras")
    duplicated = [point for point, count in points.items() if count > 1]
    assert not duplicated, f"points logged twice in {directory}: {duplicated[:5]}"
    steps = collections.defaultdict(list)
    for tag, step in points:
        steps[tag].append(step)
    return {tag: sorted(values) for tag, values in steps.items()}


def test_killed_runs_resume_without_redoing_finished_phases(trades_cifar, tmp_path):
    logdir = tmp_path / "run"
    twin = logdir / "natural_twin"

    # Killed between the two runs: the robust model is saved and recorded, its backup not yet deleted.
    run_killed(logdir, "trades:done")
    assert phases(logdir)["trades"]["status"] == "done" and "natural" not in phases(logdir)
    assert (logdir / "backup").is_dir()
    robust = fingerprint(logdir / "model.keras")
    robust_curves = logged_steps(logdir / "train")
    assert robust_curves["epoch_loss"] == [0, 1]

    # Killed during the twin, in the middle of its second epoch: the robust model is neither retrained
    # nor rewritten, and its curves are not written again.
    run_killed(logdir, "natural:2")
    assert fingerprint(logdir / "model.keras") == robust
    assert logged_steps(logdir / "train") == robust_curves
    assert not (logdir / "backup").exists()  # the finished phase's leftover backup is cleaned up
    backup = json.loads((twin / "backup" / "training_metadata.json").read_text())
    assert backup["epoch"] == 1 and phases(logdir)["natural"] == {"status": "running"}

    # A damaged backup is a clear error naming the file and the fix, not a resume with other weights.
    parse(trades_cifar, *TINY, f"--logdir={logdir}")
    weights = twin / "backup" / backup["weights"]
    intact = weights.read_bytes()
    weights.write_bytes(intact[: len(intact) // 2])
    with pytest.raises(resume.ResumeError, match=f"{re.escape(str(weights))} is damaged.*"
                                                 f"Delete {re.escape(str(twin / 'backup'))} to start this phase over"):
        trades_cifar.run()
    weights.write_bytes(intact)

    # Killed during the final evaluation: the twin resumed at its second epoch, its time spans both runs.
    result = run_killed(logdir, "evaluation/natural:1")
    assert "Epoch 2/2" in result.stdout and "Epoch 1/2" not in result.stdout
    recorded = phases(logdir)
    assert recorded["natural"]["train_seconds"] > backup["train_seconds"] > 0
    assert recorded["evaluation/trades"]["status"] == "done"
    assert recorded["evaluation/natural"] == {"status": "running"}
    assert not (logdir / "evaluation.json").exists()
    assert logged_steps(twin / "train")["epoch_loss"] == [0, 1]
    twin_model = fingerprint(twin / "model.keras")

    # The rerun evaluates the twin and writes the report; nothing else is redone.
    report = trades_cifar.run()
    assert json.loads((logdir / "evaluation.json").read_text()) == report
    for method in ("trades", "natural"):
        assert set(report["runs"][method]) == RESULT_KEYS
        assert report["runs"][method]["train_seconds"] == recorded[method]["train_seconds"]
    assert report["runs"]["trades"] == {k: v for k, v in recorded["evaluation/trades"].items() if k != "status"}
    assert (fingerprint(logdir / "model.keras"), fingerprint(twin / "model.keras")) == (robust, twin_model)
    assert logged_steps(logdir / "train") == robust_curves
    assert logged_steps(twin / "train")["epoch_loss"] == [0, 1]

    # A rerun of a finished run rewrites nothing.
    written = fingerprint(logdir / "evaluation.json")
    assert trades_cifar.run() == report
    assert fingerprint(logdir / "evaluation.json") == written


def parse(module, *args):
    module.FLAGS.unparse_flags()
    module.FLAGS(["trades_cifar", *args])
    module.apply_quickstart()


# -- the backup callback on a tiny model

X = np.random.default_rng(0).random((8, 3), dtype=np.float32)
Y = np.random.default_rng(1).random((8, 2), dtype=np.float32)


class Killed(BaseException):
    """Stands for a kill: no ``except Exception`` stops it."""


class Record(keras.callbacks.Callback):
    """Epochs run, and the weights the model starts from (after the backup is restored)."""

    def __init__(self, stop_at=None):
        super().__init__()
        self.epochs, self.stop_at = [], stop_at

    def on_train_begin(self, logs=None):
        self.start_weights = self.model.get_weights()

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.stop_at:
            raise Killed  # before the epoch (its predecessor is backed up)
        self.epochs.append(epoch)


def fit(backup, epochs, backup_callback=None, stop_at=None):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), "mse", run_eagerly=True)  # no tracing: faster here
    record = Record(stop_at)
    callback = backup_callback or resume.AtomicBackupAndRestore(backup)
    model.fit(X, Y, batch_size=4, epochs=epochs, callbacks=[callback, record], verbose=0)
    return model, record


def weights_of(path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), "mse")
    model.optimizer.build(model.trainable_variables)
    model.load_weights(path)
    return model.get_weights()


def assert_same_weights(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_array_equal(a, e)


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_damaged_latest_backup_falls_back_to_the_previous_epoch(tmp_path, damage):
    fit(tmp_path, 2)
    assert sorted(os.listdir(tmp_path)) == ["epoch-0001.weights.h5", "epoch-0002.weights.h5", "training_metadata.json"]
    previous = weights_of(tmp_path / "epoch-0001.weights.h5")
    latest = tmp_path / "epoch-0002.weights.h5"
    if damage == "truncate":
        latest.write_bytes(latest.read_bytes()[:100])
    else:
        latest.unlink()
    with pytest.warns(UserWarning, match=r"epoch-0002.weights.h5 is (damaged|missing).*previous backup \(epoch 1\)"):
        _, record = fit(tmp_path, 3)
    assert record.epochs == [1, 2]
    assert_same_weights(record.start_weights, previous)


def _truncate_metadata(backup):
    path = backup / "training_metadata.json"
    path.write_text(path.read_text()[:20])
    return "training_metadata.json is unreadable or incomplete"


def _delete_weights(backup):
    (backup / "epoch-0001.weights.h5").unlink()
    return "epoch-0001.weights.h5 is missing"


def _delete_metadata(backup):
    (backup / "training_metadata.json").unlink()
    return "holds weights .* but no training_metadata.json"


def _keras_backup_without_weights(backup):
    shutil.rmtree(backup)
    with pytest.raises(Killed):  # Keras' own callback: latest.weights.h5 + training_metadata.json
        fit(backup, 2, keras.callbacks.BackupAndRestore(str(backup)), stop_at=1)
    (backup / "latest.weights.h5").unlink()
    return "latest.weights.h5 is missing"


@pytest.mark.parametrize("damage", [_truncate_metadata, _delete_weights, _delete_metadata, _keras_backup_without_weights])
def test_unusable_backup_is_a_clear_error_not_fresh_weights(tmp_path, damage):
    backup = tmp_path / "backup"
    fit(backup, 1)
    problem = damage(backup)
    with pytest.raises(resume.ResumeError, match=f"{problem}.*Delete {re.escape(str(backup))} to start this phase over"):
        fit(backup, 2)


def test_keras_backups_are_still_restored(tmp_path):
    with pytest.raises(Killed):
        fit(tmp_path, 3, keras.callbacks.BackupAndRestore(str(tmp_path)), stop_at=1)
    _, record = fit(tmp_path, 3)
    assert record.epochs == [1, 2]
    assert json.loads((tmp_path / "training_metadata.json").read_text())["weights"] == "epoch-0003.weights.h5"


def test_kill_between_the_weights_and_their_metadata_resumes_from_the_committed_epoch(tmp_path, monkeypatch):
    fit(tmp_path, 1)
    committed = weights_of(tmp_path / "epoch-0001.weights.h5")
    replace = os.replace

    def killed_before_commit(source, destination):
        if str(destination).endswith("training_metadata.json"):
            raise Killed
        replace(source, destination)

    monkeypatch.setattr(os, "replace", killed_before_commit)
    with pytest.raises(Killed):
        fit(tmp_path, 2)
    monkeypatch.undo()
    (tmp_path / ".0123456789ab.partial.training_metadata.json").write_text('{"epo')  # what a real kill leaves
    assert json.loads((tmp_path / "training_metadata.json").read_text())["epoch"] == 1
    _, record = fit(tmp_path, 2)
    assert record.epochs == [1]
    assert_same_weights(record.start_weights, committed)
    assert not list(tmp_path.glob(".*partial*"))


def test_full_disk_is_a_clear_error_and_leaves_nothing_behind(tmp_path, monkeypatch):
    fit(tmp_path, 1)

    def disk_full(model, filepath, *args, **kwargs):
        pathlib.Path(filepath).write_bytes(b"\0" * 100)  # HDF5 wrote part of the file
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(keras.Model, "save_weights", disk_full)
    with pytest.raises(OSError, match="No space left on device. Nothing was written under that name.*"
                                      "free disk space and rerun") as error:
        fit(tmp_path, 2)
    assert error.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["epoch-0001.weights.h5", "training_metadata.json"]
    _, record = fit(tmp_path, 2)
    assert record.epochs == [1]

    # Checked before writing (HDF5 may crash the process rather than raise when the disk fills up).
    monkeypatch.setattr(shutil, "disk_usage", lambda path: types.SimpleNamespace(total=10**9, used=10**9, free=1000))
    with pytest.raises(OSError, match="Not enough disk space to write .*epoch-0001.weights.h5") as error:
        fit(tmp_path / "empty", 2)
    assert error.value.errno == errno.ENOSPC
    assert not list((tmp_path / "empty").iterdir())


def test_full_disk_while_saving_a_finished_model_keeps_the_phase_open(tmp_path, monkeypatch):
    state = resume.RunState(tmp_path / "state.json")
    model, _ = fit(tmp_path / "backup", 1)

    def disk_full(filepath, *args, **kwargs):
        pathlib.Path(filepath).write_bytes(b"PK")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(model, "save", disk_full)
    with pytest.raises(OSError, match="model.keras: No space left on device"):
        resume.train_once(state, "natural", tmp_path / "model.keras", lambda: model, backup_dir=tmp_path / "backup")
    monkeypatch.undo()
    assert not state.is_done("natural") and (tmp_path / "backup").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup", "state.json"]
    _, record = resume.train_once(state, "natural", tmp_path / "model.keras", lambda: model,
                                  backup_dir=tmp_path / "backup")
    assert record["train_seconds"] > 0 and not (tmp_path / "backup").exists()
    assert resume.train_once(state, "natural", tmp_path / "model.keras", lambda: 1 / 0)[0] is None  # not rerun


def test_run_state_rejects_a_damaged_file_and_other_settings(tmp_path):
    path = tmp_path / "state.json"
    resume.RunState(path, config={"epochs": 8}).finish("trades", model_path="model.keras")
    with pytest.raises(resume.ResumeError, match=r"started with other settings \(epochs: 8 -> 10\)"):
        resume.RunState(path, config={"epochs": 10})
    path.write_text(path.read_text()[:-5])
    with pytest.raises(resume.ResumeError, match=f"{re.escape(str(path))} is unreadable.*Delete {re.escape(str(tmp_path))}"):
        resume.RunState(path, config={"epochs": 8})
