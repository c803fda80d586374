"""Projection onto the threat model: the eps-ball around ``x`` intersected with the [0, 1] box.

Supported norms are ``numpy.inf`` (l_inf) and ``2`` (l2), written as in
``numpy.linalg.norm``. Inputs are ``[batch, ...]`` images in [0, 1]; every
example has its own ball.

Example:
    >>> import numpy as np
    >>> from tfnorms.attacks import projections
    >>> x = np.full((1, 2), 0.5, "float32")
    >>> projections.project(x + 0.3, x, eps=0.1, ord=np.inf).numpy().round(3)
    array([[0.6, 0.6]], dtype=float32)
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

ORDS = (np.inf, 2)
_TINY = 1e-12


def validate_ord(ord):
    """Returns ``numpy.inf`` or ``2`` (also accepts the strings ``"inf"`` and ``"2"``), else raises."""
    if isinstance(ord, str):
        ord = {"inf": np.inf, "linf": np.inf, "2": 2, "l2": 2}.get(ord.lower(), ord)
    if not isinstance(ord, (bool, str)) and isinstance(ord, (int, float, np.integer, np.floating)):
        if ord == np.inf:
            return np.inf
        if ord == 2:
            return 2
    raise ValueError(
        "Invalid value for argument `ord`. Expected one of numpy.inf, 2 (as in numpy.linalg.norm). "
        f"Received: ord={ord!r}"
    )


def ord_to_config(ord) -> str:
    """JSON-safe form of a validated ``ord``: ``"inf"`` or ``"2"``."""
    return "inf" if validate_ord(ord) == np.inf else "2"


def _reduction_axes(x: tf.Tensor):
    return list(range(1, x.shape.rank))


def per_example_norm(values: tf.Tensor, ord) -> tf.Tensor:
    """``[batch]`` l1 / l2 / l_inf norm of each example (``ord`` in 1, 2, numpy.inf)."""
    values = tf.convert_to_tensor(values)
    axes = _reduction_axes(values)
    if ord == np.inf:
        return tf.reduce_max(tf.abs(values), axis=axes)
    if ord == 1:
        return tf.reduce_sum(tf.abs(values), axis=axes)
    return tf.sqrt(tf.reduce_sum(tf.square(values), axis=axes))


def dual_ord(ord):
    """The dual norm's order: l1 for l_inf, l2 for l2."""
    return 1 if validate_ord(ord) == np.inf else 2


def _broadcast_per_example(values: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
    return tf.reshape(values, [-1] + [1] * (like.shape.rank - 1))


def clip_to_box(x: tf.Tensor, low: float = 0.0, high: float = 1.0) -> tf.Tensor:
    """Clips to the valid image range ``[low, high]``."""
    return tf.clip_by_value(x, low, high)


def project_to_ball(x_adv: tf.Tensor, x: tf.Tensor, eps, ord) -> tf.Tensor:
    """Projects ``x_adv`` onto the ``ord``-ball of radius ``eps`` around ``x`` (no box)."""
    x_adv = tf.convert_to_tensor(x_adv, tf.float32)
    x = tf.convert_to_tensor(x, tf.float32)
    delta = x_adv - x
    if validate_ord(ord) == np.inf:
        delta = tf.clip_by_value(delta, -eps, eps)
    else:
        norms = per_example_norm(delta, 2)
        scale = tf.minimum(1.0, eps / tf.maximum(norms, _TINY))
        delta = delta * _broadcast_per_example(scale, delta)
    return x + delta


def project(x_adv: tf.Tensor, x: tf.Tensor, eps, ord) -> tf.Tensor:
    """Projects ``x_adv`` onto the ``ord``-ball of radius ``eps`` around ``x``, then clips to [0, 1].

    For l_inf this is the exact Euclidean projection onto the intersection.
    For l2 it is the ball projection followed by the box projection; because
    ``x`` lies in the box, clipping only moves coordinates towards ``x``, so the
    result stays in both sets (it is feasible, though not always the nearest
    feasible point).
    """
    return clip_to_box(project_to_ball(x_adv, x, eps, ord))
