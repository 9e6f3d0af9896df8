"""``flotilla autoscale`` without ``--dry-run``: the live policy loop against a Ray cluster.

Thin surface over :class:`cluster.shell.autoscale_loop.AutoscaleLoop`. Run as its own process it
has no router in it: each decision requests the fleet from Ray's autoscaler and stores the plans
(the routers re-read the routing plan); starting ExpertActors on joined nodes and draining
replicas is done where the router lives (the loop embedded in the serving process).
"""

from __future__ import annotations

import threading
from typing import Any

from cluster.exceptions import InputError
from cluster.shell.console import emit_json, out


def run_live(*, policy: list[str], model: str, kinds: list[str], tpot_slo_ms: float, ttft_slo_ms: float | None,
             interval_s: float, window_s: float, headroom: float, down_after: int, target_ongoing: int,
             max_count: list[str], address: str, store_url: str, iterations: int, as_json: bool) -> None:
    """Build the loop from the flags, connect, decide every ``interval_s``; print the decisions."""
    from cluster.catalog import default_catalog
    from cluster.shell.autoscale_loop import LIVE_POLICIES, AutoscaleLoop, LoopConfig
    from cluster.shell.planner import _parse_caps
    from cluster.state import open_store

    if policy == ["all"]:  # the dry run's default; live, one policy runs: cost
        policy = ["cost"]
    if len(policy) != 1 or policy[0] not in LIVE_POLICIES:
        raise InputError(f"--policy: {policy!r}; the live loop runs one of {list(LIVE_POLICIES)}")
    if iterations < 0:
        raise InputError(f"--iterations: {iterations}; allowed: an integer >= 0")
    catalog = default_catalog()
    resolved = [catalog.resolve(k) for k in kinds]
    cfg = LoopConfig(policy=policy[0], model=model, kinds=tuple(resolved), tpot_slo_ms=tpot_slo_ms,
                     ttft_slo_ms=ttft_slo_ms, interval_s=interval_s, window_s=window_s, headroom=headroom,
                     down_after=down_after, target_ongoing=target_ongoing,
                     max_count=_parse_caps(max_count, resolved, catalog))
    store = open_store(store_url)
    loop = AutoscaleLoop(store, cfg)
    import ray

    if not ray.is_initialized():
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    stop = threading.Event()
    done: list[dict[str, Any]] = []
    try:
        while not stop.is_set():
            rec = loop.step()
            if rec is not None:
                done.append(rec)
                if not as_json:
                    fleet = ", ".join(f"{n}x {k}" for k, n in rec["fleet"].items())
                    out.print(f"{rec['rate']:8.2f} req/s  {rec['action']:<10}  {fleet}")
                if iterations and len(done) >= iterations:
                    break
            stop.wait(min(1.0, interval_s))
    except KeyboardInterrupt:
        pass
    if as_json:
        emit_json({"policy": cfg.policy, "interval_s": interval_s, "window_s": window_s, "decisions": done,
                   "fleet": loop.target, "modeled": True,
                   "note": "the policy sizes the fleet from modeled throughput tables (cluster/perf)"})
