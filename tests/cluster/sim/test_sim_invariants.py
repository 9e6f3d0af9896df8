"""Invariants of whole runs: the two engines agree, Little's law, conservation, routing shares."""

from __future__ import annotations

import numpy as np
import pytest

from cluster.models import get_model
from cluster.sim import EngineConfig, Requests, Router, build_replicas, make_requests, run_engine, simulate
from solvers.routing import routing_plan

MODEL = get_model("llama-3-8b")
FLEET = {"a100-80g-sxm": 2, "h100-sxm": 1, "l4": 3}
PLAN = {"buckets": [
    {"kinds": ["l4"], "max_input_tokens": 256},  # short prompts to the L4s
    {"kinds": ["a100-80g-sxm", "h100-sxm"], "weights": {"a100-80g-sxm": 0.6, "h100-sxm": 0.4}},
], "source": "test"}
CASES = [  # (seed, arrivals, rate, chunked, plan)
    (0, "poisson", 30.0, False, None),
    (1, "gamma:3", 30.0, True, None),
    (2, "onoff:5:5", 25.0, False, PLAN),
    (3, "poisson", 45.0, True, PLAN),
]


def _engine(chunked: bool) -> EngineConfig:
    return EngineConfig(chunked_prefill=chunked, max_batched_tokens=1024 if chunked else 8192, max_num_seqs=64)


@pytest.fixture(scope="module")
def runs():
    out = {}
    for seed, arrivals, rate, chunked, plan in CASES:
        reqs = make_requests("mixed", 1200, rate=rate, arrivals=arrivals, seed=seed)
        eng = _engine(chunked)
        reps = build_replicas(FLEET, MODEL, engine=eng)
        out[seed] = (reqs, reps, {core: run_engine(reps, reqs, engine=eng, plan=plan, core=core)
                                  for core in ("fast", "simpy")})
    return out


@pytest.mark.parametrize("seed", [c[0] for c in CASES])
def test_fast_and_simpy_engines_give_the_same_run(runs, seed: int) -> None:
    _, _, r = runs[seed]
    fast, ref = r["fast"], r["simpy"]
    assert fast.replica.tolist() == ref.replica.tolist()
    assert fast.rejected.tolist() == ref.rejected.tolist()
    np.testing.assert_allclose(fast.first_token, ref.first_token, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(fast.finish, ref.finish, rtol=1e-12, equal_nan=True)
    assert fast.steps.tolist() == ref.steps.tolist()
    np.testing.assert_allclose(fast.busy_s, ref.busy_s, rtol=1e-9)
    np.testing.assert_allclose(fast.busy_term, ref.busy_term, rtol=1e-9)


@pytest.mark.parametrize("seed", [c[0] for c in CASES])
@pytest.mark.parametrize("core", ["fast", "simpy"])
def test_littles_law_and_conservation(runs, seed: int, core: str) -> None:
    reqs, reps, r = runs[seed]
    raw = r[core]
    ok = ~raw.rejected
    assert ok.sum() + raw.rejected.sum() == len(reqs)
    assert np.all(np.isfinite(raw.finish[ok])) and np.all(np.isnan(raw.finish[~ok]))
    assert np.all(raw.first_token[ok] > reqs.arrival[ok])
    assert np.all(raw.finish[ok] >= raw.first_token[ok])
    # Little's law on the whole run: the time integral of requests in the system (accumulated by
    # the engine at each arrival and completion) equals the sum of their times in the system.
    assert raw.area.sum() == pytest.approx(np.sum(raw.finish[ok] - reqs.arrival[ok]), rel=1e-9)
    # work conservation: a replica is never busy longer than the run
    makespan = np.nanmax(raw.finish)
    assert np.all(raw.busy_s <= makespan * (1 + 1e-12))
    # every request's tokens: at least one step per output token
    per_rep_out = np.bincount(raw.replica[ok], weights=reqs.output_len[ok], minlength=len(reps))
    per_rep_max = np.array([reqs.output_len[ok & (raw.replica == i)].max(initial=0) for i in range(len(reps))])
    assert np.all(raw.steps >= per_rep_max) and np.all(raw.steps <= per_rep_out + per_rep_out)


def test_plan_weights_split_a_bucket_exactly() -> None:
    plan = {"buckets": [{"kinds": ["a100-80g-sxm", "l4"], "weights": {"a100-80g-sxm": 0.75, "l4": 0.25}}]}
    reqs = make_requests("arena", 1000, rate=5.0, seed=4)
    rep = simulate({"a100-80g-sxm": 1, "l4": 2}, MODEL, reqs, plan=plan)
    assert rep.summary["requests_per_kind"] == {"a100-80g-sxm": 750, "l4": 250}


def test_plan_buckets_route_by_size() -> None:
    reqs = make_requests("mixed", 800, rate=10.0, seed=5)
    rep = simulate(FLEET, MODEL, reqs, plan=PLAN)
    to_l4 = np.array([rep.replicas[i].kind == "l4" for i in rep.raw.replica])
    assert np.array_equal(to_l4, reqs.input_len <= 256)


def test_an_allocation_plan_routes_through_solvers_routing_plan() -> None:
    alloc = {"allocation": {"a100-80g-sxm": 1, "l4": 1},
             "assignment": {"0,0": {"l4": 1.0}, "0,1": {"a100-80g-sxm": 1.0}, "1,0": {"a100-80g-sxm": 1.0},
                            "1,1": {"a100-80g-sxm": 1.0}}}
    plan = routing_plan(alloc, [100, 10_000], [50, 10_000])
    reqs = make_requests("arena", 600, rate=4.0, seed=6)
    rep = simulate({"a100-80g-sxm": 1, "l4": 1}, MODEL, reqs, plan=plan)
    to_l4 = np.array([rep.replicas[i].kind == "l4" for i in rep.raw.replica])
    assert np.array_equal(to_l4, (reqs.input_len <= 100) & (reqs.output_len <= 50))


def test_idle_identical_replicas_take_turns() -> None:
    # each request leaves before the next arrives: every replica is idle, the tie goes round robin
    reqs = Requests(np.arange(40) * 2.0, np.full(40, 200), np.full(40, 50))
    rep = simulate({"h100-sxm": 4}, MODEL, reqs)
    assert rep.raw.replica.tolist() == [j % 4 for j in range(40)]


def test_router_picks_the_least_loaded_replica_by_slots() -> None:
    r = Router(["a", "a", "a", "a"], [1, 1, 1, 1])
    out = [3, 1, 1, 2]
    assert [r.pick([0, 1, 2, 3], out) for _ in range(4)] == [1, 1, 2, 1]  # turns 0..3 break the tie
    r2 = Router(["a", "b"], [1, 4])
    assert r2.pick([0, 1], [2, 3]) == 1  # 3/4 < 2/1


def test_summary_figures_are_consistent() -> None:
    reqs = make_requests("arena", 1500, rate=20.0, seed=8)
    rep = simulate(FLEET, MODEL, reqs, tpot_slo_s=0.05, ttft_slo_s=0.5)
    s = rep.summary
    assert s["modeled"] is True and "modeled" in s["note"]
    assert s["cost_per_hour"] == pytest.approx(2 * 2.74 + 3.78 + 3 * 0.7)
    assert s["p50_tpot_ms"] <= s["p99_tpot_ms"] and s["p50_ttft_ms"] <= s["p99_ttft_ms"]
    # attainment by hand from the per-request arrays
    raw = rep.raw
    o = reqs.output_len
    tpot = np.where(o > 1, (raw.finish - raw.first_token) / np.maximum(o - 1, 1), 0.0)
    meet = (tpot <= 0.05) & (raw.first_token - reqs.arrival <= 0.5) & ~raw.rejected
    assert s["slo_attainment"] == pytest.approx(meet.mean())
    # energy lies between all-idle and all-max power over the run
    idle = sum(r.cost.power_idle_w for r in rep.replicas) * s["makespan_s"]
    peak = sum(r.cost.power_max_w for r in rep.replicas) * s["makespan_s"]
    assert idle < s["energy_j"] < peak
    assert all(0 < u < 1 for u in s["utilisation"].values())
    # a tighter SLO never attains more
    tight = simulate(FLEET, MODEL, reqs, tpot_slo_s=0.02, ttft_slo_s=0.5).summary["slo_attainment"]
    assert tight <= s["slo_attainment"]


def test_more_load_on_the_same_fleet_raises_latency() -> None:
    lo = simulate({"a100-80g-sxm": 1}, MODEL, make_requests("arena", 1500, rate=2.0, seed=9)).summary
    hi = simulate({"a100-80g-sxm": 1}, MODEL, make_requests("arena", 1500, rate=20.0, seed=9)).summary
    assert hi["mean_tpot_ms"] > lo["mean_tpot_ms"] and hi["utilisation"]["a100-80g-sxm"] > lo["utilisation"]["a100-80g-sxm"]
