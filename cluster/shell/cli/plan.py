"""``flotilla plan``: the cheapest device mix for a workload under a latency SLO (Mélange ILP).

Thin surface: parse flags, build an :class:`~solvers.allocation.AllocationProblem` (throughput
tables from cluster/throughput, which are MODELED from cluster/perf; or a Mélange config file,
whose tables are the file's), call :func:`solvers.allocation.solve`, render. Bad input and
infeasible problems raise :class:`~cluster.exceptions.InputError` (exit 2) naming the field or the
binding cause.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import typer
from rich.table import Table

from cluster.shell.console import emit_json, err, fmt, json_option, out, save_figure
from cluster.exceptions import InputError
from cluster.shell.planner import (
    DEFAULT_DEVICES,
    build_problem,
    problem_from_config,
    solver_call,
)

def plot_cost_vs_rate(problem: Any, path: str, solver: str, rates: list[float], title: str,
                      requested: float | None = None, served_share: float = 1.0) -> dict[str, Any]:
    """Draw cost/h against total rate for the mix and each single type, as steps (devices are
    bought whole, so cost jumps between the rates solved); the requested rate is marked and a kind
    that cannot serve the workload alone at any plotted rate is labelled so. Returns the data.

    ``served_share`` is 1 - the left-out mass: ``problem`` carries only the servable buckets, so a
    total rate r is solved at r x served_share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from solvers.allocation import Workload, solve
    from solvers.exceptions import InfeasibleError

    names = list(problem.type_names)
    mix: list[float | None] = []
    single: dict[str, list[float | None]] = {n: [] for n in names}
    for r in rates:
        p = dataclasses.replace(problem, workload=Workload(problem.workload.histogram, r * served_share))
        try:
            plan = solver_call(solve, p, solver=solver)
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
    infeasible = [n for n in names if all(v is None for v in single[n])]
    for n in names:
        if n in infeasible:  # nothing to draw: say so in the legend
            ax.plot([], [], linestyle="none", marker="x", color="grey", label=f"{n} only: infeasible")
            continue
        ax.step(rates, [nan if v is None else v for v in single[n]], where="pre", marker=".", linestyle="--",
                label=f"{n} only")
    ax.step(rates, [nan if v is None else v for v in mix], where="pre", marker="o", color="black", linewidth=2.2,
            label="cheapest mix")
    if requested is not None:
        ax.axvline(requested, color="tab:red", linewidth=1, linestyle=":", label=f"requested {requested:g} req/s")
    ax.set_xlabel("total request rate (req/s)")
    ax.set_ylabel("cost ($/h)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)
    return {"file": path, "rates": rates, "mix": mix, "single": single, "infeasible_alone": infeasible,
            "requested_rate": requested}


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
    left = doc.get("unservable_buckets") or []
    if left:
        shown = "; ".join(f"[{b['tokens'] or tuple(b['bucket'])}] {b['mass']:.2g}" for b in left[:3])
        more = f"; {len(left) - 3} more" if len(left) > 3 else ""
        out.print(f"[yellow]left out: {len(left)} bucket(s), mass {doc['unservable_mass']:.3g} "
                  f"({doc['unservable_rate']:.3g} req/s) that no candidate kind serves: {shown}{more}; "
                  "--strict refuses instead[/yellow]")
    if doc.get("status") == "Feasible":
        out.print(f"[yellow]time limit reached: the best mix found, at most {100 * doc['gap']:.1f}% above the "
                  "optimum (LP bound); not proven optimal[/yellow]")
    out.print(f"[dim]{doc['note']}[/dim]")


def _render_simulation(cost: float, sim: dict[str, Any]) -> None:
    out.print(f"${cost:.2f}/h -> simulated SLO attainment {100 * sim['slo_attainment']:.2f}% "
              f"(p99 TPOT {fmt(sim['p99_tpot_ms'])} ms, p99 TTFT {fmt(sim['p99_ttft_ms'])} ms; "
              f"{sim['requests']} requests, MODELED)")
    if not sim["meets_target"]:
        err.print(f"[yellow]warning: simulated SLO attainment {100 * sim['slo_attainment']:.2f}% is below the "
                  f"target {100 * sim['target']:g}%; re-plan with --headroom (e.g. 0.2)[/yellow]")


#: ``flotilla plan`` flags the gateway's Plan RPC has no field for.
_LOCAL_ONLY = ("headroom", "slice_factor", "solver", "prices", "tables", "calibration", "config", "plot", "time_limit")


def _plan_remote(server: str, token: str | None, tls_ca: str | None, as_json: bool, *, devices: str,
                 max_count: list[str], simulate: bool, target: float, sim_requests: int, **fields: Any) -> None:
    """``flotilla plan --server``: the same query through the gateway's Plan RPC; prints its
    allocation (and simulation) like a local plan. Errors exit as ``generate``'s do."""
    from google.protobuf.json_format import MessageToDict

    from cluster.shell.cli.serve import _fail
    from cluster.shell.client import Client, RpcError

    caps: dict[str, int] = {}
    for item in max_count:
        kind, sep, n = item.partition("=")
        if not sep or not n.strip().isdigit():
            raise InputError(f"--max-count: {item!r}; expected KIND=N, e.g. l4=2")
        caps[kind.strip()] = int(n)
    query = {**fields, "devices": [d.strip() for d in devices.split(",") if d.strip()], "max_count": caps}
    if simulate:
        query.update(simulate=True, target=target, sim_requests=sim_requests)
    if not query.get("strict"):
        query.pop("strict", None)
    try:
        with Client(server, token=token, tls_ca=tls_ca) as client:
            resp = client.plan(query)
    except RpcError as exc:
        raise _fail(exc) from None
    doc = MessageToDict(resp.allocation, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    doc["server"] = server
    doc["allocation_version"] = int(doc["allocation_version"])  # int64 is a string in proto JSON
    if "simulation" in doc:  # a percentile of no request is NaN on the wire, null here
        doc["simulation"] = {k: (None if v == "NaN" else v) for k, v in doc["simulation"].items()}
    if as_json:
        emit_json(doc)
        return
    mix = ", ".join(f"{k} x{n}" for k, n in sorted(doc["counts"].items()) if n) or "no device"
    out.print(f"{mix}: ${doc['cost_per_hour']:.2f}/h ({doc['solver']}, {doc['status']}; from {server})")
    out.print(f"[dim]{doc['note']}[/dim]")
    if simulate:
        _render_simulation(doc["cost_per_hour"], doc["simulation"])


def plan(
    ctx: typer.Context,
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
    tables: list[str] = typer.Option([], "--tables", help="A measured rate table (`flotilla profile --table`) for one kind; used where it profiled a bucket (repeatable)."),
    calibration: Optional[str] = typer.Option(None, "--calibration", help="Calibration profile for the modeled tables: engines-2026 (today's engines: Vidur A100/H100 operators, H200 measurements), melange-2024 (the Mélange paper's published capacities, vLLM 0.2.7), vidur-2024 (A100/H100 operators only), or a profile JSON file."),
    config: Optional[str] = typer.Option(None, "--config", help="A Mélange solver config (JSON); replaces the flags above."),
    plot: Optional[str] = typer.Option(None, "--plot", help="Write cost/h vs rate for the mix and each single type (PNG)."),
    time_limit: Optional[float] = typer.Option(None, "--time-limit", help="Stop the solver after S seconds and report the best mix found, with its optimality gap."),
    simulate: bool = typer.Option(False, "--simulate", help="Check the plan in the fleet simulator (modeled SLO attainment)."),
    target: float = typer.Option(0.99, "--target", help="With --simulate: warn when the attainment is below this."),
    sim_requests: int = typer.Option(5000, "--sim-requests", help="With --simulate: requests to simulate."),
    strict: bool = typer.Option(False, "--strict", help="Refuse (exit 2) when a bucket no candidate kind can serve has mass; default: plan for the rest and report it."),
    server: Optional[str] = typer.Option(None, "--server", help="Ask this gateway's Plan RPC (HOST:PORT) instead of solving here."),
    token: Optional[str] = typer.Option(None, "--token", help="With --server: bearer token (default $FLOTILLA_TOKEN)."),
    tls_ca: Optional[str] = typer.Option(None, "--tls-ca", help="With --server: CA certificate of a TLS gateway (PEM)."),
    as_json: bool = json_option(),
) -> None:
    """The cheapest mix of device types that serves a workload under a latency SLO.

    Buckets of the workload that no candidate kind can serve under the SLO are left out, at their
    own rates, and reported (unservable_buckets, unservable_mass); --strict refuses instead."""
    import math

    from solvers.allocation import solve

    if server is not None:
        local = [f"--{name.replace('_', '-')}" for name in _LOCAL_ONLY
                 if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"]
        if local:
            raise InputError(f"--server: the gateway's Plan RPC does not take {', '.join(local)}; drop them, or drop --server")
        _plan_remote(server, token, tls_ca, as_json, model=model, workload=workload, rate=rate, tpot_slo_ms=tpot_slo_ms,
                     ttft_slo_ms=ttft_slo_ms, devices=devices, max_count=max_count, power_budget_w=power_budget_w,
                     simulate=simulate, target=target, sim_requests=sim_requests, strict=strict)
        return

    if time_limit is not None and not (math.isfinite(time_limit) and time_limit > 0):
        raise InputError(f"--time-limit: {time_limit!r}; allowed: a number of seconds > 0")

    if config is not None:
        ignored = [f"--{name.replace('_', '-')}" for name in ("model", "workload", "rate", "tpot_slo_ms", "ttft_slo_ms",
                                                               "devices", "max_count", "power_budget_w", "headroom",
                                                               "slice_factor", "prices", "calibration", "tables")
                   if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"]
        if ignored:
            raise InputError(f"--config: the config file sets the problem; {', '.join(ignored)} would be ignored "
                             "(drop them, or drop --config)")
        problem, desc = problem_from_config(config, strict=strict)
    else:
        problem, desc = build_problem(
            model=model, workload=workload, rate=rate, tpot_slo_ms=tpot_slo_ms, ttft_slo_ms=ttft_slo_ms,
            devices=devices, max_count=max_count, power_budget_w=power_budget_w, headroom=headroom,
            slice_factor=slice_factor, prices=prices, calibration=calibration, tables=tuple(tables),
            strict=strict,
        )
    result = solver_call(solve, problem, solver=solver, time_limit_s=time_limit, accept_incumbent=time_limit is not None)
    doc = {**result.to_json(), **desc}
    doc.setdefault("prices_per_hour", {t.name: t.price_per_hour for t in problem.device_types})
    if plot is not None:
        r = desc.get("rate", problem.workload.total_rate)  # the total, left-out buckets included
        share = problem.workload.total_rate / r if r > 0 else 1.0
        top = max(2 * r, 1.0)
        rates = sorted({round(top * k / 12, 6) for k in range(1, 13)} | {r} - {0.0})
        title = (f"{desc.get('model', 'config')} / {desc.get('workload', {}).get('name', desc.get('config'))}"
                 f" / TPOT {desc.get('tpot_slo_ms', '-')} ms — {desc['throughput_source']} throughput tables")
        with err.status(f"solving {len(rates)} rates for the plot…", spinner="dots"):
            doc["plot"] = plot_cost_vs_rate(problem, plot, solver, rates, title, requested=r, served_share=share)
    if simulate:
        from cluster.shell.simulator import check_plan

        doc["simulation"] = check_plan(doc, requests=sim_requests, target=target)
    if as_json:
        emit_json(doc)
        return
    _render(doc)
    if plot is not None:
        out.print(f"plot: {plot}")
    if simulate:
        _render_simulation(doc["cost_per_hour"], doc["simulation"])


def register(app: typer.Typer) -> None:
    """Add ``plan`` to the ``flotilla`` app."""
    app.command("plan")(plan)
