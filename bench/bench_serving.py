"""Serving benchmarks (never part of ``make test``); prints one JSON object and, with ``--out``, writes it.

1. **decode**: decode tokens/s of flotilla's generation loop (:func:`actors.llm.generate.stream_generate`)
   against plain transformers ``model.generate`` on the same model, process and thread count,
   interleaved ``--reps`` times (ratio of medians); and of the same loop inside an ExpertActor
   (Ray gives an actor with 0.5 CPU one torch thread, so that figure is reported, not compared).
   Decode rate = ``(n - 1) / (t_total - t_prefill)`` with ``n`` generated tokens and ``t_prefill``
   the time to the first token (measured separately for ``generate`` with ``max_new_tokens=1``).
2. **overhead**: gateway + router + Ray per-request latency with the echo model, open loop at
   ``--rate`` requests/s for ``--seconds``: client-observed latency of a 4-word request minus
   nothing (the echo model does no work); p50 / p99 / max in ms, and requests refused. The
   variants of :data:`PATHS` (streaming generator vs one unary actor call,
   ``RouterConfig.unary_max_tokens``; the load generator in the gateway's process or in its own)
   are run on the same experts, interleaved ``--reps`` times.

``python -m bench.bench_serving [--part decode|overhead|all] [--out FILE]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.common import emit, machine, percentile

PROMPT = "Write a long story about a fleet of small boats crossing the sea."


def bench_decode(n_tokens: int, reps: int) -> dict[str, Any]:
    import torch

    from actors.llm.generate import Completion, SamplingParams, encode_prompt, stream_generate
    from actors.llm.loader import load

    lm = load(None, engine="transformers")  # theirs() calls transformers' generate on the same model
    ids = encode_prompt(lm.tokenizer, PROMPT)
    inp = torch.tensor([ids])
    params = SamplingParams(max_tokens=n_tokens)

    def ours() -> float:
        final = [e for e in stream_generate(lm.model, lm.tokenizer, ids, params) if isinstance(e, Completion)][0]
        return (final.completion_tokens - 1) / (final.e2e_s - final.ttft_s)

    def theirs() -> float:
        with torch.inference_mode():
            t0 = time.perf_counter()
            lm.model.generate(inp, attention_mask=torch.ones_like(inp), max_new_tokens=1, do_sample=False)
            t_pre = time.perf_counter() - t0
            t0 = time.perf_counter()
            out = lm.model.generate(inp, attention_mask=torch.ones_like(inp), max_new_tokens=n_tokens, min_new_tokens=n_tokens,
                                    do_sample=False)
            total = time.perf_counter() - t0
        n = out.shape[1] - inp.shape[1]
        return (n - 1) / (total - t_pre)

    ours(), theirs()  # warm up
    a, b = [], []
    for _ in range(reps):
        a.append(ours())
        b.append(theirs())
    return {"n_tokens": n_tokens, "reps": reps, "ours_tok_s": a, "transformers_tok_s": b,
            "ratio_of_medians": statistics.median(a) / statistics.median(b)}


def bench_actor_decode(n_tokens: int) -> dict[str, Any]:
    import ray

    from actors.device import spawn
    from actors.expert import ExpertConfig, spawn_expert
    from cluster.catalog import default_catalog

    kind = "rtx4090"
    ray.init(address="local", num_cpus=4, resources={f"device:{kind}": 1}, include_dashboard=False, logging_level="ERROR")
    try:
        dev = spawn(default_catalog().get(kind), f"{kind}-0")
        exp = spawn_expert(dev, kind, f"{kind}-0", ExpertConfig())
        req = {"prompt": PROMPT, "max_tokens": n_tokens}
        ray.get(exp.generate.remote(req))
        finals = [ray.get(exp.generate.remote(req)) for _ in range(3)]
        rates = [(f["completion_tokens"] - 1) / (f["e2e_s"] - f["ttft_s"]) for f in finals]
        return {"actor_tok_s": rates, "completion_tokens": [f["completion_tokens"] for f in finals]}
    finally:
        ray.shutdown()


def _open_loop(client: Any, rate: float, seconds: float) -> dict[str, Any]:
    """Open-loop load of 4-word, 4-token echo requests at ``rate`` req/s; client-observed latency."""
    from cluster.shell.client import RpcError

    lat: list[float] = []
    refused = [0]
    lock = threading.Lock()

    def one() -> None:
        t0 = time.perf_counter()
        try:
            client.generate("one two three four", max_tokens=4)
        except RpcError:
            with lock:
                refused[0] += 1
            return
        with lock:
            lat.append((time.perf_counter() - t0) * 1e3)

    n = int(rate * seconds)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=64) as pool:
        for i in range(n):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(one)
    achieved = n / (time.perf_counter() - start)
    return {"rate_rps": rate, "achieved_rps": achieved, "requests": n, "refused": refused[0],
            "p50_ms": percentile(lat, 50), "p90_ms": percentile(lat, 90), "p99_ms": percentile(lat, 99),
            "max_ms": max(lat), "load_avg_1m": os.getloadavg()[0]}


#: Variants compared by the overhead benchmark: the router's dispatch path
#: (``RouterConfig.unary_max_tokens``; 0: streaming generator) and the gateway's RPC threads
#: (``GatewayConfig.max_workers``).
PATHS: dict[str, dict[str, int]] = {
    "stream": {"unary_max_tokens": 0, "max_workers": 64},
    "unary": {"unary_max_tokens": 16, "max_workers": 64},
    "unary_client_process": {"unary_max_tokens": 16, "max_workers": 64, "client_process": 1},
}


def _open_loop_in_process(address: str, rate: float, seconds: float) -> dict[str, Any]:
    """:func:`_open_loop` run by a separate Python process (its own GIL, as a real client has):
    ``python -m bench.bench_serving --load-against ADDRESS``."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "bench.bench_serving", "--load-against", address, "--rate", str(rate), "--seconds", str(seconds)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds * 10 + 60)
    return json.loads(done.stdout)


def bench_overhead(rate: float, seconds: float, reps: int = 2) -> dict[str, Any]:
    """Every variant of :data:`PATHS` on the same Ray instance and experts, interleaved ``reps``
    times (stream, unary, ..., stream, unary, ...): the side-by-side comparison."""
    import ray

    from actors.device import spawn
    from actors.expert import ExpertConfig, spawn_expert
    from actors.routing import Replica
    from actors.router import Router, RouterConfig
    from cluster.shell.client import Client
    from cluster.catalog import default_catalog
    from cluster.shell.gateway import Gateway, GatewayConfig
    from cluster.state import open_store

    kind = "rtx4090"
    ray.init(address="local", num_cpus=4, resources={f"device:{kind}": 2}, include_dashboard=False, logging_level="ERROR")
    try:
        spec = default_catalog().get(kind)
        devs = [spawn(spec, f"{kind}-{i}") for i in range(2)]
        exps = [spawn_expert(d, kind, f"{kind}-{i}", ExpertConfig(model="echo", max_concurrency=8)) for i, d in enumerate(devs)]
        out: dict[str, list[dict[str, Any]]] = {name: [] for name in PATHS}
        for _ in range(reps):
            for name, variant in PATHS.items():
                store = open_store(None)
                router = Router(store, [Replica(f"{kind}-{i}", kind, e, 8) for i, e in enumerate(exps)],
                                RouterConfig(max_queue=256, unary_max_tokens=variant["unary_max_tokens"]))
                router.start()
                gw = Gateway(router, store, GatewayConfig(port=0, max_workers=variant["max_workers"]), "echo").start()
                try:
                    with Client(gw.address) as c:
                        for _ in range(50):
                            c.generate("warm up the path", max_tokens=4)
                        if variant.get("client_process"):
                            out[name].append(_open_loop_in_process(gw.address, rate, seconds))
                        else:
                            out[name].append(_open_loop(c, rate, seconds))
                finally:
                    gw.stop(0.5)
        summary = {name: {k: statistics.median(r[k] for r in runs) for k in ("p50_ms", "p90_ms", "p99_ms")}
                   for name, runs in out.items()}
        return {"paths": PATHS, "runs": out, "median_of_runs": summary,
                "p50_ratio_unary_vs_stream": summary["unary"]["p50_ms"] / summary["stream"]["p50_ms"]}
    finally:
        ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_serving")
    ap.add_argument("--part", choices=("decode", "overhead", "all"), default="all")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--load-against", default=None, help=argparse.SUPPRESS)  # the client process of PATHS
    args = ap.parse_args(argv)
    if args.load_against:
        from cluster.shell.client import Client

        with Client(args.load_against) as c:
            for _ in range(50):
                c.generate("warm up the path", max_tokens=4)
            print(json.dumps(_open_loop(c, args.rate, args.seconds)))
        return 0
    result: dict[str, Any] = {"machine": machine(torch=True)}
    if args.part in ("decode", "all"):
        result["decode"] = bench_decode(args.tokens, args.reps)
        result["decode_actor"] = bench_actor_decode(args.tokens)
    if args.part in ("overhead", "all"):
        result["overhead"] = bench_overhead(args.rate, args.seconds, args.reps)
    return emit(result, args.out)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
