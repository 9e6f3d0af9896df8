"""The gRPC gateway: authenticate, validate, forward to the Router, map errors to status codes.

A thin surface (the logic lives in :mod:`actors.router` and :mod:`actors.expert`):

* ``Generate`` streams the router's chunks as ``GenerateResponse.chunk`` and ends with one
  ``GenerateResponse.final`` (usage, measured TTFT / TPOT, the device, modeled figures when
  simulated). The RPC's deadline becomes the request's deadline.
* ``Plan`` without a query returns the routing plan and replicas. With a ``PlanQuery`` it runs the
  allocation solver through ``flotilla plan``'s code path (:mod:`cluster.shell.planner`; MODELED
  throughput tables) and returns the mix, its cost, the single-type baselines and the solve time;
  with ``apply`` it also requests the devices from Ray's autoscaler, stores the plan and the
  routing plan derived from it (:mod:`solvers.routing`), and the Router routes by it from its next
  refresh (this gateway's Router at once).
* ``SelectExperts``: on a fleet that hosts edge experts (``experts:`` in the fleet file), the
  hosted experts that fit the budgets, the ONE expert the query is routed to, its modeled cost
  and the devices that host it (:mod:`cluster.shell.hosting`); a ``Generate`` with
  ``routing: "experts"`` is served by that expert (the final message names it in ``expert``).
  Otherwise, with an expert selector (``flotilla serve --experts FILE``): the selection solver's
  deployment for the budgets, then the gate's top-k inside it (:mod:`cluster.shell.selector`);
  with neither, FAILED_PRECONDITION.
* ``ClusterStatus``: devices, replicas, queue and counters.
* Standard health checking (``grpc.health.v1``, service ``""`` and ``flotilla.v1.Flotilla``) and
  server reflection. With a token configured every Flotilla RPC needs the metadata
  ``authorization: Bearer <token>`` (UNAUTHENTICATED otherwise; health and reflection stay open).

Errors: :class:`~cluster.exceptions.InputError` -> INVALID_ARGUMENT (its message names the
field), QueueFullError / CapacityError -> RESOURCE_EXHAUSTED, DeadlineExceededError ->
DEADLINE_EXCEEDED, NoReplicaError / StoreUnavailableError / ExpertUnavailableError (no live replica
of the routed expert) -> UNAVAILABLE, PlanInfeasibleError
(no device mix meets the query's SLO; the message names the binding cause) -> FAILED_PRECONDITION,
PlanIncompleteError (solver time limit) -> DEADLINE_EXCEEDED, PlanSolverError (the solver's
answer failed its checks) -> ABORTED, a request id used by another request -> ALREADY_EXISTS,
applying a plan without the apply token -> PERMISSION_DENIED. Anything else is INTERNAL with a
generic message, logged; the server keeps serving.

Validation is :func:`validate_generate`, shared with the OpenAI-compatible HTTP server
(:mod:`cluster.shell.openai_api`); ``Generate`` records into the same Prometheus metrics
(:mod:`cluster.shell.metrics`) when the gateway is given them.

:func:`cluster.shell.serving.start_serving` composes the whole path around it.
"""

from __future__ import annotations

import hmac
import logging
import math
import threading
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc

from actors.routing import NoReplicaError
from actors.router import DeadlineExceededError, Router
from cluster.exceptions import (
    AlreadyExistsError,
    CapacityError,
    FlotillaError,
    InputError,
    PermissionDeniedError,
    StoreUnavailableError,
)
from cluster.shell.planner import Planner, PlanIncompleteError, PlanInfeasibleError, PlanQuery, PlanSolverError
from cluster.shell.proto import flotilla_pb2 as pb
from cluster.shell.proto import flotilla_pb2_grpc as pb_grpc
from cluster.shell.solver_process import SolveCancelledError

log = logging.getLogger("flotilla.gateway")

SERVICE_NAME = "flotilla.v1.Flotilla"
DEFAULT_PORT = 50051
DEFAULT_MAX_TOKENS = 64
#: RPC threads kept beyond the router's queue bound for health, status, plan and refusals.
RESERVED_THREADS = 32

_OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """Where and how the gateway listens."""

    #: Interface to bind; 127.0.0.1 unless you mean to expose it.
    host: str = "127.0.0.1"
    #: Port; 0 picks a free one (see :attr:`Gateway.port`).
    port: int = DEFAULT_PORT
    #: Bearer token required on Flotilla RPCs; None: no authentication.
    token: str | None = None
    #: Bearer token that may also apply plans (``Plan`` with ``apply: true``); it is accepted
    #: wherever ``token`` is. None: no one may apply plans through this gateway.
    apply_token: str | None = None
    #: The most devices an applied plan may request.
    max_apply_devices: int = 64
    #: PEM files of the server's TLS certificate (chain) and private key; both or neither. With
    #: them the port speaks TLS only (clients verify it with ``--tls-ca``).
    tls_cert: str | None = None
    tls_key: str | None = None
    #: RPC threads. None: the router's ``max_queue`` plus :data:`RESERVED_THREADS`, so requests
    #: the router admits can never take the threads that health, status and plan calls need (the
    #: router refuses the rest at once with RESOURCE_EXHAUSTED).
    max_workers: int | None = None
    #: Concurrent RPCs; past it gRPC itself answers RESOURCE_EXHAUSTED instead of queueing the
    #: call behind busy threads. None: ``max_workers``.
    max_rpcs: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise InputError(f"host: expected an interface address, got {self.host!r}")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise InputError(f"port: {self.port!r}; allowed: 0..65535 (0 picks a free port)")
        for name in ("token", "apply_token"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, str) or not v or not v.isprintable()):
                raise InputError(f"{name}: expected a non-empty printable string")
        if self.apply_token is not None and self.apply_token == self.token:
            raise InputError("apply_token: must differ from token (it is a separate permission)")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InputError("tls_cert: give both tls_cert and tls_key (PEM files), or neither")
        v = self.max_apply_devices
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 100_000:
            raise InputError(f"max_apply_devices: {v!r}; allowed: 1..100000")
        for name in ("max_workers", "max_rpcs"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 10_000):
                raise InputError(f"{name}: {v!r}; allowed: 1..10000")


class ExpertsNotConfiguredError(FlotillaError):
    """SelectExperts on a gateway started without ``--experts FILE`` (gRPC FAILED_PRECONDITION)."""


def status_for(exc: BaseException) -> grpc.StatusCode:
    """The gRPC status code of an error raised while serving."""
    if isinstance(exc, AlreadyExistsError):
        return grpc.StatusCode.ALREADY_EXISTS
    if isinstance(exc, PermissionDeniedError):
        return grpc.StatusCode.PERMISSION_DENIED
    from cluster.shell.hosting import ExpertUnavailableError  # an InputError only to pass the router's hook

    if isinstance(exc, ExpertUnavailableError):
        return grpc.StatusCode.UNAVAILABLE
    if isinstance(exc, InputError):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(exc, CapacityError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if isinstance(exc, SolveCancelledError):
        return grpc.StatusCode.CANCELLED
    if isinstance(exc, PlanSolverError):
        return grpc.StatusCode.ABORTED
    if isinstance(exc, (DeadlineExceededError, PlanIncompleteError)):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    from solvers.exceptions import InfeasibleError  # no shard placement meets the query

    if isinstance(exc, (PlanInfeasibleError, ExpertsNotConfiguredError, InfeasibleError)):
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(exc, (NoReplicaError, StoreUnavailableError)):
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.INTERNAL


#: Initial metadata key carrying the request's id, sent before dispatch (retry with it).
REQUEST_ID_METADATA = "x-request-id"


def caller_of_token(authorization: str) -> str:
    """The caller's identity for binding request ids: a hash of its ``Authorization`` value
    ('' without one); the same for a caller on gRPC and on HTTP."""
    import hashlib

    return hashlib.sha256(authorization.encode()).hexdigest()[:32] if authorization else ""


def caller_of(context: Any) -> str:
    """:func:`caller_of_token` of a gRPC call's ``authorization`` metadata."""
    return caller_of_token(dict(context.invocation_metadata() or ()).get("authorization", ""))


def _finite(name: str, value: float, lo: float, hi: float, *, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{name}: expected a number, got {value!r:.80}")
    if not math.isfinite(value) or value < lo or value > hi or (lo_open and value == lo):
        bound = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
        raise InputError(f"{name}: {value!r} is out of range; allowed: {bound}")
    return float(value)


class UnknownModelError(InputError):
    """A request names a model this server does not serve (gRPC INVALID_ARGUMENT, HTTP 404)."""


def validate_generate(served_model: str, *, prompt: str, max_tokens: int | None = None, temperature: float = 0.0,
                      top_p: float | None = None, model: str = "", seed: int | None = None, stop: Any = (),
                      chat: bool = True, request_id: str = "", context_parallel: str = "", routing: str = "",
                      energy_budget_j: float | None = None, latency_budget_ms: float | None = None) -> dict[str, Any]:
    """The validated request dict the router takes; shared by the gRPC and HTTP gateways.

    ``max_tokens`` None means the server default (:data:`DEFAULT_MAX_TOKENS`), ``top_p`` None
    means 1. Raises InputError naming the field (UnknownModelError for ``model``).
    """
    from actors.llm.generate import MAX_TOKENS_LIMIT

    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError("prompt: must be a non-empty string")
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
        raise InputError(f"max_tokens: {max_tokens!r} is out of range; allowed: 1..{MAX_TOKENS_LIMIT}")
    temperature = _finite("temperature", temperature, 0.0, 100.0)
    top_p = _finite("top_p", 1.0 if top_p is None else top_p, 0.0, 1.0, lo_open=True)
    if model and model.lower() != served_model.lower():
        raise UnknownModelError(f"model: unknown model {model!r:.60}; this server serves {served_model!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        raise InputError(f"seed: {seed!r} is out of range; allowed: 0..2**63-1")
    req: dict[str, Any] = {
        "prompt": prompt, "max_tokens": max_tokens, "temperature": temperature, "top_p": top_p,
        "seed": seed, "stop": list(stop), "chat": chat,
    }
    if request_id:
        req["request_id"] = request_id
    if context_parallel:
        from actors.cp_adapter import check_mode

        req["context_parallel"] = check_mode(context_parallel)
    from cluster.shell.hosting import check_budget, check_routing

    if check_routing(routing) == "experts":  # the default ("plan") leaves the request as it was
        req["routing"] = "experts"
        for name, v in (("energy_budget_j", energy_budget_j), ("latency_budget_ms", latency_budget_ms)):
            if check_budget(name, v) is not None:
                req[name] = float(v)
    else:
        for name, v in (("energy_budget_j", energy_budget_j), ("latency_budget_ms", latency_budget_ms)):
            if v is not None:
                raise InputError(f"{name}: only with routing 'experts' (the budget of the routed expert)")
    return req


def generate_request(msg: Any, served_model: str) -> dict[str, Any]:
    """A validated request dict from a ``GenerateRequest`` (InputError naming the field)."""
    from actors.llm.generate import MAX_TOKENS_LIMIT

    if msg.max_tokens > MAX_TOKENS_LIMIT:  # 0 on the wire is "the server default"
        raise InputError(f"max_tokens: {msg.max_tokens} is out of range; allowed: 1..{MAX_TOKENS_LIMIT} (0 = {DEFAULT_MAX_TOKENS})")
    return validate_generate(
        served_model, prompt=msg.prompt, max_tokens=msg.max_tokens or None, temperature=msg.temperature,
        top_p=msg.top_p or None, model=msg.model, seed=msg.seed if msg.HasField("seed") else None,
        stop=list(msg.stop), chat=not msg.raw, request_id=msg.request_id, context_parallel=msg.context_parallel,
        routing=msg.routing, energy_budget_j=msg.energy_budget_j if msg.HasField("energy_budget_j") else None,
        latency_budget_ms=msg.latency_budget_ms if msg.HasField("latency_budget_ms") else None,
    )


def final_message(ev: dict[str, Any], expert: str = "") -> Any:
    """``GenerateResponse.final`` from the router's final dict (``expert``: the hosted expert that
    answered a request routed by experts)."""
    modeled = None
    if ev.get("modeled"):
        m = ev["modeled"]
        modeled = pb.Modeled(ttft_ms=m["ttft_s"] * 1e3, tpot_ms=m["tpot_s"] * 1e3, e2e_ms=m["e2e_s"] * 1e3,
                             energy_j=m["energy_j"], note=m.get("note", ""))
    cp = None
    if ev.get("context_parallel"):
        c = ev["context_parallel"]
        cp = pb.ContextParallel(devices=c["devices"], strategy=c["strategy"], shares=c["shares"],
                                modeled_prefill_ms=c.get("modeled_prefill_s", 0.0) * 1e3,
                                modeled_energy_j=c.get("modeled_energy_j", 0.0), note=c.get("note", ""),
                                modeled_memory_bytes=c.get("modeled_memory_bytes", []))
    return pb.GenerateResponse(final=pb.Final(
        context_parallel=cp, text=ev["text"], finish_reason=ev["finish_reason"],
        usage=pb.Usage(prompt_tokens=ev["prompt_tokens"], completion_tokens=ev["completion_tokens"]),
        ttft_ms=ev["ttft_s"] * 1e3, tpot_ms=ev["tpot_s"] * 1e3, e2e_ms=ev["e2e_s"] * 1e3,
        device_id=ev["device_id"], device_kind=ev["device_kind"], device_label=ev["label"],
        simulated=ev["simulated"], modeled=modeled, attempts=ev.get("attempts", 1),
        request_id=ev.get("request_id", ""), model=ev.get("model") or "", replayed=bool(ev.get("replayed")),
        expert=expert,
    ))


def _replica_msgs(replicas: list[dict[str, Any]]) -> list[Any]:
    return [pb.Replica(device_id=r["device_id"], kind=r["kind"], capacity=r["capacity"], active=r["active"], alive=r["alive"])
            for r in replicas]


def allocation_message(doc: dict[str, Any]) -> Any:
    """``PlanResponse.allocation`` from :meth:`cluster.shell.planner.Planner.run`'s document."""
    base = doc.get("baselines", {})
    return pb.Allocation(
        counts=doc["allocation"], cost_per_hour=doc["cost_per_hour"],
        baselines={k: v for k, v in base.items() if v is not None},
        infeasible_alone=sorted(k for k, v in base.items() if v is None), solve_seconds=doc["solve_seconds"],
        solver=doc["solver"], throughput_source=doc.get("throughput_source", ""), note=doc.get("note", ""),
        applied=doc["applied"], allocation_version=doc.get("allocation_version") or 0, bundles=doc.get("bundles", 0),
        status=doc.get("status", "Optimal"), gap=doc.get("gap", 0.0),
        unservable_mass=doc.get("unservable_mass", 0.0),
        unservable_buckets=[pb.UnservableBucket(input_index=b["bucket"][0], output_index=b["bucket"][1],
                                                tokens=b.get("tokens") or "", mass=b["mass"])
                            for b in doc.get("unservable_buckets", ())],
        simulation=_simulation_msg(doc["simulation"]) if "simulation" in doc else None,
    )


def _simulation_msg(sim: dict[str, Any]) -> Any:
    """``Allocation.simulation`` from :func:`cluster.shell.simulator.check_plan`'s figures (a
    percentile of no request, e.g. TPOT when every output is one token, is NaN)."""
    def ms(key: str) -> float:
        return math.nan if sim.get(key) is None else float(sim[key])

    return pb.Simulation(slo_attainment=sim["slo_attainment"], target=sim["target"], meets_target=sim["meets_target"],
                         p50_tpot_ms=ms("p50_tpot_ms"), p99_tpot_ms=ms("p99_tpot_ms"), p50_ttft_ms=ms("p50_ttft_ms"),
                         p99_ttft_ms=ms("p99_ttft_ms"), requests=sim["requests"], rejected=sim["rejected"],
                         note=sim.get("note", ""))


def _bucket_msg(b: dict[str, Any]) -> Any:
    return pb.PlanBucket(max_tokens=b.get("max_tokens") or 0, kinds=b["kinds"], max_input_tokens=b.get("max_input_tokens") or 0,
                         max_output_tokens=b.get("max_output_tokens") or 0, weights=b.get("weights") or {})


class FlotillaServicer(pb_grpc.FlotillaServicer):
    """Validates and forwards to the router; errors become status codes (see the module docstring)."""

    def __init__(self, router: Router, store: Any, model_name: str, selector: Any = None, metrics: Any = None, *,
                 apply_token: str | None = None, max_apply_devices: int = 64, hosting: Any = None) -> None:
        self.router = router
        self.metrics = metrics  # cluster.shell.metrics.Metrics or None
        self.store = store
        self.model_name = model_name
        self.planner = Planner(store, max_apply_devices=max_apply_devices)
        self._apply_auth = f"Bearer {apply_token}".encode() if apply_token else None
        self.selector = selector
        self.hosting = hosting  # cluster.shell.hosting.HostedExperts or None

    def _fail(self, context: Any, exc: BaseException) -> None:
        code = status_for(exc)
        if code is grpc.StatusCode.INTERNAL:
            log.exception("internal error while serving")
            context.abort(code, f"internal error ({type(exc).__name__}); see the gateway log")
        context.abort(code, str(exc))

    def Generate(self, request: Any, context: Any) -> Any:
        timer = self.metrics.request("grpc", "Generate") if self.metrics is not None else None
        try:
            req = generate_request(request, self.model_name)
            remaining = context.time_remaining()
            timeout = remaining if remaining is not None and remaining < 1e8 else None
            events = self.router.stream(req, timeout_s=timeout, caller=caller_of(context))
            for ev in events:
                if ev["type"] == "accepted":  # the id reaches the client before dispatch
                    context.send_initial_metadata(((REQUEST_ID_METADATA, ev["request_id"]),))
                elif ev["type"] == "chunk":
                    if timer is not None:
                        timer.first()
                    yield pb.GenerateResponse(chunk=pb.Chunk(index=ev["index"], text=ev["text"]))
                else:
                    if timer is not None:
                        timer.done(ev, "OK")
                    from cluster.shell.hosting import expert_of

                    yield final_message(ev, expert_of(ev, req, self.hosting))
        except Exception as exc:  # noqa: BLE001 - mapped to a status code
            if timer is not None:
                timer.fail(status_for(exc).name)
            self._fail(context, exc)

    def Plan(self, request: Any, context: Any) -> Any:
        try:
            allocation = None
            if request.HasField("query"):
                query = PlanQuery.from_pb(request.query)
                remaining = context.time_remaining()
                cancel = threading.Event()
                # the RPC ended (cancelled, deadline or done); a callback added after the end is never
                # called (add_callback answers False), so a call cancelled before it got a thread is
                # cancelled here
                if not context.add_callback(cancel.set) or not context.is_active():
                    cancel.set()
                doc = self.planner.run(query, time_limit_s=remaining if remaining is not None and remaining < 1e8 else None,
                                       may_apply=self._may_apply(context), cancel=cancel)
                allocation = allocation_message(doc)
            shards = self._shards(request.shards) if request.HasField("shards") else None
            version, plan = self.router.plan()  # re-reads the store: an applied plan shows at once
            return pb.PlanResponse(version=version or 0, source=str(plan.get("source", "store")),
                                   buckets=[_bucket_msg(b) for b in plan["buckets"]],
                                   replicas=_replica_msgs(self.router.replicas()), allocation=allocation,
                                   shards=shards)
        except Exception as exc:  # noqa: BLE001
            self._fail(context, exc)

    def _shards(self, q: Any) -> Any:
        """``PlanResponse.shards`` for a ``ShardsQuery`` (:func:`actors.cp_adapter.plan_shards`):
        no devices means this fleet's, no model the served one."""
        from actors.cp_adapter import plan_shards

        kinds = list(q.devices) or [v.get("kind", "") for _, v in sorted(self.store.devices().items())]
        doc = plan_shards(q.tokens, q.model or self.model_name, kinds, objective=q.objective or "latency",
                          latency_budget_s=q.latency_budget_s if q.HasField("latency_budget_s") else None,
                          energy_budget_j=q.energy_budget_j if q.HasField("energy_budget_j") else None)
        return pb.Shards(devices=doc["devices"], kinds=doc["kinds"], strategy=doc["strategy"], shares=doc["shares"],
                         modeled_latency_s=doc["modeled_latency_s"], modeled_energy_j=doc["modeled_energy_j"],
                         modeled_memory_bytes=doc["modeled_memory_bytes"], candidates_evaluated=doc["candidates_evaluated"],
                         solve_ms=doc["solve_ms"], candidates=doc["candidates"], model=doc["model"], note=doc["note"])

    def _may_apply(self, context: Any) -> bool:
        if self._apply_auth is None:
            return False
        got = dict(context.invocation_metadata() or ()).get("authorization", "")
        return hmac.compare_digest(got.encode() if isinstance(got, str) else bytes(got), self._apply_auth)

    def SelectExperts(self, request: Any, context: Any) -> Any:
        try:
            if not request.query.strip():
                raise InputError("query: must be a non-empty string")
            _finite("energy_budget_j", request.energy_budget_j, 0.0, 1e12, lo_open=True)
            _finite("latency_budget_ms", request.latency_budget_ms, 0.0, 1e9, lo_open=True)
            if not 0 <= request.max_experts <= 64:
                raise InputError(f"max_experts: {request.max_experts} is out of range; allowed: 1..64 (0 = 1)")
            from actors.llm.generate import MAX_TOKENS_LIMIT

            if not 0 <= request.max_tokens <= MAX_TOKENS_LIMIT:
                raise InputError(f"max_tokens: {request.max_tokens} is out of range; allowed: 1..{MAX_TOKENS_LIMIT} "
                                 f"(0 = {DEFAULT_MAX_TOKENS})")
            if self.hosting is not None:  # the experts this fleet hosts: the answer drives serving
                c = self.hosting.select(len(request.query), request.max_tokens or DEFAULT_MAX_TOKENS,
                                        request.energy_budget_j, request.latency_budget_ms)
                return pb.SelectExpertsResponse(
                    experts=c.experts, weights=c.weights, energy_j=c.energy_j, latency_ms=c.latency_ms,
                    deployed=c.experts, note=c.note, routed=c.routed,
                    hosts=[pb.ExpertHost(expert=n, device_ids=ids, energy_j=e, latency_ms=lat) for n, ids, e, lat in c.hosts])
            if self.selector is None:
                raise ExpertsNotConfiguredError(
                    "SelectExperts: this gateway has no expert selection instance; start the gateway with "
                    "--experts FILE (the JSON of `flotilla experts build`)")
            sel = self.selector.select(request.query, request.energy_budget_j, request.latency_budget_ms,
                                       request.max_experts or 1)
            return pb.SelectExpertsResponse(experts=sel.experts, weights=sel.weights, energy_j=sel.energy_j,
                                            latency_ms=sel.latency_ms, deployed=sel.deployed,
                                            objective_value=sel.objective_value, note=sel.note,
                                            routed=sel.experts[0] if sel.experts else "")
        except Exception as exc:  # noqa: BLE001
            self._fail(context, exc)

    def ClusterStatus(self, request: Any, context: Any) -> Any:
        from cluster.load import public_counters

        try:
            devs = self.store.devices()
            status = self.router.status()
            return pb.ClusterStatusResponse(
                devices=[pb.Device(device_id=k, kind=v.get("kind", ""), label=v.get("label", "")) for k, v in sorted(devs.items())],
                replicas=_replica_msgs(status["replicas"]), admitted=status["admitted"], max_queue=status["max_queue"],
                plan_version=status["plan_version"] or 0, counters=public_counters(self.store.counters()), model=self.model_name,
            )
        except Exception as exc:  # noqa: BLE001
            self._fail(context, exc)


class _AuthInterceptor(grpc.ServerInterceptor):
    """UNAUTHENTICATED unless ``authorization: Bearer <token>`` matches (constant-time compare)."""

    def __init__(self, *tokens: str) -> None:
        self._expected = [f"Bearer {t}".encode() for t in tokens]

        def deny(request: Any, context: Any) -> Any:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token in the 'authorization' metadata")

        self._deny_unary = grpc.unary_unary_rpc_method_handler(deny)
        self._deny_stream = grpc.unary_stream_rpc_method_handler(deny)

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        if details.method.startswith(_OPEN_PREFIXES):
            return continuation(details)
        got = dict(details.invocation_metadata or ()).get("authorization", "")
        got_b = got.encode() if isinstance(got, str) else bytes(got)
        if any(hmac.compare_digest(got_b, want) for want in self._expected):
            return continuation(details)
        return self._deny_stream if details.method.endswith("/Generate") else self._deny_unary


class Gateway:
    """A running gRPC server around a router."""

    def __init__(self, router: Router, store: Any, config: GatewayConfig, model_name: str, selector: Any = None,
                 metrics: Any = None, hosting: Any = None) -> None:
        from grpc_health.v1 import health, health_pb2, health_pb2_grpc
        from grpc_reflection.v1alpha import reflection

        self.config = config
        self.router = router
        tokens = [t for t in (config.token, config.apply_token) if t]
        interceptors = [_AuthInterceptor(*tokens)] if config.token else []
        workers = config.max_workers or router.config.max_queue + RESERVED_THREADS
        self.max_workers = workers
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="flotilla-rpc"),
                                  interceptors=interceptors, maximum_concurrent_rpcs=config.max_rpcs or workers)
        self.servicer = FlotillaServicer(router, store, model_name, selector, metrics, apply_token=config.apply_token,
                                         max_apply_devices=config.max_apply_devices, hosting=hosting)
        pb_grpc.add_FlotillaServicer_to_server(self.servicer, self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = (pb.DESCRIPTOR.services_by_name["Flotilla"].full_name, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                 reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, self.server)
        host = f"[{config.host}]" if ":" in config.host else config.host
        try:
            if config.tls_cert is not None:
                from cluster.shell.secrets import read_pem

                creds = grpc.ssl_server_credentials([(read_pem(config.tls_key, "tls_key"), read_pem(config.tls_cert, "tls_cert"))])
                self.port = self.server.add_secure_port(f"{host}:{config.port}", creds)
            else:
                self.port = self.server.add_insecure_port(f"{host}:{config.port}")
        except RuntimeError as exc:
            raise InputError(f"port: cannot bind {config.host}:{config.port} ({exc}); pick another --port") from None
        if self.port == 0:
            raise InputError(f"port: cannot bind {config.host}:{config.port}; is it in use? pick another --port")
        self._health_pb2 = health_pb2

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.port}"

    def start(self) -> Gateway:
        self.server.start()
        for svc in ("", SERVICE_NAME):
            self.health.set(svc, self._health_pb2.HealthCheckResponse.SERVING)
        return self

    def stop(self, grace_s: float | None = 2.0) -> None:
        """Stop serving: requests in flight end with UNAVAILABLE and stay journaled (replayed by
        the next gateway on the same store)."""
        self.health.enter_graceful_shutdown()
        self.router.close()
        self.server.stop(grace_s).wait()
        self.servicer.planner.close()

    def wait(self, timeout: float | None = None) -> bool:
        return self.server.wait_for_termination(timeout)
