"""Simulator fidelity: predicted vs real TTFT / TPOT of flotilla's own CPU serving, at three loads.

The real serving path: one ``cpu`` DeviceActor and one SmolLM2-135M ExpertActor (Ray actors on
this machine) behind the real :class:`actors.router.Router` (its central queue, journal in an
in-memory store, streaming through Ray), driven in this process. Steps:

1. **Measure the engine** (closed loop, before the first level and after every level; a level's
   table is fitted on the two measurements that bracket its replay): ``k`` = 1 ..
   ``--concurrency`` client threads send back-to-back requests of the prompt mix (the
   concurrencies interleaved in rounds); per request the client's TTFT and TPOT
   and the actor's own TTFT (tokenisation + prefill). :func:`cluster.sim.measured.fit_measured`
   turns them into the measured step-time table (fixed overhead, prefill = base + per-token,
   slowdown and decode step time per concurrency, per-request jitter).
2. **Replay**: for each load level (a fraction of the capacity the first measurement predicts), a seeded
   Poisson trace of ``--requests`` requests (fewer when the level would run longer than
   ``--max-level-s``), each a prompt of the mix with ``max_tokens = --max-tokens``, greedy; per
   request the client's arrival, first-chunk and final times and the real token counts.
3. **Simulate** the same trace (the arrival instants the client really sent at, the real prompt
   and completion token counts) with :func:`cluster.sim.measured.run_measured`.
4. Write per level: rate, real and simulated p50 / p99 TTFT and TPOT, relative errors, pass/fail
   against ``--tolerance`` (0.15), load average, machine, date, command, and the raw calibration
   samples and replay records (enough to refit and re-simulate offline).

``python bench/bench_fidelity.py [--out bench/results/fidelity.json]``; a timing benchmark: run it
under ``flock /work/bench.lock``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: The prompt mix: three lengths (with SmolLM2's chat template, about 45, 90 and 180 tokens).
PROMPTS = (
    "Write a long story about a fleet of small boats crossing the sea.",
    "Write a long story about a fleet of small boats crossing a cold grey sea at night. The sailors are "
    "tired, the wind is rising, the stars are hidden by clouds, and the youngest of them, a girl of twelve "
    "who has never left her village before, keeps the lantern lit at the bow of the smallest boat.",
    "Write a long story about a fleet of small boats crossing a cold grey sea at night. The sailors are "
    "tired, the wind is rising, the stars are hidden by clouds, and the youngest of them, a girl of twelve "
    "who has never left her village before, keeps the lantern lit at the bow of the smallest boat. Her "
    "grandfather built that boat from the timber of an old barn, and every plank still smells of hay. "
    "The fleet is carrying seed grain, tools and letters to an island whose harbour burned last summer; "
    "nobody on board has seen the island, only a map drawn by a fisherman who died in the spring. Tell "
    "how they find their way, what they lose on the crossing, and what they find when they arrive.",
)
METRICS = ("p50_ttft_ms", "p99_ttft_ms", "p50_tpot_ms", "p99_tpot_ms")


def _machine() -> dict[str, Any]:
    import torch

    return {"host": platform.node(), "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch": torch.__version__, "python": platform.python_version()}


class Serving:
    """The real path: DeviceActor + ExpertActor (SmolLM2) + Router; :meth:`one` runs a request."""

    def __init__(self, concurrency: int, max_tokens: int) -> None:
        import ray

        from actors.device import spawn
        from actors.expert import ExpertConfig, spawn_expert
        from actors.router import Router, RouterConfig
        from actors.routing import Replica
        from cluster.probe import probed_catalog
        from cluster.state import open_store

        ray.init(address="local", num_cpus=4, resources={"device:cpu": 1}, include_dashboard=False, logging_level="ERROR")
        self.device = spawn(probed_catalog().get("cpu"), "cpu-0")
        self.expert = spawn_expert(self.device, "cpu", "cpu-0", ExpertConfig(max_concurrency=concurrency))
        self.store = open_store(None)
        self.router = Router(self.store, [Replica("cpu-0", "cpu", self.expert, concurrency)],
                             RouterConfig(max_queue=100_000, default_deadline_s=3600.0))
        self.router.start(replay=False)
        self.max_tokens = max_tokens

    def one(self, prompt: str) -> dict[str, Any]:
        """Send one request; the client's times (perf_counter) and the final dict's counts."""
        t0 = time.perf_counter()
        first = None
        final: dict[str, Any] = {}
        for ev in self.router.stream({"prompt": prompt, "max_tokens": self.max_tokens, "temperature": 0.0}):
            if ev["type"] == "chunk" and first is None:
                first = time.perf_counter()
            elif ev["type"] == "done":
                final = ev
        t_end = time.perf_counter()
        first = t_end if first is None else first
        n = int(final["completion_tokens"])
        return {"t0": t0, "first": first, "end": t_end, "prompt_tokens": int(final["prompt_tokens"]),
                "completion_tokens": n, "ttft_s": first - t0, "engine_ttft_s": float(final["ttft_s"]),
                "tpot_s": (t_end - first) / (n - 1) if n > 1 else None}

    def close(self) -> None:
        import ray

        self.router.close()
        ray.shutdown()


def calibrate(srv: Serving, concurrency: int, reps: int, per_round: int = 2) -> list[dict[str, Any]]:
    """Closed loop at each concurrency ``k`` (``k`` threads, ``reps`` requests each, cycling the
    mix), in interleaved rounds of ``per_round`` requests per thread (k = 1, 2, .., 1, 2, ..), so a
    burst of other work on the host falls on every concurrency alike instead of skewing one."""
    samples: list[dict[str, Any]] = []
    done = 0
    while done < reps:
        m = min(per_round, reps - done)
        for k in range(1, concurrency + 1):
            def worker(w: int, k: int = k, start: int = done) -> list[dict[str, Any]]:
                return [dict(srv.one(PROMPTS[(w + start + i) % len(PROMPTS)]), concurrency=k) for i in range(m)]

            with ThreadPoolExecutor(max_workers=k) as pool:
                for got in pool.map(worker, range(k)):
                    samples.extend(got)
        done += m
    return samples


def _raw(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keys = ("concurrency", "prompt_tokens", "completion_tokens", "ttft_s", "engine_ttft_s", "tpot_s")
    return [{k: _r(s[k]) for k in keys} for s in samples]


def _capacity(engine: Any, samples: list[dict[str, Any]]) -> tuple[float, float]:
    """``(requests/s, mean service s)`` the table predicts at full concurrency for the sampled mix."""
    c = engine.max_concurrency
    p_mean = float(np.mean([s["prompt_tokens"] for s in samples]))
    o_mean = float(np.mean([s["completion_tokens"] for s in samples]))
    service_s = engine.overhead_s + engine.prefill_s(round(p_mean), c) + (o_mean - 1) * engine.decode_step_s[c - 1]
    return c / service_s, service_s


def replay(srv: Serving, rate: float, n: int, seed: int) -> list[dict[str, Any]]:
    """A seeded Poisson trace of ``n`` requests at ``rate``, open loop; per request the client's record."""
    rng = np.random.default_rng(seed)
    offsets = np.cumsum(rng.exponential(1.0 / rate, n))
    offsets -= offsets[0]
    which = rng.integers(0, len(PROMPTS), n)
    out: list[dict[str, Any] | None] = [None] * n
    errors: list[BaseException] = []

    def fire(i: int) -> None:
        try:
            out[i] = dict(srv.one(PROMPTS[which[i]]), prompt_index=int(which[i]))
        except BaseException as exc:  # noqa: BLE001 - reported after the run
            errors.append(exc)

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=min(n, 512)) as pool:
        for i, off in enumerate(offsets):
            delay = start + off - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(fire, i)
    if errors:
        raise RuntimeError(f"{len(errors)} of {n} requests failed; first: {errors[0]!r}")
    return [r for r in out if r is not None]


def real_percentiles(recs: list[dict[str, Any]]) -> dict[str, float]:
    ttft = np.array([r["ttft_s"] for r in recs]) * 1e3
    tpot = np.array([r["tpot_s"] for r in recs if r["tpot_s"] is not None]) * 1e3
    return {"p50_ttft_ms": float(np.percentile(ttft, 50)), "p99_ttft_ms": float(np.percentile(ttft, 99)),
            "p50_tpot_ms": float(np.percentile(tpot, 50)), "p99_tpot_ms": float(np.percentile(tpot, 99))}


def simulate(engine: Any, recs: list[dict[str, Any]], seed: int, jitter: bool = True) -> dict[str, Any]:
    from cluster.sim.measured import latency_percentiles, run_measured
    from cluster.sim.requests import Requests

    t0 = min(r["t0"] for r in recs)
    recs = sorted(recs, key=lambda r: r["t0"])
    reqs = Requests(np.array([r["t0"] - t0 for r in recs]), np.array([r["prompt_tokens"] for r in recs]),
                    np.array([r["completion_tokens"] for r in recs]))
    run = run_measured(engine, reqs, seed=seed, jitter=jitter)
    return latency_percentiles(reqs, run.first_token, run.finish)


def _r(x: Any) -> Any:
    return round(x, 6) if isinstance(x, float) else x


def _records(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The replay per request, in arrival order: enough to re-simulate it (``arrival_s`` from the first)."""
    t0 = min(r["t0"] for r in recs)
    return [{"arrival_s": _r(r["t0"] - t0), "prompt_tokens": r["prompt_tokens"], "completion_tokens": r["completion_tokens"],
             "ttft_s": _r(r["ttft_s"]), "tpot_s": _r(r["tpot_s"]), "engine_ttft_s": _r(r["engine_ttft_s"])}
            for r in sorted(recs, key=lambda r: r["t0"])]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None, help="Write the result JSON here.")
    ap.add_argument("--concurrency", type=int, default=2, help="ExpertActor max_concurrency (router slots).")
    ap.add_argument("--max-tokens", type=int, default=8, help="Output tokens per request.")
    ap.add_argument("--requests", type=int, default=200, help="Requests per load level (at most).")
    ap.add_argument("--min-requests", type=int, default=20, help="Requests per load level (at least).")
    ap.add_argument("--max-level-s", type=float, default=90.0, help="Cap on a level's trace duration, s.")
    ap.add_argument("--levels", default="0.3,0.6,0.9", help="Load levels, fractions of the predicted capacity.")
    ap.add_argument("--calib-reps", type=int, default=8, help="Requests per client thread in one engine measurement.")
    ap.add_argument("--tolerance", type=float, default=0.15, help="Pass when |sim - real| / real <= this.")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    import torch

    from cluster.sim.measured import fit_measured

    command = "python bench/bench_fidelity.py " + " ".join(argv if argv is not None else sys.argv[1:])
    load_start = os.getloadavg()
    t_run = time.perf_counter()
    srv = Serving(args.concurrency, args.max_tokens)
    c = args.concurrency
    try:
        for p in PROMPTS:  # warm up: the model's first calls are slower
            srv.one(p)
        # The engine is measured before the first level and after every level; a level's table is
        # fitted on the two measurements that bracket its replay (the host's speed drifts with
        # whatever else runs on it, and the table should describe the replay's minutes). The
        # offered rates are fixed from the first measurement.
        fracs = [float(x) for x in args.levels.split(",")]
        cals: list[dict[str, Any]] = []

        def measure() -> None:
            load0, t_cal = os.getloadavg()[0], time.perf_counter()
            got = calibrate(srv, c, args.calib_reps)
            cals.append({"samples": got, "wall_s": time.perf_counter() - t_cal, "load_avg_1m": [load0, os.getloadavg()[0]]})

        measure()
        first = fit_measured(cals[0]["samples"], max_concurrency=c)
        capacity, service_s = _capacity(first, cals[0]["samples"])
        runs = []
        for j, frac in enumerate(fracs):
            rate = frac * capacity
            n = max(args.min_requests, min(args.requests, int(rate * args.max_level_s)))
            load0, t_lvl = os.getloadavg()[0], time.perf_counter()
            recs = replay(srv, rate, n, args.seed + j)
            runs.append({"recs": recs, "wall_s": time.perf_counter() - t_lvl, "load_avg_1m": [load0, os.getloadavg()[0]]})
            measure()
        levels = []
        for j, (frac, run) in enumerate(zip(fracs, runs)):
            recs = run["recs"]
            samples = cals[j]["samples"] + cals[j + 1]["samples"]
            engine = fit_measured(samples, max_concurrency=c, source=f"{args.out or 'bench_fidelity'}: levels[{j}].engine")
            real = real_percentiles(recs)
            sim = simulate(engine, recs, args.seed + j)
            sim_nj = simulate(engine, recs, args.seed + j, jitter=False)
            err = {m: (sim[m] - real[m]) / real[m] for m in METRICS}
            levels.append({
                "level": frac, "rate_rps": frac * capacity, "requests": len(recs), "wall_s": run["wall_s"],
                "real": real, "simulated": {m: sim[m] for m in METRICS},
                "simulated_no_jitter": {m: sim_nj[m] for m in METRICS},
                "relative_error": err, "pass": {m: abs(e) <= args.tolerance for m, e in err.items()},
                "all_pass": all(abs(e) <= args.tolerance for e in err.values()),
                "load_avg_1m": run["load_avg_1m"],
                "mean_prompt_tokens": float(np.mean([r["prompt_tokens"] for r in recs])),
                "mean_completion_tokens": float(np.mean([r["completion_tokens"] for r in recs])),
                "records": _records(recs),
                "calibration": {"samples": len(samples), "measurements": [j, j + 1], "engine": engine.to_json(),
                                "wall_s": cals[j]["wall_s"] + cals[j + 1]["wall_s"],
                                "load_avg_1m": cals[j]["load_avg_1m"] + cals[j + 1]["load_avg_1m"],
                                "raw": _raw(samples), "prompt_mix_tokens": sorted({s["prompt_tokens"] for s in samples})},
            })
            print(json.dumps({"level": frac, "n": len(recs), "real": real, "sim": sim}), file=sys.stderr)
    finally:
        srv.close()
    doc = {
        "benchmark": "simulator fidelity vs flotilla's CPU serving (SmolLM2-135M ExpertActor behind the Router)",
        "command": command, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": _machine(),
        "torch_threads_here": torch.get_num_threads(),
        "load_avg_start": list(load_start), "load_avg_end": list(os.getloadavg()),
        "model": "smollm2-135m", "concurrency": args.concurrency, "max_tokens": args.max_tokens,
        "tolerance": args.tolerance, "capacity_rps": capacity, "mean_service_s_at_full_concurrency": service_s,
        "levels": levels, "all_pass": all(lv["all_pass"] for lv in levels),
        "wall_s": time.perf_counter() - t_run,
        "note": ("real: client-observed times through the Router (arrival = when the client sent the request, "
                 "TTFT to the first streamed chunk, TPOT = (final - first chunk) / (tokens - 1)); simulated: "
                 "cluster.sim.measured.run_measured on the same arrivals and token counts, timed by the table "
                 "fitted on the two engine measurements bracketing that level's replay (closed loop at concurrency "
                 "1..N, interleaved rounds); the levels' rates are fractions of the capacity the first measurement predicts"),
    }
    if args.out:
        Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps({k: v for k, v in doc.items() if k != "levels"}, indent=1))
    return doc


if __name__ == "__main__":
    main()
