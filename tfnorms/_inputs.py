"""The one validation boundary for data entering the attacks, the trainer and the metrics.

Every public entry point that takes images, labels or logits (the attacks'
``__call__`` / ``run``, :func:`tfnorms.attacks.loop.run`,
:func:`tfnorms.metrics.evaluate_robustness`, :class:`tfnorms.AdversarialTrainer`'s
``fit`` / ``evaluate`` and steps) checks them here, so that bad data give a
clear error instead of a plausible wrong number:

* images (:func:`check_images`): floating point, finite, in [0, 1] (a
  ``uint8`` batch or 0..255 floats is an error that says "divide by 255");
* batches (:func:`check_nonempty`): at least one example;
* labels (:func:`check_labels`): integer class ids in ``[0, num_classes)``
  (integer-valued floats in a 1-D vector count as ids) or rows of a
  distribution (one-hot or soft labels: ``[batch, num_classes]``,
  non-negative, each row summing to 1); returned in one normalised form;
* logits (:func:`check_finite_logits`, :func:`finite_rows`): a prediction
  with a NaN or an infinite logit is never counted as correct, nor as broken;
* kernels (:func:`check_finite`): the spectral norm and singular value
  clipping refuse NaN / Inf kernels instead of failing inside an
  eigendecomposition.

Where the checks run:

* **Concrete values** (NumPy arrays, Python lists, eager tensors): Python
  checks that raise ``ValueError`` with a Keras-style message
  (``Invalid value for argument `x`. Expected ... Received: ...``).
* **Symbolic tensors** (inside ``tf.function``): what the static shape and
  dtype show (a ``uint8`` dtype, a label rank, a row length) is checked in
  Python while tracing; checks of the values become ``tf.debugging.Assert``
  ops attached to the returned tensor, which raise
  ``tf.errors.InvalidArgumentError`` with the same message at run time. They
  cost a few reductions over the batch (nothing measurable next to one
  forward pass).
* **Under XLA** (``jit_compile=True``) TensorFlow drops ``Assert`` ops: only
  the trace-time checks hold inside the compiled function. Data are therefore
  also checked where they enter, outside it: ``AdversarialTrainer.fit`` /
  ``evaluate`` / ``train_on_batch`` / ``test_on_batch`` check arrays eagerly
  and add these checks to a ``tf.data.Dataset`` as a ``map`` (``tf.data``
  functions are never XLA-compiled), and the attacks and
  :func:`~tfnorms.metrics.evaluate_robustness` check eagerly before calling
  their compiled functions.

Example:
    >>> import numpy as np
    >>> from tfnorms import _inputs
    >>> _inputs.check_labels(np.array([0.0, 2.0]), num_classes=3).numpy()
    array([0, 2], dtype=int32)
    >>> _inputs.check_images(np.full((1, 2, 2, 1), 255, "uint8"))
    Traceback (most recent call last):
    ...
    ValueError: Invalid value for argument `x`. Expected floating-point images in [0, 1]. Received: dtype=uint8, min=255, max=255. Divide by 255: `x.astype("float32") / 255`.
"""

from __future__ import annotations

import weakref

import keras
import numpy as np
import tensorflow as tf

from tfnorms import _args

# |sum of a label row - 1| allowed: float32 rounding of soft labels (label smoothing), and 16-bit types.
_ROW_SUM_TOLERANCE = {tf.float16: 1e-2, tf.bfloat16: 1e-2}
_DEFAULT_ROW_SUM_TOLERANCE = 1e-3


_invalid = _args.message


def is_concrete(value) -> bool:
    """Whether Python can read ``value``'s numbers now (anything but a symbolic tensor or a variable in a graph)."""
    if isinstance(value, tf.Variable):
        return tf.executing_eagerly()
    if isinstance(value, tf.Tensor):
        return not tf.is_symbolic_tensor(value)
    return True


def _as_checkable(value):
    """NumPy arrays stay NumPy (no copy of a whole data set); everything else becomes a tensor."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, (tf.Tensor, tf.Variable)):
        return tf.convert_to_tensor(value)
    return np.asarray(value)


def _shape(value):
    """The static shape of an array, list or tensor as a tuple (``None`` entries unknown; ``None`` if the rank is)."""
    shape = tf.TensorShape(value.shape if hasattr(value, "shape") else np.shape(value))
    return None if shape.rank is None else tuple(shape.as_list())


def _dtype(value) -> tf.DType:
    return tf.as_dtype(value.dtype)


def _number(value):
    """A NumPy scalar as a short Python number for messages (``255``, ``-0.5``, ``0.1``)."""
    value = np.asarray(value).item()
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return float(f"{value:.6g}") if isinstance(value, float) else value


def _min_max_finite(value):
    """``(min, max, all finite)`` of a non-empty NumPy array or eager tensor, as Python values.

    NumPy's min and max propagate NaN, so for a (possibly huge) array the two
    reductions also tell finiteness, without a full-size temporary.
    """
    if isinstance(value, np.ndarray):
        low, high = np.min(value), np.max(value)
        return _number(low), _number(high), bool(np.isfinite(low) and np.isfinite(high))
    finite = tf.reduce_all(tf.math.is_finite(value)) if value.dtype.is_floating else True
    return _number(tf.reduce_min(value).numpy()), _number(tf.reduce_max(value).numpy()), bool(finite)


def _with_assertions(value: tf.Tensor, assertions) -> tf.Tensor:
    """``value`` that cannot be read before ``assertions`` ran."""
    with tf.control_dependencies(assertions):
        return tf.identity(value)


def _assert(condition, message, *data):
    return tf.debugging.Assert(condition, [message, *data], summarize=8)


# ---------------------------------------------------------------------------------------------- images


def _image_fix(dtype, low, high) -> str:
    if low is not None and low < 0:
        return (
            "Attacks and their eps assume raw pixels in [0, 1]: undo a mean/std normalisation of the data "
            "(do it inside the model instead)."
        )
    if not dtype.is_floating or (high is not None and high <= 255):
        return 'Divide by 255: `x.astype("float32") / 255`.'
    return "Rescale the images to [0, 1]."


def check_images(x, name: str = "x"):
    """Checks that ``x`` holds floating-point images with every value in [0, 1].

    Args:
        x: a ``[batch, ...]`` NumPy array, list or tensor.
        name: the argument name used in the error message.

    Returns:
        ``x`` itself for concrete values (NumPy arrays stay NumPy arrays); for a
        symbolic tensor, the tensor behind a run-time check of its range.

    Raises:
        ValueError: for an integer dtype (``uint8`` pixels), values outside
            [0, 1] or non-finite values; the message names the argument, the
            dtype, min and max received and the fix.

    Example:
        >>> import numpy as np
        >>> check_images(np.full((1, 2), 2.0, "float32"), name="images")
        Traceback (most recent call last):
        ...
        ValueError: Invalid value for argument `images`. Expected floating-point images in [0, 1]. Received: dtype=float32, min=2, max=2. Divide by 255: `x.astype("float32") / 255`.
    """
    if x is None:
        raise ValueError(_invalid(name, "floating-point images in [0, 1]", f"{name}=None"))
    if is_concrete(x):
        values = _as_checkable(x)
        dtype = _dtype(values)
        if dtype.is_bool or not (dtype.is_floating or dtype.is_integer):
            raise ValueError(_invalid(name, "floating-point images in [0, 1]", f"dtype={dtype.name}"))
        if np.size(values) == 0:
            if not dtype.is_floating:
                raise ValueError(_invalid(name, "floating-point images in [0, 1]", f"dtype={dtype.name}"))
            return x
        low, high, finite = _min_max_finite(values)
        if not dtype.is_floating or not finite or low < 0 or high > 1:
            received = f"dtype={dtype.name}, min={low}, max={high}" + ("" if finite else " (NaN or Inf values)")
            fix = "Replace the NaN / Inf values." if not finite else _image_fix(dtype, low, high)
            raise ValueError(f"{_invalid(name, 'floating-point images in [0, 1]', received)}. {fix}")
        return x
    x = tf.convert_to_tensor(x)
    if not x.dtype.is_floating:
        raise ValueError(
            f"{_invalid(name, 'floating-point images in [0, 1]', f'dtype={x.dtype.name}')}. "
            f"{_image_fix(x.dtype, None, None)}"
        )
    in_range = tf.reduce_all(tf.logical_and(x >= 0, x <= 1))  # false for NaN too
    message = f"Invalid value for argument `{name}`. Expected floating-point images in [0, 1] (finite). Received: min, max ="
    return _with_assertions(x, [_assert(in_range, message, tf.reduce_min(x), tf.reduce_max(x))])


def check_nonempty(x, name: str = "x"):
    """Checks that a batch has at least one example (``x.shape[0] >= 1``); returns ``x`` like :func:`check_images`.

    Example:
        >>> import numpy as np
        >>> check_nonempty(np.zeros((0, 4), "float32"))
        Traceback (most recent call last):
        ...
        ValueError: Invalid value for argument `x`. Expected a non-empty batch (at least one example). Received: shape (0, 4)
    """
    if is_concrete(x):
        shape = _shape(x)
        if not shape or shape[0] == 0:
            raise ValueError(_invalid(name, "a non-empty batch (at least one example)", f"shape {shape}"))
        return x
    x = tf.convert_to_tensor(x)
    if x.shape.rank == 0 or (x.shape.rank is not None and x.shape[0] == 0):
        raise ValueError(_invalid(name, "a non-empty batch (at least one example)", f"shape {tuple(x.shape)}"))
    message = f"Invalid value for argument `{name}`. Expected a non-empty batch (at least one example). Received: batch size"
    size = tf.shape(x)[0]
    return _with_assertions(x, [_assert(size > 0, message, size)])


# ---------------------------------------------------------------------------------------------- labels

_LABELS = "integer class ids in [0, {c}) or rows of class probabilities (one-hot / soft labels) of length {c}"


def _label_kind(shape, num_classes, name):
    """``"ids"`` or ``"rows"`` from the static shape, or a ValueError."""
    expected = _LABELS.format(c="num_classes" if num_classes is None else num_classes)
    rank = shape.rank
    if rank is None:
        raise ValueError(_invalid(name, expected + " with a static rank", "labels of unknown rank"))
    if rank == 1:
        return "ids"
    if rank == 2 and shape[-1] == 1 and num_classes != 1:
        return "ids"
    if rank == 2 and shape[-1] is not None and (num_classes is None or shape[-1] == num_classes):
        return "rows"
    raise ValueError(_invalid(name, expected, f"shape {tuple(shape)}"))


def check_labels(y, num_classes, name: str = "y", batch_size=None) -> tf.Tensor:
    """Checks labels and returns them in one normalised form.

    Accepted (``C = num_classes``):

    * class ids, ``[batch]`` or ``[batch, 1]``, integers in ``[0, C)``; floats
      are accepted as ids only when every value is an integer (``3.0``), in a
      1-D vector or a ``[batch, 1]`` column (a non-integral float such as
      ``1.7`` is an error, never truncated);
    * rows of a distribution, ``[batch, C]`` (one-hot or soft labels):
      non-negative, each row summing to 1 (within 1e-3; 1e-2 for 16-bit types).

    Args:
        y: labels (NumPy array, list or tensor).
        num_classes: the model's number of logits ``C``; ``None`` when unknown
            (then ids are only checked to be non-negative and rows not for their length).
        name: the argument name used in error messages.
        batch_size: if given, the number of examples the labels must match.

    Returns:
        int32 ids ``[batch]`` or float32 rows ``[batch, C]`` (behind run-time
        checks when ``y`` is symbolic). The two forms differ in dtype and rank,
        so a compiled function traced for one is never reused for the other.

    Raises:
        ValueError: for out-of-range or non-integral ids, rows that are not
            distributions, or shapes that are neither.

    Example:
        >>> import numpy as np
        >>> check_labels(np.array([[0, 1], [1, 0]]), num_classes=2).numpy()
        array([[0., 1.],
               [1., 0.]], dtype=float32)
        >>> check_labels(np.array([7]), num_classes=5)
        Traceback (most recent call last):
        ...
        ValueError: Invalid value for argument `y`. Expected integer class ids in [0, 5) or rows of class probabilities (one-hot / soft labels) of length 5. Received: class ids with min=7, max=7
    """
    expected = _LABELS.format(c="num_classes" if num_classes is None else num_classes)
    if y is None:
        raise ValueError(_invalid(name, expected, f"{name}=None"))
    concrete = is_concrete(y)
    # Concrete labels are checked in NumPy (a few microseconds; no eager op per check).
    labels = np.asarray(y.numpy() if hasattr(y, "numpy") else y) if concrete else tf.convert_to_tensor(y)
    try:
        dtype = tf.as_dtype(labels.dtype)
    except TypeError:
        dtype = None
    if dtype is None or dtype.is_bool or not (dtype.is_integer or dtype.is_floating):
        raise ValueError(_invalid(name, expected, f"dtype={labels.dtype.name}"))
    kind = _label_kind(tf.TensorShape(labels.shape), num_classes, name)
    if batch_size is not None:
        _check_batch_size(labels, batch_size, name)
    if kind == "ids":
        check = _checked_ids if not concrete else _checked_ids_now
        return check(labels.reshape(-1) if concrete else tf.reshape(labels, [-1]), num_classes, name, expected)
    return (_checked_rows_now if concrete else _checked_rows)(labels, dtype, name, expected)


def _check_batch_size(labels, batch_size, name):
    size = labels.shape[0]
    if isinstance(batch_size, (int, np.integer)) and size is not None:
        if size != batch_size:
            raise ValueError(_invalid(name, f"one label per example ({batch_size})", f"{size} labels"))


def _checked_ids_now(values, num_classes, name, expected):
    """Concrete ids (a 1-D NumPy array): Python checks, int32 tensor."""
    if values.size:
        if not np.issubdtype(values.dtype, np.integer):
            integral = np.isfinite(values) & (values == np.floor(values))
            if not integral.all():
                bad = values[~integral][0]
                raise ValueError(_invalid(name, expected, f"non-integral float labels such as {_number(bad)}"))
        low, high = _number(values.min()), _number(values.max())
        if low < 0 or high >= (np.inf if num_classes is None else num_classes):
            raise ValueError(_invalid(name, expected, f"class ids with min={low}, max={high}"))
    return tf.constant(values.astype(np.int32))


def _checked_rows_now(values, dtype, name, expected):
    """Concrete rows (a 2-D NumPy array): Python checks, float32 tensor."""
    values = values.astype(np.float32)
    if values.size:
        sums = values.sum(axis=-1)
        tolerance = _ROW_SUM_TOLERANCE.get(dtype, _DEFAULT_ROW_SUM_TOLERANCE)
        if not np.all(np.isfinite(values)) or values.min() < 0 or np.abs(sums - 1).max() > tolerance:
            received = f"rows with min={_number(values.min())}, row sums in [{_number(sums.min())}, {_number(sums.max())}]"
            raise ValueError(_invalid(name, expected + " (non-negative, summing to 1)", received))
    return tf.constant(values)


def _checked_ids(labels, num_classes, name, expected):
    """Symbolic ids: a run-time assertion, int32."""
    ok = labels >= 0
    if num_classes is not None:
        ok = tf.logical_and(ok, labels < tf.cast(num_classes, labels.dtype))
    if labels.dtype.is_floating:
        ok = tf.logical_and(ok, tf.equal(labels, tf.floor(labels)))  # false for NaN
    message = f"Invalid value for argument `{name}`. Expected {expected}. Received: labels with min, max ="
    checked = _with_assertions(labels, [_assert(tf.reduce_all(ok), message, tf.reduce_min(labels), tf.reduce_max(labels))])
    return tf.cast(checked, tf.int32)


def _checked_rows(labels, dtype, name, expected):
    """Symbolic rows: a run-time assertion, float32."""
    tolerance = _ROW_SUM_TOLERANCE.get(dtype, _DEFAULT_ROW_SUM_TOLERANCE)
    rows = tf.cast(labels, tf.float32)
    ok = tf.logical_and(
        tf.reduce_all(rows >= 0),
        tf.reduce_all(tf.abs(tf.reduce_sum(rows, axis=-1) - 1.0) <= tolerance),  # false for NaN
    )
    message = (
        f"Invalid value for argument `{name}`. Expected {expected} (non-negative, summing to 1). "
        "Received: rows with min, largest |row sum - 1| ="
    )
    deviation = tf.reduce_max(tf.abs(tf.reduce_sum(rows, axis=-1) - 1.0))
    return _with_assertions(rows, [_assert(ok, message, tf.reduce_min(rows), deviation)])


# ---------------------------------------------------------------------------------------------- models

_NUM_CLASSES = weakref.WeakKeyDictionary()


def _static_last_dim(shape):
    if isinstance(shape, (tuple, list, tf.TensorShape)) and len(shape) >= 1:
        last = shape[-1]
        if isinstance(last, (int, np.integer)) and not isinstance(last, bool):
            return int(last)
    return None


def num_classes(model, x, run: bool = True):
    """The number of logits ``model`` returns for inputs like ``x``, found without computing when possible.

    Keras' static ``output_shape`` first, then a symbolic trace of the model
    (``compute_output_spec``; Keras layers), then, for other callables and only
    when running eagerly and ``run`` is true, one forward pass on ``x[:1]``.
    The answer is cached per model and input shape. ``None`` when it cannot be
    known (a plain callable inside a ``tf.function``, or with ``run=False``).

    Example:
        >>> import keras, numpy as np
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        >>> num_classes(model, np.zeros((2, 4), "float32"))
        3
    """
    shape = _shape(x)
    key = (tuple(shape or (None, None))[1:], str(getattr(x, "dtype", "")))
    try:
        cache = _NUM_CLASSES.setdefault(model, {})
    except TypeError:  # not weak-referenceable
        cache = {}
    if key in cache:
        return cache[key]
    found = None
    try:
        found = _static_last_dim(model.output_shape)
    except (AttributeError, ValueError, RuntimeError, TypeError):
        pass
    if found is None and hasattr(model, "compute_output_spec"):
        try:
            spec = model.compute_output_spec(keras.KerasTensor((None,) + key[0], dtype=tf.as_dtype(x.dtype).name))
            found = _static_last_dim(spec.shape)
        except Exception:  # a layer that cannot be traced symbolically: fall back below
            found = None
    if found is None and run and tf.executing_eagerly():
        found = _static_last_dim(tuple(model(tf.convert_to_tensor(x[:1]), training=False).shape))
    if found is not None:
        cache[key] = found
    return found


def check_batch(model, x, y, *, x_name: str = "x", y_name: str = "y", run_model: bool = True):
    """:func:`check_nonempty`, :func:`check_images` and :func:`check_labels` for one batch and its model.

    The class count comes from :func:`num_classes` (``run_model=False``: never
    from a forward pass; the caller then checks the labels against the logits).

    Returns:
        ``(x, labels)``: ``x`` as :func:`check_images` returns it (concrete
        values unchanged, not copied) and the normalised labels of :func:`check_labels`.

    Example:
        >>> import keras, numpy as np
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        >>> x, labels = check_batch(model, np.zeros((2, 4), "float32"), [2, 0])
        >>> labels.numpy()
        array([2, 0], dtype=int32)
    """
    x = check_images(check_nonempty(x, x_name), x_name)
    shape = _shape(x)
    classes = num_classes(model, x, run=run_model)
    return x, check_labels(y, classes, y_name, batch_size=shape[0] if shape else None)


# ---------------------------------------------------------------------------------------------- logits


def finite_rows(logits) -> tf.Tensor:
    """``[batch]`` bool: every logit of the row is finite (a prediction exists)."""
    return tf.reduce_all(tf.math.is_finite(tf.cast(logits, tf.float32)), axis=-1)


def check_finite_logits(logits, name: str = "model", inputs: str = "x"):
    """Checks that a model's logits are finite; returns them like :func:`check_images`.

    A model with NaN weights, or one that overflows, has no prediction: its
    arg-max (0 for NaN) must not be counted as correct or broken.

    Example:
        >>> import numpy as np
        >>> check_finite_logits(np.array([[0.0, np.nan], [1.0, 2.0]]))
        Traceback (most recent call last):
        ...
        ValueError: Invalid value for argument `model`. Expected finite logits (no NaN or Inf). Received: non-finite logits for 1 of 2 points of `x`. Check the weights (NaN after a diverged training?) and the numerics (float16 overflow?).
    """
    expected = "finite logits (no NaN or Inf)"
    if is_concrete(logits):
        finite = finite_rows(logits).numpy()
        if not finite.all():
            received = f"non-finite logits for {int((~finite).sum())} of {finite.size} points of `{inputs}`"
            raise ValueError(
                f"{_invalid(name, expected, received)}. "
                "Check the weights (NaN after a diverged training?) and the numerics (float16 overflow?)."
            )
        return logits
    logits = tf.convert_to_tensor(logits)
    message = f"Invalid value for argument `{name}`. Expected {expected}. Received: non-finite logits on `{inputs}`"
    return _with_assertions(logits, [_assert(tf.reduce_all(finite_rows(logits)), message)])


def check_finite(value, name: str):
    """Checks that every entry of a tensor (e.g. a kernel) is finite; returns it like :func:`check_images`.

    Example:
        >>> import numpy as np
        >>> check_finite(np.array([[1.0, np.nan]]), "kernel")
        Traceback (most recent call last):
        ...
        ValueError: Invalid value for argument `kernel`. Expected finite values. Received: 1 NaN and 0 infinite entries of 2
    """
    if is_concrete(value):
        values = _as_checkable(value)
        if np.size(values) and not _min_max_finite(values)[2]:
            values = np.asarray(values)
            received = f"{int(np.isnan(values).sum())} NaN and {int(np.isinf(values).sum())} infinite entries of {values.size}"
            raise ValueError(_invalid(name, "finite values", received))
        return value
    value = tf.convert_to_tensor(value)
    message = f"Invalid value for argument `{name}`. Expected finite values. Received: NaN or Inf entries"
    return _with_assertions(value, [_assert(tf.reduce_all(tf.math.is_finite(value)), message)])
