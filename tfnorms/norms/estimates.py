"""Cheap spectral-norm estimates of zero-padded convolutions, for monitoring.

* :func:`conv2d_power_iteration`: a fixed number of power iterations from a
  given start vector (warm start), returning the estimate and the new vector.
  The estimate ``||A v||`` is a lower bound of the spectral norm; warm-started
  from the previous call it tracks a slowly changing kernel closely.
* :func:`conv2d_spectral_norm_bound`: an upper bound by FFT. Embedding the
  ``H x W`` input into a torus of size ``(H + reach_h - 1, W + reach_w - 1)``
  makes the zero-padded convolution (any stride, any zero padding) a
  restriction of the circular one to a subset of inputs and outputs, so its
  norm is at most the circular norm, which Sedghi et al.'s FFT gives exactly.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfnorms import _args
from tfnorms.norms import spectral


def conv2d_power_iteration(
    kernel, vector, *, num_iterations=10, strides=1, padding="same", dilation_rate=1, groups=1
):
    """Runs ``num_iterations`` power iterations on ``A^T A`` of a zero-padded convolution.

    Args:
        kernel: Conv2D kernel ``(kh, kw, c_in // groups, c_out)``.
        vector: start vector of the input's shape ``(1, H, W, c_in)`` (need
            not be normalised; a zero vector is replaced by ones).
        num_iterations: number of iterations (>= 1).
        strides, padding, dilation_rate, groups: as in
            :func:`~tfnorms.norms.conv2d_spectral_norm` (zero padding only).

    Returns:
        ``(estimate, vector)``: ``||A v||`` for the final unit vector ``v``
        (a lower bound of the spectral norm) and ``v``.

    Example:
        >>> import numpy as np
        >>> sigma, v = conv2d_power_iteration(np.ones((3, 3, 1, 1)), np.ones((1, 8, 8, 1)))
        >>> 8.0 < float(sigma) <= 9.0
        True
    """
    num_iterations = _args.positive_int(num_iterations, "num_iterations")
    vector = tf.convert_to_tensor(vector)
    kernel, _, strides, dilation_rate, pads, groups = spectral._validate(
        kernel, tuple(vector.shape[1:3]), strides, padding, dilation_rate, groups
    )
    if pads[0] == "circular":
        raise ValueError(
            'Invalid value for argument `padding`. Expected zero padding ("same", '
            '"valid" or explicit pairs); use conv2d_spectral_norm for "circular".'
        )
    vector = tf.cast(vector, kernel.dtype)
    frozen = tf.stop_gradient(kernel)
    conv = dict(strides=strides, dilation_rate=dilation_rate, pads=pads, groups=groups)
    tiny = tf.constant(np.finfo(kernel.dtype.as_numpy_dtype).tiny, kernel.dtype)

    def normalise(v):
        norm = tf.norm(v)
        return tf.where(norm > 0, v / tf.maximum(norm, tiny), tf.ones_like(v) / tf.sqrt(tf.cast(tf.size(v), v.dtype)))

    def step(i, v):
        with tf.GradientTape() as tape:
            tape.watch(v)
            out = spectral._zero_padded_conv(v, frozen, **conv)
        # A^T A v is the gradient of 0.5 ||A v||^2 with respect to v.
        return i + 1, normalise(tape.gradient(out, v, output_gradients=out))

    _, v = tf.while_loop(
        lambda i, v: i < num_iterations, step, (tf.constant(0), normalise(vector)),
        maximum_iterations=num_iterations,
    )
    v = tf.stop_gradient(v)
    return tf.norm(spectral._zero_padded_conv(v, kernel, **conv)), v


def conv2d_spectral_norm_bound(kernel, *, input_shape, dilation_rate=1, groups=1) -> tf.Tensor:
    """Upper bound of the spectral norm of a zero-padded convolution, by FFT.

    Valid for every stride and every zero padding (``"same"``, ``"valid"``,
    explicit), exact for stride 1 with circular padding on the enlarged torus;
    it is usually within a few percent of the zero-padded norm for inputs
    much larger than the kernel.

    Example:
        >>> import numpy as np
        >>> float(conv2d_spectral_norm_bound(np.ones((3, 3, 1, 1)), input_shape=(8, 8)))
        9.0
    """
    shape = tuple(input_shape) if input_shape is not None else (None, None)
    kernel = tf.convert_to_tensor(kernel)
    if len(shape) != 2 or None in shape:
        raise ValueError(
            "Invalid value for argument `input_shape`. Expected the spatial input "
            f"size (H, W). Received: input_shape={input_shape!r}"
        )
    dilation = (dilation_rate, dilation_rate) if isinstance(dilation_rate, (int, np.integer)) else tuple(dilation_rate)
    torus = tuple(int(n) + (int(k) - 1) * int(d) for n, k, d in zip(shape, kernel.shape[:2], dilation))
    return spectral.conv2d_spectral_norm(
        kernel, input_shape=torus, padding="circular", dilation_rate=dilation_rate, groups=groups
    )
