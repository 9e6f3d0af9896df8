"""Set functions for expert selection, and a sampled check of their monotonicity.

An objective is a callable ``f(mask) -> float`` on subsets held as bitmasks
(:func:`solvers.selection_base.mask_of`). Three are built from a queries x experts score matrix
``s`` (``s[q, i]`` in [0, 1], e.g. 0/1 correctness):

:func:`oracle_objective`  f(S) = mean_q max_{i in S} s_{q,i} (0 for empty S); non-decreasing
                          (proven: a max over a larger set is no smaller). An upper bound, not
                          deployable: it needs the answers to route.
:func:`gate_objective`    f(S) = mean_q sum_{i in top_k(g_q, S)} g~_{q,i} s_{q,i}: the gate's top-k
                          experts inside S with weights renormalised over them; may decrease when
                          an expert is added (the gate may prefer a worse one).
:func:`routed_objective`  top-1 routing by a router's predicted scores ``p`` (the ``gate`` objective
                          with k = 1): each query goes to ONE expert, argmax_{i in S} p_{q,i}. When
                          ``p`` are out-of-fold predictions, f(S) estimates held-out accuracy.

Only ``oracle`` is proven non-decreasing. For the others :func:`monotonicity_violations` checks
f(S + i) >= f(S) on every pair when there are few, else on a seeded sample: a sample without
violations is evidence, not a proof ("monotonicity checked on a sample").
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from solvers.exceptions import did_you_mean
from solvers.selection_base import Objective, SelectionInputError, _Counter, members

#: Objective names understood by :func:`make_objective`.
OBJECTIVES = ("oracle", "gate")



def _check_scores(scores: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    s = np.asarray(scores, dtype=float)
    if s.ndim != 2 or s.shape[0] == 0 or s.shape[1] == 0:
        raise SelectionInputError(f"scores: expected a non-empty queries x experts matrix, got shape {s.shape}")
    if not np.all(np.isfinite(s)) or s.min() < 0 or s.max() > 1:
        q, i = np.argwhere(~np.isfinite(s) | (s < 0) | (s > 1))[0]
        raise SelectionInputError(f"scores[{q}][{i}]: expected a number in [0, 1], got {s[q, i]!r}")
    return s


def oracle_objective(scores: np.ndarray | Sequence[Sequence[float]]) -> Objective:
    """f(S) = mean over queries of max_{i in S} scores[q, i]; f(empty) = 0. Non-decreasing.

    0/1 scores are evaluated on bitsets (one Python int per expert, popcount of the OR), others
    with a numpy max over the selected columns.
    """
    s = _check_scores(scores)
    q, n = s.shape
    if np.all((s == 0) | (s == 1)):
        bits = []
        for i in range(n):
            col = s[:, i].astype(np.uint8)
            bits.append(int.from_bytes(np.packbits(col).tobytes(), "big"))  # same packing for all: OR/popcount agree

        def f_bits(mask: int) -> float:
            acc, i = 0, 0
            while mask:
                if mask & 1:
                    acc |= bits[i]
                mask >>= 1
                i += 1
            return acc.bit_count() / q

        return f_bits

    def f_dense(mask: int) -> float:
        idx = members(mask)
        return float(s[:, list(idx)].max(axis=1).mean()) if idx else 0.0

    return f_dense


def gate_objective(scores: np.ndarray | Sequence[Sequence[float]], gate: np.ndarray | Sequence[Sequence[float]],
                   top_k: int = 1) -> Objective:
    """f(S) = mean_q sum_{i in K_q(S)} g_{q,i} s_{q,i} / sum_{i in K_q(S)} g_{q,i}; f(empty) = 0.

    ``K_q(S)`` = the ``min(top_k, |S|)`` experts of S with the largest gate weight g_{q,i} (ties:
    lower index). The weights of the kept experts are renormalised to sum to 1 (uniform when they
    are all 0). Not monotone in general.
    """
    s = _check_scores(scores)
    g = np.asarray(gate, dtype=float)
    if g.shape != s.shape:
        raise SelectionInputError(f"gate: expected shape {s.shape} (like scores), got {g.shape}")
    if not np.all(np.isfinite(g)) or g.min() < 0:
        raise SelectionInputError("gate: weights must be finite and >= 0")
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise SelectionInputError(f"top_k: expected an integer >= 1, got {top_k!r}")
    n = s.shape[1]
    # rank experts per query by weight, ties to the lower index (stable sort of -g)
    order = np.argsort(-g, axis=1, kind="stable")

    def f_gate(mask: int) -> float:
        idx = members(mask)
        if not idx:
            return 0.0
        inside = np.zeros(n, dtype=bool)
        inside[list(idx)] = True
        k = min(top_k, len(idx))
        in_order = inside[order]  # queries x n: whether the r-th ranked expert is in S
        ranks = np.cumsum(in_order, axis=1)
        keep_sorted = in_order & (ranks <= k)
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=1)
        w = np.where(keep, g, 0.0)
        tot = w.sum(axis=1, keepdims=True)
        w = np.where(tot > 0, w / np.where(tot > 0, tot, 1.0), keep / k)
        return float((w * s).sum(axis=1).mean())

    return f_gate


def make_objective(name: str, scores, gate=None, top_k: int = 1) -> Objective:
    """``oracle`` or ``gate`` (which needs ``gate``)."""
    if name == "oracle":
        return oracle_objective(scores)
    if name == "gate":
        if gate is None:
            raise SelectionInputError("gate: objective 'gate' needs a gate matrix (queries x experts)")
        return gate_objective(scores, gate, top_k)
    raise SelectionInputError(f"objective: unknown objective {name!r}{did_you_mean(str(name), OBJECTIVES)}; "
                              f"allowed: {', '.join(OBJECTIVES)}")


def routed_objective(scores: np.ndarray | Sequence[Sequence[float]],
                     predicted: np.ndarray | Sequence[Sequence[float]]) -> Objective:
    """f(S) = mean_q s[q, argmax_{i in S} p[q, i]] (ties: lower index); f(empty) = 0.

    One expert per query: the one with the largest predicted score inside S. Same values as
    ``gate_objective(scores, predicted, top_k=1)`` (which it is), for predictions that need not sum
    to 1 (e.g. per-expert probabilities of being correct).
    """
    return gate_objective(scores, predicted, top_k=1)


# --------------------------------------------------------------------------------- monotonicity


@dataclass(frozen=True, slots=True)
class MonotonicityReport:
    """Pairs (S, i) checked and those with f(S + i) < f(S) - tol (worst drop first, at most 20 kept)."""

    pairs_checked: int
    violations: int
    exhaustive: bool
    worst: tuple[tuple[tuple[int, ...], int, float], ...]

    @property
    def monotone(self) -> bool:
        return self.violations == 0

    @property
    def violation_rate(self) -> float:
        return self.violations / self.pairs_checked if self.pairs_checked else 0.0


def monotonicity_violations(f: Objective, n: int, *, max_pairs: int = 20_000, seed: int = 0,
                            tol: float = 1e-12) -> MonotonicityReport:
    """Check f(S ∪ {i}) >= f(S) on every pair (S, i not in S) when there are at most ``max_pairs``
    (``n 2^(n-1)`` pairs), else on ``max_pairs`` pairs drawn at random (seeded)."""
    if not isinstance(n, int) or n < 1:
        raise SelectionInputError(f"n: expected an integer >= 1, got {n!r}")
    total = n * (1 << (n - 1))
    ev = _Counter(f)
    drops: list[tuple[tuple[int, ...], int, float]] = []
    if total <= max_pairs:
        pairs = ((mask, i) for mask in range(1 << n) for i in range(n) if not mask >> i & 1)
        exhaustive = True
    else:
        rng = random.Random(seed)

        def draw():
            for _ in range(max_pairs):
                i = rng.randrange(n)
                mask = rng.getrandbits(n) & ~(1 << i)
                yield mask, i
        pairs = draw()
        exhaustive = False
    checked = 0
    for mask, i in pairs:
        checked += 1
        d = ev(mask | 1 << i) - ev(mask)
        if d < -tol:
            drops.append((members(mask), i, d))
    drops.sort(key=lambda x: x[2])
    return MonotonicityReport(pairs_checked=checked, violations=len(drops), exhaustive=exhaustive,
                              worst=tuple(drops[:20]))


__all__ = ["OBJECTIVES", "MonotonicityReport", "gate_objective", "make_objective", "monotonicity_violations",
           "oracle_objective", "routed_objective"]
