"""Shared pieces of expert selection: subsets as bitmasks, the input error, a memoising counter.

Split out of :mod:`solvers.selection` so that :mod:`solvers.objectives` (the set functions) and
:mod:`solvers.selection` (the problem and its methods) can both use them without a cycle.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from solvers.exceptions import SolverError

#: Two objective values closer than this are equal (f values are means of scores in [0, 1]).
TOL = 1e-12

Objective = Callable[[int], float]


class SelectionInputError(SolverError, ValueError):
    """A malformed selection problem or objective input; names the field, value and allowed range."""


# ------------------------------------------------------------------------------------- helpers


def _finite_nonneg(name: str, value: object) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
    if not ok:
        raise SelectionInputError(f"{name}: expected a finite number >= 0, got {value!r}")
    return float(value)


def mask_of(indices: Sequence[int]) -> int:
    """Bitmask of a collection of expert indices."""
    m = 0
    for i in indices:
        m |= 1 << i
    return m


def members(mask: int) -> tuple[int, ...]:
    """Expert indices of a bitmask, ascending."""
    out = []
    i = 0
    while mask:
        if mask & 1:
            out.append(i)
        mask >>= 1
        i += 1
    return tuple(out)


class _Counter:
    """Memoises f on bitmasks and counts distinct evaluations."""

    __slots__ = ("f", "cache")

    def __init__(self, f: Objective) -> None:
        self.f = f
        self.cache: dict[int, float] = {}

    def __call__(self, mask: int) -> float:
        v = self.cache.get(mask)
        if v is None:
            v = float(self.f(mask))
            self.cache[mask] = v
        return v

    @property
    def count(self) -> int:
        return len(self.cache)


__all__ = ["TOL", "Objective", "SelectionInputError", "mask_of", "members"]
