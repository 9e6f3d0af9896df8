"""The measured-table replica (cluster/sim/measured.py): the ExpertActor's policy (no batching,
``max_concurrency`` requests at once sharing the host, the Router's slot pool handing a freed slot
to any waiter), timed by a measured table, per concurrency or per phase. Expected times are
computed by hand from the table."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cluster.exceptions import InputError
from cluster.sim.measured import MeasuredEngine, fit_measured, latency_percentiles, run_measured, speed_factor
from cluster.sim.requests import Requests

ENGINE = MeasuredEngine(max_concurrency=2, overhead_s=0.01, prefill_base_s=0.1, prefill_per_token_s=0.001,
                        decode_step_s=(0.05, 0.08), prefill_slowdown=(1.0, 1.5))


def _reqs(arrival, inp, out) -> Requests:
    return Requests(np.array(arrival, dtype=float), np.array(inp), np.array(out))


def test_one_request_alone_is_overhead_prefill_then_decode_steps():
    run = run_measured(ENGINE, _reqs([0.0], [100], [5]))
    assert run.first_token[0] == pytest.approx(0.01 + 0.1 + 0.1)
    assert run.finish[0] == pytest.approx(0.21 + 4 * 0.05)
    pct = latency_percentiles(_reqs([0.0], [100], [5]), run.first_token, run.finish)
    assert pct["p50_ttft_ms"] == pytest.approx(210.0) and pct["p99_tpot_ms"] == pytest.approx(50.0)


def test_concurrent_requests_are_timed_by_the_contention_when_each_step_starts():
    run = run_measured(ENGINE, _reqs([0.0, 0.0], [100, 100], [5, 5]))
    # r0 takes the slot first (k=1 prefill), r1 second (k=2: slowdown 1.5)
    assert run.first_token.tolist() == pytest.approx([0.21, 0.01 + 0.2 * 1.5])
    # r0 decodes 4 steps at k=2: 0.21 + 4 * 0.08
    assert run.finish[0] == pytest.approx(0.21 + 4 * 0.08)
    # r1: three steps at k=2 (0.31 -> 0.55); r0 left at 0.53, so its 4th step starts at k=1
    assert run.finish[1] == pytest.approx(0.31 + 3 * 0.08 + 0.05)
    assert run.peak.tolist() == [2]


def test_a_full_replica_queues_centrally_and_fifo_serves_in_arrival_order():
    one = dataclasses.replace(ENGINE, max_concurrency=1, decode_step_s=(0.05,), prefill_slowdown=(1.0,))
    run = run_measured(one, _reqs([0.0, 0.1, 0.1], [100, 100, 1], [5, 5, 1]), hand_off="fifo")
    assert run.admitted.tolist() == pytest.approx([0.0, 0.41, 0.82])
    assert run.first_token.tolist() == pytest.approx([0.21, 0.62, 0.82 + 0.01 + 0.101])
    assert run.finish[2] == run.first_token[2]  # one output token: done at the first
    assert run.peak.tolist() == [1]


def test_several_replicas_take_arrivals_least_loaded_first():
    one = dataclasses.replace(ENGINE, max_concurrency=1, decode_step_s=(0.05,), prefill_slowdown=(1.0,))
    run = run_measured(one, _reqs([0.0, 0.0, 0.0], [100] * 3, [5] * 3), replicas=2)
    assert run.replica.tolist() == [0, 1, 0]  # the third waits for the first slot freed
    assert run.admitted.tolist() == pytest.approx([0.0, 0.0, 0.41])


def test_random_trace_invariants():
    rng = np.random.default_rng(3)
    n = 400
    arr = np.cumsum(rng.exponential(0.15, n))
    reqs = _reqs(arr, rng.integers(20, 300, n), rng.integers(1, 20, n))
    run = run_measured(ENGINE, reqs, replicas=2, seed=1, hand_off="fifo")
    assert np.all(np.isfinite(run.finish)) and np.all(run.finish >= run.first_token)
    assert np.all(run.first_token >= run.admitted + ENGINE.overhead_s) and np.all(run.admitted >= reqs.arrival)
    assert np.all(run.peak <= ENGINE.max_concurrency)
    # requests held per replica never exceed the slots (sweep over admission / finish instants)
    for r in range(2):
        mine = run.replica == r
        ev = sorted([(t, 1) for t in run.admitted[mine]] + [(t, -1) for t in run.finish[mine]], key=lambda e: (e[0], e[1]))
        assert max(np.cumsum([d for _, d in ev])) <= ENGINE.max_concurrency
    # central FCFS: slots are handed out in arrival order
    assert np.all(np.diff(run.admitted) >= -1e-12)
    # a request never waits while a slot of any replica is free at its arrival: wait > 0 only when all are full
    waited = run.admitted > reqs.arrival + 1e-12
    for i in np.flatnonzero(waited):
        t = reqs.arrival[i]
        for r in range(2):
            held = np.sum((run.replica == r) & (run.admitted <= t) & (run.finish > t))
            assert held == ENGINE.max_concurrency


def test_jitter_is_seeded_and_unit_jitter_changes_nothing():
    rng = np.random.default_rng(0)
    reqs = _reqs(np.cumsum(rng.exponential(0.3, 50)), rng.integers(20, 200, 50), rng.integers(2, 10, 50))
    noisy = dataclasses.replace(ENGINE, prefill_jitter=(0.8, 1.0, 1.7), decode_jitter=(0.9, 1.1, 2.0))
    a, b = run_measured(noisy, reqs, seed=5), run_measured(noisy, reqs, seed=5)
    assert np.array_equal(a.finish, b.finish)
    assert not np.allclose(a.finish, run_measured(noisy, reqs, seed=5, jitter=False).finish)
    unit = dataclasses.replace(ENGINE, prefill_jitter=(1.0,), decode_jitter=(1.0,))
    assert np.array_equal(run_measured(unit, reqs).finish, run_measured(ENGINE, reqs).finish)


def test_fit_recovers_the_table_that_generated_the_samples():
    want = dataclasses.replace(ENGINE, prefill_slowdown=(1.0, 1.4))
    samples = []
    for k in (1, 2):
        for p in (44, 95, 178, 44, 95, 178):
            e = want.prefill_s(p, k)
            samples.append({"concurrency": k, "prompt_tokens": p, "engine_ttft_s": e, "ttft_s": e + want.overhead_s,
                            "tpot_s": want.decode_step_s[k - 1]})
    got = fit_measured(samples, max_concurrency=2)
    for name in ("overhead_s", "prefill_base_s", "prefill_per_token_s"):
        assert getattr(got, name) == pytest.approx(getattr(want, name), rel=1e-9), name
    assert got.decode_step_s == pytest.approx(want.decode_step_s) and got.prefill_slowdown == pytest.approx(want.prefill_slowdown)
    assert got.prefill_jitter == pytest.approx((1.0,) * 12) and got.decode_jitter == pytest.approx((1.0,) * 12)
    assert MeasuredEngine.from_json(got.to_json()) == got


def test_bad_tables_and_samples_name_the_field():
    with pytest.raises(InputError, match="decode_step_s"):
        dataclasses.replace(ENGINE, decode_step_s=(0.05,))
    with pytest.raises(InputError, match="overhead_s"):
        dataclasses.replace(ENGINE, overhead_s=-1.0)
    with pytest.raises(InputError, match=r"decode_jitter\[1\]"):
        dataclasses.replace(ENGINE, decode_jitter=(1.0, 0.0))
    with pytest.raises(InputError, match="max_concurrency"):
        dataclasses.replace(ENGINE, max_concurrency=0)
    with pytest.raises(InputError, match="unknown field 'speed'"):
        MeasuredEngine.from_json({**ENGINE.to_json(), "speed": 1})
    with pytest.raises(InputError, match="concurrency 2"):
        fit_measured([{"concurrency": 1, "prompt_tokens": 10, "engine_ttft_s": 0.1, "ttft_s": 0.11, "tpot_s": 0.05}],
                     max_concurrency=2)
    with pytest.raises(InputError, match="replicas"):
        run_measured(ENGINE, _reqs([0.0], [10], [2]), replicas=0)


def test_fit_prefill_line_goes_through_medians_so_an_outlier_moves_nothing():
    samples = []
    for p, e in ((40, 0.14), (100, 0.2), (200, 0.3)):
        for rep in range(3):
            slow = 10.0 if (p, rep) == (200, 0) else 1.0  # one request caught by a burst of other work
            samples.append({"concurrency": 1, "prompt_tokens": p, "engine_ttft_s": e * slow, "ttft_s": e * slow + 0.01,
                            "tpot_s": 0.05})
    got = fit_measured(samples, max_concurrency=1)
    assert got.prefill_per_token_s == pytest.approx(0.001) and got.prefill_base_s == pytest.approx(0.1)
    assert got.prefill_slowdown == pytest.approx((1.0,)) and max(got.prefill_jitter) == pytest.approx(10.0)


def test_random_hand_off_gives_a_freed_slot_to_any_waiter_uniformly_and_seeded():
    one = dataclasses.replace(ENGINE, max_concurrency=1, decode_step_s=(0.05,), prefill_slowdown=(1.0,))
    reqs = _reqs([0.0, 0.1, 0.1, 0.1], [100] * 4, [5] * 4)
    firsts = []
    for seed in range(300):
        run = run_measured(one, reqs, seed=seed, hand_off="random")
        assert run.admitted[0] == 0.0 and sorted(run.admitted[1:]) == pytest.approx([0.41, 0.82, 1.23])
        firsts.append(int(np.argmin(run.admitted[1:])) + 1)
    counts = np.bincount(firsts, minlength=4)[1:]
    assert counts.min() > 70  # each of the three waiters is served first about 100 times in 300
    assert np.array_equal(run_measured(one, reqs, seed=7, hand_off="random").admitted,
                          run_measured(one, reqs, seed=7, hand_off="random").admitted)
    with pytest.raises(InputError, match="hand_off"):
        run_measured(one, reqs, hand_off="lifo")


PHASED = dataclasses.replace(ENGINE, prefill_contention=(1.0, 0.5), decode_contention=(0.2, 0.6))


def test_phased_table_times_every_phase_by_what_the_others_do_at_each_instant():
    run = run_measured(PHASED, _reqs([0.0], [100], [5]))
    assert run.first_token[0] == pytest.approx(0.21) and run.finish[0] == pytest.approx(0.41)
    # two at once: both prefill 0.2 s of work at rate 1 / (1 + 1.0), then decode 0.2 s at 1 / (1 + 0.6)
    run = run_measured(PHASED, _reqs([0.0, 0.0], [100, 100], [5, 5]))
    assert run.first_token.tolist() == pytest.approx([0.41, 0.41]) and run.finish.tolist() == pytest.approx([0.73, 0.73])
    # r0 (1 prompt token, 2 output tokens): first token at 0.01 + 0.101 alone; r1 arrives at 0.12,
    # in its overhead (no contention) until 0.13: r0 has done 0.019 of its 0.05 s decode by then,
    # the other 0.031 at rate 1 / (1 + 0.2) (r1 in prefill): r0 ends at 0.13 + 0.0372
    run = run_measured(PHASED, _reqs([0.0, 0.12], [1, 100], [2, 2]))
    assert run.first_token[0] == pytest.approx(0.111) and run.finish[0] == pytest.approx(0.1672)
    # r1's prefill: 0.2 s of work, 0.0372 s at rate 1 / (1 + 0.5) (r0 decoding), the rest alone
    assert run.first_token[1] == pytest.approx(0.1672 + 0.2 - 0.0372 / 1.5)


def test_phased_random_trace_invariants():
    rng = np.random.default_rng(4)
    n = 300
    reqs = _reqs(np.cumsum(rng.exponential(0.2, n)), rng.integers(20, 300, n), rng.integers(1, 12, n))
    noisy = dataclasses.replace(PHASED, prefill_jitter=(0.8, 1.0, 1.7), decode_jitter=(0.9, 1.1, 2.0))
    for replicas in (1, 3):
        run = run_measured(noisy, reqs, replicas=replicas, seed=2)
        assert np.all(np.isfinite(run.finish)) and np.all(run.finish >= run.first_token)
        assert np.all(run.first_token >= run.admitted + noisy.overhead_s - 1e-9) and np.all(run.admitted >= reqs.arrival)
        assert np.all(run.peak <= noisy.max_concurrency)
        # no request is faster than alone with its jitter at 0.8 / 0.9
        alone = run.first_token - run.admitted - noisy.overhead_s
        assert np.all(alone >= 0.8 * (0.1 + 0.001 * reqs.input_len) - 1e-9)
        assert np.array_equal(run.finish, run_measured(noisy, reqs, replicas=replicas, seed=2).finish)


def _closed_loop_samples(engine: MeasuredEngine, k: int, prompts: list[int], t0: float) -> list[dict]:
    """What a closed-loop measurement at concurrency ``k`` records, simulated with ``engine``
    (no jitter): ``k`` clients, each sending its prompts back to back."""
    from cluster.sim.measured import run_measured as run

    out = []
    clients = [prompts[w::k] for w in range(k)]
    ready = [t0] * k
    while any(clients):
        # one round: each client with work left sends its next request at its ready time
        idx = [w for w in range(k) if clients[w]]
        reqs = _reqs([ready[w] for w in idx], [clients[w][0] for w in idx], [5] * len(idx))
        got = run(engine, reqs, jitter=False)
        for j, w in enumerate(idx):
            first, end = float(got.first_token[j]), float(got.finish[j])
            out.append({"concurrency": k, "prompt_tokens": clients[w][0], "first_s": first, "end_s": end,
                        "ttft_s": first - ready[w], "engine_ttft_s": first - ready[w] - engine.overhead_s,
                        "tpot_s": (end - first) / 4})
            clients[w] = clients[w][1:]
        ready = [max(ready[w], float(got.finish.max())) for w in range(k)]
    return out


def _slower(s: dict, f: float, later: float) -> dict:
    """Sample ``s`` as measured on a host ``f`` times slower, ``later`` s later (every instant and duration scaled)."""
    return dict(s, ttft_s=s["ttft_s"] * f, engine_ttft_s=s["engine_ttft_s"] * f, tpot_s=s["tpot_s"] * f,
                first_s=s["first_s"] * f + later, end_s=s["end_s"] * f + later)


def test_fit_recovers_phase_contention_and_speed_factor_tracks_the_host():
    prompts = [44, 95, 178, 60, 130, 44, 95, 178, 60, 130]
    samples = _closed_loop_samples(PHASED, 1, prompts, 0.0) + _closed_loop_samples(PHASED, 2, prompts, 100.0)
    got = fit_measured(samples, max_concurrency=2)
    assert got.phased
    assert got.prefill_per_token_s == pytest.approx(0.001) and got.prefill_base_s == pytest.approx(0.1)
    assert got.decode_step_s[0] == pytest.approx(0.05)
    assert got.prefill_contention == pytest.approx(PHASED.prefill_contention, rel=1e-3)
    assert got.decode_contention == pytest.approx(PHASED.decode_contention, rel=1e-3)
    assert got.prefill_jitter == pytest.approx((1.0,) * len(samples)) and speed_factor(got, samples) == pytest.approx(1.0)
    slow = [_slower(s, 1.3, 0.0) for s in samples]
    assert speed_factor(got, slow) == pytest.approx(1.3)
    scaled = got.scaled(1.3)
    assert scaled.prefill_s(100, 1) == pytest.approx(1.3 * got.prefill_s(100, 1))
    assert scaled.decode_step_s == pytest.approx(tuple(1.3 * x for x in got.decode_step_s))
    assert scaled.prefill_contention == got.prefill_contention
    assert MeasuredEngine.from_json(got.to_json()) == got


def test_fit_per_measurement_leaves_the_drift_out_of_the_jitter():
    prompts = [44, 95, 178, 60, 130, 44, 95, 178]
    base = _closed_loop_samples(PHASED, 1, prompts, 0.0) + _closed_loop_samples(PHASED, 2, prompts, 100.0)
    # the same measurement twice, once on a host 1.5 times slower
    slow = [_slower(s, 1.5, 1000.0) for s in base]
    mixed = base + slow
    pooled = fit_measured(mixed, max_concurrency=2)
    assert max(pooled.decode_jitter) / min(pooled.decode_jitter) > 1.3  # the drift looks like noise
    per = fit_measured([dict(s, measurement=0) for s in base] + [dict(s, measurement=1) for s in slow], max_concurrency=2)
    assert per.decode_jitter == pytest.approx((1.0,) * len(per.decode_jitter))
    # the table is at the samples' middle speed (the drift is :func:`speed_factor`'s): its shape is the generator's
    assert per.decode_step_s[0] / per.prefill_base_s == pytest.approx(0.5)
    assert per.decode_contention == pytest.approx(PHASED.decode_contention, rel=1e-3)
    assert speed_factor(per, slow) / speed_factor(per, base) == pytest.approx(1.5)
    with pytest.raises(InputError, match="contention"):
        dataclasses.replace(ENGINE, prefill_contention=(1.0, 0.5))
    with pytest.raises(InputError, match=r"decode_contention\[1\]"):
        dataclasses.replace(PHASED, decode_contention=(0.2, -1.0))
