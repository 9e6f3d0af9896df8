"""``flotilla plan``: the cheapest device mix for a workload under a latency SLO (Mélange ILP).

Thin surface: parse flags, build an :class:`~solvers.allocation.AllocationProblem` (throughput
tables from cluster/throughput, which are MODELED from cluster/perf; or a Mélange config file,
whose tables are the file's), call :func:`solvers.allocation.solve`, render. Bad input and
infeasible problems raise :class:`~cluster.exceptions.InputError` (exit 2) naming the field or the
binding cause.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from cluster.clikit import emit_json, err, json_option, out
from cluster.exceptions import FlotillaError, InputError, UnknownDeviceKindError

DEFAULT_DEVICES = "l4,a10g,a100-80g-sxm,h100-sxm"
PRICE_SOURCES = ("catalog", "melange")
MODELED_TABLES_NOTE = (
    "throughput tables are MODELED (continuous-batching model on cluster/perf's roofline, "
    "not measurements); the ILP and its costs are exact for those tables"
)
CONFIG_TABLES_NOTE = "throughput tables are the config file's (tputs), used as given"


def _solver_call(fn: Any, *args: Any, **kwargs: Any) -> Any:
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
        _solver_call(get_workload, workload)  # unknown name: says which are allowed
    from cluster.workload_files import load_requests

    records = load_requests(workload)
    binned = _solver_call(bin_requests, records, grid)
    return binned.histogram, {
        "name": workload, "source": "file", "requests": binned.count, "clamped": binned.clamped,
        "mean_input": sum(p for p, _ in records) / len(records),
        "mean_output": sum(o for _, o in records) / len(records),
    }


def build_problem(
    *, model: str, workload: str, rate: float, tpot_slo_ms: float, ttft_slo_ms: float | None,
    devices: str, max_count: list[str], power_budget_w: float | None, headroom: float,
    slice_factor: int, prices: str,
) -> tuple[Any, dict[str, Any]]:
    """The allocation problem the flags describe, and a JSON-ready description of its inputs."""
    from cluster.devices import default_catalog
    from cluster.perf import get_model
    from cluster.throughput import modeled_rate_table, paper_grid
    from solvers.allocation import AllocationProblem, DeviceType, Workload

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
    catalog = default_catalog()
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
        tpot = modeled_rate_table(shape, spec, grid, tpot_slo_ms / 1e3)
        ttft = (modeled_rate_table(shape, spec, grid, 1e6, ttft_slo_ms / 1e3)
                if ttft_slo_ms is not None else None)
        tables[kind] = [list(r) for r in tpot.rates]
        types.append(_solver_call(
            DeviceType, name=kind, price_per_hour=price, max_rate=tpot.rates, power_w=spec.power_max_w,
            max_count=caps.get(kind), ttft_max_rate=None if ttft is None else ttft.rates,
        ))
    problem = _solver_call(
        AllocationProblem, device_types=tuple(types),
        workload=_solver_call(Workload, histogram=hist, total_rate=rate), slice_factor=slice_factor,
        headroom=headroom, power_budget_w=power_budget_w,
    )
    desc = {
        "model": shape.name, "workload": wl_desc, "rate": rate, "tpot_slo_ms": tpot_slo_ms,
        "ttft_slo_ms": ttft_slo_ms, "devices": kinds, "max_count": caps, "power_budget_w": power_budget_w,
        "headroom": headroom, "slice_factor": slice_factor, "prices": prices,
        "prices_per_hour": {t.name: t.price_per_hour for t in types},
        "grid": {"input_edges": list(grid.in_edges), "output_edges": list(grid.out_edges)},
        "throughput_source": "modeled", "note": MODELED_TABLES_NOTE,
    }
    return problem, desc


def problem_from_config(path: str) -> tuple[Any, dict[str, Any]]:
    """A Mélange config file as a problem; its GPU names mapped to catalog kinds where they resolve."""
    from cluster.devices import default_catalog
    from solvers.melange_format import parse_melange_config

    try:
        obj = json.loads(Path(path).read_text())
    except OSError as e:
        raise InputError(f"--config {path!r}: cannot read it ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise InputError(f"--config {path!r}: not valid JSON (line {e.lineno}: {e.msg})") from None
    problem = _solver_call(parse_melange_config, obj)
    catalog = default_catalog()
    names: dict[str, str] = {}
    for t in problem.device_types:
        try:
            kind = catalog.resolve(t.name)
        except UnknownDeviceKindError:
            kind = t.name
        names[t.name] = kind if kind not in names.values() else t.name
    types = tuple(dataclasses.replace(t, name=names[t.name]) for t in problem.device_types)
    problem = dataclasses.replace(problem, device_types=types)
    return problem, {
        "config": path, "names": names, "rate": problem.workload.total_rate,
        "slice_factor": problem.slice_factor, "throughput_source": "config", "note": CONFIG_TABLES_NOTE,
    }


def plot_cost_vs_rate(problem: Any, path: str, solver: str, rates: list[float], title: str) -> dict[str, Any]:
    """Draw cost/h against total rate for the mix and each single type; returns the data plotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from solvers.allocation import Workload, solve
    from solvers.exceptions import InfeasibleError

    names = list(problem.type_names)
    mix: list[float | None] = []
    single: dict[str, list[float | None]] = {n: [] for n in names}
    for r in rates:
        p = dataclasses.replace(problem, workload=Workload(problem.workload.histogram, r))
        try:
            plan = _solver_call(solve, p, solver=solver)
        except InputError as e:
            if not isinstance(e.__cause__, InfeasibleError) and "infeasible" not in str(e):
                raise
            mix.append(None)
            for n in names:
                single[n].append(None)
            continue
        mix.append(plan.cost_per_hour)
        for n in names:
            single[n].append(plan.baselines.get(n))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    nan = float("nan")
    for n in names:
        ax.plot(rates, [nan if v is None else v for v in single[n]], marker=".", linestyle="--",
                label=f"{n} only")
    ax.plot(rates, [nan if v is None else v for v in mix], marker="o", color="black", linewidth=2.2,
            label="cheapest mix")
    ax.set_xlabel("total request rate (req/s)")
    ax.set_ylabel("cost ($/h)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except OSError as e:
        raise InputError(f"--plot {path!r}: cannot write it ({e.strerror})") from None
    finally:
        plt.close(fig)
    return {"file": path, "rates": rates, "mix": mix, "single": single}


def _render(doc: dict[str, Any]) -> None:
    alloc, base, sav, load = doc["allocation"], doc["baselines"], doc["savings_vs"], doc["load_per_type"]
    prices = doc.get("prices_per_hour", {})
    table = Table(title=f"cheapest device mix: ${doc['cost_per_hour']:.2f}/h ({doc['solver']}, "
                        f"{doc['solve_seconds'] * 1e3:.0f} ms)")
    for col in ("device", "count", "$/h each", "load (devices)", "alone $/h", "mix saves"):
        table.add_column(col, justify="left" if col == "device" else "right")
    for name, n in alloc.items():
        b, s = base.get(name), sav.get(name)
        table.add_row(
            name, str(n), "" if name not in prices else f"{prices[name]:.3f}", f"{load.get(name, 0):.2f}",
            "infeasible" if b is None else f"{b:.2f}", "—" if s is None else f"{100 * s:.1f}%",
        )
    out.print(table)
    out.print(f"[dim]{doc['note']}[/dim]")


def plan(
    model: str = typer.Option("llama-2-7b", "--model", help="Model shape (cluster/perf MODELS)."),
    workload: str = typer.Option("arena", "--workload", help="arena | pubmed | mixed | a JSONL/CSV file of (input_len, output_len)."),
    rate: float = typer.Option(4.0, "--rate", help="Total request rate, req/s."),
    tpot_slo_ms: float = typer.Option(120.0, "--tpot-slo-ms", help="Time-per-output-token SLO, ms."),
    ttft_slo_ms: Optional[float] = typer.Option(None, "--ttft-slo-ms", help="Optional time-to-first-token SLO, ms."),
    devices: str = typer.Option(DEFAULT_DEVICES, "--devices", help="Candidate device kinds, comma-separated."),
    max_count: list[str] = typer.Option([], "--max-count", help="KIND=N: at most N of that kind (repeatable)."),
    power_budget_w: Optional[float] = typer.Option(None, "--power-budget-w", help="Fleet power cap, W (max board power)."),
    headroom: float = typer.Option(0.0, "--headroom", help="Provision for rate x (1 + H)."),
    slice_factor: int = typer.Option(8, "--slice-factor", help="Slices per bucket."),
    solver: str = typer.Option("cbc", "--solver", help="cbc | highs."),
    prices: str = typer.Option("catalog", "--prices", help="catalog (today's) | melange (the paper's)."),
    config: Optional[str] = typer.Option(None, "--config", help="A Mélange solver config (JSON); replaces the flags above."),
    plot: Optional[str] = typer.Option(None, "--plot", help="Write cost/h vs rate for the mix and each single type (PNG)."),
    as_json: bool = json_option(),
) -> None:
    """The cheapest mix of device types that serves a workload under a latency SLO."""
    from solvers.allocation import solve

    if config is not None:
        problem, desc = problem_from_config(config)
    else:
        problem, desc = build_problem(
            model=model, workload=workload, rate=rate, tpot_slo_ms=tpot_slo_ms, ttft_slo_ms=ttft_slo_ms,
            devices=devices, max_count=max_count, power_budget_w=power_budget_w, headroom=headroom,
            slice_factor=slice_factor, prices=prices,
        )
    result = _solver_call(solve, problem, solver=solver)
    doc = {**result.to_json(), **desc}
    doc.setdefault("prices_per_hour", {t.name: t.price_per_hour for t in problem.device_types})
    if plot is not None:
        r = problem.workload.total_rate
        top = max(2 * r, 1.0)
        rates = sorted({round(top * k / 12, 6) for k in range(1, 13)} | {r} - {0.0})
        title = (f"{desc.get('model', 'config')} / {desc.get('workload', {}).get('name', desc.get('config'))}"
                 f" / TPOT {desc.get('tpot_slo_ms', '-')} ms — {desc['throughput_source']} throughput tables")
        with err.status(f"solving {len(rates)} rates for the plot…", spinner="dots"):
            doc["plot"] = plot_cost_vs_rate(problem, plot, solver, rates, title)
    if as_json:
        emit_json(doc)
        return
    _render(doc)
    if plot is not None:
        out.print(f"plot: {plot}")


def register(app: typer.Typer) -> None:
    """Add ``plan`` to the ``flotilla`` app."""
    app.command("plan")(plan)
