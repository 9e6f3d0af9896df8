"""Capacity benchmark: the longest prompt whose exact attention runs under a per-device memory cap.

For each cap, the longest sequence L of SmolLM2-135M's attention shape (B=1, 9 query heads over 3
key/value heads, head dim 64, fp32, causal) whose exact attention completes with every rank's
MEASURED peak memory under the cap, found by search (doubling from ``unit``, then bisection until
the bracket is within ``--tol`` of L), for:

(a) one device, vanilla attention (the score matrix materialised):
    ``vanilla``: ``softmax(q k^T / sqrt(D) masked) v`` written the usual way (k, v repeated to the
    query heads, scores, masked scores and probabilities each a new tensor), and
    ``vanilla_inplace``: one score matrix, masked and normalised in place (the leanest vanilla);
(b) one device, the best exact single-device attention flotilla has:
    ``fused``: :func:`attention.blockwise.blockwise_attention` (torch's fused CPU flash kernel), and
    ``grouped_1``: :func:`attention.strategies.grouped_ring_attention` on one rank (one key/value
    head at a time, query rows in blocks, output written over q);
(c) 4 Ray actors joined in a gloo group (``ray.util.collective``):
    ``grouped_zigzag_4``: grouped_ring_attention over the zigzag plan (equal shares), and
    ``zigzag_4``: the plain ring over the same plan (for comparison).

Measure: per rank, the kernel's peak resident set (``VmHWM`` reset through
``/proc/self/clear_refs`` before the trial) minus the resident set at the reset; the rank's own q,
k, v rows are created inside the measured window, so inputs, outputs, buffers, communication
buffers and kernel scratch all count (a warm-up run first, so code pages do not); the peak is
read as soon as the method returns, before anything else runs. A trial passes
when it completes and every rank's peak is <= the cap. To end a too-large trial early, each trial
also runs under a soft ``RLIMIT_DATA`` of the cap (:func:`attention.worker.memory_cap`); an
allocation it refuses is a failure (the group is then discarded and restarted). One torch thread
per process.

``--goal-caps``: at those caps only the vanilla methods are searched; every other method runs
once at ``--goal`` x the L of ``--goal-baseline`` (default ``vanilla_inplace``), pass or fail
(searching them is too slow on a 2-core machine: the work grows as L^2, ~16x from 64 to 256 MiB).

Run: ``python bench/bench_capacity.py`` (writes bench/results/capacity.json).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import math
import os
import platform
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from bench_attention import largest_fitting, start_ray  # noqa: E402

MiB = 2**20
SINGLE = ("vanilla", "vanilla_inplace", "fused", "grouped_1")
GROUP = ("grouped_zigzag_4", "zigzag_4")
WORLD = 4


def vanilla(q, k, v):
    """The textbook form: k, v repeated to the query heads, scores, mask, softmax, each new."""
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    n = q.shape[2]
    s = s.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), -math.inf)
    return torch.softmax(s, dim=-1) @ v


def vanilla_inplace(q, k, v):
    """One [H, L, L] score matrix, masked and normalised in place (query heads grouped under
    their key/value head, so k and v are not repeated)."""
    b, h, n, d = q.shape
    hkv = k.shape[1]
    s = (q.view(b, hkv, (h // hkv) * n, d) * (1.0 / math.sqrt(d))) @ k.transpose(-1, -2)
    s = s.view(b, hkv, h // hkv, n, n)
    s.masked_fill_(torch.ones(n, n, dtype=torch.bool).triu(1), -math.inf)
    s.sub_(s.amax(dim=-1, keepdim=True)).exp_()
    s.div_(s.sum(dim=-1, keepdim=True))
    return (s.view(b, hkv, -1, n) @ v).view(b, h, n, d)


class _One:
    """The communicator of a one-rank ring (never used to send)."""

    rank, world_size = 0, 1


class CapacityRank:
    """One process (a Ray actor) that runs trials: ``world_size`` 1 for (a)/(b), 4 for (c)."""

    def __init__(self, world_size: int, rank: int, group: str | None) -> None:
        torch.set_num_threads(1)
        self.world_size, self.rank, self.group = world_size, rank, group
        self.comm = None

    def join(self) -> int:
        from attention.comm import Communicator

        if self.group:
            self.comm = Communicator.join(self.world_size, self.rank, "gloo", self.group)
        return self.rank

    def trial(self, method: str, length: int, cap: int, shape: tuple, seed: int) -> dict:
        from attention.blockwise import blockwise_attention
        from attention.partition import contiguous_plan, zigzag_plan
        from attention.strategies import grouped_ring_attention, ring_attention
        from attention.worker import is_over_cap, memory_cap, peak_rss_bytes, reset_peak_rss

        b, h, hkv, d = shape
        plan = (zigzag_plan(length, [1.0] * self.world_size) if self.world_size > 1
                else contiguous_plan(length, [1.0], causal=True))
        rows = plan.length(self.rank)
        gc.collect()
        error = None
        t0 = time.perf_counter()
        with memory_cap(cap):
            base = reset_peak_rss()
            try:
                g = torch.Generator().manual_seed(seed * 64 + self.rank)
                q = torch.randn(b, h, rows, d, generator=g)
                k = torch.randn(b, hkv, rows, d, generator=g)
                v = torch.randn(b, hkv, rows, d, generator=g)
                if method == "vanilla":
                    out = vanilla(q, k, v)
                elif method == "vanilla_inplace":
                    out = vanilla_inplace(q, k, v)
                elif method == "fused":
                    out, _ = blockwise_attention(q, k, v, causal=True)
                elif method in ("grouped_1", "grouped_zigzag_4"):
                    out, _ = grouped_ring_attention(
                        self.comm or _One(), q, k, v, plan, causal=True, kv_heads_per_pass=1,
                        out=q,
                    )
                elif method == "zigzag_4":
                    out, _ = ring_attention(self.comm, q, k, v, plan, causal=True)
                else:
                    raise ValueError(f"unknown method {method!r}")
                peak = peak_rss_bytes() - base  # before the check below, which allocates
                # a sum is finite iff every element is (torch.isfinite would allocate 4 B per
                # element); no NaN or infinity may come out of an exact attention
                finite = math.isfinite(float(out.sum()))
            except (RuntimeError, MemoryError) as e:
                if not is_over_cap(e):
                    raise
                error, finite = str(e).splitlines()[0][:200], None
                peak = peak_rss_bytes() - base
            out = q = k = v = None
        return {"ok": error is None, "peak_bytes": peak, "rows": rows, "finite": finite,
                "seconds": round(time.perf_counter() - t0, 2), "error": error}


class Runner:
    """Starts the actors, runs trials, restarts a group a failed trial left waiting."""

    def __init__(self, shape: tuple, seed: int) -> None:
        import ray

        self.ray, self.shape, self.seed = ray, shape, seed
        self.remote = ray.remote(CapacityRank).options(num_cpus=0.25)
        self.single = self.remote.remote(1, 0, None)
        ray.get(self.single.join.remote())
        self.group: list = []
        self.log: list[dict] = []

    def _start_group(self) -> None:
        name = f"capacity-{uuid.uuid4().hex[:8]}"
        self.group = [self.remote.remote(WORLD, r, name) for r in range(WORLD)]
        self.ray.get([a.join.remote() for a in self.group])
        for m in GROUP:  # warm-up: code pages and gloo's first-use buffers are not counted
            self.ray.get([a.trial.remote(m, 1024, 1 << 30, self.shape, 0) for a in self.group])

    def _kill_group(self) -> None:
        for a in self.group:
            self.ray.kill(a)
        self.group = []

    def warm_single(self) -> None:
        for m in SINGLE:
            self.ray.get(self.single.trial.remote(m, 256, 1 << 30, self.shape, 0))

    def trial(self, method: str, length: int, cap: int) -> dict:
        ray = self.ray
        if method in SINGLE:
            res = [ray.get(self.single.trial.remote(method, length, cap, self.shape, self.seed))]
        else:
            if not self.group:
                self._start_group()
            refs = [a.trial.remote(method, length, cap, self.shape, self.seed) for a in self.group]
            res, pending = [None] * WORLD, list(refs)
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                r = refs.index(ready[0])
                res[r] = ray.get(ready[0])
                if not res[r]["ok"]:  # its peers wait for messages it will never send
                    self._kill_group()
                    break
        done = [r for r in res if r is not None]
        ok = all(r["ok"] for r in done) and len(done) == len(res)
        peaks = [r["peak_bytes"] for r in done]
        passed = ok and max(peaks) <= cap
        entry = {"method": method, "cap_mib": cap // MiB, "L": length, "passed": passed,
                 "completed": ok, "peak_mib": [round(p / MiB, 2) for p in peaks],
                 "seconds": max(r["seconds"] for r in done),
                 "error": next((r["error"] for r in done if r["error"]), None)}
        if ok and not all(r["finite"] for r in done):
            raise RuntimeError(f"{method} at L={length} gave non-finite output")
        self.log.append(entry)
        print(f"    {method} cap={cap // MiB} MiB L={length}: "
              f"{'pass' if passed else 'FAIL'} peak={max(peaks) / MiB:.1f} MiB "
              f"({entry['seconds']} s){' ' + entry['error'][:60] if entry['error'] else ''}",
              flush=True)
        return entry


def search(runner: Runner, method: str, cap: int, unit: int, hi: int, tol: float) -> dict:
    last: dict = {}

    def fits(length: int) -> bool:
        e = runner.trial(method, length, cap)
        if e["passed"]:
            last[length] = e
        return e["passed"]

    t0 = time.perf_counter()
    lo, top, runs = largest_fitting(fits, unit, hi, tol)
    e = last.get(lo, {})
    return {"method": method, "cap_mib": cap // MiB, "L": lo, "L_failed": top, "runs": runs,
            "mode": "search", "peak_mib": e.get("peak_mib"), "seconds_at_L": e.get("seconds"),
            "search_s": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--caps", default="64,256", help="per-device caps, MiB (comma-separated)")
    ap.add_argument("--goal-caps", default="256",
                    help="caps where all but the vanilla methods run once at --goal x the "
                         "--goal-baseline L "
                         "instead of being searched ('' for none)")
    ap.add_argument("--goal", type=float, default=40.0)
    ap.add_argument("--goal-baseline", default="vanilla_inplace", choices=("vanilla", "vanilla_inplace"),
                    help="the vanilla L the goal multiplies (default the leaner, stricter one)")
    ap.add_argument("--methods", default=",".join(SINGLE + GROUP))
    ap.add_argument("--heads", type=int, default=9)
    ap.add_argument("--kv-heads", type=int, default=3)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--tol", type=float, default=1 / 16,
                    help="stop bisection when the bracket is within this fraction of L")
    ap.add_argument("--max-len", type=int, default=1 << 19)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--note", default="", help="recorded in the result (e.g. how it was run)")
    ap.add_argument("--out", default="bench/results/capacity.json")
    args = ap.parse_args()
    caps = [int(c) for c in args.caps.split(",") if c]
    goal_caps = {int(c) for c in args.goal_caps.split(",") if c}
    methods = [m for m in args.methods.split(",") if m]
    bad = [m for m in methods if m not in SINGLE + GROUP]
    if bad:
        ap.error(f"--methods: unknown {bad}; allowed: {', '.join(SINGLE + GROUP)}")
    shape = (1, args.heads, args.kv_heads, args.head_dim)
    report = {
        "benchmark": "capacity: longest exact causal attention under a per-device memory cap "
                     "(MEASURED)",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "note": args.note,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "torch": torch.__version__, "python": platform.python_version()},
        "loadavg_1_5_15_at_start": [round(x, 2) for x in os.getloadavg()],
        "shape": {"B": 1, "H": args.heads, "Hkv": args.kv_heads, "D": args.head_dim,
                  "dtype": "float32", "causal": True, "model": "SmolLM2-135M attention"},
        "measure": "per rank: peak resident set (VmHWM, reset via /proc/self/clear_refs) minus "
                   "the resident set at the reset; the rank's q, k, v are created inside the "
                   "window; pass = completed and every rank's peak <= cap; a soft RLIMIT_DATA "
                   "of the cap ends too-large trials early (a refused allocation = fail)",
        "threads_per_process": 1,
        "world_size": WORLD,
        "tol": args.tol,
        "results": [],
    }
    start_ray()
    runner = Runner(shape, args.seed)
    runner.warm_single()
    t_all = time.perf_counter()
    for cap_mib in caps:
        cap = cap_mib * MiB
        print(f"cap {cap_mib} MiB", flush=True)
        rows = {}
        for m in methods:
            if cap_mib in goal_caps and not m.startswith("vanilla"):
                continue
            unit = 64 if m in SINGLE else 256
            rows[m] = search(runner, m, cap, unit, args.max_len, args.tol)
            print(f"  {m}: L={rows[m]['L']} (failed at {rows[m]['L_failed']})", flush=True)
        if cap_mib in goal_caps and args.goal_baseline in rows:
            target = math.ceil(args.goal * rows[args.goal_baseline]["L"] / 256) * 256
            for m in methods:
                if not m.startswith("vanilla"):
                    e = runner.trial(m, target, cap)
                    rows[m] = {"method": m, "cap_mib": cap_mib,
                               "mode": f"goal {args.goal:g}x {args.goal_baseline}",
                               "L": target if e["passed"] else None, "L_tried": target,
                               "passed": e["passed"], "peak_mib": e["peak_mib"],
                               "seconds_at_L": e["seconds"], "runs": 1}
        for r in rows.values():
            for base in ("vanilla", "vanilla_inplace", "fused", "grouped_1"):
                if base in rows and rows[base]["L"] and r.get("L"):
                    r[f"ratio_vs_{base}"] = round(r["L"] / rows[base]["L"], 2)
        report["results"].extend(rows.values())
    report["seconds"] = round(time.perf_counter() - t_all, 1)
    report["trials"] = runner.log
    report["loadavg_1_5_15_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    for r in report["results"]:
        ratios = " ".join(f"{k[9:]}={v}x" for k, v in r.items() if k.startswith("ratio_vs_"))
        print(f"{r['cap_mib']:>4} MiB {r['method']:<17} L={r.get('L')} {ratios}")
    print(f"wrote {out} ({report['seconds']} s)")


if __name__ == "__main__":
    main()
