"""OpenAI HTTP path throughput at a p99 bound (never part of ``make test``); prints one JSON object
and, with ``--out``, writes it.

Setup: one local Ray instance, two simulated rtx4090 echo experts (``max_concurrency`` 8 each),
one Router (``max_queue`` 512), the gRPC gateway and the OpenAI HTTP server on it, as
``flotilla serve`` composes them. The echo model does no work, so what is measured is the serving
path: HTTP parsing, validation, router, Ray actor calls, response rendering.

Load: open loop from a separate process (its own GIL, as a real client has; asyncio + aiohttp with
keep-alive connections): ``rate`` requests/s for ``--seconds``, each a 4-word chat request with
``max_tokens`` 4. For every variant (``whole``: non-streamed ``/v1/chat/completions``;
``stream``: the same with ``stream: true``, read to ``data: [DONE]``), rates from ``--rates`` are
run in increasing order, variants interleaved at each rate (whole, stream, whole, stream, ...).
Latency = arrival of the last byte minus the scheduled send time (so a client that falls behind
is charged for it); for streams also the time to the first content chunk. A request is an error
unless it answers 200 with the expected text.

The reference, in the same run on the same router and experts: ``grpc_stream``, the gRPC
gateway's streaming path (4 tokens > ``unary_max_tokens``), loaded by ``bench.bench_serving``'s
client process. A variant whose p99 passes 3x the bound (or that fails) is not run at higher rates.

Reported per variant: p50 / p90 / p99 / max latency at each rate, errors, achieved rate, and
``max_rate_at_p99``: the highest offered rate with p99 <= ``--p99-ms`` (100) and no errors.

``python -m bench.bench_http [--rates 50,100,200,300,400] [--seconds 5] [--out FILE]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

from bench.common import emit, machine, percentile, read_sse_text

BODY = {"model": "echo", "max_tokens": 4, "temperature": 0,
        "messages": [{"role": "user", "content": "one two three four"}]}
EXPECTED = "one two three four"
VARIANTS = ("whole", "stream")
#: The reference in the same run: the gRPC gateway's streaming path on the same router and experts,
#: loaded by ``bench.bench_serving``'s client process (threads + the sync gRPC client; latency from
#: the actual send time, so it is charged less than the HTTP variants when the client falls behind).
REFERENCE = "grpc_stream"


async def _load(url: str, variant: str, rate: float, seconds: float) -> dict[str, Any]:
    """Open-loop load against ``url`` (the server's /v1 base); latencies in ms."""
    import aiohttp

    body = dict(BODY, stream=variant == "stream")
    payload = json.dumps(body).encode()
    lat: list[float] = []
    ttft: list[float] = []
    errors: dict[str, int] = {}

    def error(kind: str) -> None:
        errors[kind] = errors.get(kind, 0) + 1

    async def one(session: Any, t_sched: float) -> None:
        try:
            async with session.post(f"{url}/chat/completions", data=payload,
                                    headers={"Content-Type": "application/json"}) as r:
                if r.status != 200:
                    error(str(r.status))
                    await r.read()
                    return
                if variant == "whole":
                    doc = await r.json()
                    ok = doc["choices"][0]["message"]["content"] == EXPECTED
                else:
                    first: list[float] = []
                    text, done = await read_sse_text(r, lambda: first.append(time.perf_counter()))
                    ok = done and text == EXPECTED
                    if ok and first:
                        ttft.append((first[0] - t_sched) * 1e3)
                if not ok:
                    error("wrong answer")
                    return
                lat.append((time.perf_counter() - t_sched) * 1e3)
        except Exception as exc:  # noqa: BLE001 - counted
            error(type(exc).__name__)

    conn = aiohttp.TCPConnector(limit=512)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=60)) as session:
        for _ in range(30):  # warm the path and the connection pool
            await one(session, time.perf_counter())
        lat.clear(), ttft.clear(), errors.clear()
        n = int(rate * seconds)
        start = time.perf_counter()
        tasks = []
        for i in range(n):
            t_sched = start + i / rate
            delay = t_sched - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(session, t_sched)))
        sent_s = time.perf_counter() - start
        await asyncio.gather(*tasks)
    return {"variant": variant, "rate_rps": rate, "requests": n, "sent_rps": n / sent_s, "ok": len(lat),
            "errors": errors, "p50_ms": percentile(lat, 50), "p90_ms": percentile(lat, 90), "p99_ms": percentile(lat, 99),
            "max_ms": max(lat) if lat else None, "ttft_p50_ms": percentile(ttft, 50), "ttft_p99_ms": percentile(ttft, 99),
            "load_avg_1m": os.getloadavg()[0]}


def _load_in_process(target: str, variant: str, rate: float, seconds: float) -> dict[str, Any]:
    """One open-loop run from a separate process; a run that does not finish in time is recorded
    as such (errors {"client timeout": 1}), never dropped."""
    if variant == REFERENCE:
        cmd = [sys.executable, "-m", "bench.bench_serving", "--load-against", target, "--rate", str(rate),
               "--seconds", str(seconds)]
    else:
        cmd = [sys.executable, "-m", "bench.bench_http", "--load-against", target, "--variant", variant,
               "--rates", str(rate), "--seconds", str(seconds)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds * 10 + 90)
    except subprocess.TimeoutExpired:
        return {"variant": variant, "rate_rps": rate, "errors": {"client timeout": 1}, "p99_ms": None}
    doc = json.loads(done.stdout)
    if variant == REFERENCE:
        doc = {"variant": variant, **doc, "errors": {"refused": doc["refused"]} if doc.get("refused") else {}}
    return doc


def bench(rates: list[float], seconds: float, p99_ms: float, variants: tuple[str, ...] = (*VARIANTS, REFERENCE)) -> dict[str, Any]:
    import ray
    from rich.progress import Progress

    from actors.device import spawn
    from actors.expert import ExpertConfig, spawn_expert
    from actors.routing import Replica
    from actors.router import Router, RouterConfig
    from cluster.catalog import default_catalog
    from cluster.shell.gateway import Gateway, GatewayConfig
    from cluster.shell.metrics import Metrics
    from cluster.shell.openai_api import HttpConfig, HttpServer, OpenAIApp
    from cluster.state import open_store

    kind = "rtx4090"
    ray.init(address="local", num_cpus=4, resources={f"device:{kind}": 2}, include_dashboard=False, logging_level="ERROR")
    try:
        spec = default_catalog().get(kind)
        devs = [spawn(spec, f"{kind}-{i}") for i in range(2)]
        exps = [spawn_expert(d, kind, f"{kind}-{i}", ExpertConfig(model="echo", max_concurrency=8)) for i, d in enumerate(devs)]
        store = open_store(None)
        router = Router(store, [Replica(f"{kind}-{i}", kind, e, 8) for i, e in enumerate(exps)], RouterConfig(max_queue=512))
        router.start()
        metrics = Metrics(router)
        gw = Gateway(router, store, GatewayConfig(port=0, max_workers=64, max_rpcs=1024), "echo", metrics=metrics).start()
        http = HttpServer(HttpConfig(port=0, threads=256)).start(OpenAIApp(router, "echo", metrics=metrics, threads=256))
        runs: list[dict[str, Any]] = []
        try:
            saturated: set[str] = set()  # past 3x the p99 bound (or failing): higher rates are not run
            with Progress(transient=True) as progress:
                task = progress.add_task("rates x variants", total=len(rates) * len(variants))
                for rate in rates:
                    for variant in variants:
                        progress.update(task, description=f"{variant} at {rate:g} req/s")
                        if variant not in saturated:
                            target = gw.address if variant == REFERENCE else http.base_url
                            run = _load_in_process(target, variant, rate, seconds)
                            runs.append(run)
                            if run["errors"] or run["p99_ms"] is None or run["p99_ms"] > 3 * p99_ms:
                                saturated.add(variant)
                        progress.advance(task)
        finally:
            http.stop()
            gw.stop(0.5)
        summary = {}
        for variant in variants:
            good = [r["rate_rps"] for r in runs if r["variant"] == variant and not r["errors"]
                    and r["p99_ms"] is not None and r["p99_ms"] <= p99_ms]
            summary[variant] = {"max_rate_at_p99": max(good) if good else None}
        return {"p99_bound_ms": p99_ms, "seconds_per_run": seconds, "runs": runs, "summary": summary}
    finally:
        ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_http")
    ap.add_argument("--rates", default="50,100,200,300,400", help="Offered rates, req/s, comma-separated.")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--p99-ms", type=float, default=100.0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--variants", default=",".join((*VARIANTS, REFERENCE)), help="Comma-separated subset to run.")
    ap.add_argument("--load-against", default=None, help=argparse.SUPPRESS)  # the client process
    ap.add_argument("--variant", default="whole", choices=VARIANTS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    rates = [float(x) for x in args.rates.split(",") if x.strip()]
    if not rates or any(not 0 < r <= 100_000 for r in rates):
        print(f"bench_http: error: --rates: {args.rates!r}; expected positive numbers, comma-separated", file=sys.stderr)
        return 2
    variants = tuple(v for v in args.variants.split(",") if v)
    if not variants or any(v not in (*VARIANTS, REFERENCE) for v in variants):
        print(f"bench_http: error: --variants: {args.variants!r}; allowed: {', '.join((*VARIANTS, REFERENCE))}", file=sys.stderr)
        return 2
    if args.load_against:
        print(json.dumps(asyncio.run(_load(args.load_against, args.variant, rates[0], args.seconds))))
        return 0
    result = {"machine": machine(), "command": "python -m bench.bench_http " + " ".join(argv or sys.argv[1:]),
              **bench(sorted(rates), args.seconds, args.p99_ms, variants)}
    return emit(result, args.out)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
