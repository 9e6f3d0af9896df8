"""End to end on Ray's real autoscaler (its fake multinode provider): a load step up launches
nodes of the kinds the policy's plan chose, requests keep completing while the fleet changes,
and a step down releases them.

The cluster is a SEPARATE Ray instance (examples/fake_cluster.yaml, three device node types),
started with ``ray start --head --autoscaling-config`` in its own process group and stopped by
killing that group (``ray stop`` would stop every Ray on the machine, the test session's own
included). The driver (router, autoscaling loop, client) runs in a subprocess connected to it:
this file run as a script.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from bench.common import free_ports

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "examples" / "fake_cluster.yaml"
KINDS = ("l4", "a10g", "a100-80g-sxm")
SHORT = " ".join(f"w{i}" for i in range(40))          # ~50 input tokens, max_tokens 32
LONG = " ".join(f"long{i:04d}" for i in range(900))   # ~2000 input tokens, max_tokens 512


def _env() -> dict[str, str]:
    return dict(os.environ, RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1", RAY_AUTH_MODE="disabled",
                RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(ROOT))


# ---------------------------------------------------------------------------------------------- driver


def _device_nodes(ray) -> dict[str, int]:
    """Alive nodes per device kind."""
    out: dict[str, int] = {}
    for n in ray.nodes():
        if n["Alive"]:
            for k in KINDS:
                if n["Resources"].get(f"device:{k}", 0) > 0:
                    out[k] = out.get(k, 0) + 1
    return out


def drive(address: str, out_path: str) -> None:
    """Low load, a step up, a step down; writes what happened to ``out_path`` (JSON)."""
    from concurrent.futures import ThreadPoolExecutor

    import ray

    from actors.router import Router, RouterConfig
    from cluster.shell.autoscale_loop import AutoscaleLoop, LoopConfig
    from cluster.state import open_store

    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    store = open_store(None)
    router = Router(store, [], RouterConfig(max_queue=512, plan_refresh_s=0.2, default_deadline_s=90.0))
    router.start(replay=False)
    loop = AutoscaleLoop(store, LoopConfig(policy="cost", model="llama-3-8b", kinds=KINDS, tpot_slo_ms=50.0,
                                           interval_s=1.0, window_s=10.0, down_after=3,
                                           max_count={k: 2 for k in KINDS}, drain_timeout_s=60.0),
                         router=router)
    stop = threading.Event()
    threading.Thread(target=loop.run, args=(stop, 0.5), daemon=True).start()
    results: list[dict] = []
    errors: list[str] = []
    lock = threading.Lock()
    timeline: list[dict] = []
    sent = 0

    def one(i: int, long: bool) -> None:
        prompt = f"r{i} " + (LONG if long else SHORT)
        max_tokens = 512 if long else 32
        try:
            final = router.generate({"prompt": prompt, "max_tokens": max_tokens, "request_id": f"req-{i}"})
            want = " ".join(prompt.split()[:max_tokens])
            with lock:
                results.append({"id": final["request_id"], "ok": final["text"] == want,
                                "device": final.get("device_id"), "t": time.time()})
        except Exception as exc:  # noqa: BLE001 - recorded; the test asserts there are none
            with lock:
                errors.append(f"req-{i}: {type(exc).__name__}: {exc}")

    pool = ThreadPoolExecutor(64)

    def phase(name: str, rate: float, long_every: int, done, limit_s: float) -> None:
        nonlocal sent
        t0 = time.time()
        k = 0
        while time.time() - t0 < limit_s:
            pool.submit(one, sent, long_every > 0 and k % long_every == 0)
            sent += 1
            k += 1
            timeline.append({"t": time.time(), "phase": name, "nodes": _device_nodes(ray),
                             "target": dict(loop.target), "replicas": sorted(r["kind"] for r in router.replicas())})
            if done():
                return
            time.sleep(1.0 / rate)
        raise AssertionError(f"phase {name}: not done in {limit_s} s; last: {timeline[-1]}")

    try:
        def settled() -> bool:  # every replica is of a target kind, and the target is served
            kinds = [r["kind"] for r in router.replicas()]
            return bool(loop.target) and all(kinds.count(k) == n for k, n in loop.target.items()) \
                and set(kinds) <= set(loop.target)

        t0 = time.time()  # the loop's first decision starts the floor fleet; traffic starts once it serves
        while not router.replicas():
            assert time.time() - t0 < 60, "the first node never joined"
            time.sleep(0.2)
        phase("low", 1.0, 0, lambda: settled() and len(results) >= 5, 60)
        low_target = dict(loop.target)
        phase("high", 2.0, 4, lambda: "a100-80g-sxm" in loop.target and settled() and any(
            (r["device"] or "").startswith("a100-80g-sxm") for r in results), 60)
        high_target = dict(loop.target)
        gone = set(high_target) - set(low_target)
        phase("down", 1.0, 0, lambda: loop.target != high_target and settled()
              and not any(_device_nodes(ray).get(k) for k in gone), 70)
        pool.shutdown(wait=True)
        doc = {"sent": sent, "results": results, "errors": errors, "decisions": loop.decisions,
               "timeline": timeline, "low_target": low_target, "high_target": high_target,
               "final_nodes": _device_nodes(ray), "completed_counter": store.counter("router.completed"),
               "unacked": len(store.journal_unacked()), "replicas": router.replicas()}
    except AssertionError as exc:
        pool.shutdown(wait=True)
        doc = {"failed": str(exc), "sent": sent, "errors": errors, "decisions": loop.decisions[-10:],
               "timeline": timeline[-5:]}
    finally:
        stop.set()
    Path(out_path).write_text(json.dumps(doc))
    router.close()
    ray.shutdown()


# ---------------------------------------------------------------------------------------------- test


@pytest.fixture()
def fake_cluster(tmp_path):
    """A fake multinode Ray cluster with an autoscaler; yields its address; stopped after."""
    import yaml

    port, client, dashboard, agent = free_ports(4)
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["provider"]["gcs_address"] = f"127.0.0.1:{port}"  # where the fake nodes join (default: 6379)
    path = tmp_path / "fake_cluster.yaml"
    path.write_text(yaml.safe_dump(cfg))
    temp = Path("/tmp") / f"flotilla-fake-{os.getpid()}-{port}"  # Ray's socket paths must stay short
    proc = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", f"--port={port}",
         f"--autoscaling-config={path}", "--include-dashboard=false", "--num-cpus=2", f"--temp-dir={temp}",
         "--disable-usage-stats",
         # ports that default to fixed numbers: free ones, so two such clusters can run at once
         f"--ray-client-server-port={client}", f"--dashboard-port={dashboard}",
         f"--dashboard-agent-listen-port={agent}"],
        env=_env(), start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out[-2000:]
        yield f"127.0.0.1:{port}", temp
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):  # every Ray process of this cluster: its group
            try:
                os.killpg(proc.pid, sig)
                end = time.monotonic() + 3
                while time.monotonic() < end:  # until the group is empty (killpg 0 raises), 3 s at most
                    time.sleep(0.1)
                    os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break


def test_step_up_launches_planned_kinds_and_step_down_releases_them(fake_cluster, tmp_path):
    address, temp = fake_cluster
    out = tmp_path / "run.json"
    run = subprocess.run([sys.executable, __file__, address, str(out)], env=_env(), cwd=ROOT,
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert "failed" not in doc, json.dumps(doc)[-3000:]
    # the plans: the cost policy's choice for short requests (one A10G), then, with a quarter of
    # long ones, a fleet with an A100 (the one kind whose modeled TPOT meets the SLO for them)
    assert doc["low_target"] == {"a10g": 1}
    assert "a100-80g-sxm" in doc["high_target"]
    # the autoscaler launched nodes of exactly the planned kinds, and only those (the first
    # decision, on an empty window, keeps one device of the cheapest kind, as the replay does)
    seen = {k for row in doc["timeline"] for k, n in row["nodes"].items() if n}
    planned = {k for d in doc["decisions"] for k in d["fleet"]}
    assert seen == planned
    assert {"a10g", "a100-80g-sxm"} <= seen
    assert any(row["nodes"].get("a100-80g-sxm") for row in doc["timeline"] if row["phase"] == "high")
    # the step down released the a100 node and the fleet is back to the low plan
    assert doc["final_nodes"].get("a100-80g-sxm", 0) == 0
    assert [r["kind"] for r in doc["replicas"]] == ["a10g"]
    actions = [d["action"] for d in doc["decisions"]]
    assert actions.index("scale up") < actions.index("scale down")
    # every request completed exactly once with the right text, across both changes
    assert doc["errors"] == []
    ids = [r["id"] for r in doc["results"]]
    assert len(ids) == len(set(ids)) == doc["sent"]
    assert all(r["ok"] for r in doc["results"])
    assert doc["completed_counter"] == doc["sent"]
    assert doc["unacked"] == 0
    # ... and kept completing while the fleet changed: between the decision that took an A100 and
    # the A100's first answer (its node was launching), and between the decision that dropped it
    # and the end (its replica drained, its node released)
    t_up = next(d["t"] for d in doc["decisions"] if "a100-80g-sxm" in d["fleet"])
    t_a100 = min(r["t"] for r in doc["results"] if r["device"].startswith("a100-80g-sxm"))
    t_down = next(d["t"] for d in doc["decisions"] if d["action"] == "scale down")
    assert any(t_up < r["t"] < t_a100 for r in doc["results"])
    assert any(r["t"] > t_down for r in doc["results"])
    kinds_served = {r["device"].rsplit("-as", 1)[0] for r in doc["results"]}
    assert {"a10g", "a100-80g-sxm"} <= kinds_served <= planned


if __name__ == "__main__":
    drive(sys.argv[1], sys.argv[2])
