"""The cheapest mix of device types that serves a workload under a latency SLO (the Mélange ILP).

Mélange (Griggs et al., "Cost Efficient LLM Serving by Exploiting GPU Heterogeneity",
arXiv 2404.14527) poses fleet sizing as cost-aware bin packing. This module solves its integer
program, extended with per-type caps, "cannot serve" masks, headroom, a power budget and a TTFT
table alongside the TPOT one.

Sets
    B   buckets b = (i, j): input-length bucket i x output-length bucket j, with histogram
        weight w_b > 0 (buckets of weight 0 carry no traffic and create no slices)
    S   slices s = (b, k), k = 0 .. F-1, F = ``slice_factor``; b(s) is the bucket of s.
        Slices are numbered in (i, j, k) order; that number is the s of the PuLP names.
    T   device types t, numbered in the order given; that number is the t of the PuLP names.

Data
    r_s     = R * w_b(s) / F                    request rate of slice s (R = ``total_rate``)
    mu[t,b] = min(TPOT[t][b], TTFT[t][b])       the binding max request rate one device of type t
                                                sustains on bucket b. The TPOT table is
                                                ``max_rate``; the TTFT table ``ttft_max_rate`` is
                                                optional (absent = no TTFT limit). A type serves b
                                                only when *both* tables allow it: an entry that is
                                                0, None or NaN in either one means "cannot serve".
    A       = {(s, t) : mu[t, b(s)] > 0}       the allowed (slice, type) pairs
    a[s,t]  = r_s * (1 + h) / mu[t, b(s)]      devices of type t that slice s occupies
                                                (h = ``headroom``)
    p_t, P_t, C_t, W                            price $/h, power W, max count, power budget W

Variables (PuLP names)
    x_s_t in {0, 1}   for (s, t) in A          slice s is served by type t (pairs outside A are
                                                not created, so a mask can never be violated)
    n_t   in Z>=0     for t in T                devices of type t; upper bound C_t when capped

Objective
    minimise   sum_t p_t * n_t                  ($ per hour)

Constraints (PuLP names)
    assign_s:     sum_{t : (s,t) in A} x_s_t = 1              every slice served exactly once
    capacity_t:   sum_{s : (s,t) in A} a[s,t] * x_s_t <= n_t  enough devices of each type
    n_t <= C_t                                                 (variable bound; capped types)
    power:        sum_t P_t * n_t <= W                         (only with a power budget)

Formulations. ``formulation="binary"`` builds the model above literally, as Mélange does. The
default ``"aggregated"`` solves the same model with
    y_b_t = sum_k x_(b,k)_t  in {0, .., F}     for (b, t) allowed    (PuLP name y_b_t)
    assign_b:    sum_t y_b_t = F                                     for all b in B
    capacity_t:  sum_b a[b,t] * y_b_t <= n_t                         (a[b,t] = a[s,t], s in b)
It is exact: the F slices of a bucket are interchangeable (same rate, same a[s,t]), so every x maps
to a y with the same objective and loads, and every y maps back to an x (give y_b_0 slices to type
0, the next y_b_1 to type 1, ...). It removes the F! permutations that make CBC's branch and bound
crawl on the binary form (bench/bench_allocation.py measures both). Both bound
n_t <= ceil(L_t alone) and, when the greedy mix (each bucket on its most cost-efficient type) is
feasible, n_t <= floor(its cost / p_t): valid bounds that only prune.

CBC runs with ``preprocess off``: PuLP's bundled CBC 2.10.3 preprocessing returned a worse mix
labelled Optimal on a 2-type, 2-slice instance (found by the brute-force test; $2.00 instead of
$1.50). As a further guard, a plan dearer than the greedy mix raises SolveIncompleteError.

Single-type fast path. With one type every x_s_t = 1, so the optimum is closed-form:
    n_t = ceil(L_t),  L_t = sum_s a[s,t] = R (1 + h) sum_b w_b / mu[t,b],   cost = p_t n_t,
feasible iff t serves every b in B, n_t <= C_t and P_t n_t <= W. The single-type baselines use it.

Tolerance. ``ceil`` forgives 1e-7 devices (``LOAD_TOLERANCE``, CBC's primal feasibility
tolerance), so a load of 3 + 1e-12 needs 3 devices, as the MILP solver would also decide.
"""

from __future__ import annotations

import math
from typing import Any

from solvers.allocation.model import INTEGRALITY_TOLERANCE, SOLVERS, Instance, ceil_devices
from solvers.exceptions import SolverAnswerError, SolverUnavailableError, did_you_mean


# ----------------------------------------------------------------------------------- the ILP
def make_backend(solver: str, time_limit_s: float | None) -> Any:
    import pulp

    if solver == "cbc":
        backend = pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit_s, options=["preprocess off"])
        if backend.available():
            return backend
    elif solver == "highs":
        for cls in (getattr(pulp, "HiGHS", None), getattr(pulp, "HiGHS_CMD", None)):
            if cls is None:
                continue
            backend = cls(msg=False, timeLimit=time_limit_s)
            if backend.available():
                return backend
    else:
        raise SolverUnavailableError(
            f"solver = {solver!r}: unknown; allowed values: {list(SOLVERS)}"
            + did_you_mean(str(solver), SOLVERS)
        )
    raise SolverUnavailableError(
        f"solver = {solver!r} is not available in this environment (for 'highs' install highspy); "
        f"available PuLP solvers: {pulp.listSolvers(onlyAvailable=True)}"
    )


def greedy_mix(inst: Instance) -> tuple[list[int], list[int]] | None:
    """A feasible start: each bucket wholly on its most cost-efficient type (lowest p_t a[s,t]).

    Returns (type per bucket, n per type), or None when that mix breaks a cap or the budget.
    """
    types = inst.problem.device_types
    factor = inst.problem.slice_factor
    loads = [0.0] * len(types)
    choice = []
    for coef in inst.coef:
        if all(c is None for c in coef):
            return None
        t = min(
            (t for t, c in enumerate(coef) if c is not None),
            key=lambda t: (types[t].price_per_hour * coef[t], coef[t]),
        )
        choice.append(t)
        loads[t] += factor * coef[t]
    n = [ceil_devices(v) for v in loads]
    if any(d.max_count is not None and k > d.max_count for d, k in zip(types, n)):
        return None
    budget = inst.problem.power_budget_w
    if budget is not None and math.fsum(d.power_w * k for d, k in zip(types, n)) > budget:
        return None
    return choice, n


def build(
    inst: Instance,
    *,
    formulation: str = "aggregated",
    objective: str = "cost",
    caps: bool = True,
    power: bool = True,
    bound: bool = False,
) -> tuple[Any, dict[tuple[int, int], list[Any]], list[Any]]:
    """The ILP of the module docstring as a PuLP problem; returns (problem, m, n).

    m[b, t] lists the variables whose sum is the number of slices of bucket b on type t
    (one y_b_t, or the F binaries x_s_t of b's slices). ``objective="power"`` minimises
    sum_t P_t n_t instead and ``caps`` / ``power`` switch those constraints off (diagnosis).
    ``bound`` adds n_t <= floor(UB / p_t), UB the cost of :func:`greedy_mix`'s mix (cost objective).
    """
    import pulp

    problem = inst.problem
    types = problem.device_types
    factor = problem.slice_factor
    start = greedy_mix(inst) if bound and objective == "cost" else None
    upper = []
    for t, dev in enumerate(types):
        # A type never needs more devices than serving every slice it can serve alone.
        alone = factor * math.fsum(c[t] for c in inst.coef if c[t] is not None)
        hi = ceil_devices(alone)
        if caps and dev.max_count is not None:
            hi = min(hi, dev.max_count)
        if start is not None and dev.price_per_hour > 0:
            cost = math.fsum(d.price_per_hour * k for d, k in zip(types, start[1]))
            hi = min(hi, math.floor(cost / dev.price_per_hour + 1e-9))
        upper.append(hi)
    prob = pulp.LpProblem("device_mix", pulp.LpMinimize)
    n = [
        pulp.LpVariable(f"n_{t}", lowBound=0, upBound=upper[t], cat=pulp.LpInteger)
        for t in range(len(types))
    ]
    m: dict[tuple[int, int], list[Any]] = {}
    for b, coef in enumerate(inst.coef):
        for t, c in enumerate(coef):
            if c is None:
                continue
            if formulation == "aggregated":
                m[b, t] = [pulp.LpVariable(f"y_{b}_{t}", 0, factor, cat=pulp.LpInteger)]
            else:
                m[b, t] = [
                    pulp.LpVariable(f"x_{b * factor + k}_{t}", cat=pulp.LpBinary)
                    for k in range(factor)
                ]
    weight = [d.price_per_hour if objective == "cost" else d.power_w for d in types]
    prob += pulp.lpSum(w * n[t] for t, w in enumerate(weight))
    if formulation == "aggregated":
        for b in range(len(inst.buckets)):
            prob += (
                pulp.lpSum(v[0] for (bb, _t), v in m.items() if bb == b) == factor,
                f"assign_{b}",
            )
    else:
        for b in range(len(inst.buckets)):
            for k in range(factor):
                prob += (
                    pulp.lpSum(v[k] for (bb, _t), v in m.items() if bb == b) == 1,
                    f"assign_{b * factor + k}",
                )
    for t in range(len(types)):
        prob += (
            pulp.lpSum(inst.coef[b][t] * var for (b, tt), v in m.items() if tt == t for var in v)
            <= n[t],
            f"capacity_{t}",
        )
    if power and problem.power_budget_w is not None:
        prob += (
            pulp.lpSum(d.power_w * n[t] for t, d in enumerate(types)) <= problem.power_budget_w,
            "power",
        )
    return prob, m, n


def run(prob: Any, backend: Any) -> tuple[str, bool]:
    """Solve; return (PuLP status name, whether optimality was proven)."""
    import pulp

    try:
        prob.solve(backend)
    except pulp.PulpSolverError:
        # CBC without preprocessing writes no solution file for some infeasible models.
        return "Undefined", False
    status = pulp.LpStatus[prob.status]
    proven = prob.status == pulp.LpStatusOptimal and prob.sol_status == pulp.LpSolutionOptimal
    return status, proven


def has_incumbent(prob: Any) -> bool:
    """Whether a stopped solve left a feasible integer solution in the variables."""
    import pulp

    return prob.sol_status == pulp.LpSolutionIntegerFeasible


def relaxation_bound(inst: Instance, formulation: str, solver: str) -> float:
    """The LP relaxation's optimum: a lower bound on every mix's cost (0.0 if it cannot be had)."""
    import pulp

    prob, _, _ = build(inst, formulation=formulation, bound=True)
    for var in prob.variables():
        var.cat = pulp.LpContinuous
    status, proven = run(prob, make_backend(solver, None))
    return float(pulp.value(prob.objective) or 0.0) if proven else 0.0


def value_of(var: Any) -> float:
    v = var.value()
    return 0.0 if v is None else float(v)


def integral(value: float, what: str) -> int:
    r = round(value)
    if abs(value - r) > INTEGRALITY_TOLERANCE:
        raise SolverAnswerError(
            f"the solver returned {what} = {value!r}, not within {INTEGRALITY_TOLERANCE:g} of an "
            f"integer; try solver='cbc' or 'highs' (the other one)"
        )
    return int(r)

