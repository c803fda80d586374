"""Constraints that bound layer norms after every optimizer step.

* :class:`SingularValueClip`: clips the singular values of Dense kernels and
  of Conv2D operators (Sedghi et al. 2019) to ``clip_to``.
* :class:`MaxOperatorNorm`: projects a Dense or Conv2D kernel so that its l1
  or l_inf operator norm is at most ``max_value``.
* :class:`MaxBatchNormNorm`: the same for BatchNormalization (on ``gamma``).
* :func:`configure_constraints`: fills in the layer geometry these need from
  a built model.

Keras applies constraints inside the optimizer's update, after the gradient
step (``variable.assign(constraint(variable))``), so they run in the compiled
train step, under ``jit_compile=True`` and under ``tf.distribute``. The maths
is in :mod:`tfnorms.norms`.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tfnorms import norms
from tfnorms.regularizers import (
    CONV_LAYERS,
    conv_layers_with,
    geometry_to_config,
    kernel_attribute,
    layer_geometry_config,
    operator_kernel,
    ords_to_config,
    reset_compiled_functions,
    validate_conv_geometry,
    validate_depthwise,
    validate_nonnegative,
    validate_ords,
)

__all__ = ["MaxBatchNormNorm", "MaxOperatorNorm", "SingularValueClip", "configure_constraints"]

_MODES = ("all", "max_group")


def _validate_mode(mode):
    if mode not in _MODES:
        raise ValueError(
            f'Invalid value for argument `mode`. Expected one of "all", "max_group". Received: mode={mode!r}'
        )
    return mode


def _check_rank(w, name):
    if w.shape.rank not in (2, 4):
        raise ValueError(
            f"{name} supports Dense kernels (rank 2) and Conv2D / DepthwiseConv2D kernels (rank 4, "
            f"layout (kh, kw, c_in, c_out) / (kh, kw, c_in, multiplier)). Received a tensor of shape {w.shape}."
        )


@keras.saving.register_keras_serializable(package="tfnorms")
class SingularValueClip(keras.constraints.Constraint):
    """Clips the singular values of a Dense kernel or Conv2D operator to ``clip_to``.

    Dense kernels: ``W -> U min(S, clip_to) V^T``. Conv2D kernels: one pass of
    Sedghi et al.'s clipping of the stride-1 circular convolution on an
    ``input_shape`` input (per-frequency clipping, then the crop back to the
    kernel's support, which can leave the norm somewhat above ``clip_to``;
    methods.md §1.7). The formulation uses the real FFT and real
    eigendecompositions (:func:`tfnorms.norms.conv2d_clip_singular_values`),
    so unlike the complex-SVD reference it runs on GPU and under
    ``jit_compile=True``. Stride and zero padding are ignored, as in the
    reference code. Applied after every step; to clip every N steps use
    :class:`tfnorms.callbacks.SingularValueClipping`.

    Args:
        clip_to: largest singular value allowed (> 0). The paper sweeps
            2.0, 1.5, 1.0, 0.5, 0.1.
        input_shape: spatial input size ``(H, W)`` of a convolution (required
            for Conv2D kernels; :func:`configure_constraints` fills it in).
        groups: the convolution's ``groups``.
        depthwise: the kernel is a ``DepthwiseConv2D`` kernel, clipped as the
            equivalent grouped convolution (one group per input channel;
            ``groups`` stays 1). :func:`configure_constraints` sets it.
        method: ``"gram"`` (real eigendecomposition of the smaller Gram
            matrix of the realified transfer matrices; default), ``"svd"``
            (real SVD) or ``"hermitian"`` (complex Hermitian eigendecomposition,
            about 2x faster on CPU; see :mod:`tfnorms.norms.clipping`).
        passes: number of clip-and-crop passes per call (alternating
            projections; the reference does 1). More passes bring the
            circular spectral norm closer to ``clip_to`` (e.g. 3x3 kernel on
            8x8: about 1.15x ``clip_to`` after 1 pass, 1.05x after 8).

    Example:
        >>> import keras, tfnorms
        >>> dense = keras.layers.Dense(10, kernel_constraint=tfnorms.SingularValueClip(1.0))
        >>> conv = keras.layers.Conv2D(
        ...     16, 3, kernel_constraint=tfnorms.SingularValueClip(1.0, input_shape=(32, 32)))
    """

    def __init__(self, clip_to=1.0, input_shape=None, groups=1, method="gram", passes=1, depthwise=False):
        self.clip_to = validate_nonnegative(clip_to, "clip_to", strict=True)
        if isinstance(passes, bool) or not isinstance(passes, (int, np.integer)) or passes < 1:
            raise ValueError(
                f"Invalid value for argument `passes`. Expected a positive int. Received: passes={passes!r}"
            )
        self.passes = int(passes)
        geom = validate_conv_geometry(input_shape, 1, "same", 1, groups)
        self.input_shape = geom["input_shape"]
        if self.input_shape is not None and None in self.input_shape:
            self.input_shape = None
        self.groups = geom["groups"]
        self.depthwise = validate_depthwise(depthwise, self.groups)
        if method not in ("gram", "svd", "hermitian"):
            raise ValueError(
                f'Invalid value for argument `method`. Expected one of "gram", "svd", "hermitian". Received: method={method!r}'
            )
        self.method = method

    def __call__(self, w):
        w = tf.convert_to_tensor(w)
        _check_rank(w, "SingularValueClip")
        kernel, geom, back = operator_kernel(w, {"groups": self.groups}, self.depthwise)
        if kernel.shape.rank == 2:
            return norms.dense_clip_singular_values(kernel, self.clip_to, self.method)
        if self.input_shape is None:
            raise ValueError(
                "SingularValueClip on a Conv2D kernel needs the layer's input size: pass "
                "`input_shape=(H, W)` or call tfnorms.constraints.configure_constraints(model)."
            )
        for _ in range(self.passes):
            kernel = norms.conv2d_clip_singular_values(
                kernel, self.clip_to, input_shape=self.input_shape, groups=geom["groups"], method=self.method
            )
        return back(kernel)

    def get_config(self):
        return {
            "clip_to": self.clip_to,
            "input_shape": None if self.input_shape is None else list(self.input_shape),
            "groups": self.groups,
            "method": self.method,
            "passes": self.passes,
            "depthwise": self.depthwise,
        }


@keras.saving.register_keras_serializable(package="tfnorms")
class MaxOperatorNorm(keras.constraints.Constraint):
    """Keeps the exact l1 or l_inf operator norm of a Dense/Conv2D kernel at most ``max_value``.

    The norm is the largest l1 norm over groups of kernel entries (see
    :func:`tfnorms.norms.max_group_mask`), so a kernel satisfies the bound
    exactly when every group lies in the l1 ball of radius ``max_value``.

    * ``mode="all"`` (default): every group above the bound is projected onto
      the l1 ball (Duchi et al.), so the norm is ``<= max_value`` (to float
      rounding) after every step. For disjoint groups (Dense; convolutions on
      inputs at least as large as the kernel) this is the exact Euclidean
      projection onto the norm ball.
    * ``mode="max_group"``: only the maximal group is projected, as in
      Liang & Huang's ``project``; other groups may stay above the bound.

    Geometry arguments as in :class:`tfnorms.NormDecay` (and filled in by
    :func:`configure_constraints`); without them a Conv2D is treated as stride
    1 on a large input, whose l1 groups contain those of any stride, so the
    bound still holds (conservatively) for strided layers.

    Args:
        max_value: the bound (> 0).
        ord: ``1`` or ``numpy.inf`` (or ``"inf"``), or both as a list.
        mode: ``"all"`` or ``"max_group"``.
        input_shape: conv geometry, as in :class:`tfnorms.NormDecay`.
        strides: conv geometry.
        padding: conv geometry.
        dilation_rate: conv geometry.
        groups: conv geometry.
        depthwise: the kernel is a ``DepthwiseConv2D`` kernel (as in
            :class:`tfnorms.NormDecay`; :func:`configure_constraints` sets it).

    Example:
        >>> import keras, numpy as np, tfnorms
        >>> conv = keras.layers.Conv2D(
        ...     16, 3, kernel_constraint=tfnorms.MaxOperatorNorm(2.0, ord=np.inf))
    """

    def __init__(
        self,
        max_value,
        ord=1,
        mode="all",
        input_shape=None,
        strides=1,
        padding="same",
        dilation_rate=1,
        groups=1,
        depthwise=False,
    ):
        self.max_value = validate_nonnegative(max_value, "max_value", strict=True)
        self.ords = validate_ords(ord)
        self.mode = _validate_mode(mode)
        self.geometry = validate_conv_geometry(input_shape, strides, padding, dilation_rate, groups)
        self.depthwise = validate_depthwise(depthwise, self.geometry["groups"])

    def __call__(self, w):
        w = tf.convert_to_tensor(w)
        _check_rank(w, "MaxOperatorNorm")
        project = norms.project_operator_norm if self.mode == "all" else norms.project_max_group
        kernel, geom, back = operator_kernel(w, self.geometry, self.depthwise)
        for ord in self.ords:
            kernel = project(kernel, self.max_value, ord, **geom)
        return back(kernel)

    def with_geometry(self, **geometry_args):
        config = self.get_config()
        config.update(geometry_args)
        return type(self).from_config(config)

    def get_config(self):
        return {
            "max_value": self.max_value,
            "ord": ords_to_config(self.ords),
            "mode": self.mode,
            **geometry_to_config(self.geometry),
            "depthwise": self.depthwise,
        }


@keras.saving.register_keras_serializable(package="tfnorms")
class MaxBatchNormNorm(keras.constraints.Constraint):
    """Keeps the norm ``max_c |gamma_c| / sqrt(moving_var_c + eps)`` of a BatchNormalization at most ``max_value``.

    Use it as ``gamma_constraint``. The norm depends on the layer's moving
    variance and epsilon, which a constraint does not see: bind it to its
    layer with :func:`configure_constraints` (or :meth:`bind`) after the model
    is built. Liang & Huang project BN norms to 5 every step
    (``mode="max_group"``: only the maximal channel is set to the bound);
    ``mode="all"`` (default) clips every channel, so the bound holds after
    every step. Keras applies it after the optimizer step (the reference code
    projects before the step).

    Args:
        max_value: the bound (> 0); the paper uses 5.
        mode: ``"all"`` or ``"max_group"``.

    Example:
        >>> import keras, tfnorms
        >>> bn = keras.layers.BatchNormalization(gamma_constraint=tfnorms.MaxBatchNormNorm(5.0))
    """

    def __init__(self, max_value=5.0, mode="all"):
        self.max_value = validate_nonnegative(max_value, "max_value", strict=True)
        self.mode = _validate_mode(mode)
        self._moving_variance = None
        self._epsilon = None

    def bind(self, layer):
        """Returns a copy reading ``moving_variance`` and ``epsilon`` from ``layer``."""
        if not isinstance(layer, keras.layers.BatchNormalization) or not layer.built or not layer.scale:
            raise ValueError(
                "Invalid value for argument `layer`. Expected a built BatchNormalization "
                f"layer with scale=True. Received: layer={layer!r}"
            )
        bound = type(self).from_config(self.get_config())
        bound._moving_variance = layer.moving_variance
        bound._epsilon = float(layer.epsilon)
        return bound

    @property
    def is_bound(self):
        return self._moving_variance is not None

    def __call__(self, w):
        if not self.is_bound:
            raise ValueError(
                "MaxBatchNormNorm is not bound to its BatchNormalization layer: call "
                "tfnorms.constraints.configure_constraints(model) after building the model "
                "(also after loading a saved model)."
            )
        w = tf.convert_to_tensor(w)
        variance = tf.cast(tf.convert_to_tensor(self._moving_variance), w.dtype)
        return norms.batch_norm_project_gamma(w, variance, self._epsilon, self.max_value, self.mode)

    def get_config(self):
        return {"max_value": self.max_value, "mode": self.mode}


def configure_constraints(model):
    """Fills in the layer information that the constraints of a built model need.

    * :class:`SingularValueClip` on a Conv2D or DepthwiseConv2D kernel: the
      input size (read through :func:`tfnorms.norms.conv_geometry`),
      ``groups`` and ``depthwise``.
    * :class:`MaxOperatorNorm` on a Conv2D or DepthwiseConv2D kernel:
      strides, padding, dilation, groups, ``depthwise`` and input size.
    * :class:`MaxBatchNormNorm` on a BatchNormalization ``gamma``: binds it to
      the layer's moving variance and epsilon.

    Each layer gets its own configured copy (shared instances are safe); the
    geometry is part of the config and survives ``model.save`` (the
    BatchNorm binding does not: call this again after loading). Compiled
    train functions are reset.

    Args:
        model: a built ``keras.Model``.

    Returns:
        A dict from weight path to the configured constraint.

    Raises:
        ValueError: for a constraint on a weight it does not support, or a
            Conv2D whose input size is unknown (SingularValueClip).
    """
    if not model.built:
        raise ValueError(f"Model {model.name!r} is not built: call it on an input first.")
    ours = (SingularValueClip, MaxOperatorNorm, MaxBatchNormNorm)
    configured = {}
    for layer, variable, constraint in conv_layers_with(
        model, lambda v: v.constraint if isinstance(v.constraint, ours) else None
    ):
        where = f"weight {variable.path!r} of layer {layer.name!r} ({type(layer).__name__})"
        if isinstance(constraint, MaxBatchNormNorm):
            if not (isinstance(layer, keras.layers.BatchNormalization) and variable is layer.gamma):
                raise ValueError(f"MaxBatchNormNorm on {where}: it constrains BatchNormalization gamma.")
            new = constraint.bind(layer)
            layer.gamma_constraint = new
        elif isinstance(layer, keras.layers.Dense) and variable is layer.kernel:
            new = constraint
        elif isinstance(layer, CONV_LAYERS) and variable is layer.kernel:
            if isinstance(constraint, SingularValueClip):
                geometry = layer_geometry_config(layer, with_padding=False)
                if geometry["input_shape"] is None:
                    raise ValueError(f"SingularValueClip on {where}: the layer's input size is unknown.")
                if max(layer.dilation_rate) > 1:
                    raise ValueError(f"SingularValueClip on {where}: dilated convolutions are not supported.")
                config = constraint.get_config()
                config.update(geometry)
                new = SingularValueClip.from_config(config)
            else:
                new = constraint.with_geometry(**layer_geometry_config(layer))
            setattr(layer, kernel_attribute(layer, "constraint"), new)
        else:
            raise ValueError(
                f"{type(constraint).__name__} on {where}: supported are Conv2D, DepthwiseConv2D and Dense kernels."
            )
        variable.constraint = new
        configured[variable.path] = new
    reset_compiled_functions(model)
    return configured
