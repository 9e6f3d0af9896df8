"""The router's replica pool without Ray: slots bounded by capacity, drained and dead replicas
take no new work, a replacement serves again, waiters wake on release, deadline and close; a freed
slot goes to the first waiter that takes it, and only that waiter is woken."""

from __future__ import annotations

import threading
import time

import pytest

from actors.replica_pool import ReplicaPool
from actors.routing import (
    DeadlineExceededError,
    NoReplicaError,
    Replica,
    RouterClosedError,
    WeightedTurns,
    choose_replica,
)
from cluster.exceptions import InputError

BUCKET = {"kinds": ["a", "b"]}


def _pool(*specs: tuple[str, str, int]) -> ReplicaPool:
    return ReplicaPool([Replica(d, k, f"handle-{d}", capacity=c) for d, k, c in specs])


def _plan_pick(bucket=BUCKET):
    turns, turn = WeightedTurns(), iter(range(10**6))
    return lambda replicas: choose_replica(replicas, bucket, (0, 0), turns, next(turn)).replica


def _soon() -> float:
    return time.monotonic() + 0.2


def test_slots_never_exceed_capacity_and_a_full_pool_times_out():
    pool = _pool(("a-0", "a", 2), ("b-0", "b", 1))
    got = [pool.acquire(_plan_pick(), _soon()).device_id for _ in range(3)]
    assert sorted(got) == ["a-0", "a-0", "b-0"]
    assert {r["device_id"]: r["active"] for r in pool.describe()} == {"a-0": 2, "b-0": 1}
    with pytest.raises(DeadlineExceededError, match="every replica was busy"):
        pool.acquire(_plan_pick(), _soon())
    assert all(r["active"] <= r["capacity"] for r in pool.describe())


def test_a_release_wakes_a_waiter():
    pool = _pool(("a-0", "a", 1))
    first = pool.acquire(_plan_pick(), _soon())
    got: list[Replica] = []
    waiter = threading.Thread(target=lambda: got.append(pool.acquire(_plan_pick(), time.monotonic() + 10)))
    waiter.start()
    time.sleep(0.1)
    assert not got  # still waiting: the only slot is taken
    pool.release(first)
    waiter.join(5)
    assert got == [first] and first.active == 1


def test_a_drained_replica_takes_no_new_work_and_leaves_when_idle():
    pool = _pool(("a-0", "a", 2), ("a-1", "a", 2))
    running = pool.acquire(_plan_pick(), _soon())
    drained: list[object] = []
    t = threading.Thread(target=lambda: drained.append(pool.drain(running.device_id, timeout_s=10)))
    t.start()
    time.sleep(0.1)
    assert not drained  # its request is still running
    other = [r["device_id"] for r in pool.describe() if r["device_id"] != running.device_id][0]
    for _ in range(2):  # every new request goes to the other replica
        assert pool.acquire(_plan_pick(), _soon()).device_id == other
    pool.release(running)
    t.join(5)
    assert drained == [f"handle-{running.device_id}"]
    assert [r["device_id"] for r in pool.describe()] == [other]


def test_drain_times_out_while_work_runs_and_keeps_the_replica_out_of_service():
    pool = _pool(("a-0", "a", 1), ("a-1", "a", 1))
    busy = pool.acquire(_plan_pick(), _soon())
    with pytest.raises(TimeoutError, match="1 requests still running"):
        pool.drain(busy.device_id, timeout_s=0.1)
    assert [r["alive"] for r in pool.describe() if r["device_id"] == busy.device_id] == [False]


def test_a_dead_replica_is_skipped_and_replace_restores_it():
    pool = _pool(("a-0", "a", 1), ("a-1", "a", 1))
    pool.mark_dead("a-0")
    assert pool.acquire(_plan_pick(), _soon()).device_id == "a-1"
    with pytest.raises(DeadlineExceededError):  # a-1 is full and a-0 is dead
        pool.acquire(_plan_pick(), _soon())
    pool.replace("a-0", "new-handle")
    again = pool.acquire(_plan_pick(), _soon())
    assert (again.device_id, again.handle, again.alive) == ("a-0", "new-handle", True)
    assert pool.handle("a-0") == "new-handle"


def test_no_live_replica_is_an_error_not_a_wait():
    pool = _pool(("a-0", "a", 1))
    pool.mark_dead("a-0")
    with pytest.raises(NoReplicaError, match="no live replica"):
        pool.acquire(_plan_pick(), time.monotonic() + 10)


def test_a_named_replica_is_waited_for_while_alive_and_given_up_once_dead():
    pool = _pool(("a-0", "a", 1))
    special = pool.replicas[0]
    assert pool.acquire_replica(special, _soon()) is special
    with pytest.raises(DeadlineExceededError, match="replica a-0 was busy"):
        pool.acquire_replica(special, _soon())
    pool.mark_replica_dead(special)
    assert pool.acquire_replica(special, time.monotonic() + 10) is None


def test_close_wakes_waiters_with_router_closed():
    pool = _pool(("a-0", "a", 1))
    pool.acquire(_plan_pick(), _soon())
    errors: list[BaseException] = []

    def wait():
        try:
            pool.acquire(_plan_pick(), time.monotonic() + 30)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    t = threading.Thread(target=wait)
    t.start()
    time.sleep(0.1)
    pool.close()
    t.join(5)
    assert len(errors) == 1 and isinstance(errors[0], RouterClosedError)


def test_membership_errors_name_the_device():
    pool = _pool(("a-0", "a", 1))
    with pytest.raises(InputError, match="device_id: 'x-9' is not one of"):
        pool.mark_dead("x-9")
    with pytest.raises(InputError, match="already one of"):
        pool.add(Replica("a-0", "a", None))
    pool.add(Replica("b-0", "b", "hb"))
    assert pool.acquire(_plan_pick({"kinds": ["b"]}), _soon()).device_id == "b-0"


def _queue_waiters(pool: ReplicaPool, picks: list, deadline_s: float = 30.0) -> tuple[list, list[threading.Thread]]:
    """Start one thread per pick, each queued (waiting) before the next starts; returns the
    list the threads append ``(index, device_id)`` to as they get their slots."""
    got: list = []
    threads = []
    for i, pick in enumerate(picks):
        t = threading.Thread(target=lambda i=i, pick=pick: got.append((i, pool.acquire(pick, time.monotonic() + deadline_s).device_id)))
        t.start()
        threads.append(t)
        end = time.monotonic() + 10
        while len(pool._waiters) < i + 1 and time.monotonic() < end:
            time.sleep(0.001)
        assert len(pool._waiters) == i + 1
    return got, threads


def test_freed_slots_go_to_waiters_first_come_first_served_waking_only_one():
    pool = _pool(("a-0", "a", 1))
    pool.poll_s = 60.0  # no waiter re-runs its pick by itself during the test: only hand-overs count
    held = pool.acquire(_plan_pick(), _soon())
    calls = [0]
    base = _plan_pick()

    def counting(replicas):
        calls[0] += 1
        return base(replicas)

    got, threads = _queue_waiters(pool, [counting] * 8)
    for n in range(8):
        before = calls[0]
        pool.release(held)
        end = time.monotonic() + 10
        while len(got) < n + 1 and time.monotonic() < end:
            time.sleep(0.001)
        # one pick ran for this release (the first waiter's), not one per waiting caller
        assert calls[0] - before == 1
    for t in threads:
        t.join(10)
    assert [i for i, _ in got] == list(range(8))


def test_a_waiter_whose_pick_declines_does_not_hold_up_the_ones_behind_it():
    pool = _pool(("a-0", "a", 1), ("b-0", "b", 1))
    a = pool.acquire(_plan_pick({"kinds": ["a"]}), _soon())
    b = pool.acquire(_plan_pick({"kinds": ["b"]}), _soon())
    only_b = _plan_pick({"kinds": ["b"], "weights": None})

    def strictly_b(replicas):
        r = only_b(replicas)
        return r if r is not None and r.kind == "b" else None

    got, threads = _queue_waiters(pool, [strictly_b, _plan_pick()])
    pool.release(a)  # the first waiter wants b only: the second takes a-0
    for t in threads[1:]:
        t.join(10)
    assert got == [(1, "a-0")] and len(pool._waiters) == 1
    pool.release(b)
    threads[0].join(10)
    assert got == [(1, "a-0"), (0, "b-0")] and pool._waiters == []
