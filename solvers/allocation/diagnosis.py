"""Why an allocation problem is infeasible: causes visible before solving (:func:`precheck`)
and the binding cause found by re-solving relaxations (:func:`diagnose`)."""

from __future__ import annotations

import math

from solvers.allocation.ilp import build, make_backend, run, value_of
from solvers.allocation.model import Instance, caps_text, ceil_devices
from solvers.exceptions import InfeasibleError


# ----------------------------------------------------------------------------------- diagnosis
def precheck(inst: Instance) -> None:
    """Raise InfeasibleError for causes visible without solving (exact or by a valid bound)."""
    problem = inst.problem
    types = problem.device_types
    uncovered = [b for b, c in zip(inst.buckets, inst.coef) if all(v is None for v in c)]
    if uncovered:
        i, j = uncovered[0]
        reasons = "; ".join(f"{t.name}: {t.why_not((i, j))}" for t in types)
        more = f" ({len(uncovered) - 1} more bucket(s) alike: {uncovered[1:6]})" if len(
            uncovered
        ) > 1 else ""
        raise InfeasibleError(
            f"infeasible: bucket ({i}, {j}) has weight {problem.workload.histogram[i][j]!r} but "
            f"no allowed type can serve it (allowed types: {list(problem.type_names)}; {reasons})"
            f"{more}; {inst.size}"
        )
    # Every slice occupies at least min_t a[s,t] devices and min_t a[s,t] P_t watts.
    fewest = math.fsum(
        min(c for c in coef if c is not None) for coef in inst.coef
    ) * problem.slice_factor
    if all(t.max_count is not None for t in types):
        allowed = sum(t.max_count for t in types)
        if ceil_devices(fewest) > allowed:
            raise InfeasibleError(
                f"infeasible: caps too low: even with every slice on the type that needs the "
                f"fewest devices for it the workload needs at least {fewest:.6g} devices, but the "
                f"caps allow {allowed} in total ({caps_text(problem)}); {inst.size}"
            )
    budget = problem.power_budget_w
    if budget is not None:
        watts = math.fsum(
            min(c * t.power_w for c, t in zip(coef, types) if c is not None) for coef in inst.coef
        ) * problem.slice_factor
        if watts > budget * (1 + 1e-9) + 1e-9:
            raise InfeasibleError(
                f"infeasible: power budget too tight: even the lowest-power assignment draws at "
                f"least {watts:.6g} W (before rounding devices up), over power_budget_w = "
                f"{budget!r}; {inst.size}"
            )


def diagnose(inst: Instance, solver: str, status: str) -> InfeasibleError:
    """Find the binding cause of an infeasible solve by re-solving relaxations."""
    import pulp

    backend = make_backend(solver, None)
    problem = inst.problem
    caps = any(t.max_count is not None for t in problem.device_types)
    if caps:
        prob, _, n = build(inst, power=False)
        _, proven = run(prob, backend)
        if not proven:
            prob, _, n = build(inst, caps=False, power=False)
            _, ok = run(prob, backend)
            need = {
                dev.name: round(value_of(n[t]))
                for t, dev in enumerate(problem.device_types)
                if ok and round(value_of(n[t])) > 0
            }
            return InfeasibleError(
                f"infeasible: caps too low: no assignment of the slices fits within the caps "
                f"({caps_text(problem)}); without caps the cheapest mix needs {need}; {inst.size}"
            )
    if problem.power_budget_w is not None:
        prob, _, n = build(inst, objective="power", power=False)
        _, proven = run(prob, backend)
        if proven:
            watts = pulp.value(prob.objective)
            counts = {
                dev.name: round(value_of(n[t]))
                for t, dev in enumerate(problem.device_types)
                if round(value_of(n[t])) > 0
            }
            return InfeasibleError(
                f"infeasible: power budget too tight: the lowest-power feasible mix {counts} "
                f"draws {watts:.6g} W, over power_budget_w = {problem.power_budget_w!r}; {inst.size}"
            )
    return InfeasibleError(
        f"infeasible: the solver reports {status!r} and no single cause (masks, caps, power "
        f"budget) explains it; {inst.size}"
    )

