"""One vocabulary of argument checks, with Keras-style messages.

Every check raises ``ValueError("Invalid value for argument `name`. Expected
... Received: name=...")`` and returns the value in its normal form. The
module depends on NumPy only, so every layer of tfnorms (the pure maths in
:mod:`tfnorms.norms` included) can use it.

Example:
    >>> import numpy as np
    >>> ords("inf")
    (inf,)
    >>> positive_int(3, "steps")
    3
    >>> number(-1.0, "eps", low=0)
    Traceback (most recent call last):
    ...
    ValueError: Invalid value for argument `eps`. Expected a finite number >= 0. Received: eps=-1.0
"""

from __future__ import annotations

import numbers

import numpy as np

ORD_SPELLINGS = {
    1: 1,
    2: 2,
    "1": 1,
    "2": 2,
    "l1": 1,
    "l2": 2,
    "inf": np.inf,
    "linf": np.inf,
    "l_inf": np.inf,
    "numpy.inf": np.inf,
}


def message(name, expected, received: str) -> str:
    """``"Invalid value for argument `name`. Expected ... Received: ..."`` with ``received`` as written."""
    return f"Invalid value for argument `{name}`. Expected {expected}. Received: {received}"


def invalid(name, expected, value) -> ValueError:
    """The error every check raises (``Received: name=repr(value)``)."""
    return ValueError(message(name, expected, f"{name}={value!r}"))


def is_number(value) -> bool:
    """A real number that is not a ``bool`` (NumPy scalars included)."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def number(value, name, *, low=None, high=None, low_open=False, high_open=False, allow_none=False):
    """A finite real number in ``[low, high]`` (open ends with ``low_open`` / ``high_open``), as ``float``."""
    if value is None and allow_none:
        return None
    if low is not None and high is not None:
        expected = f"a number in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    elif low is not None:
        expected = f"a finite number {'>' if low_open else '>='} {low}"
    elif high is not None:
        expected = f"a finite number {'<' if high_open else '<='} {high}"
    else:
        expected = "a finite number"
    if allow_none:
        expected += ", or None"
    if not is_number(value) or not np.isfinite(value):
        raise invalid(name, expected, value)
    if low is not None and (value <= low if low_open else value < low):
        raise invalid(name, expected, value)
    if high is not None and (value >= high if high_open else value > high):
        raise invalid(name, expected, value)
    return float(value)


def nonnegative(value, name):
    """A finite number ``>= 0``."""
    return number(value, name, low=0)


def positive(value, name):
    """A finite number ``> 0``."""
    return number(value, name, low=0, low_open=True)


def positive_int(value, name, minimum=1, allow_none=False):
    """An ``int`` (NumPy integers included, bools not) ``>= minimum``."""
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < minimum:
        expected = "a positive int (an int >= 1)" if minimum == 1 else f"an int >= {minimum}"
        raise invalid(name, expected + (", or None" if allow_none else ""), value)
    return int(value)


def update_freq(value, name="update_freq"):
    """``"epoch"`` or an int >= 1 (steps), as Keras' TensorBoard callback takes it."""
    if value == "epoch":
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < 1:
        raise invalid(name, '"epoch" or a positive int', value)
    return int(value)


def integer(value, name, allow_none=False):
    """Any ``int`` (NumPy integers included, bools not), e.g. a seed."""
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise invalid(name, "an int" + (" or None" if allow_none else ""), value)
    return int(value)


def boolean(value, name):
    """``True`` or ``False`` (NumPy bools included)."""
    if not isinstance(value, (bool, np.bool_)):
        raise invalid(name, "True or False", value)
    return bool(value)


def choice(value, name, options):
    """One of ``options`` (compared with ``==``; strings must match exactly)."""
    for option in options:
        if type(value) is type(option) and value == option:
            return option
    listing = ", ".join(f'"{option}"' if isinstance(option, str) else repr(option) for option in options)
    raise invalid(name, f"one of {listing}", value)


def _one_ord(value):
    key = value.lower() if isinstance(value, str) else value
    if isinstance(key, str):
        return ORD_SPELLINGS.get(key)
    if not is_number(key):
        return None
    if key == np.inf:
        return np.inf
    return ORD_SPELLINGS.get(key) if float(key).is_integer() else None


def ords(value, name="ord", allowed=(1, np.inf), multiple=True):
    """The one ``ord`` parser: ``1``, ``2``, ``numpy.inf`` and their spellings, as a tuple of distinct ords.

    Accepted spellings: the numbers ``1``, ``2``, ``numpy.inf`` (``float("inf")``)
    and the strings ``"1"``, ``"2"``, ``"l1"``, ``"l2"``, ``"inf"``,
    ``"linf"``, ``"l_inf"``, ``"numpy.inf"`` (any case). With ``multiple``, a
    list or tuple of them too.
    """
    names = {1: "1", 2: "2", np.inf: "numpy.inf"}
    expected = f"one of {', '.join(names[a] for a in allowed)} (or 'inf')"
    if multiple:
        expected += ", or a list of them"
    values = list(value) if multiple and isinstance(value, (list, tuple)) else [value]
    result = []
    for item in values:
        parsed = _one_ord(item)
        if parsed is None or parsed not in allowed:
            raise invalid(name, expected, value)
        if parsed not in result:
            result.append(parsed)
    if not result:
        raise invalid(name, expected, value)
    return tuple(result)


def single_ord(value, name="ord", allowed=(1, 2, np.inf)):
    """One ``ord`` (same spellings as :func:`ords`)."""
    return ords(value, name, allowed, multiple=False)[0]


def ords_to_config(values):
    """JSON-safe form of a tuple of ords (``numpy.inf`` becomes ``"inf"``)."""
    as_json = ["inf" if o == np.inf else int(o) for o in values]
    return as_json[0] if len(as_json) == 1 else as_json


def ord_name(ord):
    """``1 -> "l1"``, ``2 -> "l2"``, ``inf -> "linf"``."""
    return "linf" if ord == np.inf else f"l{int(ord)}"
