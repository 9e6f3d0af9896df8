"""The router's pure decisions: which bucket of the routing plan a request falls in, and which
replica takes it. No Ray, no threads, no store: (replicas, plan bucket, request) -> replica, so
every routing rule is tested without a cluster (the threaded shell is :mod:`actors.router`).

Rule (:func:`choose_replica`): among the live replicas of the bucket's kinds (any live replica when
none of those kinds is alive: a *fallback*), those with a free slot (``active < capacity``); with
``weights``, smooth weighted round robin (:class:`WeightedTurns`) picks the kind first among the
kinds that have a free replica; then the least loaded (``active / capacity``) replica, ties broken
round-robin by ``turn``. No free replica: no choice (the caller waits).

The router's errors live here too, below every part that raises them: :class:`NoReplicaError`,
:class:`RouterClosedError`, :class:`DeadlineExceededError`, :class:`QueueFullError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from cluster.exceptions import CapacityError, FlotillaError, InputError


@dataclass
class Replica:
    """One ExpertActor the router may dispatch to."""

    device_id: str
    kind: str
    handle: Any
    capacity: int = 2
    active: int = 0
    alive: bool = True


def estimate_tokens(prompt: str, max_tokens: int) -> int:
    """The request-size estimate used for buckets: ``ceil(len(prompt) / 4) + max_tokens``."""
    return math.ceil(len(prompt) / 4) + max_tokens


def default_plan(kinds: list[str]) -> dict[str, Any]:
    """The round-robin plan: one bucket holding every kind."""
    return {"buckets": [{"kinds": sorted(set(kinds))}], "source": "round-robin"}


def validate_plan(plan: Any) -> dict[str, Any]:
    """Check a routing plan's shape (InputError naming the field)."""
    if not isinstance(plan, dict) or not isinstance(plan.get("buckets"), list) or not plan["buckets"]:
        raise InputError("plan.buckets: expected a non-empty list of {max_tokens?, kinds}")
    for i, b in enumerate(plan["buckets"]):
        if not isinstance(b, dict) or not isinstance(b.get("kinds"), list) or not all(isinstance(k, str) for k in b["kinds"]):
            raise InputError(f"plan.buckets[{i}].kinds: expected a list of device kinds")
        for key in ("max_tokens", "max_input_tokens", "max_output_tokens"):
            m = b.get(key)
            if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
                raise InputError(f"plan.buckets[{i}].{key}: expected an integer >= 1 or absent, got {m!r}")
        w = b.get("weights")
        if w is not None:
            ok = isinstance(w, dict) and w and all(
                k in b["kinds"] and not isinstance(v, bool) and isinstance(v, (int, float)) and 0 < v < math.inf
                for k, v in w.items())
            if not ok:
                raise InputError(f"plan.buckets[{i}].weights: expected {{kind of the bucket: share > 0}}, got {w!r}")
    return plan


def bucket_index(plan: dict[str, Any], input_tokens: int, output_tokens: int) -> int:
    """Index of the first bucket whose bounds hold for the request (the last one if none does)."""
    for n, b in enumerate(plan["buckets"]):
        m, mi, mo = b.get("max_tokens"), b.get("max_input_tokens"), b.get("max_output_tokens")
        if ((m is None or input_tokens + output_tokens <= m) and (mi is None or input_tokens <= mi)
                and (mo is None or output_tokens <= mo)):
            return n
    return len(plan["buckets"]) - 1


def kinds_for(plan: dict[str, Any], size: int) -> list[str]:
    """The kinds of the first bucket that takes a request of ``size`` tokens (the last if none);
    for plans that bound only ``max_tokens``."""
    for b in plan["buckets"]:
        m = b.get("max_tokens")
        if m is None or size <= m:
            return list(b["kinds"])
    return list(plan["buckets"][-1]["kinds"])


class WeightedTurns:
    """Smooth weighted round robin (nginx's): each pick adds every candidate's weight to its credit,
    takes the candidate with the most credit (ties: the first in order) and charges it the total.
    Over any run of picks among the same candidates, kind k is picked ``weights[k] / total`` of
    the time, within one pick."""

    def __init__(self) -> None:
        self._credit: dict[tuple[int, int, str], float] = {}

    def reset(self) -> None:
        self._credit.clear()

    def pick(self, key: tuple[int, int], weights: dict[str, float], candidates: list[str]) -> str:
        total = sum(weights[k] for k in candidates)
        best = None
        for k in candidates:
            c = self._credit.get((*key, k), 0.0) + weights[k]
            self._credit[(*key, k)] = c
            if best is None or c > self._credit[(*key, best)]:
                best = k
        assert best is not None  # candidates is non-empty
        self._credit[(*key, best)] -= total
        return best


@dataclass(frozen=True, slots=True)
class Choice:
    """What :func:`choose_replica` decided: ``replica`` (None when every candidate is busy) and
    whether the plan's kinds had no live replica (``fallback``: any live replica was eligible)."""

    replica: Replica | None
    fallback: bool


class NoReplicaError(FlotillaError):
    """No replica can serve the request (none alive, or every one died while serving it)."""


class RouterClosedError(NoReplicaError):
    """The router is shutting down; the request stays journaled for the next one to replay."""


class DeadlineExceededError(FlotillaError):
    """A request ran past its deadline (gRPC DEADLINE_EXCEEDED)."""


class QueueFullError(CapacityError):
    """The router already holds ``max_queue`` requests (gRPC RESOURCE_EXHAUSTED)."""


def choose_replica(replicas: list[Replica], bucket: dict[str, Any], key: tuple[int, int],
                   turns: WeightedTurns, turn: int) -> Choice:
    """The replica that takes a request of plan bucket ``bucket`` (see the module docstring).

    ``key`` identifies the (plan version, bucket) for the weighted turns; ``turn`` is a running
    counter for round-robin tie breaks. Raises :class:`NoReplicaError` when none is alive.
    """
    live = [r for r in replicas if r.alive]
    if not live:
        raise NoReplicaError("no live replica: every expert has died or none was started")
    kinds, weights = set(bucket["kinds"]), bucket.get("weights")
    pool = [r for r in live if r.kind in kinds]
    fallback = not pool
    if fallback:
        pool = live
    free = [r for r in pool if r.active < r.capacity]
    if free and weights and not fallback:
        ready = [k for k in bucket["kinds"] if k in weights and any(r.kind == k for r in free)]
        if ready:
            kind = turns.pick(key, weights, ready)
            free = [r for r in free if r.kind == kind]
    if not free:
        return Choice(None, fallback)
    best = min(free, key=lambda r: (r.active / r.capacity, (free.index(r) - turn) % len(free)))
    return Choice(best, fallback)
