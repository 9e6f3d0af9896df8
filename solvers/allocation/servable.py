"""Planning for the servable mass: buckets that no candidate type can serve are left out, and said.

A bucket b of weight w_b > 0 is *servable* when some candidate type t can serve it: mu[t, b] > 0
(both the TPOT and the TTFT table allow it, :meth:`DeviceType.rate`) and t is not capped at zero
(``max_count == 0`` excludes a type as surely as leaving it off the list). The rest is the
*unservable* set U, of mass u = sum_{b in U} w_b.

:func:`servable_split` returns the problem restricted to the servable buckets, with every servable
bucket keeping its absolute request rate:

    w'_b = w_b / (1 - u)  for b not in U,   w'_b = 0  for b in U,   R' = R (1 - u)

so that R' w'_b = R w_b. This is *not* renormalised to R on purpose: the requests of U are not
turned into requests of other sizes, they are refused (no candidate can serve them within the SLO),
so the fleet must carry exactly the traffic of the servable buckets. Renormalising to the full rate
R would provision 1 / (1 - u) times that traffic for requests that never arrive; headroom, when
wanted, is asked for explicitly (``AllocationProblem.headroom``). The ILP of
:mod:`solvers.allocation.ilp` on the split problem is therefore the ILP on the original buckets
minus U: the slices of U are simply absent (their rates r_s are untouched elsewhere).

:func:`refuse_unservable` is the strict alternative: an :class:`InfeasibleError` naming the
buckets and their mass. A workload whose every bucket is unservable is refused either way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from solvers.allocation.diagnosis import precheck
from solvers.allocation.model import AllocationProblem, Bucket, Instance, Workload
from solvers.exceptions import InfeasibleError


@dataclass(frozen=True, slots=True)
class ServableSplit:
    """A problem split into what the candidates can serve and what they cannot.

    Attributes:
        problem: the problem restricted to the servable buckets (the original one when nothing
            is left out), rates kept absolute (module docstring).
        unservable: ((i, j), w_b) for each bucket of weight > 0 that no candidate type can serve,
            in (i, j) order.
        total_rate: R, the original total request rate (req/s).
    """

    problem: AllocationProblem
    unservable: tuple[tuple[Bucket, float], ...]
    total_rate: float

    @property
    def unservable_mass(self) -> float:
        """u: the share of requests left out (0.0 when every bucket is served)."""
        return math.fsum(w for _, w in self.unservable)

    @property
    def unservable_rate(self) -> float:
        """R u: requests per second left out."""
        return self.total_rate * self.unservable_mass


def serving_types(problem: AllocationProblem, bucket: Bucket) -> tuple[str, ...]:
    """Names of the candidate types that can serve ``bucket`` (a rate > 0 and not capped at 0)."""
    return tuple(t.name for t in problem.device_types
                 if t.rate(bucket) is not None and t.max_count != 0)


def servable_split(problem: AllocationProblem) -> ServableSplit:
    """Split ``problem`` into its servable part and the buckets left out (module docstring).

    Raises:
        InfeasibleError: no bucket of positive weight is servable (nothing to plan for).
    """
    hist = problem.workload.histogram
    rate = problem.workload.total_rate
    left = tuple(((i, j), w) for i, row in enumerate(hist) for j, w in enumerate(row)
                 if w > 0 and not serving_types(problem, (i, j)))
    if not left:
        return ServableSplit(problem, (), rate)
    mass = math.fsum(w for _, w in left)
    dropped = {b for b, _ in left}
    kept = math.fsum(w for i, row in enumerate(hist) for j, w in enumerate(row) if (i, j) not in dropped)
    if kept <= 0:
        precheck(Instance.of(problem))  # names the first bucket and why each type cannot serve it
        raise InfeasibleError(
            f"infeasible: no candidate type can serve any bucket of the workload "
            f"({len(left)} bucket(s) of weight > 0, e.g. {[b for b, _ in left[:5]]}; "
            f"types: {list(problem.type_names)})")
    new_hist = tuple(tuple(0.0 if (i, j) in dropped else w / kept for j, w in enumerate(row))
                     for i, row in enumerate(hist))
    workload = Workload(new_hist, rate * kept)
    return ServableSplit(replace(problem, workload=workload), left, rate)


def refuse_unservable(split: ServableSplit, names: dict[Bucket, str] | None = None) -> None:
    """Raise :class:`InfeasibleError` naming the left-out buckets, if any (the strict mode).

    ``names`` optionally labels buckets (e.g. with their token ranges) in the message.
    """
    if not split.unservable:
        return
    names = names or {}
    shown = ", ".join(f"{names.get(b, b)} (mass {w:.3g})" for b, w in split.unservable[:6])
    more = f" and {len(split.unservable) - 6} more" if len(split.unservable) > 6 else ""
    raise InfeasibleError(
        f"infeasible: {len(split.unservable)} bucket(s) of total mass {split.unservable_mass:.3g} "
        f"cannot be served by any candidate type ({list(split.problem.type_names)}): {shown}{more}; "
        f"add a kind that serves them, relax the SLO, or plan without strict to leave them out")


__all__ = ["ServableSplit", "refuse_unservable", "servable_split", "serving_types"]
