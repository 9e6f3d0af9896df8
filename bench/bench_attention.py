"""Benchmark of exact distributed attention (not part of the tests).

(a) capacity: the largest L that RUNS with every worker under a per-worker memory cap (``--cap-mib``,
    enforced by the kernel: soft RLIMIT_DATA = VmData + cap in each worker process, see
    attention.worker.memory_cap), for vanilla attention (scores materialised) and blockwise
    (tiled and fused kernels) in this process, and each strategy on 2 and 4 Ray actors; all with
    one torch thread per worker; doubling then bisection over L; all measured;
(b) time at L=8192, H=8, D=64, fp32, causal: torch SDPA and blockwise (fused and tiled kernels)
    in one process with all cores, and the strategies on 2 Ray actors over gloo (cores / 2 threads
    each, so all cores in all, like SDPA); methods interleaved round by round, medians reported;
(c) bytes each rank sent, measured by the communicator, against the theory per strategy.

Run: ``.venv/bin/python bench/bench_attention.py --quick`` (about 8 minutes on 2 cores; (a) uses a
64 MiB cap there, 256 MiB without ``--quick``: the distributed L grows linearly with the cap, so
at 256 MiB every probe near the limit computes 16x more). Prints a table and writes JSON
(machine, date, command, figures) to ``--out``; ``--parts a`` runs only (a).
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from attention.blockwise import blockwise_attention  # noqa: E402
from attention.worker import is_over_cap, memory_cap  # noqa: E402
from cluster.exceptions import CapacityError  # noqa: E402


def vanilla(q, k, v):
    """Scores materialised: softmax(q k^T / sqrt(d)) v with a causal mask."""
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    n = q.shape[2]
    s = s.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), -math.inf)
    return torch.softmax(s, dim=-1) @ v


def fits_one_process(fn, length: int, cap: int, h: int, d: int) -> bool:
    """Whether ``fn`` runs at ``length`` in this process under ``cap`` bytes (soft RLIMIT_DATA:
    q, k, v are created inside the cap, so inputs, scores, outputs and kernel scratch all count)."""
    try:
        with memory_cap(cap):
            q, k, v = (torch.randn(1, h, length, d) for _ in range(3))
            fn(q, k, v)
        return True
    except (RuntimeError, MemoryError) as e:
        if not is_over_cap(e):
            raise
        return False


def fits_actors(strategy: str, p: int, length: int, cap: int, h: int, d: int, died: list) -> bool:
    """Whether ``strategy`` on ``p`` Ray actors (1 thread each) runs at ``length`` with every
    actor under ``cap`` bytes (shards copied in, buffers, outputs, kernel scratch all count)."""
    import ray

    from attention.api import run_distributed

    q, k, v = (torch.randn(1, h, length, d) for _ in range(3))
    try:
        run_distributed(
            q, k, v, causal=True, strategy=strategy, world_size=p, num_threads=1,
            memory_cap_bytes=cap,
        )
        return True
    except CapacityError:
        return False
    except ray.exceptions.RayActorError as e:  # an actor died under the cap: counted as a miss
        died.append(f"{strategy} P={p} L={length}: {str(e).splitlines()[0][:160]}")
        from attention.api import shutdown_groups

        shutdown_groups()
        return False


def largest_fitting(fits, unit: int, hi: int, rel_tol: float) -> tuple[int, int | None, int]:
    """Largest L (a multiple of ``unit``, <= ``hi``) for which ``fits(L)``, by doubling from
    ``unit`` then bisection until the bracket is within ``max(unit, rel_tol * L)``. Returns
    ``(largest L that ran, smallest L that did not or None, runs)``."""
    lo, length, runs = 0, unit, 0
    while length <= hi:
        runs += 1
        if not fits(length):
            break
        lo, length = length, length * 2
    if length > hi:
        return lo, None, runs
    top = length
    while top - lo > max(unit, rel_tol * lo):
        mid = (lo + top) // 2 // unit * unit
        runs += 1
        if fits(mid):
            lo = mid
        else:
            top = mid
    return lo, top, runs


def bench_capacity(args) -> tuple[list[dict], list[str]]:
    """(a): every configuration under the same per-worker cap, measured by running it."""
    from attention.blockwise import fused_kernel_available

    cap = args.cap_mib * 2**20
    h, d, hi, tol = args.heads, args.head_dim, args.capacity_max_len, args.capacity_tol
    torch.set_num_threads(1)  # one thread per worker everywhere (the fused kernel's scratch is per thread)
    singles = {
        "vanilla (scores materialised)": vanilla,
        "blockwise tiled": lambda q, k, v: blockwise_attention(q, k, v, causal=True, kernel="tiled"),
    }
    if fused_kernel_available("cpu"):
        singles["blockwise fused"] = lambda q, k, v: blockwise_attention(
            q, k, v, causal=True, kernel="fused"
        )
    rows, died = [], []
    for name, fn in singles.items():
        t0 = time.perf_counter()
        lo, top, runs = largest_fitting(
            lambda n, fn=fn: fits_one_process(fn, n, cap, h, d), 64, hi, tol
        )
        rows.append({"method": name, "workers": 1, "L": lo, "L_failed": top, "runs": runs,
                     "search_s": round(time.perf_counter() - t0, 1)})
        print(f"  {name}: L={lo} (failed at {top}), {runs} runs", flush=True)
    start_ray()
    for p in (2, 4):
        for strategy in args.capacity_strategies:
            t0 = time.perf_counter()
            lo, top, runs = largest_fitting(
                lambda n, s=strategy, p=p: fits_actors(s, p, n, cap, h, d, died), 64 * p, hi, tol
            )
            rows.append({"method": strategy, "workers": p, "L": lo, "L_failed": top,
                         "runs": runs, "search_s": round(time.perf_counter() - t0, 1)})
            print(f"  {strategy} x{p}: L={lo} (failed at {top}), {runs} runs", flush=True)
    v_len = rows[0]["L"]
    for r in rows:
        r["ratio_vs_vanilla"] = round(r["L"] / max(v_len, 1), 2)
    return rows, died


def start_ray() -> None:
    import ray

    if not ray.is_initialized():
        root = str(Path(__file__).resolve().parents[1])  # workers import attention/ from here
        os.environ["PYTHONPATH"] = os.pathsep.join(
            x for x in (root, os.environ.get("PYTHONPATH")) if x
        )
        # log_to_driver off: actors killed after an over-cap step print Ray's shutdown stack traces
        ray.init(num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False,
                 logging_level="ERROR", log_to_driver=False)


def median(xs: list[float]) -> float:
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_time(args) -> list[dict]:
    """Every method once per round, rounds repeated (interleaved, so a neighbour's burst of load
    hits all methods alike); median and min per method, ratios from the medians."""
    from attention.api import run_distributed
    from attention.blockwise import fused_kernel_available

    length, h, d = args.length, args.heads, args.head_dim
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, length, d, generator=g) for _ in range(3))
    torch.set_num_threads(os.cpu_count() or 1)  # one process: all cores
    methods = {
        "torch SDPA (1 process)": lambda: torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=True
        ),
    }
    if fused_kernel_available("cpu"):
        methods["blockwise fused (1 process)"] = lambda: blockwise_attention(
            q, k, v, causal=True, kernel="fused"
        )
    methods["blockwise tiled (1 process)"] = lambda: blockwise_attention(
        q, k, v, causal=True, kernel="tiled"
    )
    start_ray()
    last: dict[str, object] = {}
    threads = max(1, (os.cpu_count() or 2) // 2)  # 2 actors share the cores

    def dist(strategy):
        def go():
            last[strategy] = run_distributed(
                q, k, v, causal=True, strategy=strategy, world_size=2, num_threads=threads
            )
        return go

    for strategy in args.strategies:
        methods[f"{strategy} (2 actors, gloo, {threads} thread each)"] = dist(strategy)
    for fn in methods.values():
        fn()  # warm-up (actor start, first-call allocations)
    times: dict[str, list[float]] = {m: [] for m in methods}
    rank_seconds: dict[str, list[list[float]]] = {m: [] for m in methods}
    for _ in range(args.repeats):
        for name, fn in methods.items():
            times[name].append(timed(fn))
            strategy = name.split(" ")[0]
            if strategy in last and "actors" in name:
                rank_seconds[name].append(list(last[strategy].seconds))
        torch.set_num_threads(os.cpu_count() or 1)
    sdpa = median(times["torch SDPA (1 process)"])
    rows = []
    for name, ts in times.items():
        row = {
            "method": name,
            "median_s": median(ts),
            "min_s": min(ts),
            "ratio_vs_sdpa": median(ts) / sdpa,
            "target_1.5x_met": None if name.startswith("torch") else median(ts) <= 1.5 * sdpa,
            "runs": len(ts),
        }
        if rank_seconds[name]:
            row["rank_median_s"] = [
                round(median([r[i] for r in rank_seconds[name]]), 3) for i in range(2)
            ]
        rows.append(row)
    return rows


def theory_bytes(strategy: str, length: int, p: int, b: int, h: int, hkv: int, d: int, e: int) -> float:
    """Bytes one rank sends (equal shards): ring / zigzag forward (P-1) K/V shards (~2 L Hkv D);
    gather_kv's ring allgather the same; Ulysses (P-1)/P of its q, K/V and its out+lse rows."""
    shard = length / p
    if strategy in ("ring", "zigzag", "gather_kv"):
        return (p - 1) * 2 * shard * b * hkv * d * e
    if strategy == "ulysses":
        return (p - 1) / p * shard * b * (h * d + 2 * hkv * d + h * (d + 1)) * e
    raise ValueError(strategy)


def bench_bytes(args) -> list[dict]:
    from attention.api import run_distributed

    b, h, hkv, d, length = 1, 8, 8, 64, args.bytes_length
    q, k, v = (torch.randn(b, n, length, d) for n in (h, hkv, hkv))
    rows = []
    # causal ring / gather_kv shards follow the square-root rule, so they are unequal
    for causal, p, strategy in itertools.product(
        (False, True), (2, 4), ("ring", "zigzag", "gather_kv", "ulysses")
    ):
        res = run_distributed(q, k, v, causal=causal, strategy=strategy, world_size=p)
        theory = theory_bytes(strategy, length, p, b, h, hkv, d, 4)
        rows.append(
            {
                "strategy": strategy,
                "causal": causal,
                "workers": p,
                "L": length,
                "measured_max_bytes": max(res.bytes_sent),
                "theory_bytes": int(theory),
                "ratio": round(max(res.bytes_sent) / theory, 3),
            }
        )
    return rows


def table(rows: list[dict]) -> str:
    keys = list(rows[0])
    for r in rows:
        keys += [k for k in r if k not in keys]
    fmt = lambda x: f"{x:.3f}" if isinstance(x, float) else str(x)  # noqa: E731
    widths = {k: max(len(k), *(len(fmt(r.get(k, ""))) for r in rows)) for k in keys}
    lines = ["  ".join(k.ljust(widths[k]) for k in keys)]
    lines += ["  ".join(fmt(r.get(k, "")).ljust(widths[k]) for k in keys) for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats and strategies")
    ap.add_argument("--length", type=int, default=8192)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--cap-mib", type=int, default=0,
                    help="per-worker memory cap for (a), MiB (default 64 quick, 256)")
    ap.add_argument("--capacity-max-len", type=int, default=1 << 17, help="search limit for (a)")
    ap.add_argument("--capacity-tol", type=float, default=0.0,
                    help="stop bisection when the bracket is within this fraction of L "
                         "(default 1/16 quick, 1/64)")
    ap.add_argument("--parts", default="abc", help="which of (a), (b), (c) to run")
    ap.add_argument("--bytes-length", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=0, help="timing rounds (default 5 quick, 9)")
    ap.add_argument("--out", default="bench/results/bench_attention.json")
    args = ap.parse_args()
    args.repeats = args.repeats or (5 if args.quick else 9)
    args.strategies = ("zigzag", "ring") if args.quick else ("zigzag", "ring", "gather_kv", "ulysses")
    args.cap_mib = args.cap_mib or (64 if args.quick else 256)
    args.capacity_strategies = ("ring", "zigzag", "ulysses", "gather_kv")
    args.capacity_tol = args.capacity_tol or (1 / 16 if args.quick else 1 / 64)

    report = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "loadavg_1_5_15_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "settings": {"B": 1, "length": args.length, "H": args.heads, "D": args.head_dim, "dtype": "float32",
                     "causal": True, "quick": args.quick, "cap_mib": args.cap_mib,
                     "capacity_max_len": args.capacity_max_len, "capacity_tol": args.capacity_tol,
                     "capacity_threads_per_worker": 1},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    if "a" in args.parts:
        t0 = time.perf_counter()
        print(f"(a) capacity under {args.cap_mib} MiB per worker (RLIMIT_DATA), B=1 H={args.heads} "
              f"D={args.head_dim} fp32 causal, 1 thread per worker", flush=True)
        report["capacity"], report["capacity_actor_deaths"] = bench_capacity(args)
        report["capacity_seconds"] = round(time.perf_counter() - t0, 1)
        print(table(report["capacity"]))
        print(f"capacity part: {report['capacity_seconds']} s; actor deaths under the cap: "
              f"{len(report['capacity_actor_deaths'])}")
    if "b" in args.parts:
        report["time"] = bench_time(args)
        print(f"\n(b) time at L={args.length} H={args.heads} D={args.head_dim} fp32 causal")
        print(table(report["time"]))
    if "c" in args.parts:
        report["bytes"] = bench_bytes(args)
        print(f"\n(c) largest bytes sent by a rank vs theory for equal shards, L={args.bytes_length} H=Hkv=8 D=64 fp32")
        print(table(report["bytes"]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
