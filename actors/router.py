"""Router: journal, pick a replica from the plan, stream, re-dispatch on actor death, acknowledge.

The router lives in the gateway's process (the gateway calls it from its RPC threads); its state
that must survive the process is the journal in the state store. :class:`Router` is the facade and
owns admission and request normalisation; the parts are the replica pool
(:mod:`actors.replica_pool`), the routing plan it reads (:mod:`actors.routing_plan`) and its pure
decision (:mod:`actors.routing`), dispatch with attempts (:mod:`actors.dispatch`), and the journal
with leases and replay (:mod:`actors.journal`).

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

import logging
import math
import random
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from actors.dispatch import Dispatcher, DispatchHook
from actors.dispatch import is_actor_death as _is_actor_death  # noqa: F401 - imported from here too
from actors.dispatch import is_transient as _is_transient  # noqa: F401 - imported from here too
from actors.journal import RequestJournal, fingerprint, replayed
from actors.replica_pool import ReplicaPool
from actors.routing import DeadlineExceededError, QueueFullError, Replica, RouterClosedError
from actors.routing_plan import PLAN_NAME, RoutingPlanView
from cluster.load import LoadRecorder
from cluster.exceptions import InputError

__all__ = ["PLAN_NAME", "UNARY_MAX_TOKENS", "DeadlineExceededError", "QueueFullError", "Router", "RouterClosedError",
           "RouterConfig", "fingerprint"]

log = logging.getLogger(__name__)

#: Default ``RouterConfig.unary_max_tokens``: a completion of at most one token is one chunk
#: whether streamed or not, so the unary call changes nothing the client sees but the latency.
#: Larger values trade streaming (time to first token) for latency; opt in per deployment.
UNARY_MAX_TOKENS = 1


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


class Router:
    """Dispatches requests to replicas; see the module docstring. A facade over the replica pool
    (:mod:`actors.replica_pool`), the routing plan (:mod:`actors.routing_plan`), dispatch with
    attempts (:mod:`actors.dispatch`) and the journal (:mod:`actors.journal`); it owns admission
    and the normalisation of requests."""

    def __init__(self, store: Any, replicas: list[Replica], config: RouterConfig | None = None, *,
                 dispatch_hook: DispatchHook | None = None) -> None:
        self.store = store
        self.config = cfg = config or RouterConfig()
        self.owner = cfg.router_id or f"router-{uuid.uuid4().hex[:12]}"
        self._stop = threading.Event()
        self._pool = ReplicaPool(replicas, stop=self._stop)
        self._load = LoadRecorder(store)  # the load window the autoscaling loop reads
        self._plans = RoutingPlanView(store, [r.kind for r in replicas], cfg.plan_refresh_s)
        #: ``dispatch_hook(request) -> Replica | None``: a replica outside the plan for this
        #: request (a long prompt to :mod:`actors.cp_adapter`), or None for the plan's choice.
        self._dispatcher = Dispatcher(store, self._pool, self._plans, max_attempts=cfg.max_attempts,
                                      unary_max_tokens=cfg.unary_max_tokens, hook=dispatch_hook)
        self._journal = RequestJournal(
            store, self._dispatcher.run, owner=self.owner, stop=self._stop, lease_ttl_s=cfg.lease_ttl_s,
            result_ttl_s=cfg.result_ttl_s, result_cache=cfg.result_cache, default_deadline_s=cfg.default_deadline_s)
        self._admission = threading.Lock()
        self._admitted = 0

    # ------------------------------------------------------------------ lifecycle
    def start(self, *, replay: bool = True) -> int:
        """Begin serving: take this router's lease, and (``replay``) take over and re-run, in the
        background, every pending journal entry whose router holds no lease any more; keep doing
        so every ``lease_ttl_s``. Returns how many entries are replayed now."""
        self._load.start()
        return self._journal.start(replay=replay)

    def wait_replayed(self, timeout: float | None = None) -> bool:
        """Wait for the replay threads started so far; True when all have finished."""
        return self._journal.wait_replayed(timeout)

    def close(self) -> None:
        """Stop: requests in flight stay journaled and the lease is dropped, so another router on
        the same store takes them over at once."""
        self._pool.close()  # sets the stop event every part watches and wakes the waiters
        self._journal.release_lease()
        self._load.close()

    def flush_load(self) -> int:
        """Write the load samples not yet written (they go out every half second anyway);
        returns how many requests they hold."""
        return self._load.flush()

    @property
    def lease_failures(self) -> int:
        """Lease renewals that failed (the store unreachable); the loop keeps going."""
        return self._journal.lease_failures

    # The parts' state under the names it had before they were split out (read by tests).
    @property
    def _pending(self) -> dict[str, Any]:
        return self._journal.pending

    @property
    def _lease_thread(self) -> threading.Thread | None:
        return self._journal.lease_thread

    @property
    def _replicas(self) -> list[Replica]:
        return self._pool.replicas

    # ------------------------------------------------------------------ queries
    def replicas(self) -> list[dict[str, Any]]:
        return self._pool.describe()

    def plan(self) -> tuple[int | None, dict[str, Any]]:
        """``(version, plan)``: the stored routing plan, or ``(None, round-robin plan)``."""
        version, plan, _ = self._plans.current(force=True)
        return version, plan

    def status(self) -> dict[str, Any]:
        with self._admission:
            admitted = self._admitted
        return {"admitted": admitted, "max_queue": self.config.max_queue, "replicas": self.replicas(),
                "plan_version": self._plans.version}

    # ------------------------------------------------------------------ replica pool
    def handle(self, device_id: str) -> Any:
        """The actor handle of replica ``device_id``."""
        return self._pool.handle(device_id)

    def mark_dead(self, device_id: str) -> None:
        """Stop dispatching to replica ``device_id`` (its actor is gone)."""
        self._pool.mark_dead(device_id)

    def add_replica(self, replica: Replica) -> None:
        """Dispatch to ``replica`` too from now on (a node joined the fleet)."""
        self._pool.add(replica)

    def drain(self, device_id: str, timeout_s: float | None = None) -> Any:
        """Take replica ``device_id`` out of service: no new request goes to it, the ones in flight
        finish (up to ``timeout_s``), then it leaves the pool. Returns its actor handle, for the
        caller to release. TimeoutError (the replica stays out of service) if they do not finish."""
        return self._pool.drain(device_id, timeout_s)

    def replace(self, device_id: str, handle: Any) -> None:
        """Dispatch to ``handle`` for replica ``device_id`` from now on (a replacement actor).
        Requests still running on the old handle keep their own reference to it."""
        self._pool.replace(device_id, handle)

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
        :class:`~cluster.exceptions.RequestIdInUseError` (gRPC ALREADY_EXISTS), revealing nothing.
        The request's queue and replica slots are free by the time the final dict is yielded."""
        req, fp = self._prepare(request, caller)
        rid = req["request_id"]
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else self.config.default_deadline_s)
        yield {"type": "accepted", "request_id": rid}
        known = self._journal.known_result(rid, fp, deadline)
        if known is not None:
            yield from replayed(known)
            return
        with self._admission:
            if self._stop.is_set():
                raise RouterClosedError("the router is shutting down; retry on the next gateway")
            if self._admitted >= self.config.max_queue:
                raise QueueFullError(
                    f"router queue is full ({self.config.max_queue} requests admitted); retry later or raise max_queue"
                )
            self._admitted += 1
        admitted = True

        def leave() -> None:
            nonlocal admitted
            if admitted:
                admitted = False
                with self._admission:
                    self._admitted -= 1

        self._load.record(math.ceil(len(req["prompt"]) / 4), req["max_tokens"])
        try:
            for ev in self._journal.run(rid, req, fp, deadline, whole=whole):
                if ev["type"] == "done":
                    leave()  # before the caller sees the end, which it may hold without closing
                yield ev
        finally:
            leave()
