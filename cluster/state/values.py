"""The state store's value objects and pure helpers, shared by the interface and both back ends:
histogram summaries (nearest-rank percentiles), strict JSON encoding, TTLs, redacted URLs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import urllib.parse
from fractions import Fraction

from cluster.exceptions import InputError
from solvers import validate

DEFAULT_HISTOGRAM_CAP = 10_000
"""How many of its newest samples a histogram keeps for percentiles."""


def percentile_nearest_rank(sorted_samples: list[float], p: float) -> float:
    """The nearest-rank ``p``-th percentile of ascending ``sorted_samples``.

    For ``n`` samples ``x_(1) <= ... <= x_(n)`` it is ``x_(k)`` with
    ``k = max(1, ceil(p/100 * n))``: the smallest sample such that at least ``p`` percent of the
    samples are at most it. It is always one of the samples (no interpolation). It is numpy's
    ``percentile(..., method="inverted_cdf")`` except where numpy's float rank ``n * (p/100)``
    rounds just above a whole number (``100 * 0.07``) and numpy takes the next sample.
    """
    if not sorted_samples:
        raise InputError("percentile of no samples: observe at least one value first")
    if not 0 < p <= 100:
        raise InputError(f"percentile p={p!r} is out of range; allowed: 0 < p <= 100")
    n = len(sorted_samples)
    # The rank in exact rationals, p taken as written (99.9 is 999/10, not the double nearest
    # it): float arithmetic can nudge a whole rank up by one (0.07 * 100 == 7.000000000000001).
    exact_p = Fraction(p) if isinstance(p, int) else Fraction(repr(float(p)))
    k = max(1, math.ceil(exact_p * n / 100))
    return sorted_samples[k - 1]


@dataclasses.dataclass(frozen=True, slots=True)
class HistogramSummary:
    """What a histogram has seen.

    ``count``, ``sum``, ``min`` and ``max`` are exact running aggregates over every observation
    (``sum`` is the left-to-right float sum, the same on both back ends); ``mean = sum / count``.
    The percentiles are nearest-rank (:func:`percentile_nearest_rank`) over the newest
    ``histogram_cap`` samples (10,000 by default), so they describe recent behaviour once a
    histogram has seen more than that. With ``count == 0`` every field but ``count`` and ``sum``
    is ``None``.
    """

    count: int
    sum: float
    min: float | None
    max: float | None
    mean: float | None
    p50: float | None
    p90: float | None
    p99: float | None

    def __post_init__(self) -> None:
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 0:
            raise InputError(f"HistogramSummary.count={self.count!r}; allowed: an int >= 0")
        rest = {f: getattr(self, f) for f in ("min", "max", "mean", "p50", "p90", "p99")}
        if self.count == 0:
            if self.sum != 0 or any(v is not None for v in rest.values()):
                raise InputError(
                    f"HistogramSummary with count=0 must have sum=0 and no min/max/mean/"
                    f"percentiles; got sum={self.sum!r}, {rest}"
                )
            return
        missing = [f for f, v in rest.items() if v is None]
        if missing:
            raise InputError(f"HistogramSummary with count={self.count} lacks {missing}")
        order = (self.min, self.p50, self.p90, self.p99, self.max)
        if any(a > b for a, b in zip(order, order[1:])):
            raise InputError(
                "HistogramSummary must have min <= p50 <= p90 <= p99 <= max; got "
                f"min={self.min}, p50={self.p50}, p90={self.p90}, p99={self.p99}, max={self.max}"
            )

    @classmethod
    def from_parts(
        cls, count: int, total: float, lo: float | None, hi: float | None, samples: list[float]
    ) -> HistogramSummary:
        """Build a summary from running aggregates and the retained samples (any order)."""
        if count == 0:
            return cls(0, 0.0, None, None, None, None, None, None)
        ordered = sorted(samples)
        return cls(
            count=count,
            sum=total,
            min=lo,
            max=hi,
            mean=total / count,
            p50=percentile_nearest_rank(ordered, 50),
            p90=percentile_nearest_rank(ordered, 90),
            p99=percentile_nearest_rank(ordered, 99),
        )


def redact_url(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***`` (user name and the rest kept).

    A string that is not a URL but has an ``@`` loses everything before its last ``@``, in case
    that part is a password typed without the ``scheme://``.
    """
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        if "@" in url and not parts.netloc:
            return "***@" + url.rpartition("@")[2]
        return url
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{hostinfo}"))


def _check_name(value: object, field: str) -> str:
    """A non-empty string identifier (device id, request id, plan or metric name)."""
    return validate.name(field, value)


def _check_number(value: object, field: str) -> float:
    """A finite real number (bools refused), as a float."""
    return validate.real(field, value)


def _ttl_ms(ttl_s: object) -> int:
    """A TTL in seconds as whole milliseconds (at least 1), the resolution Redis keeps."""
    ttl = _check_number(ttl_s, "ttl_s")
    if ttl <= 0:
        raise InputError(f"ttl_s must be > 0 seconds; got {ttl_s!r}")
    return max(1, round(ttl * 1000))


def _find_non_json(value: object, path: str, active: set[int]) -> str | None:
    """The first reason ``value`` is not strict JSON, naming its path, or None if it is."""
    if value is None or isinstance(value, (bool, int, str)):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{path} is {value!r}, not a finite number"
    if isinstance(value, (dict, list, tuple)):
        if id(value) in active:
            return f"{path} contains itself (a reference cycle)"
        active.add(id(value))
        try:
            if isinstance(value, dict):
                for key, item in value.items():
                    if not isinstance(key, str):
                        kind = type(key).__name__
                        return f"{path} has key {key!r} of type {kind}; keys must be str"
                    found = _find_non_json(item, f"{path}[{key!r}]", active)
                    if found:
                        return found
            else:
                for i, item in enumerate(value):
                    found = _find_non_json(item, f"{path}[{i}]", active)
                    if found:
                        return found
        finally:
            active.discard(id(value))
        return None
    return f"{path} is a {type(value).__name__} ({value!r:.60})"


def _to_json(value: object, field: str) -> str:
    """``value`` (a dict) as strict JSON; InputError naming the offending field otherwise."""
    if not isinstance(value, dict):
        raise InputError(f"{field} must be a dict (a JSON object); got {type(value).__name__}")
    problem = _find_non_json(value, field, set())
    if problem:
        raise InputError(
            f"{problem}; {field} must be JSON: dicts with str keys, lists, str, int, finite "
            "float, bool, None"
        )
    return json.dumps(value, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
