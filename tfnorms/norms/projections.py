"""Maximal groups of a kernel and projections that bound its l1 / l_inf norm.

An exact l1 or l_inf operator norm is the largest absolute sum over a group of
kernel entries (:func:`~tfnorms.norms.conv2d_group_sums`): for ``ord=1`` a
group is one input channel times one maximal set of kernel positions (all
output channels of its channel group), for ``ord=inf`` one output filter
times one maximal set of positions. The sub-gradient of the norm is
``sign(kernel)`` on the argmax group and zero elsewhere, and a kernel has norm
at most ``c`` exactly when every group lies in the l1 ball of radius ``c``.

* :func:`max_group_mask`: 0/1 tensor of the kernel's shape marking the
  argmax group (what norm decay pushes down).
* :func:`project_l1_ball`: Euclidean projection onto the l1 ball (Duchi et
  al. 2008), batched over the last axis.
* :func:`project_max_group`: the paper's projection of the argmax group only.
* :func:`project_operator_norm`: projection of every group exceeding the
  bound, so that the operator norm is at most the bound afterwards.
* :func:`batch_norm_project_gamma`: the same for BatchNormalization.

Kernels are in Keras layout: Conv2D ``(kh, kw, c_in // groups, c_out)``,
Dense ``(in, out)``.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfnorms import _args
from tfnorms.norms import geometry
from tfnorms.norms.operator_norms import (
    _as_float_tensor,
    _check_kernel,
    validate_conv_args,
    conv2d_group_sums,
)

_MODES = ("all", "max_group")


def as_scalar(value, dtype) -> tf.Tensor:
    """``value`` as a scalar of ``dtype`` (a Python float is not rounded to float32 first)."""
    if isinstance(value, (tf.Tensor, tf.Variable)):
        return tf.cast(value, dtype)
    return tf.constant(value, dtype)


def _check_ord(ord):
    return _args.single_ord(ord, "ord", (1, np.inf))


def _check_radius(radius, name="max_value"):
    if isinstance(radius, (tf.Tensor, tf.Variable)):
        return radius
    return _args.nonnegative(radius, name)


def project_l1_ball(x, radius) -> tf.Tensor:
    """Projects every vector along the last axis of ``x`` onto the l1 ball.

    Euclidean projection onto ``{y : sum |y| <= radius}`` by sorting (Duchi et
    al., ICML 2008): ``y = sign(x) * max(|x| - theta, 0)`` with the threshold
    ``theta >= 0`` chosen so that ``sum |y| = radius``. Vectors already inside
    the ball are returned unchanged. Entries only shrink in magnitude and keep
    their sign.

    Args:
        x: tensor of rank >= 1; the last axis holds the vectors.
        radius: ball radius ``>= 0`` (float or scalar tensor).

    Returns:
        A tensor like ``x``.

    Example:
        >>> import numpy as np
        >>> project_l1_ball(np.array([0.5, -1.5, 2.0, 0.1]), 2.0).numpy()
        array([ 0.  , -0.75,  1.25,  0.  ])
    """
    x = _as_float_tensor(x, "x")
    radius = as_scalar(_check_radius(radius, "radius"), x.dtype)
    magnitude = tf.abs(x)
    ranked = tf.sort(magnitude, axis=-1, direction="DESCENDING")
    cumulative = tf.cumsum(ranked, axis=-1)
    count = tf.cast(tf.range(1, tf.shape(x)[-1] + 1), x.dtype)
    # rho = number of entries that stay non-zero (the largest index with
    # u_rho > (cumsum_rho - radius) / rho); at least one.
    active = ranked * count > cumulative - radius
    rho = tf.reduce_max(tf.where(active, count, tf.zeros_like(count)), axis=-1, keepdims=True)
    rho = tf.maximum(rho, 1.0)
    total = tf.gather(cumulative, tf.cast(rho, tf.int32) - 1, axis=-1, batch_dims=cumulative.shape.rank - 1)
    theta = tf.maximum((total - radius) / rho, 0.0)
    projected = tf.sign(x) * tf.nn.relu(magnitude - theta)
    inside = tf.reduce_sum(magnitude, axis=-1, keepdims=True) <= radius
    return tf.where(inside, x, projected)


def _one_hot_mask(index, depth, dtype):
    return tf.one_hot(index, depth, dtype=dtype)


def _conv_mask_components(kernel, ord, input_shape, strides, padding, dilation_rate, groups):
    """Group sums and the static per-axis position masks they were built from."""
    kernel, strides, dilation_rate, pads, shape, groups = validate_conv_args(
        kernel, input_shape, strides, padding, dilation_rate, groups
    )
    make = geometry.column_masks if ord == 1 else geometry.row_masks
    masks = [
        make(n, k, s, d, p)
        for n, k, s, d, p in zip(shape, kernel.shape[:2], strides, dilation_rate, pads)
    ]
    sums = conv2d_group_sums(
        kernel, ord, input_shape=input_shape, strides=strides, padding=padding,
        dilation_rate=dilation_rate, groups=groups,
    )
    return kernel, groups, masks, sums


def _conv_group_mask(kernel, ord, groups, mask_h, mask_w, flat_index, sums_shape):
    """0/1 kernel-shaped mask of group ``flat_index`` of a (A, B, channels) sums tensor."""
    kh, kw, c_in_g, c_out = kernel.shape
    dtype = kernel.dtype
    num_b, channels = sums_shape[1], sums_shape[2]
    a = flat_index // (num_b * channels)
    b = (flat_index // channels) % num_b
    ch = flat_index % channels
    rows = tf.gather(tf.constant(mask_h, dtype), a)  # (kh,)
    cols = tf.gather(tf.constant(mask_w, dtype), b)  # (kw,)
    if ord == 1:
        # channel index is group-major: ch = g * c_in_g + i.
        inputs = _one_hot_mask(ch % c_in_g, c_in_g, dtype)
        outputs = tf.repeat(_one_hot_mask(ch // c_in_g, groups, dtype), c_out // groups)
    else:
        inputs = tf.ones((c_in_g,), dtype)
        outputs = _one_hot_mask(ch, c_out, dtype)
    return tf.einsum("r,c,i,j->rcij", rows, cols, inputs, outputs)


def max_group_mask(
    kernel, ord, *, input_shape=None, strides=1, padding="same", dilation_rate=1, groups=1
) -> tf.Tensor:
    """0/1 mask (kernel's shape and dtype) of the group attaining the operator norm.

    ``sign(kernel) * max_group_mask(kernel, ord, ...)`` is the sub-gradient of
    the l1 (``ord=1``) or l_inf (``ord=numpy.inf``) operator norm. Ties go to
    the first group in the order of :func:`~tfnorms.norms.conv2d_group_sums`.

    Args:
        kernel: Dense ``(in, out)`` or Conv2D ``(kh, kw, c_in // groups, c_out)``.
        ord: ``1`` or ``numpy.inf``.
        input_shape, strides, padding, dilation_rate, groups: the convolution's
            geometry as in :func:`~tfnorms.norms.conv2d_l1_norm` (ignored for
            Dense kernels).

    Returns:
        A tensor of the kernel's shape: for a Dense kernel one row (``ord=1``)
        or column (``ord=inf``); for a convolution one input channel times one
        set of kernel positions (all output channels of its group) for
        ``ord=1``, or one output filter times one set of positions for
        ``ord=inf``.

    Example:
        >>> import numpy as np
        >>> max_group_mask(np.array([[1., -2.], [3., 0.5]]), 1).numpy()
        array([[0., 0.],
               [1., 1.]])
    """
    ord = _check_ord(ord)
    kernel = _as_float_tensor(kernel, "kernel")
    if kernel.shape.rank == 2:
        kernel = _check_kernel(kernel, 2)
        axis = 1 if ord == 1 else 0
        sums = tf.reduce_sum(tf.abs(kernel), axis=axis)
        pick = tf.one_hot(tf.argmax(sums), kernel.shape[1 - axis], dtype=kernel.dtype)
        return pick[:, None] * tf.ones_like(kernel) if ord == 1 else tf.ones_like(kernel) * pick[None, :]
    kernel, groups, (mask_h, mask_w), sums = _conv_mask_components(
        kernel, ord, input_shape, strides, padding, dilation_rate, groups
    )
    flat_index = tf.argmax(tf.reshape(sums, [-1]), output_type=tf.int32)
    return _conv_group_mask(kernel, ord, groups, mask_h, mask_w, flat_index, sums.shape)


def project_max_group(
    kernel, max_value, ord, *, input_shape=None, strides=1, padding="same", dilation_rate=1, groups=1
) -> tf.Tensor:
    """Projects only the argmax group onto the l1 ball of radius ``max_value``.

    This is the projection of Liang & Huang's code (docs/theory.md#norm-projections): one call
    lowers the norm to ``max_value`` only if no other group exceeds it; other
    groups above the bound are left alone. Arguments as in
    :func:`max_group_mask`.

    Example:
        >>> import numpy as np
        >>> project_max_group(np.array([[0.5, -1.5, 2.0, 0.1]]), 2.0, 1).numpy()
        array([[ 0.  , -0.75,  1.25,  0.  ]])
    """
    max_value = _check_radius(max_value)
    kernel = _as_float_tensor(kernel, "kernel")
    mask = max_group_mask(
        kernel, ord, input_shape=input_shape, strides=strides, padding=padding,
        dilation_rate=dilation_rate, groups=groups,
    )
    # Zeros outside the group do not change Duchi's threshold (theta > 0).
    projected = tf.reshape(project_l1_ball(tf.reshape(kernel * mask, [-1]), max_value), tf.shape(kernel))
    return kernel * (1.0 - mask) + projected * mask


def _conv_group_vectors(kernel, ord, groups):
    """Kernel -> (num_channels, group_length) rows, one per channel; and inverse."""
    kh, kw, c_in_g, c_out = kernel.shape
    if ord == 1:
        c_out_g = c_out // groups
        split = tf.reshape(kernel, (kh, kw, c_in_g, groups, c_out_g))
        rows = tf.reshape(tf.transpose(split, (3, 2, 0, 1, 4)), (groups * c_in_g, -1))

        def back(rows):
            split = tf.reshape(rows, (groups, c_in_g, kh, kw, c_out_g))
            return tf.reshape(tf.transpose(split, (2, 3, 1, 0, 4)), (kh, kw, c_in_g, c_out))

    else:
        rows = tf.reshape(tf.transpose(kernel, (3, 0, 1, 2)), (c_out, -1))

        def back(rows):
            return tf.transpose(tf.reshape(rows, (c_out, kh, kw, c_in_g)), (1, 2, 3, 0))

    return rows, back


def project_operator_norm(
    kernel, max_value, ord, *, input_shape=None, strides=1, padding="same", dilation_rate=1, groups=1
) -> tf.Tensor:
    """Projects every group whose absolute sum exceeds ``max_value`` onto the l1 ball.

    Afterwards the l1 (``ord=1``) or l_inf (``ord=inf``) operator norm is at
    most ``max_value`` (up to float rounding). When the groups are disjoint
    (Dense kernels, and convolutions on inputs at least as large as the
    kernel's reach) this is the Euclidean projection onto the set of kernels
    with norm ``<= max_value``. On small inputs, groups of kernel positions can
    overlap; they are then projected one set of positions after another, which
    only shrinks magnitudes and so keeps earlier groups within the bound: the
    result is feasible but not always the nearest feasible kernel.

    Arguments as in :func:`max_group_mask`.

    Example:
        >>> import numpy as np
        >>> kernel = np.array([[3.0, -1.0], [0.5, 0.5]])
        >>> np.abs(project_operator_norm(kernel, 2.0, 1).numpy()).sum(axis=1)
        array([2., 1.])
    """
    ord = _check_ord(ord)
    max_value = _check_radius(max_value)
    kernel = _as_float_tensor(kernel, "kernel")
    if kernel.shape.rank == 2:
        kernel = _check_kernel(kernel, 2)
        if ord == 1:
            return project_l1_ball(kernel, max_value)
        return tf.transpose(project_l1_ball(tf.transpose(kernel), max_value))
    kernel, groups, (mask_h, mask_w), _ = _conv_mask_components(
        kernel, ord, input_shape, strides, padding, dilation_rate, groups
    )
    for rows_h in mask_h:
        for rows_w in mask_w:
            positions = tf.constant(np.outer(rows_h, rows_w)[:, :, None, None], kernel.dtype)
            vectors, back = _conv_group_vectors(kernel * positions, ord, groups)
            projected = back(project_l1_ball(vectors, max_value))
            kernel = kernel * (1.0 - positions) + projected * positions
    return kernel


def batch_norm_project_gamma(gamma, moving_variance, epsilon, max_value, mode="all") -> tf.Tensor:
    """Rescales BatchNormalization ``gamma`` so that the layer's norm is at most ``max_value``.

    The norm of inference-mode BN is ``max_c |gamma_c| / sqrt(var_c + eps)``
    (docs/theory.md#batchnorm-norm). ``mode="all"`` clips every channel to
    ``|gamma_c| <= max_value * sqrt(var_c + eps)``; ``mode="max_group"`` sets
    only the argmax channel to the bound (``project_bn`` of Liang & Huang),
    which leaves other channels above the bound if there are any.

    Example:
        >>> batch_norm_project_gamma([3.0, -8.0, 1.0], [0.0, 3.0, 0.0], 1.0, 2.0).numpy()
        array([ 2., -4.,  1.], dtype=float32)
        >>> batch_norm_project_gamma([3.0, -8.0, 1.0], [0.0, 3.0, 0.0], 1.0, 2.0, "max_group").numpy()
        array([ 3., -4.,  1.], dtype=float32)
    """
    _args.choice(mode, "mode", _MODES)
    max_value = _check_radius(max_value)
    moving_variance = _as_float_tensor(moving_variance, "moving_variance")
    gamma = tf.cast(_as_float_tensor(gamma, "gamma"), moving_variance.dtype)
    bound = as_scalar(max_value, gamma.dtype) * tf.sqrt(moving_variance + as_scalar(float(epsilon), gamma.dtype))
    clipped = tf.sign(gamma) * tf.minimum(tf.abs(gamma), bound)
    if mode == "all":
        return clipped
    ratio = tf.abs(gamma) / bound
    pick = tf.one_hot(tf.argmax(ratio), tf.shape(gamma)[0], on_value=True, off_value=False)
    return tf.where(pick, clipped, gamma)
