"""Singular value clipping (SVC) of Dense and Conv2D kernels.

Convolutions follow Sedghi, Gupta & Long (ICLR 2019), as used by Liang & Huang
(docs/theory.md#svc): for a stride-1 convolution with circular padding on an
``n_h x n_w`` input, the operator is block-diagonalised by the 2-D DFT, with
one ``c_out x c_in`` transfer matrix ``P(u, v)`` per frequency. Clipping
every ``P(u, v)`` to singular values ``<= clip_to`` and transforming back
gives the nearest operator with spectral norm ``<= clip_to``; cropping the
result to the original ``kh x kw`` support (a second projection) makes it a
kernel again, which re-inflates the norm somewhat (less for ``n >> k``).

Two formulations of the same map:

* :func:`conv2d_clip_singular_values_reference`: full ``n_h x n_w`` complex
  FFT and complex SVD, as the reference code. TensorFlow has no GPU kernel for
  complex SVD and XLA does not compile it.
* :func:`conv2d_clip_singular_values` (default ``method="gram"``): real math
  only, so it runs on GPU and under ``jit_compile=True``:

  1. A real kernel has ``P(-u, -v) = conj P(u, v)`` and clipping commutes
     with conjugation, so the real FFT's ``n_h x (n_w // 2 + 1)`` frequencies
     suffice (``irfft2d`` restores the other half).
  2. Each complex ``M = A + iB`` is replaced by its realification
     ``R = [[A, -B], [B, A]]``. Realification is a homomorphism of
     ``*``-algebras (``R(MN) = R(M) R(N)``, ``R(M^H) = R(M)^T``), so it
     commutes with any spectral function: the clipped ``R`` is the
     realification of the clipped ``M`` (each singular value appears twice).
  3. Clipping is the spectral function ``M -> M f(M^H M)`` with
     ``f(s^2) = min(1, clip_to / s)``. ``method="gram"`` evaluates it with a
     symmetric eigendecomposition of the smaller Gram matrix ``R^T R`` or
     ``R R^T`` (cheaper than an SVD); ``method="svd"`` uses the real SVD of
     ``R``. ``method="hermitian"`` skips the realification and uses the
     complex Hermitian eigendecomposition of ``M^H M`` (half the size, about
     2x faster on CPU; it compiles under XLA on CPU, and TensorFlow registers
     complex ``SelfAdjointEigV2`` GPU kernels, unlike complex SVD).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfnorms import _args
from tfnorms import _inputs
from tfnorms.norms.operator_norms import _as_float_tensor, _check_kernel, normalize_input_shape
from tfnorms.norms.projections import as_scalar

SVC_METHODS = ("gram", "svd", "hermitian")


def _check_clip_to(clip_to):
    if isinstance(clip_to, (tf.Tensor, tf.Variable)):
        return clip_to
    return _args.positive(clip_to, "clip_to")


def _check_method(method):
    return _args.choice(method, "method", SVC_METHODS)


def clip_matrix_singular_values(matrices, clip_to, method="gram") -> tf.Tensor:
    """Clips the singular values of a batch of real matrices ``(..., m, n)`` to ``<= clip_to``.

    Returns ``U min(S, clip_to) V^T`` for ``matrices = U S V^T``.

    Example:
        >>> import numpy as np
        >>> clip_matrix_singular_values(np.diag([3.0, 0.5]), 1.0).numpy().round(6)
        array([[1. , 0. ],
               [0. , 0.5]])
    """
    matrices = tf.convert_to_tensor(matrices)
    if not matrices.dtype.is_complex:
        matrices = _as_float_tensor(matrices, "matrices")
    real_dtype = matrices.dtype.real_dtype
    clip_to = as_scalar(_check_clip_to(clip_to), real_dtype)
    method = _check_method(method)
    if method == "svd":
        s, u, v = tf.linalg.svd(matrices)
        return tf.matmul(u * tf.cast(tf.minimum(s, clip_to), matrices.dtype)[..., None, :], v, adjoint_b=True)
    rows, cols = matrices.shape[-2], matrices.shape[-1]
    left = rows < cols  # Gram of the smaller side
    gram = tf.matmul(matrices, matrices, adjoint_a=not left, adjoint_b=left)
    eigenvalues, eigenvectors = tf.linalg.eigh(gram)
    eigenvalues = tf.math.real(eigenvalues)  # TensorFlow returns them in the complex dtype
    # Only singular values above clip_to change: M f = M - M Q diag(1 - f) Q^T.
    sigma = tf.sqrt(tf.maximum(eigenvalues, 0.0))
    shrink = tf.cast(1.0 - tf.minimum(1.0, clip_to / tf.maximum(sigma, clip_to)), matrices.dtype)
    correction = tf.matmul(eigenvectors * shrink[..., None, :], eigenvectors, adjoint_b=True)
    if left:
        return matrices - tf.matmul(correction, matrices)
    return matrices - tf.matmul(matrices, correction)


def dense_clip_singular_values(kernel, clip_to, method="gram") -> tf.Tensor:
    """Clips the singular values of a Dense kernel ``(in, out)`` to ``<= clip_to``.

    Raises ``ValueError`` for a kernel with NaN or Inf entries (eagerly; inside
    a ``tf.function`` a ``tf.debugging`` assertion, dropped under XLA).

    Example:
        >>> import numpy as np
        >>> dense_clip_singular_values(np.diag([3.0, -0.5]), 1.0).numpy().round(6)
        array([[ 1. ,  0. ],
               [ 0. , -0.5]])
    """
    kernel = _inputs.check_finite(_check_kernel(kernel, 2), "kernel")
    return clip_matrix_singular_values(kernel, clip_to, method)


def _check_conv(kernel, input_shape, groups):
    kernel = _check_kernel(kernel, 4)
    shape = normalize_input_shape(input_shape)
    if None in shape:
        raise ValueError(
            "Invalid value for argument `input_shape`. Singular value clipping of a "
            f"convolution needs the input size (H, W). Received: input_shape={input_shape!r}"
        )
    kh, kw = kernel.shape[:2]
    if shape[0] < kh or shape[1] < kw:
        raise ValueError(
            f"Invalid value for argument `input_shape`. Expected an input at least as "
            f"large as the kernel ({kh}, {kw}). Received: input_shape={input_shape!r}"
        )
    if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 1 or kernel.shape[3] % groups:
        raise ValueError(
            "Invalid value for argument `groups`. Expected a positive int dividing "
            f"the number of output channels {kernel.shape[3]}. Received: groups={groups!r}"
        )
    return _inputs.check_finite(kernel, "kernel"), shape, int(groups)


def _to_spatial_last(kernel, shape, groups):
    """(kh, kw, c_in_g, c_out) -> zero-padded (groups, c_out_g, c_in_g, n_h, n_w)."""
    kh, kw, c_in_g, c_out = kernel.shape
    padded = tf.pad(kernel, [[0, shape[0] - kh], [0, shape[1] - kw], [0, 0], [0, 0]])
    split = tf.reshape(padded, (shape[0], shape[1], c_in_g, groups, c_out // groups))
    return tf.transpose(split, (3, 4, 2, 0, 1))


def _from_spatial_last(spatial, kernel_shape):
    kh, kw, c_in_g, c_out = kernel_shape
    cropped = spatial[..., :kh, :kw]  # (groups, c_out_g, c_in_g, kh, kw)
    return tf.reshape(tf.transpose(cropped, (3, 4, 2, 0, 1)), (kh, kw, c_in_g, c_out))


def conv2d_clip_singular_values(
    kernel, clip_to, *, input_shape, groups=1, method="gram"
) -> tf.Tensor:
    """Clips the singular values of a stride-1 circular convolution (real FFT, real math).

    One pass of Sedghi et al.'s projection: per-frequency clipping followed by
    the crop back to the kernel's support. Equal (to float rounding) to
    :func:`conv2d_clip_singular_values_reference`, but uses the half spectrum
    and real eigendecompositions (``method="gram"``) or real SVDs
    (``method="svd"``) only, so it runs on GPU and under XLA.

    Args:
        kernel: Conv2D kernel ``(kh, kw, c_in // groups, c_out)``.
        clip_to: largest singular value allowed (> 0).
        input_shape: spatial input size ``(H, W)``, at least the kernel size.
        groups: channel groups of the convolution (each group is clipped on its own).
        method: ``"gram"`` (default; real only), ``"svd"`` (real only) or
            ``"hermitian"`` (complex Hermitian eigendecomposition).

    Returns:
        The clipped kernel, same shape and dtype.

    Raises:
        ValueError: for a kernel with NaN or Inf entries (eagerly; inside a
            ``tf.function`` a ``tf.debugging`` assertion, dropped under XLA).

    Example:
        >>> import numpy as np
        >>> kernel = np.ones((3, 3, 1, 1))  # on a 3 x 3 torus: gain 9 at DC, 0 elsewhere
        >>> clipped = conv2d_clip_singular_values(kernel, 3.0, input_shape=(3, 3))
        >>> round(float(np.sum(clipped)), 4)
        3.0
    """
    kernel, shape, groups = _check_conv(kernel, input_shape, groups)
    clip_to = _check_clip_to(clip_to)
    method = _check_method(method)
    spectrum = tf.signal.rfft2d(_to_spatial_last(kernel, shape, groups))  # (g, o, i, n_h, n_f)
    matrices = tf.transpose(spectrum, (3, 4, 0, 1, 2))  # (n_h, n_f, g, o, i)
    if method == "hermitian":
        spectrum = clip_matrix_singular_values(matrices, clip_to, "gram")
    else:
        real, imag = tf.math.real(matrices), tf.math.imag(matrices)
        o, i = real.shape[-2], real.shape[-1]
        realified = tf.concat(
            [tf.concat([real, -imag], axis=-1), tf.concat([imag, real], axis=-1)], axis=-2
        )
        clipped = clip_matrix_singular_values(realified, clip_to, method)
        spectrum = tf.complex(clipped[..., :o, :i], clipped[..., o:, :i])
    spatial = tf.signal.irfft2d(tf.transpose(spectrum, (2, 3, 4, 0, 1)), fft_length=shape)
    return _from_spatial_last(tf.cast(spatial, kernel.dtype), kernel.shape)


def conv2d_clip_singular_values_reference(kernel, clip_to, *, input_shape, groups=1) -> tf.Tensor:
    """Reference SVC pass: full complex FFT, complex SVD, inverse FFT, crop.

    The formulation of Sedghi et al.'s code and of Liang & Huang's
    ``Clip_OperatorNorm``. CPU only in TensorFlow (no GPU kernel, no XLA for
    complex SVD); kept for comparison and tests. Arguments as in
    :func:`conv2d_clip_singular_values`.
    """
    kernel, shape, groups = _check_conv(kernel, input_shape, groups)
    clip_to = _check_clip_to(clip_to)
    complex_dtype = tf.complex128 if kernel.dtype == tf.float64 else tf.complex64
    spectrum = tf.signal.fft2d(tf.cast(_to_spatial_last(kernel, shape, groups), complex_dtype))
    matrices = tf.transpose(spectrum, (3, 4, 0, 1, 2))
    s, u, v = tf.linalg.svd(matrices)
    s = tf.cast(tf.minimum(s, as_scalar(clip_to, s.dtype)), complex_dtype)
    clipped = tf.matmul(u * s[..., None, :], v, adjoint_b=True)
    spatial = tf.math.real(tf.signal.ifft2d(tf.transpose(clipped, (2, 3, 4, 0, 1))))
    return _from_spatial_last(tf.cast(spatial, kernel.dtype), kernel.shape)
