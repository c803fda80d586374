"""Test session set-up: quiet TensorFlow, two logical CPUs for distribution tests, the main example as a module."""

import importlib.util
import os
import pathlib
import zlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
try:
    # MirroredStrategy tests need two replicas; must run before TF initialises.
    tf.config.set_logical_device_configuration(
        _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
    )
except RuntimeError:  # already initialised (e.g. imported by a plugin first)
    pass


import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def two_cpu_strategy():
    """One MirroredStrategy over the two logical CPUs, shared by every test.

    Separate strategy objects in one process draw collective instance keys from
    separate counters and can collide ("Shape mismatch in the collective
    instance"), so tests share this one.
    """
    if len(tf.config.list_logical_devices("CPU")) < 2:
        pytest.skip("needs the two logical CPUs configured in conftest.py")
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


@pytest.fixture(scope="session")
def trades_cifar():
    """``examples/trades_cifar.py`` as a module, shared by the test files (its absl flags can be defined once)."""
    path = pathlib.Path(__file__).resolve().parent / "examples" / "trades_cifar.py"
    spec = importlib.util.spec_from_file_location("trades_cifar_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def deterministic_seeds(request):
    """Seeds Python, NumPy and TensorFlow/Keras from the test's id before every test.

    Tests that draw weights or data without a seed of their own then see the
    same numbers on every run (a failure reproduces; CI does not flake), and
    different tests still see different numbers. Set TFNORMS_TEST_SEED to
    shift every seed and explore other draws locally.
    """
    offset = int(os.environ.get("TFNORMS_TEST_SEED", "0"))
    keras.utils.set_random_seed((zlib.crc32(request.node.nodeid.encode()) + offset) % 2**31)


# Test modules by measured cost, the slowest first (pytest --durations=0). With
# --dist loadscope and --no-loadscope-reorder (setup.cfg) the two workers take
# whole modules in this order, so the long end-to-end modules start at once and
# the many short modules fill the gaps at the end (longest processing time
# first) instead of one long module running alone at the end of the run.
SLOWEST_MODULES_FIRST = (
    "test_multiworker.py",
    "test_benchmarks.py",
    "test_studies_norms.py",
    "test_benchmarks_training.py",
    "test_studies.py",
    "test_resume.py",
    "test_training.py",
    "test_examples.py",
    "test_cli.py",
    "test_autoattack.py",
    "test_torch_checkpoints.py",
    "test_models.py",
)


def pytest_collection_modifyitems(session, config, items):
    rank = {name: position for position, name in enumerate(SLOWEST_MODULES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
