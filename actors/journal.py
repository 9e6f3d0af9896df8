"""The router's journal: requests durable in the state store, this router's lease, replay, retries.

:meth:`RequestJournal.run` journals a request (``journal_append``) before it is dispatched, stores
its result (``journal_complete``) before the caller sees the end, and acknowledges the entry
(``journal_ack``) when the request ends any other way (bad input, deadline, the caller gone). A
request cut off by the router closing, or by a crash of this process, stays unacknowledged for the
next router to replay.

**Retries.** A request id is bound to its request by :func:`fingerprint`. A retry (same id, same
fingerprint) gets the stored answer, or waits for the run in progress here or on another router; a
different request under a used id gets :class:`~cluster.exceptions.RequestIdInUseError`.

**Lease and replay.** :meth:`RequestJournal.start` takes this router's lease on its entries and
renews it every third of ``lease_ttl_s``; every ``lease_ttl_s`` it claims the entries whose router
holds no lease any more and re-runs them (in append order, in a background thread), keeping their
results for retries.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from actors.routing import DeadlineExceededError, RouterClosedError
from cluster.exceptions import FlotillaError, RequestIdInUseError

log = logging.getLogger(__name__)

#: ``dispatch(request_id, request, deadline, whole)``: chunk dicts, returning the final dict.
Dispatch = Callable[[str, dict[str, Any], float, bool], Iterator[dict[str, Any]]]


def fingerprint(req: dict[str, Any], caller: str = "") -> str:
    """What binds a request id to its request: a hash of the prompt, the sampling parameters as
    the caller gave them (before a seed is drawn), how it is to run (``context_parallel``, experts
    ``routing`` and its budgets) and the caller's identity."""
    fields = {k: req.get(k) for k in ("prompt", "max_tokens", "temperature", "top_p", "stop", "seed", "chat")}
    if req.get("context_parallel") not in (None, "", "auto"):  # the default is left out of the hash
        fields["context_parallel"] = req["context_parallel"]
    for key in ("routing", "energy_budget_j", "latency_budget_ms"):  # experts routing and its budgets
        if req.get(key) not in (None, "", "plan"):
            fields[key] = req[key]
    blob = json.dumps([fields, caller], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class _Pending:
    """A request some thread is running; others asking for the same id (and fingerprint) wait on
    ``done``."""

    fingerprint: str
    done: threading.Event = field(default_factory=threading.Event)
    result: dict[str, Any] | None = None
    error: BaseException | None = None


def replayed(final: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The events a retry gets for a finished request: its whole text, then its final dict."""
    yield {"type": "chunk", "index": 0, "text": final["text"]}
    yield dict(final, type="done", replayed=True)


class RequestJournal:
    """Journaled runs, retries, the lease and replay of one router; see the module docstring."""

    def __init__(self, store: Any, dispatch: Dispatch, *, owner: str, stop: threading.Event, lease_ttl_s: float,
                 result_ttl_s: float, result_cache: int, default_deadline_s: float) -> None:
        self.store = store
        self.owner = owner
        self._dispatch = dispatch
        self._stop = stop
        self._lease_ttl_s = lease_ttl_s
        self._result_ttl_s = result_ttl_s
        self._result_cache = result_cache
        self._default_deadline_s = default_deadline_s
        self._lock = threading.Lock()
        self.pending: dict[str, _Pending] = {}
        self._results: collections.OrderedDict[str, tuple[str, dict[str, Any]]] = collections.OrderedDict()
        self._replay_threads: list[threading.Thread] = []
        self.lease_thread: threading.Thread | None = None
        #: Lease renewals that failed (the store unreachable); the loop keeps going.
        self.lease_failures = 0

    # ------------------------------------------------------------------ lease and replay
    def start(self, *, replay: bool = True) -> int:
        """Take the lease and (``replay``) replay orphaned entries now and every ``lease_ttl_s``;
        the number replayed now."""
        self.store.lease(self.owner, self._lease_ttl_s)
        n = self._claim_and_replay() if replay else 0
        self.lease_thread = threading.Thread(target=self._keep_lease, args=(replay,), name="flotilla-lease", daemon=True)
        self.lease_thread.start()
        return n

    def release_lease(self) -> None:
        """Drop the lease, so another router on the same store takes the pending entries at once."""
        try:
            self.store.release_lease(self.owner)
        except Exception:  # noqa: BLE001 - the lease expires by itself
            log.warning("router %s: could not release its lease", self.owner, exc_info=True)

    def _claim_and_replay(self) -> int:
        claimed = [(rid, payload) for rid, payload in self.store.journal_claim_orphans(self.owner)
                   if rid not in self.pending]
        entries = []
        with self._lock:
            for rid, payload in claimed:
                if rid in self.pending:
                    continue
                entry = self.store.journal_get(rid)
                if entry is None or entry["acked"]:
                    continue
                self.pending[rid] = _Pending(entry["fingerprint"])
                entries.append((rid, payload))
        if entries:
            t = threading.Thread(target=self._replay, args=(entries,), name="flotilla-replay", daemon=True)
            self._replay_threads.append(t)
            t.start()
        return len(entries)

    def _keep_lease(self, replay: bool) -> None:
        """Renew the lease every third of its TTL; claim orphans every TTL. A store error is
        counted and retried on the next tick (the thread never dies of it)."""
        period = self._lease_ttl_s / 3
        ticks = 0
        failing = False
        while not self._stop.wait(period) and not self.store.closed:
            ticks += 1
            try:
                self.store.lease(self.owner, self._lease_ttl_s)
                if replay and ticks % 3 == 0:
                    self._claim_and_replay()
                failing = False
            except Exception as exc:  # noqa: BLE001 - a store outage must not end the lease loop
                self.lease_failures += 1
                if not failing:  # once per outage
                    log.warning("router %s: lease renewal failed (%s); retrying every %.1f s", self.owner, exc, period)
                failing = True

    def wait_replayed(self, timeout: float | None = None) -> bool:
        """Wait for the replay threads started so far; True when all have finished."""
        end = None if timeout is None else time.monotonic() + timeout
        for t in list(self._replay_threads):
            t.join(None if end is None else max(0.0, end - time.monotonic()))
        return not any(t.is_alive() for t in self._replay_threads)

    def _replay(self, entries: list[tuple[str, dict[str, Any]]]) -> None:
        for rid, payload in entries:
            if self._stop.is_set():
                return
            try:
                for _ in self._run(rid, payload, self.pending[rid], time.monotonic() + self._default_deadline_s,
                                   journal=False):
                    pass
                self.store.incr("router.replayed")
            except Exception:  # noqa: BLE001 - recorded on the pending entry; the journal is acked
                try:
                    self.store.incr("router.replay_failed")
                except Exception:  # noqa: BLE001
                    pass

    # ------------------------------------------------------------------ retries
    def known_result(self, rid: str, fp: str, deadline: float) -> dict[str, Any] | None:
        """The result of a request this router finished or is running (waiting for it), for a
        retry with the same fingerprint; None when this router knows no such id.
        RequestIdInUseError when the id belongs to another request."""
        with self._lock:
            known = self._results.get(rid)
            pending = self.pending.get(rid)
        if pending is not None:
            known = (pending.fingerprint, self._wait_local(rid, pending, deadline))
        if known is None:
            return None
        if known[0] != fp:
            raise RequestIdInUseError(rid, same=False, result=None)
        return known[1]

    def _wait_local(self, rid: str, pending: _Pending, deadline: float) -> dict[str, Any]:
        if not pending.done.wait(max(0.0, deadline - time.monotonic())):
            raise DeadlineExceededError(f"request {rid}: deadline passed while its first run was still going")
        if pending.error is not None:
            raise pending.error
        assert pending.result is not None
        return pending.result

    def _remember(self, rid: str, fp: str, final: dict[str, Any]) -> None:
        if self._result_cache == 0:
            return
        with self._lock:
            self._results[rid] = (fp, final)
            while len(self._results) > self._result_cache:
                self._results.popitem(last=False)

    # ------------------------------------------------------------------ runs
    def run(self, rid: str, req: dict[str, Any], fp: str, deadline: float, *, whole: bool = False) -> Iterator[dict[str, Any]]:
        """Journal ``req`` and run it: its chunk dicts, then its final dict. ``whole``: dispatch it
        as one unary call (the caller wants only the end)."""
        return self._run(rid, req, _Pending(fp), deadline, journal=True, whole=whole)

    def _run(self, rid: str, req: dict[str, Any], pending: _Pending, deadline: float, *, journal: bool,
             whole: bool = False) -> Iterator[dict[str, Any]]:
        """Journal (when ``journal``), dispatch, store the result durably, then yield the end.

        Whatever happens, ``pending`` ends done and leaves ``pending``, and the journal entry is
        completed or acknowledged unless the router is closing (then it stays for the next). When
        the request ends well that is all done before the final dict is yielded, so a caller that
        keeps the generator open after it holds nothing."""
        if journal:
            with self._lock:
                other = self.pending.get(rid)
                if other is None:
                    self.pending[rid] = pending
            if other is not None:  # another caller here started the same id a moment ago
                if other.fingerprint != pending.fingerprint:
                    raise RequestIdInUseError(rid, same=False, result=None)
                yield from replayed(self._wait_local(rid, other, deadline))
                return
        ours = False  # True once this call owns a journal entry it must complete or acknowledge
        completed = False
        stored_elsewhere: dict[str, Any] | None = None
        try:
            if journal:
                what, got = self._append(rid, req, pending.fingerprint, deadline)
                if what == "stored":  # a retry of a request finished elsewhere
                    pending.result = stored_elsewhere = got
                else:
                    req = got  # ours to run: this request, or our own stranded entry as journaled
            if stored_elsewhere is None:
                ours = True
                final = yield from self._dispatch(rid, req, deadline, whole)
                # Durable before the caller sees the end: a finished request is never replayed,
                # and a retry (here, after a restart, or on another gateway) gets this result. One
                # count per stored completion, in the same atomic step; a second run of a
                # completed id is "twice".
                self.store.journal_complete(rid, final, ttl_s=self._result_ttl_s,
                                            count=("router.completed", "router.completed_twice"))
                completed = True
                pending.result = final
                self._remember(rid, pending.fingerprint, final)
        except BaseException as exc:  # noqa: BLE001 - re-raised; recorded for waiters
            if not completed:
                pending.error = exc if isinstance(exc, Exception) else FlotillaError(f"request {rid} was abandoned")
            raise
        finally:
            if ours and not completed and not self._stop.is_set():  # closing: leave it for replay
                try:
                    self.store.journal_ack(rid)
                except Exception:  # noqa: BLE001 - the entry stays pending and is replayed later
                    log.warning("request %s: could not acknowledge its journal entry", rid, exc_info=True)
            pending.done.set()
            with self._lock:
                if self.pending.get(rid) is pending:
                    del self.pending[rid]
        if stored_elsewhere is not None:
            yield from replayed(stored_elsewhere)
        else:
            yield pending.result

    def _append(self, rid: str, req: dict[str, Any], fp: str, deadline: float) -> tuple[str, dict[str, Any]]:
        """Journal the request. ``("run", request)`` when it is ours to run; ``("stored",
        result)`` for a retry of a finished request. A retry of a request that another router is
        running waits for its stored result; a request id in use by another request raises
        RequestIdInUseError.

        A pending entry owned by this router that nobody here is running (its first run could not
        store its result or acknowledge it while the store was down) is taken over at once and
        run again as journaled: the caller holds ``pending[rid]``, so no replay here runs it."""
        delay = 0.05
        while True:
            try:
                self.store.journal_append(rid, req, fingerprint=fp, owner=self.owner)
                return "run", req
            except RequestIdInUseError as exc:
                if not exc.same:
                    raise
                if exc.result is not None:
                    return "stored", exc.result
            entry = self.store.journal_get(rid)
            if entry is not None and entry["owner"] == self.owner and entry["payload"] is not None:
                self.store.incr("router.stranded_rerun")
                return "run", entry["payload"]
            # Pending on another router (or an orphan about to be claimed): wait for its result.
            if time.monotonic() + delay > deadline:
                raise DeadlineExceededError(f"request {rid}: deadline passed while another gateway was running it")
            self._stop.wait(delay)
            if self._stop.is_set():
                raise RouterClosedError(f"request {rid}: the router is shutting down")
            delay = min(delay * 2, 0.5)
