"""Router faults on real Ray actors and a real Redis: replica death mid-stream, gateway restart
with journaled requests, deadlines, the bounded queue. Echo experts keep it fast."""

from __future__ import annotations

import threading
import uuid

import pytest

from actors.routing import Replica
from actors.router import DeadlineExceededError, QueueFullError, Router, RouterConfig

KIND = "jetson-agx-orin-64"
WORDS = " ".join(f"w{i}" for i in range(30))


@pytest.fixture(scope="module")
def pool(ray_session):
    """Two jetson devices, each a DeviceActor + an echo ExpertActor that sleeps 50 ms per word."""
    import ray

    from actors.device import spawn
    from actors.expert import ExpertConfig, spawn_expert
    from cluster.catalog import default_catalog

    spec = default_catalog().get(KIND)
    devs = [spawn(spec, f"{KIND}-{i}") for i in range(2)]
    exps = [spawn_expert(d, KIND, f"{KIND}-{i}", ExpertConfig(model="echo", echo_delay_s=0.05), start=False) for i, d in enumerate(devs)]
    ray.get([e.start.remote() for e in exps])
    yield [(f"{KIND}-{i}", e) for i, e in enumerate(exps)]
    for a in exps + devs:
        ray.kill(a)


@pytest.fixture()
def store(redis_url):
    from cluster.state import open_store

    s = open_store(redis_url, namespace=f"test-router-{uuid.uuid4().hex[:8]}")
    yield s
    s.clear()
    s.close()


def _router(store, pool, **cfg):
    return Router(store, [Replica(d, KIND, h, capacity=2) for d, h in pool], RouterConfig(**cfg))


def test_deadline_is_enforced_and_acknowledged(store, pool):
    router = _router(store, pool)
    router.start()
    with pytest.raises(DeadlineExceededError, match="deadline"):
        router.generate({"prompt": WORDS, "max_tokens": 64, "request_id": "late"}, timeout_s=0.3)
    assert store.journal_get("late")["acked"] is True
    assert store.journal_unacked() == []
    assert all(r["active"] == 0 for r in router.replicas())


def test_queue_is_bounded(store, pool):
    router = _router(store, pool, max_queue=2)
    router.start()
    streams = [router.stream({"prompt": WORDS, "request_id": f"q{i}"}) for i in range(3)]
    assert next(streams[0])["type"] == "chunk"
    assert next(streams[1])["type"] == "chunk"
    with pytest.raises(QueueFullError, match=r"queue is full \(2 requests"):
        next(streams[2])
    assert store.journal_get("q2") is None  # refused before journaling
    for s in streams[:2]:
        s.close()  # the caller goes away: cancelled and acknowledged
    assert router.status()["admitted"] == 0
    assert store.journal_unacked() == []
    # and it serves again once there is room
    assert router.generate({"prompt": "a b c"})["text"] == "a b c"


def test_gateway_restart_replays_journaled_requests(store, pool):
    from cluster.shell.client import Client, RpcError
    from cluster.shell.gateway import Gateway, GatewayConfig

    g1 = Gateway(_router(store, pool), store, GatewayConfig(port=0), "echo").start()
    got: list[str] = []
    first = threading.Event()
    failure: list[RpcError] = []

    def call():
        try:
            with Client(g1.address) as c:
                for item in c.stream(WORDS, max_tokens=64, request_id="survivor"):
                    if isinstance(item, str):
                        got.append(item)
                        first.set()
        except RpcError as exc:
            failure.append(exc)
            first.set()

    t = threading.Thread(target=call)
    t.start()
    assert first.wait(30)
    g1.stop(0.5)
    t.join(10)
    assert failure and failure[0].code == "UNAVAILABLE"
    assert "".join(got) != WORDS
    assert [rid for rid, _ in store.journal_unacked()] == ["survivor"]

    router2 = _router(store, pool)
    g2 = Gateway(router2, store, GatewayConfig(port=0), "echo")
    assert router2.start() == 1
    g2.start()
    try:
        assert router2.wait_replayed(30)
        assert store.journal_unacked() == []
        assert store.counter("router.replayed") == 1
        with Client(g2.address) as c:
            result = c.generate(WORDS, max_tokens=64, request_id="survivor")
        assert result.text == WORDS and result.replayed
    finally:
        g2.stop(0.5)


def test_killed_replica_mid_stream_completes_elsewhere_exactly_once(store, pool):
    import ray

    router = _router(store, pool)
    router.start()
    stream = router.stream({"prompt": WORDS, "max_tokens": 64, "request_id": "victim"})
    first = next(stream)
    assert first["type"] == "chunk"
    busy = [r for r in router.replicas() if r["active"] == 1]
    assert len(busy) == 1
    victim = dict(pool)[busy[0]["device_id"]]
    ray.kill(victim)
    rest = list(stream)
    final = rest[-1]
    text = first["text"] + "".join(e["text"] for e in rest[:-1])
    assert text == WORDS  # every word once, in order, although the first replica died mid-stream
    assert final["text"] == WORDS and final["attempts"] == 2
    assert final["device_id"] != busy[0]["device_id"]
    assert store.journal_unacked() == [] and store.journal_get("victim")["acked"] is True
    assert store.counter("router.redispatched") == 1
    assert [r["alive"] for r in router.replicas() if r["device_id"] == busy[0]["device_id"]] == [False]
