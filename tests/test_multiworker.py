"""AdversarialTrainer.fit under MultiWorkerMirroredStrategy: two worker processes on 127.0.0.1.

Two workers (TF_CONFIG, free loopback ports) and one MirroredStrategy process
over two logical CPUs train the same tiny model on the same global batches
(``tests/multiworker_worker.py``): adversarially with the trainer, then
naturally through ``experiments.train_classifier`` with logs and backups in a
directory the workers share. All three run at once and are killed after
``TIMEOUT`` seconds.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np

WORKER = pathlib.Path(__file__).resolve().parent / "multiworker_worker.py"
ROOT = WORKER.parents[1]
TIMEOUT = 240


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _start(mode, out_dir, shared_dir, tf_config=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return subprocess.Popen([sys.executable, str(WORKER), mode, str(out_dir), str(shared_dir)], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


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
    try:
        logs = {name: process.communicate(timeout=TIMEOUT)[0] for name, process in processes.items()}
    finally:
        for process in processes.values():
            process.kill()
    codes = {name: process.returncode for name, process in processes.items()}
    assert codes == {"worker0": 0, "worker1": 0, "mirrored": 0}, {n: log[-3000:] for n, log in logs.items()}

    chief, other, mirrored = (_weights(tmp_path / name) for name in ("worker0", "worker1", "mirrored"))
    # Trainable weights: the same on both workers (all-reduced gradients), and as with MirroredStrategy.
    # Order: conv kernel, bias, BN gamma, beta, moving mean, moving variance, dense kernel, bias.
    trainable = [0, 1, 2, 3, 6, 7]
    for i in trainable:
        np.testing.assert_array_equal(chief[i], other[i])
    for a, b in zip(chief, mirrored):  # BN moving statistics too: the chief's are replica 0's
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(chief[0], np.load(tmp_path / "worker0" / "initial.npz")["arr_0"])  # it trained

    histories = [json.loads((tmp_path / name / "history.json").read_text()) for name in processes]
    assert histories[0] == histories[1]  # the logs are reduced across the workers
    for key, values in histories[0].items():
        np.testing.assert_allclose(values, histories[2][key], rtol=1e-5, err_msg=key)

    # The other methods, and TRADES in mixed precision: the same step, the same agreement.
    for run in ("pgd", "mart", "alp", "trades_bf16"):
        chief, other, mirrored = (_weights(tmp_path / name, run) for name in ("worker0", "worker1", "mirrored"))
        for i in trainable:
            np.testing.assert_array_equal(chief[i], other[i], err_msg=run)
        for a, b in zip(chief, mirrored):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=run)

    # Natural training through experiments.train_classifier: a plain Keras model fits on two workers too.
    chief, other, mirrored = (_weights(tmp_path / name, "natural") for name in ("worker0", "worker1", "mirrored"))
    for i in trainable:
        np.testing.assert_array_equal(chief[i], other[i])
    for a, b in zip(chief, mirrored):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # Only the chief writes the shared directories; the other worker writes into its own.
    shared = tmp_path / "shared"
    for name in ("logs", "backup"):
        assert sorted(p.name for p in (shared / name).iterdir() if p.name.startswith("workertemp_")) == [
            "workertemp_worker_1"]
    assert any((shared / "logs" / "train").iterdir()) and any((shared / "logs" / "workertemp_worker_1").iterdir())
