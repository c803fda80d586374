"""Operator norms of built Keras layers and of every layer of a model."""

from __future__ import annotations

import functools
import warnings
import weakref
from typing import Dict, Optional, Tuple

import keras
import numpy as np
import tensorflow as tf

from tfnorms import _args, _keras
from tfnorms.norms import geometry
from tfnorms.norms.operator_norms import (
    batch_norm_norm,
    conv2d_l1_norm,
    conv2d_linf_norm,
    dense_l1_norm,
    dense_linf_norm,
    depthwise_as_grouped,
)
from tfnorms.norms.spectral import conv2d_spectral_norm, dense_spectral_norm

SUPPORTED_LAYERS = (
    keras.layers.Conv2D,
    keras.layers.DepthwiseConv2D,
    keras.layers.Dense,
    keras.layers.BatchNormalization,
)

ORDS = (1, 2, np.inf)
SPECTRAL_METHODS = ("auto", "gram")


def validate_ord(ord):
    """Returns ``ord`` as ``1``, ``2`` or ``numpy.inf`` (spellings as in ``tfnorms.NormDecay``), or raises."""
    return _args.single_ord(ord, "ord", ORDS)


def is_supported(layer) -> bool:
    """Whether :func:`layer_norm` computes the norm of ``layer``."""
    return isinstance(layer, SUPPORTED_LAYERS)


def _spatial(shape, data_format) -> Tuple[Optional[int], Optional[int]]:
    if shape is None or len(shape) != 4:
        return (None, None)
    dims = shape[1:3] if data_format == "channels_last" else shape[2:4]
    return tuple(None if d is None else int(d) for d in dims)


def _preceding_zero_padding(layer):
    """The ``ZeroPadding2D`` layer feeding ``layer`` in a functional graph, if any."""
    parent = _keras.feeding_layer(layer)
    if isinstance(parent, keras.layers.ZeroPadding2D) and parent.data_format == layer.data_format:
        return parent
    return None


def conv_geometry(layer, input_shape=None, fold_padding=True):
    """Reads the operator geometry of a built Conv2D / DepthwiseConv2D layer.

    Args:
        layer: a built ``Conv2D`` or ``DepthwiseConv2D``.
        input_shape: spatial ``(H, W)`` overriding what the layer recorded.
        fold_padding: if the layer is fed by a ``ZeroPadding2D`` (the
            PyTorch-style ``padding=1`` idiom: ``ZeroPadding2D(1)`` then
            ``"valid"``), describe the composite map on the un-padded input,
            whose norm is the one PyTorch's padded conv has.

    Returns:
        A dict with ``kernel`` (grouped Conv2D layout), ``input_shape``,
        ``strides``, ``padding`` (name or explicit pairs), ``dilation_rate``
        and ``groups``.
    """
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kernel, groups = depthwise_as_grouped(layer.kernel)
    else:
        kernel, groups = layer.kernel, int(layer.groups)
    padding = layer.padding
    kernel_hw = tuple(kernel.shape[:2])
    padder = _preceding_zero_padding(layer) if fold_padding and input_shape is None else None
    if input_shape is None:
        source = padder if padder is not None else layer
        input_shape = _spatial(_keras.built_input_shape(source), layer.data_format)
    elif padder is None:
        input_shape = tuple(input_shape)
    if padder is not None:
        per_axis = []
        for n, zero_pad, k, s, d in zip(
            input_shape, padder.padding, kernel_hw, layer.strides, layer.dilation_rate
        ):
            if n is None:
                per_axis = None
                break
            before, after, _ = geometry.axis_padding(n + sum(zero_pad), k, s, d, padding)
            per_axis.append((zero_pad[0] + before, zero_pad[1] + after))
        if per_axis is None:  # unknown size: fall back to the layer on its own input
            input_shape = _spatial(_keras.built_input_shape(layer), layer.data_format)
        else:
            padding = tuple(per_axis)
    return dict(
        kernel=kernel,
        input_shape=input_shape,
        strides=tuple(layer.strides),
        padding=padding,
        dilation_rate=tuple(layer.dilation_rate),
        groups=groups,
    )


def layer_norm(layer, ord, *, input_shape=None, fold_padding=True, spectral_method="auto") -> tf.Tensor:
    """Operator norm of a built layer's linear map.

    Reads stride, padding, dilation, groups and the input size from the layer.

    Args:
        layer: a built ``Conv2D``, ``DepthwiseConv2D``, ``Dense`` or
            ``BatchNormalization`` layer.
        ord: ``1``, ``2`` or ``numpy.inf``, as in ``numpy.linalg.norm``.
        input_shape: spatial ``(H, W)`` of the input, overriding the size the
            layer was built with (needed for ``ord=2`` on fully convolutional
            layers built with unknown sizes). Without a known size, ``ord=1``
            and ``numpy.inf`` use the large-input closed form.
        fold_padding: see :func:`conv_geometry`.
        spectral_method: for ``ord=2``, ``"auto"`` (exact for Dense, power
            iteration for zero-padded convolutions, a lower bound) or
            ``"gram"`` (certified upper bounds by Gram iteration, see
            :func:`~tfnorms.norms.conv2d_spectral_norm`).

    Returns:
        A scalar tensor (differentiable in the layer's weights). Convolutions
        use exact set sums for ``ord=1``/``inf`` and, for ``ord=2``, power
        iteration on the zero-padded operator. BatchNormalization uses the
        inference-mode map (moving variance).

    Raises:
        ValueError: for an unsupported layer, an unbuilt layer, or a bad ``ord``.

    Example:
        >>> import keras, numpy as np
        >>> conv = keras.layers.Conv2D(4, 3, strides=2, kernel_initializer="ones")
        >>> _ = conv(np.zeros((1, 8, 8, 2), "float32"))
        >>> float(layer_norm(conv, np.inf)), float(layer_norm(conv, 1))
        (18.0, 16.0)
    """
    ord = validate_ord(ord)
    spectral_method = _args.choice(spectral_method, "spectral_method", SPECTRAL_METHODS)
    if not is_supported(layer):
        names = ", ".join(cls.__name__ for cls in SUPPORTED_LAYERS)
        raise ValueError(
            f"Invalid value for argument `layer`: layer {layer.name!r} of type "
            f"{type(layer).__name__} is not supported. Supported layer types: {names}."
        )
    if not layer.built:
        raise ValueError(f"Layer {layer.name!r} is not built: call it on an input first.")
    if isinstance(layer, keras.layers.BatchNormalization):
        return batch_norm_norm(layer.gamma, layer.moving_variance, layer.epsilon)
    if isinstance(layer, keras.layers.Dense):
        if ord == 2:
            return dense_spectral_norm(layer.kernel, method=spectral_method)
        return {1: dense_l1_norm, np.inf: dense_linf_norm}[ord](layer.kernel)
    geom = conv_geometry(layer, input_shape=input_shape, fold_padding=fold_padding)
    if ord == 2:
        if None in geom["input_shape"]:
            raise ValueError(
                f"The spectral norm of layer {layer.name!r} depends on its input "
                "size, which the layer does not know: pass `input_shape=(H, W)`."
            )
        return conv2d_spectral_norm(**geom, method=spectral_method)
    return (conv2d_l1_norm if ord == 1 else conv2d_linf_norm)(**geom)


def unsupported_layers(model):
    """Layers of ``model`` that own weights but have no norm here."""
    return [
        layer
        for layer in _keras.flatten_layers(model)
        if not is_supported(layer) and _keras.own_variables(layer)
    ]


def _report_unsupported(model, on_unsupported):
    skipped = unsupported_layers(model)
    if skipped and on_unsupported != "ignore":
        listing = ", ".join(f"{layer.path} ({type(layer).__name__})" for layer in skipped)
        message = f"model_norms: no operator norm for these layers with weights: {listing}."
        if on_unsupported == "raise":
            raise ValueError(message)
        warnings.warn(message, stacklevel=3)


def _stacked_norms(model, ord, fold_padding, spectral_method) -> tf.Tensor:
    """Every supported layer's norm, stacked in layer order (float64 if any layer is float64)."""
    values = [
        layer_norm(layer, ord, fold_padding=fold_padding, spectral_method=spectral_method)
        for layer in _supported(model)
    ]
    dtype = tf.float64 if any(v.dtype == tf.float64 for v in values) else tf.float32
    return tf.stack([tf.cast(v, dtype) for v in values]) if values else tf.zeros((0,), dtype)


def _supported(model):
    return [layer for layer in _keras.flatten_layers(model) if is_supported(layer)]


# model -> {(ord, fold_padding, spectral_method): (paths, compiled function)}; weak so a dropped
# model frees its functions (they hold a weak reference to it, not the model).
_COMPILED = weakref.WeakKeyDictionary()


def compiled_model_norms(
    model, ord, *, fold_padding=True, spectral_method="auto"
) -> tuple[list[str], tf.types.experimental.GenericFunction]:
    """The compiled function returning every supported layer's norm as one vector.

    One ``tf.function`` per ``(model, ord, fold_padding, spectral_method)``,
    traced on first use and cached (weakly keyed on the model): a call reads every kernel once
    and runs no per-layer Python or eager dispatch, and the caller reads all
    norms back with a single ``.numpy()``. It is a graph, not XLA: on CPU,
    TensorFlow's multi-threaded reductions read the weights several times
    faster than XLA's (benchmarks/norm_speed.py); inside a caller's
    ``tf.function(jit_compile=True)`` it compiles with the caller.

    Args:
        model: a built ``keras.Model``.
        ord: ``1``, ``2`` or ``numpy.inf``.
        fold_padding: see :func:`conv_geometry`.
        spectral_method: see :func:`layer_norm`.

    Returns:
        ``(paths, function)``: the ``layer.path`` of every supported layer and
        a no-argument function returning their norms as a vector in that order
        (float32, or float64 for float64 models). Differentiable in the weights.

    Example:
        >>> import keras, numpy as np
        >>> model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="conv"),
        ...                           keras.layers.Flatten(), keras.layers.Dense(2, name="fc")], name="net")
        >>> paths, norms_now = compiled_model_norms(model, np.inf)
        >>> paths, norms_now().numpy().shape
        (['net/conv', 'net/fc'], (2,))
    """
    ord = validate_ord(ord)
    spectral_method = _args.choice(spectral_method, "spectral_method", SPECTRAL_METHODS)
    if not model.built:
        raise ValueError(f"Model {model.name!r} is not built: call it on an input first.")
    per_model = _COMPILED.setdefault(model, {})
    key = (ord, bool(fold_padding), spectral_method)
    if key not in per_model:
        # A partial, not a lambda: TensorFlow counts traces per code object, so one lambda
        # for every model would warn of "excessive retracing" after five models.
        function = tf.function(
            functools.partial(_norms_of_referenced, weakref.ref(model), ord, fold_padding, spectral_method),
            autograph=False,
        )
        per_model[key] = ([layer.path for layer in _supported(model)], function)
    return per_model[key]


def _norms_of_referenced(model_ref, ord, fold_padding, spectral_method):
    return _stacked_norms(model_ref(), ord, fold_padding, spectral_method)


def model_norms(
    model, ord, *, on_unsupported="warn", fold_padding=True, spectral_method="auto"
) -> Dict[str, tf.Tensor]:
    """Operator norms of every supported layer of a built model.

    Called eagerly, all norms come from one compiled function per model and
    ``ord`` (:func:`compiled_model_norms`); inside a ``tf.function`` they are
    traced into the caller's graph.

    Args:
        model: a built ``keras.Model`` (nested models are traversed).
        ord: ``1``, ``2`` or ``numpy.inf``.
        on_unsupported: what to do about layers that own weights but are not
            supported (e.g. ``Conv1D``, ``LayerNormalization``): ``"warn"``
            (default, one warning naming them), ``"raise"`` or ``"ignore"``.
        fold_padding: see :func:`conv_geometry`.
        spectral_method: see :func:`layer_norm`. With ``ord=2`` and
            ``"gram"`` every value is a certified upper bound, so their
            product bounds the Lipschitz constant (l2) of a plain chain of
            these layers with 1-Lipschitz activations (docs/norms.md#model-lipschitz-bound).

    Returns:
        A dict, in layer order, from ``layer.path`` to the norm (scalar
        tensor, differentiable in the weights).

    Example:
        >>> import keras, numpy as np
        >>> model = keras.Sequential([keras.Input((8, 8, 3)),
        ...                           keras.layers.Conv2D(4, 3, name="conv"), keras.layers.Flatten(),
        ...                           keras.layers.Dense(2, name="fc")], name="net")
        >>> list(model_norms(model, np.inf))
        ['net/conv', 'net/fc']
    """
    ord = validate_ord(ord)
    _args.choice(on_unsupported, "on_unsupported", ("warn", "raise", "ignore"))
    if not model.built:
        raise ValueError(f"Model {model.name!r} is not built: call it on an input first.")
    _report_unsupported(model, on_unsupported)
    if tf.executing_eagerly():
        paths, function = compiled_model_norms(
            model, ord, fold_padding=fold_padding, spectral_method=spectral_method
        )
        values = function()
    else:
        paths = [layer.path for layer in _supported(model)]
        values = _stacked_norms(model, ord, fold_padding, spectral_method)
    return dict(zip(paths, tf.unstack(values, num=len(paths))))
