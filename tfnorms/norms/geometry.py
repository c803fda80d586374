"""Index geometry of a 2-D convolution along one spatial axis (pure NumPy).

Every exact l1 / l_inf norm in this package reduces to one question per spatial
axis: which kernel positions touch one input pixel (a column of the operator
matrix), and which kernel positions one output pixel reads (a row)?

Along one axis with input length ``n``, kernel size ``k``, stride ``s``,
dilation ``d`` and zero padding ``(p_before, p_after)``, output ``u`` reads
input ``a = u*s + r*d - p_before`` through kernel position ``r``
(TensorFlow convolutions are cross-correlations). Hence (docs/theory.md#kernel-position-sets)

* column set of input ``a``:  ``R(a) = {r : a + p_before - r*d = u*s, 0 <= u < n_out}``
* row set of output ``u``:    ``V(u) = {r : 0 <= u*s + r*d - p_before < n}``

Distinct kernel positions in one set hit distinct outputs (inputs), so an entry
of the operator matrix is a single kernel weight and the absolute column (row)
sums are plain sums of ``|kernel|`` over products of per-axis sets. Only the
maximal sets matter because ``|kernel| >= 0``.

The functions here return those sets as 0/1 masks of shape ``(num_sets, k)``.
They run at trace time on Python integers and are cached.
"""

from __future__ import annotations

import functools
from typing import Sequence, Tuple, Union

import numpy as np

PaddingSpec = Union[str, Tuple[int, int]]

_PADDING_NAMES = ("same", "valid")


def normalize_pair(value, name: str) -> Tuple[int, int]:
    """Returns ``value`` as a pair of positive ints (Keras accepts int or pair)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        pair = (int(value), int(value))
    elif (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)
    ):
        pair = (int(value[0]), int(value[1]))
    else:
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected a positive int or a "
            f"pair of positive ints. Received: {name}={value!r}"
        )
    if min(pair) < 1:
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected positive values. "
            f"Received: {name}={value!r}"
        )
    return pair


def normalize_padding(padding, extra: Sequence[str] = ()):
    """Validates a padding spec and returns it per axis.

    Accepted: ``"same"``, ``"valid"`` (case-insensitive, as in Keras), any name
    in ``extra`` (e.g. ``"circular"``), or explicit zero padding
    ``((top, bottom), (left, right))`` as produced by ``ZeroPadding2D``.

    Returns:
        A pair ``(pad_h, pad_w)``, each a lower-case name or a ``(before,
        after)`` tuple of non-negative ints.
    """
    allowed = _PADDING_NAMES + tuple(extra)
    if isinstance(padding, str):
        name = padding.lower()
        if name in allowed:
            return (name, name)
    elif isinstance(padding, (tuple, list)) and len(padding) == 2:
        try:
            pairs = tuple((int(p[0]), int(p[1])) for p in padding if len(p) == 2)
        except (TypeError, ValueError):
            pairs = ()
        if len(pairs) == 2 and min(min(p) for p in pairs) >= 0:
            return pairs
    accepted = ", ".join(f'"{a}"' for a in allowed)
    raise ValueError(
        f"Invalid value for argument `padding`. Expected one of {accepted} or "
        f"explicit zero padding ((top, bottom), (left, right)). "
        f"Received: padding={padding!r}"
    )


def check_stride_dilation(strides, dilation_rate):
    """Validates strides/dilation and rejects the combination TensorFlow lacks."""
    strides = normalize_pair(strides, "strides")
    dilation_rate = normalize_pair(dilation_rate, "dilation_rate")
    if max(strides) > 1 and max(dilation_rate) > 1:
        raise ValueError(
            "TensorFlow convolutions do not support `strides` > 1 together with "
            f"`dilation_rate` > 1. Received: strides={strides}, "
            f"dilation_rate={dilation_rate}"
        )
    return strides, dilation_rate


def axis_padding(n: int, k: int, s: int, d: int, padding: PaddingSpec) -> Tuple[int, int, int]:
    """Zero padding and output length of one axis.

    Args:
        n: input length.
        k: kernel size.
        s: stride.
        d: dilation.
        padding: ``"same"``, ``"valid"`` or an explicit ``(before, after)``.

    Returns:
        ``(p_before, p_after, n_out)``. For ``"same"`` TensorFlow pads
        ``total = max((ceil(n/s) - 1)*s + (k-1)*d + 1 - n, 0)`` split as
        ``(total // 2, total - total // 2)``: asymmetric for e.g. k=3, s=2 on
        even ``n``, where PyTorch's ``padding=1`` is symmetric.
    """
    reach = (k - 1) * d + 1
    if padding == "same":
        n_out = -(-n // s)
        total = max((n_out - 1) * s + reach - n, 0)
        before, after = total // 2, total - total // 2
    elif padding == "valid":
        before, after = 0, 0
    else:
        before, after = padding
    span = n + before + after
    n_out = (span - reach) // s + 1 if span >= reach else 0
    return before, after, n_out


def _maximal_sets(sets, k: int) -> np.ndarray:
    """Deduplicates index sets, drops those contained in another, returns masks."""
    unique = sorted({frozenset(x) for x in sets if x}, key=lambda x: (-len(x), sorted(x)))
    kept = []
    for candidate in unique:
        if not any(candidate <= other for other in kept):
            kept.append(candidate)
    # No position touches anything (e.g. a dilated kernel wider than a padded
    # 1-pixel input): the operator is zero; one empty set keeps max() at 0.
    mask = np.zeros((max(len(kept), 1), k), dtype=np.float64)
    for row, positions in enumerate(kept):
        mask[row, sorted(positions)] = 1.0
    return mask


@functools.lru_cache(maxsize=4096)
def column_masks(n, k: int, s: int, d: int, padding: PaddingSpec) -> np.ndarray:
    """Maximal sets of kernel positions that touch one input element.

    Args:
        n: input length, or ``None`` for the large-input closed form (the
            stride residue classes ``{r : r*d = c (mod s)}``), which is exact as
            soon as one input element is touched by a whole class.
        k: kernel size.
        s: stride.
        d: dilation.
        padding: see :func:`axis_padding`.

    Returns:
        A ``(num_sets, k)`` 0/1 float64 matrix.
    """
    if n is None:
        classes = [[r for r in range(k) if (r * d) % s == c] for c in range(s)]
        return _maximal_sets(classes, k)
    before, n_out = _before_and_output_length(n, k, s, d, padding)
    sets = []
    for a in range(n):
        positions = []
        for r in range(k):
            offset = a + before - r * d
            if offset >= 0 and offset % s == 0 and offset // s < n_out:
                positions.append(r)
        sets.append(positions)
    return _maximal_sets(sets, k)


def _before_and_output_length(n, k, s, d, padding):
    """``(p_before, n_out)`` of :func:`axis_padding`; raises when the convolution has no output."""
    before, _, n_out = axis_padding(n, k, s, d, padding)
    if n_out == 0:
        raise ValueError(
            f"The convolution has no output: input length {n} is smaller than "
            f"the kernel's reach {(k - 1) * d + 1} with padding={padding!r}."
        )
    return before, n_out


@functools.lru_cache(maxsize=4096)
def row_masks(n, k: int, s: int, d: int, padding: PaddingSpec) -> np.ndarray:
    """Maximal sets of kernel positions that one output element reads.

    ``n=None`` gives the large-input closed form: all ``k`` positions (some
    output window lies inside the input).
    """
    if n is None:
        return np.ones((1, k), dtype=np.float64)
    before, n_out = _before_and_output_length(n, k, s, d, padding)
    sets = []
    for u in range(n_out):
        sets.append([r for r in range(k) if 0 <= u * s + r * d - before < n])
    return _maximal_sets(sets, k)


def output_size(n: int, k: int, s: int, d: int, padding: PaddingSpec) -> int:
    """Output length of one axis (0 if the input is too small for "valid")."""
    return axis_padding(n, k, s, d, padding)[2]
