"""Brute-force dense operators for the norm, regularizer, constraint and callback tests.

Builds the dense matrix of a zero-padded or circular 2-D cross-correlation by
explicit index loops (independent of tfnorms.norms.geometry), or of any linear
TensorFlow op / Keras layer by applying it to every basis vector of its input,
and reads norms and maximal groups off it.
"""

import math

import numpy as np
import tensorflow as tf


def tf_same_padding(n, k, s, d=1):
    n_out = math.ceil(n / s)
    total = max((n_out - 1) * s + (k - 1) * d + 1 - n, 0)
    return total // 2, total - total // 2


def conv_taps(kernel_shape, hw, strides=1, padding="same"):
    """Yields ``(u, v, r, c, a, b)``: output (u, v) reads input (a, b) through position (r, c)."""
    kh, kw = kernel_shape[:2]
    (h, w), s = hw, strides
    if padding == "same":
        pt, pb = tf_same_padding(h, kh, s)
        pl, pr = tf_same_padding(w, kw, s)
    else:
        pt = pb = pl = pr = 0
    h_out = (h + pt + pb - kh) // s + 1
    w_out = (w + pl + pr - kw) // s + 1
    for u in range(h_out):
        for v in range(w_out):
            for r in range(kh):
                for c in range(kw):
                    a, b = u * s + r - pt, v * s + c - pl
                    if 0 <= a < h and 0 <= b < w:
                        yield u, v, r, c, a, b


def conv_matrix(kernel, hw, strides=1, padding="same"):
    """Dense operator matrix (rows: outputs (u, v, j); columns: inputs (a, b, i))."""
    kh, kw, c_in, c_out = kernel.shape
    taps = list(conv_taps(kernel.shape, hw, strides, padding))
    h_out = max(t[0] for t in taps) + 1
    w_out = max(t[1] for t in taps) + 1
    h, w = hw
    matrix = np.zeros((h_out, w_out, c_out, h, w, c_in))
    for u, v, r, c, a, b in taps:
        matrix[u, v, :, a, b, :] += kernel[r, c].T
    return matrix.reshape(h_out * w_out * c_out, h * w * c_in)


def circular_matrix(kernel, hw, dilation=(1, 1)):
    """Dense matrix of the stride-1 circular cross-correlation on an ``hw`` torus.

    ``y[u, v, j] = sum K[r, c, i, j] x[(u + r d_h) % H, (v + c d_w) % W, i]``.
    """
    kh, kw, c_in, c_out = kernel.shape
    h, w = hw
    dh, dw = dilation
    matrix = np.zeros((h, w, c_out, h, w, c_in))
    for u in range(h):
        for v in range(w):
            for r in range(kh):
                for c in range(kw):
                    matrix[u, v, :, (u + r * dh) % h, (v + c * dw) % w, :] += kernel[r, c].T
    return matrix.reshape(h * w * c_out, h * w * c_in)


def dense_matrix_of(fn, input_shape):
    """Dense matrix of a linear TensorFlow function: ``fn`` applied to every basis vector (float64)."""
    size = int(np.prod(input_shape))
    basis = tf.reshape(tf.eye(size, dtype=tf.float64), (size,) + tuple(input_shape))
    out = fn(basis)
    return tf.reshape(out, (size, -1)).numpy().T


def dense_conv_matrix(kernel, h, w, strides, padding, dilation):
    """Rows = flattened outputs, columns = flattened inputs (``tf.nn.conv2d`` on every ``e_k``).

    ``padding`` as ``tf.nn.conv2d`` takes it (see :func:`tf_padding`).
    """
    return dense_matrix_of(
        lambda x: tf.nn.conv2d(x, kernel, strides=strides, padding=padding, dilations=dilation),
        (h, w, kernel.shape[2]),
    )


def tf_padding(padding):
    """A tfnorms ``padding`` (``"same"``, ``"valid"`` or explicit pairs) as ``tf.nn.conv2d`` takes it."""
    if isinstance(padding, str):
        return padding.upper()
    return [[0, 0], list(padding[0]), list(padding[1]), [0, 0]]


def l1(matrix):
    return np.abs(matrix).sum(axis=0).max()


def linf(matrix):
    return np.abs(matrix).sum(axis=1).max()


def l2(matrix):
    return np.linalg.svd(matrix, compute_uv=False)[0]


def conv_max_group_mask(kernel, ord, hw, strides=1, padding="same"):
    """0/1 mask of the kernel entries in the maximal column (ord=1) / row (ord=inf)."""
    kh, kw, c_in, c_out = kernel.shape
    taps = list(conv_taps(kernel.shape, hw, strides, padding))
    magnitude = np.abs(kernel)
    best, best_mask = -1.0, None
    if ord == 1:
        for a in range(hw[0]):
            for b in range(hw[1]):
                positions = {(r, c) for _, _, r, c, a2, b2 in taps if (a2, b2) == (a, b)}
                for i in range(c_in):
                    total = sum(magnitude[r, c, i, :].sum() for r, c in positions)
                    if total > best + 1e-12:
                        best, best_mask = total, np.zeros(kernel.shape)
                        for r, c in positions:
                            best_mask[r, c, i, :] = 1.0
    else:
        outputs = {(u, v) for u, v, *_ in taps}
        for u, v in sorted(outputs):
            positions = {(r, c) for u2, v2, r, c, _, _ in taps if (u2, v2) == (u, v)}
            for j in range(c_out):
                total = sum(magnitude[r, c, :, j].sum() for r, c in positions)
                if total > best + 1e-12:
                    best, best_mask = total, np.zeros(kernel.shape)
                    for r, c in positions:
                        best_mask[r, c, :, j] = 1.0
    return best, best_mask


def kdet(c_in=3, c_out=2, k=3):
    """Test-vector kernel ``K[j, i, r, c] = ((7j + 5i + 3r + c) mod 11) - 5`` (docs/theory.md#test-vectors), Keras layout."""
    kernel = np.zeros((k, k, c_in, c_out))
    for j in range(c_out):
        for i in range(c_in):
            for r in range(k):
                for c in range(k):
                    kernel[r, c, i, j] = ((7 * j + 5 * i + 3 * r + c) % 11) - 5
    return kernel


def synthetic_data(n=128, hw=8, channels=3, classes=4, seed=0):
    """Linearly separable-ish images: the class sets the mean of one channel patch."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.normal(0.0, 1.0, (n, hw, hw, channels)).astype("float32")
    for k in range(classes):
        x[y == k, (k * 2) % hw : (k * 2) % hw + 2, :, k % channels] += 2.0
    return x, y
