"""Exact l1 and l_inf operator norms of Conv2D, Dense and BatchNorm maps.

A layer is the affine map ``x -> A x + b`` on the flattened input; these
functions return ``||A||_1`` (largest absolute column sum) and ``||A||_inf``
(largest absolute row sum) as differentiable TensorFlow scalars in the
kernel's dtype. Kernels are in Keras layout: Conv2D ``(kh, kw, c_in, c_out)``
(``c_in`` per group), Dense ``(in, out)``.

For a convolution both norms are sums of ``|kernel|`` over products of per-axis
kernel-position sets (see :mod:`tfnorms.norms.geometry` and docs/theory.md#conv-norms):

    ||conv||_1   = max_{i, a, b} sum_j  sum_{r in R_h(a), c in R_w(b)} |K[r, c, i, j]|
    ||conv||_inf = max_{j, u, v} sum_i  sum_{r in V_h(u), c in V_w(v)} |K[r, c, i, j]|

with ``i`` ranging over input and ``j`` over output channels (within one group
for grouped convolutions). The cost is one pass over the kernel plus a
contraction with a handful of 0/1 masks, independent of the input size.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfnorms import _args
from tfnorms.norms import geometry


def _as_float_tensor(x, name: str) -> tf.Tensor:
    x = tf.convert_to_tensor(x)
    if not x.dtype.is_floating:
        x = tf.cast(x, tf.float32)
    return x


def _check_kernel(kernel, rank: int, name: str = "kernel") -> tf.Tensor:
    kernel = _as_float_tensor(kernel, name)
    if kernel.shape.rank != rank:
        layout = "(kh, kw, c_in, c_out)" if rank == 4 else "(in, out)"
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected a rank-{rank} tensor "
            f"in Keras layout {layout}. Received shape {kernel.shape}."
        )
    if not kernel.shape.is_fully_defined():
        raise ValueError(f"`{name}` must have a fully defined shape. Received {kernel.shape}.")
    return kernel


def _is_size(n) -> bool:
    return n is None or (isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 1)


def normalize_input_shape(input_shape):
    """Returns ``(H, W)`` with ints or ``None`` entries, or ``(None, None)``."""
    if input_shape is None:
        return (None, None)
    if isinstance(input_shape, (tuple, list)) and len(input_shape) == 2 and all(map(_is_size, input_shape)):
        return tuple(None if n is None else int(n) for n in input_shape)
    raise ValueError(
        "Invalid value for argument `input_shape`. Expected None or the spatial "
        f"size (H, W) of the layer's input as positive ints. Received: "
        f"input_shape={input_shape!r}"
    )


def validate_conv_args(kernel, input_shape, strides, padding, dilation_rate, groups, extra_padding=()):
    """Validates the arguments shared by every conv norm; returns them normalised."""
    kernel = _check_kernel(kernel, 4)
    strides, dilation_rate = geometry.check_stride_dilation(strides, dilation_rate)
    pads = geometry.normalize_padding(padding, extra=extra_padding)
    shape = normalize_input_shape(input_shape)
    groups = _args.positive_int(groups, "groups")
    c_out = kernel.shape[3]
    if c_out % groups:
        raise ValueError(
            f"`groups`={groups} must divide the number of output channels {c_out}."
        )
    return kernel, strides, dilation_rate, pads, shape, int(groups)


def _masks(kind, kernel_hw, shape, strides, dilation_rate, pads, dtype):
    make = geometry.column_masks if kind == "column" else geometry.row_masks
    return [
        tf.constant(make(n, k, s, d, p), dtype=dtype)
        for n, k, s, d, p in zip(shape, kernel_hw, strides, dilation_rate, pads)
    ]


def conv2d_group_sums(
    kernel, ord, *, input_shape=None, strides=1, padding="same", dilation_rate=1, groups=1
) -> tf.Tensor:
    """Absolute sums of every maximal column (ord=1) or row (ord=inf) group.

    The operator norm is the maximum of the returned tensor; its argmax names
    the maximal group (the one norm decay penalises).

    Args:
        kernel: Conv2D kernel ``(kh, kw, c_in // groups, c_out)``.
        ord: ``1`` or ``numpy.inf``.
        input_shape: as in :func:`conv2d_l1_norm`.
        strides: as in :func:`conv2d_l1_norm`.
        padding: as in :func:`conv2d_l1_norm`.
        dilation_rate: as in :func:`conv2d_l1_norm`.
        groups: as in :func:`conv2d_l1_norm`.

    Returns:
        A tensor ``(num_sets_h, num_sets_w, channels)``: for ``ord=1`` the
        channels are the ``c_in`` input channels (group-major), for
        ``ord=inf`` the ``c_out`` output channels.
    """
    kernel, strides, dilation_rate, pads, shape, groups = validate_conv_args(
        kernel, input_shape, strides, padding, dilation_rate, groups
    )
    kh, kw, c_in_g, c_out = kernel.shape
    magnitude = tf.abs(kernel)
    if ord == 1:
        grouped = tf.reshape(magnitude, (kh, kw, c_in_g, groups, c_out // groups))
        per_channel = tf.reduce_sum(grouped, axis=4)  # (kh, kw, c_in_g, groups)
        per_channel = tf.reshape(
            tf.transpose(per_channel, (0, 1, 3, 2)), (kh, kw, groups * c_in_g)
        )
        kind = "column"
    elif ord == np.inf:
        per_channel = tf.reduce_sum(magnitude, axis=2)  # (kh, kw, c_out)
        kind = "row"
    else:
        raise _args.invalid("ord", "one of 1, numpy.inf", ord)
    mask_h, mask_w = _masks(kind, (kh, kw), shape, strides, dilation_rate, pads, kernel.dtype)
    return tf.einsum("ar,bc,rcx->abx", mask_h, mask_w, per_channel)


def conv2d_l1_norm(
    kernel, *, input_shape=None, strides=1, padding="same", dilation_rate=1, groups=1
) -> tf.Tensor:
    """Exact l1 operator norm (largest absolute column sum) of a 2-D convolution.

    Args:
        kernel: Conv2D kernel in Keras layout ``(kh, kw, c_in, c_out)``
            (``c_in`` per group when ``groups > 1``).
        input_shape: spatial size ``(H, W)`` of the input. With it the result
            is the exact norm of the operator on that input size, for any
            stride, dilation and padding, including inputs smaller than the
            kernel's reach. ``None`` (or ``None`` for one axis) gives the
            closed form that is exact once the input is large enough: the
            maximum over input channels and stride residue classes of kernel
            positions.
        strides: int or pair, as in ``keras.layers.Conv2D``.
        padding: ``"same"`` (TensorFlow's, asymmetric when the total padding
            is odd), ``"valid"``, or explicit zero padding
            ``((top, bottom), (left, right))``.
        dilation_rate: int or pair.
        groups: number of channel groups, as in ``keras.layers.Conv2D``.

    Returns:
        A scalar tensor in the kernel's dtype, differentiable in ``kernel``.

    Example:
        >>> import numpy as np
        >>> kernel = np.ones((3, 3, 2, 4))
        >>> float(conv2d_l1_norm(kernel, input_shape=(8, 8)))
        36.0
        >>> float(conv2d_l1_norm(kernel, input_shape=(8, 8), strides=2))
        16.0
    """
    return tf.reduce_max(
        conv2d_group_sums(
            kernel,
            1,
            input_shape=input_shape,
            strides=strides,
            padding=padding,
            dilation_rate=dilation_rate,
            groups=groups,
        )
    )


def conv2d_linf_norm(
    kernel, *, input_shape=None, strides=1, padding="same", dilation_rate=1, groups=1
) -> tf.Tensor:
    """Exact l_inf operator norm (largest absolute row sum) of a 2-D convolution.

    Arguments as in :func:`conv2d_l1_norm`. With ``input_shape=None`` the result
    is the full-filter sum ``max_j sum_{i,r,c} |K[r, c, i, j]|``, exact whenever
    one output window lies entirely inside the input; with ``input_shape``
    given it is exact for every input size (small inputs cut every window).

    Example:
        >>> import numpy as np
        >>> kernel = np.ones((3, 3, 2, 4))
        >>> float(conv2d_linf_norm(kernel))
        18.0
        >>> float(conv2d_linf_norm(kernel, input_shape=(2, 2)))
        8.0
    """
    return tf.reduce_max(
        conv2d_group_sums(
            kernel,
            np.inf,
            input_shape=input_shape,
            strides=strides,
            padding=padding,
            dilation_rate=dilation_rate,
            groups=groups,
        )
    )


def depthwise_as_grouped(kernel) -> tuple[tf.Tensor, int]:
    """The grouped Conv2D form of a DepthwiseConv2D kernel.

    A depthwise kernel ``(kh, kw, c_in, multiplier)`` is the Conv2D kernel
    ``(kh, kw, 1, c_in * multiplier)`` with ``groups=c_in``: output channel
    ``c * multiplier + m`` reads input channel ``c`` only, in the order Keras'
    ``DepthwiseConv2D`` produces. Every Conv2D function of this module then
    applies with that ``groups``; :func:`grouped_as_depthwise` maps a kernel (or
    a mask or a projected kernel) back.

    Args:
        kernel: a rank-4 depthwise kernel ``(kh, kw, c_in, multiplier)``.

    Returns:
        ``(grouped_kernel, groups)``.

    Example:
        >>> import numpy as np
        >>> grouped, groups = depthwise_as_grouped(np.ones((3, 3, 4, 2), "float32"))
        >>> tuple(grouped.shape), groups
        ((3, 3, 1, 8), 4)
    """
    kernel = _check_kernel(kernel, 4)
    kh, kw, c_in, multiplier = kernel.shape
    return tf.reshape(kernel, (kh, kw, 1, c_in * multiplier)), int(c_in)


def grouped_as_depthwise(grouped, depthwise_shape) -> tf.Tensor:
    """Inverse of :func:`depthwise_as_grouped`: a ``(kh, kw, 1, c_in * m)`` tensor back to ``depthwise_shape``.

    Example:
        >>> import numpy as np
        >>> kernel = np.arange(24, dtype="float32").reshape(2, 2, 3, 2)
        >>> grouped, _ = depthwise_as_grouped(kernel)
        >>> bool(np.array_equal(grouped_as_depthwise(grouped, kernel.shape), kernel))
        True
    """
    return tf.reshape(grouped, tuple(depthwise_shape))


def dense_l1_norm(kernel) -> tf.Tensor:
    """Exact l1 operator norm of a Dense layer ``y = x @ kernel``.

    The operator matrix is ``kernel.T``, so its largest absolute column sum is
    the largest absolute **row** sum of the Keras kernel ``(in, out)``.

    Example:
        >>> import numpy as np
        >>> torch_weight = np.array([[1., -2., 3.], [-4., 5., -6.]])
        >>> float(dense_l1_norm(torch_weight.T))
        9.0
    """
    kernel = _check_kernel(kernel, 2)
    return tf.reduce_max(tf.reduce_sum(tf.abs(kernel), axis=1))


def dense_linf_norm(kernel) -> tf.Tensor:
    """Exact l_inf operator norm of a Dense layer (largest absolute kernel column sum).

    Example:
        >>> import numpy as np
        >>> torch_weight = np.array([[1., -2., 3.], [-4., 5., -6.]])
        >>> float(dense_linf_norm(torch_weight.T))
        15.0
    """
    kernel = _check_kernel(kernel, 2)
    return tf.reduce_max(tf.reduce_sum(tf.abs(kernel), axis=0))


def batch_norm_norm(gamma, moving_variance, epsilon) -> tf.Tensor:
    """Operator norm of an inference-mode BatchNormalization map.

    At inference BN is the diagonal map ``x_c -> gamma_c x_c / sqrt(var_c + eps)``
    (plus a shift), so its l1, l2 and l_inf norms all equal
    ``max_c |gamma_c| / sqrt(moving_variance_c + epsilon)`` (docs/theory.md#batchnorm-norm).

    Args:
        gamma: scale per channel, or ``None`` for a layer built with ``scale=False``.
        moving_variance: moving variance per channel.
        epsilon: the layer's epsilon (Keras default 1e-3; PyTorch 1e-5).

    Example:
        >>> float(batch_norm_norm([1.0, -3.0], [1.0, 3.0], 1.0))
        1.5
    """
    moving_variance = _as_float_tensor(moving_variance, "moving_variance")
    if gamma is None:
        gamma = tf.ones_like(moving_variance)
    gamma = tf.cast(_as_float_tensor(gamma, "gamma"), moving_variance.dtype)
    _args.nonnegative(float(epsilon), "epsilon")
    epsilon = tf.cast(epsilon, moving_variance.dtype)
    return tf.reduce_max(tf.abs(gamma) * tf.math.rsqrt(moving_variance + epsilon))
