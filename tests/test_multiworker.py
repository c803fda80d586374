"""AdversarialTrainer.fit under MultiWorkerMirroredStrategy: two worker processes on 127.0.0.1.

Two workers (TF_CONFIG, free loopback ports) and one MirroredStrategy process
over two logical CPUs train the same tiny model on the same global batches
(``tests/multiworker_worker.py``): adversarially with the trainer, then
naturally through ``experiments.train_classifier`` with logs and backups in a
directory the workers share; then a run in which worker 1 is killed resumes. The
processes of a run start at once and are killed after
``TIMEOUT`` seconds.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys

import numpy as np

from tfnorms import resume

WORKER = pathlib.Path(__file__).resolve().parent / "multiworker_worker.py"
ROOT = WORKER.parents[1]
TIMEOUT = 240
# Weights of the tiny model: conv kernel, bias, BN gamma, beta, moving mean, moving variance, dense
# kernel, bias. Trainable ones are all-reduced (equal on every worker); BN statistics are per replica.
TRAINABLE = [0, 1, 2, 3, 6, 7]


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _start(mode, out_dir, shared_dir, tf_config=None, *phase, fault=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    env.pop(resume.FAULT_ENV, None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    if fault is not None:
        env[resume.FAULT_ENV] = fault
    return subprocess.Popen([sys.executable, str(WORKER), mode, str(out_dir), str(shared_dir), *phase], env=env,
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(processes, timeout=TIMEOUT):
    """``{name: (return code, output)}`` of the processes, all killed after ``timeout`` seconds."""
    try:
        logs = {name: process.communicate(timeout=timeout)[0] for name, process in processes.items()}
    finally:
        for process in processes.values():
            process.kill()
    return {name: (process.returncode, logs[name]) for name, process in processes.items()}


def _weights(out_dir, name="weights"):
    with np.load(out_dir / f"{name}.npz") as arrays:
        return [arrays[f"arr_{i}"] for i in range(len(arrays.files))]


def test_two_workers_train_like_one_mirrored_process(tmp_path):
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    processes = {
        f"worker{i}": _start("multi_worker", tmp_path / f"worker{i}", tmp_path / "shared",
                             {"cluster": cluster, "task": {"type": "worker", "index": i}})
        for i in range(2)
    }
    processes["mirrored"] = _start("mirrored", tmp_path / "mirrored", tmp_path / "mirrored_shared")
    results = _finish(processes)
    assert {name: code for name, (code, _) in results.items()} == {"worker0": 0, "worker1": 0, "mirrored": 0}, {
        name: log[-3000:] for name, (_, log) in results.items()}

    chief, other, mirrored = (_weights(tmp_path / name) for name in ("worker0", "worker1", "mirrored"))
    # Trainable weights: the same on both workers (all-reduced gradients), and as with MirroredStrategy.
    for i in TRAINABLE:
        np.testing.assert_array_equal(chief[i], other[i])
    for a, b in zip(chief, mirrored):  # BN moving statistics too: the chief's are replica 0's
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(chief[0], np.load(tmp_path / "worker0" / "initial.npz")["arr_0"])  # it trained

    histories = [json.loads((tmp_path / name / "history.json").read_text()) for name in processes]
    assert histories[0] == histories[1]  # the logs are reduced across the workers
    for key, values in histories[0].items():
        np.testing.assert_allclose(values, histories[2][key], rtol=1e-5, err_msg=key)

    # The other methods, and TRADES in mixed precision: the same step, the same agreement.
    for run in ("pgd", "mart", "trades_bf16"):
        chief, other, mirrored = (_weights(tmp_path / name, run) for name in ("worker0", "worker1", "mirrored"))
        for i in TRAINABLE:
            np.testing.assert_array_equal(chief[i], other[i], err_msg=run)
        for a, b in zip(chief, mirrored):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=run)

    # Natural training through experiments.train_classifier: a plain Keras model fits on two workers too.
    chief, other, mirrored = (_weights(tmp_path / name, "natural") for name in ("worker0", "worker1", "mirrored"))
    for i in TRAINABLE:
        np.testing.assert_array_equal(chief[i], other[i])
    for a, b in zip(chief, mirrored):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # Only the chief writes the shared directories; the other worker writes into its own.
    shared = tmp_path / "shared"
    for name in ("logs", "backup"):
        assert sorted(p.name for p in (shared / name).iterdir() if p.name.startswith("workertemp_")) == [
            "workertemp_worker_1"]
    assert any((shared / "logs" / "train").iterdir()) and any((shared / "logs" / "workertemp_worker_1").iterdir())


def test_a_killed_worker_stops_the_run_and_a_rerun_of_all_workers_resumes_from_the_backups(tmp_path):
    """Worker 1 is SIGKILLed in its second epoch; the chief stops with an error; rerun, both finish like one process."""
    def workers(fault=None):
        cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
        return {f"worker{i}": _start("multi_worker", tmp_path / f"worker{i}", tmp_path / "shared",
                                     {"cluster": cluster, "task": {"type": "worker", "index": i}}, "resume",
                                     fault=fault if i == 1 else None)
                for i in range(2)}

    first = workers(fault="natural:2")
    first["mirrored"] = _start("mirrored", tmp_path / "mirrored", tmp_path / "mirrored_shared", None, "resume")
    results = _finish(first)
    assert results["worker1"][0] == -signal.SIGKILL, results["worker1"][1][-3000:]
    assert results["worker0"][0] not in (0, None), results["worker0"][1][-3000:]  # stopped, not finished
    assert results["mirrored"][0] == 0, results["mirrored"][1][-3000:]
    assert not (tmp_path / "worker0" / "resumed.npz").exists()
    backups = json.loads((tmp_path / "shared" / "backup" / "training_metadata.json").read_text())
    assert backups["epoch"] == 1  # the chief's last committed epoch

    second = _finish(workers())
    assert {name: code for name, (code, _) in second.items()} == {"worker0": 0, "worker1": 0}, {
        name: log[-3000:] for name, (_, log) in second.items()}
    chief, other, mirrored = (_weights(tmp_path / name, "resumed") for name in ("worker0", "worker1", "mirrored"))
    for i in TRAINABLE:
        np.testing.assert_array_equal(chief[i], other[i])
    for a, b in zip(chief, mirrored):  # resumed at epoch 2: the same weights as the uninterrupted run
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
