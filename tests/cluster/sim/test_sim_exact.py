"""Hand-computable cases: the simulator's times are exactly the performance model's step times.

Every expected value below is built from :mod:`cluster.perf` (``prefill_time``,
``decode_step_time``, ``request_latency``) step by step, independently of the simulator's own
coefficients; both engines must reproduce it.
"""

from __future__ import annotations

import numpy as np
import pytest

from cluster import perf
from cluster.catalog import default_catalog
from cluster.models import get_model
from cluster.sim import EngineConfig, Requests, StepCost, build_replicas, run_engine

MODEL = get_model("llama-3-8b")
CAT = default_catalog()
A100 = CAT.get("a100-80g-sxm")
L4 = CAT.get("l4")
ENGINES = ("fast", "simpy")
REL = 1e-9


def run(kind: str, arrival, p, o, core: str, engine: EngineConfig = EngineConfig()):
    reqs = Requests(np.asarray(arrival, dtype=float), np.asarray(p), np.asarray(o))
    replicas = build_replicas({kind: 1}, MODEL, engine=engine)
    return run_engine(replicas, reqs, engine=engine, core=core)


def test_step_cost_is_the_perf_model_on_uniform_batches() -> None:
    c = StepCost.of(MODEL, A100)
    for b, p in ((1, 1), (1, 512), (4, 333), (16, 2048)):
        t, _ = c.step(b * p, b * (p * (p + 1) // 2), b * p)
        assert t == pytest.approx(perf.prefill_time(MODEL, A100, b, p), rel=1e-12)
    for b, ctx in ((1, 0), (1, 700), (32, 1500), (256, 4000)):
        t, _ = c.step(b, b * ctx, b * ctx)
        assert t == pytest.approx(perf.decode_step_time(MODEL, A100, b, ctx), rel=1e-12)
    assert c.kv_capacity == perf.kv_capacity_tokens(MODEL, A100)


@pytest.mark.parametrize("core", ENGINES)
@pytest.mark.parametrize("chunked", [False, True])
def test_one_request_alone_takes_the_modeled_latency(core: str, chunked: bool) -> None:
    p, o = 700, 120
    raw = run("a100-80g-sxm", [0.25], [p], [o], core, EngineConfig(chunked_prefill=chunked))
    lat = perf.request_latency(MODEL, A100, p, o)
    assert raw.first_token[0] - 0.25 == pytest.approx(lat.ttft_s, rel=REL)
    assert raw.finish[0] - 0.25 == pytest.approx(lat.e2e_s, rel=REL)
    tpot = (raw.finish[0] - raw.first_token[0]) / (o - 1)
    assert tpot == pytest.approx(lat.tpot_s, rel=REL)
    assert raw.steps[0] == o  # one prefill step, o - 1 decode steps


@pytest.mark.parametrize("core", ENGINES)
def test_spaced_deterministic_arrivals_never_queue(core: str) -> None:
    n, p, o = 6, 200, 100
    lat = perf.request_latency(MODEL, A100, p, o)
    gap = 2.0
    assert lat.e2e_s < gap  # each request is gone before the next arrives
    arrival = np.arange(n) * gap
    raw = run("a100-80g-sxm", arrival, [p] * n, [o] * n, core)
    np.testing.assert_allclose(raw.first_token - arrival, lat.ttft_s, rtol=REL)
    np.testing.assert_allclose(raw.finish - arrival, lat.e2e_s, rtol=REL)


def _decode_ends(start: float, p: int, steps: int) -> list[float]:
    """End times of one sequence's decode steps j = 1..steps (step j reads p + j tokens)."""
    ends, t = [], start
    for j in range(1, steps + 1):
        t += perf.decode_step_time(MODEL, A100, 1, p + j)
        ends.append(t)
    return ends


@pytest.mark.parametrize("core", ENGINES)
def test_arrival_mid_decode_waits_for_the_step_then_prefills_and_batches(core: str) -> None:
    p1, o1, p2, o2 = 100, 50, 300, 60  # p1 + p2 even: the batch of two has a whole mean context
    e0 = perf.prefill_time(MODEL, A100, 1, p1)
    ends = _decode_ends(e0, p1, 10)
    a2 = (ends[8] + ends[9]) / 2  # in the middle of decode step 10
    raw = run("a100-80g-sxm", [0.0, a2], [p1, p2], [o1, o2], core)
    # queueing: request 2 waits for the step in progress, then one prefill step of its prompt
    wait = ends[9] - a2
    first2 = ends[9] + perf.prefill_time(MODEL, A100, 1, p2)
    assert raw.first_token[1] - a2 == pytest.approx(wait + perf.prefill_time(MODEL, A100, 1, p2), rel=REL)
    # request 1 was paused by that prefill, then decodes in a batch of two for its last 39 steps
    t = first2
    for j in range(o1 - 1 - 10):
        total = (p1 + 11 + j) + (p2 + 1 + j)
        t += perf.decode_step_time(MODEL, A100, 2, total // 2)
    assert raw.finish[0] == pytest.approx(t, rel=REL)
    assert raw.first_token[0] == pytest.approx(e0, rel=REL)


@pytest.mark.parametrize("core", ENGINES)
def test_kv_memory_holds_the_second_request_until_the_first_leaves(core: str) -> None:
    cap = StepCost.of(MODEL, L4).kv_capacity
    p1, o1, p2, o2 = 30_000, 20, 20_000, 20
    assert p1 + o1 <= cap < p1 + o1 + p2 + o2
    raw = run("l4", [0.0, 0.001], [p1, p2], [o1, o2], core)
    lat1 = perf.request_latency(MODEL, L4, p1, o1)
    lat2 = perf.request_latency(MODEL, L4, p2, o2)
    assert raw.finish[0] == pytest.approx(lat1.e2e_s, rel=REL)
    assert raw.first_token[1] == pytest.approx(lat1.e2e_s + lat2.ttft_s, rel=REL)
    assert raw.finish[1] == pytest.approx(lat1.e2e_s + lat2.e2e_s, rel=REL)


@pytest.mark.parametrize("core", ENGINES)
def test_max_num_seqs_one_serves_one_at_a_time(core: str) -> None:
    p, o = 400, 30
    lat = perf.request_latency(MODEL, A100, p, o)
    raw = run("a100-80g-sxm", [0.0, 0.0, 0.0], [p] * 3, [o] * 3, core, EngineConfig(max_num_seqs=1))
    np.testing.assert_allclose(raw.finish, [lat.e2e_s, 2 * lat.e2e_s, 3 * lat.e2e_s], rtol=REL)
    np.testing.assert_allclose(raw.first_token, [lat.ttft_s, lat.e2e_s + lat.ttft_s, 2 * lat.e2e_s + lat.ttft_s], rtol=REL)


@pytest.mark.parametrize("core", ENGINES)
def test_chunked_prefill_splits_a_long_prompt_into_budgeted_chunks(core: str) -> None:
    p, o, budget = 3000, 40, 1024
    eng = EngineConfig(chunked_prefill=True, max_batched_tokens=budget)
    raw = run("a100-80g-sxm", [0.0], [p], [o], core, eng)
    # chunk (q new tokens after k cached): the module docstring's roofline, with the perf figures
    eff = perf.DEFAULT_EFFICIENCY
    peak = perf.peak_flops(A100, MODEL.compute_dtype)
    ttft, k = 0.0, 0
    for q in (1024, 1024, 952):
        pairs = q * k + q * (q + 1) // 2
        tc = q * MODEL.flops_per_token / (peak * eff.compute) + pairs * MODEL.attention_flops_per_token(1) / (peak * eff.attention)
        tm = (MODEL.weight_bytes + (k + q) * MODEL.kv_bytes_per_token) / (A100.mem_bw_bytes_s * eff.memory)
        ttft += max(tc, tm) + eff.step_overhead_s
        k += q
    assert perf.prefill_time(MODEL, A100, 1, 1024) < ttft
    assert raw.first_token[0] == pytest.approx(ttft, rel=REL)
    tpot = (raw.finish[0] - raw.first_token[0]) / (o - 1)
    assert tpot == pytest.approx(perf.request_latency(MODEL, A100, p, o).tpot_s, rel=REL)


@pytest.mark.parametrize("core", ENGINES)
def test_a_request_larger_than_the_kv_cache_is_rejected(core: str) -> None:
    cap = StepCost.of(MODEL, L4).kv_capacity
    raw = run("l4", [0.0, 0.1], [cap, 100], [10, 10], core)
    assert raw.rejected.tolist() == [True, False]
    assert np.isnan(raw.finish[0]) and raw.finish[1] == pytest.approx(
        0.1 + perf.request_latency(MODEL, L4, 100, 10).e2e_s, rel=REL)


def test_closed_form_run_sum_matches_brute_force() -> None:
    from cluster.sim.engine_fast import sum_max_affine

    rng = np.random.default_rng(0)
    for _ in range(300):
        af, ag = rng.uniform(0, 0.02, 2)
        bf, bg = rng.choice([0.0, 1e-6, 3e-5, 1e-4], 2)
        n = int(rng.integers(0, 400))
        brute = sum(max(af + bf * i, ag + bg * i) for i in range(n))
        assert sum_max_affine(af, bf, ag, bg, n) == pytest.approx(brute, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("core", ENGINES)
def test_simultaneous_arrivals_at_an_idle_replica(core: str) -> None:
    # the first starts a prefill step alone; the second waits for it, then prefills; then both decode
    p1, p2 = 500, 300
    raw = run("a100-80g-sxm", [1.0, 1.0], [p1, p2], [20, 20], core)
    t1 = perf.prefill_time(MODEL, A100, 1, p1)
    assert raw.first_token[0] == pytest.approx(1.0 + t1, rel=REL)
    assert raw.first_token[1] == pytest.approx(1.0 + t1 + perf.prefill_time(MODEL, A100, 1, p2), rel=REL)
