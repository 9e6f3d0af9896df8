"""Router: journal, pick a replica from the plan, stream, re-dispatch on actor death, acknowledge.

The router lives in the gateway's process (the gateway calls it from its RPC threads); its state
that must survive the process is the journal in the state store.

Life of a request (:meth:`Router.stream`):

1. **Validate and normalise**: a ``request_id`` is given one (uuid4) if it has none; an unseeded
   sampling request is given a seed, so any replay or re-dispatch draws the same tokens.
2. **Admit**: at most ``max_queue`` requests are admitted at once (running or waiting for a
   replica); past that :class:`QueueFullError` (gRPC RESOURCE_EXHAUSTED), so memory stays bounded.
3. **Journal** the normalised request in the state store (``journal_append``) before dispatch.
4. **Pick a replica**: the request's estimated input ``p = ceil(len(prompt) / 4)`` and output
   ``o = max_tokens`` tokens pick the first plan bucket whose bounds hold (``p + o <= max_tokens``,
   ``p <= max_input_tokens``, ``o <= max_output_tokens``; an absent bound holds always). The
   bucket lists device kinds. Without ``weights`` the least loaded (``active / capacity``, ties
   round-robin) live replica of those kinds with a free slot is taken. With ``weights`` (a plan
   derived from an allocation plan, :mod:`solvers.routing`) the kind comes first: smooth weighted
   round robin over the bucket's kinds that have a free live replica (kind k gets the share
   ``weights[k]`` of the bucket's requests while all have room), then the least-loaded replica of
   that kind. With no live replica of the planned kinds any live replica serves (counted as
   ``router.plan_fallback``). When every replica is busy the request waits (bounded by its deadline).
   Before the plan, the optional ``dispatch_hook(request)`` may name a replica outside the plan
   (the serving composition's :class:`actors.cp_adapter.ContextParallelRoute` sends long prompts
   to the context-parallel adapter); the request waits for its free slot, and once that replica
   is dead the plan serves it (a hook error other than bad input is counted as
   ``router.hook_failed`` and the plan serves it too).
5. **Stream** the replica's chunks. If the replica dies (a Ray actor death) the replica is dropped
   from the pool and the request is re-dispatched to another one, at most ``max_attempts`` times;
   since the request is greedy or seeded, the new replica produces the same text and the text the
   client already received is skipped, so the client sees every character exactly once.
6. **Acknowledge** the journal entry when the request ends: completed, rejected as bad input, or
   past its deadline (:class:`DeadlineExceededError`, gRPC DEADLINE_EXCEEDED). A client that goes
   away also ends it. A request cut off by :meth:`Router.close` (the gateway stopping) or by a
   crash of this process stays unacknowledged, for the next router to replay.

**Replay**: :meth:`Router.start` re-runs every unacknowledged journal entry (in append order, in a
background thread), acknowledges it, and keeps its result, so a client retrying with the same
``request_id`` gets the answer (:meth:`Router.stream` with a known id waits for it).

**Plan**: the plan named ``routing`` in the state store, when present, is
``{"buckets": [{"max_tokens": 256, "kinds": ["jetson-agx-orin-64"]}, {"kinds": ["rtx4090", ...]}]}``
(optional per bucket: ``max_input_tokens``, ``max_output_tokens``, ``weights`` {kind: share > 0});
until one is stored, one bucket with every kind (round-robin over all replicas). It is re-read from
the store every ``plan_refresh_s``, so a plan applied through the gateway's ``Plan`` RPC (or by
anyone writing the store) takes effect on the next refresh.
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import random
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from actors.routing import (
    NoReplicaError,
    Replica,
    WeightedTurns,
    bucket_index,
    choose_replica,
    default_plan,
    validate_plan,
)
from cluster.exceptions import CapacityError, FlotillaError, InputError, RequestIdInUseError

log = logging.getLogger(__name__)

PLAN_NAME = "routing"
#: Default ``RouterConfig.unary_max_tokens``: a completion of at most one token is one chunk
#: whether streamed or not, so the unary call changes nothing the client sees but the latency.
#: Larger values trade streaming (time to first token) for latency; opt in per deployment.
UNARY_MAX_TOKENS = 1


class QueueFullError(CapacityError):
    """The router already holds ``max_queue`` requests (gRPC RESOURCE_EXHAUSTED)."""


class DeadlineExceededError(FlotillaError):
    """A request ran past its deadline (gRPC DEADLINE_EXCEEDED)."""


class RouterClosedError(NoReplicaError):
    """The router is shutting down; the request stays journaled for the next one to replay."""


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """Router limits. Errors name the field."""

    #: Requests admitted at once (running + waiting for a free replica).
    max_queue: int = 64
    #: Dispatches per request (the first one plus re-dispatches after replica deaths).
    max_attempts: int = 3
    #: Deadline of a request that brings none, seconds.
    default_deadline_s: float = 300.0
    #: Seconds between reads of the routing plan from the store.
    plan_refresh_s: float = 5.0
    #: Completed results kept for retries by ``request_id``.
    result_cache: int = 1024
    #: Requests with ``max_tokens`` at most this are run with one unary actor call (one Ray round
    #: trip instead of a streaming generator's one per item; measured 1.4-1.7 ms less per request
    #: with the echo model, docs/serving.md "Benchmarks"). The client still gets the text as a
    #: chunk (all of it, in one, when it is done) and then the final message; 0: always stream.
    unary_max_tokens: int = UNARY_MAX_TOKENS
    #: Seconds a completed request's result stays in the store for retries by ``request_id``.
    result_ttl_s: float = 86_400.0
    #: Seconds this router's lease on its journal entries lasts without renewal; a router that
    #: stops renewing (killed) has its pending requests taken over by another router on the same
    #: store after this long. Renewed every third of it.
    lease_ttl_s: float = 10.0
    #: This router's name in the journal (its entries' owner); a fresh one when empty.
    router_id: str = ""

    def __post_init__(self) -> None:
        for name, lo, hi in (("max_queue", 1, 1_000_000), ("max_attempts", 1, 100), ("result_cache", 0, 1_000_000),
                             ("unary_max_tokens", 0, 1_000_000)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise InputError(f"{name}: {v!r}; allowed: an integer {lo}..{hi}")
        if not isinstance(self.router_id, str) or len(self.router_id) > 64 or not self.router_id.isprintable():
            raise InputError(f"router_id: {self.router_id!r:.80}; allowed: up to 64 printable characters")
        for name in ("default_deadline_s", "plan_refresh_s", "result_ttl_s", "lease_ttl_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
                raise InputError(f"{name}: {v!r}; allowed: a number of seconds > 0")


@dataclass
class _Pending:
    """A request some thread is running; others asking for the same id (and fingerprint) wait on
    ``done``."""

    fingerprint: str
    done: threading.Event = field(default_factory=threading.Event)
    result: dict[str, Any] | None = None
    error: BaseException | None = None


def _is_actor_death(exc: BaseException) -> bool:
    """Errors after which the replica's process is gone: it is marked dead and the request is
    re-dispatched. A replica killed by Ray's memory monitor raises ``OutOfMemoryError``, one whose
    worker or node died ``WorkerCrashedError`` or ``NodeDiedError``."""
    from ray.exceptions import ActorUnavailableError, NodeDiedError, OutOfMemoryError, RayActorError, WorkerCrashedError

    if isinstance(exc, ActorUnavailableError):
        return False
    return isinstance(exc, (RayActorError, OutOfMemoryError, WorkerCrashedError, NodeDiedError))


def _is_transient(exc: BaseException) -> bool:
    """An actor that is unreachable for now (restarting, network): re-dispatch, keep it alive."""
    from ray.exceptions import ActorUnavailableError

    return isinstance(exc, ActorUnavailableError)


def _load_counter(req: dict[str, Any]) -> str:
    """The store's load-window counter of the request (what autoscaling re-plans from),
    incremented with its journal entry in one round trip."""
    from cluster.load import load_counter

    return load_counter(math.ceil(len(req["prompt"]) / 4), req["max_tokens"])


def fingerprint(req: dict[str, Any], caller: str = "") -> str:
    """What binds a request id to its request: a hash of the prompt, the sampling parameters as
    the caller gave them (before a seed is drawn), how it is to run (``context_parallel``) and
    the caller's identity."""
    import hashlib
    import json

    fields = {k: req.get(k) for k in ("prompt", "max_tokens", "temperature", "top_p", "stop", "seed", "chat")}
    if req.get("context_parallel") not in (None, "", "auto"):  # the default is left out of the hash
        fields["context_parallel"] = req["context_parallel"]
    blob = json.dumps([fields, caller], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


class Router:
    """Dispatches requests to replicas; see the module docstring."""

    def __init__(self, store: Any, replicas: list[Replica], config: RouterConfig | None = None, *,
                 dispatch_hook: Any = None) -> None:
        self.store = store
        #: ``hook(request) -> Replica | None``: a replica outside the plan for this request (a
        #: long prompt to :mod:`actors.cp_adapter`), or None for the plan's choice.
        self._hook = dispatch_hook
        self.config = config or RouterConfig()
        self.owner = self.config.router_id or f"router-{uuid.uuid4().hex[:12]}"
        self._replicas = list(replicas)
        self._cond = threading.Condition()
        self._admitted = 0
        self._rr = itertools.count()
        self._pending: dict[str, _Pending] = {}
        self._results: collections.OrderedDict[str, tuple[str, dict[str, Any]]] = collections.OrderedDict()
        self._plan: dict[str, Any] = default_plan([r.kind for r in replicas])
        self._plan_version: int | None = None
        self._plan_read = 0.0
        self._turns = WeightedTurns()
        self._replay_threads: list[threading.Thread] = []
        self._lease_thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._closed = False
        #: Lease renewals that failed (the store unreachable); the loop keeps going.
        self.lease_failures = 0

    # ------------------------------------------------------------------ lifecycle
    def start(self, *, replay: bool = True) -> int:
        """Begin serving: take this router's lease, and (``replay``) take over and re-run, in the
        background, every pending journal entry whose router holds no lease any more; keep doing
        so every ``lease_ttl_s``. Returns how many entries are replayed now."""
        self.store.lease(self.owner, self.config.lease_ttl_s)
        n = self._claim_and_replay() if replay else 0
        self._lease_thread = threading.Thread(target=self._keep_lease, args=(replay,), name="flotilla-lease", daemon=True)
        self._lease_thread.start()
        return n

    def _claim_and_replay(self) -> int:
        claimed = [(rid, payload) for rid, payload in self.store.journal_claim_orphans(self.owner)
                   if rid not in self._pending]
        entries = []
        with self._cond:
            for rid, payload in claimed:
                if rid in self._pending:
                    continue
                entry = self.store.journal_get(rid)
                if entry is None or entry["acked"]:
                    continue
                self._pending[rid] = _Pending(entry["fingerprint"])
                entries.append((rid, payload))
        if entries:
            t = threading.Thread(target=self._replay, args=(entries,), name="flotilla-replay", daemon=True)
            self._replay_threads.append(t)
            t.start()
        return len(entries)

    def _keep_lease(self, replay: bool) -> None:
        """Renew the lease every third of its TTL; claim orphans every TTL. A store error is
        counted and retried on the next tick (the thread never dies of it)."""
        period = self.config.lease_ttl_s / 3
        ticks = 0
        failing = False
        while not self._stop.wait(period) and not self.store.closed:
            ticks += 1
            try:
                self.store.lease(self.owner, self.config.lease_ttl_s)
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

    def close(self) -> None:
        """Stop: requests in flight stay journaled and the lease is dropped, so another router on
        the same store takes them over at once."""
        self._closed = True
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        try:
            self.store.release_lease(self.owner)
        except Exception:  # noqa: BLE001 - the lease expires by itself
            log.warning("router %s: could not release its lease", self.owner, exc_info=True)

    def _replay(self, entries: list[tuple[str, dict[str, Any]]]) -> None:
        for rid, payload in entries:
            if self._closed:
                return
            try:
                for _ in self._run(rid, payload, self._pending[rid], time.monotonic() + self.config.default_deadline_s,
                                   journal=False):
                    pass
                self.store.incr("router.replayed")
            except Exception:  # noqa: BLE001 - recorded on the pending entry; the journal is acked
                try:
                    self.store.incr("router.replay_failed")
                except Exception:  # noqa: BLE001
                    pass

    # ------------------------------------------------------------------ queries
    def replicas(self) -> list[dict[str, Any]]:
        with self._cond:
            return [{"device_id": r.device_id, "kind": r.kind, "capacity": r.capacity, "active": r.active, "alive": r.alive}
                    for r in self._replicas]

    def plan(self) -> tuple[int | None, dict[str, Any]]:
        """``(version, plan)``: the stored routing plan, or ``(None, round-robin plan)``."""
        self._refresh_plan(force=True)
        return self._plan_version, self._plan

    def status(self) -> dict[str, Any]:
        with self._cond:
            admitted = self._admitted
        return {"admitted": admitted, "max_queue": self.config.max_queue, "replicas": self.replicas(),
                "plan_version": self._plan_version}

    def _refresh_plan(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._plan_read < self.config.plan_refresh_s:
            return
        self._plan_read = now
        got = self.store.get_plan(name=PLAN_NAME)
        if got is None:
            return
        try:
            plan = validate_plan(got[1])
            with self._cond:
                if got[0] != self._plan_version:
                    self._turns.reset()
                self._plan = plan
                self._plan_version = got[0]
        except InputError:
            self.store.incr("router.bad_plan")

    # ------------------------------------------------------------------ serving
    def normalise(self, request: dict[str, Any]) -> dict[str, Any]:
        """The request as journaled: validated, with a request id and (when sampling) a seed."""
        return self._prepare(request)[0]

    def _prepare(self, request: dict[str, Any], caller: str = "") -> tuple[dict[str, Any], str]:
        """``(normalised request, fingerprint)``; the fingerprint is taken before a seed is drawn."""
        from actors.expert import MAX_PROMPT_CHARS, request_params

        req = dict(request)
        prompt = req.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError("prompt: must be a non-empty string")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise InputError(f"prompt: {len(prompt)} characters; allowed: at most {MAX_PROMPT_CHARS}")
        params = request_params(req)
        rid = req.get("request_id") or uuid.uuid4().hex
        if not isinstance(rid, str) or len(rid) > 128 or not rid.isprintable():
            raise InputError(f"request_id: {rid!r:.80}; allowed: up to 128 printable characters")
        req["request_id"] = rid
        req["max_tokens"] = params.max_tokens
        req["temperature"] = float(params.temperature)
        req["top_p"] = float(params.top_p)
        req["stop"] = list(params.stop)
        if req.get("context_parallel") not in (None, ""):
            from actors.cp_adapter import check_mode

            req["context_parallel"] = check_mode(req["context_parallel"])
        fp = fingerprint(req, caller)
        if not params.greedy and params.seed is None:
            req["seed"] = random.getrandbits(62)
        return req, fp

    def generate(self, request: dict[str, Any], *, timeout_s: float | None = None, caller: str = "") -> dict[str, Any]:
        """Run a request to completion; the final dict."""
        final: dict[str, Any] = {}
        for ev in self.stream(request, timeout_s=timeout_s, caller=caller):
            if ev["type"] == "done":
                final = ev
        return final

    def stream(self, request: dict[str, Any], *, timeout_s: float | None = None, caller: str = "",
               whole: bool = False) -> Iterator[dict[str, Any]]:
        """Chunk dicts, then the final dict (with ``attempts`` and ``request_id``) of one request.

        ``whole``: the caller sends the answer only when it is done (a non-streamed HTTP
        request), so it is run with one unary actor call whatever its ``max_tokens`` (see
        ``RouterConfig.unary_max_tokens``); the events are the same.

        The first event is ``{"type": "accepted", "request_id": ...}``, before dispatch, so the
        caller knows the id to retry with. A retry of a request (same id, same fingerprint: prompt,
        parameters and ``caller``) gets the stored answer, or waits for the run in progress here or
        on another router; a different request under a used id gets
        :class:`~cluster.exceptions.RequestIdInUseError` (gRPC ALREADY_EXISTS), revealing nothing."""
        req, fp = self._prepare(request, caller)
        rid = req["request_id"]
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else self.config.default_deadline_s)
        yield {"type": "accepted", "request_id": rid}
        with self._cond:
            known = self._results.get(rid)
            pending = self._pending.get(rid)
        if pending is not None:
            known = (pending.fingerprint, self._wait_local(rid, pending, deadline))
        if known is not None:
            if known[0] != fp:
                raise RequestIdInUseError(rid, same=False, result=None)
            yield from self._replayed(known[1])
            return
        with self._cond:
            if self._closed:
                raise RouterClosedError("the router is shutting down; retry on the next gateway")
            if self._admitted >= self.config.max_queue:
                raise QueueFullError(
                    f"router queue is full ({self.config.max_queue} requests admitted); retry later or raise max_queue"
                )
            self._admitted += 1
        try:
            yield from self._run(rid, req, _Pending(fp), deadline, journal=True, count=_load_counter(req), whole=whole)
        finally:
            with self._cond:
                self._admitted -= 1

    @staticmethod
    def _replayed(final: dict[str, Any]) -> Iterator[dict[str, Any]]:
        yield {"type": "chunk", "index": 0, "text": final["text"]}
        yield dict(final, type="done", replayed=True)

    def _wait_local(self, rid: str, pending: _Pending, deadline: float) -> dict[str, Any]:
        if not pending.done.wait(max(0.0, deadline - time.monotonic())):
            raise DeadlineExceededError(f"request {rid}: deadline passed while its first run was still going")
        if pending.error is not None:
            raise pending.error
        assert pending.result is not None
        return pending.result

    def _run(self, rid: str, req: dict[str, Any], pending: _Pending, deadline: float, *, journal: bool,
             count: str | None = None, whole: bool = False) -> Iterator[dict[str, Any]]:
        """Journal (when ``journal``), dispatch, store the result durably, then yield the end.

        Whatever happens, ``pending`` ends done and leaves ``_pending``, and the journal entry is
        completed or acknowledged unless this router is closing (then it stays for the next)."""
        if journal:
            with self._cond:
                other = self._pending.get(rid)
                if other is None:
                    self._pending[rid] = pending
            if other is not None:  # another caller here started the same id a moment ago
                if other.fingerprint != pending.fingerprint:
                    raise RequestIdInUseError(rid, same=False, result=None)
                yield from self._replayed(self._wait_local(rid, other, deadline))
                return
        ours = False  # True once this call owns a journal entry it must complete or acknowledge
        completed = False
        try:
            if journal:
                what, got = self._append(rid, req, pending.fingerprint, deadline, count)
                if what == "stored":  # a retry of a request finished elsewhere
                    pending.result = got
                    yield from self._replayed(got)
                    return
                req = got  # ours to run: this request, or our own stranded entry as journaled
            ours = True
            final = yield from self._dispatch(rid, req, deadline, whole)
            # Durable before the caller sees the end: a finished request is never replayed, and a
            # retry (here, after a restart, or on another gateway) gets this result. One count per
            # stored completion, in the same atomic step; a second run of a completed id is "twice".
            self.store.journal_complete(rid, final, ttl_s=self.config.result_ttl_s,
                                        count=("router.completed", "router.completed_twice"))
            completed = True
            pending.result = final
            self._remember(rid, pending.fingerprint, final)
            yield final
        except BaseException as exc:  # noqa: BLE001 - re-raised; recorded for waiters
            if not completed:
                pending.error = exc if isinstance(exc, Exception) else FlotillaError(f"request {rid} was abandoned")
            raise
        finally:
            if ours and not completed and not self._closed:  # closing: leave it journaled for replay
                try:
                    self.store.journal_ack(rid)
                except Exception:  # noqa: BLE001 - the entry stays pending and is replayed later
                    log.warning("request %s: could not acknowledge its journal entry", rid, exc_info=True)
            pending.done.set()
            with self._cond:
                if self._pending.get(rid) is pending:
                    del self._pending[rid]

    def _append(self, rid: str, req: dict[str, Any], fp: str, deadline: float,
                count: str | None = None) -> tuple[str, dict[str, Any]]:
        """Journal the request. ``("run", request)`` when it is ours to run; ``("stored",
        result)`` for a retry of a finished request. A retry of a request that another router is
        running waits for its stored result; a request id in use by another request raises
        RequestIdInUseError.

        A pending entry owned by this router that nobody here is running (its first run could not
        store its result or acknowledge it while the store was down) is taken over at once and
        run again as journaled: the caller holds ``_pending[rid]``, so no replay here runs it."""
        delay = 0.05
        while True:
            try:
                self.store.journal_append(rid, req, fingerprint=fp, owner=self.owner, count=count)
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
            if self._closed:
                raise RouterClosedError(f"request {rid}: the router is shutting down")
            delay = min(delay * 2, 0.5)

    def _remember(self, rid: str, fp: str, final: dict[str, Any]) -> None:
        if self.config.result_cache == 0:
            return
        with self._cond:
            self._results[rid] = (fp, final)
            while len(self._results) > self.config.result_cache:
                self._results.popitem(last=False)

    def _dispatch(self, rid: str, req: dict[str, Any], deadline: float, whole: bool = False) -> Iterator[dict[str, Any]]:
        import ray

        delivered = 0  # characters of text the caller already has
        n_out = 0
        last_death: BaseException | None = None
        for attempt in range(1, self.config.max_attempts + 1):
            replica = self._acquire(req, deadline)
            gen = None
            try:
                if whole or req["max_tokens"] <= self.config.unary_max_tokens:
                    final = self._call_unary(rid, replica, req, deadline, attempt)
                    if final["text"][delivered:]:
                        yield {"type": "chunk", "index": n_out, "text": final["text"][delivered:]}
                    return final
                gen = replica.handle.generate_stream.options(num_returns="streaming").remote(req)
                text = ""
                while True:
                    if self._closed:
                        raise RouterClosedError(f"request {rid}: the router is shutting down; it stays journaled for replay")
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise DeadlineExceededError(f"request {rid}: deadline passed after {len(text)} characters")
                    if not gen.next_ready():  # else no wait call: the item is here
                        ready, _ = ray.wait([gen], timeout=min(remaining, 0.5))
                        if not ready:
                            continue
                    try:
                        ref = next(gen)
                    except StopIteration:
                        raise NoReplicaError(f"request {rid}: replica {replica.device_id} ended the stream without a result") from None
                    ev = ray.get(ref)
                    if ev["type"] == "chunk":
                        text += ev["text"]
                        if len(text) > delivered:
                            yield {"type": "chunk", "index": n_out, "text": text[delivered:]}
                            n_out += 1
                            delivered = len(text)
                    else:
                        text += ev.get("tail") or ""  # an ExpertActor's last text rides with its final dict
                        if len(text) > delivered:
                            yield {"type": "chunk", "index": n_out, "text": text[delivered:]}
                        final = dict(ev, attempts=attempt, request_id=rid)
                        final.pop("type", None)
                        final.pop("tail", None)
                        final["type"] = "done"
                        return final
            except Exception as exc:  # noqa: BLE001 - sorted below
                if (_is_actor_death(exc) or _is_transient(exc)) and not self._closed:
                    last_death = exc
                    if _is_actor_death(exc):
                        self._mark_dead(replica)
                    self.store.incr("router.redispatched")
                    continue
                if gen is not None:
                    ray.cancel(gen)
                cause = getattr(exc, "cause", None)
                if isinstance(cause, InputError):
                    raise InputError(str(cause)) from None
                raise
            except GeneratorExit:  # the caller went away
                if gen is not None:
                    ray.cancel(gen)
                raise
            finally:
                self._release(replica)
        raise NoReplicaError(f"request {rid}: {self.config.max_attempts} replicas died while serving it; last: {last_death}")

    def _call_unary(self, rid: str, replica: Replica, req: dict[str, Any], deadline: float, attempt: int) -> dict[str, Any]:
        """One ``generate`` actor call (see ``RouterConfig.unary_max_tokens``); the final dict."""
        import ray
        from ray.exceptions import GetTimeoutError

        if self._closed:
            raise RouterClosedError(f"request {rid}: the router is shutting down; it stays journaled for replay")
        ref = replica.handle.generate.remote(req)
        try:
            ev = ray.get(ref, timeout=max(0.0, deadline - time.monotonic()))
        except GetTimeoutError:
            ray.cancel(ref)
            raise DeadlineExceededError(f"request {rid}: deadline passed before the reply") from None
        final = dict(ev, attempts=attempt, request_id=rid)
        final["type"] = "done"
        return final

    # ------------------------------------------------------------------ replica pool
    def _acquire(self, req: dict[str, Any], deadline: float) -> Replica:
        special = self._hooked(req)
        if special is not None:
            with self._cond:
                while special.alive:
                    if special.active < special.capacity:
                        special.active += 1
                        return special
                    if self._closed:
                        raise RouterClosedError("the router is shutting down")
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise DeadlineExceededError(f"deadline passed while replica {special.device_id} was busy")
                    self._cond.wait(min(remaining, 1.0))
        self._refresh_plan()
        plan, version = self._plan, self._plan_version
        n = bucket_index(plan, math.ceil(len(req["prompt"]) / 4), req["max_tokens"])
        bucket = plan["buckets"][n]
        with self._cond:
            while True:
                choice = choose_replica(self._replicas, bucket, (version or 0, n), self._turns, next(self._rr))
                if choice.fallback:
                    self.store.incr("router.plan_fallback")
                if choice.replica is not None:
                    choice.replica.active += 1
                    return choice.replica
                if self._closed:
                    raise RouterClosedError("the router is shutting down")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DeadlineExceededError("deadline passed while every replica was busy")
                self._cond.wait(min(remaining, 1.0))

    def _hooked(self, req: dict[str, Any]) -> Replica | None:
        """The dispatch hook's replica for ``req`` (None: the plan's). A hook failure other than
        bad input is counted (``router.hook_failed``) and the plan serves the request."""
        if self._hook is None:
            return None
        try:
            return self._hook(req)
        except InputError:
            raise
        except Exception:  # noqa: BLE001
            log.warning("dispatch hook failed; the plan serves the request", exc_info=True)
            self.store.incr("router.hook_failed")
            return None

    def _release(self, replica: Replica) -> None:
        with self._cond:
            replica.active -= 1
            self._cond.notify_all()

    def _mark_dead(self, replica: Replica) -> None:
        with self._cond:
            replica.alive = False
            self._cond.notify_all()

    def _replica(self, device_id: str) -> Replica:
        for r in self._replicas:
            if r.device_id == device_id:
                return r
        raise InputError(f"device_id: {device_id!r:.80} is not one of this router's replicas")

    def handle(self, device_id: str) -> Any:
        """The actor handle of replica ``device_id``."""
        with self._cond:
            return self._replica(device_id).handle

    def mark_dead(self, device_id: str) -> None:
        """Stop dispatching to replica ``device_id`` (its actor is gone)."""
        with self._cond:
            replica = self._replica(device_id)
        self._mark_dead(replica)

    def add_replica(self, replica: Replica) -> None:
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
            replica = self._replica(device_id)
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
            old = self._replica(device_id)
            new = Replica(old.device_id, old.kind, handle, old.capacity)
            self._replicas[self._replicas.index(old)] = new
            self._cond.notify_all()
