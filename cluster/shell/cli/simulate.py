"""``flotilla simulate``: replay a workload against a fleet or a plan in the fleet simulator.

Thin surface: parse flags, call :mod:`cluster.shell.simulator`, render. All latencies, energy and
utilisation are MODELED (cluster/perf); ``simulated_requests_per_s`` is the simulator's measured
wall-clock speed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Callable, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cluster.exceptions import InputError
from cluster.shell.console import emit_json, err, fmt, json_option, out

#: Runs of at least this many requests show a progress bar (on stderr).
PROGRESS_MIN_REQUESTS = 20_000


@contextlib.contextmanager
def progress_bar(total: int, label: str) -> Iterator[Callable[[int, int], None] | None]:
    """A rich progress bar on stderr for long runs; yields the engine's ``progress`` callback."""
    if total < PROGRESS_MIN_REQUESTS:
        yield None
        return
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda done, n: bar.update(task, completed=done, total=n)


def _render(s: dict[str, Any]) -> None:
    fleet = ", ".join(f"{n}x {k}" for k, n in s["fleet"].items())
    table = Table(title=f"simulated {s['model']} on {fleet} ({s['requests']} requests, MODELED)")
    table.add_column("metric")
    for col in ("p50", "p99", "mean"):
        table.add_column(col, justify="right")
    for name, key in (("TTFT ms", "ttft"), ("TPOT ms", "tpot"), ("end-to-end ms", "e2e")):
        table.add_row(name, fmt(s[f"p50_{key}_ms"]), fmt(s[f"p99_{key}_ms"]), fmt(s[f"mean_{key}_ms"]))
    out.print(table)
    slo = " and ".join(f"{k.split('_')[0].upper()} <= {s[k]:g} ms" for k in ("tpot_slo_ms", "ttft_slo_ms") if s[k])
    out.print(f"SLO attainment: {100 * s['slo_attainment']:.2f}% ({slo or 'no SLO given'}); "
              f"rejected {s['rejected']}")
    out.print(f"cost ${s['cost_per_hour']:.2f}/h"
              + (f" (no price: {', '.join(s['unpriced_kinds'])})" if s["unpriced_kinds"] else "")
              + f"; energy {s['energy_per_request_j'] or 0:.1f} J/request; utilisation "
              + ", ".join(f"{k} {100 * u:.0f}%" for k, u in s["utilisation"].items()))
    out.print(f"simulated {s['makespan_s']:.1f} s of serving in {s['wall_s']:.2f} s of wall time "
              f"({s['simulated_requests_per_s']:,.0f} requests/s, {s['engine']} engine)")
    out.print(f"[dim]{s['note']}[/dim]")


def simulate(
    fleet: Optional[str] = typer.Option(None, "--fleet", help="Fleet YAML file (e.g. examples/fleet.yaml)."),
    plan: Optional[str] = typer.Option(None, "--plan", help="A plan object: `flotilla plan --json > PLAN.json`."),
    workload: Optional[str] = typer.Option(None, "--workload", help="arena | pubmed | mixed | a JSONL/CSV file (a trace with --arrivals trace). Default: the plan's, else arena."),
    rate: Optional[float] = typer.Option(None, "--rate", help="Mean request rate, req/s. Default: the plan's, else 4."),
    requests: int = typer.Option(10_000, "--requests", help="Requests to simulate (a trace: its first N)."),
    tpot_slo_ms: Optional[float] = typer.Option(None, "--tpot-slo-ms", help="TPOT SLO, ms. Default: the plan's."),
    ttft_slo_ms: Optional[float] = typer.Option(None, "--ttft-slo-ms", help="TTFT SLO, ms. Default: the plan's."),
    arrivals: str = typer.Option("poisson", "--arrivals", help="poisson | gamma:CV | onoff:ON_S:OFF_S | deterministic | trace."),
    seed: int = typer.Option(0, "--seed", help="Random seed (arrivals and lengths)."),
    model: Optional[str] = typer.Option(None, "--model", help="Model shape. Default: the plan's, else llama-2-7b."),
    engine: str = typer.Option("fast", "--engine", help="fast (closed-form decode runs) | simpy (reference); same results."),
    chunked_prefill: bool = typer.Option(False, "--chunked-prefill", help="Chunked prefill (mixed steps)."),
    max_num_seqs: int = typer.Option(256, "--max-num-seqs", help="Most sequences per replica batch."),
    max_batched_tokens: Optional[int] = typer.Option(None, "--max-batched-tokens", help="Tokens per step (default 8192; 2048 chunked)."),
    plot: Optional[str] = typer.Option(None, "--plot", help="Write the timeline (PNG)."),
    as_json: bool = json_option(),
) -> None:
    """Simulate a fleet (or a plan) serving a workload: modeled TTFT/TPOT, SLO attainment, cost, energy."""
    from cluster.shell.simulator import fleet_from_file, fleet_from_plan_file, plot_timeline, run_simulation

    if (fleet is None) == (plan is None):
        raise InputError("--fleet / --plan: give exactly one (a fleet YAML file or a `flotilla plan --json` file)")
    src = fleet_from_file(fleet) if fleet is not None else fleet_from_plan_file(plan)  # type: ignore[arg-type]
    with progress_bar(requests, "simulating") as progress:
        rep = run_simulation(
            src, model=model, workload=workload, rate=rate, requests=requests, arrivals=arrivals, seed=seed,
            tpot_slo_ms=tpot_slo_ms, ttft_slo_ms=ttft_slo_ms, core=engine, chunked_prefill=chunked_prefill,
            max_num_seqs=max_num_seqs, max_batched_tokens=max_batched_tokens, progress=progress,
        )
    doc = rep.summary
    if plot is not None:
        doc["plot"] = plot_timeline(rep, plot)
    if as_json:
        emit_json(doc)
        return
    _render(doc)
    if plot is not None:
        out.print(f"plot: {plot}")


def _render_autoscale(doc: dict[str, Any]) -> None:
    table = Table(title=f"autoscaling policies, dry run on {doc['requests']} requests "
                        f"({doc['duration_s'] / 3600:.1f} h), MODELED")
    for col in ("policy", "SLO", "TPOT99", "TTFT99", "$", "$/h", "J/req", "peak", "chg"):
        table.add_column(col, justify="left" if col == "policy" else "right", no_wrap=col == "policy")
    for p, d in doc["policies"].items():
        table.add_row(p, f"{100 * d['slo_attainment']:.1f}%", fmt(d["p99_tpot_ms"]), fmt(d["p99_ttft_ms"]),
                      f"{d['cost_usd']:.2f}", f"{d['cost_per_hour']:.2f}", fmt(d["energy_per_request_j"]),
                      str(d["peak_replicas"]), str(d["changes"]))
    out.print(table)
    out.print("SLO: attainment; TPOT99/TTFT99: p99 ms; $: billed cost; peak: most replicas; chg: scalings")
    out.print(f"TPOT SLO {doc['tpot_slo_ms']:g} ms; re-plan every {doc['config']['interval_s']:g} s from the last "
              f"{doc['config']['window_s']:g} s; target-ongoing on {doc['baseline_kind']}")
    out.print(f"[dim]{doc['note']}[/dim]")


def autoscale(
    dry_run: bool = typer.Option(False, "--dry-run", help="Replay the policies in the simulator; without it the live loop runs (--address, --store-url)."),
    trace: Optional[str] = typer.Option(None, "--trace", help="A trace file (JSONL/CSV: arrival_s, input_len, output_len)."),
    policy: list[str] = typer.Option(["all"], "--policy", help="cost | energy | target-ongoing | best-single-kind | all (repeatable)."),
    workload: str = typer.Option("arena", "--workload", help="Without --trace: the workload to generate."),
    rate: float = typer.Option(10.0, "--rate", help="Without --trace: mean request rate, req/s."),
    requests: int = typer.Option(50_000, "--requests", help="Requests (a trace: its first N)."),
    arrivals: str = typer.Option("diurnal:0.2:7200", "--arrivals", help="Without --trace: the arrival process."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    model: str = typer.Option("llama-3-8b", "--model", help="Model shape."),
    devices: Optional[str] = typer.Option(None, "--devices", help="Kinds the cost and energy policies choose from."),
    baseline_kind: Optional[str] = typer.Option(None, "--baseline-kind", help="The target-ongoing baseline's kind (default: the last of --devices)."),
    tpot_slo_ms: float = typer.Option(50.0, "--tpot-slo-ms", help="TPOT SLO, ms."),
    ttft_slo_ms: Optional[float] = typer.Option(None, "--ttft-slo-ms", help="TTFT SLO, ms."),
    interval_s: float = typer.Option(300.0, "--interval-s", help="Minimum interval between decisions, s."),
    window_s: float = typer.Option(600.0, "--window-s", help="Sliding window of observed load, s (live loop: at most 3600)."),
    headroom: float = typer.Option(0.2, "--headroom", help="Provision for rate x (1 + H)."),
    startup_s: float = typer.Option(60.0, "--startup-s", help="Seconds before a new replica takes requests."),
    down_after: int = typer.Option(2, "--down-after", help="Consecutive smaller proposals before scaling down."),
    target_ongoing: int = typer.Option(16, "--target-ongoing", help="The baseline's target ongoing requests per replica."),
    plot: Optional[str] = typer.Option(None, "--plot", help="Write fleet size and cost over time vs load (PNG)."),
    address: Optional[str] = typer.Option(None, "--address", help="Live loop: the Ray cluster (e.g. auto)."),
    store_url: Optional[str] = typer.Option(None, "--store-url", help="Live loop: the state store the routers record load in (redis://...)."),
    max_count: list[str] = typer.Option([], "--max-count", help="Live loop: cap per kind, KIND=N (repeatable)."),
    iterations: int = typer.Option(0, "--iterations", help="Live loop: stop after N decisions (0: run until interrupted)."),
    as_json: bool = json_option(),
) -> None:
    """Compare autoscaling policies on a trace in the simulator (--dry-run), or run the live loop."""
    from cluster.shell.planner import DEFAULT_DEVICES
    from cluster.shell.simulator import plot_autoscale, run_autoscale

    kinds = [d.strip() for d in (devices or DEFAULT_DEVICES).split(",") if d.strip()]
    if not kinds:
        raise InputError(f"--devices: {devices!r} names no device kind")
    if not dry_run:
        from cluster.shell.cli.autoscale_live import run_live

        if address is None or store_url is None:
            raise InputError("--address / --store-url: the live loop needs a Ray cluster and the routers' state "
                             "store; or use --dry-run to replay the policies in the simulator")
        run_live(policy=policy, model=model, kinds=kinds, tpot_slo_ms=tpot_slo_ms, ttft_slo_ms=ttft_slo_ms,
                 interval_s=interval_s, window_s=window_s, headroom=headroom, down_after=down_after,
                 target_ongoing=target_ongoing, max_count=max_count, address=address, store_url=store_url,
                 iterations=iterations, as_json=as_json)
        return
    with progress_bar(requests, "replaying policies") as progress:
        doc, reqs, _ = run_autoscale(
            policies=policy, trace=trace, workload=workload, rate=rate, requests=requests, arrivals=arrivals,
            seed=seed, model=model, devices=kinds, baseline_kind=baseline_kind, tpot_slo_ms=tpot_slo_ms,
            ttft_slo_ms=ttft_slo_ms, interval_s=interval_s, window_s=window_s, headroom=headroom,
            startup_s=startup_s, down_after=down_after, target_ongoing=target_ongoing, progress=progress,
        )
    if plot is not None:
        doc["plot"] = plot_autoscale(doc, reqs, plot)
    if as_json:
        emit_json(doc)
        return
    _render_autoscale(doc)
    if plot is not None:
        out.print(f"plot: {plot}")


def register(app: typer.Typer) -> None:
    """Add ``simulate`` and ``autoscale`` (its dry run) to the ``flotilla`` app."""
    app.command("simulate")(simulate)
    app.command("autoscale")(autoscale)
