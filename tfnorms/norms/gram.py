"""Certified upper bounds of spectral norms by Gram iteration (Delattre et al., ICML 2023).

For a (complex) matrix ``M`` let ``G_0 = M`` and ``G_{t+1} = G_t^* G_t``. Then
``G_t = (M^* M)^(2^(t-1))`` for ``t >= 1``, whose singular values are
``sigma_i^(2^t)``, so (docs/theory.md#gram-iteration)

    sigma_1(M) = ||G_t||_2^(1 / 2^t) <= ||G_t||_F^(1 / 2^t)
               = (sum_i sigma_i^(2^(t+1)))^(1 / 2^(t+1)) <= r^(1 / 2^(t+1)) sigma_1(M)

with ``r`` the rank: an upper bound for every ``t`` that converges to the norm
quadratically in ``t`` (the overestimate factor's exponent halves each step).

Each step normalises the iterate by its Frobenius norm and carries the scale in
log space, so nothing overflows in float32 however large ``sigma_1^(2^t)`` is.
A complex iterate is kept as its real and imaginary parts (real arithmetic only,
so it runs under XLA and on any device):
``(A + iB)^* (A + iB) = (A^T A + B^T B) + i (A^T B - B^T A)``.

Every operation is differentiable, so the bound is a differentiable function
of the matrix.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfnorms import _args


def _frobenius(real, imag):
    sum_sq = tf.reduce_sum(tf.square(real), axis=(-2, -1))
    if imag is not None:
        sum_sq += tf.reduce_sum(tf.square(imag), axis=(-2, -1))
    tiny = np.finfo(real.dtype.as_numpy_dtype).tiny
    # The floor keeps a zero matrix at bound ~0 with a zero (not NaN) gradient.
    return tf.sqrt(tf.maximum(sum_sq, tiny))


def log_gram_bound(real, imag=None, *, iterations=6) -> tf.Tensor:
    """``log`` of the Gram-iteration upper bound of the spectral norm of each matrix of a batch.

    Args:
        real: ``(..., m, n)`` real part (float32 or float64).
        imag: the imaginary part, same shape, or ``None`` for real matrices.
        iterations: number of Gram steps ``t`` (>= 1).

    Returns:
        ``(...)``: ``log ||G_t||_F^(1 / 2^t) >= log sigma_1`` per matrix, plus
        a float rounding margin of ``log(1 + 4 m eps)`` (``m`` the larger
        matrix dimension, ``eps`` the dtype's machine epsilon).

    Example:
        >>> import numpy as np
        >>> bound = float(np.exp(log_gram_bound(np.diag([3.0, 1.0]), iterations=5)))
        >>> 3.0 <= bound < 3.0 * (1 + 1e-9)
        True
    """
    iterations = _args.positive_int(iterations, "iterations")
    real = tf.convert_to_tensor(real)
    if not real.dtype.is_floating:
        real = tf.cast(real, tf.float32)
    imag = None if imag is None else tf.cast(imag, real.dtype)
    wide = real.shape[-1] > real.shape[-2]  # then start from the smaller Gram matrix M M^*
    size = max(real.shape[-1], real.shape[-2])
    # Start from M / max|M_ij| so that not even ||M||_F can overflow.
    peak = tf.reduce_max(tf.abs(real), axis=(-2, -1))
    if imag is not None:
        peak = tf.maximum(peak, tf.reduce_max(tf.abs(imag), axis=(-2, -1)))
    peak = tf.maximum(peak, np.finfo(real.dtype.as_numpy_dtype).tiny)
    real = real / peak[..., None, None]
    imag = None if imag is None else imag / peak[..., None, None]
    log_scale = tf.math.log(peak)
    norm = _frobenius(real, imag)
    real, imag = real / norm[..., None, None], (None if imag is None else imag / norm[..., None, None])
    log_scale += tf.math.log(norm)
    # M^* M = (A^T A + B^T B) + i (A^T B - B^T A); of a wide M the smaller
    # M M^* = (A A^T + B B^T) + i (B A^T - A B^T). Same nonzero spectrum.
    flags = {"transpose_b": True} if wide else {"transpose_a": True}
    gram = tf.matmul(real, real, **flags)
    if imag is not None:
        gram += tf.matmul(imag, imag, **flags)
        cross = tf.matmul(real, imag, **flags)
        imag = cross - tf.linalg.matrix_transpose(cross)
        if wide:
            imag = -imag
    # G_1 = M^* M carries scale exp(2 log_scale); log sigma_1 = log lambda_max(G_1) / 2.
    bound = log_hermitian_bound(gram, imag, iterations - 1, log_scale=2.0 * log_scale) / 2.0
    # Rounding margin: the first product sums max(m, n) terms; 4 max(m, n) eps exceeds the
    # relative rounding we observe by orders of magnitude (docs/norms.md#gram-iteration).
    return bound + rounding_margin(size, real.dtype)


def rounding_margin(terms, dtype) -> float:
    """``log(1 + 4 terms eps)``: added to every bound for the float rounding of its products.

    Example:
        >>> round(rounding_margin(256, "float32") * 1e4, 2)
        1.22
    """
    return float(np.log1p(4 * terms * np.finfo(tf.as_dtype(dtype).as_numpy_dtype).eps))


def log_hermitian_bound(real, imag=None, squarings=0, *, log_scale=0.0) -> tf.Tensor:
    """``log`` of an upper bound of the largest |eigenvalue| of Hermitian matrices ``exp(log_scale) (R + iS)``.

    ``R`` symmetric, ``S`` antisymmetric (or ``None``). ``squarings = j`` Gram
    steps of a Hermitian ``H`` are ``H^(2^j)`` (``H^* H = H^2``), and
    ``max |lambda| = ||H^(2^j)||_2^(1 / 2^j) <= ||H^(2^j)||_F^(1 / 2^j)``.

    Args:
        real: ``(..., n, n)`` symmetric real part.
        imag: antisymmetric imaginary part, or ``None``.
        squarings: ``j >= 0``.
        log_scale: ``log`` of a positive factor of every matrix (broadcast to the batch).

    Returns:
        ``(...)``: the bounds' logs, without a rounding margin.

    Example:
        >>> import numpy as np
        >>> bound = float(np.exp(log_hermitian_bound(np.diag([-3.0, 1.0]), squarings=6)))
        >>> 3.0 <= bound < 3.0 * (1 + 1e-9)
        True
    """
    real = tf.convert_to_tensor(real)
    imag = None if imag is None else tf.cast(imag, real.dtype)
    return log_bound_of(*hermitian_squarings(real, imag, log_scale, 0, squarings), squarings)


def hermitian_squarings(real, imag, log_scale, first, last):
    """Gram steps ``first .. last - 1`` of Hermitian iterates ``exp(log_scale) (R + iS)``, rescaled.

    Returns ``(real, imag, log_scale)`` after step ``last``, from which
    :func:`log_bound_of` bounds the log of the largest |eigenvalue| of the
    matrix the squarings started from. Each square
    costs two real products: with ``X = R S`` (so ``S R = -X^T``),
    ``(R + iS)^2 = ((R + S)(R - S) + X + X^T) + i (X - X^T)``.

    Example:
        >>> import numpy as np
        >>> state = hermitian_squarings(tf.constant(np.diag([-3.0, 1.0])), None, 0.0, 0, 6)
        >>> 3.0 <= float(np.exp(log_bound_of(*state, 6))) < 3.0 * (1 + 1e-9)
        True
    """
    for step in range(first, last):
        norm = _frobenius(real, imag)
        real = real / norm[..., None, None]
        log_scale += tf.math.log(norm) / 2.0**step
        if imag is None:
            real = tf.matmul(real, real)
            continue
        imag = imag / norm[..., None, None]
        cross = tf.matmul(real, imag)
        cross_t = tf.linalg.matrix_transpose(cross)
        real = tf.matmul(real + imag, real - imag) + cross + cross_t
        imag = cross - cross_t
    return real, imag, log_scale


# The same loop as one XLA cluster (also inside a caller's tf.function, and differentiable):
# TensorFlow's CPU batched products of many 256x256 matrices run about 1.8x faster under
# XLA. Each new shape compiles once (about a second), so it serves the large batches of
# the torus bound; small and one-off shapes use the plain loop.
compiled_hermitian_squarings = tf.function(hermitian_squarings, jit_compile=True, autograph=False)


def log_bound_of(real, imag, log_scale, steps):
    """``log_scale + log ||R + iS||_F / 2^steps``: the bound after ``steps`` squarings.

    Example:
        >>> import numpy as np
        >>> round(float(np.exp(log_bound_of(tf.constant(np.diag([4.0, 3.0])), None, 0.0, 0))), 6)
        5.0
    """
    return log_scale + tf.math.log(_frobenius(real, imag)) / 2.0**steps
