"""Dispatch with attempts: run one request on a replica, re-dispatching after replica deaths.

:meth:`Dispatcher.run` takes a replica slot from the :class:`~actors.replica_pool.ReplicaPool`
(the dispatch hook's replica when it names one and it is alive, else the routing plan's choice:
:func:`actors.routing.bucket_index` and :func:`actors.routing.choose_replica` over the plan that
:class:`~actors.routing_plan.RoutingPlanView` keeps), streams the replica's chunks and returns the
final dict. If the replica's actor dies (:func:`is_actor_death`) it is marked dead and the request
goes to another replica, at most ``max_attempts`` times; an unreachable one (:func:`is_transient`)
is tried again without being marked. Since a request is greedy or seeded, the new replica produces
the same text and the text the caller already has is skipped, so the caller sees every character
once. A request with ``max_tokens <= unary_max_tokens`` is one unary actor call instead.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

from actors.replica_pool import ReplicaPool
from actors.routing import (
    DeadlineExceededError,
    NoReplicaError,
    Replica,
    RouterClosedError,
    bucket_index,
    choose_replica,
)
from actors.routing_plan import RoutingPlanView
from cluster.exceptions import InputError

log = logging.getLogger(__name__)

#: ``hook(request) -> Replica | None``: a replica outside the plan for this request.
DispatchHook = Callable[[dict[str, Any]], "Replica | None"]


def is_actor_death(exc: BaseException) -> bool:
    """Errors after which the replica's process is gone: it is marked dead and the request is
    re-dispatched. A replica killed by Ray's memory monitor raises ``OutOfMemoryError``, one whose
    worker or node died ``WorkerCrashedError`` or ``NodeDiedError``."""
    from ray.exceptions import ActorUnavailableError, NodeDiedError, OutOfMemoryError, RayActorError, WorkerCrashedError

    if isinstance(exc, ActorUnavailableError):
        return False
    return isinstance(exc, (RayActorError, OutOfMemoryError, WorkerCrashedError, NodeDiedError))


def is_transient(exc: BaseException) -> bool:
    """An actor that is unreachable for now (restarting, network): re-dispatch, keep it alive."""
    from ray.exceptions import ActorUnavailableError

    return isinstance(exc, ActorUnavailableError)


class Dispatcher:
    """Runs requests on the pool's replicas; see the module docstring."""

    def __init__(self, store: Any, pool: ReplicaPool, plans: RoutingPlanView, *, max_attempts: int,
                 unary_max_tokens: int, hook: DispatchHook | None = None) -> None:
        self.store = store
        self.pool = pool
        self.plans = plans
        self.max_attempts = max_attempts
        self.unary_max_tokens = unary_max_tokens
        self._hook = hook
        self._rr = itertools.count()

    @property
    def _closing(self) -> bool:
        return self.pool.stop.is_set()

    def run(self, rid: str, req: dict[str, Any], deadline: float, whole: bool = False) -> Iterator[dict[str, Any]]:
        """Chunk dicts of ``req``; returns (as the generator's value) the final dict, with
        ``attempts``, ``request_id`` and ``type: "done"``. The replica slot is given back before
        the final dict is returned. ``whole``: one unary actor call whatever ``max_tokens`` (the
        caller sends the answer only when it is done); the events are the same."""
        import ray

        delivered = 0  # characters of text the caller already has
        n_out = 0
        last_death: BaseException | None = None
        for attempt in range(1, self.max_attempts + 1):
            replica = self.acquire(req, deadline)
            gen = None
            try:
                if whole or req["max_tokens"] <= self.unary_max_tokens:
                    final = self._call_unary(rid, replica, req, deadline, attempt)
                    if final["text"][delivered:]:
                        yield {"type": "chunk", "index": n_out, "text": final["text"][delivered:]}
                    return final
                gen = replica.handle.generate_stream.options(num_returns="streaming").remote(req)
                text = ""
                while True:
                    if self._closing:
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
                if (is_actor_death(exc) or is_transient(exc)) and not self._closing:
                    last_death = exc
                    if is_actor_death(exc):
                        self.pool.mark_replica_dead(replica)
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
                self.pool.release(replica)
        raise NoReplicaError(f"request {rid}: {self.max_attempts} replicas died while serving it; last: {last_death}")

    def _call_unary(self, rid: str, replica: Replica, req: dict[str, Any], deadline: float, attempt: int) -> dict[str, Any]:
        """One ``generate`` actor call (see ``RouterConfig.unary_max_tokens``); the final dict."""
        import ray
        from ray.exceptions import GetTimeoutError

        if self._closing:
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

    def acquire(self, req: dict[str, Any], deadline: float) -> Replica:
        """A slot for ``req``: on the hook's replica while it is alive, else the plan's choice."""
        special = self._hooked(req)
        if special is not None:
            got = self.pool.acquire_replica(special, deadline)
            if got is not None:
                return got
        version, plan, turns = self.plans.current()
        n = bucket_index(plan, math.ceil(len(req["prompt"]) / 4), req["max_tokens"])
        bucket = plan["buckets"][n]

        fallback = [False]

        def pick(replicas: list[Replica]) -> Replica | None:  # under the pool's lock: no store calls
            choice = choose_replica(replicas, bucket, (version or 0, n), turns, next(self._rr))
            fallback[0] = choice.fallback
            return choice.replica

        replica = self.pool.acquire(pick, deadline)
        if fallback[0]:
            self.store.incr("router.plan_fallback")
        return replica

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

