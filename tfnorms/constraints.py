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

import warnings

import keras
import tensorflow as tf

from tfnorms import _args, _keras, norms

__all__ = ["MaxBatchNormNorm", "MaxOperatorNorm", "SingularValueClip", "configure_constraints"]

_MODES = ("all", "max_group")


def _validate_mode(mode):
    return _args.choice(mode, "mode", _MODES)


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
    docs/theory.md#svc-crop). The formulation uses the real FFT and real
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
        self.clip_to = _args.positive(clip_to, "clip_to")
        self.passes = _args.positive_int(passes, "passes")
        geom = _keras.validate_conv_geometry(input_shape, 1, "same", 1, groups)
        self.input_shape = geom["input_shape"]
        if self.input_shape is not None and None in self.input_shape:
            self.input_shape = None
        self.groups = geom["groups"]
        self.depthwise = _keras.validate_depthwise(depthwise, self.groups)
        self.method = _args.choice(method, "method", norms.SVC_METHODS)

    def bind_to(self, layer, variable):
        """This constraint with ``layer``'s input size, groups and depthwise switch (itself if unchanged)."""
        _keras.require_kernel(self, layer, variable)
        if isinstance(layer, keras.layers.Dense):
            return self
        where = _keras.describe(layer, variable)
        geometry = _keras.layer_geometry_config(layer, with_padding=False)
        if geometry["input_shape"] is None:
            raise ValueError(f"SingularValueClip on {where}: the layer's input size is unknown.")
        if max(layer.dilation_rate) > 1:
            raise ValueError(f"SingularValueClip on {where}: dilated convolutions are not supported.")
        config = {**self.get_config(), **geometry}
        return self if config == self.get_config() else SingularValueClip.from_config(config)

    def __call__(self, w):
        w = tf.convert_to_tensor(w)
        _check_rank(w, "SingularValueClip")
        kernel, geom, back = _keras.operator_kernel(w, {"groups": self.groups}, self.depthwise)
        if kernel.shape.rank == 2:
            return norms.dense_clip_singular_values(kernel, self.clip_to, self.method)
        if self.input_shape is None:
            raise ValueError(
                "SingularValueClip on a Conv2D kernel needs the layer's input size: call "
                "tfnorms.bind(model) once the model is built, or pass `input_shape=(H, W)`."
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
class MaxOperatorNorm(_keras.LayerGeometry, keras.constraints.Constraint):
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

    Geometry arguments as in :class:`tfnorms.NormDecay`, filled in by
    ``tfnorms.bind(model)``. Unbound on a conv kernel, it warns once and
    treats the kernel as a stride-1 Conv2D on a large input, whose l1 groups
    contain those of any stride (the bound still holds, conservatively, for
    strided Conv2D layers; for a DepthwiseConv2D kernel it over-projects).

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

    def __init__(self, max_value, ord=1, mode="all", input_shape=None, strides=None, padding=None,
                 dilation_rate=None, groups=None, depthwise=None):
        self.max_value = _args.positive(max_value, "max_value")
        self.ords = _args.ords(ord)
        self.mode = _validate_mode(mode)
        self._init_geometry(input_shape, strides, padding, dilation_rate, groups, depthwise)

    def __call__(self, w):
        _check_rank(tf.convert_to_tensor(w), "MaxOperatorNorm")
        project = norms.project_operator_norm if self.mode == "all" else norms.project_max_group
        kernel, geom, back = self.operator(w)
        for ord in self.ords:
            kernel = project(kernel, self.max_value, ord, **geom)
        return back(kernel)

    def get_config(self):
        return {
            "max_value": self.max_value,
            "ord": _args.ords_to_config(self.ords),
            "mode": self.mode,
            **self._geometry_config(),
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
        self.max_value = _args.positive(max_value, "max_value")
        self.mode = _validate_mode(mode)
        self._moving_variance = None
        self._epsilon = None

    def bind_to(self, layer, variable):
        """This constraint bound to ``layer`` (itself if already bound to it); see ``tfnorms.bind``."""
        if not (isinstance(layer, keras.layers.BatchNormalization) and variable is getattr(layer, "gamma", None)):
            raise ValueError(
                f"MaxBatchNormNorm on {_keras.describe(layer, variable)}: it constrains BatchNormalization gamma."
            )
        if self._moving_variance is layer.moving_variance and self._epsilon == float(layer.epsilon):
            return self
        return self.bind(layer)

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
                "tfnorms.bind(model) (which replaces configure_constraints) once the model is built or "
                "loaded; AdversarialTrainer and the tfnorms callbacks do it for you."
            )
        w = tf.convert_to_tensor(w)
        variance = tf.cast(tf.convert_to_tensor(self._moving_variance), w.dtype)
        return norms.batch_norm_project_gamma(w, variance, self._epsilon, self.max_value, self.mode)

    def get_config(self):
        return {"max_value": self.max_value, "mode": self.mode}


def configure_constraints(model):
    """Deprecated: ``tfnorms.bind(model)`` binds every regularizer and constraint.

    Returns:
        ``{weight path: constraint}`` for every weight with a tfnorms constraint.
    """
    warnings.warn("configure_constraints is deprecated: use tfnorms.bind(model).", DeprecationWarning, stacklevel=2)
    return _keras.bind(model)["constraints"]
