"""Spectral (l2) operator norms of Conv2D and Dense maps.

* Circular padding, stride 1: exact by the characterisation of Sedghi et al.
  (ICLR 2019, Thm. 6): the singular values of the convolution on an ``n_h x
  n_w`` torus are the union over frequencies ``(u, v)`` of the singular values
  of the ``c_out x c_in`` matrices ``P(u, v) = DFT2(kernel folded onto the
  torus)[u, v]``. We use the real FFT (``P(-u, -v) = conj P(u, v)`` has the same
  singular values, so half the frequencies suffice) and the realification
  ``[[Re, -Im], [Im, Re]]`` of each ``P`` (same singular values, each twice),
  whose largest eigenvalue of the Gram matrix is real-valued math: it runs on
  GPU and under XLA and is differentiable.
* Zero padding (``"same"``, ``"valid"``, explicit), any stride and dilation:
  block power (subspace) iteration on ``A^T A`` with Rayleigh-Ritz, ``A`` the
  real convolution and ``A^T`` its input gradient (a transposed convolution).
  A block of ``b`` vectors converges at the rate ``(sigma_{b+1} / sigma_1)**2``
  instead of single-vector power iteration's ``(sigma_2 / sigma_1)**2``, which
  stalls when the two largest singular values nearly coincide.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfnorms import _args, _inputs
from tfnorms.norms import geometry
from tfnorms.norms.gram import (
    compiled_hermitian_squarings,
    log_bound_of,
    log_gram_bound,
    rounding_margin,
)
from tfnorms.norms.operator_norms import _check_kernel, validate_conv_args


def _largest_gram_eigenvalue(matrices: tf.Tensor) -> tf.Tensor:
    """Largest squared singular value over a batch of real matrices."""
    rows, cols = matrices.shape[-2], matrices.shape[-1]
    if rows <= cols:
        gram = tf.matmul(matrices, matrices, transpose_b=True)
    else:
        gram = tf.matmul(matrices, matrices, transpose_a=True)
    return tf.reduce_max(tf.linalg.eigvalsh(gram))


METHODS = ("auto", "gram")
DENSE_LIMIT = 2**21  # entries of the dense zero-padded operator up to which method="gram" uses it


def _certifying_gram_steps(rank: int) -> int:
    """The smallest ``t >= 8`` whose worst-case overestimate ``rank^(1 / 2^(t+1))`` is at most 1.001."""
    return max(8, int(np.ceil(np.log2(np.log(max(rank, 2)) / np.log(1.001)))) - 1)


def dense_spectral_norm(kernel, *, method="auto", gram_iterations=None) -> tf.Tensor:
    """Largest singular value of a Dense kernel ``(in, out)``.

    With ``method="auto"``: the square root of the largest eigenvalue of the
    smaller Gram matrix (differentiable, XLA-compatible). With
    ``method="gram"``: the Gram-iteration upper bound
    (:func:`tfnorms.norms.gram.log_gram_bound`, matrix products only), within
    a factor ``rank^(1 / 2^(t+1))`` of the norm after ``t = gram_iterations``
    steps and usually far closer; ``None`` (default) takes the smallest
    ``t >= 8`` for which that factor is at most 1.001.

    Raises:
        ValueError: for a kernel with NaN or Inf entries (eagerly; inside a
            ``tf.function`` a ``tf.debugging`` assertion, dropped under XLA).

    Example:
        >>> import numpy as np
        >>> round(float(dense_spectral_norm(np.diag([3.0, -4.0]))), 6)
        4.0
    """
    method = _args.choice(method, "method", METHODS)
    gram_iterations = _args.positive_int(gram_iterations, "gram_iterations", allow_none=True)
    kernel = _inputs.check_finite(_check_kernel(kernel, 2), "kernel")
    if method == "gram":
        if gram_iterations is None:
            gram_iterations = _certifying_gram_steps(min(kernel.shape))
        return tf.exp(log_gram_bound(kernel, iterations=gram_iterations))
    return tf.sqrt(_largest_gram_eigenvalue(kernel))


def _fold_onto_torus(kernel: tf.Tensor, size, dilation_rate) -> tf.Tensor:
    """Places ``kernel[r, c]`` at ``(r*d_h mod n_h, c*d_w mod n_w)``, summing collisions.

    This is the exact kernel of the circular convolution on an ``n_h x n_w``
    torus, also when the kernel's reach exceeds the input.
    """
    kh, kw = kernel.shape[0], kernel.shape[1]
    folds = []
    for n, k, d in zip(size, (kh, kw), dilation_rate):
        fold = np.zeros((n, k))
        fold[(np.arange(k) * d) % n, np.arange(k)] = 1.0
        folds.append(tf.constant(fold, dtype=kernel.dtype))
    return tf.einsum("pr,qc,rcio->pqio", folds[0], folds[1], kernel)


def _circular_transfer_matrices(kernel, size, dilation_rate, groups, full_spectrum):
    """Per-frequency ``c_out_g x c_in_g`` transfer matrices, one batch per group.

    Returns complex tensors ``(n_h, n_f, groups, c_out_g, c_in_g)`` where ``n_f``
    is ``n_w`` (full spectrum) or ``n_w // 2 + 1`` (real FFT).
    """
    _, _, c_in_g, c_out = kernel.shape
    torus = _fold_onto_torus(kernel, size, dilation_rate)  # (n_h, n_w, c_in_g, c_out)
    torus = tf.reshape(torus, (size[0], size[1], c_in_g, groups, c_out // groups))
    spatial_last = tf.transpose(torus, (3, 4, 2, 0, 1))  # (g, c_out_g, c_in_g, n_h, n_w)
    if full_spectrum:
        complex_dtype = tf.complex128 if kernel.dtype == tf.float64 else tf.complex64
        spectrum = tf.signal.fft2d(tf.cast(spatial_last, complex_dtype))
    else:
        spectrum = tf.signal.rfft2d(spatial_last)
    return tf.transpose(spectrum, (3, 4, 0, 1, 2))


def _half_spectrum(kernel, size, dilation_rate, groups):
    """Real and imaginary parts of the rFFT-half transfer matrices, as real matrix products.

    ``P(u, v) = sum_{r, c} K[r, c] exp(-2 pi i (u r d_h / n_h + v c d_w / n_w))`` for
    ``v <= n_w // 2`` (the rFFT of the kernel folded onto the torus: taps that
    collide mod ``n`` add up, as the exponent already does). A ``(frequencies,
    taps)`` cosine and sine table times the ``(taps, c_in_g * c_out)`` kernel: no
    padded tensor, no FFT, no complex dtype.

    Returns:
        ``(real, imag)``, each ``(n_h * n_f * groups, c_in_g, c_out_g)`` (the
        transposed transfer matrices: same singular values).
    """
    kh, kw, c_in_g, c_out = kernel.shape
    n_h, n_w = size
    u = np.arange(n_h)[:, None, None, None] * np.arange(kh)[None, None, :, None] * dilation_rate[0] / n_h
    v = np.arange(n_w // 2 + 1)[None, :, None, None] * np.arange(kw)[None, None, None, :] * dilation_rate[1] / n_w
    phase = (2 * np.pi * (u + v)).reshape(-1, kh * kw)  # (frequencies, taps)
    taps = tf.reshape(kernel, (kh * kw, c_in_g * c_out))
    parts = []
    for table in (np.cos(phase), -np.sin(phase)):
        part = tf.matmul(tf.constant(table, kernel.dtype), taps)
        part = tf.reshape(part, (-1, c_in_g, groups, c_out // groups))
        if groups > 1:
            part = tf.transpose(part, (0, 2, 1, 3))
        parts.append(tf.reshape(part, (-1, c_in_g, c_out // groups)))
    return tuple(parts)


def _realify(real: tf.Tensor, imag: tf.Tensor) -> tf.Tensor:
    """``M = A + iB`` -> ``[[A, -B], [B, A]]``: same singular values, each doubled."""
    top = tf.concat([real, -imag], axis=-1)
    bottom = tf.concat([imag, real], axis=-1)
    return tf.concat([top, bottom], axis=-2)


def _validate(kernel, input_shape, strides, padding, dilation_rate, groups):
    kernel, strides, dilation_rate, pads, shape, groups = validate_conv_args(
        kernel, input_shape, strides, padding, dilation_rate, groups, extra_padding=("circular",)
    )
    if None in shape:
        raise ValueError(
            "Invalid value for argument `input_shape`. The spectral norm depends "
            f"on the input size: pass (H, W). Received: input_shape={input_shape!r}"
        )
    if pads[0] == "circular" and strides != (1, 1):
        raise ValueError(
            'padding="circular" is exact only for stride 1 (Sedghi et al.). '
            f"Received: strides={strides}. Use padding='same' or 'valid' (power "
            "iteration) for strided convolutions."
        )
    if pads[0] != "circular":
        for n, k, s, d, p in zip(shape, kernel.shape[:2], strides, dilation_rate, pads):
            if geometry.output_size(n, k, s, d, p) == 0:
                raise ValueError(
                    f"The convolution has no output for input_shape={shape} and padding={padding!r}."
                )
    return _inputs.check_finite(kernel, "kernel"), shape, strides, dilation_rate, pads, groups


def conv2d_singular_values(
    kernel, *, input_shape, dilation_rate=1, groups=1
) -> tf.Tensor:
    """All singular values of a stride-1 convolution with circular padding.

    Reference formulation (full complex FFT and complex SVD, CPU only in
    TensorFlow): returns the ``n_h * n_w * min(c_in, c_out)`` singular values
    sorted in decreasing order. Use it for analysis and tests;
    :func:`conv2d_spectral_norm` computes the largest one on any device.

    Example:
        >>> import numpy as np
        >>> sv = conv2d_singular_values(np.ones((3, 3, 1, 1)), input_shape=(4, 4))
        >>> float(sv[0])
        9.0
    """
    kernel, shape, _, dilation_rate, _, groups = _validate(
        kernel, input_shape, 1, "circular", dilation_rate, groups
    )
    matrices = _circular_transfer_matrices(kernel, shape, dilation_rate, groups, full_spectrum=True)
    values = tf.reshape(tf.linalg.svd(matrices, compute_uv=False), [-1])
    return tf.sort(values, direction="DESCENDING")


def _zero_padded_conv(x, kernel, strides, dilation_rate, pads, groups):
    """The zero-padded convolution, written with ops whose input gradient exists on CPU.

    ``tf.nn.convolution`` routes dilation through space-to-batch (the dilated
    ``Conv2DBackpropInput`` has no CPU kernel), explicit padding becomes
    ``tf.pad`` + "VALID", and a grouped kernel becomes its block-diagonal dense
    equivalent (grouped input gradients have no CPU kernel either).
    """
    if groups > 1:
        kernel = _block_diagonal(kernel, groups)
    if pads[0] in ("same", "valid"):
        padding = pads[0].upper()
    else:
        x = tf.pad(x, [[0, 0], list(pads[0]), list(pads[1]), [0, 0]])
        padding = "VALID"
    return tf.nn.convolution(x, kernel, strides=strides, padding=padding, dilations=dilation_rate)


def _block_diagonal(kernel: tf.Tensor, groups: int) -> tf.Tensor:
    """Grouped kernel ``(kh, kw, c_in_g, c_out)`` -> equivalent dense ``(kh, kw, c_in, c_out)``."""
    kh, kw, c_in_g, c_out = kernel.shape
    blocks = tf.reshape(kernel, (kh, kw, c_in_g, groups, c_out // groups))
    eye = tf.eye(groups, dtype=kernel.dtype)
    dense = tf.einsum("rcigo,hg->rchigo", blocks, eye)  # input group h feeds output group g iff h == g
    return tf.reshape(dense, (kh, kw, groups * c_in_g, c_out))


def conv2d_spectral_norm(
    kernel,
    *,
    input_shape,
    strides=1,
    padding="same",
    dilation_rate=1,
    groups=1,
    tol=1e-7,
    max_iter=1000,
    seed=0,
    block_size=4,
    method="auto",
    gram_iterations=None,
    gram_dense_limit=DENSE_LIMIT,
    gram_frequencies=None,
) -> tf.Tensor:
    """Spectral norm (largest singular value) of a 2-D convolution operator.

    Args:
        kernel: Conv2D kernel ``(kh, kw, c_in // groups, c_out)``.
        input_shape: spatial input size ``(H, W)`` (required: the spectral norm
            depends on it).
        strides: int or pair.
        padding: ``"circular"`` (stride 1 only; exact by FFT), ``"same"``,
            ``"valid"`` or explicit ``((top, bottom), (left, right))`` zero
            padding (power iteration).
        dilation_rate: int or pair.
        groups: channel groups.
        tol: the iteration stops once the relative change of the estimate of
            ``sigma**2`` between two iterations is at most ``tol``.
        max_iter: the iteration stops after this many iterations at most.
        seed: seed of the (stateless) random start block.
        block_size: number of vectors iterated together (zero padding); the
            rate of convergence is ``(sigma_{b+1} / sigma_1)**2``. Capped at
            the input dimension.
        method: ``"auto"`` (FFT + eigendecomposition for circular padding,
            block power iteration for zero padding) or ``"gram"``: a
            certified upper bound by Gram iteration on the per-frequency
            transfer matrices of the circular convolution (for zero padding,
            on the smallest torus of which the zero-padded convolution is a
            restriction; docs/norms.md#gram-iteration). Matrix products and
            an rFFT only: float32, XLA, any device, differentiable.
        gram_iterations: Gram steps ``t`` for ``method="gram"``. ``None``:
            8 for the torus bound; for the dense zero-padded operator (rank
            ``r <= min(n_in, n_out)``) the smallest ``t >= 8`` whose
            worst-case overestimate ``r^(1 / 2^(t+1))`` is at most 1.001
            (repeated top singular values, e.g. of 1x1 kernels, reach it).
        gram_dense_limit: zero padding with ``method="gram"``: when the
            dense matrix of the zero-padded operator has at most this many
            entries (``H W c_in_g * H_out W_out c_out``), the Gram iteration
            runs on that matrix itself (built in the graph from the
            convolution of an identity batch), which is tight on small
            inputs; above it, on the enclosing torus. ``0`` always uses the
            torus (docs/norms.md#gram-iteration).
        gram_frequencies: torus bound with ``method="gram"``: ``None`` runs
            every step on every frequency; an int ``m`` runs ``t - 3``
            steps on all, then the last 3 on the ``m`` frequencies with the
            largest bounds only (still certified: the others count with their
            coarse bounds; tight when those fall below the norm).

    Returns:
        A scalar tensor. With ``method="gram"`` an upper bound of the norm
        (see docs/norms.md#gram-iteration for its measured gap). Otherwise,
        for zero padding it is ``||A v||`` for the top Ritz
        vector ``v`` of the final block: a lower bound that increases towards
        the norm. On small operators it agrees with a dense SVD to about 1e-6
        relative unless the ``block_size + 1`` largest singular values nearly
        coincide; large layers, whose top singular values crowd together, stop
        about 1e-4 below the norm in float32 (see docs/norms.md). Its gradient
        is the exact gradient ``u v^T`` of the norm at ``v``.

    Raises:
        ValueError: for a kernel with NaN or Inf entries (eagerly; inside a
            ``tf.function`` a ``tf.debugging`` assertion, dropped under XLA).

    Example:
        >>> import numpy as np
        >>> kernel = np.ones((3, 3, 1, 1))
        >>> float(conv2d_spectral_norm(kernel, input_shape=(8, 8), padding="circular"))
        9.0
    """
    method = _args.choice(method, "method", METHODS)
    gram_iterations = _args.positive_int(gram_iterations, "gram_iterations", allow_none=True)
    gram_dense_limit = _args.positive_int(gram_dense_limit, "gram_dense_limit", minimum=0)
    gram_frequencies = _args.positive_int(gram_frequencies, "gram_frequencies", allow_none=True)
    kernel, shape, strides, dilation_rate, pads, groups = _validate(
        kernel, input_shape, strides, padding, dilation_rate, groups
    )
    conv = {"strides": strides, "dilation_rate": dilation_rate, "pads": pads, "groups": groups}
    if method == "gram":
        if pads[0] != "circular" and _dense_entries(kernel.shape, shape, **conv) <= gram_dense_limit:
            matrices = _zero_padded_matrices(kernel, shape, **conv)
            if gram_iterations is None:
                rank = min(matrices.shape[1:])
                gram_iterations = _certifying_gram_steps(rank)
            return tf.exp(tf.reduce_max(log_gram_bound(matrices, iterations=gram_iterations)))
        if pads[0] != "circular":
            shape = _enclosing_torus(shape, kernel.shape[:2], strides, dilation_rate, pads)
        return tf.exp(_torus_log_bound(kernel, shape, dilation_rate, groups, gram_iterations or 8, gram_frequencies))
    if pads[0] == "circular":
        return tf.sqrt(_largest_gram_eigenvalue(_realify(*_half_spectrum(kernel, shape, dilation_rate, groups))))

    block_size = _args.positive_int(block_size, "block_size")
    c_in = kernel.shape[2] * groups
    block = int(min(block_size, shape[0] * shape[1] * c_in))
    start = tf.random.stateless_normal((block,) + shape + (c_in,), seed=(seed, 0), dtype=kernel.dtype)
    v = _dominant_right_vector(tf.stop_gradient(kernel), start, tol, max_iter, **conv)
    return tf.norm(_zero_padded_conv(v, kernel, **conv))


def _dense_entries(kernel_shape, shape, strides, dilation_rate, pads, groups):
    """Entries of the dense matrices of a zero-padded convolution (all groups)."""
    kh, kw, c_in_g, c_out = kernel_shape
    outputs = [geometry.output_size(*axis) for axis in zip(shape, (kh, kw), strides, dilation_rate, pads)]
    return shape[0] * shape[1] * c_in_g * outputs[0] * outputs[1] * c_out


def _zero_padded_matrices(kernel, shape, strides, dilation_rate, pads, groups):
    """``(groups, n_in, n_out)``: the transposed dense matrix of each group's zero-padded convolution.

    Row ``i`` is the convolution of the ``i``-th basis input (an identity batch
    through the same strided, dilated, padded convolution): exact,
    differentiable in the kernel, real arithmetic. Channel groups do not mix,
    so the operator is block diagonal with these blocks and its norm is the
    largest of theirs.
    """
    c_in_g = kernel.shape[2]
    n_in = shape[0] * shape[1] * c_in_g
    basis = tf.reshape(tf.eye(n_in, dtype=kernel.dtype), (n_in,) + tuple(shape) + (c_in_g,))
    blocks = [_zero_padded_conv(basis, block, strides, dilation_rate, pads, 1)
              for block in tf.split(kernel, groups, axis=-1)]
    return tf.stack([tf.reshape(block, (n_in, -1)) for block in blocks])


def _torus_log_bound(kernel, size, dilation_rate, groups, iterations, keep=None):
    """``log`` of the Gram bound of the circular convolution on an ``n_h x n_w`` torus.

    The first Gram step is taken on the kernel, not per frequency. With
    ``P(w) = sum_a K_a e^{-i w.a}`` (``K_a`` the ``c_in_g x c_out_g`` tap at
    offset ``a``), the smaller Gram matrix is
    ``P P^* = sum_{a, b} K_a K_b^T e^{-i w.(a - b)} = sum_delta C_delta e^{-i w.delta}``
    with ``C_delta = sum_{a - b = delta} K_a K_b^T`` (or ``P^* P`` from
    ``K_a^T K_b``, with the conjugate phase: same eigenvalues): the kernel's channel
    autocorrelation (``(2 kh - 1)(2 kw - 1)`` matrices) and one cosine/sine
    table product give ``G_1`` at every frequency of the rFFT half; the
    remaining ``t - 1`` steps square these Hermitian matrices
    (docs/theory.md#gram-iteration). With ``keep``, the frequencies (and
    groups) stop after ``t - 3`` steps except the ``keep`` with the largest
    bounds; the result is the larger of their final bounds and the largest
    stopped bound.
    """
    kh, kw, c_in_g, c_out = kernel.shape
    # Products of K / max|K| can neither overflow nor all underflow; the scale returns in log space.
    peak = tf.maximum(tf.reduce_max(tf.abs(kernel)), np.finfo(kernel.dtype.as_numpy_dtype).tiny)
    taps = tf.reshape(kernel / peak, (kh * kw, c_in_g, groups, c_out // groups))
    if c_in_g <= c_out // groups:
        products, side = tf.einsum("aigo,bjgo->gabij", taps, taps), c_in_g
    else:
        products, side = tf.einsum("aigo,bigp->gabop", taps, taps), c_out // groups
    rows, cols = np.divmod(np.arange(kh * kw), kw)
    offsets = np.stack([(rows[:, None] - rows[None, :]) * dilation_rate[0],
                        (cols[:, None] - cols[None, :]) * dilation_rate[1]], axis=-1).reshape(-1, 2)
    deltas, which = np.unique(offsets, axis=0, return_inverse=True)
    collect = np.zeros((len(deltas), kh * kw * kh * kw))
    collect[which.reshape(-1), np.arange(kh * kw * kh * kw)] = 1.0
    products = tf.reshape(products, (groups, kh * kw * kh * kw, side * side))
    autocorrelation = tf.matmul(tf.constant(collect, kernel.dtype), products)  # (groups, deltas, side^2)
    n_h, n_w = size
    u, v = np.meshgrid(np.arange(n_h) / n_h, np.arange(n_w // 2 + 1) / n_w, indexing="ij")
    phase = 2 * np.pi * (u.reshape(-1, 1) * deltas[None, :, 0] + v.reshape(-1, 1) * deltas[None, :, 1])
    real, imag = [tf.reshape(tf.matmul(tf.constant(table, kernel.dtype), autocorrelation), (-1, side, side))
                  for table in (np.cos(phase), -np.sin(phase))]
    count = real.shape[0]  # groups x frequencies
    coarse = iterations - 1 if keep is None or keep >= count else max(0, iterations - 4)
    state = compiled_hermitian_squarings(real, imag, tf.zeros((count,), kernel.dtype), 0, coarse)
    log_bound = tf.reduce_max(log_bound_of(*state, coarse))
    if coarse < iterations - 1:
        # Pruning (docs/theory.md#gram-iteration): every coarse bound is certified, so the
        # pruned frequencies' norms are at most the largest pruned bound, the (keep+1)-th.
        top = tf.math.top_k(log_bound_of(*state, coarse), keep + 1)
        kept = [tf.gather(part, top.indices[:keep]) for part in state]
        refined = log_bound_of(*compiled_hermitian_squarings(*kept, coarse, iterations - 1), iterations - 1)
        log_bound = tf.maximum(tf.reduce_max(refined), top.values[keep])
    # G_1 = P P^* / peak^2, so log sigma = log lambda / 2 + log peak; the margin of
    # log_gram_bound on the same transfer matrices (docs/norms.md#gram-iteration).
    return log_bound / 2.0 + tf.math.log(peak) + rounding_margin(max(c_in_g, c_out // groups), kernel.dtype)


def _enclosing_torus(shape, kernel_hw, strides, dilation_rate, pads):
    """The smallest torus on which a zero-padded convolution is a restriction of the circular one.

    Along an axis with input length ``n``, reach ``(k - 1) d + 1`` and zero
    padding ``(b, a)``, every output that reads an input reads padded positions
    in ``[-b', n - 1 + a']`` with ``b' = min(b, reach - 1)``, ``a' = min(a, reach - 1)``.
    On a torus of length ``N = n + max(b', a')`` none of those padding
    positions lands on an input, so (dropping outputs that read padding only,
    which are zero) the zero-padded convolution is the circular one on that
    torus restricted to the embedded inputs and to a subset of its outputs;
    a strided one keeps a further subset of the stride-1 outputs. Either way
    its norm is at most the circular norm (docs/norms.md#gram-iteration).
    """
    torus = []
    for n, k, s, d, pad in zip(shape, kernel_hw, strides, dilation_rate, pads):
        before, after, _ = geometry.axis_padding(n, k, s, d, pad)
        reach = (k - 1) * d + 1
        torus.append(n + max(min(before, reach - 1), min(after, reach - 1)))
    return tuple(torus)


@tf.function(autograph=False)
def _dominant_right_vector(kernel, start, tol, max_iter, *, strides, dilation_rate, pads, groups):
    """Subspace iteration on ``A^T A`` with Rayleigh-Ritz; returns the (unit) top Ritz vector, shape ``(1, H, W, C)``.

    ``start`` is a block of ``b`` inputs, iterated as one batch through the
    convolution: ``V <- orth(A^T A V)``, and each step the Ritz values of
    ``A^T A`` on ``span(V)`` (eigenvalues of the ``b x b`` matrix
    ``V^T A^T A V``) estimate the largest ``sigma**2`` from below.
    Compiled once per configuration so eager callers do not pay a Python loop;
    inside a caller's ``tf.function`` it is inlined.
    """
    tiny = tf.constant(np.finfo(kernel.dtype.as_numpy_dtype).tiny, kernel.dtype)
    block, input_shape = start.shape[0], start.shape[1:]

    def gram_apply(v):
        with tf.GradientTape() as tape:
            tape.watch(v)
            out = _zero_padded_conv(v, kernel, strides, dilation_rate, pads, groups)
        # A^T A v is the gradient of 0.5 ||A v||^2 with respect to v (row by row of the batch).
        return tape.gradient(out, v, output_gradients=out)

    def orthonormal_rows(rows):
        q, _ = tf.linalg.qr(tf.transpose(rows))
        return tf.transpose(q)

    def keep_going(i, rows, top, sigma_sq, change):
        return tf.logical_and(i < max_iter, change > tol)

    def step(i, rows, top, sigma_sq, change):
        images = gram_apply(tf.reshape(rows, (block,) + input_shape))
        images = tf.reshape(images, (block, -1))
        projected = tf.matmul(rows, images, transpose_b=True)  # V^T A^T A V, symmetric b x b
        ritz_values, ritz_vectors = tf.linalg.eigh(0.5 * (projected + tf.transpose(projected)))
        new_sigma_sq = ritz_values[-1]
        new_top = tf.linalg.matvec(rows, ritz_vectors[:, -1], transpose_a=True)  # unit: rows are orthonormal
        change = tf.abs(new_sigma_sq - sigma_sq) / tf.maximum(tf.abs(new_sigma_sq), tiny)
        return i + 1, orthonormal_rows(images), new_top, new_sigma_sq, change

    rows = orthonormal_rows(tf.reshape(start, (block, -1)))
    initial = (tf.constant(0), rows, rows[0], tf.zeros((), kernel.dtype), tf.ones((), kernel.dtype))
    _, _, top, _, _ = tf.while_loop(keep_going, step, initial)
    return tf.stop_gradient(tf.reshape(top, (1,) + input_shape))
