"""Fault injection on the serving path: real Ray actors, real Redis, real gRPC, real processes.

Every scenario sends requests with client-chosen ids (the prompt decides the echo model's answer)
and tallies, per id:

* ``completed``: the client got the full, right answer (retrying with the same id where the
  scenario makes it fail first);
* ``failed``: the client got a clear status (UNAVAILABLE, RESOURCE_EXHAUSTED) and, where retries
  are not part of the scenario, stopped there;
* ``lost``: neither (must be 0);
* ``duplicated``: completions recorded in the store beyond one per id (``router.completed``
  counts a result when it is stored, ``router.completed_twice`` a run that finished an id whose
  result was already stored; must be 0).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cluster.shell.client import Client, RpcError

KIND = "jetson-agx-orin-64"
RAY_NS = "flotilla-faults"
ROOT = Path(__file__).resolve().parents[2]
WORDS = 20


def prompt_of(rid: str) -> str:
    return " ".join(f"{rid[-6:]}w{i}" for i in range(WORDS))


@dataclass
class Tally:
    sent: int = 0
    completed: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    lost: int = 0
    duplicated: int = 0

    def check(self) -> None:
        assert self.lost == 0 and self.duplicated == 0, self
        assert self.completed + sum(self.failed.values()) == self.sent, self


@pytest.fixture(scope="module")
def experts(ray_session):
    """Two named echo experts (50 ms a word) other drivers can find in the RAY_NS namespace."""
    import ray

    from actors.device import spawn
    from actors.expert import ExpertConfig, spawn_expert
    from cluster.catalog import default_catalog

    spec = default_catalog().get(KIND)
    tag = uuid.uuid4().hex[:6]
    names = [f"faults-{tag}-{i}" for i in range(2)]
    devs = [spawn(spec, n) for n in names]
    exps = [spawn_expert(d, KIND, n, ExpertConfig(model="echo", echo_delay_s=0.05), name=n, namespace=RAY_NS)
            for d, n in zip(devs, names)]
    yield names, exps
    for a in exps + devs:
        ray.kill(a)


@pytest.fixture()
def store_ns(redis_url):
    from cluster.state import open_store

    ns = f"test-faults-{uuid.uuid4().hex[:8]}"
    yield ns
    with open_store(redis_url, namespace=ns) as s:
        s.clear()


def start_gateway(redis_url: str, store_ns: str, names: list[str]) -> tuple[subprocess.Popen, str]:
    import ray

    address = ray.get_runtime_context().gcs_address
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests/faults/gateway_proc.py"), address, RAY_NS, redis_url,
                             store_ns, KIND, *names], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    line = proc.stdout.readline()
    if not line.startswith("READY "):
        proc.kill()
        raise AssertionError(f"gateway process did not start: {line!r}")
    return proc, line.split()[1]


def retry_until_done(address: str, rid: str, deadline_s: float = 60) -> str | None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            with Client(address, timeout_s=30) as c:
                return c.generate(prompt_of(rid), max_tokens=64, request_id=rid).text
        except RpcError as exc:
            if exc.code not in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
                raise
            time.sleep(0.2)
    return None


def completed_count(redis_url: str, store_ns: str, name: str = "router.completed") -> float:
    from cluster.state import open_store

    with open_store(redis_url, namespace=store_ns) as s:
        return s.counter(name) + (s.counter("router.completed_twice") if name == "router.completed" else 0)


def test_gateway_sigkilled_with_requests_in_flight_then_restarted(experts, redis_url, store_ns):
    names, _ = experts
    ids = [f"kill-{i}-{uuid.uuid4().hex[:6]}" for i in range(12)]
    proc, address = start_gateway(redis_url, store_ns, names)
    first_chunk = threading.Event()
    codes: dict[str, str] = {}

    def call(rid: str) -> None:
        try:
            with Client(address, timeout_s=30) as c:
                for item in c.stream(prompt_of(rid), max_tokens=64, request_id=rid):
                    if isinstance(item, str):
                        first_chunk.set()
            codes[rid] = "OK"
        except RpcError as exc:
            codes[rid] = exc.code

    threads = [threading.Thread(target=call, args=(rid,)) for rid in ids]
    for t in threads:
        t.start()
    assert first_chunk.wait(30)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    for t in threads:
        t.join(60)
    assert "UNAVAILABLE" in codes.values()  # some were cut off mid-stream
    proc2, address2 = start_gateway(redis_url, store_ns, names)
    try:
        answers = {rid: retry_until_done(address2, rid) for rid in ids}
    finally:
        proc2.kill()
        proc2.wait()
    tally = Tally(sent=len(ids), completed=sum(answers[r] == prompt_of(r) for r in ids))
    tally.lost = tally.sent - tally.completed
    tally.duplicated = int(completed_count(redis_url, store_ns)) - tally.completed
    tally.check()
    assert completed_count(redis_url, store_ns, "router.replayed") >= 1  # the cut-off ones were taken over


def test_two_gateways_on_one_store_run_each_request_once(experts, redis_url, store_ns):
    names, _ = experts
    ids = [f"twin-{i}-{uuid.uuid4().hex[:6]}" for i in range(8)]
    gateways = [start_gateway(redis_url, store_ns, names) for _ in range(2)]
    results: dict[tuple[str, int], str | None] = {}
    try:
        def call(rid: str, g: int) -> None:
            results[(rid, g)] = retry_until_done(gateways[g][1], rid)

        threads = [threading.Thread(target=call, args=(rid, g)) for rid in ids for g in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
    finally:
        for proc, _ in gateways:
            proc.kill()
            proc.wait()
    both = [rid for rid in ids if results[(rid, 0)] == results[(rid, 1)] == prompt_of(rid)]
    tally = Tally(sent=len(ids), completed=len(both), lost=len(ids) - len(both))
    tally.duplicated = int(completed_count(redis_url, store_ns)) - len(ids)
    tally.check()


def test_redis_stopped_and_restarted_under_load(experts, make_redis_server):
    from actors.router import Router, RouterConfig
    from actors.routing import Replica
    from cluster.shell.gateway import Gateway, GatewayConfig
    from cluster.state import open_store

    names, exps = experts
    redis = make_redis_server(persistent=True)
    redis.start()
    store = open_store(redis.url(), namespace="faults")
    router = Router(store, [Replica(n, KIND, e, 2) for n, e in zip(names, exps)], RouterConfig(lease_ttl_s=0.6))
    router.start()
    gw = Gateway(router, store, GatewayConfig(port=0), "echo").start()
    ids = [f"redis-{i}-{uuid.uuid4().hex[:6]}" for i in range(10)]
    codes: dict[str, str] = {}
    try:
        def call(rid: str) -> None:
            try:
                with Client(gw.address, timeout_s=30) as c:
                    c.generate(prompt_of(rid), max_tokens=64, request_id=rid)
                codes[rid] = "OK"
            except RpcError as exc:
                codes[rid] = exc.code

        threads = [threading.Thread(target=call, args=(rid,)) for rid in ids]
        for t in threads:
            t.start()
        time.sleep(0.5)
        redis.stop()  # mid-load: in-flight requests cannot store their results
        for t in threads:
            t.join(60)
        assert set(codes.values()) <= {"OK", "UNAVAILABLE"} and "UNAVAILABLE" in codes.values()
        redis.start()  # with its append-only file: the journal is back
        answers = {rid: retry_until_done(gw.address, rid) for rid in ids}
        tally = Tally(sent=len(ids), completed=sum(answers[r] == prompt_of(r) for r in ids))
        tally.lost = tally.sent - tally.completed
        tally.duplicated = int(store.counter("router.completed") + store.counter("router.completed_twice")) - tally.completed
        tally.check()
    finally:
        gw.stop(0.2)
        router.close()
        store.close()
        redis.stop()


def test_overload_past_the_bound_fails_clearly_and_loses_nothing(experts, redis_url, store_ns):
    from actors.router import Router, RouterConfig
    from actors.routing import Replica
    from cluster.shell.gateway import Gateway, GatewayConfig
    from cluster.state import open_store

    names, exps = experts
    store = open_store(redis_url, namespace=store_ns)
    router = Router(store, [Replica(n, KIND, e, 2) for n, e in zip(names, exps)], RouterConfig(max_queue=6))
    router.start()
    gw = Gateway(router, store, GatewayConfig(port=0), "echo").start()
    ids = [f"load-{i}-{uuid.uuid4().hex[:6]}" for i in range(30)]
    codes: dict[str, str] = {}
    go = threading.Barrier(len(ids))

    def call(rid: str) -> None:
        go.wait()
        try:
            with Client(gw.address, timeout_s=60) as c:
                text = c.generate(prompt_of(rid), max_tokens=64, request_id=rid).text
            codes[rid] = "OK" if text == prompt_of(rid) else "WRONG"
        except RpcError as exc:
            codes[rid] = exc.code

    try:
        threads = [threading.Thread(target=call, args=(rid,)) for rid in ids]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        ok = sum(c == "OK" for c in codes.values())
        failed = {c: n for c in set(codes.values()) - {"OK"} for n in [list(codes.values()).count(c)]}
        tally = Tally(sent=len(ids), completed=ok, failed=failed, lost=len(ids) - len(codes))
        tally.duplicated = int(store.counter("router.completed") + store.counter("router.completed_twice")) - ok
        tally.check()
        assert set(failed) == {"RESOURCE_EXHAUSTED"} and ok >= 6
    finally:
        gw.stop(0.2)
        router.close()
        store.close()
