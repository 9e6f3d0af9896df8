"""The live autoscaling loop's parts: the load window in the store, the router's drain, and the
loop's decisions (hysteresis, minimum interval, caps) against the session's local Ray."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from cluster.exceptions import InputError
from cluster.load import SLOT_S, LoadRecorder, length_bin, read_window, record_request
from cluster.state import open_store


# ---------------------------------------------------------------------------------------------- load window


def test_length_bins_are_powers_of_two_upper_edges():
    assert [length_bin(n) for n in (0, 1, 2, 3, 4, 5, 1024, 1025)] == [0, 0, 1, 2, 2, 3, 10, 11]
    for n in range(1, 5000, 7):  # brute force: the bin's upper edge is the smallest power >= n
        assert 2 ** length_bin(n) == min(2 ** i for i in range(30) if 2 ** i >= n)


def test_window_counts_exactly_the_requests_of_its_slots():
    store = open_store(None)
    rng = np.random.default_rng(1)
    t0 = 1_000_000.0
    arrivals = np.sort(rng.uniform(t0, t0 + 100, 400))
    lens = rng.integers(1, 9000, (400, 2))
    for t, (p, o) in zip(arrivals, lens):
        record_request(store, int(p), int(o), now=float(t))
    record_request(store, 5, 5, now=t0 + 500)  # far outside every window below
    store.incr("router.completed")  # other counters are ignored
    for now, window in ((t0 + 50.0, 20.0), (t0 + 99.0, 30.0), (t0 + 37.5, 5.0)):
        rate, inp, out = read_window(store, window, now=now)
        last = int(now // SLOT_S)
        first = last - max(1, round(window / SLOT_S)) + 1
        sel = (arrivals // SLOT_S >= first) & (arrivals // SLOT_S <= last)
        assert inp.size == out.size == int(sel.sum())
        assert sorted(inp.tolist()) == sorted(2 ** length_bin(int(p)) for p in lens[sel, 0])
        assert sorted(out.tolist()) == sorted(2 ** length_bin(int(o)) for o in lens[sel, 1])
        span = (last - first) * SLOT_S + max(now - last * SLOT_S, 1e-3)  # at least 1 ms of the open slot
        assert rate == pytest.approx(sel.sum() / span)


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_window_buckets_expire_and_the_reading_is_unchanged(backend, redis_url):
    """Every slot's bucket carries a TTL; buckets older than the window leave the store while
    the window's reading stays what the requests inside it give."""
    import uuid

    from cluster.load import LOAD_TTL_S

    store = open_store(None if backend == "memory" else redis_url, namespace=f"test-{uuid.uuid4().hex}")
    try:
        now = time.time()
        old = f"load.{int((now - 400) // SLOT_S)}"
        record_request(store, 100, 20, now=now - 400, ttl_s=2.0)  # an old slot whose bucket expires
        assert old in store.windowed([old])
        for k in range(30):
            record_request(store, 100, 20, now=now - 29 + k, ttl_s=0.5 if k < 15 else LOAD_TTL_S)
        before = read_window(store, 10.0, now=now)
        if backend == "redis":
            ttls = [store._client.pttl(k) for k in store._client.scan_iter(match=store._k("window", "*"))]
            assert ttls and all(t > 0 for t in ttls)  # every bucket key carries its expiry
        deadline = time.monotonic() + 10  # polled: a loaded host may be slow to get here, never early
        while store.windowed([old]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert store.windowed([old]) == {}
        after = read_window(store, 10.0, now=now)
        assert after[0] == before[0] and after[1].tolist() == before[1].tolist() == [128] * after[1].size
        assert after[1].size == sum(1 for k in range(30) if now - 29 + k >= (int(now // SLOT_S) - 1) * SLOT_S)
    finally:
        store.clear()
        store.close()


def test_window_bad_input_names_the_field():
    store = open_store(None)
    with pytest.raises(InputError, match="input_tokens"):
        record_request(store, -1, 3)
    with pytest.raises(InputError, match="output_tokens"):
        record_request(store, 1, 2.5)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="window_s"):
        read_window(store, 0.0)
    with pytest.raises(InputError, match="window_s"):
        read_window(store, 7200.0)  # longer than the buckets live


def test_the_recorder_writes_the_same_window_as_one_increment_per_request(redis_url):
    """LoadRecorder (what the router uses) batches the increments; the window read back is the
    one record_request per request writes, also with threads recording at once."""
    import uuid

    rng = np.random.default_rng(7)
    t0 = 2_000_000.0
    arrivals = np.sort(rng.uniform(t0, t0 + 60, 800))
    lens = rng.integers(1, 5000, (800, 2))
    one = open_store(redis_url, namespace=f"test-load-{uuid.uuid4().hex[:8]}")
    batched = open_store(redis_url, namespace=f"test-load-{uuid.uuid4().hex[:8]}")
    try:
        for t, (p, o) in zip(arrivals, lens):
            record_request(one, int(p), int(o), now=float(t))
        rec = LoadRecorder(batched, flush_s=3600)
        parts = np.array_split(np.arange(800), 8)

        def body(idx: np.ndarray) -> None:
            for i in idx:
                rec.record(int(lens[i, 0]), int(lens[i, 1]), now=float(arrivals[i]))

        threads = [threading.Thread(target=body, args=(ix,)) for ix in parts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert read_window(batched, 60.0, now=t0 + 60)[0] == 0.0  # nothing written before a flush
        assert rec.flush() == 800 and rec.flush() == 0
        for window in (5.0, 30.0, 65.0):
            a, b = read_window(one, window, now=t0 + 60), read_window(batched, window, now=t0 + 60)
            assert a[0] == b[0] and sorted(zip(a[1], a[2])) == sorted(zip(b[1], b[2]))
    finally:
        for s in (one, batched):
            s.clear()
            s.close()


def test_the_recorder_flushes_by_itself_and_a_store_error_costs_only_samples(throwaway_redis):
    store = open_store(throwaway_redis.url(), namespace="load-rec")
    rec = LoadRecorder(store, flush_s=0.05).start()
    rec.record(100, 20)
    deadline = time.monotonic() + 10
    while read_window(store, 10.0)[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert read_window(store, 10.0)[1].size == 1  # written by the thread, no flush called
    throwaway_redis.stop()
    rec.record(100, 20)
    rec.record(3, 4)
    deadline = time.monotonic() + 10  # flushes fail meanwhile: the samples are lost, nothing raises
    while rec.lost < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert rec.lost == 2
    throwaway_redis.start()  # empty again (no persistence)
    rec.record(100, 20)
    rec.close()  # the last samples are written on close
    assert read_window(store, 10.0)[1].size == 1 and rec.lost == 2
    with pytest.raises(InputError, match="flush_s"):
        LoadRecorder(store, flush_s=0)
    store.close()


# ---------------------------------------------------------------------------------------------- router drain


def _echo_router(ray_session, n: int, delay_s: float, store):
    from actors.expert import ExpertConfig, spawn_expert
    from actors.router import Router, RouterConfig
    from actors.routing import Replica

    cfg = ExpertConfig(model="echo", max_concurrency=2, echo_delay_s=delay_s)
    reps = [Replica(f"d{i}", "rtx4090", spawn_expert(None, "rtx4090", f"d{i}", cfg), 2) for i in range(n)]
    router = Router(store, reps, RouterConfig(max_queue=128, plan_refresh_s=0.1))
    router.start(replay=False)
    return router, reps


def test_drain_finishes_in_flight_requests_and_loses_or_duplicates_none(ray_session):
    store = open_store(None)
    router, reps = _echo_router(ray_session, 2, 0.02, store)
    results: dict[str, dict] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        prompt = " ".join(f"r{i}w{j}" for j in range(10))
        try:
            final = router.generate({"prompt": prompt, "max_tokens": 16, "request_id": f"q{i}"})
            with lock:
                assert final["request_id"] not in results
                results[final["request_id"]] = {"text": final["text"], "device": final["device_id"],
                                                "want": prompt}
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    time.sleep(0.15)  # both replicas busy
    assert router.replicas()[0]["active"] > 0
    t_drain = time.monotonic()
    handle = router.drain("d0", timeout_s=30)
    t_drained = time.monotonic()
    assert handle is reps[0].handle
    import ray

    # its requests in flight had finished (the actor's own count settles just after its last item)
    for _ in range(50):
        info = ray.get(handle.info.remote())
        if info["active"] == 0:
            break
        time.sleep(0.02)
    assert info["active"] == 0 and info["served"] > 0
    assert [r["device_id"] for r in router.replicas()] == ["d1"]
    late = [threading.Thread(target=one, args=(i,)) for i in range(16, 24)]
    for t in late:
        t.start()
    for t in threads + late:
        t.join(60)
    assert errors == []
    assert sorted(results) == sorted(f"q{i}" for i in range(24))
    assert all(r["text"] == r["want"] for r in results.values())
    assert store.counter("router.completed") == 24
    assert store.journal_unacked() == []
    # each request on d0 ran there once (none was sent there again), none after the drain
    assert info["served"] == sum(r["device"] == "d0" for r in results.values())
    assert ray.get(handle.info.remote())["served"] == info["served"]
    assert t_drained > t_drain
    assert all(results[f"q{i}"]["device"] == "d1" for i in range(16, 24))
    ray.kill(handle)
    with pytest.raises(InputError, match="device_id"):
        router.drain("d0")
    router.close()
    ray.kill(reps[1].handle)


def test_drain_times_out_naming_the_replica(ray_session):
    store = open_store(None)
    router, reps = _echo_router(ray_session, 1, 0.2, store)
    t = threading.Thread(target=router.generate, args=({"prompt": "a b c d e f", "max_tokens": 6},))
    t.start()
    time.sleep(0.3)
    with pytest.raises(TimeoutError, match="d0"):
        router.drain("d0", timeout_s=0.1)
    t.join(30)
    router.close()
    import ray

    ray.kill(reps[0].handle)


# ---------------------------------------------------------------------------------------------- decisions


def _loop(store, router=None, **kw):
    from cluster.shell.autoscale_loop import AutoscaleLoop, LoopConfig

    args = dict(policy="cost", model="llama-3-8b", kinds=("l4", "a10g", "a100-80g-sxm"), tpot_slo_ms=50.0,
                interval_s=10.0, window_s=10.0, down_after=2)
    args.update(kw)
    return AutoscaleLoop(store, LoopConfig(**args), router=router)


def _load(store, now: float, n: int, long_every: int = 0) -> None:
    for k in range(n):
        long = long_every and k % long_every == 0
        record_request(store, 2000 if long else 50, 512 if long else 32, now=now - 9.0 + 8.0 * k / n)


def test_loop_proposes_what_the_simulator_policy_proposes(ray_session):
    from cluster.models import get_model
    from cluster.sim.autoscale import AutoscaleConfig, make_policy

    store = open_store(None)
    loop = _loop(store)
    now = 10_000.0 - 0.001
    _load(store, now, 40, long_every=4)
    rate, prop, routing = loop.propose(now)
    ref = make_policy("cost", get_model("llama-3-8b"), ["l4", "a10g", "a100-80g-sxm"], tpot_slo_s=0.05,
                      cfg=AutoscaleConfig(window_s=10.0))
    got_rate, inp, out = read_window(store, 10.0, now=now)
    assert prop == ref.propose(got_rate, inp, out)[0] == {"a100-80g-sxm": 2}
    assert rate == got_rate
    assert routing is not None and routing["buckets"]


def test_hysteresis_interval_and_caps(ray_session):
    store = open_store(None)
    loop = _loop(store, max_count={"a100-80g-sxm": 1, "a10g": 1})
    t = 20_000.0 - 0.001
    rec = loop.step(t)  # an empty window: one device of the cheapest kind
    assert rec["action"] == "start" and rec["fleet"] == {"l4": 1}
    assert store.get_plan()[1]["allocation"] == {"l4": 1}
    assert loop.step(t + 5) is None  # within the minimum interval
    t += 10
    _load(store, t, 20)
    rec = loop.step(t)
    assert rec["action"] == "scale up" and rec["fleet"] == {"a10g": 1}
    t += 10
    _load(store, t, 20, long_every=4)  # 2 req/s, a quarter long: 1 x a100
    rec = loop.step(t)
    assert rec["proposed"] == {"a100-80g-sxm": 1} and rec["action"] == "scale up"
    version, plan = store.get_plan()
    assert plan["allocation"] == {"a100-80g-sxm": 1} and plan["bundles"] == [{"device:a100-80g-sxm": 1}]
    routing = store.get_plan(name="routing")[1]
    assert routing["source"] == f"autoscale:cost v{version}"
    t += 10
    _load(store, t, 80, long_every=2)  # no fleet within the caps: all the caps allow
    rec = loop.step(t)
    assert rec["proposed"] == {"a100-80g-sxm": 1, "a10g": 1} and rec["action"] == "scale up"
    assert store.counter("autoscale.infeasible") == 1
    t += 10
    _load(store, t, 20)  # lighter: not at once
    rec = loop.step(t)
    assert rec["action"] == "keep" and rec["fleet"] == {"a100-80g-sxm": 1, "a10g": 1}
    t += 10
    _load(store, t, 20)  # the second lighter proposal in a row: scale down
    rec = loop.step(t)
    assert rec["action"] == "scale down" and rec["fleet"] == {"a10g": 1}
    assert store.get_plan()[1]["allocation"] == {"a10g": 1}
    assert [d["action"] for d in loop.decisions] == ["start", "scale up", "scale up", "scale up", "keep",
                                                     "scale down"]
    assert store.counter("autoscale.scale_up") == 3


def test_loop_config_bad_input_names_the_field():
    from cluster.shell.autoscale_loop import LoopConfig

    with pytest.raises(InputError, match="policy"):
        LoopConfig(policy="best-single-kind")
    with pytest.raises(InputError, match="kinds"):
        LoopConfig(kinds=())
    with pytest.raises(InputError, match="tpot_slo_ms"):
        LoopConfig(tpot_slo_ms=0)
    with pytest.raises(InputError, match="max_count"):
        _loop(open_store(None), max_count={"t4": 1})


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_live_loop_one_decision(ray_session, capsys):
    from cluster.shell.cli import main as cli

    # a store of its own (memory://): no router recorded anything, so the fleet is the floor
    rc = cli.main(["autoscale", "--address", "auto", "--store-url", "memory://", "--policy", "cost",
                   "--devices", "l4,a10g,a100-80g-sxm", "--iterations", "1", "--window-s", "10", "--json"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    doc = json.loads(cap.out)
    assert [(d["action"], d["rate"]) for d in doc["decisions"]] == [("start", 0.0)]
    assert doc["fleet"] == {"l4": 1}


def test_cli_live_loop_bad_input_exits_2(capsys):
    from cluster.shell.cli import main as cli

    for args, word in ((["--policy", "best-single-kind"], "--policy"), (["--iterations", "-1"], "--iterations"),
                       (["--max-count", "t4=1"], "--max-count")):
        rc = cli.main(["autoscale", "--address", "auto", "--store-url", "memory://", *args])
        cap = capsys.readouterr()
        assert rc == 2 and cap.out == "", cap
        assert len(cap.err.strip().splitlines()) == 1 and word in cap.err, cap.err
    rc = cli.main(["autoscale"])
    cap = capsys.readouterr()
    assert rc == 2 and "--address" in cap.err and "--dry-run" in cap.err


def test_docs_policy_table_is_the_committed_result():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    doc = json.loads((root / "bench" / "results" / "autoscale_dry_run.json").read_text())
    text = (root / "docs" / "autoscaling.md").read_text()
    assert doc["modeled"] is True and "bench/results/autoscale_dry_run.json" in text
    for name, p in doc["policies"].items():
        row = next(line for line in text.splitlines() if line.startswith(f"| {name} "))
        assert f"| {100 * p['slo_attainment']:.1f} % | {p['p99_tpot_ms']:.1f} | ${p['cost_usd']:.2f} | " \
               f"{p['peak_replicas']} | {p['changes']} |" in row, row


def test_status_counters_leave_out_the_load_window():
    from cluster.load import public_counters

    store = open_store(None)
    store.incr("router.completed")
    record_request(store, 10, 10)
    store.incr("load.1.2.3")  # a counter an older router wrote
    assert public_counters(store.counters()) == {"router.completed": 1.0}
    assert store.counters() == {"router.completed": 1.0, "load.1.2.3": 1.0}  # the window is not in counters


def test_sync_fleet_starts_replicas_on_free_devices_and_drains_the_surplus(ray_session):
    from actors.router import Router

    ray = ray_session
    store = open_store(None)
    router = Router(store, [])
    router.start(replay=False)
    loop = _loop(store, router, policy="target-ongoing", kinds=("a100-80g-sxm",))
    before = ray.available_resources().get("device:a100-80g-sxm", 0)
    assert before == 1  # the session's Ray has one A100 unit
    loop.target = {"a100-80g-sxm": 2}  # more than there is: only what is free is started
    assert loop.sync_fleet() == ["a100-80g-sxm-as1"]
    assert loop.sync_fleet() == []
    assert [(r["device_id"], r["alive"]) for r in router.replicas()] == [("a100-80g-sxm-as1", True)]
    final = router.generate({"prompt": "one two three", "max_tokens": 8})
    assert final["text"] == "one two three" and final["device_id"] == "a100-80g-sxm-as1"
    loop.target = {}  # every kind has its target: the surplus is drained and released
    loop.sync_fleet()
    assert router.replicas() == []
    assert store.counter("autoscale.started") == store.counter("autoscale.released") == 1
    deadline = time.monotonic() + 20
    while ray.available_resources().get("device:a100-80g-sxm", 0) < before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("device:a100-80g-sxm", 0) == before
    router.close()
