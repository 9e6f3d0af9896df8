"""The allocation problem's model: frozen inputs (:class:`DeviceType`, :class:`Workload`,
:class:`AllocationProblem`), the result (:class:`AllocationPlan`), validation, and the ILP's data
derived from a problem (:class:`Instance`). Symbols as in :mod:`solvers.allocation.ilp`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from solvers.exceptions import AllocationInputError
from solvers.validate import is_real

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
            if not is_real(entry):
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
        if not is_real(self.price_per_hour) or not (
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
            not is_real(self.power_w) or not math.isfinite(self.power_w) or self.power_w < 0
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
                if is_real(w) and w < 0:
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
        if not is_real(self.total_rate) or not (
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
        if not is_real(self.headroom) or not (
            math.isfinite(self.headroom) and self.headroom >= 0
        ):
            raise AllocationInputError(
                f"AllocationProblem.headroom = {self.headroom!r}; allowed: a finite number >= 0 "
                f"(0.2 = provision for 20% more traffic)"
            )
        if self.power_budget_w is not None:
            if not is_real(self.power_budget_w) or not (
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
        status: "Optimal", or "Feasible" when the time limit stopped the solver with a feasible
            mix and ``solve(..., accept_incumbent=True)`` asked for it (anything else raises).
        gap: (cost - lower bound) / cost, the most this plan can cost above the optimum, as a
            fraction; 0.0 for an optimal plan. The bound is the LP relaxation's optimum.
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
    gap: float = 0.0

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
            "gap": self.gap,
        }


# ----------------------------------------------------------------------------------- instance
@dataclass(frozen=True, slots=True)
class Instance:
    """The ILP's data, derived once from a problem (see the module docstring for the symbols)."""

    problem: AllocationProblem
    buckets: tuple[Bucket, ...]  # B, weight > 0, in (i, j) order
    slices: tuple[tuple[int, int], ...]  # S as (index into buckets, k)
    coef: tuple[tuple[float | None, ...], ...]  # coef[b][t] = a[s,t] for any slice s of b

    @classmethod
    def of(cls, problem: AllocationProblem) -> Instance:
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


def caps_text(problem: AllocationProblem) -> str:
    return ", ".join(
        f"{t.name} <= {t.max_count}" for t in problem.device_types if t.max_count is not None
    )

