"""Ascent steps: move the iterate along the steepest-ascent direction of a norm.

``sign_step`` is the steepest-ascent step for l_inf (FGSM / PGD-l_inf),
``normalized_step`` the one for l2 (the gradient scaled to unit l2 norm per
example). Neither projects; compose with :mod:`tfnorms.attacks.projections`.

Example:
    >>> import numpy as np
    >>> from tfnorms.attacks import steps
    >>> steps.sign_step(np.zeros((1, 2), "float32"), np.array([[3.0, -0.1]], "float32"), 0.5).numpy()
    array([[ 0.5, -0.5]], dtype=float32)
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfnorms.attacks.projections import per_example_norm, validate_ord

_TINY = 1e-12


def sign_step(x: tf.Tensor, gradient: tf.Tensor, step_size) -> tf.Tensor:
    """``x + step_size * sign(gradient)`` (l_inf steepest ascent)."""
    x, gradient = tf.convert_to_tensor(x, tf.float32), tf.convert_to_tensor(gradient, tf.float32)
    return x + step_size * tf.sign(gradient)


def normalized_step(x: tf.Tensor, gradient: tf.Tensor, step_size) -> tf.Tensor:
    """``x + step_size * gradient / ||gradient||_2`` per example (l2 steepest ascent)."""
    x, gradient = tf.convert_to_tensor(x, tf.float32), tf.convert_to_tensor(gradient, tf.float32)
    norms = tf.maximum(per_example_norm(gradient, 2), _TINY)
    return x + step_size * gradient / tf.reshape(norms, [-1] + [1] * (gradient.shape.rank - 1))


def get(ord):
    """The steepest-ascent step for ``ord`` (``numpy.inf`` -> sign, ``2`` -> normalized)."""
    return sign_step if validate_ord(ord) == np.inf else normalized_step
