"""The state store contract, run against both back ends: MemoryStore and a real Redis server.

Every test gets a fresh namespace (a uuid) and deletes its keys afterwards, so tests never see
each other's state and leave nothing behind in Redis.
"""

from __future__ import annotations

import dataclasses
import math
import random
import threading
import time
import uuid
from fractions import Fraction

import numpy as np
import pytest

from cluster.exceptions import InputError, RequestIdInUseError, StoreUnavailableError
from cluster.state import (
    HistogramSummary,
    MemoryStore,
    RedisStore,
    StateStore,
    open_store,
    percentile_nearest_rank,
    redact_url,
)

KINDS = ["memory", "redis"]


@pytest.fixture(params=KINDS)
def make_store(request, redis_url):
    """A factory of stores of one kind; every namespace it hands out is cleared afterwards."""
    kind = request.param
    made: list[tuple[StateStore, str]] = []

    def make(namespace: str | None = None, **kwargs) -> StateStore:
        ns = namespace or f"test-{uuid.uuid4().hex}"
        if kind == "memory":
            store = MemoryStore(ns, **kwargs)
        else:
            store = RedisStore(redis_url, namespace=ns, **kwargs)
        made.append((store, ns))
        return store

    make.kind = kind
    yield make
    for store, ns in made:
        store.close()
        if kind == "redis":
            with open_store(redis_url, namespace=ns) as cleaner:
                cleaner.clear()


@pytest.fixture
def store(make_store) -> StateStore:
    return make_store()


def _raw_keys(redis_url: str, namespace: str) -> list[str]:
    import redis

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return sorted(client.scan_iter(match=f"flotilla:{namespace}:*"))
    finally:
        client.close()


def _run_together(n_threads: int, target) -> list:
    """Run ``target(i)`` in ``n_threads`` threads released at once; return results by index."""
    barrier = threading.Barrier(n_threads)
    results: list = [None] * n_threads
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            barrier.wait()
            results[i] = target(i)
        except BaseException as exc:  # re-raised in the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    if errors:
        raise errors[0]
    return results


# ---------------------------------------------------------------------------------------------
# Devices
# ---------------------------------------------------------------------------------------------


def test_register_device_and_list_live_devices(store):
    store.register_device("gpu-0", {"kind": "rtx4090", "memory_gib": 24, "tags": ("a", "b")})
    store.register_device("orin-1", {"kind": "jetson-agx-orin-64"})
    assert store.devices() == {
        "gpu-0": {"kind": "rtx4090", "memory_gib": 24, "tags": ["a", "b"]},
        "orin-1": {"kind": "jetson-agx-orin-64"},
    }
    # What comes back is a copy: changing it changes nothing stored.
    got = store.devices()
    got["gpu-0"]["kind"] = "changed"
    assert store.devices()["gpu-0"]["kind"] == "rtx4090"


def test_register_again_replaces_info(store):
    store.register_device("gpu-0", {"kind": "rtx4090"})
    store.register_device("gpu-0", {"kind": "rtx3090"})
    assert store.devices() == {"gpu-0": {"kind": "rtx3090"}}


def test_device_expires_after_ttl_and_heartbeat_then_fails(store):
    store.register_device("short", {"n": 1}, ttl_s=0.3)
    store.register_device("long", {"n": 2}, ttl_s=30)
    assert set(store.devices()) == {"short", "long"}
    time.sleep(0.5)
    assert store.devices() == {"long": {"n": 2}}
    assert store.heartbeat("short", ttl_s=30) is False
    assert store.devices() == {"long": {"n": 2}}
    store.register_device("short", {"n": 3}, ttl_s=30)  # registering again revives it
    assert store.devices()["short"] == {"n": 3}


def test_heartbeat_extends_the_deadline(store):
    store.register_device("d", {"n": 1}, ttl_s=1.0)
    time.sleep(0.6)
    assert store.heartbeat("d", ttl_s=1.0) is True  # new deadline ~1.6 s after registering
    time.sleep(0.6)  # 1.2 s after registering: the first deadline has passed
    assert store.devices() == {"d": {"n": 1}}
    time.sleep(0.7)  # 1.9 s: past the extended deadline too
    assert store.devices() == {}


def test_heartbeat_of_unknown_device_is_false(store):
    assert store.heartbeat("ghost") is False
    assert store.devices() == {}


def test_remove_device(store):
    store.register_device("a", {})
    store.register_device("b", {})
    store.remove_device("a")
    store.remove_device("never-registered")  # no error
    assert store.devices() == {"b": {}}
    assert store.heartbeat("a") is False


@pytest.mark.parametrize("ttl", [0, -1, float("nan"), float("inf"), "5", True, None])
def test_bad_ttl_is_input_error(store, ttl):
    with pytest.raises(InputError, match="ttl_s"):
        store.register_device("d", {}, ttl_s=ttl)
    with pytest.raises(InputError, match="ttl_s"):
        store.heartbeat("d", ttl_s=ttl)
    assert store.devices() == {}


def test_memory_store_expiry_with_injected_clock():
    now = [100.0]
    store = MemoryStore("clocked", clock=lambda: now[0])
    store.register_device("d", {}, ttl_s=10)
    now[0] = 109.999
    assert store.heartbeat("d", ttl_s=10) is True  # deadline now 119.999
    now[0] = 119.998
    assert list(store.devices()) == ["d"]
    now[0] = 119.999  # a deadline is exclusive: at it, the device is dead
    assert store.devices() == {}
    assert store.heartbeat("d") is False


def test_redis_devices_prunes_dead_ids_from_index(redis_url):
    ns = f"test-{uuid.uuid4().hex}"
    with RedisStore(redis_url, namespace=ns) as store:
        try:
            store.register_device("dead", {}, ttl_s=0.1)
            store.register_device("live", {}, ttl_s=30)
            time.sleep(0.25)
            assert store.devices() == {"live": {}}
            import redis

            client = redis.Redis.from_url(redis_url, decode_responses=True)
            assert client.smembers(f"flotilla:{ns}:devices") == {"live"}
            assert 0 < client.pttl(f"flotilla:{ns}:device:live") <= 30_000
            client.close()
        finally:
            store.clear()


# ---------------------------------------------------------------------------------------------
# Plans
# ---------------------------------------------------------------------------------------------


def test_plan_versions_count_up_and_latest_is_last(store):
    assert store.get_plan() is None
    assert store.plan_versions() == []
    plans = [{"rtx4090": i, "note": f"plan {i}"} for i in range(5)]
    assert [store.put_plan(p) for p in plans] == [1, 2, 3, 4, 5]
    assert store.get_plan() == (5, plans[4])
    for v, p in enumerate(plans, start=1):
        assert store.get_plan(v) == (v, p)
    assert store.get_plan(6) is None
    assert store.plan_versions() == [1, 2, 3, 4, 5]


def test_only_the_newest_plan_versions_are_kept(store):
    for i in range(1, 8):
        assert store.put_plan({"i": i}, name="p", keep=3) == i
        assert store.plan_versions(name="p") == list(range(max(1, i - 2), i + 1))
    assert store.get_plan(name="p") == (7, {"i": 7})
    assert store.get_plan(name="p", version=5) == (5, {"i": 5})
    assert store.get_plan(name="p", version=4) is None
    assert store.put_plan({"i": 8}, name="p") == 8  # the default keeps many more
    assert store.plan_versions(name="p") == [5, 6, 7, 8]
    with pytest.raises(InputError, match="keep"):
        store.put_plan({}, name="p", keep=0)


def test_plan_names_are_independent(store):
    assert store.put_plan({"a": 1}, name="edge") == 1
    assert store.put_plan({"b": 1}) == 1
    assert store.put_plan({"a": 2}, name="edge") == 2
    assert store.get_plan(name="edge") == (2, {"a": 2})
    assert store.get_plan() == (1, {"b": 1})
    assert store.plan_versions(name="edge") == [1, 2]
    assert store.plan_versions(name="nothing") == []
    assert store.get_plan(name="nothing") is None


@pytest.mark.parametrize("version", [0, -3, True, 1.0, "1"])
def test_bad_plan_version_is_input_error(store, version):
    store.put_plan({"x": 1})
    with pytest.raises(InputError, match="version"):
        store.get_plan(version)


def test_concurrent_put_plan_gives_unique_versions(make_store):
    store = make_store()
    per_thread = 15
    n_threads = 4

    def writer(t: int) -> list[int]:
        return [store.put_plan({"thread": t, "i": i}, keep=1000) for i in range(per_thread)]

    versions = _run_together(n_threads, writer)
    flat = [v for vs in versions for v in vs]
    assert sorted(flat) == list(range(1, n_threads * per_thread + 1))
    for t, vs in enumerate(versions):
        assert vs == sorted(vs)  # one writer's versions increase
        for i, v in enumerate(vs):
            assert store.get_plan(v) == (v, {"thread": t, "i": i})
    assert store.plan_versions() == list(range(1, n_threads * per_thread + 1))


# ---------------------------------------------------------------------------------------------
# Journal
# ---------------------------------------------------------------------------------------------


def test_journal_append_order_ack_and_get(store):
    before = time.time()
    for i in range(6):
        store.journal_append(f"r{i}", {"prompt": f"p{i}", "max_tokens": i}, fingerprint=f"f{i}", owner="g1")
    after = time.time()
    expected = [(f"r{i}", {"prompt": f"p{i}", "max_tokens": i}) for i in range(6)]
    assert store.journal_unacked() == expected

    assert store.journal_ack("r2") is True
    assert store.journal_ack("r2") is False  # ack once
    assert store.journal_ack("r0") is True
    assert store.journal_ack("unknown") is False
    assert [rid for rid, _ in store.journal_unacked()] == ["r1", "r3", "r4", "r5"]

    # Acknowledged without a result: the entry is gone (prompt included) and the id is free.
    assert store.journal_get("r2") is None
    entry = store.journal_get("r3")
    assert entry["payload"] == {"prompt": "p3", "max_tokens": 3}
    assert entry["acked"] is False and entry["result"] is None
    assert entry["fingerprint"] == "f3" and entry["owner"] == "g1"
    assert before <= entry["appended_at"] <= after
    assert store.journal_get("unknown") is None
    store.journal_append("r2", {"v": "reused"})
    assert [rid for rid, _ in store.journal_unacked()] == ["r1", "r3", "r4", "r5", "r2"]


def test_journal_complete_keeps_the_result_drops_the_prompt(store):
    store.journal_append("r1", {"prompt": "x" * 1000}, fingerprint="fp")
    seed = 2**62 + 12345  # survives the store exactly (no float rounding on the way)
    result = {"text": "answer", "ttft_s": 0.1 + 0.2, "seed": seed}
    assert store.journal_complete("r1", result, ttl_s=60) is True
    assert store.journal_complete("r1", result, ttl_s=60) is False  # completes once
    assert store.journal_ack("r1") is False  # no longer pending
    assert store.journal_unacked() == []
    entry = store.journal_get("r1")
    assert entry["acked"] is True and entry["payload"] is None
    assert entry["result"] == result and entry["fingerprint"] == "fp"
    assert store.journal_complete("never", result) is False
    assert store.journal_get("never") is None


def test_journal_counts_ride_with_the_entry_in_one_step(store):
    """``count`` on append and complete: the counter moves exactly when the entry does (the
    router's load window and completion counters, one round trip each)."""
    store.incr("load.x", 2.5)
    store.journal_append("c1", {"prompt": "p"}, fingerprint="fp", count="load.x")
    assert store.counter("load.x") == 3.5
    with pytest.raises(RequestIdInUseError):  # a retry is not new load
        store.journal_append("c1", {"prompt": "p"}, fingerprint="fp", count="load.x")
    assert store.counter("load.x") == 3.5
    both = ("router.completed", "router.completed_twice")
    assert store.journal_complete("c1", {"text": "t"}, count=both) is True
    assert store.journal_complete("c1", {"text": "t"}, count=both) is False  # a second run of it
    assert store.journal_complete("unknown", {"text": "t"}, count=both) is False
    assert store.counter("router.completed") == 1 and store.counter("router.completed_twice") == 2
    with pytest.raises(RequestIdInUseError):  # completed: a retry is not counted either
        store.journal_append("c1", {"prompt": "p"}, fingerprint="fp", count="load.x")
    assert store.counter("load.x") == 3.5
    store.journal_append("c2", {"prompt": "p"})  # no count: no counter
    assert store.journal_complete("c2", {"text": "t"}) is True
    assert set(store.counters()) == {"load.x", *both}
    with pytest.raises(InputError, match="count"):
        store.journal_complete("c3", {"text": "t"}, count=("only-one",))  # type: ignore[arg-type]
    with pytest.raises(InputError, match="count"):
        store.journal_append("c3", {"prompt": "p"}, count="")


def test_journal_results_expire(make_store):
    store = make_store()
    store.journal_append("short", {"v": 1}, fingerprint="a")
    assert store.journal_complete("short", {"text": "t"}, ttl_s=0.05)
    time.sleep(0.15)
    assert store.journal_get("short") is None
    store.journal_append("short", {"v": 2}, fingerprint="b")  # the id is free again
    assert store.journal_unacked() == [("short", {"v": 2})]


def test_journal_reused_id_says_whether_it_is_the_same_request(store):
    store.journal_append("r1", {"v": "original"}, fingerprint="fp1")
    with pytest.raises(RequestIdInUseError) as info:
        store.journal_append("r1", {"v": "overwrite"}, fingerprint="fp2")
    assert info.value.same is False and info.value.result is None
    assert "original" not in str(info.value) and "fp1" not in str(info.value)
    with pytest.raises(RequestIdInUseError) as info:
        store.journal_append("r1", {"v": "original"}, fingerprint="fp1")
    assert info.value.same is True and info.value.result is None
    assert store.journal_get("r1")["payload"] == {"v": "original"}
    assert store.journal_unacked() == [("r1", {"v": "original"})]
    store.journal_complete("r1", {"text": "done"})
    with pytest.raises(RequestIdInUseError) as info:
        store.journal_append("r1", {"v": "original"}, fingerprint="fp1")
    assert info.value.same is True and info.value.result == {"text": "done"}
    with pytest.raises(RequestIdInUseError) as info:
        store.journal_append("r1", {"v": "other"}, fingerprint="fp9")
    assert info.value.same is False and info.value.result is None  # nothing revealed
    assert store.journal_unacked() == []


def test_leases_decide_who_may_claim_pending_entries(store):
    store.lease("g1", ttl_s=30)
    store.journal_append("a", {"n": 1}, owner="g1")
    store.journal_append("b", {"n": 2}, owner="g2")  # g2 holds no lease: an orphan
    store.journal_append("c", {"n": 3})  # no owner: an orphan
    assert store.journal_claim_orphans("g3") == [("b", {"n": 2}), ("c", {"n": 3})]
    assert store.journal_get("b")["owner"] == "g3"
    store.lease("g3", ttl_s=30)
    assert store.journal_claim_orphans("g4") == []  # g1 and g3 are alive
    store.release_lease("g1")
    assert store.journal_claim_orphans("g4") == [("a", {"n": 1})]
    store.lease("g4", ttl_s=30)
    assert [(r, store.journal_get(r)["owner"]) for r in "abc"] == [("a", "g4"), ("b", "g3"), ("c", "g3")]
    # Its own entries are always the owner's to take back (a restarted router with the same id).
    assert store.journal_claim_orphans("g3") == [("b", {"n": 2}), ("c", {"n": 3})]


def test_concurrent_acks_exactly_one_wins(make_store):
    store = make_store()
    for round_ in range(5):
        rid = f"req-{round_}"
        store.journal_append(rid, {"round": round_})
        results = _run_together(8, lambda _i, rid=rid: store.journal_ack(rid))
        assert results.count(True) == 1, results
        assert results.count(False) == 7
    assert store.journal_unacked() == []


def test_concurrent_appends_of_one_id_exactly_one_wins(make_store):
    store = make_store()

    def append(i: int) -> bool:
        try:
            store.journal_append("same", {"writer": i})
        except RequestIdInUseError:
            return False
        return True

    results = _run_together(6, append)
    assert results.count(True) == 1
    winner = results.index(True)
    assert store.journal_unacked() == [("same", {"writer": winner})]


def test_concurrent_appends_keep_each_writers_order(make_store):
    store = make_store()

    def writer(t: int) -> None:
        for i in range(20):
            store.journal_append(f"t{t}-{i}", {"t": t, "i": i})

    _run_together(3, writer)
    unacked = store.journal_unacked()
    assert len(unacked) == 60
    for t in range(3):
        assert [p["i"] for _, p in unacked if p["t"] == t] == list(range(20))


def test_redis_journal_survives_reconnect(redis_url):
    ns = f"test-{uuid.uuid4().hex}"
    first = open_store(redis_url, namespace=ns)
    try:
        for i in range(4):
            first.journal_append(f"r{i}", {"i": i})
        first.journal_complete("r1", {"text": "one"})
        first.put_plan({"gpus": 3})
        first.incr("requests", 4)
        first.close()
        with pytest.raises(StoreUnavailableError, match="closed"):
            first.journal_unacked()

        with open_store(redis_url, namespace=ns) as second:
            assert isinstance(second, RedisStore)
            expected = [("r0", {"i": 0}), ("r2", {"i": 2}), ("r3", {"i": 3})]
            assert second.journal_unacked() == expected
            assert second.journal_get("r1")["result"] == {"text": "one"}
            assert second.journal_ack("r1") is False
            assert second.get_plan() == (1, {"gpus": 3})
            assert second.counter("requests") == 4.0
    finally:
        with open_store(redis_url, namespace=ns) as cleaner:
            cleaner.clear()


# ---------------------------------------------------------------------------------------------
# Counters and histograms
# ---------------------------------------------------------------------------------------------


def test_counters(store):
    assert store.counter("requests") == 0.0
    assert store.counters() == {}
    assert store.incr("requests") == 1.0
    assert store.incr("requests", 2) == 3.0
    assert store.incr("tokens", 10.5) == 10.5
    assert store.incr("requests", -1) == 2.0
    assert store.counter("requests") == 2.0
    assert store.counters() == {"requests": 2.0, "tokens": 10.5}
    assert all(type(v) is float for v in store.counters().values())


def test_counter_float_sum_is_the_exact_left_to_right_double_sum(store):
    rng = random.Random(7)
    amounts = [rng.uniform(-1e3, 1e3) for _ in range(200)] + [0.1] * 10 + [1e-300, 1e300, -1e300]
    expected = 0.0
    for a in amounts:
        expected += a
        assert store.incr("c", a) == expected
    assert store.counter("c") == expected


@pytest.mark.parametrize("by", [float("nan"), float("inf"), True, "1", None, 10**400])
def test_bad_increment_is_input_error(store, by):
    with pytest.raises(InputError, match="by"):
        store.incr("c", by)
    assert store.counters() == {}


def test_windowed_buckets_count_apart_from_counters(store):
    assert store.windowed(["w.1"]) == {}
    assert store.incr_windowed("w.1", "0.3", ttl_s=60) == 1.0
    assert store.incr_windowed("w.1", "0.3", 2, ttl_s=60) == 3.0
    assert store.incr_windowed("w.1", "2.5", 0.5, ttl_s=60) == 0.5
    assert store.incr_windowed("w.2", "0.3", ttl_s=60) == 1.0
    assert store.windowed(["w.1", "w.2", "w.9"]) == {"w.1": {"0.3": 3.0, "2.5": 0.5}, "w.2": {"0.3": 1.0}}
    assert store.counters() == {}  # windowed buckets are not counters
    with pytest.raises(InputError, match="ttl_s"):
        store.incr_windowed("w.1", "0.3", ttl_s=0)
    with pytest.raises(InputError, match="field"):
        store.incr_windowed("w.1", "", ttl_s=1)
    with pytest.raises(InputError, match="by"):
        store.incr_windowed("w.1", "0.3", float("nan"), ttl_s=1)
    assert store.windowed(["w.1"]) == {"w.1": {"0.3": 3.0, "2.5": 0.5}}  # refused calls changed nothing


def test_windowed_bucket_expires_ttl_after_its_last_increment(make_store):
    if make_store.kind == "memory":
        now = [100.0]
        store = make_store(clock=lambda: now[0])
        store.incr_windowed("w.old", "1.1", ttl_s=10)
        store.incr_windowed("w.kept", "1.1", ttl_s=10)
        now[0] = 105.0
        store.incr_windowed("w.kept", "1.1", ttl_s=10)  # renews: deadline 115
        now[0] = 110.0  # w.old's deadline (exclusive)
        assert store.windowed(["w.old", "w.kept"]) == {"w.kept": {"1.1": 2.0}}
        now[0] = 111.5
        store.incr_windowed("w.new", "0.0", ttl_s=10)  # a write sweeps expired buckets out of memory
        assert "w.old" not in store._windows
        assert store.incr_windowed("w.old", "1.1", ttl_s=10) == 1.0  # an expired bucket restarts at 0
        return
    store = make_store()
    store.incr_windowed("w.old", "1.1", ttl_s=0.3)
    store.incr_windowed("w.kept", "1.1", ttl_s=30)
    pttl = store._client.pttl(store._k("window", "w.kept"))
    assert 29_000 < pttl <= 30_000  # Redis holds the TTL on the bucket's key
    time.sleep(0.5)
    assert store.windowed(["w.old", "w.kept"]) == {"w.kept": {"1.1": 1.0}}
    assert not store._client.exists(store._k("window", "w.old"))  # gone from Redis, not just hidden


def _nearest_rank_brute_force(samples: list[float], p: int) -> float:
    """The smallest sample x with #{s <= x} >= p/100 * n (exact rational arithmetic)."""
    n = len(samples)
    for x in sorted(samples):
        if Fraction(sum(1 for s in samples if s <= x)) >= Fraction(p, 100) * n:
            return x
    raise AssertionError("unreachable")


@pytest.mark.parametrize("n", [1, 2, 7, 10, 99, 100, 101, 1000])
def test_histogram_matches_reference_on_random_samples(store, n):
    rng = np.random.default_rng(n)
    samples = [float(x) for x in rng.lognormal(mean=3.0, sigma=1.0, size=n)]
    if n > 10:
        samples[3] = samples[5]  # ties
    for x in samples:
        store.observe("latency_ms", x)
    h = store.histogram("latency_ms")
    total = 0.0
    for x in samples:
        total += x
    assert h.count == n
    assert h.sum == total
    assert h.min == min(samples)
    assert h.max == max(samples)
    assert h.mean == total / n
    for p, got in ((50, h.p50), (90, h.p90), (99, h.p99)):
        # numpy's inverted_cdf is nearest rank; at these sizes its float rank is exact.
        assert got == float(np.percentile(samples, p, method="inverted_cdf"))
        assert got == _nearest_rank_brute_force(samples, p)


def test_histogram_keeps_newest_samples_for_percentiles(make_store):
    store = make_store(histogram_cap=5)
    for x in [100.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]:
        store.observe("h", x)
    h = store.histogram("h")
    # Aggregates over all ten observations; percentiles over the newest five (5..9).
    assert (h.count, h.sum, h.min, h.max) == (10, 145.0, 1.0, 100.0)
    assert h.mean == 14.5
    assert (h.p50, h.p90, h.p99) == (7.0, 9.0, 9.0)


def test_empty_histogram_and_histograms_are_separate(store):
    empty = store.histogram("nothing")
    assert empty == HistogramSummary(0, 0.0, None, None, None, None, None, None)
    store.observe("a", 1.0)
    store.observe("b", -2.5)
    assert store.histogram("a").count == 1
    assert (store.histogram("b").min, store.histogram("b").p99) == (-2.5, -2.5)
    assert store.counters() == {}  # histograms are not counters


@pytest.mark.parametrize("value", [float("nan"), float("-inf"), "3", None, False])
def test_bad_observation_is_input_error(store, value):
    with pytest.raises(InputError, match="value"):
        store.observe("h", value)
    assert store.histogram("h").count == 0


def test_percentile_nearest_rank_matches_brute_force_and_numpy_for_many_sizes():
    rng = random.Random(3)
    numpy_off_by_rounding = 0
    for n in range(1, 120):
        samples = sorted(rng.choice([rng.random(), 0.5]) for _ in range(n))
        for p in (1, 7, 25, 29, 50, 90, 99, 100):
            got = percentile_nearest_rank(samples, p)
            assert got == _nearest_rank_brute_force(samples, p), (n, p)
            numpy_value = float(np.percentile(samples, p, method="inverted_cdf"))
            if got != numpy_value:
                # numpy ranks by ceil(n * (p/100)) in floats: where p*n/100 is whole, the float
                # product can land just above it (0.07 * 100 = 7.000000000000001) and numpy
                # takes the next sample. That is the only disagreement allowed.
                exact_rank = Fraction(p * n, 100)
                assert exact_rank.denominator == 1 and n * (p / 100) > exact_rank, (n, p)
                assert numpy_value == samples[int(exact_rank)], (n, p)
                numpy_off_by_rounding += 1
    assert numpy_off_by_rounding > 0  # the case above really occurs in this sweep


def test_percentile_nearest_rank_fractional_p():
    samples = [float(i) for i in range(1, 1001)]
    assert percentile_nearest_rank(samples, 99.9) == 999.0
    assert percentile_nearest_rank(samples, 99.95) == 1000.0
    assert percentile_nearest_rank(samples, 0.05) == 1.0
    assert percentile_nearest_rank(samples, 0.1) == 1.0
    # In floats 66.4 * 750 / 100 is 498.00000000000006; the exact rank is 498.
    assert percentile_nearest_rank(samples[:750], 66.4) == 498.0
    assert percentile_nearest_rank(samples[:100], 7) == 7.0  # 0.07 * 100 is 7.000000000000001


@pytest.mark.parametrize("p", [0, -1, 100.5])
def test_percentile_out_of_range(p):
    with pytest.raises(InputError, match="0 < p <= 100"):
        percentile_nearest_rank([1.0], p)
    with pytest.raises(InputError, match="no samples"):
        percentile_nearest_rank([], 50)


def test_histogram_summary_is_frozen_and_validated():
    h = HistogramSummary(2, 3.0, 1.0, 2.0, 1.5, 1.0, 2.0, 2.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        h.count = 3
    with pytest.raises(InputError, match="count"):
        HistogramSummary(-1, 0.0, None, None, None, None, None, None)
    with pytest.raises(InputError, match="min <= p50"):
        HistogramSummary(2, 3.0, 1.0, 2.0, 1.5, 2.0, 1.0, 2.0)
    with pytest.raises(InputError, match="lacks"):
        HistogramSummary(2, 3.0, 1.0, 2.0, None, 1.0, 2.0, 2.0)
    with pytest.raises(InputError, match="count=0"):
        HistogramSummary(0, 0.0, 1.0, None, None, None, None, None)


# ---------------------------------------------------------------------------------------------
# JSON validation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "path"),
    [
        ({"s": {1, 2}}, "['s'] is a set"),
        ({"x": float("nan")}, "['x'] is nan"),
        ({"a": [1, {"b": float("inf")}]}, "['a'][1]['b'] is inf"),
        ({"k": {3: "int key"}}, "['k'] has key 3 of type int"),
        ({"obj": object()}, "['obj'] is a object"),
        ({"b": b"bytes"}, "['b'] is a bytes"),
    ],
)
def test_non_json_values_are_input_errors_naming_the_field(store, bad, path):
    with pytest.raises(InputError) as info:
        store.register_device("d", bad)
    assert f"info{path}" in str(info.value)
    with pytest.raises(InputError) as plan_err:
        store.put_plan(bad)
    assert f"plan{path}" in str(plan_err.value)
    with pytest.raises(InputError) as journal_err:
        store.journal_append("r", bad)
    assert f"payload{path}" in str(journal_err.value)
    # Nothing was stored and no version or id was used up.
    assert store.devices() == {}
    assert store.plan_versions() == []
    assert store.journal_get("r") is None
    store.journal_append("r", {"ok": True})
    assert store.put_plan({"ok": True}) == 1


def test_cycles_and_non_dict_tops_are_input_errors(store):
    cyclic: dict = {"a": []}
    cyclic["a"].append(cyclic)
    with pytest.raises(InputError, match=r"payload\['a'\]\[0\] contains itself"):
        store.journal_append("r", cyclic)
    with pytest.raises(InputError, match="plan must be a dict"):
        store.put_plan([1, 2])
    with pytest.raises(InputError, match="info must be a dict"):
        store.register_device("d", "rtx4090")


def test_json_round_trip_of_nested_values(store):
    value = {
        "unicode": "größe ✓",
        "nested": {"list": [1, 2.5, None, True, "x", {"deep": []}]},
        "tuple": (1, 2),
        "big": 2**62,
        "neg_zero": -0.0,
    }
    store.put_plan(value)
    got = store.get_plan()[1]
    assert got == {**value, "tuple": [1, 2]}
    assert math.copysign(1, got["neg_zero"]) == -1


@pytest.mark.parametrize("bad", ["", None, 5])
def test_empty_or_non_string_names_are_input_errors(store, bad):
    calls = [
        ("device_id", lambda: store.register_device(bad, {})),
        ("device_id", lambda: store.heartbeat(bad)),
        ("device_id", lambda: store.remove_device(bad)),
        ("request_id", lambda: store.journal_append(bad, {})),
        ("request_id", lambda: store.journal_ack(bad)),
        ("request_id", lambda: store.journal_get(bad)),
        ("name", lambda: store.put_plan({}, name=bad)),
        ("name", lambda: store.incr(bad)),
        ("name", lambda: store.observe(bad, 1.0)),
    ]
    for field, call in calls:
        with pytest.raises(InputError, match=field):
            call()


# ---------------------------------------------------------------------------------------------
# Lifecycle: clear, close, open_store, unreachable servers
# ---------------------------------------------------------------------------------------------


def _fill(store: StateStore) -> None:
    store.register_device("d", {"kind": "rtx4090"})
    store.put_plan({"p": 1})
    store.journal_append("r", {"q": 1})
    store.incr("c")
    store.observe("h", 1.0)


def test_clear_empties_only_this_namespace(make_store, redis_url):
    mine, other = make_store(), make_store()
    _fill(mine)
    _fill(other)
    mine.clear()
    assert mine.devices() == {}
    assert mine.plan_versions() == [] and mine.get_plan() is None
    assert mine.journal_unacked() == [] and mine.journal_get("r") is None
    assert mine.counters() == {} and mine.histogram("h").count == 0
    assert mine.put_plan({"p": 2}) == 1  # versions start again
    mine.journal_append("r", {"q": 2})  # the id is free again
    # The other namespace is untouched.
    assert other.devices() == {"d": {"kind": "rtx4090"}}
    assert other.get_plan() == (1, {"p": 1})
    assert other.journal_unacked() == [("r", {"q": 1})]
    assert other.counters() == {"c": 1.0}
    assert other.histogram("h").count == 1
    if make_store.kind == "redis":
        mine.clear()
        assert _raw_keys(redis_url, mine.namespace) == []
        assert _raw_keys(redis_url, other.namespace) != []


def test_closed_store_refuses_every_call(make_store):
    store = make_store()
    store.close()
    store.close()  # idempotent
    calls = [
        lambda: store.register_device("d", {}),
        lambda: store.heartbeat("d"),
        store.devices,
        lambda: store.remove_device("d"),
        lambda: store.put_plan({}),
        store.get_plan,
        store.plan_versions,
        lambda: store.journal_append("r", {}),
        lambda: store.journal_ack("r"),
        store.journal_unacked,
        lambda: store.journal_get("r"),
        lambda: store.incr("c"),
        lambda: store.counter("c"),
        store.counters,
        lambda: store.observe("h", 1),
        lambda: store.histogram("h"),
        store.ping,
        store.clear,
    ]
    for call in calls:
        with pytest.raises(StoreUnavailableError, match="closed"):
            call()


def test_context_manager_closes(make_store):
    with make_store() as store:
        store.ping()
    with pytest.raises(StoreUnavailableError, match="closed"):
        store.ping()


@pytest.mark.parametrize("namespace", ["", "a:b", "a*", "with space", None])
def test_bad_namespace_is_input_error(namespace, redis_url):
    with pytest.raises(InputError, match="namespace"):
        MemoryStore(namespace)
    with pytest.raises(InputError, match="namespace"):
        open_store(redis_url, namespace=namespace)


def test_open_store_picks_the_back_end(redis_url):
    assert isinstance(open_store(), MemoryStore)
    assert isinstance(open_store("memory://", namespace="x"), MemoryStore)
    assert open_store("memory://", namespace="x").namespace == "x"
    ns = f"test-{uuid.uuid4().hex}"
    with open_store(redis_url, namespace=ns) as store:
        assert isinstance(store, RedisStore)
        assert store.namespace == ns
        store.ping()
    # Two MemoryStores never share state.
    a, b = open_store(), open_store()
    a.incr("c")
    assert b.counters() == {}


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:6379", r"scheme 'http'.*allowed: memory://, redis://, rediss://"),
        ("redsi://127.0.0.1", r"did you mean 'redis'\?"),
        ("redis:/127.0.0.1", r"not of the form scheme://\.\.\. \(did you mean redis://"),
        ("", "allowed: memory://, redis://, rediss://"),
        ("memory://somewhere", "takes no address"),
        ("redis://", "has no host"),
        ("redis://127.0.0.1:notaport/0", "malformed"),
        ("redis://127.0.0.1:6379/zero", "database 'zero'"),
    ],
)
def test_bad_urls_are_input_errors(url, expected):
    with pytest.raises(InputError, match=expected):
        open_store(url)


def test_bad_url_messages_hide_the_password():
    for url in ["redis://:s3cret@127.0.0.1:notaport/0", "http://bob:s3cret@host", ":s3cret@host"]:
        with pytest.raises(InputError) as info:
            open_store(url)
        assert "s3cret" not in str(info.value)
        assert "***" in str(info.value)


@pytest.mark.parametrize("userinfo", [":s3cret@", "bob:s3cret@"])
def test_unreachable_redis_fails_fast_naming_url_without_password(userinfo, unused_port):
    port = unused_port
    url = f"redis://{userinfo}127.0.0.1:{port}/0"
    start = time.monotonic()
    with pytest.raises(StoreUnavailableError) as info:
        open_store(url)
    assert time.monotonic() - start < 3.0
    message = str(info.value)
    shown = f"redis://{userinfo.replace('s3cret', '***')}127.0.0.1:{port}/0"
    assert f"cannot reach Redis at {shown}" in message
    assert "s3cret" not in message
    assert "s3cret" not in repr(info.value.__cause__)


def test_redact_url():
    assert redact_url("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"
    assert redact_url("rediss://bob:pw@h/2") == "rediss://bob:***@h/2"
    assert redact_url("redis://bob@h") == "redis://bob@h"
    assert redact_url("redis://h:1/0") == "redis://h:1/0"
    assert redact_url("redis://u:p@ss@h") == "redis://u:***@h"
    assert redact_url(":pw@h:6379") == "***@h:6379"


def test_store_reports_a_lost_server_and_recovers_when_it_returns(throwaway_redis):
    """A throw-away redis-server: killed mid-session, calls raise StoreUnavailableError; started
    again on the same port, the same store object works without being reopened."""
    port = throwaway_redis.port
    store = open_store(throwaway_redis.url(":pw@"), namespace="lost")
    assert store.incr("c") == 1.0
    throwaway_redis.stop()
    with pytest.raises(StoreUnavailableError, match=rf"redis://:\*\*\*@127.0.0.1:{port}/0"):
        store.incr("c")
    with pytest.raises(StoreUnavailableError):
        store.ping()
    throwaway_redis.start()
    store.ping()
    assert store.incr("c") == 1.0  # a fresh server (no persistence): state starts over
    store.close()


def test_redis_footprint_of_a_completed_request_does_not_depend_on_its_prompt(redis_url):
    """Compaction: once completed, only the fingerprint and the result stay (the prompt goes)."""
    sizes = {}
    for label, prompt in (("short", "hi"), ("long", "\U0001F600 " * 16_384)):
        with open_store(redis_url, namespace=f"test-bytes-{uuid.uuid4().hex[:8]}") as s:
            s.journal_append("r", {"prompt": prompt}, fingerprint="f" * 64, owner="g")
            client = s._client
            keys = lambda: list(client.scan_iter(match=f"flotilla:{s.namespace}:*"))  # noqa: E731
            pending = sum(client.memory_usage(k) for k in keys())
            s.journal_complete("r", {"text": "ok"})
            sizes[label] = (pending, sum(client.memory_usage(k) for k in keys()))
            s.clear()
    assert sizes["long"][0] > sizes["short"][0] + 60_000  # the prompt is held while pending (UTF-8)
    assert sizes["long"][0] < 2 * 16_384 * 5  # stored as UTF-8, not \\u-escaped (12 bytes an emoji)
    assert sizes["long"][1] == sizes["short"][1] < 1024  # and dropped once completed


def test_more_threads_than_redis_connections_wait_for_one(redis_url, monkeypatch):
    """A Redis store shares a bounded pool: callers beyond its connections wait for a free one
    instead of failing (redis-py's plain pool raises on the 101st concurrent call)."""
    import cluster.state.redis_store as redis_store

    monkeypatch.setattr(redis_store, "MAX_CONNECTIONS", 3)
    store = open_store(redis_url, namespace=f"test-pool-{uuid.uuid4().hex[:8]}")
    try:
        def body(i: int) -> None:
            for _ in range(20):
                store.incr("hits")

        _run_together(48, body)
        assert store.counter("hits") == 48 * 20
        assert store._client.connection_pool.max_connections == 3
    finally:
        store.clear()
        store.close()
