"""Shard placement for context-parallel prefill: which devices, which strategy, whose share.

Pure (numpy only): plain numbers in, a :class:`ShardPlacement` out. Every figure it produces is
**modeled**, never measured.

Inputs
------
A prompt of ``N`` tokens; a model (:class:`ShardModel`): ``Lyr`` layers, ``H`` query heads,
``Hkv`` key/value heads of dim ``d``, ``F`` linear FLOPs per token (``2 x`` matmul parameters),
``W`` weight bytes, ``s`` bytes per activation/KV element, hidden size ``h``, MLP width ``m``;
candidate devices (:class:`ShardDevice`) ``i`` with free memory ``M_i`` bytes, link ``B_i`` bytes/s,
effective ``Phi_i`` FLOP/s and memory bandwidth ``R_i`` bytes/s, power ``P_i`` W; budgets.

Decision
--------
A non-empty subset ``S`` of the devices, a strategy ``k`` in ring, zigzag, ulysses, hybrid
(``single`` when ``|S| = 1``) and integer shares ``n_i >= 1`` (``i`` in ``S``), ``sum n_i = N``.

Model (per device, linear pieces in its own share ``n``)
--------------------------------------------------------
``kv = 2 Lyr Hkv d s`` bytes of K/V per token; ``a = 4 Lyr H d`` attention FLOPs per
query-key pair; ``rho_k`` visible keys per query row: ``(N + 1) / 2`` for the balanced causal
layouts (zigzag, ulysses, hybrid, single) and ``N`` for the contiguous ring, whose lock-step
steps wait for the rank that sees every key (the known 2x of an unbalanced causal ring)::

    compute  c_i(n) = max( n (F + a rho_k) / Phi_i ,  (W + n kv) / R_i )       (roofline)
    ring, zigzag:   T_i(n) = max( c_i(n),  kv (N - n) / B_i )       K/V of the others, overlapped
    ulysses (|S| = u):  T_i(n) = c_i(n) + Lyr n (2H + 2Hkv) d s (u-1)/u / B_i   two all-to-alls
    hybrid (groups of u, g = |S|/u rings):
                    T_i(n) = max( c_i(n) + Lyr n (2H + 2Hkv) d s (u-1)/u / B_i ,
                                  kv (N/u - n) / B_i )
    memory   m_i(n) = W + n (kv + e_k) <= M_i,   e_k the live bytes per row of one layer:
                    (2h + 2m + (H + 2Hkv) d) s, plus 4 Hkv d s (two K/V ring buffers) for the
                    ring layouts, plus (2H + 2Hkv) d s (head-sharded q, k, v, out) for Ulysses.

Latency ``T = max_{i in S} T_i(n_i)`` (makespan); energy ``E = T sum_{i in S} P_i`` (every chosen
device powered for the makespan). Objective ``latency``: min ``T`` subject to ``T <= T_budget``
and ``E <= E_budget`` (when given); ``energy``: min ``E`` subject to the same budgets.

Solution method (exact over the integers)
-----------------------------------------
Each ``T_i`` is a maximum of linear functions of ``n`` (convex piecewise linear), so
``{n : T_i(n) <= T, 1 <= n <= cap_i}`` is an integer interval ``[lo_i(T), hi_i(T)]``:
``hi = min floor((T - alpha)/beta)`` over the rising pieces ``alpha + beta n`` (``beta > 0``),
``lo = max ceil((T - alpha)/beta)`` over the falling ones, ``cap_i`` from the memory bound. A
subset reaches makespan ``T`` iff every interval is non-empty and
``sum lo_i <= N <= sum hi_i`` (feasibility is monotone in ``T``), so the optimal makespan
``T*_S`` is found by bisection on ``T``, vectorised over all ``2^D - 1`` subsets at once, down to
a relative width of 1e-13 (the shares found at the upper end are within that of the integer
optimum). The ring's pieces are the zigzag's with more compute and the same traffic and memory,
so ring is only evaluated when zigzag is excluded. For a fixed subset ``E = T sum P_i`` is minimised by the same
``T*_S``, so both objectives take the best ``(S, k)`` over the table of ``T*_S``. Shares: ``lo_i``
each, the remainder filled up to ``hi_i`` in device order. Ties go to fewer devices, then to the
strategy order ``single, zigzag, ring, ulysses, hybrid``, then the lower device indices.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from solvers import validate
from solvers.exceptions import InfeasibleError, InputError

STRATEGIES = ("single", "zigzag", "ring", "ulysses", "hybrid")
OBJECTIVES = ("latency", "energy")
_BISECT_STEPS = 200
_REL_TOL = 1e-13


@dataclass(frozen=True, slots=True)
class ShardModel:
    """The model numbers the placement needs (see the module docstring for the symbols)."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden_size: int
    intermediate_size: int
    flops_per_token: float
    weight_bytes: float
    bytes_per_element: float = 2.0

    def __post_init__(self) -> None:
        for f in ("n_layers", "n_heads", "n_kv_heads", "head_dim", "hidden_size", "intermediate_size"):
            validate.integer(f"model.{f}", getattr(self, f), minimum=1)
        validate.real("model.flops_per_token", self.flops_per_token, lo=0, lo_open=True)
        validate.real("model.weight_bytes", self.weight_bytes, lo=0)
        validate.real("model.bytes_per_element", self.bytes_per_element, lo=0, lo_open=True)
        if self.n_heads % self.n_kv_heads:
            raise InputError(f"model.n_kv_heads: expected a divisor of n_heads={self.n_heads}, got {self.n_kv_heads}")

    @property
    def kv_bytes_per_token(self) -> float:
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim * self.bytes_per_element

    @property
    def attention_flops_per_pair(self) -> float:
        return 4 * self.n_layers * self.n_heads * self.head_dim

    def live_bytes_per_row(self, strategy: str) -> float:
        s, d = self.bytes_per_element, self.head_dim
        base = (2 * self.hidden_size + 2 * self.intermediate_size + (self.n_heads + 2 * self.n_kv_heads) * d) * s
        if strategy in ("ring", "zigzag", "hybrid"):
            base += 4 * self.n_kv_heads * d * s
        if strategy in ("ulysses", "hybrid"):
            base += (2 * self.n_heads + 2 * self.n_kv_heads) * d * s
        return base


@dataclass(frozen=True, slots=True)
class ShardDevice:
    """A candidate device: free memory bytes, link GB/s, effective FLOP/s, memory GB/s, power W."""

    kind: str
    free_bytes: float
    link_gbs: float
    flops: float
    mem_bw_gbs: float
    power_w: float

    def check(self, i: int) -> None:
        validate.name(f"devices[{i}].kind", self.kind)
        validate.real(f"devices[{i}].free_bytes", self.free_bytes, lo=0)
        validate.real(f"devices[{i}].link_gbs", self.link_gbs, lo=0, lo_open=True)
        validate.real(f"devices[{i}].flops", self.flops, lo=0, lo_open=True)
        validate.real(f"devices[{i}].mem_bw_gbs", self.mem_bw_gbs, lo=0, lo_open=True)
        validate.real(f"devices[{i}].power_w", self.power_w, lo=0)


@dataclass(frozen=True, slots=True)
class ShardPlacement:
    """The chosen devices (indices and kinds), strategy, shares, and the modeled figures."""

    devices: tuple[int, ...]
    kinds: tuple[str, ...]
    strategy: str
    shares: tuple[int, ...]
    latency_s: float
    energy_j: float
    memory_bytes: tuple[float, ...]
    candidates: int

    def to_dict(self) -> dict:
        return {
            "devices": list(self.devices), "kinds": list(self.kinds), "strategy": self.strategy,
            "shares": list(self.shares), "modeled_latency_s": self.latency_s,
            "modeled_energy_j": self.energy_j, "modeled_memory_bytes": list(self.memory_bytes),
            "candidates_evaluated": self.candidates,
        }


def hybrid_degree(p: int, n_heads: int) -> int | None:
    """Ulysses degree ``u`` of a hybrid over ``p`` ranks: the smallest divisor ``1 < u < p`` with
    ``u <= n_heads`` (as :func:`attention.api.default_ulysses_degree`); None when there is none."""
    for u in range(2, p):
        if p % u == 0 and u <= n_heads:
            return u
    return None


def strategy_applies(strategy: str, p: int, model: ShardModel) -> bool:
    if strategy == "single":
        return p == 1
    if p == 1:
        return False
    if strategy == "ulysses":
        return p <= model.n_heads
    if strategy == "hybrid":
        return hybrid_degree(p, model.n_heads) is not None
    return True


def pieces(dev: ShardDevice, model: ShardModel, n_tokens: int, strategy: str, p: int) -> list[tuple[float, float]]:
    """``T_i(n) = max over (alpha, beta) of alpha + beta n`` for ``dev`` in a group of ``p``."""
    kv, N = model.kv_bytes_per_token, n_tokens
    rho = N if strategy == "ring" else (N + 1) / 2
    phi, r, b = dev.flops, dev.mem_bw_gbs * 1e9, dev.link_gbs * 1e9
    comp = [(0.0, (model.flops_per_token + model.attention_flops_per_pair * rho) / phi),
            (model.weight_bytes / r, kv / r)]
    a2a = 0.0
    u = p if strategy == "ulysses" else (hybrid_degree(p, model.n_heads) if strategy == "hybrid" else None)
    if u:
        a2a = model.n_layers * (2 * model.n_heads + 2 * model.n_kv_heads) * model.head_dim \
            * model.bytes_per_element * (u - 1) / u / b
    out = [(alpha, beta + a2a) for alpha, beta in comp]
    if strategy in ("ring", "zigzag"):
        out.append((kv * N / b, -kv / b))
    elif strategy == "hybrid":
        out.append((kv * N / u / b, -kv / b))
    return out


def device_time(dev: ShardDevice, model: ShardModel, n_tokens: int, strategy: str, p: int, n: int) -> float:
    """Modeled prefill seconds of ``dev`` holding ``n`` of ``n_tokens`` rows in a group of ``p``."""
    return max(alpha + beta * n for alpha, beta in pieces(dev, model, n_tokens, strategy, p))


def device_memory(dev: ShardDevice, model: ShardModel, strategy: str, n: int) -> float:
    """Modeled bytes ``W + n (kv + e_k)`` of ``dev`` holding ``n`` rows."""
    return model.weight_bytes + n * (model.kv_bytes_per_token + model.live_bytes_per_row(strategy))


def evaluate(devices: Sequence[ShardDevice], model: ShardModel, n_tokens: int, chosen: Sequence[int],
             strategy: str, shares: Sequence[int]) -> tuple[float, float] | None:
    """(modeled latency s, energy J) of a placement, or None when a shard does not fit."""
    p = len(chosen)
    if not strategy_applies(strategy, p, model):
        return None
    for i, n in zip(chosen, shares):
        if n < 1 or device_memory(devices[i], model, strategy, n) > devices[i].free_bytes:
            return None
    t = max(device_time(devices[i], model, n_tokens, strategy, p, n) for i, n in zip(chosen, shares))
    return t, t * sum(devices[i].power_w for i in chosen)


def _check(n_tokens, model, devices, latency_budget_s, energy_budget_j, objective) -> None:
    validate.integer("tokens", n_tokens, minimum=1)
    if not isinstance(model, ShardModel):
        raise InputError(f"model: expected a ShardModel, got {type(model).__name__}")
    if not devices:
        raise InputError("devices: expected at least one candidate device, got none")
    if len(devices) > 16:
        raise InputError(f"devices: expected at most 16 candidates, got {len(devices)}")
    for i, d in enumerate(devices):
        if not isinstance(d, ShardDevice):
            raise InputError(f"devices[{i}]: expected a ShardDevice, got {type(d).__name__}")
        d.check(i)
    validate.real("latency_budget_s", latency_budget_s, lo=0, lo_open=True, allow_none=True)
    validate.real("energy_budget_j", energy_budget_j, lo=0, lo_open=True, allow_none=True)
    validate.choice("objective", objective, OBJECTIVES)


def solve(n_tokens: int, model: ShardModel, devices: Sequence[ShardDevice], *,
          latency_budget_s: float | None = None, energy_budget_j: float | None = None,
          objective: str = "latency", strategies: Sequence[str] = STRATEGIES) -> ShardPlacement:
    """The best placement (module docstring); InfeasibleError names the binding constraint."""
    _check(n_tokens, model, devices, latency_budget_s, energy_budget_j, objective)
    for s in strategies:
        validate.choice("strategies", s, STRATEGIES)
    D, N = len(devices), n_tokens
    rows = [(strategy, p, sub) for p in range(1, min(D, N) + 1) for sub in combinations(range(D), p)
            for strategy in STRATEGIES if strategy in strategies and strategy_applies(strategy, p, model)
            and not (strategy == "ring" and "zigzag" in strategies)]  # zigzag dominates ring (doc)
    t_opt, shares, fits = _solve_rows(devices, model, N, rows)
    evaluated, fits_any = len(rows), bool(fits.any())
    power = np.array([d.power_w for d in devices])
    mask = np.zeros((len(rows), D), dtype=bool)
    for r, (_, _, sub) in enumerate(rows):
        mask[r, list(sub)] = True
    energy = t_opt * (mask * power).sum(axis=1)
    ok = np.isfinite(t_opt)
    if latency_budget_s is not None:
        ok &= t_opt <= latency_budget_s
    if energy_budget_j is not None:
        ok &= energy <= energy_budget_j
    best, best_key = None, None
    for r in np.flatnonzero(ok):
        strategy, p, sub = rows[r]
        val = t_opt[r] if objective == "latency" else energy[r]
        key = (float(val), p, STRATEGIES.index(strategy), sub)
        if best_key is None or _better(key, best_key):
            best_key = key
            best = (sub, strategy, tuple(int(shares[r, i]) for i in sub))
    if best is None:
        if not fits_any:
            raise InfeasibleError(f"devices: no subset of the {D} devices has the memory for {N} tokens")
        raise InfeasibleError(
            f"latency_budget_s/energy_budget_j: no placement meets the budgets "
            f"(latency {latency_budget_s}, energy {energy_budget_j})"
        )
    chosen, strategy, shares = best
    t, e = evaluate(devices, model, N, chosen, strategy, shares)
    mem = tuple(device_memory(devices[i], model, strategy, n) for i, n in zip(chosen, shares))
    return ShardPlacement(chosen, tuple(devices[i].kind for i in chosen), strategy, shares, t, e, mem, evaluated)


def _better(a: tuple, b: tuple) -> bool:
    """Lexicographic, with the objective compared to a relative 1e-12 (float noise)."""
    if not math.isclose(a[0], b[0], rel_tol=1e-12, abs_tol=0.0):
        return a[0] < b[0]
    return a[1:] < b[1:]


def _solve_rows(devices, model, N, rows):
    """Optimal makespan [R], shares [R, D] and fit [R] of every (strategy, size, subset) row,
    by one bisection on T vectorised over all rows (non-members: no pieces, share 0)."""
    D, R = len(devices), len(rows)
    table = {}
    for strategy, p, _ in rows:
        if (strategy, p) not in table:
            table[strategy, p] = [pieces(d, model, N, strategy, p) for d in devices]
    K = 3
    a = np.full((R, D, K), -np.inf)
    b = np.zeros((R, D, K))
    caps = np.zeros((R, D))
    mask = np.zeros((R, D), dtype=bool)
    cap_by = {}
    for r, (strategy, p, sub) in enumerate(rows):
        if strategy not in cap_by:
            per_row = model.kv_bytes_per_token + model.live_bytes_per_row(strategy)
            cap_by[strategy] = np.array([math.floor((d.free_bytes - model.weight_bytes) / per_row)
                                         if d.free_bytes >= model.weight_bytes else 0 for d in devices], float)
        pc = table[strategy, p]
        for i in sub:
            for k, (al, be) in enumerate(pc[i]):
                a[r, i, k], b[r, i, k] = al, be
        mask[r, list(sub)] = True
        caps[r, list(sub)] = np.minimum(cap_by[strategy][list(sub)], N - (p - 1))
    fits = ((caps >= 1) | ~mask).all(axis=1) & (caps.sum(axis=1) >= N)
    rising, falling, flat = b > 0, b < 0, b == 0
    b_safe = np.where(flat, 1.0, b)

    def bounds(T):  # T [R] -> lo, hi [R, D] (0, 0 for non-members)
        Tb = T[:, None, None]
        q = (Tb - a) / b_safe
        hi = np.minimum(np.where(rising, np.floor(q), np.inf).min(axis=2), caps)
        lo = np.maximum(np.where(falling, np.ceil(q), -np.inf).max(axis=2), 1.0)
        hi = np.where((flat & (a > Tb)).any(axis=2), -1.0, hi)
        return np.where(mask, lo, 0.0), np.where(mask, hi, 0.0)

    def feasible(T):
        lo, hi = bounds(T)
        return (lo <= hi).all(axis=1) & (lo.sum(axis=1) <= N) & (hi.sum(axis=1) >= N)

    def makespan(n):  # n [R, D] -> [R]
        t = (a + b * n[:, :, None]).max(axis=2)
        return np.where(mask, t, -np.inf).max(axis=1)

    # T_i is convex in n, so its maximum over [1, N] is at an end: above both ends of every member,
    # every interval is [1, cap_i] and a row that fits is feasible
    ones = np.ones((R, D))
    hi_t = np.maximum(makespan(ones), makespan(ones * N)) * (1 + 1e-9) + 1e-300
    lo_t = np.zeros(R)
    for _ in range(_BISECT_STEPS):
        mid = (lo_t + hi_t) / 2
        done = (hi_t - lo_t <= _REL_TOL * hi_t) | (mid <= lo_t) | (mid >= hi_t) | ~fits
        if done.all():
            break
        f = feasible(mid)
        hi_t = np.where(f & ~done, mid, hi_t)
        lo_t = np.where(~f & ~done, mid, lo_t)
    lo, hi = bounds(hi_t)
    n = np.where(fits[:, None], lo, 0).astype(np.int64)
    hi = np.where(fits[:, None], hi, 0).astype(np.int64)
    left = N - n.sum(axis=1)
    for c in range(D):
        add = np.clip(np.minimum(left, hi[:, c] - n[:, c]), 0, None)
        n[:, c] += add
        left -= add
    t_opt = np.where(fits & (left == 0), makespan(n.astype(np.float64)), np.inf)
    return t_opt, n, fits


__all__ = [
    "OBJECTIVES", "STRATEGIES", "ShardDevice", "ShardModel", "ShardPlacement", "device_memory",
    "device_time", "evaluate", "hybrid_degree", "pieces", "solve", "strategy_applies",
]
