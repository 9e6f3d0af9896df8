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
from cluster.exceptions import CapacityError, FlotillaError, InputError

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

    def __post_init__(self) -> None:
        for name, lo, hi in (("max_queue", 1, 1_000_000), ("max_attempts", 1, 100), ("result_cache", 0, 1_000_000),
                             ("unary_max_tokens", 0, 1_000_000)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise InputError(f"{name}: {v!r}; allowed: an integer {lo}..{hi}")
        for name in ("default_deadline_s", "plan_refresh_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
                raise InputError(f"{name}: {v!r}; allowed: a number of seconds > 0")


@dataclass
class _Pending:
    """A request some thread is running; others asking for the same id wait on ``done``."""

    done: threading.Event = field(default_factory=threading.Event)
    result: dict[str, Any] | None = None
    error: BaseException | None = None


def _is_actor_death(exc: BaseException) -> bool:
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

    return isinstance(exc, (RayActorError, ActorDiedError, ActorUnavailableError))


class Router:
    """Dispatches requests to replicas; see the module docstring."""

    def __init__(self, store: Any, replicas: list[Replica], config: RouterConfig | None = None) -> None:
        self.store = store
        self.config = config or RouterConfig()
        self._replicas = list(replicas)
        self._cond = threading.Condition()
        self._admitted = 0
        self._rr = itertools.count()
        self._pending: dict[str, _Pending] = {}
        self._results: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self._plan: dict[str, Any] = default_plan([r.kind for r in replicas])
        self._plan_version: int | None = None
        self._plan_read = 0.0
        self._turns = WeightedTurns()
        self._replay_thread: threading.Thread | None = None
        self._closed = False

    # ------------------------------------------------------------------ lifecycle
    def start(self, *, replay: bool = True) -> int:
        """Begin serving; replay unacknowledged journal entries in the background. Returns how
        many entries are being replayed."""
        entries = self.store.journal_unacked() if replay else []
        if entries:
            for rid, _ in entries:
                self._pending.setdefault(rid, _Pending())
            self._replay_thread = threading.Thread(target=self._replay, args=(entries,), name="flotilla-replay", daemon=True)
            self._replay_thread.start()
        return len(entries)

    def wait_replayed(self, timeout: float | None = None) -> bool:
        """Wait for the replay thread; True when it has finished."""
        if self._replay_thread is None:
            return True
        self._replay_thread.join(timeout)
        return not self._replay_thread.is_alive()

    def close(self) -> None:
        self._closed = True
        with self._cond:
            self._cond.notify_all()

    def _replay(self, entries: list[tuple[str, dict[str, Any]]]) -> None:
        for rid, payload in entries:
            if self._closed:
                return
            try:
                for _ in self._run(rid, payload, time.monotonic() + self.config.default_deadline_s, journal=False):
                    pass
                self.store.incr("router.replayed")
            except Exception:  # noqa: BLE001 - recorded on the pending entry; the journal is acked
                self.store.incr("router.replay_failed")

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
        if not params.greedy and params.seed is None:
            req["seed"] = random.getrandbits(62)
        return req

    def generate(self, request: dict[str, Any], *, timeout_s: float | None = None) -> dict[str, Any]:
        """Run a request to completion; the final dict."""
        final: dict[str, Any] = {}
        for ev in self.stream(request, timeout_s=timeout_s):
            if ev["type"] == "done":
                final = ev
        return final

    def stream(self, request: dict[str, Any], *, timeout_s: float | None = None) -> Iterator[dict[str, Any]]:
        """Chunk dicts, then the final dict (with ``attempts`` and ``request_id``) of one request."""
        req = self.normalise(request)
        rid = req["request_id"]
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else self.config.default_deadline_s)
        known = self._results.get(rid)
        pending = self._pending.get(rid)
        if known is None and pending is not None:  # being replayed (or run by another caller)
            if not pending.done.wait(max(0.0, deadline - time.monotonic())):
                raise DeadlineExceededError(f"request {rid}: deadline passed while its replay was running")
            if pending.error is not None:
                raise pending.error
            known = pending.result
        if known is not None:
            yield {"type": "chunk", "index": 0, "text": known["text"]}
            yield dict(known, replayed=True)
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
            yield from self._run(rid, req, deadline, journal=True)
        finally:
            with self._cond:
                self._admitted -= 1

    def _run(self, rid: str, req: dict[str, Any], deadline: float, *, journal: bool) -> Iterator[dict[str, Any]]:
        pending = self._pending.setdefault(rid, _Pending())
        if journal:
            self.store.journal_append(rid, req)  # InputError if the id was used before
        acked = False
        try:
            final = yield from self._dispatch(rid, req, deadline)
            pending.result = final
            self._remember(rid, final)
            self.store.journal_ack(rid)  # before the caller sees the end: a finished request is never replayed
            acked = True
            pending.done.set()
            yield final
        except BaseException as exc:  # noqa: BLE001 - re-raised; recorded for waiters
            if not acked:
                pending.error = exc if isinstance(exc, Exception) else FlotillaError(f"request {rid} was abandoned")
            raise
        finally:
            if not acked and not self._closed:  # closing: leave it journaled for replay
                self.store.journal_ack(rid)
            pending.done.set()
            self._pending.pop(rid, None)

    def _remember(self, rid: str, final: dict[str, Any]) -> None:
        if self.config.result_cache == 0:
            return
        with self._cond:
            self._results[rid] = final
            while len(self._results) > self.config.result_cache:
                self._results.popitem(last=False)

    def _dispatch(self, rid: str, req: dict[str, Any], deadline: float) -> Iterator[dict[str, Any]]:
        import ray

        delivered = 0  # characters of text the caller already has
        n_out = 0
        last_death: BaseException | None = None
        for attempt in range(1, self.config.max_attempts + 1):
            replica = self._acquire(req, deadline)
            gen = None
            try:
                if req["max_tokens"] <= self.config.unary_max_tokens:
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
                        final = dict(ev, attempts=attempt, request_id=rid)
                        final.pop("type", None)
                        final["type"] = "done"
                        self.store.incr("router.completed")
                        return final
            except Exception as exc:  # noqa: BLE001 - sorted below
                if _is_actor_death(exc) and not self._closed:
                    last_death = exc
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
        self.store.incr("router.completed")
        return final

    # ------------------------------------------------------------------ replica pool
    def _acquire(self, req: dict[str, Any], deadline: float) -> Replica:
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

    def _release(self, replica: Replica) -> None:
        with self._cond:
            replica.active -= 1
            self._cond.notify_all()

    def _mark_dead(self, replica: Replica) -> None:
        with self._cond:
            replica.alive = False
            self._cond.notify_all()
