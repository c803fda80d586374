"""Cases and fixtures shared by the ``tests/test_norms_*.py`` modules.

* :data:`GRID`: 120 random Conv2D configurations (kernel shape, strides,
  dilation, padding, input size) that all have an output.
* :func:`kdet`, :func:`circular_matrix`: the test-vector kernel and the dense
  circular operator of :mod:`norm_bruteforce`, called as the norm tests call
  them (``kdet(k)``; ``circular_matrix(kernel, H, W, dilation)``).
* :func:`float64_keras`: an autouse fixture for the modules that build Keras
  layers (import it into the module): float64 layers, so the brute-force
  matrices are exact to double precision.
"""

import random

import keras
import pytest

import norm_bruteforce as bf
from tfnorms.norms import geometry


def kdet(k, c_in=3, c_out=2):
    """The test-vector kernel of :func:`norm_bruteforce.kdet` (docs/theory.md#test-vectors), size ``k`` first."""
    return bf.kdet(c_in, c_out, k)


def circular_matrix(kernel, n_h, n_w, dilation=(1, 1)):
    """Dense circular cross-correlation on an ``n_h x n_w`` torus (see :func:`norm_bruteforce.circular_matrix`)."""
    return bf.circular_matrix(kernel, (n_h, n_w), dilation)


def random_configs(count, seed):
    rng = random.Random(seed)
    configs = []
    while len(configs) < count:
        kh, kw = rng.randint(1, 5), rng.randint(1, 5)
        stride = (rng.randint(1, 3), rng.randint(1, 3))
        dilation = (1, 1) if max(stride) > 1 else (rng.randint(1, 2), rng.randint(1, 2))
        padding = rng.choice(["same", "valid", "explicit"])
        if padding == "explicit":
            padding = ((rng.randint(0, 2), rng.randint(0, 2)), (rng.randint(0, 2), rng.randint(0, 2)))
        h, w = rng.randint(1, 9), rng.randint(1, 9)
        c_in, c_out = rng.randint(1, 4), rng.randint(1, 4)
        pads = geometry.normalize_padding(padding)
        sizes = [
            geometry.output_size(n, k, s, d, p)
            for n, k, s, d, p in zip((h, w), (kh, kw), stride, dilation, pads)
        ]
        if min(sizes) == 0:
            continue
        configs.append(((kh, kw, c_in, c_out), stride, dilation, padding, (h, w)))
    return configs


GRID = random_configs(120, seed=1234)


@pytest.fixture(autouse=True)
def float64_keras():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float64")
    yield
    keras.config.set_dtype_policy(previous)
