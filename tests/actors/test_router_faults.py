"""Router faults on real Ray actors and a real Redis: replica death mid-stream, gateway restart
with journaled requests, deadlines, the bounded queue. Echo experts keep it fast."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from actors.routing import Replica
from actors.router import DeadlineExceededError, QueueFullError, Router, RouterConfig
from cluster.exceptions import RequestIdInUseError

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


def test_a_whole_request_is_one_actor_call_counted_with_its_journal_entry(store, pool):
    """``whole`` (a caller that answers only when done): one unary call, so one chunk of all the
    text, the same final answer as the streamed run; each run counts its load and completion once
    (the completion in the journal's own store round trip)."""
    router = _router(store, pool)  # unary_max_tokens 1: 6 tokens would stream
    router.start()
    req = {"prompt": WORDS, "max_tokens": 6}
    streamed = [e for e in router.stream(req) if e["type"] == "chunk"]
    events = list(router.stream(req, whole=True))
    assert [e["type"] for e in events] == ["accepted", "chunk", "done"]
    assert events[1]["text"] == events[2]["text"] == "".join(e["text"] for e in streamed) == "w0 w1 w2 w3 w4 w5"
    assert len(streamed) > 1  # the streamed run did stream
    from cluster.load import read_window

    router.flush_load()  # the recorder writes every half second; now, whatever is left
    assert len(read_window(store, 60)[1]) == 2 and store.counter("router.completed") == 2
    assert store.counter("router.completed_twice") == 0 and store.journal_unacked() == []


def test_deadline_is_enforced_and_acknowledged(store, pool):
    router = _router(store, pool)
    router.start()
    with pytest.raises(DeadlineExceededError, match="deadline"):
        router.generate({"prompt": WORDS, "max_tokens": 64, "request_id": "late"}, timeout_s=0.3)
    assert store.journal_get("late") is None  # acknowledged without a result: the id is free again
    assert store.journal_unacked() == []
    assert all(r["active"] == 0 for r in router.replicas())


def test_queue_is_bounded(store, pool):
    router = _router(store, pool, max_queue=2)
    router.start()
    streams = [router.stream({"prompt": WORDS, "request_id": f"q{i}"}) for i in range(3)]
    for s in streams:
        assert next(s) == {"type": "accepted", "request_id": s.gi_frame.f_locals["rid"]}
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
        assert store.journal_get("survivor")["result"]["text"] == WORDS
    finally:
        g2.stop(0.5)


def test_reused_id_of_another_request_fails_fast_and_frees_nothing(store, pool):
    """A request id reused for a different prompt gets RequestIdInUseError at once, every time,
    even when no result is cached in the router (it used to leave a pending entry behind that
    froze every later request with that id until its deadline)."""
    router = _router(store, pool, result_cache=0)
    router.start()
    first = router.generate({"prompt": "a b c", "request_id": "dup"})
    assert first["text"] == "a b c"
    for _ in range(5):
        with pytest.raises(RequestIdInUseError, match="already used by another request") as info:
            router.generate({"prompt": "something else", "request_id": "dup"}, timeout_s=5)
        assert "a b c" not in str(info.value)
    # The same request again is a retry: the stored answer, not a second run.
    again = router.generate({"prompt": "a b c", "request_id": "dup"}, timeout_s=5)
    assert again["text"] == "a b c" and again["replayed"] is True
    assert store.counter("router.completed") == 1
    assert router.status()["admitted"] == 0 and router._pending == {}


def test_a_result_belongs_to_its_caller(store, pool):
    router = _router(store, pool)
    router.start()
    assert router.generate({"prompt": "x y", "request_id": "mine"}, caller="alice")["text"] == "x y"
    with pytest.raises(RequestIdInUseError):
        router.generate({"prompt": "x y", "request_id": "mine"}, caller="mallory")
    assert router.generate({"prompt": "x y", "request_id": "mine"}, caller="alice")["replayed"] is True


def test_retry_after_restart_returns_the_stored_answer(store, pool):
    first = _router(store, pool)
    first.start()
    answer = first.generate({"prompt": WORDS, "max_tokens": 64, "temperature": 0.8, "request_id": "keep"})
    first.close()
    second = _router(store, pool)  # a new process: empty result cache
    assert second.start() == 0
    again = second.generate({"prompt": WORDS, "max_tokens": 64, "temperature": 0.8, "request_id": "keep"})
    assert again["text"] == answer["text"] and again["replayed"] is True
    assert store.counter("router.completed") == 1
    assert store.journal_get("keep")["payload"] is None  # the prompt is not kept once done


def test_a_retry_runs_this_routers_stranded_entry_at_once(store, pool):
    # The first run could neither store its result nor acknowledge (the store was down): the entry
    # stays pending, owned by this live router, and no lease tick is due (replay off). A retry
    # with the same id must run it as journaled, not wait for a result nobody is computing.
    router = _router(store, pool)
    router.start(replay=False)
    req = router.normalise({"prompt": WORDS, "max_tokens": 64, "temperature": 0.8, "seed": 7, "request_id": "stranded"})
    from actors.router import fingerprint

    store.journal_append("stranded", req, fingerprint=fingerprint(req), owner=router.owner)
    t0 = time.monotonic()
    final = router.generate({"prompt": WORDS, "max_tokens": 64, "temperature": 0.8, "seed": 7, "request_id": "stranded"},
                            timeout_s=20)
    assert time.monotonic() - t0 < 10  # ran now (30 words at 50 ms), not after a deadline
    assert final["text"] == WORDS and final.get("replayed") is not True
    assert store.counter("router.stranded_rerun") == 1 and store.counter("router.completed") == 1
    assert store.journal_unacked() == []
    # An entry owned by another live router is still left to it: the retry waits, then times out.
    store.lease("other-router", 30)
    store.journal_append("theirs", req, fingerprint=fingerprint(req), owner="other-router")
    with pytest.raises(DeadlineExceededError):
        router.generate(dict(req, request_id="theirs"), timeout_s=0.5)
    assert store.journal_get("theirs")["owner"] == "other-router"
    router.close()


def test_two_routers_on_one_store_never_run_one_request_twice(store, pool):
    a = _router(store, pool)
    a.start()
    stream = a.stream({"prompt": WORDS, "max_tokens": 64, "request_id": "shared"})
    assert next(stream)["type"] == "accepted"
    assert next(stream)["type"] == "chunk"  # running on a
    b = _router(store, pool, lease_ttl_s=0.3)
    assert b.start() == 0  # a holds its lease: b takes nothing over
    got: list[dict] = []
    waiter = threading.Thread(target=lambda: got.append(b.generate({"prompt": WORDS, "max_tokens": 64, "request_id": "shared"})))
    waiter.start()
    rest = list(stream)
    waiter.join(30)
    assert rest[-1]["text"] == WORDS
    assert got and got[0]["text"] == WORDS and got[0]["replayed"] is True
    assert b.wait_replayed(5) and store.counter("router.replayed") == 0
    assert store.counter("router.completed") == 1
    a.close()
    b.close()


def test_actor_death_errors_are_told_from_transient_ones():
    from ray.exceptions import ActorUnavailableError, NodeDiedError, OutOfMemoryError, WorkerCrashedError

    from actors.router import _is_actor_death, _is_transient

    assert _is_actor_death(OutOfMemoryError("killed by the memory monitor"))
    assert _is_actor_death(WorkerCrashedError())
    assert _is_actor_death(NodeDiedError("node gone"))
    assert not _is_actor_death(ActorUnavailableError("restarting", None))
    assert _is_transient(ActorUnavailableError("restarting", None))
    assert not _is_actor_death(ValueError("bad input")) and not _is_transient(ValueError("x"))


def test_killed_replica_mid_stream_completes_elsewhere_exactly_once(store, pool):
    import ray

    router = _router(store, pool)
    router.start()
    stream = router.stream({"prompt": WORDS, "max_tokens": 64, "request_id": "victim"})
    assert next(stream) == {"type": "accepted", "request_id": "victim"}
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
    assert store.journal_unacked() == [] and store.journal_get("victim")["result"]["text"] == WORDS
    assert store.counter("router.redispatched") == 1
    assert [r["alive"] for r in router.replicas() if r["device_id"] == busy[0]["device_id"]] == [False]


def test_lease_loop_survives_a_store_outage(throwaway_redis):
    """The lease thread keeps going through a Redis outage and holds the lease again after it."""
    from cluster.state import open_store

    store = open_store(throwaway_redis.url(), namespace="lease")
    router = Router(store, [], RouterConfig(lease_ttl_s=0.3, router_id="g-outage"))
    router.start()
    throwaway_redis.stop()
    deadline = time.monotonic() + 10
    while router.lease_failures < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert router.lease_failures >= 2 and router._lease_thread.is_alive()
    throwaway_redis.start()  # a fresh, empty server: the lease must be taken again
    store.journal_append("orphan", {"prompt": "p"}, owner="g-dead")
    deadline = time.monotonic() + 10
    while store.counter("router.replay_failed") == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    # Claimed and replayed (it fails: this router has no replicas), then acknowledged.
    assert store.counter("router.replay_failed") == 1
    assert store.journal_unacked() == []
    router.close()
    store.close()


def test_fingerprint_binds_how_a_request_runs():
    from actors.router import fingerprint

    base = {"prompt": "p q", "max_tokens": 8, "temperature": 0.0, "top_p": 1.0, "stop": [], "seed": None}
    for default in (None, "", "auto"):  # the default mode is the same request
        assert fingerprint(dict(base, context_parallel=default)) == fingerprint(base)
    assert fingerprint(dict(base, context_parallel="off")) != fingerprint(base)
    assert fingerprint(dict(base, routing="plan")) == fingerprint(base)
    experts = dict(base, routing="experts")
    assert fingerprint(experts) != fingerprint(base)
    assert fingerprint(dict(experts, energy_budget_j=5.0)) != fingerprint(experts)
    assert fingerprint(base, "alice") != fingerprint(base, "bob")


def test_a_finished_stream_holds_no_slot_while_its_caller_keeps_it_open(store, pool):
    """Once the final event is out the request's queue and replica slots are free, even though
    the caller has not closed the generator (it used to keep both until then)."""
    router = _router(store, pool, max_queue=1)
    router.start()
    for n, max_tokens in enumerate((64, 1)):  # streamed, and one unary call
        stream = router.stream({"prompt": "a b c", "max_tokens": max_tokens, "request_id": f"open-{n}"})
        events = []
        while not events or events[-1]["type"] != "done":
            events.append(next(stream))
        assert events[-1]["text"] == ("a b c" if max_tokens == 64 else "a")
        assert router.status()["admitted"] == 0
        assert all(r["active"] == 0 for r in router.replicas())
        assert router._pending == {}
        # the queue has room again although this generator is still open
        assert router.generate({"prompt": "x y", "request_id": f"next-{n}"})["text"] == "x y"
        stream.close()
    router.close()
