"""Autoscaling policies replayed in the simulator: re-plan from a sliding window, act, pay.

Every ``interval_s`` seconds (the minimum interval between decisions) a policy reads the load of
the last ``window_s`` seconds of arrivals (their rate and (input, output) lengths: what the router
observes) and proposes a fleet {kind: count} and a routing plan:

* ``cost``: the allocation ILP (:func:`solvers.allocation.solve`, Mélange) on the modeled
  throughput tables (:func:`cluster.tables.modeled_rate_table`) under the TPOT (and TTFT) SLO, for
  ``rate * (1 + headroom)``; routing by :func:`solvers.routing.routing_plan`;
* ``energy``: the same ILP with each kind priced by its maximum board power (W) instead of USD, so
  it provisions the least power that meets the SLO;
* ``target-ongoing``: a Ray Serve-like baseline on one kind: ``ceil(ongoing / target)`` replicas,
  with ``ongoing = rate * e2e`` (Little's law; ``e2e`` the modeled latency of the window's mean
  request in a batch of ``target``, :func:`cluster.perf.request_latency`);
* ``best-single-kind``: no autoscaling: the cheapest fleet of one kind that the ILP's single-kind
  closed form (:func:`solvers.allocation.single_type_count`) sizes for the busiest window of the
  whole trace (a clairvoyant static fleet), all day.

Acting (hysteresis), fleets weighed in the policy's currency (USD/h; W for ``energy``): a
proposal that weighs more than the fleet is applied at once (new replicas take requests after
``startup_s``, the time a node takes to join; replicas it replaces keep taking requests until
then: make before break); a lighter proposal is applied only when the last ``down_after``
proposals were all lighter than the fleet, taking the heaviest of them. Removed replicas take no
new requests and drain (their in-flight requests finish). A replica is billed from the decision that requests it until it is released: its last
request done, or the end of the run. The first decision, at the first arrival, sees the first
window of the trace (a warm start, as if yesterday's load were known). Every latency and cost
is MODELED.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cluster import perf
from cluster.catalog import Catalog, default_catalog
from cluster.exceptions import InputError
from cluster.models import ModelShape
from cluster.sim.core import build_replicas, summarize
from cluster.sim.engine_fast import run_fast
from cluster.sim.model import EngineConfig, ReplicaSpec
from cluster.sim.requests import Requests
from cluster.sim.routing import Router
from solvers import validate

POLICIES = ("cost", "energy", "target-ongoing", "best-single-kind")


@dataclass(frozen=True)
class AutoscaleConfig:
    """The loop's knobs (module docstring); times in seconds."""

    interval_s: float = 300.0
    window_s: float = 600.0
    headroom: float = 0.2
    down_after: int = 2
    startup_s: float = 60.0
    target_ongoing: int = 16
    max_count: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate.real("interval_s", self.interval_s, lo=0.0, lo_open=True)
        validate.real("window_s", self.window_s, lo=0.0, lo_open=True)
        validate.real("headroom", self.headroom, lo=0.0)
        validate.integer("down_after", self.down_after, minimum=1)
        validate.real("startup_s", self.startup_s, lo=0.0)
        validate.integer("target_ongoing", self.target_ongoing, minimum=1)


class AllocationPolicy:
    """``cost`` / ``energy``: the allocation ILP on modeled throughput tables (module docstring)."""

    def __init__(self, model: ModelShape, kinds: list[str], *, tpot_slo_s: float, ttft_slo_s: float | None,
                 objective: str, cfg: AutoscaleConfig, catalog: Catalog) -> None:
        from cluster.tables import modeled_rate_table, paper_grid

        self.grid = paper_grid()
        self.objective, self.cfg = objective, cfg
        self.types = []
        from solvers.allocation import DeviceType

        for kind in kinds:
            spec = catalog.get(kind)
            price = spec.power_max_w if objective == "energy" else spec.price_per_hour
            if price is None:
                raise InputError(f"--devices: {kind!r} has no catalog price; the cost policy cannot weigh it")
            tpot = modeled_rate_table(model, spec, self.grid, tpot_slo_s)
            ttft = None if ttft_slo_s is None else modeled_rate_table(model, spec, self.grid, 1e6, ttft_slo_s)
            self.types.append(DeviceType(name=kind, price_per_hour=float(price), max_rate=tpot.rates,
                                         power_w=spec.power_max_w, max_count=cfg.max_count.get(kind),
                                         ttft_max_rate=None if ttft is None else ttft.rates))

    def best_single(self, rate: float, inp: np.ndarray, out: np.ndarray) -> dict[str, int]:
        """The cheapest single-kind fleet for this load (InputError when no kind alone can serve it)."""
        from solvers.allocation import AllocationProblem, Workload, single_type_count
        from solvers.workloads import bin_requests

        hist = bin_requests(zip(inp.tolist(), out.tolist()), self.grid).histogram
        problem = AllocationProblem(device_types=tuple(self.types), workload=Workload(hist, rate),
                                    slice_factor=8, headroom=self.cfg.headroom)
        best: dict[str, int] = {}
        best_price = math.inf
        for t in self.types:
            n = single_type_count(problem, t.name)
            if n is not None and max(1, n) * t.price_per_hour < best_price:
                best, best_price = {t.name: max(1, n)}, max(1, n) * t.price_per_hour
        if not best:
            raise InputError(f"autoscale: no single kind meets the SLO at {rate:.2f} req/s")
        return best

    def propose(self, rate: float, inp: np.ndarray, out: np.ndarray) -> tuple[dict[str, int], dict[str, Any] | None]:
        from solvers.allocation import AllocationProblem, Workload, solve
        from solvers.exceptions import InfeasibleError
        from solvers.routing import routing_plan
        from solvers.workloads import bin_requests

        hist = bin_requests(zip(inp.tolist(), out.tolist()), self.grid).histogram
        problem = AllocationProblem(device_types=tuple(self.types), workload=Workload(hist, rate),
                                    slice_factor=8, headroom=self.cfg.headroom)
        try:
            plan = solve(problem, baselines=False)
        except InfeasibleError as e:
            raise InputError(f"autoscale: no fleet meets the SLO at {rate:.2f} req/s: {e}") from None
        counts = {k: n for k, n in plan.counts.items() if n > 0}
        if not counts:
            return {}, None
        return counts, routing_plan(plan, self.grid.in_edges, self.grid.out_edges, source=f"autoscale:{self.objective}")


class TargetOngoingPolicy:
    """``target-ongoing``: Ray Serve's rule on one kind (module docstring)."""

    def __init__(self, model: ModelShape, kind: str, cfg: AutoscaleConfig, catalog: Catalog) -> None:
        self.model, self.kind, self.spec, self.cfg = model, kind, catalog.get(kind), cfg

    def propose(self, rate: float, inp: np.ndarray, out: np.ndarray) -> tuple[dict[str, int], dict[str, Any] | None]:
        if rate <= 0:
            return {}, None
        p, o = max(1, round(float(inp.mean()))), max(1, round(float(out.mean())))
        e2e = perf.request_latency(self.model, self.spec, p, o, batch=self.cfg.target_ongoing).e2e_s
        n = math.ceil(rate * (1 + self.cfg.headroom) * e2e / self.cfg.target_ongoing)
        cap = self.cfg.max_count.get(self.kind)
        return {self.kind: max(1, n if cap is None else min(n, cap))}, None


def make_policy(policy_name: str, model: ModelShape, kinds: list[str], *, tpot_slo_s: float,
                ttft_slo_s: float | None = None, cfg: AutoscaleConfig = AutoscaleConfig(),
                catalog: Catalog | None = None) -> AllocationPolicy | TargetOngoingPolicy:
    """The policy object called ``policy_name`` (``target-ongoing`` runs on ``kinds[0]``): the one
    :func:`replay` runs and the live loop (cluster/shell/autoscale_loop.py) runs. Its
    ``propose(rate, input_lens, output_lens)`` returns ``({kind: count}, routing plan | None)``."""
    validate.choice("policy", policy_name, POLICIES)
    catalog = catalog or default_catalog()
    if not kinds:
        raise InputError("--devices: expected at least one device kind")
    kinds = [catalog.resolve(k) for k in kinds]
    if policy_name == "target-ongoing":
        return TargetOngoingPolicy(model, kinds[0], cfg, catalog)
    return AllocationPolicy(model, kinds, tpot_slo_s=tpot_slo_s, ttft_slo_s=ttft_slo_s,
                            objective="energy" if policy_name == "energy" else "cost", cfg=cfg, catalog=catalog)


@dataclass
class AutoscaleReport:
    """``summary`` (the run's :func:`cluster.sim.summarize` figures, with the billed cost), the
    ``decisions`` (time, rate, proposal, applied fleet), ``timeline`` rows for a plot, the engine's
    ``raw`` run and each replica's life (``requested``, ``ready``, ``removed`` times)."""

    summary: dict[str, Any]
    decisions: list[dict[str, Any]]
    timeline: list[dict[str, Any]]
    raw: Any = None
    replicas: list[dict[str, Any]] = field(default_factory=list)


def replay(policy_name: str, model: ModelShape, reqs: Requests, *, kinds: list[str], tpot_slo_s: float,
           ttft_slo_s: float | None = None, cfg: AutoscaleConfig = AutoscaleConfig(),
           engine: EngineConfig = EngineConfig(), catalog: Catalog | None = None,
           progress: Callable[[int, int], None] | None = None) -> AutoscaleReport:
    """Replay ``reqs`` against ``policy_name`` (module docstring)."""
    validate.choice("policy", policy_name, POLICIES)
    catalog = catalog or default_catalog()
    if not kinds:
        raise InputError("--devices: expected at least one device kind")
    kinds = [catalog.resolve(k) for k in kinds]
    policy = make_policy(policy_name, model, kinds, tpot_slo_s=tpot_slo_s, ttft_slo_s=ttft_slo_s, cfg=cfg,
                         catalog=catalog)
    mean_tokens = float(np.mean(reqs.input_len + reqs.output_len))
    proto = {k: build_replicas({k: 1}, model, engine=engine, catalog=catalog, mean_request_tokens=mean_tokens)[0]
             for k in kinds}
    a = reqs.arrival
    t0, t_last = float(a[0]), float(a[-1])
    replicas: list[ReplicaSpec] = []
    requested: list[float] = []   # when each replica was asked for (billing starts)
    removed: list[float] = []     # when it stopped taking requests (inf: never)
    ready: list[float] = []       # when it can take requests
    fleet: dict[str, list[int]] = {k: [] for k in kinds}
    decisions: list[dict[str, Any]] = []
    epochs: list[tuple[float, Router]] = []
    routing_after: list[dict[str, Any] | None] = []  # the routing plan in effect after each decision
    pending: list[dict[str, int]] = []
    routing: dict[str, Any] | None = None

    def apply(target: dict[str, int], now: float) -> None:
        # make before break: replicas replaced by new ones keep taking requests until those are up
        adds = any(target.get(k, 0) > len(fleet[k]) for k in kinds)
        off = now + cfg.startup_s if adds and now != t0 else now
        for k in kinds:
            want, have = target.get(k, 0), fleet[k]
            while len(have) < want:
                spec = proto[k]
                idx = len(replicas)
                replicas.append(ReplicaSpec(f"{k}-{idx}", k, spec.cost, spec.price_per_hour, spec.slots))
                requested.append(now)
                ready.append(now if now == t0 else now + cfg.startup_s)  # the warm start is up at once
                removed.append(math.inf)
                have.append(idx)
            while len(have) > want:
                removed[have.pop()] = off

    def weigh(f: dict[str, int]) -> float:
        """A fleet's size in the policy's own currency: USD/h (cost, target-ongoing) or W (energy)."""
        unit = {k: (catalog.get(k).power_max_w if policy_name == "energy" else proto[k].price_per_hour or 0.0)
                for k in kinds}
        return sum(unit[k] * n for k, n in f.items())

    times = [t0 + k * cfg.interval_s for k in range(int((t_last - t0) // cfg.interval_s) + 1)]

    def window(k_dec: int, now: float) -> tuple[int, int, float]:
        lo_t, hi_t = (t0, t0 + cfg.window_s) if k_dec == 0 else (now - cfg.window_s, now)
        lo, hi = np.searchsorted(a, [lo_t, hi_t], side="left")
        return int(lo), int(hi), (hi - lo) / min(cfg.window_s, max(hi_t - max(lo_t, t0), 1e-9))

    static: dict[str, int] | None = None
    if policy_name == "best-single-kind":  # sized once, for the busiest window of the whole trace
        lo, hi, peak = max((window(k, now) for k, now in enumerate(times)), key=lambda w: w[2])
        static = policy.best_single(peak, reqs.input_len[lo:hi], reqs.output_len[lo:hi])
    for k_dec, now in enumerate(times):
        lo, hi, rate = window(k_dec, now)
        if static is not None:
            prop, plan = static, None
        elif hi > lo:
            prop, plan = policy.propose(rate, reqs.input_len[lo:hi], reqs.output_len[lo:hi])
        else:
            prop, plan = {}, None
        if not prop:  # keep one replica of the cheapest kind so that a request can always be served
            cheapest = min(kinds, key=lambda k: proto[k].price_per_hour or 0.0)
            prop = {cheapest: 1}
        current = {k: len(v) for k, v in fleet.items() if v}
        grows = weigh(prop) > weigh(current) * (1 + 1e-9)
        action = "keep"
        if grows or not current:
            apply(prop, now)
            pending.clear()
            routing, action = plan, "scale up" if current else "start"
        elif prop != current:
            pending.append(prop)
            if len(pending) >= cfg.down_after:
                biggest = max(pending[-cfg.down_after:], key=weigh)
                apply(biggest, now)
                routing, action = plan, "scale down"
                pending.clear()
        else:
            pending.clear()
        decisions.append({"t": float(now), "rate": float(rate), "proposed": prop, "action": action,
                          "fleet": {k: len(v) for k, v in fleet.items() if v}})
        routing_after.append(routing)
    # routers: one per change of the routable set (decisions and start-ups), with the routing
    # plan of the last decision taken by then
    change_times = sorted({t0, *ready, *(t for t in removed if math.isfinite(t))})
    kinds_all = [r.kind for r in replicas]
    slots_all = [r.slots for r in replicas]
    dec_times = [d["t"] for d in decisions]
    for t in change_times:
        active = [i for i in range(len(replicas)) if ready[i] <= t < removed[i]]
        if active:
            d_i = max(0, int(np.searchsorted(dec_times, t, side="right")) - 1)
            epochs.append((t, Router(kinds_all, slots_all, routing_after[d_i], active)))
    raw = run_fast(replicas, epochs, reqs, engine, progress)
    summary = summarize(raw, reqs, replicas, tpot_slo_s=tpot_slo_s, ttft_slo_s=ttft_slo_s)
    end = summary["makespan_s"]
    cost = energy = 0.0
    busy_by_kind: dict[str, float] = {}
    up_by_kind: dict[str, float] = {}
    for i, r in enumerate(replicas):
        done = raw.finish[(raw.replica == i) & ~raw.rejected]
        last = float(done.max()) if done.size else requested[i]
        stop = end if math.isinf(removed[i]) else max(removed[i], last)
        up = max(stop - requested[i], 0.0)
        cost += (r.price_per_hour or 0.0) * up / 3600.0
        energy += r.cost.power_idle_w * up + (r.cost.power_max_w - r.cost.power_idle_w) * float(raw.busy_term[i])
        busy_by_kind[r.kind] = busy_by_kind.get(r.kind, 0.0) + float(raw.busy_s[i])
        up_by_kind[r.kind] = up_by_kind.get(r.kind, 0.0) + up
    timeline = [{"t": d["t"], "rate": d["rate"], "replicas": sum(d["fleet"].values()), "fleet": d["fleet"],
                 "cost_per_hour": float(sum((proto[k].price_per_hour or 0.0) * n for k, n in d["fleet"].items()))}
                for d in decisions]
    duration_h = max(end - t0, 1e-9) / 3600.0
    served = summary["completed"]
    summary.update(
        policy=policy_name, cost_usd=cost, cost_per_hour=cost / duration_h, energy_j=energy,
        energy_per_request_j=energy / served if served else None, mean_power_w=energy / (duration_h * 3600.0),
        utilisation={k: busy_by_kind[k] / up_by_kind[k] for k in sorted(up_by_kind) if up_by_kind[k] > 0},
        replicas_used=len(replicas), decisions=len(decisions), peak_replicas=max(t["replicas"] for t in timeline),
        changes=sum(1 for d in decisions if d["action"] in ("scale up", "scale down")), modeled=True,
        interval_s=cfg.interval_s, window_s=cfg.window_s, headroom=cfg.headroom, startup_s=cfg.startup_s,
        down_after=cfg.down_after,
    )
    for key in ("fleet", "requests_per_kind"):
        summary.pop(key, None)
    lives = [{"name": r.name, "kind": r.kind, "requested": requested[i], "ready": ready[i], "removed": removed[i]}
             for i, r in enumerate(replicas)]
    return AutoscaleReport(summary, decisions, timeline, raw, lives)


__all__ = ["POLICIES", "AllocationPolicy", "AutoscaleConfig", "AutoscaleReport", "TargetOngoingPolicy", "make_policy", "replay"]
