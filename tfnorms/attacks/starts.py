"""Random starts: where the attack loop begins inside the eps-ball.

* ``"uniform"``: uniform in the l_inf ball (each coordinate ``U(-eps, eps)``),
  or uniform in the l2 ball (Gaussian direction, radius ``eps * U**(1/d)``);
  the start of evaluation PGD (docs/theory.md#pgd-attacks).
* ``"normal"``: ``x + 0.001 * N(0, I)``, the start of the TRADES / MART / Wu et
  al. training attacks (docs/theory.md#pgd-attacks).
* ``None``: start at ``x`` (FGSM, deterministic attacks).

The loop projects the start onto the ball and the [0, 1] box before the first
gradient, so the model is only ever evaluated on valid images (the reference
PyTorch code evaluates the unclipped start; the difference is at most the
start noise at pixels on the box boundary).

With ``seed=None`` the draws come from TensorFlow's stateful generators (a
new start on every call, as training needs). With an integer ``seed`` they are
stateless: the same ``(seed, shape)`` gives the same start on every call, for
reproducible evaluations.

Example:
    >>> import numpy as np
    >>> from tfnorms.attacks import starts
    >>> x = np.zeros((2, 4), "float32")
    >>> bool(np.all(np.abs(starts.get("uniform")(x, 0.1, np.inf, seed=1)) <= 0.1))
    True
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfnorms.attacks.projections import per_example_norm, validate_ord

NORMAL_START_STDDEV = 0.001


def _uniform(shape, minval, maxval, seed, salt):
    if seed is None:
        return tf.random.uniform(shape, minval, maxval, dtype=tf.float32)
    return tf.random.stateless_uniform(shape, seed=[seed, salt], minval=minval, maxval=maxval, dtype=tf.float32)


def _normal(shape, seed, salt):
    if seed is None:
        return tf.random.normal(shape, dtype=tf.float32)
    return tf.random.stateless_normal(shape, seed=[seed, salt], dtype=tf.float32)


def uniform_start(x: tf.Tensor, eps, ord, seed=None) -> tf.Tensor:
    """A point drawn uniformly from the ``ord``-ball of radius ``eps`` around ``x``."""
    shape = tf.shape(x)
    if validate_ord(ord) == np.inf:
        return x + _uniform(shape, -eps, eps, seed, 0)
    direction = _normal(shape, seed, 1)
    norms = tf.maximum(per_example_norm(direction, 2), 1e-12)
    dimension = tf.cast(tf.reduce_prod(shape[1:]), tf.float32)
    radius = eps * tf.pow(_uniform(shape[:1], 0.0, 1.0, seed, 2), 1.0 / dimension)
    scale = tf.reshape(radius / norms, [-1] + [1] * (x.shape.rank - 1))
    return x + direction * scale


def normal_start(x: tf.Tensor, eps, ord, seed=None) -> tf.Tensor:
    """``x + 0.001 * N(0, I)`` (TRADES reference start; ``eps`` and ``ord`` unused)."""
    del eps, ord
    return x + NORMAL_START_STDDEV * _normal(tf.shape(x), seed, 3)


def no_start(x: tf.Tensor, eps, ord, seed=None) -> tf.Tensor:
    """Starts at ``x``."""
    del eps, ord, seed
    return x


STARTS = {"uniform": uniform_start, "normal": normal_start, None: no_start}


def get(identifier):
    """The start function for ``"uniform"``, ``"normal"`` or ``None``."""
    if (identifier is None or isinstance(identifier, str)) and identifier in STARTS:
        return STARTS[identifier]
    raise ValueError(
        "Invalid value for argument `random_start`. Expected one of 'uniform', 'normal', None. "
        f"Received: random_start={identifier!r}"
    )
