"""The router's replica pool: the replicas, their slots, and who may wait for one. No Ray.

A :class:`ReplicaPool` holds the :class:`~actors.routing.Replica` entries a router dispatches to and
one condition variable that every change signals. A request takes a slot (``active += 1``, never
past ``capacity``) with :meth:`ReplicaPool.acquire` (the caller's pick decides which replica, see
:func:`actors.routing.choose_replica`) or :meth:`ReplicaPool.acquire_replica` (one named replica),
and gives it back with :meth:`ReplicaPool.release`; a caller with no free slot waits until one is
released, a replica is added or replaced, its deadline passes (:class:`DeadlineExceededError`) or
the pool closes (:class:`RouterClosedError`).

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

#: ``pick(replicas) -> replica to take | None (wait)``, called with the pool's lock held.
Pick = Callable[[list[Replica]], "Replica | None"]


class ReplicaPool:
    """Replicas and their slots; see the module docstring."""

    def __init__(self, replicas: list[Replica], *, stop: threading.Event | None = None) -> None:
        self._replicas = list(replicas)
        self._cond = threading.Condition()
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
            self._cond.notify_all()

    # ------------------------------------------------------------------ slots
    def acquire(self, pick: Pick, deadline: float) -> Replica:
        """A slot on the replica ``pick`` names, waiting (up to ``deadline``, a monotonic time)
        while it names none. Errors ``pick`` raises (no live replica) pass through."""
        with self._cond:
            while True:
                replica = pick(self._replicas)
                if replica is not None:
                    replica.active += 1
                    return replica
                self._wait(deadline, "every replica")

    def acquire_replica(self, replica: Replica, deadline: float) -> Replica | None:
        """A slot on ``replica``, waiting for one while it is alive; None once it is not."""
        with self._cond:
            while replica.alive:
                if replica.active < replica.capacity:
                    replica.active += 1
                    return replica
                self._wait(deadline, f"replica {replica.device_id}")
            return None

    def _wait(self, deadline: float, what: str) -> None:
        """Wait for a change (lock held); raise when closed or past ``deadline``."""
        if self.stop.is_set():
            raise RouterClosedError("the router is shutting down")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceededError(f"deadline passed while {what} was busy")
        self._cond.wait(min(remaining, 1.0))

    def release(self, replica: Replica) -> None:
        """Give back the slot an acquire took on ``replica``."""
        with self._cond:
            replica.active -= 1
            self._cond.notify_all()

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
            self._cond.notify_all()

    def add(self, replica: Replica) -> None:
        """Dispatch to ``replica`` too from now on (a node joined the fleet)."""
        with self._cond:
            if any(r.device_id == replica.device_id for r in self._replicas):
                raise InputError(f"device_id: {replica.device_id!r:.80} is already one of this router's replicas")
            self._replicas.append(replica)
            self._cond.notify_all()

    def drain(self, device_id: str, timeout_s: float | None = None) -> Any:
        """Take replica ``device_id`` out of service: no new request goes to it, the ones in flight
        finish (up to ``timeout_s``), then it leaves the pool. Returns its actor handle, for the
        caller to release. TimeoutError (the replica stays out of service) if they do not finish."""
        end = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            replica = self._get(device_id)
            replica.alive = False  # choose_replica takes live replicas only
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
            self._cond.notify_all()
