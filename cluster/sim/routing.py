"""The simulated router: which replica takes each request. Pure; shared by both engines.

This re-implements the rule of :mod:`actors.routing` (layer 3, which the cluster foundation may
not import) on the routing plan of :func:`solvers.routing.routing_plan`, adapted to a simulator
that dispatches every request when it arrives (replicas queue it inside their engine; the real
router holds it centrally until a slot frees):

1. bucket: the first plan bucket whose ``max_tokens`` / ``max_input_tokens`` /
   ``max_output_tokens`` bounds hold (the last when none does), as ``actors.routing.bucket_index``;
2. kind: with ``weights``, smooth weighted round robin (nginx's, as ``actors.routing.WeightedTurns``)
   among the bucket's kinds that have replicas in the fleet; without weights every bucket kind's
   replica is a candidate; when none of the bucket's kinds is in the fleet, every replica is
   (the real router's *fallback*);
3. replica: the least loaded candidate, load = outstanding requests / ``slots``, ties broken
   round-robin by a running ``turn`` counter (the candidate at position ``turn mod n`` first).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from cluster.exceptions import InputError


class Router:
    """Routing state for one simulation run (weighted-turn credits and the ``turn`` counter)."""

    def __init__(self, kinds: Sequence[str], slots: Sequence[int], plan: dict[str, Any] | None = None,
                 active: Sequence[int] | None = None) -> None:
        """``kinds`` and ``slots`` of every replica; ``active``: the indices that may take requests
        (all when None; an autoscaled fleet routes only to its provisioned replicas)."""
        self.kinds = list(kinds)
        self.slots = [float(x) for x in slots]
        if plan is None:
            plan = {"buckets": [{"kinds": sorted(set(self.kinds))}], "source": "least loaded"}
        buckets = plan.get("buckets") if isinstance(plan, dict) else None
        if not isinstance(buckets, list) or not buckets:
            raise InputError("plan.buckets: expected a non-empty list of {max_*_tokens?, kinds, weights?}")
        self.buckets = buckets
        everyone = sorted(set(range(len(self.kinds)) if active is None else active))
        if not everyone:
            raise InputError("fleet: no replica to route to")
        by_kind: dict[str, list[int]] = {}
        for i in everyone:
            by_kind.setdefault(self.kinds[i], []).append(i)
        self._by_kind = by_kind
        # per bucket: (kind list with replicas, weights) or a fixed candidate array
        self._choice: list[tuple[list[str], list[float]] | list[int]] = []
        for n, b in enumerate(buckets):
            if not isinstance(b, dict) or not isinstance(b.get("kinds"), list):
                raise InputError(f"plan.buckets[{n}].kinds: expected a list of device kinds")
            present = [k for k in b["kinds"] if k in by_kind]
            w = b.get("weights")
            if present and isinstance(w, dict) and any(k in w for k in present):
                ks = [k for k in present if k in w]
                self._choice.append((ks, [float(w[k]) for k in ks]))
            elif present:
                self._choice.append(sorted(i for k in present for i in by_kind[k]))
            else:
                self._choice.append(everyone)
        self._credit = [[0.0] * (len(c[0]) if isinstance(c, tuple) else 0) for c in self._choice]
        self.turn = 0

    def buckets_of(self, input_len: np.ndarray, output_len: np.ndarray) -> np.ndarray:
        """The plan bucket of every request (vectorised ``bucket_index``)."""
        n = len(input_len)
        out = np.full(n, len(self.buckets) - 1, dtype=np.int64)
        for k in range(len(self.buckets) - 1, -1, -1):  # later buckets first; the first match wins
            b = self.buckets[k]
            ok = np.ones(n, dtype=bool)
            if b.get("max_tokens") is not None:
                ok &= input_len + output_len <= b["max_tokens"]
            if b.get("max_input_tokens") is not None:
                ok &= input_len <= b["max_input_tokens"]
            if b.get("max_output_tokens") is not None:
                ok &= output_len <= b["max_output_tokens"]
            out[ok] = k
        return out

    def candidates(self, bucket: int) -> list[int]:
        """Replica indices that may take a request of ``bucket`` (one kind by weighted turns)."""
        c = self._choice[bucket]
        if not isinstance(c, tuple):
            return c
        kinds, weights = c
        if len(kinds) == 1:
            return self._by_kind[kinds[0]]
        credit = self._credit[bucket]
        best = 0
        for i, w in enumerate(weights):
            credit[i] += w
            if credit[i] > credit[best]:
                best = i
        credit[best] -= sum(weights)
        return self._by_kind[kinds[best]]

    def pick(self, cands: list[int], outstanding: Sequence[int]) -> int:
        """The least loaded candidate (ties: round robin by ``turn``); advances ``turn``."""
        n = len(cands)
        turn = self.turn
        self.turn = turn + 1
        if n == 1:
            return cands[0]
        start = turn % n
        slots = self.slots
        best, low = cands[start], math.inf
        for i in (cands[start:] + cands[:start]) if start else cands:
            load = outstanding[i] / slots[i]
            if load < low:
                best, low = i, load
        return best


__all__ = ["Router"]
