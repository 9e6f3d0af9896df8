"""Planning on a running gateway: a ``PlanQuery`` -> the allocation solver -> (optionally) applied.

The gateway's ``Plan`` RPC with a query runs the same code path as ``flotilla plan``:
:func:`build_problem` (throughput tables MODELED from cluster/perf) and
:func:`solvers.allocation.solve`. Applying a plan (:func:`apply_allocation`) does three things, in
this order:

1. :func:`cluster.shell.autoscaler.apply_plan`: ask Ray's autoscaler for the plan's devices and store the
   plan as a new version of the plan named ``default``;
2. :func:`solvers.routing.routing_plan`: derive the Router's routing plan (request-size bucket ->
   kinds, in proportion to the assignment) on the grid the plan was solved on;
3. store it as a new version of the plan named ``routing`` (:data:`actors.router.PLAN_NAME`), which
   every Router reads on its next refresh.

Errors: bad fields -> :class:`~cluster.exceptions.InputError` naming the ``query.<field>``; no mix
meets the SLO -> :class:`PlanInfeasibleError` carrying the solver's binding cause (gRPC
FAILED_PRECONDITION); the solver stopping without an optimum -> :class:`PlanIncompleteError`.
"""

from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass, field
from typing import Any

import dataclasses
import json
from pathlib import Path

from cluster.exceptions import FlotillaError, InputError, UnknownDeviceKindError

DEFAULT_DEVICES = "l4,a10g,a100-80g-sxm,h100-sxm"
PRICE_SOURCES = ("catalog", "melange")
MODELED_TABLES_NOTE = (
    "throughput tables are MODELED (continuous-batching model on cluster/perf's roofline, "
    "not measurements); the ILP and its costs are exact for those tables"
)
CONFIG_TABLES_NOTE = "throughput tables are the config file's (tputs), used as given"


def solver_call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a solvers/ call, turning its errors into the CLI's (exit 2 for the user's mistakes)."""
    from solvers.exceptions import SolveIncompleteError

    try:
        return fn(*args, **kwargs)
    except SolveIncompleteError as e:
        raise FlotillaError(str(e)) from None
    except ValueError as e:  # AllocationInputError, InfeasibleError, SolverUnavailableError
        if isinstance(e, InputError):
            raise
        raise InputError(str(e)) from None


def _parse_caps(items: list[str], kinds: list[str], catalog: Any) -> dict[str, int]:
    caps: dict[str, int] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise InputError(f"--max-count: expected KIND=N, got {item!r}")
        kind = catalog.resolve(name.strip())
        if kind not in kinds:
            raise InputError(f"--max-count: {kind!r} is not in --devices {kinds}")
        try:
            n = int(value)
        except ValueError:
            raise InputError(f"--max-count: {value!r} is not an integer (in {item!r})") from None
        if n < 0:
            raise InputError(f"--max-count: {kind}={n}; allowed: an integer >= 0")
        caps[kind] = n
    return caps


def _histogram(workload: str, grid: Any) -> tuple[tuple[tuple[float, ...], ...], dict[str, Any]]:
    """(histogram, description) of a built-in workload name or a JSONL/CSV file of records."""
    from solvers.workloads import WORKLOADS, bin_requests, expected_histogram, get_workload

    if workload.strip().lower() in WORKLOADS:
        spec = get_workload(workload)
        return expected_histogram(spec, grid), {
            "name": spec.name, "source": "synthetic (log-normal lengths, published means)",
            "mean_input": spec.mean_input, "mean_output": spec.mean_output,
        }
    if not Path(workload).suffix:
        solver_call(get_workload, workload)  # unknown name: says which are allowed
    from cluster.workload_files import load_requests

    records = load_requests(workload)
    binned = solver_call(bin_requests, records, grid)
    return binned.histogram, {
        "name": workload, "source": "file", "requests": binned.count, "clamped": binned.clamped,
        "mean_input": sum(p for p, _ in records) / len(records),
        "mean_output": sum(o for _, o in records) / len(records),
    }


def build_problem(
    *, model: str, workload: str, rate: float, tpot_slo_ms: float, ttft_slo_ms: float | None,
    devices: str, max_count: list[str], power_budget_w: float | None, headroom: float,
    slice_factor: int, prices: str, calibration: str | None = None, tables: tuple[str, ...] = (),
    strict: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """The allocation problem the flags describe, and a JSON-ready description of its inputs.

    ``calibration`` names a calibration profile (``melange-2024``, or a profile JSON file): each
    kind's throughput table is then modeled with that kind's fitted efficiencies.

    Buckets that no candidate kind can serve are left out (:func:`solvers.allocation.servable_split`:
    the problem returned carries the servable buckets at their own rates) and reported as
    ``unservable_buckets`` / ``unservable_mass``; with ``strict`` they are refused instead
    (InputError naming them, exit 2)."""
    from cluster.calibration import load_profile
    from cluster.models import get_model
    from cluster.probe import probed_catalog
    from cluster.tables import ServingConfig, modeled_rate_table, paper_grid
    from solvers.allocation import AllocationProblem, DeviceType, Workload, refuse_unservable, servable_split

    if prices not in PRICE_SOURCES:
        raise InputError(f"--prices: {prices!r}; allowed: {list(PRICE_SOURCES)}")
    for flag, value, ok in (("--rate", rate, rate >= 0), ("--tpot-slo-ms", tpot_slo_ms, tpot_slo_ms > 0),
                            ("--headroom", headroom, headroom >= 0), ("--slice-factor", slice_factor, slice_factor >= 1)):
        if not (math.isfinite(value) and ok):
            allowed = {"--rate": ">= 0", "--tpot-slo-ms": "> 0", "--headroom": ">= 0",
                       "--slice-factor": "an integer >= 1"}[flag]
            raise InputError(f"{flag}: {value!r}; allowed: {allowed}")
    if ttft_slo_ms is not None and not (math.isfinite(ttft_slo_ms) and ttft_slo_ms > 0):
        raise InputError(f"--ttft-slo-ms: {ttft_slo_ms!r}; allowed: a number > 0")
    if power_budget_w is not None and not (math.isfinite(power_budget_w) and power_budget_w >= 0):
        raise InputError(f"--power-budget-w: {power_budget_w!r}; allowed: a number >= 0")
    catalog = probed_catalog()  # the cpu kind is measured on first use, never before
    kinds: list[str] = []
    for name in (d.strip() for d in devices.split(",")):
        if not name:
            continue
        kind = catalog.resolve(name)
        if kind not in kinds:
            kinds.append(kind)
    if not kinds:
        raise InputError(f"--devices: {devices!r} names no device; e.g. {DEFAULT_DEVICES}")
    caps = _parse_caps(max_count, kinds, catalog)
    if calibration is not None:
        try:
            profile = load_profile(calibration)
        except InputError as exc:
            raise InputError(f"--calibration: {str(exc).removeprefix('calibration: ')}") from None
    else:
        profile = None
    measured = _measured_tables(tables, kinds, catalog, tpot_slo_ms, get_model(model).name)
    shape = get_model(model)
    grid = paper_grid()
    hist, wl_desc = _histogram(workload, grid)
    types = []
    tables = {}
    for kind in kinds:
        spec = catalog.get(kind)
        price = spec.price_per_hour if prices == "catalog" else spec.price_per_hour_melange
        if price is None:
            raise InputError(
                f"--devices: {kind!r} has no {prices} price (price_per_hour"
                f"{'' if prices == 'catalog' else '_melange'} is unset in the catalog); "
                f"drop it or use --prices {'melange' if prices == 'catalog' else 'catalog'}"
            )
        serving = ServingConfig() if profile is None else ServingConfig(efficiency=profile.for_kind(kind))
        tpot = modeled_rate_table(shape, spec, grid, tpot_slo_ms / 1e3, config=serving)
        ttft = (modeled_rate_table(shape, spec, grid, 1e6, ttft_slo_ms / 1e3, config=serving)
                if ttft_slo_ms is not None else None)
        rates = tpot.rates
        if kind in measured:  # measured where profiled, modeled elsewhere
            m = measured[kind]
            rates = tuple(tuple(mr if lim != "unprofiled" else r for r, mr, lim in zip(row, mrow, lrow))
                          for row, mrow, lrow in zip(tpot.rates, m["rates"], m["limits"]))
        tables[kind] = [list(r) for r in rates]
        types.append(solver_call(
            DeviceType, name=kind, price_per_hour=price, max_rate=rates, power_w=spec.power_max_w,
            max_count=caps.get(kind), ttft_max_rate=None if ttft is None else ttft.rates,
        ))
    problem = solver_call(
        AllocationProblem, device_types=tuple(types),
        workload=solver_call(Workload, histogram=hist, total_rate=rate), slice_factor=slice_factor,
        headroom=headroom, power_budget_w=power_budget_w,
    )
    split = solver_call(servable_split, problem)
    labels = {b: bucket_label(grid, b) for b, _ in split.unservable}
    if strict:
        solver_call(refuse_unservable, split, labels)
    problem = split.problem
    desc = {
        "model": shape.name, "workload": wl_desc, "rate": rate, "tpot_slo_ms": tpot_slo_ms,
        "ttft_slo_ms": ttft_slo_ms, "devices": kinds, "max_count": caps, "power_budget_w": power_budget_w,
        "headroom": headroom, "slice_factor": slice_factor, "prices": prices,
        "prices_per_hour": {t.name: t.price_per_hour for t in types},
        "grid": {"input_edges": list(grid.in_edges), "output_edges": list(grid.out_edges)},
        "rate_tables": tables,
        "throughput_source": "modeled+measured" if measured else "modeled",
        "note": MODELED_TABLES_NOTE + ("; measured where a --tables file profiled the bucket" if measured else ""),
        "measured": {k: {"file": m["file"], "engine": m.get("engine"), "model": m.get("model"), "host": m.get("host"),
                         "date": m.get("date"), "measured_buckets": sum(lim != "unprofiled" for row in m["limits"] for lim in row)}
                     for k, m in measured.items()},
        "unservable_mass": split.unservable_mass,
        "unservable_rate": split.unservable_rate,
        "planned_rate": problem.workload.total_rate,
        "unservable_buckets": [
            {"bucket": list(b), "tokens": labels[b], "mass": w} for b, w in split.unservable],
        "calibration": None if profile is None else {
            "profile": profile.name, "calibrated_kinds": sorted(k for k in kinds if k in profile.efficiency)},
    }
    return problem, desc


def bucket_label(grid: Any, bucket: tuple[int, int]) -> str:
    """``"12000-16000 in, 100-250 out"``: a bucket's token ranges (each edge is a bucket's top)."""
    (i, j), ins, outs = bucket, (0, *grid.in_edges), (0, *grid.out_edges)
    return f"{ins[i] + 1}-{ins[i + 1]} in, {outs[j] + 1}-{outs[j + 1]} out"


def _measured_tables(paths: tuple[str, ...], kinds: list[str], catalog: Any, tpot_slo_ms: float,
                     model: str) -> dict[str, Any]:
    """``{kind: table doc}`` of ``flotilla profile --table`` files, checked against the plan."""
    from cluster.models import get_model
    from cluster.shell.profiler import load_table
    from cluster.tables import paper_grid

    grid = paper_grid()
    out: dict[str, Any] = {}
    for path in paths:
        doc = load_table(path)
        kind = catalog.resolve(doc["kind"])
        if kind not in kinds:
            raise InputError(f"--tables: {path!r} measures {kind!r}, which is not in --devices {kinds}")
        if kind in out:
            raise InputError(f"--tables: two tables for {kind!r} ({out[kind]['file']!r} and {path!r})")
        if doc["grid"] != {"input_edges": list(grid.in_edges), "output_edges": list(grid.out_edges)}:
            raise InputError(f"--tables: {path!r} is on another bucket grid than the plan's")
        measured_model = doc.get("model")
        if measured_model and measured_model != "echo":
            try:
                same = get_model(measured_model).name == model
            except InputError:
                same = measured_model == model
            if not same:
                raise InputError(f"--tables: {path!r} measured model {measured_model!r}, the plan is for {model!r}")
        slo = doc.get("slo_ms", {}).get("tpot")
        if slo is not None and abs(slo - tpot_slo_ms) > 1e-9:
            raise InputError(f"--tables: {path!r} was reduced under a TPOT SLO of {slo:g} ms, the plan asks "
                             f"{tpot_slo_ms:g} ms; reduce the sweep again with --tpot-slo-ms {tpot_slo_ms:g}")
        out[kind] = {**doc, "file": path}
    return out


def problem_from_config(path: str, strict: bool = False) -> tuple[Any, dict[str, Any]]:
    """A Mélange config file as a problem; its GPU names mapped to catalog kinds where they resolve.
    Buckets no GPU of the file can serve are left out and reported, or refused with ``strict``
    (as in :func:`build_problem`)."""
    from cluster.catalog import default_catalog
    from solvers.allocation import refuse_unservable, servable_split
    from solvers.melange_format import parse_melange_config

    try:
        obj = json.loads(Path(path).read_text())
    except OSError as e:
        raise InputError(f"--config {path!r}: cannot read it ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise InputError(f"--config {path!r}: not valid JSON (line {e.lineno}: {e.msg})") from None
    problem = solver_call(parse_melange_config, obj)
    catalog = default_catalog()
    names: dict[str, str] = {}
    for t in problem.device_types:
        try:
            kind = catalog.resolve(t.name)
        except UnknownDeviceKindError:
            kind = t.name
        names[t.name] = kind if kind not in names.values() else t.name
    types = tuple(dataclasses.replace(t, name=names[t.name]) for t in problem.device_types)
    split = solver_call(servable_split, dataclasses.replace(problem, device_types=types))
    if strict:
        solver_call(refuse_unservable, split)
    return split.problem, {
        "config": path, "names": names, "rate": problem.workload.total_rate,
        "slice_factor": problem.slice_factor, "throughput_source": "config", "note": CONFIG_TABLES_NOTE,
        "unservable_mass": split.unservable_mass, "unservable_rate": split.unservable_rate,
        "planned_rate": split.problem.workload.total_rate,
        "unservable_buckets": [{"bucket": list(b), "tokens": None, "mass": w} for b, w in split.unservable],
    }


#: Planning defaults (those of ``flotilla plan``).
DEFAULT_MODEL = "llama-2-7b"
DEFAULT_WORKLOAD = "arena"
DEFAULT_RATE = 4.0
DEFAULT_TPOT_SLO_MS = 120.0
MAX_RATE = 1e6
MAX_DEVICES = 32
MAX_COUNT = 100_000
#: A simulated plan's attainment target (``flotilla plan --target``'s default) and request counts.
DEFAULT_SIM_TARGET = 0.99
DEFAULT_SIM_REQUESTS = 2000
MIN_SIM_REQUESTS, MAX_SIM_REQUESTS = 100, 100_000
#: Longest a gateway solve may run, seconds (the RPC deadline, when shorter, wins).
SOLVE_TIME_LIMIT_S = 60.0


class PlanInfeasibleError(FlotillaError):
    """No device mix meets the query's SLO within its limits (gRPC FAILED_PRECONDITION)."""


class PlanIncompleteError(FlotillaError):
    """The solver stopped without proving an optimum (time limit) (gRPC DEADLINE_EXCEEDED)."""


class PlanSolverError(FlotillaError):
    """The solver's answer failed flotilla's checks (gRPC ABORTED: retrying may succeed)."""


@dataclass(frozen=True, slots=True)
class PlanQuery:
    """A validated planning query; field meanings as in ``flotilla plan`` (docs/planning.md)."""

    model: str = DEFAULT_MODEL
    workload: str = DEFAULT_WORKLOAD
    rate: float = DEFAULT_RATE
    tpot_slo_ms: float = DEFAULT_TPOT_SLO_MS
    ttft_slo_ms: float | None = None
    devices: tuple[str, ...] = ()
    max_count: tuple[tuple[str, int], ...] = ()
    power_budget_w: float | None = None
    apply: bool = False
    strict: bool = False
    #: Also simulate the plan at its rate and SLOs (``flotilla plan --simulate``).
    simulate: bool = False
    #: With ``simulate``: an SLO attainment below this is flagged (``meets_target`` false).
    target: float = DEFAULT_SIM_TARGET
    #: With ``simulate``: how many requests to simulate.
    sim_requests: int = DEFAULT_SIM_REQUESTS

    def __post_init__(self) -> None:
        from solvers.workloads import WORKLOADS

        if not isinstance(self.model, str) or not self.model.strip() or len(self.model) > 128:
            raise InputError(f"query.model: {self.model!r:.80}; expected a model name (e.g. {DEFAULT_MODEL})")
        if self.workload.strip().lower() not in WORKLOADS:
            raise InputError(f"query.workload: {self.workload!r:.80}; allowed: {', '.join(sorted(WORKLOADS))} "
                             "(files are accepted by `flotilla plan`, not over gRPC)")
        _number("query.rate", self.rate, 0.0, MAX_RATE)
        _number("query.tpot_slo_ms", self.tpot_slo_ms, 0.0, 1e9, lo_open=True)
        if self.ttft_slo_ms is not None:
            _number("query.ttft_slo_ms", self.ttft_slo_ms, 0.0, 1e9, lo_open=True)
        if self.power_budget_w is not None:
            _number("query.power_budget_w", self.power_budget_w, 0.0, 1e12)
        if len(self.devices) > MAX_DEVICES:
            raise InputError(f"query.devices: {len(self.devices)} kinds; allowed: at most {MAX_DEVICES}")
        for d in self.devices:
            if not isinstance(d, str) or not d.strip() or "," in d or "=" in d or len(d) > 64:
                raise InputError(f"query.devices: {d!r:.80} is not a device kind (e.g. l4, a100-80g-sxm)")
        for kind, n in self.max_count:
            if not kind.strip() or "," in kind or "=" in kind or len(kind) > 64:
                raise InputError(f"query.max_count: key {kind!r:.80} is not a device kind")
            if not 0 <= n <= MAX_COUNT:
                raise InputError(f"query.max_count[{kind!r}]: {n}; allowed: 0..{MAX_COUNT}")
        _number("query.target", self.target, 0.0, 1.0)
        if isinstance(self.sim_requests, bool) or not isinstance(self.sim_requests, int) \
                or not MIN_SIM_REQUESTS <= self.sim_requests <= MAX_SIM_REQUESTS:
            raise InputError(f"query.sim_requests: {self.sim_requests!r}; allowed: {MIN_SIM_REQUESTS}..{MAX_SIM_REQUESTS}")

    @classmethod
    def from_pb(cls, q: Any) -> PlanQuery:
        """From a ``flotilla.v1.PlanQuery`` message (empty fields take the defaults)."""
        return cls(
            model=q.model or DEFAULT_MODEL, workload=q.workload or DEFAULT_WORKLOAD,
            rate=q.rate if q.HasField("rate") else DEFAULT_RATE,
            tpot_slo_ms=q.tpot_slo_ms if q.HasField("tpot_slo_ms") else DEFAULT_TPOT_SLO_MS,
            ttft_slo_ms=q.ttft_slo_ms if q.HasField("ttft_slo_ms") else None,
            devices=tuple(q.devices), max_count=tuple(sorted(q.max_count.items())),
            power_budget_w=q.power_budget_w if q.HasField("power_budget_w") else None, apply=q.apply,
            strict=q.strict,
            simulate=q.simulate, target=q.target if q.HasField("target") else DEFAULT_SIM_TARGET,
            sim_requests=q.sim_requests if q.HasField("sim_requests") else DEFAULT_SIM_REQUESTS,
        )


def _number(name: str, value: float, lo: float, hi: float, *, lo_open: bool = False) -> None:
    if not math.isfinite(value) or value < lo or value > hi or (lo_open and value == lo):
        raise InputError(f"{name}: {value!r}; allowed: {'(' if lo_open else '['}{lo:g}, {hi:g}]")


_FLAG = re.compile(r"^--([a-z-]+)(?=[: ])")


def _field_error(exc: InputError) -> InputError:
    """An error of build_problem (which names CLI flags) renamed to the query's fields."""
    msg = str(exc)
    m = _FLAG.match(msg)
    if m:
        return InputError(f"query.{m.group(1).replace('-', '_')}{msg[m.end():]}")
    if isinstance(exc, UnknownDeviceKindError):
        return InputError(f"query.devices: {msg}")
    if msg.startswith("model:"):
        return InputError(f"query.{msg}")
    return InputError(f"query: {msg}")


def solve_query(query: PlanQuery, *, time_limit_s: float | None = None, worker: Any = None,
                cancel: threading.Event | None = None) -> tuple[Any, dict[str, Any]]:
    """``(AllocationPlan, description)`` for a query, through ``flotilla plan``'s code path; in
    ``worker`` (a :class:`~cluster.shell.solver_process.SolverProcess`, killed when ``cancel`` is
    set) when given, else in this process."""
    from solvers.allocation import solve
    from solvers.exceptions import InfeasibleError, SolveIncompleteError, SolverAnswerError

    try:
        problem, desc = build_problem(
            model=query.model, workload=query.workload, rate=query.rate, tpot_slo_ms=query.tpot_slo_ms,
            ttft_slo_ms=query.ttft_slo_ms, devices=",".join(query.devices) or DEFAULT_DEVICES,
            max_count=[f"{k}={n}" for k, n in query.max_count], power_budget_w=query.power_budget_w,
            headroom=0.0, slice_factor=8, prices="catalog", strict=query.strict,
        )
    except InputError as exc:
        if str(exc).startswith("infeasible:"):  # no candidate serves some (strict) or every bucket
            raise PlanInfeasibleError(f"query.strict: {exc}" if query.strict else str(exc)) from None
        raise _field_error(exc) from None
    limit = SOLVE_TIME_LIMIT_S if time_limit_s is None else max(0.5, min(time_limit_s, SOLVE_TIME_LIMIT_S))
    try:
        if worker is not None:
            plan = worker.solve(problem, cancel, solver="cbc", time_limit_s=limit, accept_incumbent=True)
        else:
            plan = solve(problem, solver="cbc", time_limit_s=limit, accept_incumbent=True)
    except InfeasibleError as exc:
        raise PlanInfeasibleError(str(exc)) from None
    except SolverAnswerError as exc:
        raise PlanSolverError(str(exc)) from None
    except SolveIncompleteError as exc:
        raise PlanIncompleteError(f"{exc} (time limit {limit:g} s)") from None
    return plan, desc


def simulate_plan(doc: dict[str, Any], query: PlanQuery) -> dict[str, Any]:
    """The plan document replayed in the fleet simulator at its own rate and SLOs
    (:func:`cluster.shell.simulator.check_plan`, what ``flotilla plan --simulate`` prints)."""
    from cluster.shell.simulator import check_plan

    if not any(n > 0 for n in doc["allocation"].values()):
        raise InputError(f"query.simulate: the plan provisions no device (rate {query.rate:g}), so there is "
                         "nothing to simulate; simulate a plan with a positive rate")
    try:
        return check_plan(doc, requests=query.sim_requests, target=query.target)
    except InputError as exc:
        raise InputError(f"query.simulate: {exc}") from None


def apply_allocation(plan: Any, store: Any, grid: tuple[tuple[int, ...], tuple[int, ...]], *,
                     source: str = "allocation") -> dict[str, Any]:
    """Apply an allocation plan: autoscaler request + stored plan ``default``, and the derived
    routing plan stored as ``routing``. Returns ``{"bundles", "version", "routing_version", "routing"}``."""
    from actors.routing import validate_plan
    from actors.router import PLAN_NAME
    from cluster.shell.autoscaler import apply_plan
    from solvers.routing import routing_plan

    routing = validate_plan(routing_plan(plan, grid[0], grid[1], source=source))
    applied = apply_plan(plan, store)
    routing["source"] = f"{source} v{applied['version']}"
    routing_version = store.put_plan(routing, name=PLAN_NAME)
    return {**applied, "routing_version": routing_version, "routing": routing}


@dataclass
class Planner:
    """What the gateway's ``Plan`` RPC calls; at most ``max_concurrent`` solves at once."""

    store: Any
    max_concurrent: int = 2
    #: The most devices an applied plan may ask Ray's autoscaler for.
    max_apply_devices: int = 64
    _all: tuple[Any, ...] = field(init=False, repr=False)
    _workers: list[Any] = field(init=False, repr=False)  # the idle ones
    _pool_lock: threading.Lock = field(init=False, repr=False)

    def __post_init__(self) -> None:
        from cluster.shell.solver_process import SolverProcess

        self._all = tuple(SolverProcess() for _ in range(self.max_concurrent))
        self._workers = list(self._all)
        self._pool_lock = threading.Lock()

    @property
    def cancelled(self) -> int:
        """Solves killed because their caller went away."""
        return sum(w.killed for w in self._all)

    @property
    def solving(self) -> int:
        """Solves running now (workers taken from the pool)."""
        with self._pool_lock:
            return len(self._all) - len(self._workers)

    def close(self) -> None:
        for w in self._all:
            w.close()

    def run(self, query: PlanQuery, *, time_limit_s: float | None = None, may_apply: bool = True,
            cancel: threading.Event | None = None) -> dict[str, Any]:
        """Solve (and apply when asked); the ``flotilla plan --json`` document plus ``applied``.

        Applying needs ``may_apply`` (the gateway's apply permission; PermissionDeniedError
        before anything is solved) and a plan of at most ``max_apply_devices`` devices."""
        from cluster.exceptions import CapacityError, PermissionDeniedError

        if query.apply and not may_apply:
            raise PermissionDeniedError(
                "query.apply: applying a plan needs the gateway's apply token (start the gateway with "
                "--apply-token or $FLOTILLA_APPLY_TOKEN and send that token as the bearer token)")
        with self._pool_lock:
            worker = self._workers.pop() if self._workers else None
        if worker is None:
            raise CapacityError(f"{self.max_concurrent} plans are being solved already; retry shortly")
        try:
            plan, desc = solve_query(query, time_limit_s=time_limit_s, worker=worker, cancel=cancel)
        finally:
            with self._pool_lock:
                self._workers.append(worker)
        doc = {**plan.to_json(), **desc, "applied": False}
        if query.apply:
            grid = (tuple(desc["grid"]["input_edges"]), tuple(desc["grid"]["output_edges"]))
            if not any(n > 0 for n in plan.counts.values()):
                raise InputError(f"query.apply: the plan provisions no device (rate {query.rate:g}), so there is "
                                 "nothing to request or route; apply a plan with a positive rate")
            n_devices = sum(plan.counts.values())
            if n_devices > self.max_apply_devices:
                raise InputError(f"query.apply: the plan asks for {n_devices} devices; this gateway applies at most "
                                 f"{self.max_apply_devices} (--max-apply-devices); nothing was requested")
            result = apply_allocation(plan, self.store, grid)
            doc.update(applied=True, allocation_version=result["version"], bundles=len(result["bundles"]),
                       routing_version=result["routing_version"])
        if query.simulate:
            doc["simulation"] = simulate_plan(doc, query)
        return doc


__all__ = ["PlanIncompleteError", "PlanInfeasibleError", "PlanSolverError", "PlanQuery", "Planner", "apply_allocation", "solve_query"]
