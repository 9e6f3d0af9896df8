"""Simulate a fleet serving a request stream and summarise it (:func:`simulate`).

A fleet is ``{kind: count}``; each device is one replica of ``model``
(:class:`~cluster.sim.model.ReplicaSpec`). Two engines give the same answer: ``"fast"``
(:mod:`cluster.sim.engine_fast`, decode runs in closed form) and ``"simpy"``
(:mod:`cluster.sim.engine_simpy`, one simpy event per step). Every time, energy and utilisation
in the report is MODELED from :mod:`cluster.perf`; ``wall_s`` and ``simulated_requests_per_s``
are measured wall-clock figures of the simulation itself.

Summary (:func:`summarize`), over the requests that were not rejected:

* ``ttft`` = first token - arrival; ``tpot`` = (finish - first token) / (output - 1), for outputs
  of at least 2 tokens; ``e2e`` = finish - arrival; p50 / p99 / mean of each, in ms;
* ``slo_attainment``: the fraction of *all* requests (rejected ones count as misses) with
  ``ttft <= ttft_slo`` and ``tpot <= tpot_slo`` (an SLO not given always holds);
* ``makespan_s`` = last finish (or last arrival); ``utilisation`` per kind = busy time / makespan;
* ``energy_j`` per replica = ``P_idle * makespan + (P_max - P_idle) * sum(busy)`` (perf's formula,
  idle time included); ``cost_per_hour`` = sum of the catalog prices of the fleet.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from cluster.catalog import Catalog, default_catalog
from cluster.exceptions import InputError, UnknownDeviceKindError
from cluster.models import ModelShape
from cluster.sim.engine_fast import run_fast
from cluster.sim.model import EngineConfig, ReplicaSpec, StepCost
from cluster.sim.requests import Requests
from cluster.sim.routing import Router
from cluster.sim.trace_result import RawRun
from solvers import validate

ENGINES = ("fast", "simpy")
MODELED_NOTE = ("modeled: every latency, energy and utilisation figure is simulated from the cluster/perf "
                "roofline model, not measured; wall_s and simulated_requests_per_s are measured")


def build_replicas(fleet: Mapping[str, int], model: ModelShape, *, engine: EngineConfig = EngineConfig(),
                   catalog: Catalog | None = None, mean_request_tokens: float = 525.0) -> list[ReplicaSpec]:
    """One :class:`ReplicaSpec` per device of ``fleet`` (kinds resolved through the catalog)."""
    catalog = catalog or default_catalog()
    if not isinstance(fleet, Mapping) or not fleet:
        raise InputError(f"fleet: expected a non-empty {{kind: count}}, got {fleet!r}")
    out: list[ReplicaSpec] = []
    for name, count in fleet.items():
        try:
            kind = catalog.resolve(str(name))
        except UnknownDeviceKindError as e:
            raise InputError(f"fleet.kind: {e}") from None
        validate.integer(f"fleet[{kind!r}]", count, minimum=0)
        if count == 0:
            continue
        spec = catalog.get(kind)
        cost = StepCost.of(model, spec, engine)
        slots = max(1, min(engine.max_num_seqs, int(cost.kv_capacity // max(1.0, mean_request_tokens))))
        price = spec.price_per_hour  # None: no catalog price (counted as 0, listed as unpriced)
        out.extend(ReplicaSpec(f"{kind}-{i}", kind, cost, price, slots) for i in range(count))
    if not out:
        raise InputError(f"fleet: it has no device (every count is 0): {dict(fleet)!r}")
    return out


def run_engine(replicas: list[ReplicaSpec], reqs: Requests, *, engine: EngineConfig = EngineConfig(),
               plan: dict[str, Any] | None = None, core: str = "fast",
               progress: Callable[[int, int], None] | None = None) -> RawRun:
    """One engine run (a fresh router each time, so runs are reproducible)."""
    validate.choice("engine", core, ENGINES)
    router = Router([r.kind for r in replicas], [r.slots for r in replicas], plan)
    if core == "simpy":
        from cluster.sim.engine_simpy import run_simpy  # simpy is imported only when used

        return run_simpy(replicas, router, reqs, engine, progress)
    return run_fast(replicas, router, reqs, engine, progress)


def _pct(x: np.ndarray, q: float) -> float | None:
    return None if x.size == 0 else float(np.percentile(x, q)) * 1e3


def summarize(raw: RawRun, reqs: Requests, replicas: list[ReplicaSpec], *, tpot_slo_s: float | None = None,
              ttft_slo_s: float | None = None) -> dict[str, Any]:
    """The report of one run (module docstring); times in ms, energy in J, cost in USD."""
    ok = ~raw.rejected
    a = reqs.arrival
    ttft = (raw.first_token - a)[ok]
    e2e = (raw.finish - a)[ok]
    o = reqs.output_len[ok]
    multi = o > 1
    tpot_all = np.zeros(ok.sum())
    tpot_all[multi] = (raw.finish[ok][multi] - raw.first_token[ok][multi]) / (o[multi] - 1)
    tpot = tpot_all[multi]
    meet = np.ones(ok.sum(), dtype=bool)
    if tpot_slo_s is not None:
        meet &= tpot_all <= tpot_slo_s * (1 + 1e-12)
    if ttft_slo_s is not None:
        meet &= ttft <= ttft_slo_s * (1 + 1e-12)
    n = len(reqs)
    finish_max = float(np.nanmax(raw.finish)) if ok.any() else 0.0
    makespan = max(finish_max, float(a[-1]))
    kinds = sorted({r.kind for r in replicas})
    energy = np.array([r.cost.power_idle_w * makespan + (r.cost.power_max_w - r.cost.power_idle_w) * raw.busy_term[i]
                       for i, r in enumerate(replicas)])
    util = {k: float(np.mean([raw.busy_s[i] / makespan if makespan > 0 else 0.0
                              for i, r in enumerate(replicas) if r.kind == k])) for k in kinds}
    cost_h = float(sum(r.price_per_hour or 0.0 for r in replicas))
    served = int(ok.sum())
    return {
        "requests": n,
        "completed": served,
        "rejected": int(n - served),
        "slo_attainment": float(meet.sum() / n),
        "tpot_slo_ms": None if tpot_slo_s is None else tpot_slo_s * 1e3,
        "ttft_slo_ms": None if ttft_slo_s is None else ttft_slo_s * 1e3,
        "p50_ttft_ms": _pct(ttft, 50), "p99_ttft_ms": _pct(ttft, 99),
        "mean_ttft_ms": None if ttft.size == 0 else float(ttft.mean()) * 1e3,
        "p50_tpot_ms": _pct(tpot, 50), "p99_tpot_ms": _pct(tpot, 99),
        "mean_tpot_ms": None if tpot.size == 0 else float(tpot.mean()) * 1e3,
        "p50_e2e_ms": _pct(e2e, 50), "p99_e2e_ms": _pct(e2e, 99),
        "mean_e2e_ms": None if e2e.size == 0 else float(e2e.mean()) * 1e3,
        "makespan_s": makespan,
        "throughput_rps": served / makespan if makespan > 0 else None,
        "output_tokens_per_s": float(o.sum()) / makespan if makespan > 0 else None,
        "cost_per_hour": cost_h,
        "cost_usd": cost_h * makespan / 3600.0,
        "unpriced_kinds": sorted({r.kind for r in replicas if r.price_per_hour is None}),
        "energy_j": float(energy.sum()),
        "energy_per_request_j": float(energy.sum()) / served if served else None,
        "mean_power_w": float(energy.sum()) / makespan if makespan > 0 else None,
        "utilisation": util,
        "fleet": {k: sum(1 for r in replicas if r.kind == k) for k in kinds},
        "requests_per_kind": {k: int(sum(np.count_nonzero(raw.replica == i) for i, r in enumerate(replicas) if r.kind == k))
                              for k in kinds},
    }


@dataclass
class SimReport:
    """``summary`` (:func:`summarize` plus ``engine``, ``wall_s``, ``simulated_requests_per_s`` and
    the modeled note) and the ``raw`` per-request arrays."""

    summary: dict[str, Any]
    raw: RawRun
    requests: Requests
    replicas: list[ReplicaSpec]


def simulate(fleet: Mapping[str, int], model: ModelShape, reqs: Requests, *, engine: EngineConfig = EngineConfig(),
             plan: dict[str, Any] | None = None, core: str = "fast", tpot_slo_s: float | None = None,
             ttft_slo_s: float | None = None, catalog: Catalog | None = None,
             progress: Callable[[int, int], None] | None = None) -> SimReport:
    """Simulate ``reqs`` on ``fleet`` serving ``model`` (routing ``plan`` as
    :func:`solvers.routing.routing_plan` gives it; one bucket of every kind when None)."""
    for name, v in (("tpot_slo_s", tpot_slo_s), ("ttft_slo_s", ttft_slo_s)):
        validate.real(name, v, lo=0.0, lo_open=True, allow_none=True)
    mean_tokens = float(np.mean(reqs.input_len + reqs.output_len))
    replicas = build_replicas(fleet, model, engine=engine, catalog=catalog, mean_request_tokens=mean_tokens)
    t0 = time.perf_counter()
    raw = run_engine(replicas, reqs, engine=engine, plan=plan, core=core, progress=progress)
    wall = time.perf_counter() - t0
    summary = summarize(raw, reqs, replicas, tpot_slo_s=tpot_slo_s, ttft_slo_s=ttft_slo_s)
    summary.update(engine=core, chunked_prefill=engine.chunked_prefill, model=model.name, wall_s=wall,
                   simulated_requests_per_s=len(reqs) / wall if wall > 0 else None, modeled=True,
                   note=MODELED_NOTE)
    return SimReport(summary, raw, reqs, replicas)


__all__ = ["ENGINES", "MODELED_NOTE", "SimReport", "build_replicas", "run_engine", "simulate", "summarize"]
