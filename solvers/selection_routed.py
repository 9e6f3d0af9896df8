"""Expert selection when each query goes to ONE expert: every subset scored at once.

With top-1 routing, a subset S's accuracy, energy and latency are means over the queries of the
routed expert's figures, r_q(S) = argmax_{i in S} p[q, i] for a router's scores p. That energy is
not additive (not a knapsack) and not down-closed (dropping an expert can push queries onto a
dearer one), so the branch-and-bound of :mod:`solvers.selection` does not apply; instead all
2^n - 1 non-empty subsets are scored in one depth-first walk (:func:`routed_table`) and each budget
is a lookup (:meth:`RoutedTable.best`). Re-exported by :mod:`solvers.selection`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from solvers.selection_base import TOL, SelectionInputError, _finite_nonneg


@dataclass(frozen=True, slots=True)
class RoutedTable:
    """Every non-empty subset S of n experts under one-expert-per-query routing.

    Index ``mask - 1`` (masks 1 .. 2^n - 1). ``accuracy[m]`` = mean_q s[q, r_q(S)],
    ``energy[m]`` = mean_q e[q, r_q(S)], ``latency[m]`` = mean_q t[q, r_q(S)], where
    r_q(S) = argmax_{i in S} p[q, i] (ties: lower index) is the expert query q is routed to.
    """

    n: int
    accuracy: np.ndarray
    energy: np.ndarray
    latency: np.ndarray

    def best(self, energy_budget: float | None = None, allowed: int | None = None) -> int:
        """The mask with the largest accuracy among those with ``energy <= energy_budget`` and inside
        ``allowed`` (ties: smaller energy, then smaller mask); 0 when none fits."""
        masks = np.arange(1, 1 << self.n)
        ok = np.ones(len(masks), dtype=bool)
        if energy_budget is not None:
            _finite_nonneg("energy_budget", energy_budget)
            ok &= self.energy <= energy_budget + TOL
        if allowed is not None:
            ok &= (masks & ~allowed) == 0
        if not ok.any():
            return 0
        idx = np.flatnonzero(ok)
        acc = np.round(self.accuracy[idx], 12)
        order = np.lexsort((masks[idx], self.energy[idx], -acc))
        return int(masks[idx[order[0]]])


def routed_table(scores, predicted, energy, latency=None, *, max_experts: int = 16) -> RoutedTable:
    """Score all 2^n - 1 non-empty subsets when each query goes to ONE expert (module docstring).

    ``scores`` (Q x n, in [0, 1]): what the routed expert earns (0/1 correctness). ``predicted``
    (Q x n): the router's score per expert, e.g. out-of-fold predictions, so the accuracy is a held-out
    estimate. ``energy`` and ``latency`` (Q x n, >= 0, or length-n vectors): cost of expert i on
    query q. A depth-first walk over subsets updates the routed expert of every query with one
    comparison per added expert: O(2^n Q) work, about 4 s for n = 14, Q = 9,500 on a shared 2-vCPU VM.
    """
    s = np.asarray(scores, dtype=float)
    if s.ndim != 2 or s.size == 0:
        raise SelectionInputError(f"scores: expected a non-empty queries x experts matrix, got shape {s.shape}")
    q, n = s.shape
    if not 1 <= n <= max_experts:
        raise SelectionInputError(f"scores: expected 1 to {max_experts} experts (2^n subsets are scored), got {n}")
    if not np.all(np.isfinite(s)) or s.min() < 0 or s.max() > 1:
        raise SelectionInputError("scores: expected numbers in [0, 1]")
    p = np.asarray(predicted, dtype=float)
    if p.shape != s.shape or not np.all(np.isfinite(p)):
        raise SelectionInputError(f"predicted: expected a finite matrix of shape {s.shape}, got {p.shape}")

    def cost(name, v):
        if v is None:
            return np.zeros_like(s)
        a = np.asarray(v, dtype=float)
        if a.ndim == 1:
            a = np.broadcast_to(a, s.shape)
        if a.shape != s.shape or not np.all(np.isfinite(a)) or a.min() < 0:
            raise SelectionInputError(f"{name}: expected finite numbers >= 0, shape ({n},) or {s.shape}")
        return a

    e, t = cost("energy", energy), cost("latency", latency)
    # rank[q, i]: position of expert i in query q's preference (0 = most preferred; ties: lower index)
    order = np.argsort(-p, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(n)[None, :].repeat(q, 0), axis=1)
    rows = np.arange(q)
    m = (1 << n) - 1
    acc, en, lat = np.zeros(m), np.zeros(m), np.zeros(m)
    routed0 = np.zeros(q, dtype=np.int64)
    best0 = np.full(q, n, dtype=np.int64)
    stack = [(0, 0, routed0, best0)]
    while stack:
        start, mask, routed, best = stack.pop()
        for i in range(start, n):
            better = rank[:, i] < best
            r = np.where(better, i, routed)
            b = np.where(better, rank[:, i], best)
            new = mask | 1 << i
            acc[new - 1] = s[rows, r].mean()
            en[new - 1] = e[rows, r].mean()
            lat[new - 1] = t[rows, r].mean()
            if i + 1 < n:
                stack.append((i + 1, new, r, b))
    return RoutedTable(n, acc, en, lat)


__all__ = ["RoutedTable", "routed_table"]
