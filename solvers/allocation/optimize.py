"""Solving an allocation problem: the entry point :func:`solve`, the closed form for one type,
the single-type baselines and the ILP's read-back (math in :mod:`solvers.allocation.ilp`)."""

from __future__ import annotations

import math
import time

from solvers.allocation.diagnosis import diagnose, precheck
from solvers.allocation.ilp import (
    build,
    greedy_mix,
    has_incumbent,
    integral,
    make_backend,
    relaxation_bound,
    run,
    value_of,
)
from solvers.allocation.model import (
    FORMULATIONS,
    SOLVERS,
    AllocationPlan,
    AllocationProblem,
    Bucket,
    Instance,
    ceil_devices,
)
from solvers.exceptions import (
    AllocationInputError,
    InfeasibleError,
    SolveIncompleteError,
    SolverAnswerError,
    SolverUnavailableError,
    did_you_mean,
)
from solvers.validate import is_real


# ----------------------------------------------------------------------------------- baselines
def single_type_count(problem: AllocationProblem, name: str) -> int | None:
    """Closed form of the ILP restricted to type ``name``: ceil(L_t), or None if infeasible.

    Infeasible when the type cannot serve some bucket of positive weight, when ceil(L_t) exceeds
    its max_count, or when ceil(L_t) * power_w exceeds the power budget.
    """
    names = problem.type_names
    if name not in names:
        raise AllocationInputError(
            f"device type {name!r} is not in the problem; allowed: {list(names)}"
            + did_you_mean(name, names)
        )
    t = names.index(name)
    return single_count(Instance.of(problem), t)


def single_count(inst: Instance, t: int) -> int | None:
    load = inst.load_alone(t)
    if load is None:
        return None
    n = ceil_devices(load)
    dev = inst.problem.device_types[t]
    if dev.max_count is not None and n > dev.max_count:
        return None
    budget = inst.problem.power_budget_w
    if budget is not None and n * dev.power_w > budget + 1e-9 * max(1.0, budget):
        return None
    return n


def baselines_of(inst: Instance) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for t, dev in enumerate(inst.problem.device_types):
        n = single_count(inst, t)
        out[dev.name] = None if n is None else n * dev.price_per_hour
    return out


# ----------------------------------------------------------------------------------- solve
def solve(
    problem: AllocationProblem,
    *,
    solver: str = "cbc",
    time_limit_s: float | None = None,
    baselines: bool = True,
    formulation: str = "aggregated",
    accept_incumbent: bool = False,
) -> AllocationPlan:
    """The cost-optimal device mix for ``problem`` (the ILP of the module docstring).

    Args:
        problem: the instance.
        solver: "cbc" (PuLP's bundled CBC, default) or "highs" (needs highspy or a highs binary).
        time_limit_s: optional wall-clock limit handed to the solver.
        baselines: also compute each single-type baseline and the savings against it.
        formulation: "aggregated" (y_b_t, default, fast) or "binary" (Mélange's x_s_t; same
            optimum, much slower beyond a few types; kept for comparison).
        accept_incumbent: when the time limit stops the solver with a feasible mix, return it
            (``status`` "Feasible", ``gap`` its distance from the LP bound) instead of raising.

    Raises:
        InfeasibleError: no mix exists; the message names the cause (a bucket no allowed type can
            serve, caps too low, power budget too tight) and the instance size.
        SolverUnavailableError: unknown solver name, or the solver is not installed.
        SolveIncompleteError: the solver stopped without proving optimality (e.g. time limit).
    """
    if not isinstance(problem, AllocationProblem):
        raise AllocationInputError(f"problem = {problem!r}: expected an AllocationProblem")
    if time_limit_s is not None and (
        not is_real(time_limit_s) or not time_limit_s > 0 or not math.isfinite(time_limit_s)
    ):
        raise AllocationInputError(
            f"time_limit_s = {time_limit_s!r}; allowed: None or a finite number > 0"
        )
    if solver not in SOLVERS:
        raise SolverUnavailableError(
            f"solver = {solver!r}: unknown; allowed values: {list(SOLVERS)}"
            + did_you_mean(str(solver), SOLVERS)
        )
    if formulation not in FORMULATIONS:
        raise AllocationInputError(
            f"formulation = {formulation!r}: unknown; allowed values: {list(FORMULATIONS)}"
            + did_you_mean(str(formulation), FORMULATIONS)
        )
    names = problem.type_names
    start = time.perf_counter()
    if problem.workload.total_rate == 0:
        zero = {name: 0 for name in names}
        return AllocationPlan(
            counts=zero,
            cost_per_hour=0.0,
            assignment={},
            load_per_type={name: 0.0 for name in names},
            baselines={name: 0.0 for name in names} if baselines else {},
            savings_vs={name: 0.0 for name in names} if baselines else {},
            solve_seconds=time.perf_counter() - start,
            solver="trivial",
        )
    inst = Instance.of(problem)
    precheck(inst)
    if len(names) == 1:
        plan = closed_form(inst, start)
    else:
        plan = solve_ilp(inst, solver, time_limit_s, formulation, start, accept_incumbent=accept_incumbent)
    if not baselines:
        return plan
    base = baselines_of(inst)
    savings = {
        name: None if cost is None else (0.0 if cost == 0 else (cost - plan.cost_per_hour) / cost)
        for name, cost in base.items()
    }
    return AllocationPlan(
        counts=plan.counts,
        cost_per_hour=plan.cost_per_hour,
        assignment=plan.assignment,
        load_per_type=plan.load_per_type,
        baselines=base,
        savings_vs=savings,
        solve_seconds=plan.solve_seconds,
        status=plan.status,
        solver=plan.solver,
        gap=plan.gap,
    )


def closed_form(inst: Instance, start: float) -> AllocationPlan:
    """One type: every slice on it, n = ceil(L); precheck has ruled out masks."""
    dev = inst.problem.device_types[0]
    n = single_count(inst, 0)
    load = inst.load_alone(0)
    if n is None:
        if dev.max_count is not None and ceil_devices(load) > dev.max_count:
            raise InfeasibleError(
                f"infeasible: caps too low: {dev.name} alone needs {ceil_devices(load)} devices "
                f"(load {load:.6g}) but max_count = {dev.max_count}; {inst.size}"
            )
        raise InfeasibleError(
            f"infeasible: power budget too tight: {ceil_devices(load)} x {dev.name} draw "
            f"{ceil_devices(load) * dev.power_w:.6g} W, over power_budget_w = "
            f"{inst.problem.power_budget_w!r}; {inst.size}"
        )
    return AllocationPlan(
        counts={dev.name: n},
        cost_per_hour=n * dev.price_per_hour,
        assignment={b: {dev.name: 1.0} for b in inst.buckets},
        load_per_type={dev.name: load},
        solve_seconds=time.perf_counter() - start,
        solver="closed-form",
    )


def solve_ilp(
    inst: Instance,
    solver: str,
    time_limit_s: float | None,
    formulation: str = "aggregated",
    start: float | None = None,
    *,
    accept_incumbent: bool = False,
) -> AllocationPlan:
    """Build and solve the mix ILP (no fast path); read back a checked plan."""
    start = time.perf_counter() if start is None else start
    backend = make_backend(solver, time_limit_s)
    prob, m, n = build(inst, formulation=formulation, bound=True)
    status, proven = run(prob, backend)
    elapsed = time.perf_counter() - start
    incumbent = not proven and accept_incumbent and time_limit_s is not None and has_incumbent(prob)
    if not proven and not incumbent:
        if status in ("Infeasible", "Undefined", "Unbounded") or (
            status == "Not Solved" and time_limit_s is None
        ):
            raise diagnose(inst, solver, status)
        raise SolveIncompleteError(
            f"solver {solver!r} stopped without proving optimality (status {status!r}, "
            f"time_limit_s = {time_limit_s!r}, {elapsed:.3g} s); raise time_limit_s; {inst.size}"
        )
    problem = inst.problem
    types = problem.device_types
    factor = problem.slice_factor
    shares: dict[Bucket, dict[str, float]] = {}
    per_type: list[list[float]] = [[] for _ in types]
    placed = [0] * len(inst.buckets)
    for (b, t), group in m.items():
        k = sum(integral(value_of(var), var.name) for var in group)
        if k == 0:
            continue
        placed[b] += k
        per_type[t].append(k * inst.coef[b][t])
        shares.setdefault(inst.buckets[b], {})[types[t].name] = k / factor
    bad = [inst.buckets[b] for b, k in enumerate(placed) if k != factor]
    if bad:
        raise SolverAnswerError(
            f"the solver's answer does not place exactly {factor} slices of bucket(s) {bad[:5]}; "
            f"{inst.size}"
        )
    loads = [math.fsum(v) for v in per_type]
    counts = {
        dev.name: min(integral(value_of(n[t]), f"n_{t}"), ceil_devices(loads[t]))
        for t, dev in enumerate(types)
    }
    cost = math.fsum(counts[d.name] * d.price_per_hour for d in types)
    greedy = greedy_mix(inst)
    gap = 0.0
    if incumbent:  # stopped early: how far from optimal it can be, against the LP bound
        bound = relaxation_bound(inst, formulation, solver)
        gap = max(0.0, (cost - bound) / cost) if cost > 0 else 0.0
    if greedy is not None and not incumbent:  # an optimum is never worse than a known feasible mix
        known = math.fsum(d.price_per_hour * k for d, k in zip(types, greedy[1]))
        if cost > known + 1e-9 * max(1.0, known):
            raise SolverAnswerError(
                f"solver {solver!r} reported Optimal at ${cost:.6g}/h but a feasible mix costs "
                f"${known:.6g}/h; try the other solver; {inst.size}"
            )
    return AllocationPlan(
        counts=counts,
        cost_per_hour=cost,
        assignment={b: dict(sorted(v.items())) for b, v in sorted(shares.items())},
        load_per_type={dev.name: loads[t] for t, dev in enumerate(types)},
        solve_seconds=elapsed,
        solver=solver,
        status="Feasible" if incumbent else "Optimal",
        gap=gap,
    )


__all__ = ["single_type_count", "solve"]
