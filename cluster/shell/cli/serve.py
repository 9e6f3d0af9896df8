"""``flotilla serve``, ``flotilla generate`` and ``flotilla demo`` (the serving path's commands).

``register(app)`` adds them to the main Typer app. :func:`gateway_status` renders a gateway's
``ClusterStatus`` for ``flotilla status --server HOST:PORT``.

Client commands reach the gateway at ``--server`` (default ``$FLOTILLA_SERVER`` or
127.0.0.1:50051) with ``--token`` (default ``$FLOTILLA_TOKEN``). A request the server rejects
exits 2 with the gRPC status and message on stderr; a server that cannot be reached exits 1.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Optional

import typer
from rich.table import Table

from actors.cp_adapter import CP_DEFAULT_ABOVE, parse_above  # noqa: F401 - the flag's parser, shared with the job entry
from cluster.shell.console import MODELED_NOTE, emit_json, err, json_option, out
from cluster.shell.console import fmt as _fmt

#: Status codes that mean "your request was refused" (exit 2) rather than "the server failed" (exit 1).
REJECTED = {"INVALID_ARGUMENT", "UNAUTHENTICATED", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED",
            "NOT_FOUND", "ALREADY_EXISTS", "FAILED_PRECONDITION", "OUT_OF_RANGE", "UNIMPLEMENTED"}


def _fail(exc: Any) -> typer.Exit:
    code = getattr(exc, "code", "UNKNOWN")
    print(f"flotilla: {'error' if code in REJECTED else 'failed'}: {exc}", file=sys.stderr)
    return typer.Exit(2 if code in REJECTED else 1)


def with_default_fleet(cfg: Any) -> Any:
    """``cfg`` with the packaged example fleet when it names no fleet and no Ray cluster to join
    (``--address`` or ``RAY_ADDRESS``): zero-config ``flotilla serve`` from any directory."""
    import os

    from cluster.shell.serving import example_fleet

    if cfg.fleet or cfg.ray_address or os.environ.get("RAY_ADDRESS", "").strip():
        return cfg
    err.print(f"no --fleet: serving the packaged example fleet ({example_fleet()})")
    return dataclasses.replace(cfg, fleet=example_fleet())


def serve(
    fleet: Optional[str] = typer.Option(None, "--fleet", help="Fleet YAML (embedded Ray); default: the packaged example fleet unless joining a cluster."),
    redis: Optional[str] = typer.Option(None, "--redis", help="State store URL (redis://...); in-memory when omitted."),
    namespace: Optional[str] = typer.Option(None, "--namespace", help="Cluster namespace in the state store."),
    address: Optional[str] = typer.Option(None, "--address", help="Join this Ray cluster (or RAY_ADDRESS) instead of embedding one."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind."),
    port: int = typer.Option(50051, "--port", help="gRPC port (0 picks a free one)."),
    http_port: int = typer.Option(8000, "--http-port", help="OpenAI-compatible HTTP API and /metrics port (0 disables it)."),
    metrics_port: Optional[int] = typer.Option(None, "--metrics-port", help="Prometheus /metrics on a port of its own (for gRPC only)."),
    token: Optional[str] = typer.Option(None, "--token", envvar="FLOTILLA_TOKEN", help="Require this bearer token (prefer $FLOTILLA_TOKEN: arguments show in ps)."),
    apply_token: Optional[str] = typer.Option(None, "--apply-token", envvar="FLOTILLA_APPLY_TOKEN",
                                              help="Bearer token that may also apply plans (Plan apply); none: applying is refused."),
    max_apply_devices: int = typer.Option(64, "--max-apply-devices", help="The most devices an applied plan may request."),
    token_file: Optional[str] = typer.Option(None, "--token-file", help="Read --token from this file (mode 600), not the command line."),
    apply_token_file: Optional[str] = typer.Option(None, "--apply-token-file", help="Read --apply-token from this file (mode 600)."),
    tls_cert: Optional[str] = typer.Option(None, "--tls-cert", help="Serve TLS: the server certificate (PEM); needs --tls-key."),
    tls_key: Optional[str] = typer.Option(None, "--tls-key", help="The TLS private key (PEM)."),
    model: Optional[str] = typer.Option(None, "--model", help="smollm2-135m (default), echo, or a local HF model directory."),
    max_concurrency: int = typer.Option(2, "--max-concurrency", help="Requests served at once per expert."),
    max_queue: int = typer.Option(64, "--max-queue", help="Requests the router admits at once (RESOURCE_EXHAUSTED past it)."),
    experts: Optional[str] = typer.Option(None, "--experts", help="Selection instance JSON (`flotilla experts build`) for SelectExperts."),
    unary_max_tokens: int = typer.Option(1, "--unary-max-tokens",
                                         help="Requests with max_tokens up to this get one unary actor call (text in one chunk; lower latency) instead of a stream; 0: always stream."),
    context_parallel_above: str = typer.Option(str(CP_DEFAULT_ABOVE), "--context-parallel-above",
                                               help="Prompts longer than TOKENS are prefilled and decoded across the fleet's devices (shard solver); off: never."),
    max_context: int = typer.Option(2048, "--max-context", help="Longest prompt + completion an expert serves, tokens (its KV cache reservation)."),
) -> None:
    """Serve the model over gRPC and the OpenAI HTTP API: fleet -> experts -> journaling router -> gateways. Ctrl-C stops it."""
    from actors.router import RouterConfig
    from cluster.config import load_config
    from cluster.exceptions import InputError
    from cluster.shell.gateway import GatewayConfig
    from cluster.shell.openai_api import HttpConfig
    from cluster.shell.secrets import read_secret
    from cluster.shell.serving import ServeConfig, run_until_stopped

    if token_file:
        token = read_secret(token_file, "--token-file")
    if apply_token_file:
        apply_token = read_secret(apply_token_file, "--apply-token-file")
    cfg = with_default_fleet(load_config(redis_url=redis, namespace=namespace, ray_address=address, fleet=fleet))
    if not 0 <= http_port <= 65535:
        raise InputError(f"--http-port: {http_port}; allowed: 1..65535, or 0 to disable the HTTP server")
    if metrics_port is not None and not 1 <= metrics_port <= 65535:
        raise InputError(f"--metrics-port: {metrics_port}; allowed: 1..65535")
    http = HttpConfig(host=host, port=http_port, token=token) if http_port else None
    cp_above = parse_above(context_parallel_above)
    sc = ServeConfig(fleet=cfg.fleet, redis_url=cfg.redis_url, namespace=cfg.namespace, ray_address=cfg.ray_address,
                     model=model, gateway=GatewayConfig(host=host, port=port, token=token, apply_token=apply_token,
                                                        max_apply_devices=max_apply_devices, tls_cert=tls_cert, tls_key=tls_key),
                     http=http, metrics_port=metrics_port,
                     router=RouterConfig(max_queue=max_queue, unary_max_tokens=unary_max_tokens), max_concurrency=max_concurrency, experts=experts,
                     context_parallel_above=cp_above, max_context=max_context)
    run_until_stopped(sc)


def generate(
    prompt: Optional[str] = typer.Argument(None, help="The user message (or --file)."),
    file: Optional[str] = typer.Option(None, "--file", help="Read the user message from this file (a long prompt)."),
    context_parallel: str = typer.Option("auto", "--context-parallel",
                                         help="auto: a long prompt is served across devices; off: by one device."),
    routing: str = typer.Option("plan", "--routing",
                                help="plan: the routing plan picks the device; experts: the fleet's hosted expert "
                                     "that fits the budgets at least modeled energy."),
    energy_budget: Optional[float] = typer.Option(None, "--energy-budget",
                                                  help="With --routing experts: modeled J per query, > 0."),
    latency_budget: Optional[float] = typer.Option(None, "--latency-budget",
                                                   help="With --routing experts: modeled ms per query, > 0."),
    stream: bool = typer.Option(False, "--stream", help="Print tokens as they arrive."),
    max_tokens: int = typer.Option(64, "--max-tokens", help="1..4096."),
    temperature: float = typer.Option(0.0, "--temperature", help="0 is greedy."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus mass, (0, 1]."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Sampling seed."),
    stop: Optional[list[str]] = typer.Option(None, "--stop", help="Stop string (repeatable)."),
    request_id: str = typer.Option("", "--request-id", help="Idempotency key: a retry with it gets the same answer."),
    server: Optional[str] = typer.Option(None, "--server", help="Gateway HOST:PORT (default $FLOTILLA_SERVER or 127.0.0.1:50051)."),
    token: Optional[str] = typer.Option(None, "--token", help="Bearer token (default $FLOTILLA_TOKEN)."),
    tls_ca: Optional[str] = typer.Option(None, "--tls-ca", help="Verify a TLS gateway with this CA certificate (PEM; default $FLOTILLA_TLS_CA)."),
    as_json: bool = json_option(),
) -> None:
    """Send one prompt to the gateway and print the answer with its measured (and modeled) timings."""
    from cluster.shell.client import Client, GenerateResult, RpcError
    from cluster.exceptions import InputError

    if max_tokens < 1:  # 0 would mean "server default" on the wire
        raise InputError(f"--max-tokens: {max_tokens}; allowed: 1..4096")
    if context_parallel not in ("auto", "off"):
        raise InputError(f"--context-parallel: expected auto or off, got {context_parallel!r}")
    if routing not in ("plan", "experts"):
        raise InputError(f"--routing: expected plan or experts, got {routing!r}")
    for flag, v in (("--energy-budget", energy_budget), ("--latency-budget", latency_budget)):
        if v is not None and routing != "experts":
            raise InputError(f"{flag}: only with --routing experts")
        if v is not None and not (v > 0 and v < float("inf")):
            raise InputError(f"{flag}: {v}; allowed: a finite number > 0")
    if (prompt is None) == (file is None):
        raise InputError("prompt: expected the prompt as an argument or --file FILE (exactly one)")
    if file is not None:
        try:
            with open(file, encoding="utf-8") as fh:
                prompt = fh.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"--file: cannot read {file!r} ({exc.__class__.__name__}: {exc})") from None
        if not prompt.strip():
            raise InputError(f"--file: {file!r} is empty")
    kw = dict(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed, stop=stop or [], request_id=request_id,
              context_parallel=context_parallel, routing=routing if routing == "experts" else "",
              energy_budget_j=energy_budget, latency_budget_ms=latency_budget)
    try:
        with Client(server, token=token, tls_ca=tls_ca) as client:
            result = None
            for item in client.stream(prompt, **kw):
                if isinstance(item, GenerateResult):
                    result = item
                elif stream and not as_json:
                    sys.stdout.write(item)
                    sys.stdout.flush()
    except RpcError as exc:
        raise _fail(exc) from None
    assert result is not None  # Client.stream always ends with the final message or raises
    if as_json:
        emit_json(result.to_dict())
        return
    if stream:
        sys.stdout.write("\n")
    else:
        out.print(result.text, markup=False)
    if result.expert:
        err.print(f"[dim]expert {result.expert} on {result.device_id}[/dim]")
    line = (f"{result.device_label} ({result.device_id}): {result.completion_tokens} tokens, measured TTFT "
            f"{result.ttft_ms:.1f} ms, TPOT {result.tpot_ms:.1f} ms")
    if result.modeled_ttft_ms is not None:
        line += (f"; modeled TTFT {result.modeled_ttft_ms:.2f} ms, TPOT {_fmt(result.modeled_tpot_ms, '.3f')} ms, "
                 f"{_fmt(result.modeled_energy_j, '.3f')} J")
    err.print(f"[dim]{line}[/dim]")
    if result.context_parallel:
        cp = result.context_parallel
        err.print(f"[dim]context-parallel {cp['strategy']} over {', '.join(cp['devices'])} (shares "
                  f"{', '.join(map(str, cp['shares']))}); modeled prefill {cp['modeled_prefill_ms']:.3g} ms[/dim]")
    if result.modeled_ttft_ms is not None:
        err.print(f"[dim]{MODELED_NOTE}[/dim]")


def gateway_status(server: str | None, token: str | None, as_json: bool) -> None:
    """Print a gateway's ClusterStatus (``flotilla status``; ``server`` None: ``$FLOTILLA_SERVER`` or
    127.0.0.1:50051, as ``generate``); exits like generate."""
    from google.protobuf.json_format import MessageToDict

    from cluster.shell.client import Client, RpcError

    from cluster.shell.client import default_server

    address = server or default_server()
    try:
        with Client(address, token=token) as client:
            st = client.status()
    except RpcError as exc:
        if exc.code == "UNAVAILABLE":
            print(f"flotilla: failed: UNAVAILABLE: no gateway answers at {address}; start one with `flotilla serve`, "
                  "or pass --server HOST:PORT (or --redis URL for the state store)", file=sys.stderr)
            raise typer.Exit(1) from None
        raise _fail(exc) from None
    if as_json:
        emit_json(MessageToDict(st, preserving_proto_field_name=True, always_print_fields_with_no_presence=True))
        return
    table = Table(title=f"gateway {address}: model {st.model}, {st.admitted}/{st.max_queue} admitted")
    for col in ("replica", "kind", "active", "capacity", "alive"):
        table.add_column(col)
    for r in st.replicas:
        table.add_row(r.device_id, r.kind, str(r.active), str(r.capacity), "yes" if r.alive else "DEAD")
    out.print(table)
    if st.counters:
        out.print("counters: " + ", ".join(f"{k}={v:g}" for k, v in sorted(st.counters.items())))


def demo(
    fleet: Optional[str] = typer.Option(None, "--fleet", help="Fleet YAML (simulated kinds); default: the packaged example fleet."),
    requests: int = typer.Option(10, "--requests", help="How many requests of mixed sizes."),
    model: Optional[str] = typer.Option(None, "--model", help="smollm2-135m (default), echo, or a local model directory."),
    as_json: bool = json_option(),
) -> None:
    """Embedded fleet -> gateway -> a batch of mixed requests through the gRPC client -> a table per device kind."""
    from cluster.shell.job import run_demo
    from cluster.shell.serving import example_fleet

    run_demo(fleet=fleet or example_fleet(), n_requests=requests, model=model, as_json=as_json)


def _is_flotilla_process(pid: int) -> bool:
    """True when ``pid`` is alive and (where /proc shows it) runs flotilla, so a pid reused by
    another program after a crash is never signalled."""
    import os
    from pathlib import Path

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # someone else's process: not ours to stop
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.exists():
        return True
    try:
        text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return True
    return "flotilla" in text or "cluster.shell" in text


def stop(
    server: Optional[str] = typer.Option(None, "--server", envvar="FLOTILLA_SERVER", help="The gateway HOST:PORT to stop (default 127.0.0.1:50051)."),
    timeout: float = typer.Option(60.0, "--timeout", help="Seconds to wait for it to shut down."),
    as_json: bool = json_option(),
) -> None:
    """Stop a gateway that `flotilla serve` started on this host (SIGTERM to the pid in its pidfile under ~/.cache/flotilla/run)."""
    import json
    import os
    import signal
    import time

    from cluster.exceptions import FlotillaError, InputError
    from cluster.shell.serving import pidfile_path

    address = server or "127.0.0.1:50051"
    host, sep, port_s = address.rpartition(":")
    if not sep or not host or not port_s.isdigit() or not 1 <= int(port_s) <= 65535:
        raise InputError(f"--server: expected HOST:PORT with a port in 1..65535, got {address!r}")
    if not timeout > 0:
        raise InputError(f"--timeout: expected seconds > 0, got {timeout}")
    path = pidfile_path(int(port_s))
    try:
        info = json.loads(path.read_text())
        pid = int(info["pid"])
    except FileNotFoundError:
        raise FlotillaError(f"no gateway started on this host listens on port {port_s} (no {path}); "
                            "stop one on another host where it runs") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise FlotillaError(f"{path}: unreadable pidfile ({e}); remove it") from None
    if not _is_flotilla_process(pid):
        path.unlink(missing_ok=True)
        raise FlotillaError(f"the gateway on port {port_s} (pid {pid}) is no longer running; removed its stale pidfile")
    t0 = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    err.print(f"stopping the gateway on {info.get('address', address)} (pid {pid})…")
    while time.monotonic() - t0 < timeout:
        if not _is_flotilla_process(pid):
            break
        time.sleep(0.1)
    else:
        raise FlotillaError(f"the gateway on port {port_s} (pid {pid}) did not stop within {timeout:g} s")
    took = time.monotonic() - t0
    if as_json:
        emit_json({"stopped": True, "address": info.get("address", address), "pid": pid, "seconds": took})
    else:
        out.print(f"stopped the gateway on {info.get('address', address)} (pid {pid}) in {took:.1f} s")


def register(app: typer.Typer) -> None:
    """Add ``serve``, ``generate``, ``demo`` and ``stop`` to ``app``."""
    app.command()(stop)
    app.command()(serve)
    app.command()(generate)
    app.command()(demo)
