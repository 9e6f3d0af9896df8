"""The Router's routing plan derived from an allocation plan (pure; no Ray, Redis or files).

The allocation solver (:mod:`solvers.allocation`) assigns each request-size bucket ``b = (i, j)``
(input-length bucket i x output-length bucket j of a :class:`~solvers.tables.BucketGrid`) to
device types in fractions ``x[b][t]`` (multiples of 1/F, summing to 1 over t). The Router
(:mod:`actors.router`) reads a routing plan ``{"buckets": [...], "source": ...}`` whose buckets it
scans in order, taking the first one that holds the request:

    bucket (i, j) -> {"max_input_tokens": in_edges[i], "max_output_tokens": out_edges[j],
                      "kinds": [t : x[b][t] > 0], "weights": {t: x[b][t]}}

listed in row-major order (i, then j). For a request of ``p`` input and ``o`` output tokens the
first match is then exactly ``BucketGrid.bucket_of(p, o)``: the smallest i with ``p <= in_edges[i]``
and, inside that row, the smallest j with ``o <= out_edges[j]``. The last input edge and the last
output edge are written as "no bound" (keys absent), so longer requests land in the last row /
column, as ``bucket_of`` clamps them. Inside a bucket the Router sends each kind the share
``weights[t]`` of the bucket's requests (smooth weighted round robin), then picks the least-loaded
replica of that kind.

Buckets of weight 0 carry no traffic in the solved workload, so the plan assigns them nothing; a
request of that size may still come, and goes to every kind the plan provisions (``counts[t] > 0``)
in proportion to ``counts`` (the fleet's shape). A plan with no device at all (total rate 0) cannot
route and raises :class:`~cluster.exceptions.InputError`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from solvers.exceptions import InputError

#: Digits kept in a weight (fractions are multiples of 1/F; this only trims float noise).
WEIGHT_DIGITS = 9


def _bucket_key(key: Any) -> tuple[int, int]:
    """``(i, j)`` from an AllocationPlan key (a tuple) or its to_json() key ``"i,j"``."""
    if isinstance(key, tuple) and len(key) == 2 and all(isinstance(x, int) for x in key):
        return key
    if isinstance(key, str):
        a, sep, b = key.partition(",")
        if sep and a.strip().isdigit() and b.strip().isdigit():
            return int(a), int(b)
    raise InputError(f"plan.assignment: bucket key {key!r}; expected (i, j) or 'i,j'")


def _parts(plan: Any) -> tuple[dict[str, int], dict[tuple[int, int], dict[str, float]]]:
    counts = getattr(plan, "counts", None)
    assignment = getattr(plan, "assignment", None)
    if counts is None and isinstance(plan, Mapping):
        counts, assignment = plan.get("allocation"), plan.get("assignment")
    if not isinstance(counts, Mapping) or not isinstance(assignment, Mapping):
        raise InputError(
            f"plan: expected an AllocationPlan or its to_json() dict (allocation, assignment), got {type(plan).__name__}"
        )
    out: dict[tuple[int, int], dict[str, float]] = {}
    for key, shares in assignment.items():
        b = _bucket_key(key)
        if not isinstance(shares, Mapping) or not shares:
            raise InputError(f"plan.assignment[{key!r}]: expected {{kind: fraction > 0}}, got {shares!r}")
        for kind, x in shares.items():
            if not isinstance(kind, str) or isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 < x <= 1 + 1e-9:
                raise InputError(f"plan.assignment[{key!r}][{kind!r}] = {x!r}; allowed: a fraction in (0, 1]")
        out[b] = {k: float(v) for k, v in shares.items()}
    return {k: int(v) for k, v in counts.items()}, out


def _weights(shares: Mapping[str, float]) -> dict[str, float]:
    total = sum(shares.values())
    return {k: round(v / total, WEIGHT_DIGITS) for k, v in sorted(shares.items()) if v > 0}


def routing_plan(plan: Any, in_edges: Sequence[int], out_edges: Sequence[int], *, source: str = "allocation") -> dict[str, Any]:
    """The Router's plan for an AllocationPlan (or its to_json() dict) solved on the grid
    ``(in_edges, out_edges)`` (see the module docstring for the mapping).

    Raises:
        InputError: a malformed plan, an assignment bucket outside the grid, or a plan that
            provisions no device.
    """
    counts, assignment = _parts(plan)
    n_in, n_out = len(in_edges), len(out_edges)
    if n_in == 0 or n_out == 0:
        raise InputError("grid: expected at least one input edge and one output edge")
    for i, j in assignment:
        if not (0 <= i < n_in and 0 <= j < n_out):
            raise InputError(f"plan.assignment: bucket ({i}, {j}) lies outside the {n_in} x {n_out} grid")
    fleet = {k: float(n) for k, n in counts.items() if n > 0}
    if not fleet:
        raise InputError("plan: it provisions no device (every count is 0), so it cannot route requests")
    buckets: list[dict[str, Any]] = []
    for i in range(n_in):
        for j in range(n_out):
            weights = _weights(assignment.get((i, j)) or fleet)
            b: dict[str, Any] = {"kinds": sorted(weights), "weights": weights}
            if i < n_in - 1:
                b["max_input_tokens"] = int(in_edges[i])
            if j < n_out - 1:
                b["max_output_tokens"] = int(out_edges[j])
            buckets.append(b)
    return {"buckets": buckets, "source": source}


__all__ = ["routing_plan"]
