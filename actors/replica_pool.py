"""The router's replica pool: the replicas, their slots, and who may wait for one. No Ray.

A :class:`ReplicaPool` holds the :class:`~actors.routing.Replica` entries a router dispatches to. A
request takes a slot (``active += 1``, never past ``capacity``) with :meth:`ReplicaPool.acquire`
(the caller's pick decides which replica, see :func:`actors.routing.choose_replica`) or
:meth:`ReplicaPool.acquire_replica` (one named replica), and gives it back with
:meth:`ReplicaPool.release`; a caller with no free slot waits until one is released, a replica is
added or replaced, its deadline passes (:class:`DeadlineExceededError`) or the pool closes
(:class:`RouterClosedError`).

Waiting callers queue first come, first served, and a freed slot is handed over directly: whoever
frees it runs the queued picks in order and wakes only the caller it gave the slot to. (Waking every
waiter on every release made each release cost as much as the queue was long, so an overloaded
router spent its CPU on wake-ups and served less the longer its queue grew.) A caller whose pick
takes none of the free slots stays queued without holding up the callers behind it.

A dead replica (:meth:`mark_dead`) and a draining one (:meth:`drain`) take no new work; a replaced
one (:meth:`replace`) serves again under a new handle, while requests already running on the old
handle keep their own reference to it. Every method is thread-safe.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from actors.routing import DeadlineExceededError, Replica, RouterClosedError
from cluster.exceptions import InputError

#: ``pick(replicas) -> replica to take | None (wait)``, called with the pool's lock held, in the
#: caller's thread or in the thread that frees a slot. It must be quick and must not block.
Pick = Callable[[list[Replica]], "Replica | None"]


class _Gone(Exception):
    """acquire_replica's replica died while its caller waited."""


class _Waiter:
    """A queued caller: its pick, and what it was handed (a slot or an error)."""

    __slots__ = ("error", "pick", "replica", "wake")

    def __init__(self, pick: Pick) -> None:
        self.pick = pick
        self.replica: Replica | None = None
        self.error: BaseException | None = None
        self.wake = threading.Lock()
        self.wake.acquire()  # released once, by whoever hands it a slot or an error


class ReplicaPool:
    """Replicas and their slots; see the module docstring."""

    #: Seconds a waiting caller sleeps before it runs its own pick again (a change nobody handed
    #: over, the pool closing, its deadline).
    poll_s = 1.0

    def __init__(self, replicas: list[Replica], *, stop: threading.Event | None = None) -> None:
        self._replicas = list(replicas)
        self._cond = threading.Condition()  # its lock guards everything; drain waits on it
        self._waiters: list[_Waiter] = []  # first come, first served
        #: Set when the pool closes (shared with the router, whose other parts stop on it too).
        self.stop = stop if stop is not None else threading.Event()

    @property
    def replicas(self) -> list[Replica]:
        """The replicas themselves, in pool order (the live list: read it, do not change it)."""
        return self._replicas

    def describe(self) -> list[dict[str, Any]]:
        """One dict per replica: ``device_id``, ``kind``, ``capacity``, ``active``, ``alive``."""
        with self._cond:
            return [{"device_id": r.device_id, "kind": r.kind, "capacity": r.capacity, "active": r.active,
                     "alive": r.alive} for r in self._replicas]

    def close(self) -> None:
        """Wake every waiter; they raise RouterClosedError."""
        self.stop.set()
        with self._cond:
            for w in self._waiters:
                w.wake.release()
            self._waiters.clear()
            self._cond.notify_all()

    # ------------------------------------------------------------------ slots
    def acquire(self, pick: Pick, deadline: float) -> Replica:
        """A slot on the replica ``pick`` names, waiting (up to ``deadline``, a monotonic time)
        while it names none. Errors ``pick`` raises (no live replica) pass through."""
        return self._acquire(pick, deadline, "every replica")

    def _acquire(self, pick: Pick, deadline: float, what: str) -> Replica:
        with self._cond:
            replica = pick(self._replicas)
            if replica is not None:
                replica.active += 1
                return replica
            waiter = _Waiter(pick)
            self._waiters.append(waiter)
        return self._await(waiter, deadline, what)

    def acquire_replica(self, replica: Replica, deadline: float) -> Replica | None:
        """A slot on ``replica``, waiting for one while it is alive; None once it is not."""

        def pick(_: list[Replica]) -> Replica | None:
            if not replica.alive:
                raise _Gone
            return replica if replica.active < replica.capacity else None

        try:
            return self._acquire(pick, deadline, f"replica {replica.device_id}")
        except _Gone:
            return None

    def _await(self, waiter: _Waiter, deadline: float, what: str) -> Replica:
        """Block until ``waiter`` is handed a slot; raise when closed, its pick fails or past
        ``deadline``. Every ``poll_s`` it runs its own pick again (a change nobody handed over)."""
        while True:
            remaining = deadline - time.monotonic()
            waiter.wake.acquire(timeout=min(max(remaining, 0.0), self.poll_s))
            with self._cond:
                if waiter.replica is not None:
                    return waiter.replica
                if waiter.error is not None:
                    raise waiter.error
                gone = waiter not in self._waiters  # closed meanwhile
                if not gone:
                    self._offer(waiter)
                    if waiter.replica is not None:
                        return waiter.replica
                    if waiter.error is not None:
                        raise waiter.error
                if self.stop.is_set() or gone:
                    self._drop(waiter)
                    raise RouterClosedError("the router is shutting down")
                if time.monotonic() >= deadline:
                    self._drop(waiter)
                    raise DeadlineExceededError(f"deadline passed while {what} was busy")

    def _drop(self, waiter: _Waiter) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)

    def _offer(self, waiter: _Waiter) -> None:
        """Run ``waiter``'s pick (lock held); on a slot or an error it leaves the queue, woken."""
        try:
            replica = waiter.pick(self._replicas)
        except Exception as exc:  # noqa: BLE001 - delivered to the waiting caller
            waiter.error = exc
        else:
            if replica is None:
                return
            replica.active += 1
            waiter.replica = replica
        self._waiters.remove(waiter)
        waiter.wake.release()

    def _hand_over(self, everyone: bool = False) -> None:
        """Give free slots to queued callers in arrival order (lock held). ``everyone``: run every
        waiter's pick (the replicas changed: a pick may now fail), not only while a slot is free."""
        for waiter in list(self._waiters):
            if not everyone and not any(r.alive and r.active < r.capacity for r in self._replicas):
                return
            self._offer(waiter)

    def release(self, replica: Replica) -> None:
        """Give back the slot an acquire took on ``replica``."""
        with self._cond:
            replica.active -= 1
            if self._waiters:
                if replica.alive and not any(r is replica for r in self._replicas):  # not pooled: its own waiters
                    for waiter in list(self._waiters):
                        if replica.active >= replica.capacity:
                            break
                        self._offer(waiter)
                self._hand_over()
            self._cond.notify_all()  # drain waits for active == 0

    # ------------------------------------------------------------------ membership
    def _get(self, device_id: str) -> Replica:
        for r in self._replicas:
            if r.device_id == device_id:
                return r
        raise InputError(f"device_id: {device_id!r:.80} is not one of this router's replicas")

    def handle(self, device_id: str) -> Any:
        """The actor handle of replica ``device_id``."""
        with self._cond:
            return self._get(device_id).handle

    def mark_dead(self, device_id: str) -> None:
        """Stop dispatching to replica ``device_id`` (its actor is gone)."""
        with self._cond:
            self.mark_replica_dead(self._get(device_id))

    def mark_replica_dead(self, replica: Replica) -> None:
        """Stop dispatching to ``replica`` (the entry a request ran on; after a :meth:`replace`
        it is no longer in the pool, and marking it changes nothing the pool dispatches to)."""
        with self._cond:
            replica.alive = False
            self._hand_over(everyone=True)
            self._cond.notify_all()

    def add(self, replica: Replica) -> None:
        """Dispatch to ``replica`` too from now on (a node joined the fleet)."""
        with self._cond:
            if any(r.device_id == replica.device_id for r in self._replicas):
                raise InputError(f"device_id: {replica.device_id!r:.80} is already one of this router's replicas")
            self._replicas.append(replica)
            self._hand_over(everyone=True)
            self._cond.notify_all()

    def drain(self, device_id: str, timeout_s: float | None = None) -> Any:
        """Take replica ``device_id`` out of service: no new request goes to it, the ones in flight
        finish (up to ``timeout_s``), then it leaves the pool. Returns its actor handle, for the
        caller to release. TimeoutError (the replica stays out of service) if they do not finish."""
        end = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            replica = self._get(device_id)
            replica.alive = False  # choose_replica takes live replicas only
            self._hand_over(everyone=True)
            while replica.active > 0:
                if end is not None and time.monotonic() >= end:
                    raise TimeoutError(f"replica {device_id}: {replica.active} requests still running")
                self._cond.wait(0.5 if end is None else max(0.0, min(0.5, end - time.monotonic())))
            self._replicas.remove(replica)
            return replica.handle

    def replace(self, device_id: str, handle: Any) -> None:
        """Dispatch to ``handle`` for replica ``device_id`` from now on (a replacement actor).
        Requests still running on the old handle keep their own reference to it."""
        with self._cond:
            old = self._get(device_id)
            self._replicas[self._replicas.index(old)] = Replica(old.device_id, old.kind, handle, old.capacity)
            self._hand_over(everyone=True)
            self._cond.notify_all()
