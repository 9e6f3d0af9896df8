"""The live autoscaling loop: observe the router's load, re-solve, act through Ray's autoscaler.

Each :meth:`AutoscaleLoop.step`:

1. **Observe**: the rate and (input, output) length histogram of the last ``window_s`` seconds,
   as the routers recorded them in the state store (:mod:`cluster.load`).
2. **Re-solve** (at most once per ``interval_s``): the policy of :mod:`cluster.sim.autoscale`
   (``cost``, ``energy`` or ``target-ongoing``; the very objects ``flotilla autoscale --dry-run``
   replays) proposes a fleet {kind: count} and a routing plan; counts are capped per kind
   (``max_count``, a constraint of the solve; when no fleet within the caps meets the SLO, the
   proposal is every device the caps allow); an empty proposal keeps one device of the cheapest
   kind, as in the replay.
3. **Hysteresis**, as in the replay: a proposal heavier than the fleet (USD/h; W for ``energy``)
   is applied at once; a lighter one only after ``down_after`` lighter proposals in a row (the
   heaviest of them).
4. **Act**: ``request_resources`` with one ``device:<kind>`` bundle per device of the new fleet
   (:func:`cluster.shell.autoscaler.apply_plan`, which also stores the plan) and the routing plan
   stored as ``routing`` (routers re-read it; a fleet without one is routed round-robin). The
   request replaces the last one, so nodes beyond it are no longer kept; the autoscaler removes
   a node once it is idle (``idle_timeout_minutes``), i.e. once its replica is released (5).
5. **Fleet** (with a router in this process, e.g. in the serving process): for each kind, while
   the router has fewer replicas than the target and Ray has a free ``device:<kind>`` (a node
   joined), a DeviceActor and an ExpertActor are started on it (as ``flotilla serve`` does) and
   the expert is added to the router. Once every kind has its
   target, the surplus replicas are drained (the router sends them nothing new; their requests
   in flight finish), then their actors are released: make before break, in both directions.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from cluster.exceptions import InputError
from cluster.load import LOAD_TTL_S
from solvers import validate

log = logging.getLogger(__name__)

LIVE_POLICIES = ("cost", "energy", "target-ongoing")


@dataclass(frozen=True)
class LoopConfig:
    """The loop's knobs (module docstring); times in seconds."""

    policy: str = "cost"
    model: str = "llama-3-8b"
    kinds: tuple[str, ...] = ("l4", "a10g", "a100-80g-sxm")
    tpot_slo_ms: float = 50.0
    ttft_slo_ms: float | None = None
    interval_s: float = 60.0
    window_s: float = 300.0
    headroom: float = 0.2
    down_after: int = 2
    target_ongoing: int = 16
    max_count: dict[str, int] = field(default_factory=dict)
    #: Longest wait for a drained replica's requests in flight, seconds.
    drain_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        validate.choice("policy", self.policy, LIVE_POLICIES)
        if not self.kinds:
            raise InputError("kinds: expected at least one device kind")
        validate.real("tpot_slo_ms", self.tpot_slo_ms, lo=0.0, lo_open=True)
        if self.ttft_slo_ms is not None:
            validate.real("ttft_slo_ms", self.ttft_slo_ms, lo=0.0, lo_open=True)
        validate.real("drain_timeout_s", self.drain_timeout_s, lo=0.0, lo_open=True)
        validate.real("window_s", self.window_s, lo=0.0, hi=LOAD_TTL_S, lo_open=True)  # older buckets expire
        for kind, n in self.max_count.items():
            validate.integer(f"max_count[{kind!r}]", n, minimum=0)


class AutoscaleLoop:
    """See the module docstring. ``router`` (optional): the in-process router whose replicas the
    loop adds and drains; without one the loop only requests nodes and stores plans."""

    def __init__(self, store: Any, cfg: LoopConfig, *, router: Any = None, expert_config: Any = None,
                 clock: Any = time.time) -> None:
        from cluster.catalog import default_catalog
        from cluster.models import get_model
        from cluster.sim.autoscale import AutoscaleConfig, make_policy

        self.store, self.cfg, self.router, self.clock = store, cfg, router, clock
        self.catalog = default_catalog()
        self.kinds = [self.catalog.resolve(k) for k in cfg.kinds]
        unknown = sorted(set(cfg.max_count) - set(self.kinds))
        if unknown:
            raise InputError(f"max_count: {unknown[0]!r} is not one of the kinds {self.kinds}")
        sim_cfg = AutoscaleConfig(interval_s=cfg.interval_s, window_s=cfg.window_s, headroom=cfg.headroom,
                                  down_after=cfg.down_after, target_ongoing=cfg.target_ongoing,
                                  max_count=dict(cfg.max_count))
        kinds = self.kinds
        if cfg.policy == "target-ongoing":  # the baseline runs on one kind: the last given
            kinds = [self.kinds[-1]]
        self.policy = make_policy(cfg.policy, get_model(cfg.model), kinds, tpot_slo_s=cfg.tpot_slo_ms / 1e3,
                                  ttft_slo_s=None if cfg.ttft_slo_ms is None else cfg.ttft_slo_ms / 1e3,
                                  cfg=sim_cfg, catalog=self.catalog)
        self.expert_config = expert_config
        self.target: dict[str, int] = {}
        self.decisions: list[dict[str, Any]] = []
        self._pending: list[dict[str, int]] = []
        self._last: float | None = None
        self._serial = 0
        self._devices: dict[str, Any] = {}  # device_id -> its DeviceActor

    # ------------------------------------------------------------------ deciding
    def weigh(self, fleet: dict[str, int]) -> float:
        """A fleet's size in the policy's currency: USD/h, or W for ``energy``."""
        def unit(k: str) -> float:
            spec = self.catalog.get(k)
            v = spec.power_max_w if self.cfg.policy == "energy" else spec.price_per_hour
            return float(v or 0.0)
        return sum(unit(k) * n for k, n in fleet.items())

    def propose(self, now: float) -> tuple[float, dict[str, int], dict[str, Any] | None]:
        """``(observed rate, capped proposal, routing plan)`` from the window ending at ``now``."""
        from cluster.load import read_window

        rate, inp, out = read_window(self.store, self.cfg.window_s, now=now)
        try:
            prop, routing = self.policy.propose(rate, inp, out) if inp.size else ({}, None)
        except InputError:  # no fleet within the caps meets the SLO: the most the caps allow
            if not self.cfg.max_count:
                raise
            prop, routing = {k: n for k, n in self.cfg.max_count.items() if n > 0}, None
            self.store.incr("autoscale.infeasible")
        prop = {k: min(n, self.cfg.max_count.get(k, n)) for k, n in prop.items() if n > 0}
        prop = {k: n for k, n in prop.items() if n > 0}
        if not prop:  # as in the replay: one device of the cheapest kind always serves
            cheapest = min(self.kinds, key=lambda k: self.weigh({k: 1}))
            prop, routing = {cheapest: 1}, None
        return rate, prop, routing

    def decide(self, now: float | None = None) -> dict[str, Any]:
        """One decision (no interval check): observe, propose, hysteresis, act. Returns the record."""
        now = self.clock() if now is None else now
        rate, prop, routing = self.propose(now)
        current = dict(self.target)
        action = "keep"
        if not current or self.weigh(prop) > self.weigh(current) * (1 + 1e-9):
            action = "start" if not current else "scale up"
            self._pending.clear()
            self._apply(prop, routing, grow=True)
        elif prop != current:
            self._pending.append(prop)
            if len(self._pending) >= self.cfg.down_after:
                best = max(self._pending[-self.cfg.down_after:], key=self.weigh)
                self._pending.clear()
                if best != current:
                    action = "scale down" if self.weigh(best) < self.weigh(current) else "rebalance"
                    self._apply(best, routing if best == prop else None, grow=False)
        else:
            self._pending.clear()
        self._last = now
        rec = {"t": now, "rate": rate, "proposed": prop, "action": action, "fleet": dict(self.target)}
        self.decisions.append(rec)
        self.store.incr(f"autoscale.{action.replace(' ', '_')}")
        return rec

    def step(self, now: float | None = None) -> dict[str, Any] | None:
        """A decision when ``interval_s`` has passed since the last one (None otherwise), then a
        fleet sync (new nodes get replicas)."""
        now = self.clock() if now is None else now
        rec = None
        if self._last is None or now - self._last >= self.cfg.interval_s:
            rec = self.decide(now)
        self.sync_fleet()
        return rec

    def run(self, stop: threading.Event, tick_s: float = 1.0) -> None:
        """Step every ``tick_s`` until ``stop`` is set; a failed step is logged and retried."""
        while not stop.is_set():
            try:
                self.step()
            except Exception:  # noqa: BLE001 - the loop outlives a bad tick (store or Ray hiccup)
                log.warning("autoscale step failed", exc_info=True)
            stop.wait(tick_s)

    # ------------------------------------------------------------------ acting
    def _apply(self, target: dict[str, int], routing: dict[str, Any] | None, *, grow: bool) -> None:
        """Ask Ray's autoscaler for ``target`` and store the plans (module docstring, 4)."""
        from actors.router import PLAN_NAME
        from actors.routing import validate_plan
        from cluster.shell.autoscaler import apply_plan

        self.target = dict(target)
        applied = apply_plan({"allocation": dict(target)}, self.store)
        if routing is not None:
            routing = validate_plan(dict(routing, source=f"autoscale:{self.cfg.policy} v{applied['version']}"))
            self.store.put_plan(routing, name=PLAN_NAME)
        elif not grow:  # the old routing plan may name kinds now gone: route over what is left
            from actors.routing import default_plan

            self.store.put_plan(default_plan(sorted(target)), name=PLAN_NAME)

    def _by_kind(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for r in self.router.replicas():
            if r["alive"]:
                out.setdefault(r["kind"], []).append(r)
        return out

    def _drain_surplus(self) -> None:
        import ray

        if self.router is None:
            return
        for kind, reps in self._by_kind().items():
            extra = len(reps) - self.target.get(kind, 0)
            for r in sorted(reps, key=lambda r: r["active"])[:max(0, extra)]:
                handle = self.router.drain(r["device_id"], timeout_s=self.cfg.drain_timeout_s)
                ray.kill(handle)
                device = self._devices.pop(r["device_id"], None)
                if device is not None:
                    ray.kill(device)
                self.store.incr("autoscale.released")

    def sync_fleet(self) -> list[str]:
        """Start an ExpertActor for each free ``device:<kind>`` of a kind below its target and add
        it to the router; returns the new replicas' ids."""
        import ray

        from actors.device import spawn as spawn_device
        from actors.expert import ExpertConfig, spawn_expert
        from actors.routing import Replica
        from cluster.runtime import device_resource

        if self.router is None:
            return []
        added = []
        have = self._by_kind()
        free = ray.available_resources()
        config = self.expert_config or ExpertConfig(model="echo")
        for kind, want in self.target.items():
            n_free = free.get(device_resource(kind), 0.0)
            while len(have.get(kind, [])) < want and n_free >= 1 - 1e-9:  # a whole device: both actors
                self._serial += 1
                device_id = f"{kind}-as{self._serial}"
                device = spawn_device(self.catalog.get(kind), device_id)
                handle = spawn_expert(device, kind, device_id, config, start=False)
                try:
                    ray.get(handle.start.remote(), timeout=120)
                except BaseException:
                    ray.kill(handle)
                    ray.kill(device)
                    raise
                self._devices[device_id] = device
                self.router.add_replica(Replica(device_id, kind, handle, config.max_concurrency))
                have.setdefault(kind, []).append({"device_id": device_id})
                n_free -= 1
                added.append(device_id)
                self.store.incr("autoscale.started")
        if all(len(have.get(k, [])) >= n for k, n in self.target.items()):
            self._drain_surplus()  # make before break: the target fleet serves before any replica goes
        return added


__all__ = ["LIVE_POLICIES", "AutoscaleLoop", "LoopConfig"]
