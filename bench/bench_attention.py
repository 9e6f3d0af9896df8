"""Benchmark of exact distributed attention (not part of the tests).

(a) capacity: the largest L whose peak tensor memory fits a per-worker cap, for vanilla attention
    (scores materialised), blockwise on one worker (both MEASURED: peak bytes of live tensors,
    tracked op by op), and each strategy on 2 and 4 workers (MODELED: per-worker tensors of the
    strategy plus the measured blockwise tile; labelled as modeled in the output);
(b) time at L=8192, H=8, D=64, fp32, causal: torch SDPA and blockwise (fused and tiled kernels)
    in one process with all cores, and the strategies on 2 Ray actors over gloo (cores / 2 threads
    each, so all cores in all, like SDPA); methods interleaved round by round, medians reported;
(c) bytes each rank sent, measured by the communicator, against the theory per strategy.

Run: ``.venv/bin/python bench/bench_attention.py --quick`` (a few minutes on 2 cores). Prints a
table and writes JSON (machine, date, figures) to ``--out``.
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
import weakref
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from attention.blockwise import DEFAULT_BLOCK, blockwise_attention  # noqa: E402


class PeakMemory(TorchDispatchMode):
    """Peak bytes of live tensor storages created inside the mode (inputs not counted)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def _free(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self._seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        res = func(*args, **(kwargs or {}))
        for t in res if isinstance(res, (tuple, list)) else (res,):
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                key = st.data_ptr()
                if key in self._seen or st.nbytes() == 0:
                    continue
                self._seen.add(key)
                self.live += st.nbytes()
                self.peak = max(self.peak, self.live)
                weakref.finalize(st, self._free, key, st.nbytes())
        return res


def vanilla(q, k, v):
    """Scores materialised: softmax(q k^T / sqrt(d)) v with a causal mask."""
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    n = q.shape[2]
    s = s.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), -math.inf)
    return torch.softmax(s, dim=-1) @ v


def peak_bytes(fn, length: int, h: int, d: int) -> int:
    q, k, v = (torch.randn(1, h, length, d) for _ in range(3))
    probe = PeakMemory()
    with probe:
        fn(q, k, v)
    return probe.peak + 3 * q.numel() * 4


def largest_fitting(fn, cap: int, h: int, d: int, hi: int) -> int:
    """Largest L (multiple of 64) with measured peak <= cap, by doubling then bisection."""
    lo, length = 0, 64
    while length <= hi and peak_bytes(fn, length, h, d) <= cap:
        lo, length = length, length * 2
    top = min(length, hi + 64)
    while top - lo > 64:
        mid = (lo + top) // 2 // 64 * 64
        if peak_bytes(fn, mid, h, d) <= cap:
            lo = mid
        else:
            top = mid
    return lo


def modeled_worker_bytes(strategy: str, length: int, p: int, h: int, d: int, block: int) -> int:
    """Per-worker tensor bytes of a strategy (fp32): shards, buffers, and one score tile."""
    e = 4
    shard = length / p
    if strategy in ("ring", "zigzag"):
        own = 3 * shard * h * d  # q, k, v
        kv_bufs = 2 * 2 * shard * h * d  # current + incoming K/V
        acc = 2 * shard * h * d + shard * h  # out, merge temporaries
        tile = h * block * shard
    elif strategy == "gather_kv":
        own = 3 * shard * h * d
        kv_bufs = 2 * 2 * length * h * d  # padded gather + reassembled K/V
        acc = shard * h * d
        tile = h * block * length
    elif strategy == "ulysses":
        hh = h / p
        own = 3 * shard * h * d
        kv_bufs = 2 * 3 * length * hh * d  # received pieces + whole-sequence q, k, v of own heads
        acc = length * hh * (d + 1) * 2
        tile = hh * block * length
    else:
        raise ValueError(strategy)
    return int(e * (own + kv_bufs + acc + tile))


def bench_capacity(args) -> list[dict]:
    cap = args.cap_mib * 2**20
    h, d = args.heads, args.head_dim
    rows = []
    hi = 1 << 17
    v_len = largest_fitting(vanilla, cap, h, d, hi)
    b_len = largest_fitting(
        lambda q, k, v: blockwise_attention(q, k, v, causal=True, kernel="tiled"), cap, h, d, hi
    )
    rows.append({"method": "vanilla (scores materialised)", "workers": 1, "L": v_len, "kind": "measured"})
    rows.append({"method": "blockwise tiled", "workers": 1, "L": b_len, "kind": "measured"})
    # fused kernel: the tensors it returns (out, lse) plus q, k, v; its scratch (per-thread
    # q-split x kv-split tiles) lives inside C++ where the probe cannot see it, hence "modeled"
    f_len = cap // (4 * h * (4 * d + 1)) // 64 * 64
    rows.append({"method": "blockwise fused", "workers": 1, "L": f_len,
                 "kind": "modeled (q, k, v, out, lse; kernel scratch not counted)"})
    for strategy in ("ring", "zigzag", "gather_kv", "ulysses"):
        for p in (2, 4):
            lo, top = 0, 1 << 22
            while top - lo > 64:
                mid = (lo + top) // 2
                if modeled_worker_bytes(strategy, mid, p, h, d, DEFAULT_BLOCK) <= cap:
                    lo = mid
                else:
                    top = mid
            rows.append({"method": strategy, "workers": p, "L": lo, "kind": "modeled"})
    for r in rows:
        r["ratio_vs_vanilla"] = round(r["L"] / max(v_len, 1), 2)
    return rows


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
    import ray

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
    if not ray.is_initialized():
        root = str(Path(__file__).resolve().parents[1])  # workers import attention/ from here
        os.environ["PYTHONPATH"] = os.pathsep.join(
            x for x in (root, os.environ.get("PYTHONPATH")) if x
        )
        ray.init(num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False, logging_level="ERROR")
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
    ap.add_argument("--cap-mib", type=int, default=256, help="per-worker memory cap for (a)")
    ap.add_argument("--bytes-length", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=0, help="timing rounds (default 5 quick, 9)")
    ap.add_argument("--out", default="bench/results/bench_attention.json")
    args = ap.parse_args()
    args.repeats = args.repeats or (5 if args.quick else 9)
    args.strategies = ("zigzag", "ring") if args.quick else ("zigzag", "ring", "gather_kv", "ulysses")

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
        "settings": {"B": 1, "H": args.heads, "D": args.head_dim, "dtype": "float32",
                     "causal": True, "quick": args.quick, "cap_mib": args.cap_mib},
    }
    report["capacity"] = bench_capacity(args)
    print(f"(a) capacity under {args.cap_mib} MiB per worker, B=1 H={args.heads} D={args.head_dim} fp32 causal")
    print(table(report["capacity"]))
    report["time"] = bench_time(args)
    print(f"\n(b) time at L={args.length} H={args.heads} D={args.head_dim} fp32 causal")
    print(table(report["time"]))
    report["bytes"] = bench_bytes(args)
    print(f"\n(c) largest bytes sent by a rank vs theory for equal shards, L={args.bytes_length} H=Hkv=8 D=64 fp32")
    print(table(report["bytes"]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
