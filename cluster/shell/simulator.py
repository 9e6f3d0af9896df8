"""Simulation service: a fleet file or a ``flotilla plan --json`` object -> :func:`cluster.sim.simulate`.

Used by ``flotilla simulate`` and ``flotilla plan --simulate``. A *plan object* is what
``flotilla plan --json`` prints: ``allocation`` (kind -> count), ``assignment`` (bucket ->
{kind: share}), ``grid`` (the bucket edges it was solved on), ``model``, ``workload``, ``rate``,
``tpot_slo_ms``, ``ttft_slo_ms``. Its fleet is the allocation, its routing plan
:func:`solvers.routing.routing_plan` of it (what a Router applies), and its model, workload, rate
and SLOs are the defaults of the simulation. Every latency, energy and utilisation figure the
simulation returns is MODELED.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.exceptions import InputError
from cluster.shell.console import save_figure

#: The attainment below which ``flotilla plan --simulate`` warns (the issue's 99 %).
DEFAULT_TARGET = 0.99


@dataclass(frozen=True)
class FleetSource:
    """What to simulate: ``fleet`` {kind: count}, its routing ``plan`` (None: one bucket of every
    kind) and the defaults a plan object carries (``model``, ``workload``, ``rate``, SLOs)."""

    fleet: dict[str, int]
    plan: dict[str, Any] | None
    source: str
    defaults: dict[str, Any]


def fleet_from_file(path: str) -> FleetSource:
    """A fleet YAML file (``examples/fleet.yaml``)."""
    from cluster.catalog import default_catalog
    from cluster.runtime import load_fleet

    fl = load_fleet(path, catalog=default_catalog())
    return FleetSource({e.kind: e.count for e in fl.entries}, None, f"fleet {fl.name!r} ({path})", {})


def fleet_from_plan(doc: Any, where: str = "plan") -> FleetSource:
    """A plan object (module docstring)."""
    from solvers.routing import routing_plan

    if not isinstance(doc, dict):
        raise InputError(f"{where}: expected the JSON object `flotilla plan --json` prints, got {type(doc).__name__}")
    alloc = doc.get("allocation")
    if not isinstance(alloc, dict) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                              for v in alloc.values()):
        raise InputError(f"{where}.allocation: expected {{kind: count >= 0}}, got {alloc!r:.80}")
    fleet = {k: v for k, v in alloc.items() if v > 0}
    if not fleet:
        raise InputError(f"{where}.allocation: the plan provisions no device, so there is nothing to simulate")
    grid = doc.get("grid")
    if isinstance(grid, dict) and "assignment" in doc:
        edges_in, edges_out = grid.get("input_edges"), grid.get("output_edges")
        if not (isinstance(edges_in, list) and isinstance(edges_out, list)):
            raise InputError(f"{where}.grid: expected input_edges and output_edges lists, got {grid!r:.80}")
        routing = routing_plan(doc, edges_in, edges_out, source="plan")
    else:  # a plan without its grid (e.g. from a Mélange config): least loaded over the whole fleet
        routing = None
    wl = doc.get("workload")
    defaults = {
        "model": doc.get("model"),
        "workload": wl.get("name") if isinstance(wl, dict) else wl,
        "rate": doc.get("rate"),
        "tpot_slo_ms": doc.get("tpot_slo_ms"),
        "ttft_slo_ms": doc.get("ttft_slo_ms"),
    }
    return FleetSource(fleet, routing, where, {k: v for k, v in defaults.items() if v is not None})


def fleet_from_plan_file(path: str) -> FleetSource:
    """A file holding a plan object (``flotilla plan --json > PLAN.json``)."""
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as e:
        raise InputError(f"--plan {path!r}: cannot read it ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise InputError(f"--plan {path!r}: not JSON ({e.msg}, line {e.lineno})") from None
    return fleet_from_plan(doc, where=f"--plan {path}")


def run_simulation(src: FleetSource, *, model: str | None, workload: str | None, rate: float | None,
                   requests: int, arrivals: str = "poisson", seed: int = 0, tpot_slo_ms: float | None = None,
                   ttft_slo_ms: float | None = None, core: str = "fast", chunked_prefill: bool = False,
                   max_num_seqs: int = 256, max_batched_tokens: int | None = None,
                   progress: Callable[[int, int], None] | None = None) -> Any:
    """Simulate ``src``; flags left None take the plan object's defaults, then the built-in ones
    (llama-2-7b, arena, 4 req/s, no SLO). Returns the :class:`cluster.sim.SimReport`."""
    from cluster.models import get_model
    from cluster.sim import EngineConfig, make_requests, simulate

    d = src.defaults
    model = model or d.get("model") or "llama-2-7b"
    workload = workload or d.get("workload") or "arena"
    rate = rate if rate is not None else d.get("rate", 4.0)
    tpot = tpot_slo_ms if tpot_slo_ms is not None else d.get("tpot_slo_ms")
    ttft = ttft_slo_ms if ttft_slo_ms is not None else d.get("ttft_slo_ms")
    from solvers import validate

    validate.real("--tpot-slo-ms", tpot, lo=0.0, lo_open=True, allow_none=True)
    validate.real("--ttft-slo-ms", ttft, lo=0.0, lo_open=True, allow_none=True)
    validate.integer("--requests", requests, minimum=1)
    if max_batched_tokens is None:
        max_batched_tokens = 2048 if chunked_prefill else 8192
    engine = EngineConfig(max_num_seqs=max_num_seqs, max_batched_tokens=max_batched_tokens,
                          chunked_prefill=chunked_prefill)
    reqs = make_requests(workload, requests, rate=rate, arrivals=arrivals, seed=seed)
    rep = simulate(src.fleet, get_model(model), reqs, engine=engine, plan=src.plan, core=core,
                   tpot_slo_s=None if tpot is None else tpot / 1e3, ttft_slo_s=None if ttft is None else ttft / 1e3,
                   progress=progress)
    rep.summary.update(source=src.source, workload=workload, rate=None if arrivals == "trace" else rate,
                       arrivals=arrivals, seed=seed, routing=(src.plan or {}).get("source", "least loaded"))
    return rep


def check_plan(doc: dict[str, Any], *, requests: int, target: float = DEFAULT_TARGET, seed: int = 0,
               progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Simulate a plan object at its own workload, rate and SLOs; the figures ``plan --simulate``
    shows, with ``meets_target``."""
    from solvers import validate

    validate.real("--target", target, lo=0.0, hi=1.0)
    src = fleet_from_plan(doc)
    rep = run_simulation(src, model=None, workload=None, rate=None, requests=requests, seed=seed, progress=progress)
    s = rep.summary
    keys = ("slo_attainment", "p50_tpot_ms", "p99_tpot_ms", "p50_ttft_ms", "p99_ttft_ms", "cost_per_hour",
            "energy_per_request_j", "utilisation", "requests", "rejected", "simulated_requests_per_s", "note")
    return {**{k: s[k] for k in keys}, "target": target, "meets_target": s["slo_attainment"] >= target}


def plot_timeline(rep: Any, path: str, bins: int = 120) -> dict[str, Any]:
    """Write a timeline (arrival rate, requests in the system, TTFT and TPOT over time) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    reqs, raw = rep.requests, rep.raw
    ok = ~raw.rejected
    end = float(np.nanmax(raw.finish)) if ok.any() else float(reqs.arrival[-1])
    edges = np.linspace(0.0, max(end, 1e-9), bins + 1)
    width = edges[1] - edges[0]
    arr = np.histogram(reqs.arrival, edges)[0] / width
    done = np.histogram(raw.finish[ok], edges)[0] / width
    mid = (edges[:-1] + edges[1:]) / 2
    in_sys = np.searchsorted(np.sort(reqs.arrival), mid) - np.searchsorted(np.sort(raw.finish[ok]), mid) \
        - np.searchsorted(np.sort(reqs.arrival[~ok]), mid)
    ttft = (raw.first_token - reqs.arrival)[ok] * 1e3
    multi = ok & (reqs.output_len > 1)
    tpot = (raw.finish - raw.first_token)[multi] / (reqs.output_len[multi] - 1) * 1e3
    fig, axes = plt.subplots(3, 1, figsize=(8, 7.5), sharex=True)
    axes[0].plot(mid, arr, label="arrivals")
    axes[0].plot(mid, done, label="completions")
    axes[0].set_ylabel("req/s")
    axes[0].legend(fontsize=8)
    ax2 = axes[0].twinx()
    ax2.plot(mid, in_sys, color="gray", linestyle=":", label="in system")
    ax2.set_ylabel("in system", color="gray")
    axes[1].scatter(reqs.arrival[ok], ttft, s=2, alpha=0.4)
    axes[1].set_ylabel("TTFT (ms)")
    axes[1].set_yscale("log")
    axes[2].scatter(reqs.arrival[multi], tpot, s=2, alpha=0.4, color="tab:green")
    axes[2].set_ylabel("TPOT (ms)")
    axes[2].set_xlabel("arrival time (s)")
    s = rep.summary
    for ax, key in ((axes[1], "ttft_slo_ms"), (axes[2], "tpot_slo_ms")):
        if s.get(key):
            ax.axhline(s[key], color="red", linewidth=1, label="SLO")
            ax.legend(fontsize=8)
    fleet = ", ".join(f"{n}x {k}" for k, n in s["fleet"].items())
    fig.suptitle(f"simulated (MODELED) {s['model']} on {fleet}\n{s['requests']} requests, "
                 f"SLO attainment {100 * s['slo_attainment']:.1f}%", fontsize=9)
    save_figure(fig, path)
    return {"file": path, "bins": bins}




# ----------------------------------------------------------------------------------- autoscaling


def run_autoscale(*, policies: list[str], trace: str | None, workload: str, rate: float, requests: int,
                  arrivals: str, seed: int, model: str, devices: list[str], baseline_kind: str | None,
                  tpot_slo_ms: float, ttft_slo_ms: float | None, interval_s: float, window_s: float,
                  headroom: float, startup_s: float, down_after: int, target_ongoing: int,
                  progress: Callable[[int, int], None] | None = None) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """Replay one request stream against each policy (:func:`cluster.sim.autoscale.replay`).

    Returns ``(doc, requests, reports)``: the JSON-ready comparison, the stream and the reports."""
    from cluster.models import get_model
    from cluster.sim import load_trace, make_requests
    from cluster.sim.autoscale import POLICIES, AutoscaleConfig, replay
    from cluster.sim.requests import Requests
    from solvers import validate

    for p in policies:
        validate.choice("--policy", p, (*POLICIES, "all"))
    if "all" in policies:
        policies = list(POLICIES)
    validate.real("--tpot-slo-ms", tpot_slo_ms, lo=0.0, lo_open=True)
    validate.real("--ttft-slo-ms", ttft_slo_ms, lo=0.0, lo_open=True, allow_none=True)
    validate.integer("--requests", requests, minimum=1)
    cfg = AutoscaleConfig(interval_s=interval_s, window_s=window_s, headroom=headroom, down_after=down_after,
                          startup_s=startup_s, target_ongoing=target_ongoing)
    if trace is not None:
        tr = load_trace(trace)
        reqs = Requests(tr.arrival[:requests], tr.input_len[:requests], tr.output_len[:requests])
        stream = {"trace": trace}
    else:
        reqs = make_requests(workload, requests, rate=rate, arrivals=arrivals, seed=seed)
        stream = {"workload": workload, "rate": rate, "arrivals": arrivals, "seed": seed}
    shape = get_model(model)
    reports: dict[str, Any] = {}
    total = len(reqs) * len(policies)
    for k, p in enumerate(policies):
        kinds = [baseline_kind or devices[-1]] if p == "target-ongoing" else devices
        step = None if progress is None else (lambda d, n, k=k: progress(k * n + d, total))
        reports[p] = replay(p, shape, reqs, kinds=kinds, tpot_slo_s=tpot_slo_ms / 1e3,
                            ttft_slo_s=None if ttft_slo_ms is None else ttft_slo_ms / 1e3, cfg=cfg, progress=step)
    keys = ("slo_attainment", "cost_usd", "cost_per_hour", "energy_per_request_j", "mean_power_w", "p50_tpot_ms",
            "p99_tpot_ms", "p99_ttft_ms", "peak_replicas", "replicas_used", "changes", "decisions", "rejected",
            "utilisation")
    doc = {
        "dry_run": True, "modeled": True,
        "note": "dry run: policies replayed in the fleet simulator; every latency, cost and energy figure is MODELED "
                "(cluster/perf), nothing was scaled",
        "model": shape.name, "requests": len(reqs), "duration_s": float(reqs.arrival[-1] - reqs.arrival[0]),
        "tpot_slo_ms": tpot_slo_ms, "ttft_slo_ms": ttft_slo_ms, "devices": devices,
        "baseline_kind": baseline_kind or devices[-1], **stream,
        "config": {"interval_s": interval_s, "window_s": window_s, "headroom": headroom, "startup_s": startup_s,
                   "down_after": down_after, "target_ongoing": target_ongoing},
        "policies": {p: {**{k: r.summary[k] for k in keys}, "timeline": r.timeline} for p, r in reports.items()},
    }
    return doc, reqs, reports


def plot_autoscale(doc: dict[str, Any], reqs: Any, path: str) -> dict[str, Any]:
    """Fleet size and cost per hour over time against the load, one line per policy (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(3, 1, figsize=(8, 7.5), sharex=True)
    a = reqs.arrival
    edges = np.linspace(a[0], a[-1], 97)
    load = np.histogram(a, edges)[0] / (edges[1] - edges[0])
    axes[0].plot((edges[:-1] + edges[1:]) / 2, load, color="black")
    axes[0].set_ylabel("load (req/s)")
    for p, d in doc["policies"].items():
        t = [row["t"] for row in d["timeline"]]
        axes[1].step(t, [row["replicas"] for row in d["timeline"]], where="post", label=p)
        axes[2].step(t, [row["cost_per_hour"] for row in d["timeline"]], where="post",
                     label=f"{p}: ${d['cost_usd']:.2f}, SLO {100 * d['slo_attainment']:.1f}%")
    axes[1].set_ylabel("replicas")
    axes[1].legend(fontsize=8)
    axes[2].set_ylabel("fleet $/h")
    axes[2].set_xlabel("time (s)")
    axes[2].legend(fontsize=8)
    fig.suptitle(f"autoscaling policies replayed on {doc['requests']} requests of {doc['model']} "
                 f"(TPOT SLO {doc['tpot_slo_ms']:g} ms), MODELED", fontsize=9)
    save_figure(fig, path)
    return {"file": path}


__all__ = ["DEFAULT_TARGET", "FleetSource", "check_plan", "fleet_from_file", "fleet_from_plan", "fleet_from_plan_file",
           "plot_autoscale", "plot_timeline", "run_autoscale", "run_simulation"]
