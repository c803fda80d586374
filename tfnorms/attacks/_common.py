"""Shared plumbing of the attacks: labels, seeds, per-example rows (arguments are checked by ``tfnorms._args``).

The restart loop itself (restarts / target classes re-running only the points
still robust, as the reference does, docs/theory.md#apgd) is
:class:`tfnorms.attacks.RestartAttack` in :mod:`tfnorms.attacks.base`; these
are the helpers it and the attacks share.

Example:
    >>> from tfnorms.attacks import _common
    >>> _common.subset_indices([True, False, True]).numpy().tolist()
    [0, 2]
"""

from __future__ import annotations

import secrets

import tensorflow as tf

from tfnorms import _inputs, _keras
from tfnorms.attacks import loop


def class_ids(labels) -> tf.Tensor:
    """``[batch]`` int32 class ids from labels normalised by ``_inputs.check_labels`` (ids, or rows: their arg-max)."""
    if labels.shape.rank == 2:
        return tf.cast(tf.argmax(labels, axis=-1), tf.int32)
    return labels


def checked_inputs(model, x, y):
    """The shared start of APGD, FAB and Square: checked float32 inputs, their clean logits, int32 class ids.

    Raises ``ValueError`` (eagerly) for an empty batch, images that are not
    floats in [0, 1], non-finite clean logits or invalid labels.
    """
    x = tf.cast(_inputs.check_images(_inputs.check_nonempty(x)), tf.float32)
    clean_logits = _inputs.check_finite_logits(logits(model, x))
    labels = _inputs.check_labels(y, clean_logits.shape[-1], batch_size=x.shape[0])
    return x, clean_logits, class_ids(labels)


def logits(model, x) -> tf.Tensor:
    """Float32 logits in inference mode (attacks never run BN in training mode: docs/theory.md#attacks-inference-mode)."""
    return loop.logits_in_float32(model, x, training=False)


def fresh_seed() -> int:
    """A random 31-bit seed (used when an attack is built with ``seed=None``)."""
    return secrets.randbits(31)


def seed_pair(seed: int, salt: int) -> tf.Tensor:
    """The ``[2]`` int32 seed of a stateless random op for one run of an attack."""
    return tf.constant([int(seed) % (2**31 - 1), int(salt) % (2**31 - 1)], tf.int32)


def broadcast(values: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
    """Expands a ``[batch]`` tensor to broadcast against ``[batch, ...]`` inputs (keeps static shapes)."""
    for _ in range(like.shape.rank - 1):
        values = tf.expand_dims(values, -1)
    return values


def subset_indices(still_robust: tf.Tensor) -> tf.Tensor:
    """Indices of the points to run an attack on: the ones still robust (eagerly) or all (in a graph).

    Inside a ``tf.function`` the subset could be empty, and TensorFlow's CPU
    convolution gradients fail on empty batches; there every point is re-run
    and callers merge results only where ``still_robust`` holds.
    """
    if tf.executing_eagerly():
        return tf.cast(tf.reshape(tf.where(still_robust), [-1]), tf.int32)
    return tf.range(tf.shape(still_robust)[0])


class AnyBatchFunction:
    """``tf.function(python_function)`` traced once for every batch size: ``f(model, *batched, **unbatched)``.

    The cascade calls an attack's compiled run on the points still robust, a
    different number at every target class, restart and attack. A plain
    ``tf.function`` traces the first two sizes before it relaxes the batch
    dimension; here every call first asks for the trace whose positional
    tensor arguments have an unknown leading dimension (keyword arguments, e.g.
    a ``[2]`` seed, keep their shapes), and the call itself then reuses it.

    Traced without AutoGraph: the attacks loop with explicit ``tf.while_loop``
    and branch only on Python values, and Keras 3 does not convert a model's
    ``call`` in ``fit`` either; converting every function the trace reaches
    (the whole model, twice per attack) cost about 40% of the tracing time
    (docs/benchmarks.md#autoattack-speed). The input gradients of
    convolutions are traced as forward convolutions
    (:func:`tfnorms._keras.conv_input_gradients_as_convolutions`): the same
    linear map, several times faster on CPU for small images.

    Example:
        >>> import keras
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        >>> f = AnyBatchFunction(lambda model, x, seed: model(x))
        >>> [f(model, tf.zeros([n, 4]), seed=tf.constant([0, 1])).shape[0] for n in (1, 5, 2)]
        [1, 5, 2]
        >>> f.tracing_count()
        1
    """

    def __init__(self, python_function):
        def traced(*args, **kwargs):
            with _keras.conv_input_gradients_as_convolutions():
                return python_function(*args, **kwargs)

        self.function = tf.function(traced, reduce_retracing=True, autograph=False)

    def __call__(self, model, *batched, **unbatched):
        batched = [tf.convert_to_tensor(value) for value in batched]
        unbatched = {key: tf.convert_to_tensor(value) for key, value in unbatched.items()}
        specs = [tf.TensorSpec([None] + value.shape[1:], value.dtype) for value in batched]
        fixed = {key: tf.TensorSpec(value.shape, value.dtype) for key, value in unbatched.items()}
        self.function.get_concrete_function(model, *specs, **fixed)  # traced on the first call only
        return self.function(model, *batched, **unbatched)

    def tracing_count(self) -> int:
        """How often the function was traced (1 per model and input shape unless something retraces)."""
        return self.function.experimental_get_tracing_count()


def scatter(values: tf.Tensor, indices: tf.Tensor, updates: tf.Tensor) -> tf.Tensor:
    """``values`` with rows ``indices`` replaced by ``updates``."""
    return tf.tensor_scatter_nd_update(values, indices[:, None], updates)


def nothing_left(indices: tf.Tensor) -> bool:
    """True when running eagerly and no point is left (saves whole runs; in graph mode runs stay)."""
    return tf.executing_eagerly() and int(tf.size(indices)) == 0


def keep_shapes(new, old):
    """``new`` loop variables with the static shapes of ``old`` (a ``tf.while_loop`` needs them unchanged)."""
    return tf.nest.map_structure(lambda n, o: tf.ensure_shape(n, o.shape), new, old)


def gather_rows(state, indices):
    """The rows ``indices`` of every ``[batch, ...]`` tensor of the dict ``state``."""
    return {key: tf.gather(value, indices) for key, value in state.items()}


def scatter_rows(state, indices, updates):
    """``state`` with the rows ``indices`` of each tensor named in ``updates`` replaced by its update."""
    return {**state, **{key: scatter(state[key], indices, value) for key, value in updates.items()}}
