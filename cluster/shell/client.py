"""A synchronous gRPC client for the flotilla gateway, with streaming.

>>> with Client("127.0.0.1:50051", token=None) as c:          # doctest: +SKIP
...     for piece in c.stream("Hello"): print(piece, end="")   # text chunks as they come
...     result = c.generate("What is the capital of France?")  # a GenerateResult

The server address defaults to ``$FLOTILLA_SERVER`` or ``127.0.0.1:50051``, the token to
``$FLOTILLA_TOKEN``. A failed RPC raises :class:`RpcError` carrying the gRPC status code name and
the server's message.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import grpc

from cluster.exceptions import FlotillaError, InputError
from cluster.shell.proto import flotilla_pb2 as pb
from cluster.shell.proto import flotilla_pb2_grpc as pb_grpc

DEFAULT_SERVER = "127.0.0.1:50051"


def default_server() -> str:
    return os.environ.get("FLOTILLA_SERVER", "").strip() or DEFAULT_SERVER


def default_token() -> str | None:
    return os.environ.get("FLOTILLA_TOKEN", "").strip() or None


class RpcError(FlotillaError):
    """A gRPC call failed: ``code`` is the status name (e.g. ``INVALID_ARGUMENT``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class GenerateResult:
    """The final message of a Generate call, times in milliseconds (measured unless ``modeled_*``)."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    ttft_ms: float
    tpot_ms: float
    e2e_ms: float
    device_id: str
    device_kind: str
    device_label: str
    simulated: bool
    attempts: int
    request_id: str
    model: str
    replayed: bool
    modeled_ttft_ms: float | None
    modeled_tpot_ms: float | None
    modeled_e2e_ms: float | None
    modeled_energy_j: float | None
    #: ``{devices, strategy, shares, modeled_prefill_ms, modeled_energy_j, modeled_memory_bytes, note}`` when the prompt
    #: was served context-parallel, else None.
    context_parallel: dict[str, Any] | None = None
    #: The hosted expert (``model@kind``) that answered a request with ``routing="experts"``, else ''.
    expert: str = ""

    @classmethod
    def from_pb(cls, f: Any) -> GenerateResult:
        m = f.modeled if f.HasField("modeled") else None
        return cls(
            text=f.text, finish_reason=f.finish_reason, prompt_tokens=f.usage.prompt_tokens,
            completion_tokens=f.usage.completion_tokens, ttft_ms=f.ttft_ms, tpot_ms=f.tpot_ms, e2e_ms=f.e2e_ms,
            device_id=f.device_id, device_kind=f.device_kind, device_label=f.device_label, simulated=f.simulated,
            attempts=f.attempts, request_id=f.request_id, model=f.model, replayed=f.replayed,
            modeled_ttft_ms=m.ttft_ms if m else None, modeled_tpot_ms=m.tpot_ms if m else None,
            modeled_e2e_ms=m.e2e_ms if m else None, modeled_energy_j=m.energy_j if m else None,
            context_parallel=_cp_dict(f.context_parallel) if f.HasField("context_parallel") else None,
            expert=f.expert,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cp_dict(c: Any) -> dict[str, Any]:
    return {"devices": list(c.devices), "strategy": c.strategy, "shares": list(c.shares),
            "modeled_prefill_ms": c.modeled_prefill_ms, "modeled_energy_j": c.modeled_energy_j, "note": c.note,
            "modeled_memory_bytes": list(c.modeled_memory_bytes)}


def _wrap(exc: grpc.RpcError) -> RpcError:
    code = exc.code() if hasattr(exc, "code") else None
    return RpcError(code.name if code else "UNKNOWN", exc.details() if hasattr(exc, "details") else str(exc))


class Client:
    """Talks to one gateway over one channel. Use as a context manager or call :meth:`close`."""

    def __init__(self, server: str | None = None, *, token: str | None = None, timeout_s: float | None = 600.0,
                 tls_ca: str | None = None) -> None:
        """``tls_ca``: a PEM file of the certificate authority (or the server's self-signed
        certificate) to verify a TLS gateway with (default ``$FLOTILLA_TLS_CA``); without one the
        channel is plain."""
        self.server = server or default_server()
        if ":" not in self.server:
            raise InputError(f"server: expected HOST:PORT, got {self.server!r}")
        self.token = token if token is not None else default_token()
        self.timeout_s = timeout_s
        ca = tls_ca if tls_ca is not None else (os.environ.get("FLOTILLA_TLS_CA", "").strip() or None)
        if ca:
            from cluster.shell.secrets import read_pem

            creds = grpc.ssl_channel_credentials(root_certificates=read_pem(ca, "tls_ca"))
            self.channel = grpc.secure_channel(self.server, creds)
        else:
            self.channel = grpc.insecure_channel(self.server)
        self.stub = pb_grpc.FlotillaStub(self.channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def _meta(self) -> list[tuple[str, str]] | None:
        return [("authorization", f"Bearer {self.token}")] if self.token else None

    def request(self, prompt: str, *, max_tokens: int = 0, temperature: float = 0.0, top_p: float = 0.0,
                seed: int | None = None, stop: list[str] | None = None, model: str = "", request_id: str = "",
                raw: bool = False, context_parallel: str = "", routing: str = "",
                energy_budget_j: float | None = None, latency_budget_ms: float | None = None) -> Any:
        """A GenerateRequest message (fields as in flotilla.proto)."""
        msg = pb.GenerateRequest(prompt=prompt, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                 stop=stop or [], model=model, request_id=request_id, raw=raw,
                                 context_parallel=context_parallel, routing=routing)
        if seed is not None:
            msg.seed = seed
        if energy_budget_j is not None:
            msg.energy_budget_j = energy_budget_j
        if latency_budget_ms is not None:
            msg.latency_budget_ms = latency_budget_ms
        return msg

    def events(self, msg: Any, *, timeout_s: float | None = None) -> Iterator[Any]:
        """The raw ``GenerateResponse`` stream of a request message."""
        try:
            yield from self.stub.Generate(msg, metadata=self._meta(), timeout=timeout_s or self.timeout_s)
        except grpc.RpcError as exc:
            raise _wrap(exc) from None

    def stream(self, prompt: str, **kw: Any) -> Iterator[str | GenerateResult]:
        """Text chunks as they arrive, then the :class:`GenerateResult`."""
        timeout_s = kw.pop("timeout_s", None)
        for ev in self.events(self.request(prompt, **kw), timeout_s=timeout_s):
            if ev.HasField("chunk"):
                yield ev.chunk.text
            else:
                yield GenerateResult.from_pb(ev.final)

    def generate(self, prompt: str, **kw: Any) -> GenerateResult:
        """Run one request to completion."""
        result = None
        for item in self.stream(prompt, **kw):
            if isinstance(item, GenerateResult):
                result = item
        if result is None:
            raise RpcError("UNKNOWN", "the stream ended without a final message")
        return result

    def _unary(self, name: str, msg: Any) -> Any:
        try:
            return getattr(self.stub, name)(msg, metadata=self._meta(), timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise _wrap(exc) from None

    def plan(self, query: dict[str, Any] | None = None, *, shards: dict[str, Any] | None = None) -> Any:
        """The current routing plan; with ``query`` (the fields of ``PlanQuery``: model, workload,
        rate, tpot_slo_ms, ttft_slo_ms, devices, max_count, power_budget_w, apply, simulate, target,
        sim_requests) the allocation solver's mix as well (``PlanResponse.allocation``, with
        ``allocation.simulation`` when ``simulate``); with ``shards`` (the fields of
        ``ShardsQuery``) the shard solver's placement of a long prompt (``PlanResponse.shards``)."""
        kw: dict[str, Any] = {}
        for name, fields, cls in (("query", query, pb.PlanQuery), ("shards", shards, pb.ShardsQuery)):
            if fields is not None:
                try:
                    kw[name] = cls(**{k: v for k, v in fields.items() if v is not None})
                except (TypeError, ValueError) as exc:
                    raise InputError(f"{name}: {exc}") from None
        return self._unary("Plan", pb.PlanRequest(**kw))

    def status(self) -> Any:
        return self._unary("ClusterStatus", pb.ClusterStatusRequest())

    def select_experts(self, query: str, energy_budget_j: float, latency_budget_ms: float, max_experts: int = 0,
                       max_tokens: int = 0) -> Any:
        return self._unary("SelectExperts", pb.SelectExpertsRequest(query=query, energy_budget_j=energy_budget_j,
                                                                   latency_budget_ms=latency_budget_ms, max_experts=max_experts,
                                                                   max_tokens=max_tokens))

    def health(self, service: str = "") -> str:
        """The health status name of ``service`` (``SERVING``, ...)."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        try:
            resp = health_pb2_grpc.HealthStub(self.channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        except grpc.RpcError as exc:
            raise _wrap(exc) from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Block until the channel connects (FlotillaError after ``timeout_s``)."""
        try:
            grpc.channel_ready_future(self.channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            raise RpcError("UNAVAILABLE", f"no gateway at {self.server} after {timeout_s:g} s") from None
