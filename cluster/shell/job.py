"""Entry points for Ray job submission and the demo.

* ``python -m cluster.shell.job serve [--port N] [--http-port N] [--model M] [--token T] [--redis URL]
  [--context-parallel-above TOKENS|off]``:
  run the serving path on the Ray cluster the job runs in (``ray job submit --working-dir . -- python -m
  cluster.shell.job serve``; Ray sets ``RAY_ADDRESS`` for the job, so it joins that cluster and serves
  the devices its nodes advertise as ``device:<kind>`` resources). It runs until the job is stopped.
  Joining fails fast with one line (exit 1): an address that does not answer within
  :data:`CONNECT_TIMEOUT_S`, a cluster that requires token authentication while ``RAY_AUTH_MODE``
  is not ``token``, and a cluster whose nodes advertise no ``device:<kind>`` resource (nothing to serve).
* ``python -m cluster.shell.job demo [--fleet FILE] [--requests N] [--model M] [--json]``: the ``make demo``
  walk-through (embedded fleet of simulated kinds -> gateway -> mixed requests through the gRPC
  client -> a table per device kind -> clean shutdown).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from cluster.exceptions import FlotillaError

#: Seconds to wait for a Ray cluster's address to answer before giving up (``serve --address``).
CONNECT_TIMEOUT_S = 10.0

ADVERTISE_HINT = ("start each node with ray start --resources=\"$(python -m cluster.runtime resources)\" "
                  "or --resources='{\"device:<kind>\": N}'")


class JoinError(FlotillaError):
    """The Ray cluster to join cannot be used (unreachable, auth missing, nothing to serve): exit 1."""


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a Ray address (``HOST:PORT``, ``ray://HOST:PORT``, ``http://HOST:PORT``);
    None for ``auto``/``local`` and other forms Ray resolves itself."""
    rest = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return None
    return host.strip("[]"), int(port)


def check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """JoinError naming ``address`` unless a TCP connection to it opens and a gRPC (HTTP/2)
    channel, which Ray's GCS speaks, becomes ready within ``timeout_s`` (``ray.init`` itself
    retries a dead or wrong address, e.g. the Redis port, for minutes)."""
    import socket

    import grpc

    hp = _host_port(address)
    if hp is None:
        return
    t0 = time.monotonic()
    try:
        with socket.create_connection(hp, timeout=timeout_s):
            pass
    except OSError as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise JoinError(f"--address {address}: no Ray cluster answers there within {timeout_s:g} s ({why})") from None
    if address.split("://", 1)[0] in ("http", "https"):
        return  # a dashboard address (HTTP/1): ray.init resolves it itself
    channel = grpc.insecure_channel(f"{hp[0]}:{hp[1]}")
    try:
        try:
            grpc.channel_ready_future(channel).result(timeout=max(0.1, timeout_s - (time.monotonic() - t0)))
        except grpc.FutureTimeoutError:
            raise JoinError(f"--address {address}: no Ray cluster answers there within {timeout_s:g} s "
                            "(the port is open but does not speak gRPC; is it Ray's GCS port, 6379 by default?)") from None
        _check_token_auth(channel, address, timeout_s)
    finally:
        channel.close()


def _check_token_auth(channel: Any, address: str, timeout_s: float) -> None:
    """Without ``RAY_AUTH_MODE=token``, ask the GCS for its cluster id as ``ray.init`` would
    (no token): a cluster that requires one answers UNAUTHENTICATED at once, where ``ray.init``
    retries for half a minute. Any other answer is left to ``ray.init``."""
    import grpc

    if (os.environ.get("RAY_AUTH_MODE") or "").strip().lower() == "token":
        return
    call = channel.unary_unary("/ray.rpc.NodeInfoGcsService/GetClusterId",
                               request_serializer=lambda b: b, response_deserializer=lambda b: b)
    try:
        call(b"", timeout=timeout_s)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
            raise JoinError(_auth_message(address)) from None


def _auth_message(address: str) -> str:
    mode = os.environ.get("RAY_AUTH_MODE") or "unset"
    return (f"the Ray cluster at {address} requires token authentication (RAY_AUTH_MODE is {mode}): "
            "set RAY_AUTH_MODE=token and the cluster's token in RAY_AUTH_TOKEN or ~/.ray/auth_token")


def _is_auth_error(exc: BaseException) -> bool:
    """True for Ray's token-authentication failures (AuthenticationError, InvalidAuthToken,
    UNAUTHENTICATED), anywhere in the exception's chain."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        text = f"{type(e).__name__} {e}"
        if any(w in text for w in ("AuthenticationError", "InvalidAuthToken", "UNAUTHENTICATED", "Unauthenticated")):
            return True
        e = e.__cause__ or e.__context__
    return False


def join_cluster(address: str, *, namespace: str = "flotilla", timeout_s: float = CONNECT_TIMEOUT_S) -> int:
    """Join the Ray cluster at ``address`` and return how many ``device:<kind>`` units its alive
    nodes advertise; JoinError (one line) when it cannot be reached, needs ``RAY_AUTH_MODE=token``,
    or advertises no device."""
    import ray

    from cluster.runtime import slots_from_nodes

    if address != "auto":
        check_reachable(address, timeout_s)
    if not ray.is_initialized():
        try:
            ray.init(address=address, namespace=namespace, logging_level="ERROR", log_to_driver=False)
        except Exception as exc:  # noqa: BLE001 - Ray raises many kinds here; each becomes one line
            if _is_auth_error(exc):
                raise JoinError(_auth_message(address)) from None
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise JoinError(f"--address {address}: cannot join the Ray cluster: {first}") from None
    slots = slots_from_nodes(ray.nodes())
    if not slots:
        ray.shutdown()
        raise JoinError(f"the Ray cluster at {address} advertises no device:<kind> resources, so there are 0 experts "
                        f"to serve: {ADVERTISE_HINT}")
    return len(slots)


DEMO_PROMPTS = (
    ("What is the capital of France?", 16),
    ("Name three primary colours.", 24),
    ("Explain in two sentences why the sky is blue.", 48),
    ("Write a haiku about a small boat in a large fleet.", 32),
    ("Give one tip for writing clear error messages.", 40),
    ("What is 12 times 12?", 12),
)


def demo_rows(results: list[Any], price_per_hour: dict[str, float | None]) -> list[dict[str, Any]]:
    """Per device kind: request count, mean measured TTFT / TPOT (ms), total modeled device time
    (ms) and energy (J), and modeled cost = price/h x modeled time / 3600 s (None without a price)."""
    by_kind: dict[str, list[Any]] = {}
    for r in results:
        by_kind.setdefault(r.device_kind, []).append(r)
    rows = []
    for kind, rs in sorted(by_kind.items()):
        has_model = any(r.modeled_e2e_ms is not None for r in rs)
        modeled_ms = sum(r.modeled_e2e_ms or 0.0 for r in rs) if has_model else None
        price = price_per_hour.get(kind)
        rows.append({
            "device_kind": kind,
            "label": rs[0].device_label,
            "requests": len(rs),
            "tokens": sum(r.completion_tokens for r in rs),
            "measured_ttft_ms": statistics.fmean(r.ttft_ms for r in rs),
            "measured_tpot_ms": statistics.fmean(r.tpot_ms for r in rs),
            "modeled_time_ms": modeled_ms,
            "modeled_energy_j": sum(r.modeled_energy_j or 0.0 for r in rs) if has_model else None,
            "modeled_cost_usd": None if price is None or modeled_ms is None else price * modeled_ms / 1e3 / 3600,
        })
    return rows


def run_demo(*, fleet: str, n_requests: int = 10, model: str | None = None,
             as_json: bool = False) -> dict[str, Any]:
    from rich.table import Table

    from cluster.shell.client import Client
    from cluster.shell.console import MODELED_NOTE, emit_json, line, out, status
    from cluster.shell.console import fmt as _fmt
    from cluster.probe import probed_catalog
    from cluster.exceptions import InputError
    from cluster.shell.gateway import GatewayConfig
    from cluster.shell.serving import ServeConfig, start_serving

    if not 1 <= n_requests <= 1000:
        raise InputError(f"requests: {n_requests}; allowed: 1..1000")
    t0 = time.perf_counter()
    with status("starting the embedded fleet, its experts and the gateway…"):
        serving = start_serving(ServeConfig(fleet=fleet, model=model, gateway=GatewayConfig(port=0)), progress=line)
    startup_s = time.perf_counter() - t0
    try:
        prompts = [DEMO_PROMPTS[i % len(DEMO_PROMPTS)] for i in range(n_requests)]
        with Client(serving.gateway.address) as client, ThreadPoolExecutor(max_workers=4) as pool:
            client.wait_ready(30)
            with status(f"sending {n_requests} requests through gRPC…"):
                t1 = time.perf_counter()
                results = list(pool.map(lambda p: client.generate(p[0], max_tokens=p[1]), prompts))
                wall_s = time.perf_counter() - t1
        catalog = probed_catalog()
        prices = {k: catalog.get(k).price_per_hour for k in {r.device_kind for r in results}}
        rows = demo_rows(results, prices)
        summary = {"startup_s": startup_s, "wall_s": wall_s, "requests": n_requests, "by_kind": rows,
                   "samples": [{"prompt": p[0], "answer": r.text, "device": r.device_id} for p, r in zip(prompts, results)][:3],
                   "note": MODELED_NOTE}
        if as_json:
            emit_json(summary)
            return summary
        for s in summary["samples"]:
            out.print(f"[bold]{s['prompt']}[/bold] -> ({s['device']}) {s['answer']}", markup=True, highlight=False)
        simulated = all(r["label"].startswith("simulated") for r in rows)
        where = " — every device simulated on this CPU" if simulated else ""
        table = Table(title=f"{n_requests} requests in {wall_s:.1f} s (startup {startup_s:.1f} s){where}")
        for col in ("kind", "req", "tok", "TTFT\nms", "TPOT\nms", "modeled\nms", "modeled\nJ", "modeled\nµ$"):
            if col == "kind":
                table.add_column(col, no_wrap=True, min_width=max(len(r["device_kind"]) for r in rows) if rows else 4)
            else:
                table.add_column(col, justify="right")
        for r in rows:
            mark = not simulated and r["label"].startswith("simulated")  # mixed fleet: say which rows are simulated
            kind = f"{r['device_kind']} (simulated)" if mark else r["device_kind"]
            table.add_row(kind, str(r["requests"]), str(r["tokens"]), f"{r['measured_ttft_ms']:.0f}",
                          f"{r['measured_tpot_ms']:.0f}", _fmt(r["modeled_time_ms"], ".1f"), _fmt(r["modeled_energy_j"], ".2f"),
                          "—" if r["modeled_cost_usd"] is None else f"{r['modeled_cost_usd'] * 1e6:.1f}")
        out.print(table)
        out.print(f"TTFT / TPOT: measured on the hardware each expert runs on; {MODELED_NOTE}.")
        return summary
    finally:
        with status("shutting down…"):
            serving.shutdown()


def serve_config(args: argparse.Namespace) -> Any:
    """The :class:`~cluster.shell.serving.ServeConfig` of ``serve``'s parsed flags (settings file <
    environment < flags); InputError naming a bad flag. The Ray address is ``--address``, else
    ``RAY_ADDRESS``, else ``auto`` (the cluster the job runs in) unless a fleet is embedded."""
    from actors.cp_adapter import CP_DEFAULT_ABOVE, parse_above
    from cluster.config import load_config
    from cluster.exceptions import InputError
    from cluster.shell.gateway import GatewayConfig
    from cluster.shell.openai_api import HttpConfig
    from cluster.shell.serving import ServeConfig

    cp_above = parse_above(str(CP_DEFAULT_ABOVE) if args.context_parallel_above is None else args.context_parallel_above)
    if not 0 <= args.http_port <= 65535:
        raise InputError(f"--http-port: {args.http_port}; allowed: 1..65535, or 0 to disable the HTTP server")
    cfg = load_config(redis_url=args.redis, namespace=args.namespace, ray_address=args.address, fleet=args.fleet)
    address = cfg.ray_address or os.environ.get("RAY_ADDRESS") or ("auto" if not cfg.fleet else None)
    http = HttpConfig(host=args.host, port=args.http_port, token=args.token) if args.http_port else None
    return ServeConfig(fleet=cfg.fleet, redis_url=cfg.redis_url, namespace=cfg.namespace, ray_address=address,
                       model=args.model, gateway=GatewayConfig(host=args.host, port=args.port, token=args.token),
                       http=http, context_parallel_above=cp_above)


def parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m cluster.shell.job``."""
    parser = argparse.ArgumentParser(prog="python -m cluster.shell.job")
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="serve on the Ray cluster this job runs in")
    s.add_argument("--port", type=int, default=50051)
    s.add_argument("--http-port", type=int, default=8000,
                   help="OpenAI-compatible HTTP API and /metrics port (0 disables it)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--model", default=None)
    s.add_argument("--token", default=os.environ.get("FLOTILLA_TOKEN") or None)
    s.add_argument("--redis", default=None)
    s.add_argument("--namespace", default=None)
    s.add_argument("--address", default=None)
    s.add_argument("--fleet", default=None)
    s.add_argument("--context-parallel-above", default=None, metavar="TOKENS|off",
                   help="prompts longer than TOKENS are prefilled and decoded across the cluster's devices "
                        "(shard solver); off: never (default: 1024, as flotilla serve)")
    d = sub.add_parser("demo", help="the make demo walk-through")
    d.add_argument("--fleet", default=None, help="fleet YAML (default: the packaged example fleet)")
    d.add_argument("--requests", type=int, default=10)
    d.add_argument("--model", default=None)
    d.add_argument("--json", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.cmd == "demo":
            from cluster.shell.console import reserve_stdout_for_json
            from cluster.shell.serving import example_fleet

            with reserve_stdout_for_json() if args.json else contextlib.nullcontext():
                run_demo(fleet=args.fleet or example_fleet(), n_requests=args.requests, model=args.model, as_json=args.json)
            return 0
        from cluster.shell.console import line
        from cluster.shell.serving import run_until_stopped

        sc = serve_config(args)  # every flag checked before joining anything
        if sc.ray_address is not None:
            line(f"joining the Ray cluster at {sc.ray_address}…")
            n = join_cluster(sc.ray_address)
            line(f"joined: {n} devices advertised; starting their experts and the gateway…")
        run_until_stopped(sc)
        return 0
    except FlotillaError as exc:
        from cluster.shell.console import exit_code_for

        return exit_code_for(exc)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
