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
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from solvers.exceptions import (
    AllocationInputError,
    InfeasibleError,
    SolveIncompleteError,
    SolverUnavailableError,
    did_you_mean,
)

#: Devices of overload forgiven when rounding a load up to a device count (CBC's primal tolerance).
LOAD_TOLERANCE = 1e-7
#: How far the histogram may sum from 1.
HISTOGRAM_SUM_TOLERANCE = 1e-6
#: How far a solver's integer variable may lie from an integer before the answer is refused.
INTEGRALITY_TOLERANCE = 1e-6
#: MILP back-ends ``solve`` accepts.
SOLVERS = ("cbc", "highs")
#: ILP formulations ``solve`` accepts (see the module docstring).
FORMULATIONS = ("aggregated", "binary")

Table = tuple[tuple[float | None, ...], ...]
Bucket = tuple[int, int]


# ----------------------------------------------------------------------------------- inputs
def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _table(value: Any, field_name: str, *, allow_missing: bool) -> Table:
    """Validate a 2-D rectangular table of numbers; return it as a tuple of tuples.

    Entries must be finite and >= 0; with ``allow_missing`` an entry may also be None or NaN.
    """
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)) or len(value) == 0:
        raise AllocationInputError(
            f"{field_name}: expected a non-empty 2-D table [n_in][n_out], got {value!r}"
        )
    rows = []
    width = None
    for i, row in enumerate(value):
        if not isinstance(row, Sequence) or isinstance(row, (str, bytes)) or len(row) == 0:
            raise AllocationInputError(
                f"{field_name}[{i}]: expected a non-empty row of numbers, got {row!r}"
            )
        if width is None:
            width = len(row)
        elif len(row) != width:
            raise AllocationInputError(
                f"{field_name}[{i}]: expected {width} entries (the width of row 0), got {len(row)}"
            )
        out: list[float | None] = []
        for j, entry in enumerate(row):
            if entry is None and allow_missing:
                out.append(None)
                continue
            if not _is_number(entry):
                allowed = "a number >= 0, None or NaN" if allow_missing else "a number >= 0"
                raise AllocationInputError(
                    f"{field_name}[{i}][{j}] = {entry!r}: expected {allowed}"
                )
            entry = float(entry)
            if math.isnan(entry) and allow_missing:
                out.append(entry)
                continue
            if not math.isfinite(entry) or entry < 0:
                allowed = "finite and >= 0 (0, None or NaN = cannot serve)" if allow_missing else (
                    "finite and >= 0"
                )
                raise AllocationInputError(f"{field_name}[{i}][{j}] = {entry!r}: must be {allowed}")
            out.append(entry)
        rows.append(tuple(out))
    return tuple(rows)


def _shape(table: Table) -> tuple[int, int]:
    return (len(table), len(table[0]))


def _rate(entry: float | None) -> float | None:
    """A table entry as a usable positive rate, or None for "cannot serve" (0, None, NaN)."""
    if entry is None or math.isnan(entry) or entry <= 0:
        return None
    return entry


@dataclass(frozen=True, slots=True)
class DeviceType:
    """One kind of device that may be bought or rented.

    Attributes:
        name: a unique label (a catalog kind, or a name from a Mélange config).
        price_per_hour: $ per device-hour, >= 0.
        max_rate: TPOT table [n_in][n_out]: the highest request rate (req/s) one device sustains
            under the TPOT SLO for requests of bucket (i, j); 0, None or NaN = cannot serve.
        power_w: the device's power draw in W (needed when the problem has a power budget).
        max_count: at most this many devices of the type (availability, or devices owned).
        ttft_max_rate: optional TTFT table of the same shape; the binding rate is the smaller one.
    """

    name: str
    price_per_hour: float
    max_rate: Table
    power_w: float | None = None
    max_count: int | None = None
    ttft_max_rate: Table | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise AllocationInputError(f"DeviceType.name = {self.name!r}: expected a non-empty string")
        where = f"DeviceType {self.name!r}"
        if not _is_number(self.price_per_hour) or not (
            math.isfinite(self.price_per_hour) and self.price_per_hour >= 0
        ):
            raise AllocationInputError(
                f"{where}: price_per_hour = {self.price_per_hour!r}; allowed: a finite number >= 0"
            )
        object.__setattr__(
            self, "max_rate", _table(self.max_rate, f"{where}: max_rate", allow_missing=True)
        )
        if self.ttft_max_rate is not None:
            ttft = _table(self.ttft_max_rate, f"{where}: ttft_max_rate", allow_missing=True)
            if _shape(ttft) != _shape(self.max_rate):
                raise AllocationInputError(
                    f"{where}: ttft_max_rate has shape {_shape(ttft)} but max_rate has shape "
                    f"{_shape(self.max_rate)}; they must match"
                )
            object.__setattr__(self, "ttft_max_rate", ttft)
        if self.power_w is not None and (
            not _is_number(self.power_w) or not math.isfinite(self.power_w) or self.power_w < 0
        ):
            raise AllocationInputError(
                f"{where}: power_w = {self.power_w!r}; allowed: None or a finite number >= 0"
            )
        if self.max_count is not None and (
            not isinstance(self.max_count, int) or isinstance(self.max_count, bool)
            or self.max_count < 0
        ):
            raise AllocationInputError(
                f"{where}: max_count = {self.max_count!r}; allowed: None or an integer >= 0"
            )

    @property
    def shape(self) -> tuple[int, int]:
        """(n_in, n_out) of the rate tables."""
        return _shape(self.max_rate)

    def rate(self, bucket: Bucket) -> float | None:
        """mu[t, b]: the binding max rate on ``bucket`` (min of TPOT and TTFT), None if it cannot serve."""
        i, j = bucket
        tpot = _rate(self.max_rate[i][j])
        if tpot is None or self.ttft_max_rate is None:
            return tpot
        ttft = _rate(self.ttft_max_rate[i][j])
        return None if ttft is None else min(tpot, ttft)

    def why_not(self, bucket: Bucket) -> str:
        """Which table stops this type from serving ``bucket`` (for error messages)."""
        i, j = bucket
        if _rate(self.max_rate[i][j]) is None:
            return f"max_rate[{i}][{j}] = {self.max_rate[i][j]!r}"
        assert self.ttft_max_rate is not None  # rate() is None only through one of the tables
        return f"ttft_max_rate[{i}][{j}] = {self.ttft_max_rate[i][j]!r}"


@dataclass(frozen=True, slots=True)
class Workload:
    """Traffic to serve: a histogram over (input-length, output-length) buckets and a total rate.

    Attributes:
        histogram: [n_in][n_out] fractions of requests per bucket, each >= 0, summing to 1
            (within 1e-6).
        total_rate: requests per second, >= 0.
    """

    histogram: tuple[tuple[float, ...], ...]
    total_rate: float

    def __post_init__(self) -> None:
        for i, row in enumerate(self.histogram if isinstance(self.histogram, Sequence) else ()):
            for j, w in enumerate(row if isinstance(row, Sequence) else ()):
                if _is_number(w) and w < 0:
                    raise AllocationInputError(
                        f"Workload.histogram[{i}][{j}] (bucket ({i}, {j})) = {w!r}: fractions must "
                        f"be >= 0"
                    )
        hist = _table(self.histogram, "Workload.histogram", allow_missing=False)
        total = math.fsum(w for row in hist for w in row)
        if abs(total - 1.0) > HISTOGRAM_SUM_TOLERANCE:
            raise AllocationInputError(
                f"Workload.histogram sums to {total!r}; it must sum to 1 "
                f"(within {HISTOGRAM_SUM_TOLERANCE:g})"
            )
        object.__setattr__(self, "histogram", hist)
        if not _is_number(self.total_rate) or not (
            math.isfinite(self.total_rate) and self.total_rate >= 0
        ):
            raise AllocationInputError(
                f"Workload.total_rate = {self.total_rate!r} req/s; allowed: a finite number >= 0"
            )

    @property
    def shape(self) -> tuple[int, int]:
        """(n_in, n_out) of the histogram."""
        return _shape(self.histogram)


@dataclass(frozen=True, slots=True)
class AllocationProblem:
    """Everything :func:`solve` needs.

    Attributes:
        device_types: the candidate types, unique names, tables shaped like the histogram.
        workload: the traffic.
        slice_factor: F, slices per bucket (>= 1); larger F lets a bucket split among more types.
        headroom: h >= 0; every slice is provisioned for rate x (1 + h).
        power_budget_w: optional W; the fleet's total power sum_t P_t n_t must not exceed it
            (then every device type needs ``power_w``).
    """

    device_types: tuple[DeviceType, ...]
    workload: Workload
    slice_factor: int = 8
    headroom: float = 0.0
    power_budget_w: float | None = None

    def __post_init__(self) -> None:
        types = self.device_types
        if isinstance(types, DeviceType) or not isinstance(types, Iterable):
            raise AllocationInputError(
                f"AllocationProblem.device_types = {types!r}: expected a sequence of DeviceType"
            )
        types = tuple(types)
        object.__setattr__(self, "device_types", types)
        if not types:
            raise AllocationInputError("AllocationProblem.device_types is empty; give at least one")
        for k, t in enumerate(types):
            if not isinstance(t, DeviceType):
                raise AllocationInputError(
                    f"AllocationProblem.device_types[{k}] = {t!r}: expected a DeviceType"
                )
        seen: set[str] = set()
        for t in types:
            if t.name in seen:
                raise AllocationInputError(
                    f"AllocationProblem.device_types: duplicate name {t.name!r}; names must be unique"
                )
            seen.add(t.name)
        if not isinstance(self.workload, Workload):
            raise AllocationInputError(
                f"AllocationProblem.workload = {self.workload!r}: expected a Workload"
            )
        shape = self.workload.shape
        for t in types:
            if t.shape != shape:
                raise AllocationInputError(
                    f"device type {t.name!r}: max_rate has shape {t.shape} (n_in, n_out) but the "
                    f"workload histogram has shape {shape}; they must match"
                )
        if not isinstance(self.slice_factor, int) or isinstance(self.slice_factor, bool) or (
            self.slice_factor < 1
        ):
            raise AllocationInputError(
                f"AllocationProblem.slice_factor = {self.slice_factor!r}; allowed: an integer >= 1"
            )
        if not _is_number(self.headroom) or not (
            math.isfinite(self.headroom) and self.headroom >= 0
        ):
            raise AllocationInputError(
                f"AllocationProblem.headroom = {self.headroom!r}; allowed: a finite number >= 0 "
                f"(0.2 = provision for 20% more traffic)"
            )
        if self.power_budget_w is not None:
            if not _is_number(self.power_budget_w) or not (
                math.isfinite(self.power_budget_w) and self.power_budget_w >= 0
            ):
                raise AllocationInputError(
                    f"AllocationProblem.power_budget_w = {self.power_budget_w!r}; allowed: None or "
                    f"a finite number >= 0"
                )
            missing = [t.name for t in types if t.power_w is None]
            if missing:
                raise AllocationInputError(
                    f"AllocationProblem.power_budget_w = {self.power_budget_w!r} needs power_w on "
                    f"every device type; missing on {missing}"
                )

    @property
    def type_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.device_types)


# ----------------------------------------------------------------------------------- result
@dataclass(frozen=True, slots=True)
class AllocationPlan:
    """The answer of :func:`solve`. Dicts are plain (picklable); treat them as read-only.

    Attributes:
        counts: {type: devices}, every type of the problem included (zeros too).
        cost_per_hour: sum_t p_t * counts[t], $ per hour.
        assignment: {(i, j): {type: fraction of the bucket's slices}} for buckets of weight > 0;
            only types with a positive fraction are listed; fractions are multiples of 1/F.
        load_per_type: {type: L_t}, fractional devices the assigned slices occupy (every type);
            counts[t] = ceil(L_t) for any type with a positive price.
        baselines: {type: cost $/h of serving everything with that type alone, or None when it
            cannot (a bucket it cannot serve, its cap or the power budget)}; empty when not asked.
        savings_vs: {type: (baseline - cost) / baseline, or None where the baseline is None;
            0.0 where the baseline costs 0}.
        solve_seconds: wall time to build and solve the mix (baselines and diagnosis excluded).
        status: "Optimal" (anything else raises instead of returning a plan).
        solver: "cbc", "highs", "closed-form" (one type) or "trivial" (total_rate 0).
    """

    counts: dict[str, int]
    cost_per_hour: float
    assignment: dict[Bucket, dict[str, float]]
    load_per_type: dict[str, float]
    baselines: dict[str, float | None] = field(default_factory=dict)
    savings_vs: dict[str, float | None] = field(default_factory=dict)
    solve_seconds: float = 0.0
    status: str = "Optimal"
    solver: str = "cbc"

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: ``allocation`` (counts), ``cost_per_hour``, ``baselines``, ... ."""
        return {
            "allocation": dict(self.counts),
            "cost_per_hour": self.cost_per_hour,
            "baselines": dict(self.baselines),
            "savings_vs": dict(self.savings_vs),
            "load_per_type": dict(self.load_per_type),
            "assignment": {f"{i},{j}": dict(v) for (i, j), v in self.assignment.items()},
            "solve_seconds": self.solve_seconds,
            "status": self.status,
            "solver": self.solver,
        }


# ----------------------------------------------------------------------------------- instance
@dataclass(frozen=True, slots=True)
class _Instance:
    """The ILP's data, derived once from a problem (see the module docstring for the symbols)."""

    problem: AllocationProblem
    buckets: tuple[Bucket, ...]  # B, weight > 0, in (i, j) order
    slices: tuple[tuple[int, int], ...]  # S as (index into buckets, k)
    coef: tuple[tuple[float | None, ...], ...]  # coef[b][t] = a[s,t] for any slice s of b

    @classmethod
    def of(cls, problem: AllocationProblem) -> _Instance:
        hist = problem.workload.histogram
        buckets = tuple(
            (i, j) for i, row in enumerate(hist) for j, w in enumerate(row) if w > 0
        )
        factor = problem.slice_factor
        scale = problem.workload.total_rate * (1.0 + problem.headroom) / factor
        coef = []
        for i, j in buckets:
            per_type = []
            for t in problem.device_types:
                mu = t.rate((i, j))
                per_type.append(None if mu is None else scale * hist[i][j] / mu)
            coef.append(tuple(per_type))
        slices = tuple((b, k) for b in range(len(buckets)) for k in range(factor))
        return cls(problem, buckets, slices, tuple(coef))

    @property
    def size(self) -> str:
        return f"instance: {len(self.slices)} slices x {len(self.problem.device_types)} types"

    def load_alone(self, t: int) -> float | None:
        """L_t if type t served every slice; None when it cannot serve some bucket of B."""
        if any(c[t] is None for c in self.coef):
            return None
        return math.fsum(c[t] for c in self.coef) * self.problem.slice_factor


def ceil_devices(load: float) -> int:
    """Devices needed for a fractional load: ceil(load - LOAD_TOLERANCE), never below 0."""
    return max(0, math.ceil(load - LOAD_TOLERANCE))


def _caps_text(problem: AllocationProblem) -> str:
    return ", ".join(
        f"{t.name} <= {t.max_count}" for t in problem.device_types if t.max_count is not None
    )


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
    return _single_count(_Instance.of(problem), t)


def _single_count(inst: _Instance, t: int) -> int | None:
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


def _baselines(inst: _Instance) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for t, dev in enumerate(inst.problem.device_types):
        n = _single_count(inst, t)
        out[dev.name] = None if n is None else n * dev.price_per_hour
    return out


# ----------------------------------------------------------------------------------- the ILP
def _backend(solver: str, time_limit_s: float | None) -> Any:
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


def _greedy(inst: _Instance) -> tuple[list[int], list[int]] | None:
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


def _build(
    inst: _Instance,
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
    ``bound`` adds n_t <= floor(UB / p_t), UB the cost of :func:`_greedy`'s mix (cost objective).
    """
    import pulp

    problem = inst.problem
    types = problem.device_types
    factor = problem.slice_factor
    start = _greedy(inst) if bound and objective == "cost" else None
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


def _run(prob: Any, backend: Any) -> tuple[str, bool]:
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


def _value(var: Any) -> float:
    v = var.value()
    return 0.0 if v is None else float(v)


def _integral(value: float, what: str) -> int:
    r = round(value)
    if abs(value - r) > INTEGRALITY_TOLERANCE:
        raise SolveIncompleteError(
            f"the solver returned {what} = {value!r}, not within {INTEGRALITY_TOLERANCE:g} of an "
            f"integer; try solver='cbc' or 'highs' (the other one)"
        )
    return int(r)


# ----------------------------------------------------------------------------------- diagnosis
def _precheck(inst: _Instance) -> None:
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
                f"caps allow {allowed} in total ({_caps_text(problem)}); {inst.size}"
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


def _diagnose(inst: _Instance, solver: str, status: str) -> InfeasibleError:
    """Find the binding cause of an infeasible solve by re-solving relaxations."""
    import pulp

    backend = _backend(solver, None)
    problem = inst.problem
    caps = any(t.max_count is not None for t in problem.device_types)
    if caps:
        prob, _, n = _build(inst, power=False)
        _, proven = _run(prob, backend)
        if not proven:
            prob, _, n = _build(inst, caps=False, power=False)
            _, ok = _run(prob, backend)
            need = {
                dev.name: round(_value(n[t]))
                for t, dev in enumerate(problem.device_types)
                if ok and round(_value(n[t])) > 0
            }
            return InfeasibleError(
                f"infeasible: caps too low: no assignment of the slices fits within the caps "
                f"({_caps_text(problem)}); without caps the cheapest mix needs {need}; {inst.size}"
            )
    if problem.power_budget_w is not None:
        prob, _, n = _build(inst, objective="power", power=False)
        _, proven = _run(prob, backend)
        if proven:
            watts = pulp.value(prob.objective)
            counts = {
                dev.name: round(_value(n[t]))
                for t, dev in enumerate(problem.device_types)
                if round(_value(n[t])) > 0
            }
            return InfeasibleError(
                f"infeasible: power budget too tight: the lowest-power feasible mix {counts} "
                f"draws {watts:.6g} W, over power_budget_w = {problem.power_budget_w!r}; {inst.size}"
            )
    return InfeasibleError(
        f"infeasible: the solver reports {status!r} and no single cause (masks, caps, power "
        f"budget) explains it; {inst.size}"
    )


# ----------------------------------------------------------------------------------- solve
def solve(
    problem: AllocationProblem,
    *,
    solver: str = "cbc",
    time_limit_s: float | None = None,
    baselines: bool = True,
    formulation: str = "aggregated",
) -> AllocationPlan:
    """The cost-optimal device mix for ``problem`` (the ILP of the module docstring).

    Args:
        problem: the instance.
        solver: "cbc" (PuLP's bundled CBC, default) or "highs" (needs highspy or a highs binary).
        time_limit_s: optional wall-clock limit handed to the solver.
        baselines: also compute each single-type baseline and the savings against it.
        formulation: "aggregated" (y_b_t, default, fast) or "binary" (Mélange's x_s_t; same
            optimum, much slower beyond a few types; kept for comparison).

    Raises:
        InfeasibleError: no mix exists; the message names the cause (a bucket no allowed type can
            serve, caps too low, power budget too tight) and the instance size.
        SolverUnavailableError: unknown solver name, or the solver is not installed.
        SolveIncompleteError: the solver stopped without proving optimality (e.g. time limit).
    """
    if not isinstance(problem, AllocationProblem):
        raise AllocationInputError(f"problem = {problem!r}: expected an AllocationProblem")
    if time_limit_s is not None and (
        not _is_number(time_limit_s) or not time_limit_s > 0 or not math.isfinite(time_limit_s)
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
    inst = _Instance.of(problem)
    _precheck(inst)
    if len(names) == 1:
        plan = _closed_form(inst, start)
    else:
        plan = _solve_ilp(inst, solver, time_limit_s, formulation, start)
    if not baselines:
        return plan
    base = _baselines(inst)
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
    )


def _closed_form(inst: _Instance, start: float) -> AllocationPlan:
    """One type: every slice on it, n = ceil(L); _precheck has ruled out masks."""
    dev = inst.problem.device_types[0]
    n = _single_count(inst, 0)
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


def _solve_ilp(
    inst: _Instance,
    solver: str,
    time_limit_s: float | None,
    formulation: str = "aggregated",
    start: float | None = None,
) -> AllocationPlan:
    """Build and solve the mix ILP (no fast path); read back a checked plan."""
    start = time.perf_counter() if start is None else start
    backend = _backend(solver, time_limit_s)
    prob, m, n = _build(inst, formulation=formulation, bound=True)
    status, proven = _run(prob, backend)
    elapsed = time.perf_counter() - start
    if not proven:
        if status in ("Infeasible", "Undefined", "Unbounded") or (
            status == "Not Solved" and time_limit_s is None
        ):
            raise _diagnose(inst, solver, status)
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
        k = sum(_integral(_value(var), var.name) for var in group)
        if k == 0:
            continue
        placed[b] += k
        per_type[t].append(k * inst.coef[b][t])
        shares.setdefault(inst.buckets[b], {})[types[t].name] = k / factor
    bad = [inst.buckets[b] for b, k in enumerate(placed) if k != factor]
    if bad:
        raise SolveIncompleteError(
            f"the solver's answer does not place exactly {factor} slices of bucket(s) {bad[:5]}; "
            f"{inst.size}"
        )
    loads = [math.fsum(v) for v in per_type]
    counts = {
        dev.name: min(_integral(_value(n[t]), f"n_{t}"), ceil_devices(loads[t]))
        for t, dev in enumerate(types)
    }
    cost = math.fsum(counts[d.name] * d.price_per_hour for d in types)
    greedy = _greedy(inst)
    if greedy is not None:  # an optimum is never worse than a known feasible mix
        known = math.fsum(d.price_per_hour * k for d, k in zip(types, greedy[1]))
        if cost > known + 1e-9 * max(1.0, known):
            raise SolveIncompleteError(
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
    )


__all__ = [
    "FORMULATIONS",
    "AllocationPlan",
    "AllocationProblem",
    "DeviceType",
    "LOAD_TOLERANCE",
    "SOLVERS",
    "Workload",
    "ceil_devices",
    "single_type_count",
    "solve",
]
