"""Interruption-safe training runs: atomic files, a ledger of finished phases, verified backups.

A run killed at any instant (preemption, out-of-memory killer, Ctrl-C twice,
a full disk) can be rerun with the same command and goes on from the last
complete step without retraining or rewriting anything that had finished:

* :func:`atomic_write` (and :func:`write_json_atomic`, :func:`save_model`)
  writes to a temporary name in the same directory, flushes it to disk and
  renames it, so a file under its real name is always complete; a failed
  write (``ENOSPC``) leaves nothing behind and says so.
* :class:`RunState`: a small JSON ledger (``state.json``) of the phases of a
  run (e.g. the robust model, the natural twin, their evaluations) that have
  finished, with their results; :func:`train_once` and :meth:`RunState.run_once`
  skip a finished phase.
* :class:`AtomicBackupAndRestore`: Keras' ``BackupAndRestore`` with atomic,
  checksummed backups, a fallback to the previous epoch's backup when the
  latest is damaged, a clear :class:`ResumeError` (naming the file and the
  fix) instead of a bare ``JSONDecodeError``, and the training time summed
  over interrupted runs.

Only local file systems are supported (``os.replace`` is the commit point).
With several workers (``MultiWorkerMirroredStrategy``) only the chief writes
where it is told; every other worker writes into its own :func:`worker_dir`.

Fault injection for tests: if the environment variable ``TFNORMS_FAULT_AT``
equals the name of a point that a run passes, the process sends itself
``SIGKILL`` there (:func:`fault_point`). The points are
``"<phase>:<epoch>"`` (after the first batch of that 1-based epoch, from
:func:`fault_injection`), ``"<phase>:done"`` (right after a phase is recorded
as finished) and whatever a program adds with :func:`fault_point`.

Example:
    >>> import os, tempfile
    >>> from tfnorms import resume
    >>> logdir = tempfile.mkdtemp()
    >>> state = resume.RunState(os.path.join(logdir, "state.json"), config={"epochs": 2})
    >>> state.run_once("evaluation", lambda: {"accuracy": 0.9})
    {'accuracy': 0.9}
    >>> resume.RunState(state.path, config={"epochs": 2}).result("evaluation")  # a rerun reuses it
    {'accuracy': 0.9}
"""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import os
import shutil
import signal
import sys
import time
import uuid
import warnings

import keras
import numpy as np

from tfnorms import _keras

__all__ = [
    "AtomicBackupAndRestore",
    "FAULT_ENV",
    "FlushTensorBoard",
    "ResumeError",
    "RunState",
    "atomic_write",
    "fault_injection",
    "fault_point",
    "load_finished_model",
    "save_model",
    "train_once",
    "worker_dir",
    "write_json_atomic",
]

FAULT_ENV = "TFNORMS_FAULT_AT"
_PARTIAL = ".partial."


WORKER_DIR_PREFIX = "workertemp_"


def worker_dir(path, strategy=None):
    """``path`` on the chief of a multi-worker cluster (or without one); a directory of its own on other workers.

    Under ``MultiWorkerMirroredStrategy`` every worker runs the same program;
    only the chief (``strategy.extended.should_checkpoint``) writes to ``path``,
    the others to ``path/workertemp_<task type>_<task id>`` (their backups,
    logs and outputs, as tf.distribute expects), so no two workers write the
    same file. A path already inside this worker's directory is returned as is.

    Args:
        path: the chief's directory.
        strategy: the ``tf.distribute`` strategy (default: the current one).

    Example:
        >>> worker_dir("runs/x")  # no cluster: the path itself
        'runs/x'
    """
    import tensorflow as tf

    strategy = tf.distribute.get_strategy() if strategy is None else strategy
    if not _keras.in_multi_worker_mode(strategy) or strategy.extended.should_checkpoint:
        return path
    resolver = strategy.cluster_resolver
    name = f"{WORKER_DIR_PREFIX}{resolver.task_type}_{resolver.task_id}"
    if name in os.path.normpath(path).split(os.sep):
        return path
    return os.path.join(path, name)


class ResumeError(RuntimeError):
    """A backup, ledger or finished model cannot be used to resume; the message names the file and the fix."""


# -- fault injection (tests only)


def fault_point(name):
    """Kills this process with ``SIGKILL`` if ``TFNORMS_FAULT_AT`` equals ``name`` (a test hook).

    Example:
        >>> fault_point("trades:done")  # no-op unless TFNORMS_FAULT_AT=trades:done
    """
    if os.environ.get(FAULT_ENV) == name:
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


class _FaultInjection(keras.callbacks.Callback):
    def __init__(self, phase):
        super().__init__()
        self.phase = phase
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if batch == 0:
            fault_point(f"{self.phase}:{self._epoch + 1}")


def fault_injection(phase):
    """``[callback]`` that runs :func:`fault_point` ``"<phase>:<epoch>"`` mid-epoch, or ``[]`` when unset.

    The point is passed after the first batch of every (1-based) epoch. No
    callback (no per-batch cost) unless ``TFNORMS_FAULT_AT`` is set.

    Example:
        >>> fault_injection("trades")  # [] unless TFNORMS_FAULT_AT is set
        []
    """
    return [_FaultInjection(phase)] if os.environ.get(FAULT_ENV) else []


# -- atomic files


def _fsync_directory(directory):
    if os.name != "posix":  # pragma: no cover - Windows cannot open directories
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_partials(directory):
    """Deletes temporary files an interrupted :func:`atomic_write` left in ``directory``."""
    for path in glob.glob(os.path.join(glob.escape(directory), f".*{_PARTIAL}*")):
        try:
            os.remove(path)
        except OSError:
            pass


def atomic_write(path, write, *, hint=""):
    """Writes a file so that ``path`` is either the old file or the complete new one, never a part.

    ``write(tmp)`` writes the content to ``tmp``, a hidden name in the same
    directory that ends with the base name of ``path`` (so Keras' suffix checks
    pass); the file is then flushed to disk and renamed to ``path``. If
    ``write`` fails, the temporary file is deleted and an ``OSError`` keeps
    its ``errno`` and says which file could not be written.

    Args:
        path: the destination.
        write: a function of the temporary path that writes the file.
        hint: appended to the error message (e.g. what a rerun does).

    Returns:
        ``path``.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "note.txt")
        >>> _ = atomic_write(path, lambda tmp: open(tmp, "w").write("hello"))
        >>> open(path).read()
        'hello'
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{uuid.uuid4().hex[:12]}{_PARTIAL}{os.path.basename(path)}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_directory(directory)
    except OSError as error:
        reason = error.strerror or str(error)
        message = f"Could not write {path}: {reason}. Nothing was written under that name. {hint}".strip()
        raise (OSError(error.errno, message) if error.errno else OSError(message)) from error
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def write_json_atomic(path, payload, *, hint=""):
    """Writes ``payload`` as indented JSON with :func:`atomic_write`; returns ``path``.

    Example:
        >>> import os, tempfile
        >>> path = write_json_atomic(os.path.join(tempfile.mkdtemp(), "a.json"), {"epoch": 3})
        >>> open(path).read()
        '{\\n  "epoch": 3\\n}'
    """
    text = json.dumps(payload, indent=2)

    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)

    return atomic_write(path, write, hint=hint)


def _read_json(path, fix):
    """The JSON object in ``path``; a :class:`ResumeError` naming the file and ``fix`` if it is unreadable."""
    try:
        with open(path) as f:
            payload = json.load(f)
    except (OSError, ValueError) as error:
        raise ResumeError(f"{path} is unreadable or incomplete ({type(error).__name__}: {error}). {fix}") from error
    if not isinstance(payload, dict):
        raise ResumeError(f"{path} does not hold a JSON object. {fix}")
    return payload


def _file_digest(path):
    """``(size in bytes, sha256 hex digest)`` of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return os.path.getsize(path), digest.hexdigest()


def _variables_nbytes(variables):
    def itemsize(dtype):  # "float32" -> 4, "bfloat16" -> 2, "bool" -> 1
        bits = "".join(c for c in keras.backend.standardize_dtype(dtype) if c.isdigit())
        return max(1, int(bits) // 8) if bits else 1

    return sum(int(np.prod(v.shape)) * itemsize(v.dtype) for v in variables)


def _check_free_space(path, nbytes, hint=""):
    """Raises ``OSError(ENOSPC)`` before writing ``nbytes`` to ``path`` on a disk that cannot hold them.

    HDF5 can crash the process (not raise) when the disk fills up mid-write;
    checking first turns that into a clear error.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    free = shutil.disk_usage(directory).free
    needed = int(nbytes * 1.1) + (1 << 20)  # HDF5 / zip overhead
    if free < needed:
        raise OSError(
            errno.ENOSPC,
            f"Not enough disk space to write {path}: about {needed / 2**20:.1f} MiB needed, "
            f"{free / 2**20:.1f} MiB free. Nothing was written. {hint}".strip(),
        )


def save_model(model, path, *, hint=""):
    """``model.save(path)`` atomically, after checking the disk has room; returns ``path``.

    Example:
        >>> import os, tempfile, keras
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        >>> path = save_model(model, os.path.join(tempfile.mkdtemp(), "model.keras"))
        >>> keras.models.load_model(path).output_shape
        (None, 1)
    """
    _check_free_space(path, _variables_nbytes(model.weights), hint)
    return atomic_write(path, model.save, hint=hint)


# -- the ledger of phases


class RunState:
    """A JSON ledger of the finished phases of a run, rewritten atomically after every change.

    A phase is any named, resumable piece of a run (training one model,
    evaluating it, writing the report). The ledger stores a record (a JSON
    object) for each finished phase and ``config``, the settings that the
    run was started with: reopening the ledger with other settings raises a
    :class:`ResumeError` instead of mixing two runs.

    Args:
        path: the ledger file (e.g. ``<logdir>/state.json``); created if missing.
        config: a JSON-serialisable dict of the settings that the results depend on.

    Example:
        >>> import os, tempfile
        >>> state = RunState(os.path.join(tempfile.mkdtemp(), "state.json"), config={"seed": 0})
        >>> state.is_done("robust")
        False
        >>> state.finish("robust", model_path="model.keras")["model_path"]
        'model.keras'
        >>> state.is_done("robust")
        True
    """

    def __init__(self, path, config=None):
        self.path = os.fspath(path)
        self.config = json.loads(json.dumps(config or {}))  # normalised as stored (tuples -> lists)
        directory = os.path.dirname(os.path.abspath(self.path))
        self._fix = (f"Delete {directory} to start the run over (finished phases are lost), "
                     f"or restore the file from a copy.")
        if os.path.exists(self.path):
            payload = _read_json(self.path, self._fix)
            stored = payload.get("config", {})
            if stored != self.config:
                changed = sorted(k for k in set(stored) | set(self.config) if stored.get(k) != self.config.get(k))
                details = ", ".join(f"{k}: {stored.get(k)!r} -> {self.config.get(k)!r}" for k in changed)
                raise ResumeError(
                    f"{directory} holds a run started with other settings ({details}). Rerun with the original "
                    f"settings to resume it, use another directory, or delete {directory} to start over."
                )
            self.phases = payload.get("phases", {})
        else:
            self.phases = {}
        _remove_partials(directory)  # left by a kill during an atomic write

    def _write(self):
        write_json_atomic(self.path, {"config": self.config, "phases": self.phases},
                          hint="Free disk space and rerun: the run resumes from its last finished phase.")

    def is_done(self, phase):
        """Whether ``phase`` is recorded as finished."""
        return self.phases.get(phase, {}).get("status") == "done"

    def result(self, phase):
        """The record of a finished ``phase`` (without its status), or ``None``."""
        if not self.is_done(phase):
            return None
        return {k: v for k, v in self.phases[phase].items() if k != "status"}

    def start(self, phase):
        """Records that ``phase`` is under way (informative: a rerun redoes it from its backups)."""
        if self.phases.get(phase, {}).get("status") != "running":
            self.phases[phase] = {"status": "running"}
            self._write()

    def finish(self, phase, **record):
        """Records ``phase`` as finished with ``record`` (JSON values); returns the record.

        Then passes the fault point ``"<phase>:done"``.
        """
        self.phases[phase] = {"status": "done", **json.loads(json.dumps(record))}
        self._write()
        fault_point(f"{phase}:done")
        return self.result(phase)

    def run_once(self, phase, compute):
        """``compute()`` (a JSON-serialisable dict) unless ``phase`` finished before; then its stored record."""
        if self.is_done(phase):
            return self.result(phase)
        self.start(phase)
        return self.finish(phase, **compute())


# -- backups


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """``keras.callbacks.BackupAndRestore`` whose backups survive a kill at any instant.

    Differences from Keras' callback, which writes ``latest.weights.h5`` and
    ``training_metadata.json`` in place (a kill while writing leaves a
    truncated file: a bare ``JSONDecodeError`` or ``OSError`` on the rerun, or
    weights of one epoch with the epoch number of another):

    * Each backup writes ``epoch-<n>.weights.h5`` under a temporary name and
      renames it, then commits it by atomically replacing
      ``training_metadata.json``, which records the epoch, the file's size and
      SHA-256, and the previous backup. The previous backup's weights are kept
      until the next commit.
    * On resume the weights are checked against the metadata: a missing or
      damaged latest backup falls back to the previous one (with a warning);
      if neither is usable, a :class:`ResumeError` names the file and the fix
      (delete the backup directory to start the phase over). It never resumes
      at a later epoch with fresh weights.
    * A backup that does not fit on the disk raises ``OSError(ENOSPC)`` with
      a clear message before anything is written; the last complete backup
      stays valid.
    * ``train_seconds``: the time spent in ``fit`` up to the last backup,
      summed over every interrupted run (stored in the metadata, so a kill
      between two backups neither loses nor double-counts an epoch).
    * ``delete_checkpoint`` defaults to ``False``: delete the directory once
      the trained model is safely saved (:func:`train_once` does), otherwise a
      kill between the end of ``fit`` and the saving of the model would mean
      training again from scratch.

    Backups written by Keras' own callback (``latest.weights.h5``) are still
    restored. Needs two weights files of disk space (three while writing).

    Args:
        backup_dir: directory of the backups (used by this callback only).
        save_freq: ``"epoch"`` or an integer number of batches (as in Keras).
        delete_checkpoint: delete ``backup_dir`` at the end of training.

    Example:
        >>> import tempfile, keras, numpy as np
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        >>> model.compile("sgd", "mse")
        >>> backup = AtomicBackupAndRestore(tempfile.mkdtemp())
        >>> _ = model.fit(np.ones((4, 3)), np.ones(4), epochs=2, callbacks=[backup], verbose=0)
        >>> backup.read_metadata()["epoch"]
        2
    """

    METADATA = "training_metadata.json"
    _LEGACY_WEIGHTS = "latest.weights.h5"

    def __init__(self, backup_dir, save_freq="epoch", delete_checkpoint=False):
        super().__init__(os.fspath(backup_dir), save_freq=save_freq, double_checkpoint=False,
                         delete_checkpoint=delete_checkpoint)
        self._training_metadata_path = os.path.join(self.backup_dir, self.METADATA)
        self._restored = None
        self._restored_seconds = 0.0
        self._clock = None
        self.train_seconds = 0.0

    # -- reading

    def _fix(self):
        return f"Delete {self.backup_dir} to start this phase over."

    def read_metadata(self):
        """The committed metadata (``epoch``, ``weights``, ``sha256``, ``train_seconds``, ...), or ``None``."""
        if not os.path.exists(self._training_metadata_path):
            return None
        return _read_json(self._training_metadata_path, self._fix())

    @classmethod
    def seconds_in(cls, backup_dir):
        """``train_seconds`` recorded in the backup in ``backup_dir``, or ``None`` if there is none."""
        path = os.path.join(os.fspath(backup_dir), cls.METADATA)
        if not os.path.exists(path):
            return None
        return _read_json(path, f"Delete {backup_dir} to start this phase over.").get("train_seconds")

    def _problem(self, entry):
        """Why the weights of a metadata entry cannot be restored, or ``None`` if they can."""
        path = os.path.join(self.backup_dir, entry.get("weights", self._LEGACY_WEIGHTS))
        if not os.path.exists(path):
            return f"{path} is missing"
        if "sha256" in entry and _file_digest(path) != (entry["size"], entry["sha256"]):
            return f"{path} is damaged (its size or checksum differs from {self._training_metadata_path})"
        return None

    def _load_model(self):
        if not self.model.built:
            raise ValueError(
                "To use the BackupAndRestore callback, your model must be built before you call `fit()`. "
                f"Model {self.model} is unbuilt. You can build it beforehand by calling it on a batch of data."
            )
        if not os.path.isdir(self.backup_dir):
            return
        _remove_partials(self.backup_dir)
        metadata = self.read_metadata()
        if metadata is None:
            orphans = glob.glob(os.path.join(glob.escape(self.backup_dir), "*.weights.h5"))
            if orphans:
                raise ResumeError(
                    f"{self.backup_dir} holds weights ({os.path.basename(orphans[0])}) but no {self.METADATA}: "
                    f"the epoch they belong to is unknown. {self._fix()}"
                )
            return
        candidates = [metadata] + ([metadata["previous"]] if metadata.get("previous") else [])
        problems = []
        for entry in candidates:
            problem = self._problem(entry)
            if problem is None:
                try:
                    self._restore(entry)
                except (OSError, ValueError) as error:
                    problem = f"{entry.get('weights', self._LEGACY_WEIGHTS)} could not be loaded ({error})"
            if problem is None:
                if problems:
                    warnings.warn(f"{problems[0]}; resuming from the previous backup (epoch {entry['epoch']}).",
                                  stacklevel=2)
                return
            problems.append(problem)
        raise ResumeError(f"Cannot resume from {self.backup_dir}: {'; '.join(problems)}. {self._fix()}")

    def _restore(self, entry):
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)  # optimizer variables exist before loading
        self.model.load_weights(os.path.join(self.backup_dir, entry.get("weights", self._LEGACY_WEIGHTS)))
        self.model._initial_epoch = int(entry["epoch"])
        self._current_epoch = int(entry["epoch"])
        self._restored = {k: v for k, v in entry.items() if k != "previous"}
        self._restored_seconds = float(entry.get("train_seconds", 0.0))

    def on_train_begin(self, logs=None):
        self._restored = None
        self._restored_seconds = 0.0
        self._load_model()
        self.train_seconds = self._restored_seconds
        self._clock = time.monotonic()

    # -- writing

    def _save_model(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        epoch, batch = self._current_epoch, self._last_batch_seen
        name = f"epoch-{epoch:04d}" + (f"-batch-{batch}" if self.save_freq != "epoch" else "") + ".weights.h5"
        path = os.path.join(self.backup_dir, name)
        hint = f"The last complete backup in {self.backup_dir} is intact: free disk space and rerun to resume from it."
        _check_free_space(path, _variables_nbytes(self.model.weights + list(self._optimizer_variables())), hint)
        atomic_write(path, lambda tmp: self.model.save_weights(tmp, overwrite=True), hint=hint)
        size, sha256 = _file_digest(path)
        self.train_seconds = self._restored_seconds + time.monotonic() - self._clock
        entry = {"epoch": epoch, "batch": batch, "weights": name, "size": size, "sha256": sha256,
                 "train_seconds": round(self.train_seconds, 3)}
        previous = self._restored
        if previous and previous.get("weights", self._LEGACY_WEIGHTS) == name:
            previous = None
        write_json_atomic(self._training_metadata_path, dict(entry, previous=previous), hint=hint)
        self._restored = entry
        keep = {name, previous.get("weights", self._LEGACY_WEIGHTS) if previous else None}
        for old in glob.glob(os.path.join(glob.escape(self.backup_dir), "*.weights.h5")):
            if os.path.basename(old) not in keep:
                os.remove(old)

    def _optimizer_variables(self):
        optimizer = getattr(self.model, "optimizer", None)
        return optimizer.variables if optimizer is not None else []

    def on_train_end(self, logs=None):
        if self.delete_checkpoint and os.path.exists(self.backup_dir):
            shutil.rmtree(self.backup_dir)


class FlushTensorBoard(keras.callbacks.Callback):
    """Flushes a ``keras.callbacks.TensorBoard`` callback's event files at the end of every epoch.

    Keras' TensorBoard callback buffers its summaries (flushing every two
    minutes), so a killed run loses the curves of its last epochs although
    their backups exist. Put this callback after the TensorBoard callback and
    after the backup callback: a kill between the backup and the flush then
    loses one epoch's points rather than duplicating them on the rerun.

    Args:
        tensorboard: the ``keras.callbacks.TensorBoard`` instance to flush.

    Example:
        >>> tensorboard = keras.callbacks.TensorBoard("/tmp/logs")
        >>> callbacks = [AtomicBackupAndRestore("/tmp/logs/backup"), tensorboard, FlushTensorBoard(tensorboard)]
    """

    def __init__(self, tensorboard):
        super().__init__()
        self.tensorboard = tensorboard

    def on_epoch_end(self, epoch, logs=None):
        for writer in _keras.tensorboard_writers(self.tensorboard):
            writer.flush()


# -- phases that train a model


def _check_model(record, phase, state):
    path = record["model_path"]
    if not os.path.exists(path):
        raise ResumeError(
            f"{state.path} records phase {phase!r} as finished but its model {path} is missing. Restore it, "
            f"or delete {os.path.dirname(os.path.abspath(state.path))} to start the run over."
        )
    if "sha256" in record and _file_digest(path) != (record["size"], record["sha256"]):
        raise ResumeError(
            f"{path} (the finished model of phase {phase!r}) differs from the copy recorded in {state.path}: "
            f"restore it, or delete {os.path.dirname(os.path.abspath(state.path))} to start the run over."
        )
    return path


def load_finished_model(state, phase, **load_kwargs):
    """Loads the model of a finished phase recorded by :func:`train_once`, after checking its checksum.

    Example:
        >>> # classifier = load_finished_model(state, "trades")
    """
    record = state.result(phase)
    if record is None:
        raise ResumeError(f"Phase {phase!r} has not finished in {state.path}.")
    return keras.models.load_model(_check_model(record, phase, state), **load_kwargs)


def train_once(state, phase, model_path, train, *, backup_dir=None):
    """Trains and saves a model unless ``phase`` finished before; never rewrites a finished model.

    ``train()`` builds and trains the model (resuming from its
    :class:`AtomicBackupAndRestore` in ``backup_dir``) and returns it. The
    model is then saved atomically to ``model_path``, the phase is recorded
    as finished with ``model_path``, the file's checksum and
    ``train_seconds`` (from the backup: summed over interrupted runs; the
    wall time of ``train()`` without a backup), and only then is
    ``backup_dir`` deleted.

    Args:
        state: the run's :class:`RunState`.
        phase: name of the phase (e.g. the training method).
        model_path: where to save the model (``.keras``).
        train: a function without arguments returning the trained ``keras.Model``.
        backup_dir: the directory of the :class:`AtomicBackupAndRestore` used by ``train``.

    Returns:
        ``(model, record)``: the model trained now, or ``None`` if the phase had
        finished before (:func:`load_finished_model` loads it); the phase's
        record (``model_path``, ``train_seconds``, ...).

    Example:
        >>> # model, record = train_once(state, "trades", "run/model.keras", lambda: fit(...), backup_dir="run/backup")
    """
    record = state.result(phase)
    if record is not None:
        _check_model(record, phase, state)
        if backup_dir and os.path.isdir(backup_dir):  # killed between the record and the clean-up
            shutil.rmtree(backup_dir)
        return None, record
    state.start(phase)
    _remove_partials(os.path.dirname(os.path.abspath(model_path)))
    start = time.monotonic()
    model = train()
    seconds = AtomicBackupAndRestore.seconds_in(backup_dir) if backup_dir else None
    if seconds is None:
        seconds = time.monotonic() - start
    save_model(model, model_path, hint="Free disk space and rerun: training resumes from its last backup.")
    size, sha256 = _file_digest(model_path)
    record = state.finish(phase, model_path=os.fspath(model_path), size=size, sha256=sha256,
                          train_seconds=round(float(seconds), 1))
    if backup_dir and os.path.isdir(backup_dir):
        shutil.rmtree(backup_dir)
    return model, record
