"""Simulator fidelity: predicted vs real TTFT / TPOT of flotilla's own CPU serving, at three loads.

The real serving path: one ``cpu`` DeviceActor and one SmolLM2-135M ExpertActor (Ray actors on
this machine) behind the real :class:`actors.router.Router` (its slot pool, journal in an
in-memory store, streaming through Ray), driven in this process. Steps:

1. **Measure the engine** (closed loop, before the first replay segment and after every segment):
   ``k`` = 1 .. ``--concurrency`` client threads send back-to-back requests of the prompt mix (the
   concurrencies interleaved in rounds); per request the client's send, first-chunk and final
   times and the actor's own TTFT (tokenisation + prefill).
2. **Replay**: for each load level (a fraction of the capacity the first measurement predicts) a
   seeded Poisson trace of ``--requests`` requests, each a prompt of the mix with ``max_tokens =
   --max-tokens``, greedy, cut into segments of about ``--segment-s`` seconds; the segments of
   the levels are run in rotation (0.3, 0.6, 0.9, 0.3, ...) with an engine measurement between
   any two, so a slow stretch of this shared host falls on every level alike and every segment is
   bracketed by two measurements. Per request the client's send, first-chunk and final times and
   the real token counts. A segment starts when the previous measurement has ended (empty replica).
3. **Simulate** each segment (the instants the client really sent at, the real prompt and
   completion token counts) with :func:`cluster.sim.measured.run_measured`, timed by the table
   :func:`cluster.sim.measured.fit_measured` makes from ALL the engine measurements, scaled by the
   host's speed in the two measurements that bracket the segment
   (:func:`cluster.sim.measured.speed_factor`). No replay time enters the table. The simulation
   is repeated over ``--sim-seeds`` seeds (the jitter draws); the
   prediction is the median over seeds of each percentile, with its 10-90 % range.
4. Write per level: rate, real and simulated p50 / p99 TTFT and TPOT (pooled over the level's
   segments), relative errors, pass/fail against ``--tolerance`` (0.15), ablations (random hand-off,
   a table per concurrency instead of the phased one, no speed factor, no jitter), per segment
   real against simulated mean TTFT and median TPOT, the CPU share other jobs took, load average,
   machine, date, command, and the raw calibration samples and replay records (enough to refit
   and re-simulate offline: ``--resimulate FILE``).

``python bench/bench_fidelity.py [--out bench/results/fidelity.json]``; a timing benchmark: run it
under ``flock /work/bench.lock``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import machine  # noqa: E402 - after the path set-up

#: The prompt mix: three lengths (with SmolLM2's chat template, about 44, 66 and 95 tokens).
PROMPTS = (
    "Write a long story about a fleet of small boats crossing the sea.",
    "Write a long story about a fleet of small boats crossing a cold grey sea at night. The sailors are "
    "tired, the wind is rising, and the stars are hidden by clouds.",
    "Write a long story about a fleet of small boats crossing a cold grey sea at night. The sailors are "
    "tired, the wind is rising, the stars are hidden by clouds, and the youngest of them, a girl of twelve "
    "who has never left her village before, keeps the lantern lit at the bow of the smallest boat.",
)
METRICS = ("p50_ttft_ms", "p99_ttft_ms", "p50_tpot_ms", "p99_tpot_ms")


class HostMeter:
    """CPU time of the whole host (``/proc/stat``) and of this run's process tree (this driver,
    Ray's processes and workers): what other jobs took from the 2 cores while a stretch ran."""

    def __init__(self) -> None:
        import psutil

        self.tick = os.sysconf("SC_CLK_TCK")
        self.root = psutil.Process()
        self.error = psutil.Error

    def read(self) -> tuple[float, float, float, float]:
        """``(busy s, steal s, ours s, perf_counter)``: cumulative."""
        with open("/proc/stat") as f:
            user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in f.readline().split()[1:9])
        ours = 0.0
        for p in [self.root, *self.root.children(recursive=True)]:
            try:
                t = p.cpu_times()
                ours += t.user + t.system
            except self.error:
                pass
        return (user + nice + system + irq + softirq) / self.tick, steal / self.tick, ours, time.perf_counter()

    @staticmethod
    def share(a: tuple[float, ...], b: tuple[float, ...]) -> dict[str, float]:
        """Shares of the host's CPU capacity between two reads: this run's, other jobs', stolen by the hypervisor."""
        cap = (b[3] - a[3]) * (os.cpu_count() or 1)
        ours = b[2] - a[2]
        return {"ours": round(ours / cap, 4), "other": round(max(0.0, (b[0] - a[0]) - ours) / cap, 4),
                "steal": round((b[1] - a[1]) / cap, 4)}


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
        self.origin = time.perf_counter()

    def one(self, prompt: str) -> dict[str, Any]:
        """Send one request; the client's times (s from :attr:`origin`) and the final dict's counts."""
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
        return {"start_s": t0 - self.origin, "first_s": first - self.origin, "end_s": t_end - self.origin,
                "prompt_tokens": int(final["prompt_tokens"]), "completion_tokens": n, "ttft_s": first - t0,
                "engine_ttft_s": float(final["ttft_s"]), "tpot_s": (t_end - first) / (n - 1) if n > 1 else None}

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


def _capacity(engine: Any, samples: list[dict[str, Any]]) -> tuple[float, float]:
    """``(requests/s, mean service s)`` the table predicts at full concurrency for the sampled mix."""
    c = engine.max_concurrency
    p_mean = float(np.mean([s["prompt_tokens"] for s in samples]))
    o_mean = float(np.mean([s["completion_tokens"] for s in samples]))
    service_s = engine.overhead_s + engine.prefill_s(round(p_mean), c) + (o_mean - 1) * engine.decode_step_s[c - 1]
    return c / service_s, service_s


def trace(rate: float, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded Poisson trace: ``(offsets s from the first, prompt index)`` of ``n`` requests."""
    rng = np.random.default_rng(seed)
    offsets = np.cumsum(rng.exponential(1.0 / rate, n))
    return offsets - offsets[0], rng.integers(0, len(PROMPTS), n)


def replay(srv: Serving, offsets: np.ndarray, which: np.ndarray) -> list[dict[str, Any]]:
    """Send the trace open loop (each request at its offset); per request the client's record."""
    n = len(offsets)
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


def _pcts(ttft_s: np.ndarray, tpot_s: np.ndarray) -> dict[str, float]:
    return {"p50_ttft_ms": float(np.percentile(ttft_s, 50)) * 1e3, "p99_ttft_ms": float(np.percentile(ttft_s, 99)) * 1e3,
            "p50_tpot_ms": float(np.percentile(tpot_s, 50)) * 1e3, "p99_tpot_ms": float(np.percentile(tpot_s, 99)) * 1e3}


def real_percentiles(recs: list[dict[str, Any]]) -> dict[str, float]:
    return _pcts(np.array([r["ttft_s"] for r in recs]),
                 np.array([r["tpot_s"] for r in recs if r["tpot_s"] is not None]))


def simulate(engines: list[Any], segments: list[list[dict[str, Any]]], seeds: int, **kw: Any) -> dict[str, Any]:
    """Each segment on its table, ``seeds`` times; per seed the percentiles pooled over the
    segments; returns the median over seeds of each percentile and its 10 % / 90 % quantiles."""
    from cluster.sim.measured import run_measured
    from cluster.sim.requests import Requests

    per_seed = []
    seg_ttft: list[list[np.ndarray]] = [[] for _ in segments]
    seg_tpot: list[list[np.ndarray]] = [[] for _ in segments]
    for s in range(seeds):
        ttft, tpot = [], []
        for j, (engine, recs) in enumerate(zip(engines, segments)):
            recs = sorted(recs, key=lambda r: r["start_s"])
            t0 = recs[0]["start_s"]
            reqs = Requests(np.array([r["start_s"] - t0 for r in recs]), np.array([r["prompt_tokens"] for r in recs]),
                            np.array([r["completion_tokens"] for r in recs]))
            run = run_measured(engine, reqs, seed=1000 * s + j, **kw)
            ttft.append(run.first_token - reqs.arrival)
            multi = reqs.output_len > 1
            tpot.append((run.finish[multi] - run.first_token[multi]) / (reqs.output_len[multi] - 1))
            seg_ttft[j].append(ttft[-1])
            seg_tpot[j].append(tpot[-1])
        per_seed.append(_pcts(np.concatenate(ttft), np.concatenate(tpot)))
    return {m: float(np.median([p[m] for p in per_seed])) for m in METRICS} | {
        "range_10_90": {m: [float(np.percentile([p[m] for p in per_seed], q)) for q in (10, 90)] for m in METRICS},
        "segments": [{"mean_ttft_ms": float(np.mean(np.concatenate(a))) * 1e3, "p50_tpot_ms": float(np.median(np.concatenate(b))) * 1e3}
                     for a, b in zip(seg_ttft, seg_tpot)]}


def _r(x: Any) -> Any:
    return round(x, 6) if isinstance(x, float) else x


def analyse(cals: list[dict[str, Any]], segs: list[dict[str, Any]], fracs: list[float], capacity: float,
            tolerance: float, sim_seeds: int, source: str) -> tuple[Any, list[dict[str, Any]]]:
    """The table (from every measurement), each segment's speed, and per level the real and
    simulated percentiles, errors and ablations. ``cals``: ``[{"samples": [...]}]`` in run order;
    ``segs``: ``[{"level": index, "recs": [...], "calibration": [before, after], ...}]``."""
    from cluster.sim.measured import fit_measured, speed_factor

    c = max(int(s["concurrency"]) for cal in cals for s in cal["samples"])
    all_samples = [dict(s, measurement=m) for m, cal in enumerate(cals) for s in cal["samples"]]
    engine = fit_measured(all_samples, max_concurrency=c, source=source)
    # the ablation without phases: the per-concurrency table (the samples without their instants)
    flat = [{k: v for k, v in s.items() if k not in ("first_s", "end_s")} for s in all_samples]
    engine_k = fit_measured(flat, max_concurrency=c, source=source)
    for seg in segs:
        a, b = seg["calibration"]
        seg["speed"] = speed_factor(engine, cals[a]["samples"] + cals[b]["samples"])
        seg["speed_k"] = speed_factor(engine_k, [s for s in flat if s["measurement"] in (a, b)])
    levels = []
    for j, frac in enumerate(fracs):
        mine = [s for s in segs if s["level"] == j]
        recs = [r for s in mine for r in s["recs"]]
        engines = [engine.scaled(s["speed"]) for s in mine]
        real = real_percentiles(recs)
        sims = {
            "simulated": simulate(engines, [s["recs"] for s in mine], sim_seeds),
            "random_hand_off": simulate(engines, [s["recs"] for s in mine], sim_seeds, hand_off="random"),
            "no_speed_factor": simulate([engine] * len(mine), [s["recs"] for s in mine], sim_seeds),
            "no_jitter": simulate(engines, [s["recs"] for s in mine], sim_seeds, jitter=False),
            "per_concurrency_table": simulate([engine_k.scaled(s["speed_k"]) for s in mine], [s["recs"] for s in mine], sim_seeds),
        }
        sim = sims["simulated"]
        err = {m: (sim[m] - real[m]) / real[m] for m in METRICS}
        levels.append({
            "level": frac, "rate_rps": frac * capacity, "requests": len(recs), "segments": len(mine),
            "wall_s": sum(s["wall_s"] for s in mine),
            "real": real, "simulated": {m: sim[m] for m in METRICS}, "simulated_range_10_90": sim["range_10_90"],
            "relative_error": err, "pass": {m: abs(e) <= tolerance for m, e in err.items()},
            "all_pass": all(abs(e) <= tolerance for e in err.values()),
            "ablations": {k: {m: v[m] for m in METRICS} for k, v in sims.items() if k != "simulated"},
            "mean_prompt_tokens": float(np.mean([r["prompt_tokens"] for r in recs])),
            "mean_completion_tokens": float(np.mean([r["completion_tokens"] for r in recs])),
            "segment_speed": [round(s["speed"], 4) for s in mine],
            # per segment, real against simulated (a diagnostic: which stretches of the run the model misses)
            "segment_check": [{"segment": segs.index(s), "requests": len(s["recs"]), "speed": round(s["speed"], 4),
                               "real_mean_ttft_ms": 1e3 * float(np.mean([r["ttft_s"] for r in s["recs"]])),
                               "sim_mean_ttft_ms": got["mean_ttft_ms"],
                               "real_p50_tpot_ms": 1e3 * float(np.median([r["tpot_s"] for r in s["recs"] if r["tpot_s"] is not None])),
                               "sim_p50_tpot_ms": got["p50_tpot_ms"], "cpu_share": s.get("cpu_share")}
                              for s, got in zip(mine, sim["segments"])],
            "segment_load_avg_1m": [s["load_avg_1m"] for s in mine],
        })
        print(json.dumps({"level": frac, "n": len(recs), "real": real, "sim": {m: sim[m] for m in METRICS}}), file=sys.stderr)
    return engine, levels


def resimulate(path: str, out: str | None, sim_seeds: int | None) -> dict[str, Any]:
    """Re-run :func:`analyse` on a result file's raw measurements and records (no serving)."""
    doc = json.loads(Path(path).read_text())
    cals = doc["calibrations"]
    fracs = sorted({s["level"] for s in doc["segments"]}, key=[lv["level"] for lv in doc["levels"]].index)
    segs = [{"level": fracs.index(s["level"]), "recs": s["records"], "calibration": s["calibration"], "wall_s": s["wall_s"],
             "load_avg_1m": s["load_avg_1m"], "cpu_share": s.get("cpu_share")} for s in doc["segments"]]
    seeds = sim_seeds or doc["sim_seeds"]
    engine, levels = analyse(cals, segs, fracs, doc["capacity_rps"], doc["tolerance"], seeds, f"{out or path}: engine")
    for seg, s in zip(doc["segments"], segs):
        seg["speed"] = s["speed"]
    doc.update(engine=engine.to_json(), levels=levels, all_pass=all(lv["all_pass"] for lv in levels), sim_seeds=seeds,
               resimulated={"command": f"python bench/bench_fidelity.py --resimulate {path}" + (f" --out {out}" if out else ""),
                            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})
    if out:
        Path(out).write_text(json.dumps(doc, indent=1) + "\n")
    return doc


CAL_KEYS = ("concurrency", "start_s", "first_s", "end_s", "prompt_tokens", "completion_tokens", "ttft_s", "engine_ttft_s", "tpot_s")
REC_KEYS = ("start_s", "first_s", "end_s", "prompt_tokens", "completion_tokens", "ttft_s", "tpot_s", "engine_ttft_s")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None, help="Write the result JSON here.")
    ap.add_argument("--concurrency", type=int, default=2, help="ExpertActor max_concurrency (router slots).")
    ap.add_argument("--max-tokens", type=int, default=4, help="Output tokens per request.")
    ap.add_argument("--requests", type=int, default=400, help="Requests per load level.")
    ap.add_argument("--segment-s", type=float, default=60.0, help="Target duration of one replay segment, s.")
    ap.add_argument("--levels", default="0.3,0.6,0.9", help="Load levels, fractions of the predicted capacity.")
    ap.add_argument("--calib-reps", type=int, default=4, help="Requests per client thread in one engine measurement.")
    ap.add_argument("--sim-seeds", type=int, default=50, help="Simulations per level (jitter and hand-off draws).")
    ap.add_argument("--tolerance", type=float, default=0.15, help="Pass when |sim - real| / real <= this.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resimulate", default=None, metavar="FILE",
                    help="Re-simulate a result file's raw records with the current model (no serving); writes --out.")
    args = ap.parse_args(argv)
    if args.resimulate:
        return resimulate(args.resimulate, args.out, args.sim_seeds if "--sim-seeds" in (argv or sys.argv) else None)
    import torch

    from cluster.sim.measured import fit_measured

    command = "python bench/bench_fidelity.py " + " ".join(argv if argv is not None else sys.argv[1:])
    load_start = os.getloadavg()
    t_run = time.perf_counter()
    srv = Serving(args.concurrency, args.max_tokens)
    c = args.concurrency
    fracs = [float(x) for x in args.levels.split(",")]
    cals: list[dict[str, Any]] = []
    segs: list[dict[str, Any]] = []
    try:
        for p in PROMPTS * 2:  # warm up: the model's first calls are slower
            srv.one(p)

        meter = HostMeter()

        def measure() -> None:
            load0, t_cal, h0 = os.getloadavg()[0], time.perf_counter(), meter.read()
            got = calibrate(srv, c, args.calib_reps)
            cals.append({"samples": got, "wall_s": time.perf_counter() - t_cal, "load_avg_1m": [load0, os.getloadavg()[0]],
                         "cpu_share": meter.share(h0, meter.read())})

        measure()
        first = fit_measured(cals[0]["samples"], max_concurrency=c)
        capacity, service_s = _capacity(first, cals[0]["samples"])
        # each level's whole trace, cut into segments of about --segment-s; the segments run in rotation
        plans = []
        for j, frac in enumerate(fracs):
            rate = frac * capacity
            offsets, which = trace(rate, args.requests, args.seed + j)
            per = max(10, round(rate * args.segment_s))
            cuts = list(range(0, args.requests, per))
            plans.append([(j, offsets[a:a + per] - offsets[a], which[a:a + per]) for a in cuts])
        order = [p[i] for i in range(max(len(p) for p in plans)) for p in plans if i < len(p)]
        for j, offsets, which in order:
            load0, t_seg, h0 = os.getloadavg()[0], time.perf_counter(), meter.read()
            recs = replay(srv, offsets, which)
            segs.append({"level": j, "recs": recs, "wall_s": time.perf_counter() - t_seg, "cpu_share": meter.share(h0, meter.read()),
                         "load_avg_1m": [load0, os.getloadavg()[0]], "calibration": [len(cals) - 1, len(cals)]})
            print(json.dumps({"segment": len(segs) - 1, "level": fracs[j], "n": len(recs), "wall_s": round(segs[-1]["wall_s"], 1)}),
                  file=sys.stderr, flush=True)
            measure()
    finally:
        srv.close()
    engine, levels = analyse(cals, segs, fracs, capacity, args.tolerance, args.sim_seeds, f"{args.out or 'bench_fidelity'}: engine")
    doc = {
        "benchmark": "simulator fidelity vs flotilla's CPU serving (SmolLM2-135M ExpertActor behind the Router)",
        "command": command, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(torch=True),
        "torch_threads_here": torch.get_num_threads(),
        "load_avg_start": list(load_start), "load_avg_end": list(os.getloadavg()),
        "model": "smollm2-135m", "concurrency": args.concurrency, "max_tokens": args.max_tokens,
        "tolerance": args.tolerance, "sim_seeds": args.sim_seeds, "capacity_rps": capacity,
        "mean_service_s_at_full_concurrency": service_s, "engine": engine.to_json(),
        "levels": levels, "all_pass": all(lv["all_pass"] for lv in levels),
        "wall_s": time.perf_counter() - t_run,
        "calibrations": [{"wall_s": cal["wall_s"], "load_avg_1m": cal["load_avg_1m"], "cpu_share": cal["cpu_share"],
                          "samples": [{k: _r(s[k]) for k in CAL_KEYS} for s in cal["samples"]]} for cal in cals],
        "segments": [{"level": fracs[s["level"]], "calibration": s["calibration"], "speed": s["speed"], "wall_s": s["wall_s"],
                      "load_avg_1m": s["load_avg_1m"], "cpu_share": s["cpu_share"],
                      "records": [{k: _r(r[k]) for k in REC_KEYS} for r in sorted(s["recs"], key=lambda r: r["start_s"])]}
                     for s in segs],
        "note": ("real: client-observed times through the Router (start = when the client sent the request, "
                 "TTFT to the first streamed chunk, TPOT = (final - first chunk) / (tokens - 1)), times in s from the "
                 "run's origin; simulated: cluster.sim.measured.run_measured on each segment's send instants and token "
                 "counts, timed by the table fitted on all the engine measurements (closed loop at concurrency 1..N, "
                 "interleaved rounds), scaled by the host speed in the two measurements bracketing the segment; "
                 "median over sim_seeds of each pooled percentile; the levels' rates are fractions of the capacity "
                 "the first measurement predicts"),
    }
    if args.out:
        Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps({k: v for k, v in doc.items() if k not in ("levels", "calibrations", "segments")}, indent=1))
    return doc


if __name__ == "__main__":
    main()
