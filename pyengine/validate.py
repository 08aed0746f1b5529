"""Option checks: the one home of "is this value acceptable" for options and configs.

Every check raises :class:`pyengine.errors.ConfigError` with the project's
one-line message ``WHAT VALUE is not accepted; WHAT IS ACCEPTED``, where
``WHAT`` names the option as the user wrote it (``--size``, ``detect source:
minimum area``) and ``VALUE`` is its ``repr``.  Callers pass their own
``accepted`` phrase where a default one would say less (units, the reason for a
bound).

Booleans are never numbers here (``True`` is an ``int`` to Python, not a
tile size to a user), and numbers must be finite.  The predicates
:func:`is_int` and :func:`is_number` accept Python numbers only, for callers
that keep the value as given (a config that goes to JSON); :func:`integer`
and :func:`number` also accept NumPy scalars, since they return Python ones.

This is a leaf module (it imports only :mod:`pyengine.errors`, and NumPy).
Thread safety: pure functions.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import NoReturn

from pyengine.errors import ConfigError

__all__ = ["choice", "integer", "is_int", "is_number", "need", "number", "reject"]


def is_int(value) -> bool:
    """A Python int, not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A finite Python int or float, not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _real(value) -> bool:
    """A finite real number, Python or NumPy, not a bool.  (``numpy.bool_`` is not a
    ``numbers.Real``, so only Python's bool needs excluding; no NumPy import here keeps
    ``pyengine --help`` free of it.)"""
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value))


def reject(what: str, value, accepted: str) -> NoReturn:
    """Raise the one-line ConfigError: ``WHAT VALUE is not accepted; ACCEPTED``."""
    raise ConfigError(f"{what} {value!r} is not accepted; {accepted}")


def need(ok: bool, what: str, value, accepted: str) -> None:
    """:func:`reject` unless ``ok``."""
    if not ok:
        reject(what, value, accepted)


def integer(value, what: str, lo: int | None = None, hi: int | None = None, *,
            accepted: str | None = None, whole_floats: bool = False) -> int:
    """``value`` as an int when it is an integer (Python or NumPy; with ``whole_floats``
    also a float equal to one, ``8.0``) in ``lo..hi`` (either bound may be None)."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok and whole_floats:
        ok = _real(value) and value == int(value)
    if ok:
        ok = (lo is None or int(value) >= lo) and (hi is None or int(value) <= hi)
    if not ok:
        if accepted is None:
            accepted = ("an integer is needed" if lo is None and hi is None
                        else f"an integer >= {lo} is needed" if hi is None
                        else f"an integer <= {hi} is needed" if lo is None
                        else f"an integer {lo}..{hi} is needed")
        reject(what, value, accepted)
    return int(value)


def number(value, what: str, lo: float | None = None, hi: float | None = None, *,
           lo_open: bool = False, hi_open: bool = False, accepted: str | None = None,
           allow_none: bool = False) -> float | None:
    """``value`` as a float when it is a finite number within the bounds (closed unless
    ``lo_open``/``hi_open``; either bound may be None); None for None if ``allow_none``."""
    if value is None and allow_none:
        return None
    ok = _real(value)
    if ok:
        v = float(value)
        ok = ((lo is None or (v > lo if lo_open else v >= lo))
              and (hi is None or (v < hi if hi_open else v <= hi)))
    if not ok:
        if accepted is None:
            left = "" if lo is None else ("(" if lo_open else "[") + f"{lo:g}"
            right = "" if hi is None else f"{hi:g}" + (")" if hi_open else "]")
            accepted = ("a finite number is needed" if lo is None and hi is None
                        else f"a number in {left or '(-inf'}, {right or 'inf)'} is needed")
        reject(what, value, accepted)
    return float(value)


def choice(value, what: str, choices: Iterable):
    """``value`` when it is one of ``choices``; else ``... accepted: a, b, c``."""
    choices = tuple(choices)
    if value not in choices:
        reject(what, value, f"accepted: {', '.join(map(str, choices))}")
    return value
