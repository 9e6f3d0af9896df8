"""Serving overhead, flotilla beside Ray Serve in one run (never part of ``make test``); prints one
JSON object and, with ``--out``, writes it.

Setup, one local Ray instance (``num_cpus`` 4 on whatever cores the machine has):

* flotilla as ``flotilla serve`` composes it: two simulated rtx4090 echo experts
  (``max_concurrency`` 8 each), the state store (``--redis URL``: Redis, as a fleet runs it;
  without: the in-memory store), and on it two routers (``max_queue`` 512) each with a gRPC
  gateway: the default one (``unary_max_tokens`` 1, so a 4-token request streams through a Ray
  streaming generator) with the OpenAI HTTP server beside it, and one started with
  ``--unary-max-tokens 16`` (one unary actor call per request).
* Ray Serve (the installed version) with an equivalent echo deployment, two replicas
  (``max_ongoing_requests`` 64 each, no CPU reserved, as the experts), behind its HTTP proxy and
  its gRPC proxy (the same ``flotilla.v1.Flotilla/Generate`` service, so the same client).

Paths (``--paths``): ``grpc_unary`` / ``grpc_stream`` (flotilla's gRPC ``Generate`` on the two
gateways), ``http_whole`` / ``http_stream`` (``POST /v1/chat/completions``, ``stream`` false /
true, read to ``data: [DONE]``), ``serve_http`` (Ray Serve's HTTP proxy, the same chat body,
an OpenAI-shaped JSON answer) and ``serve_grpc`` (Ray Serve's gRPC proxy, a chunk then the final
message). Every request is the 4-word prompt "one two three four" with ``max_tokens`` 4; a request
is an error unless it answers with exactly that text.

Load: open loop from a separate process (its own GIL, as a real client has; asyncio with
``grpc.aio`` or ``aiohttp`` keep-alive connections): Poisson arrivals at ``rate`` req/s for
``--seconds`` (seeded), after 30 sequential warm-up requests and 1 s of unrecorded load at the
same rate (so the server's thread and connection pools have grown to it). Latency = arrival of the last byte
minus the scheduled send time (a client that falls behind is charged for it). flotilla's paths
run first, rates in increasing order with the paths interleaved at each rate; then Ray Serve is
started and its paths run the same way (so neither side's idle processes, Serve's controller
and proxies polling in particular, run during the other's measurements). A path whose p99 passes
3x the bound (or that fails) is not run at higher rates.

Reported per path: every run (offered and achieved rate, p50 / p90 / p99 / max latency, errors,
load average, CPU per request of the client and of the server side: this process and Ray's) and ``max_rate_at_p99``: the highest offered rate with p99 <= ``--p99-ms`` (100)
and no errors.

``python -m bench.bench_overhead [--rates 50,100,150,200,300,400] [--seconds 5] [--redis URL] [--out FILE]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from typing import Any

from bench.common import emit, free_ports, machine, percentile, read_sse_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT = "one two three four"
MAX_TOKENS = 4
EXPECTED = "one two three four"
CHAT_BODY = {"model": "echo", "max_tokens": MAX_TOKENS, "temperature": 0,
             "messages": [{"role": "user", "content": PROMPT}]}
#: path -> (client kind, server)
PATHS: dict[str, tuple[str, str]] = {
    "grpc_unary": ("grpc", "flotilla"),
    "grpc_stream": ("grpc", "flotilla"),
    "http_whole": ("http_whole", "flotilla"),
    "http_stream": ("http_stream", "flotilla"),
    "serve_http": ("http_whole", "serve"),
    "serve_grpc": ("grpc", "serve"),
}
KIND = "rtx4090"
WARM_UP = 30
#: Seconds of unrecorded load at the offered rate before each measured run.
WARM_UP_S = 1.0




# ------------------------------------------------------------------------------ the client process


async def _load(kind: str, target: str, rate: float, seconds: float, seed: int) -> dict[str, Any]:
    """Open-loop Poisson load; latencies in ms from each request's scheduled send time."""
    lat: list[float] = []
    errors: dict[str, int] = {}

    def error(what: str) -> None:
        errors[what] = errors.get(what, 0) + 1

    closers: list[Any] = []
    if kind == "grpc":
        import grpc

        from cluster.shell.proto import flotilla_pb2 as pb
        from cluster.shell.proto import flotilla_pb2_grpc as pb_grpc

        channel = grpc.aio.insecure_channel(target)
        closers.append(channel.close)
        stub = pb_grpc.FlotillaStub(channel)
        msg = pb.GenerateRequest(prompt=PROMPT, max_tokens=MAX_TOKENS)

        async def call() -> bool:
            text, final = "", None
            async for r in stub.Generate(msg, timeout=30):
                if r.HasField("chunk"):
                    text += r.chunk.text
                else:
                    final = r.final
            return final is not None and final.text == EXPECTED and text == EXPECTED
    else:
        import aiohttp

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1024),
                                        timeout=aiohttp.ClientTimeout(total=30))
        closers.append(session.close)
        payload = json.dumps(dict(CHAT_BODY, stream=kind == "http_stream")).encode()
        url = target.rstrip("/") + "/chat/completions"
        headers = {"Content-Type": "application/json"}

        async def call() -> bool:
            async with session.post(url, data=payload, headers=headers) as r:
                if r.status != 200:
                    await r.read()
                    raise RuntimeError(f"HTTP {r.status}")
                if kind == "http_whole":
                    doc = await r.json(content_type=None)
                    return doc["choices"][0]["message"]["content"] == EXPECTED
                text, done = await read_sse_text(r)
                return done and text == EXPECTED

    async def one(t_sched: float) -> None:
        try:
            ok = await call()
        except Exception as exc:  # noqa: BLE001 - counted
            code = getattr(exc, "code", None)
            error(str(code()) if callable(code) else str(exc)[:60] if isinstance(exc, RuntimeError) else type(exc).__name__)
            return
        if not ok:
            error("wrong answer")
            return
        lat.append((time.perf_counter() - t_sched) * 1e3)

    async def open_loop(n: int, rng: random.Random) -> float:
        start = time.perf_counter() + 0.01
        t = start
        tasks = []
        for _ in range(n):
            t += rng.expovariate(rate)
            delay = t - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(t)))
        sent_s = time.perf_counter() - start
        await asyncio.gather(*tasks)
        return sent_s

    try:
        for _ in range(WARM_UP):  # the path, the connections and the client's own imports
            await one(time.perf_counter())
        # then WARM_UP_S at the offered rate, not recorded: the server's pools (threads, store
        # connections) grow to this rate's concurrency before it is measured
        await open_loop(max(1, int(rate * WARM_UP_S)), random.Random(seed + 1))
        lat.clear()
        errors.clear()
        cpu0 = time.process_time()
        n = max(1, int(rate * seconds))
        start = time.perf_counter()
        sent_s = await open_loop(n, random.Random(seed))
        wall_s = time.perf_counter() - start
        cpu_s = time.process_time() - cpu0
    finally:
        for close in closers:
            await close()
    return {"requests": n, "sent_rps": n / sent_s, "achieved_rps": len(lat) / wall_s, "ok": len(lat), "errors": errors,
            "p50_ms": percentile(lat, 50), "p90_ms": percentile(lat, 90), "p99_ms": percentile(lat, 99),
            "max_ms": max(lat) if lat else None, "client_cpu_ms_per_request": cpu_s / n * 1e3,
            "load_avg_1m": os.getloadavg()[0]}


def _server_cpu_s() -> float:
    """CPU seconds used so far by this process (the gateways, routers and HTTP server) and its
    descendants (Ray's raylet, GCS and workers: the experts, Ray Serve's proxies and replicas)."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:  # gone meanwhile
            pass
    return total


def _load_in_process(path: str, target: str, rate: float, seconds: float, seed: int) -> dict[str, Any]:
    """One run from a separate process; a run that does not finish in time is recorded as such.
    Also the server side's CPU per request (this process and Ray's, warm-up included): what the
    machine's cores bound the rate by."""
    cpu0 = _server_cpu_s()
    row = _run_client(path, target, rate, seconds, seed)
    if row.get("requests"):
        row["server_cpu_ms_per_request"] = (_server_cpu_s() - cpu0) / (row["requests"] + WARM_UP + int(rate * WARM_UP_S)) * 1e3
    return row


def _run_client(path: str, target: str, rate: float, seconds: float, seed: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.bench_overhead", "--load-against", target, "--client", PATHS[path][0],
           "--rates", str(rate), "--seconds", str(seconds), "--seed", str(seed)]
    row: dict[str, Any] = {"path": path, "rate_rps": rate}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds * 10 + 90, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {**row, "errors": {"client timeout": 1}, "p99_ms": None}
    if done.returncode != 0:
        return {**row, "errors": {"client failed: " + (done.stderr.strip().splitlines() or ["?"])[-1][:80]: 1}, "p99_ms": None}
    return {**row, **json.loads(done.stdout)}


# ------------------------------------------------------------------------------ Ray Serve


def _alias_proto() -> None:
    """Ray Serve pickles gRPC messages between its proxy and replicas; the generated classes name
    their module ``flotilla_pb2``, so that name must import in both."""
    from cluster.shell.proto import flotilla_pb2

    sys.modules.setdefault("flotilla_pb2", flotilla_pb2)


def add_servicer(servicer: Any, server: Any) -> None:
    """The servicer function Ray Serve's gRPC proxy is given: flotilla's Generate service."""
    from cluster.shell.proto import flotilla_pb2_grpc

    _alias_proto()
    flotilla_pb2_grpc.add_FlotillaServicer_to_server(servicer, server)


def _start_serve(http_port: int, grpc_port: int) -> None:
    """The echo deployment on Ray Serve behind its HTTP and gRPC proxies."""
    from ray import serve
    from ray.serve.config import gRPCOptions

    serve.start(http_options={"host": "127.0.0.1", "port": http_port},
                grpc_options=gRPCOptions(port=grpc_port, grpc_servicer_functions=[
                    "bench.bench_overhead.add_servicer"]))

    @serve.deployment(num_replicas=2, max_ongoing_requests=64, ray_actor_options={"num_cpus": 0})
    class Echo:
        """The echo model's answer (the prompt's first ``max_tokens`` words), as flotilla's."""

        def __init__(self) -> None:
            _alias_proto()

        @staticmethod
        def _echo(prompt: str, max_tokens: int) -> tuple[str, int, int]:
            words = prompt.split()
            return " ".join(words[:max_tokens]), len(words), min(len(words), max_tokens)

        async def __call__(self, request: Any) -> Any:
            import uuid

            from starlette.responses import JSONResponse

            body = await request.json()
            prompt = "\n\n".join(m["content"] for m in body["messages"] if m["content"])
            text, p, c = self._echo(prompt, int(body.get("max_tokens") or 64))
            return JSONResponse({
                "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model", "echo"), "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                                                                "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}})

        def Generate(self, request: Any) -> Any:  # noqa: N802 - the gRPC method's name
            from cluster.shell.proto import flotilla_pb2 as pb

            text, p, c = self._echo(request.prompt, request.max_tokens or 64)
            yield pb.GenerateResponse(chunk=pb.Chunk(index=0, text=text))
            yield pb.GenerateResponse(final=pb.Final(text=text, finish_reason="stop",
                                                     usage=pb.Usage(prompt_tokens=p, completion_tokens=c)))

    serve.run(Echo.bind(), name="echo", route_prefix="/v1/chat/completions")


# ------------------------------------------------------------------------------ the run


def bench(rates: list[float], seconds: float, p99_ms: float, paths: tuple[str, ...], redis_url: str | None,
          seed: int) -> dict[str, Any]:
    os.environ["PYTHONPATH"] = os.pathsep.join(x for x in (ROOT, os.environ.get("PYTHONPATH")) if x)
    import ray
    from rich.progress import Progress

    from actors.device import spawn
    from actors.expert import ExpertConfig, spawn_expert
    from actors.router import Router, RouterConfig
    from actors.routing import Replica
    from cluster.catalog import default_catalog
    from cluster.shell.gateway import Gateway, GatewayConfig
    from cluster.shell.metrics import Metrics
    from cluster.shell.openai_api import HttpConfig, HttpServer, OpenAIApp
    from cluster.state import open_store

    ray.init(address="local", num_cpus=4, resources={f"device:{KIND}": 2}, include_dashboard=False,
             logging_level="ERROR")
    stores: list[Any] = []
    servers: list[Any] = []
    try:
        spec = default_catalog().get(KIND)
        devs = [spawn(spec, f"{KIND}-{i}") for i in range(2)]
        exps = [spawn_expert(d, KIND, f"{KIND}-{i}", ExpertConfig(model="echo", max_concurrency=8))
                for i, d in enumerate(devs)]
        targets: dict[str, str] = {}

        def gateway(unary_max_tokens: int) -> tuple[Router, Gateway, Metrics]:
            store = open_store(redis_url, namespace=f"bench-overhead-{os.getpid()}-{unary_max_tokens}")
            store.clear()
            stores.append(store)
            router = Router(store, [Replica(f"{KIND}-{i}", KIND, e, 8) for i, e in enumerate(exps)],
                            RouterConfig(max_queue=512, unary_max_tokens=unary_max_tokens))
            router.start()
            metrics = Metrics(router)
            gw = Gateway(router, store, GatewayConfig(port=0), "echo", metrics=metrics).start()
            servers.append(lambda: gw.stop(0.5))
            return router, gw, metrics

        router, gw, metrics = gateway(1)
        targets["grpc_stream"] = gw.address
        http = HttpServer(HttpConfig(port=0)).start(OpenAIApp(router, "echo", metrics=metrics))
        servers.insert(0, http.stop)
        targets["http_whole"] = targets["http_stream"] = http.base_url
        targets["grpc_unary"] = gateway(16)[1].address
        runs: list[dict[str, Any]] = []
        saturated: set[str] = set()
        with Progress(transient=True) as progress:
            task = progress.add_task("rates x paths", total=len(rates) * len(paths))
            for server in ("flotilla", "serve"):  # Ray Serve starts after flotilla's runs
                group = [p for p in paths if PATHS[p][1] == server]
                if not group:
                    continue
                if server == "serve":
                    http_port, grpc_port = free_ports(2)
                    _start_serve(http_port, grpc_port)
                    targets["serve_http"] = f"http://127.0.0.1:{http_port}/v1"
                    targets["serve_grpc"] = f"127.0.0.1:{grpc_port}"
                for rate in rates:
                    for path in group:
                        progress.update(task, description=f"{path} at {rate:g} req/s")
                        if path not in saturated:
                            run = _load_in_process(path, targets[path], rate, seconds, seed)
                            runs.append(run)
                            if run["errors"] or run["p99_ms"] is None or run["p99_ms"] > 3 * p99_ms:
                                saturated.add(path)
                        progress.advance(task)
        summary = {}
        for path in paths:
            good = [r["rate_rps"] for r in runs if r["path"] == path and not r["errors"]
                    and r["p99_ms"] is not None and r["p99_ms"] <= p99_ms]
            summary[path] = {"server": PATHS[path][1], "max_rate_at_p99": max(good) if good else None}
        versions = {"ray": ray.__version__}
        return {"p99_bound_ms": p99_ms, "seconds_per_run": seconds, "seed": seed, "versions": versions,
                "store": "redis" if redis_url else "memory", "runs": runs, "summary": summary}
    finally:
        for stop in servers:
            try:
                stop()
            except Exception:  # noqa: BLE001 - shutting down anyway
                pass
        for store in stores:
            try:
                store.clear()
                store.close()
            except Exception:  # noqa: BLE001
                pass
        if any(PATHS[p][1] == "serve" for p in paths):
            try:
                from ray import serve

                serve.shutdown()
            except Exception:  # noqa: BLE001
                pass
        ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_overhead")
    ap.add_argument("--rates", default="50,100,150,200,300,400", help="Offered rates, req/s, comma-separated.")
    ap.add_argument("--seconds", type=float, default=5.0, help="Seconds of load per run.")
    ap.add_argument("--p99-ms", type=float, default=100.0, help="The p99 bound, ms.")
    ap.add_argument("--paths", default=",".join(PATHS), help=f"Comma-separated subset of: {', '.join(PATHS)}.")
    ap.add_argument("--redis", default=None, help="State store URL (redis://...); in-memory when omitted.")
    ap.add_argument("--seed", type=int, default=1, help="Seed of the arrival times.")
    ap.add_argument("--out", default=None, help="Also write the JSON here.")
    ap.add_argument("--load-against", default=None, help=argparse.SUPPRESS)  # the client process
    ap.add_argument("--client", default="grpc", choices=("grpc", "http_whole", "http_stream"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    try:
        rates = [float(x) for x in args.rates.split(",") if x.strip()]
    except ValueError:
        rates = []
    if not rates or any(not 0 < r <= 100_000 for r in rates):
        print(f"bench_overhead: error: --rates: {args.rates!r}; expected positive numbers, comma-separated", file=sys.stderr)
        return 2
    if not 0 < args.seconds <= 600:
        print(f"bench_overhead: error: --seconds: {args.seconds}; allowed: (0, 600]", file=sys.stderr)
        return 2
    paths = tuple(p for p in args.paths.split(",") if p)
    if not paths or any(p not in PATHS for p in paths):
        print(f"bench_overhead: error: --paths: {args.paths!r}; allowed: {', '.join(PATHS)}", file=sys.stderr)
        return 2
    if args.load_against:
        print(json.dumps(asyncio.run(_load(args.client, args.load_against, rates[0], args.seconds, args.seed))))
        return 0
    result = {"machine": machine(), "command": "python -m bench.bench_overhead " + " ".join(argv or sys.argv[1:]),
              **bench(sorted(rates), args.seconds, args.p99_ms, paths, args.redis, args.seed)}
    result["machine"]["load_avg_1m_after"] = os.getloadavg()[0]
    return emit(result, args.out)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
