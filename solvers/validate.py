"""The project's field validators: one place that checks a number, an integer, a name or a choice.

Each returns the value normalised (a float, an int, a str) or raises ``error`` (an
:class:`~solvers.exceptions.InputError` subclass, by default ``InputError`` itself) with one message
shape: ``"<field>: expected <what is allowed>, got <value>"``. Bools are never numbers; numpy
scalars are.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

from solvers.exceptions import InputError, did_you_mean


def is_real(value: Any) -> bool:
    """A finite real number (ints, floats, numpy scalars; not bools)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _bound_text(lo: float, hi: float, lo_open: bool, hi_open: bool) -> str:
    parts = []
    if lo != -math.inf:
        parts.append(f"{'>' if lo_open else '>='} {lo:g}")
    if hi != math.inf:
        parts.append(f"{'<' if hi_open else '<='} {hi:g}")
    return " and ".join(parts)


def real(field: str, value: Any, *, lo: float = -math.inf, hi: float = math.inf, lo_open: bool = False,
         hi_open: bool = False, allow_none: bool = False, error: type[InputError] = InputError) -> float | None:
    """``value`` as a float when it is a finite number within the bounds (``None`` when allowed)."""
    if value is None and allow_none:
        return None
    ok = is_real(value)
    if ok:
        v = float(value)
        ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        bounds = _bound_text(lo, hi, lo_open, hi_open)
        what = "a finite number" + (f" {bounds}" if bounds else "") + (" or None" if allow_none else "")
        raise error(f"{field}: expected {what}, got {value!r:.80}")
    return float(value)


def integer(field: str, value: Any, *, minimum: int | None = None, maximum: int | None = None,
            error: type[InputError] = InputError) -> int:
    """``value`` as an int when it is an integer (not a bool) within ``[minimum, maximum]``."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if ok:
        ok = (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
    if not ok:
        rng = " and ".join(p for p in ((f">= {minimum}" if minimum is not None else ""),
                                        (f"<= {maximum}" if maximum is not None else "")) if p)
        raise error(f"{field}: expected an integer{' ' + rng if rng else ''}, got {value!r:.80}")
    return int(value)


def name(field: str, value: Any, *, max_len: int | None = None, error: type[InputError] = InputError) -> str:
    """A non-empty string (an id or a name), at most ``max_len`` characters."""
    if not isinstance(value, str) or not value or (max_len is not None and len(value) > max_len):
        limit = f" of at most {max_len} characters" if max_len is not None else ""
        raise error(f"{field}: expected a non-empty string{limit}, got {value!r:.80}")
    return value


def choice(field: str, value: Any, allowed: Iterable[str], *, error: type[InputError] = InputError) -> str:
    """One of ``allowed`` (exact match), with a did-you-mean hint when it is not."""
    allowed = tuple(allowed)
    if not isinstance(value, str) or value not in allowed:
        hint = did_you_mean(value, allowed) if isinstance(value, str) else ""
        raise error(f"{field}: {value!r:.80} is not allowed{hint}; allowed: {', '.join(allowed)}")
    return value


__all__ = ["choice", "integer", "is_real", "name", "real"]
