"""Throughput-under-SLO tables: the continuous-batching model against closed forms and brute force,
the paper grid, the measured-sweep reduction against AIBrix's own published profile."""

from __future__ import annotations

import json

import pytest

from cluster.catalog import default_catalog
from cluster.exceptions import InputError
from cluster.models import get_model
from cluster.tables import (
    AIBRIX_SAMPLE_FILE,
    load_bucket_grid,
    load_rate_sweep,
    modeled_rate_table,
    paper_grid,
    server_model,
)
from solvers.exceptions import AllocationInputError
from solvers.tables import (
    BucketGrid,
    ServerModel,
    SweepPoint,
    best_per_bucket,
    max_rate,
    rate_table,
    reduce_sweep,
)

CAT = default_catalog()
LLAMA = get_model("llama-2-7b")


def linear_server(a=0.010, b=0.0004, t_p=0.05, kv=10**9, max_batch=10**6):
    """T_d(B) = a + b max(B, 1), T_p constant: the model has a closed form."""
    return ServerModel(lambda B, c: a + b * max(B, 1.0), lambda p: t_p, kv, max_batch)


# ------------------------------------------------------------------------------------- grid
def test_paper_grid_is_the_10x6_grid_of_fig5():
    g = paper_grid()
    assert g.in_edges == (25, 100, 250, 500, 1000, 2000, 4000, 8000, 12000, 16000)
    assert g.out_edges == (25, 100, 250, 500, 1000, 2000)
    assert g.shape == (10, 6)


@pytest.mark.parametrize("p,o,want", [(1, 1, (0, 0)), (25, 25, (0, 0)), (26, 25, (1, 0)),
                                      (1000, 251, (4, 3)), (16000, 2000, (9, 5)),
                                      (50000, 9999, (9, 5))])
def test_bucket_of_uses_upper_edges_and_clamps(p, o, want):
    assert paper_grid().bucket_of(p, o) == want


def test_grid_rejects_unsorted_edges():
    with pytest.raises(AllocationInputError, match=r"in_edges\[1\] = 10 is not above"):
        BucketGrid((25, 10), (5,))
    with pytest.raises(AllocationInputError, match="out_edges is empty"):
        BucketGrid((25,), ())


def test_grid_file_errors_name_the_row(tmp_path):
    f = tmp_path / "g.csv"
    f.write_text("axis,index,boundary_tokens\ninput,0,25\nsideways,0,3\n")
    with pytest.raises(InputError, match="row 3: axis = 'sideways'"):
        load_bucket_grid(f)


# ------------------------------------------------------------------------------ the model
@pytest.mark.parametrize("slo", [0.02, 0.05, 0.2])
def test_max_rate_matches_the_closed_form_of_a_linear_server(slo):
    a, b, t_p, p, o = 0.010, 0.0004, 0.05, 500, 101
    op = max_rate(linear_server(a, b, t_p), p, o, slo)
    # tau(B) = a + b B + B t_p / (o - 1) = slo  (for B >= 1)
    bstar = (slo - a) / (b + t_p / (o - 1))
    lam = bstar / ((o - 1) * (a + b * bstar) + bstar * t_p)
    assert op.limit == "tpot"
    assert op.batch == pytest.approx(bstar, rel=1e-5)
    assert op.rate == pytest.approx(lam, rel=1e-5)
    assert op.tpot_s == pytest.approx(slo, rel=1e-5) and op.tpot_s <= slo


def test_max_rate_equals_brute_force_over_batches_on_the_perf_model():
    server = server_model(LLAMA, CAT.get("a10g"))
    p, o, slo = 1000, 250, 0.04
    op = max_rate(server, p, o, slo)
    c = p + o / 2
    best = 0.0
    for k in range(1, 20001):  # B on a grid of 1/1000
        B = k / 1000
        tau = server.decode_step_s(B, c) + B * server.prefill_s(p) / (o - 1)
        if tau <= slo and B <= server.kv_capacity_tokens / c:
            best = max(best, B / ((o - 1) * server.decode_step_s(B, c) + B * server.prefill_s(p)))
    assert best > 0
    # the grid's best batch is feasible, so the model's optimum is no lower (bisection tolerance)
    assert best * (1 - 1e-5) <= op.rate <= best * (1 + 1e-3)


def test_kv_capacity_caps_the_batch():
    p, o = 1000, 200
    kv = 5000  # B_max = 5000 / 1100
    op = max_rate(linear_server(kv=kv), p, o, 10.0)
    assert op.limit == "kv"
    assert op.batch == pytest.approx(kv / (p + o / 2))


def test_max_batch_caps_the_batch():
    op = max_rate(linear_server(max_batch=8), 100, 100, 10.0)
    assert (op.limit, op.batch) == ("max_batch", 8.0)


def test_does_not_fit_and_unservable_give_zero():
    assert max_rate(linear_server(kv=1099), 1000, 100, 1.0).limit == "does-not-fit"
    assert max_rate(linear_server(kv=1099), 1000, 100, 1.0).rate == 0.0
    op = max_rate(linear_server(a=0.05), 100, 100, 0.04)  # a lone decode step misses the SLO
    assert (op.rate, op.limit) == (0.0, "unservable-tpot")
    # a model that does not fit a device: llama-2-13b in bf16 on a 24 GiB card
    table = modeled_rate_table(get_model("llama-2-13b"), CAT.get("a10g"), paper_grid(), 0.12)
    assert all(r == 0 for row in table.rates for r in row)
    assert set(x for row in table.limits for x in row) == {"does-not-fit"}


def test_ttft_slo_only_lowers_the_rate_and_is_met():
    server = server_model(LLAMA, CAT.get("a100-80g-sxm"))
    free = max_rate(server, 2000, 250, 0.12)
    op = max_rate(server, 2000, 250, 0.12, ttft_slo_s=0.2)
    assert 0 < op.rate < free.rate
    assert op.limit == "ttft" and op.ttft_s == pytest.approx(0.2, rel=1e-4) and op.ttft_s <= 0.2
    t_p = server.prefill_s(2000)
    assert max_rate(server, 2000, 250, 0.12, ttft_slo_s=t_p * 0.99).limit == "unservable-ttft"


def test_single_output_token_is_prefill_bound():
    t_p = 0.05
    assert max_rate(linear_server(t_p=t_p), 100, 1, 0.01).rate == pytest.approx(1 / t_p)
    op = max_rate(linear_server(t_p=t_p), 100, 1, 0.01, ttft_slo_s=0.1)
    lam = op.rate  # M/D/1: T_p + lam T_p^2 / (2 (1 - lam T_p)) = S
    assert t_p + lam * t_p**2 / (2 * (1 - lam * t_p)) == pytest.approx(0.1)


def test_modeled_table_is_monotone_in_lengths_and_slo():
    grid = paper_grid()
    for kind in ("l4", "a10g", "a100-80g-sxm", "h100-sxm"):
        tight = modeled_rate_table(LLAMA, CAT.get(kind), grid, 0.04)
        loose = modeled_rate_table(LLAMA, CAT.get(kind), grid, 0.12)
        assert tight.source == "modeled"
        for i in range(10):
            for j in range(6):
                assert loose.rates[i][j] >= tight.rates[i][j]
                if i:
                    assert tight.rates[i][j] <= tight.rates[i - 1][j] + 1e-9
                if j:
                    assert tight.rates[i][j] <= tight.rates[i][j - 1] + 1e-9
    # a faster, larger device serves every bucket a smaller one serves, at a higher rate
    a100 = modeled_rate_table(LLAMA, CAT.get("a100-80g-sxm"), grid, 0.12)
    h100 = modeled_rate_table(LLAMA, CAT.get("h100-sxm"), grid, 0.12)
    assert all(h >= a for hr, ar in zip(h100.rates, a100.rates) for h, a in zip(hr, ar))


def test_slo_must_be_positive():
    with pytest.raises(InputError, match="tpot_slo_s: expected a finite number > 0, got -1"):
        modeled_rate_table(LLAMA, CAT.get("l4"), paper_grid(), -1)
    with pytest.raises(AllocationInputError, match="ttft_slo_s: expected a finite number > 0 or None, got 0"):
        max_rate(linear_server(), 10, 10, 0.1, ttft_slo_s=0)


def test_rate_table_profiles_each_bucket_at_its_upper_edges():
    seen = []
    server = ServerModel(lambda B, c: 0.01, lambda p: (seen.append(p), 0.01)[1], 10**9, 4)
    rate_table("x", server, BucketGrid((10, 20), (5, 7)), 1.0)
    assert sorted(set(seen)) == [10, 20]


def test_best_per_bucket():
    tables = {"a": [[2.0, 0.0]], "b": [[3.0, 1.0]], "c": [[0.0, 0.0]]}
    assert best_per_bucket(tables, {"a": 1.0, "b": 2.0, "c": 0.5}) == [["a", "b"]]
    assert best_per_bucket({"a": [[0.0]]}, {"a": 1.0}) == [[None]]
    with pytest.raises(AllocationInputError, match=r"no price for \['b'\]"):
        best_per_bucket({"a": [[1.0]], "b": [[1.0]]}, {"a": 1.0})


# ------------------------------------------------------------------------ measured sweeps
def test_aibrix_sample_reduces_to_aibrix_published_profile():
    """AIBrix's simulator-llama2-7b-a100.json (e2e P99 <= 5 s) lists 7.469959534415053 req/s for
    (512 in, 128 out) and 0.0 for (2048, 256); the reduction rule reproduces both."""
    points = load_rate_sweep(AIBRIX_SAMPLE_FILE)
    assert len(points) == 14
    grid = BucketGrid((512, 2048), (128, 256))
    table = reduce_sweep(points, grid, {"E2E": 5.0}, "P99")
    assert table.source == "measured"
    assert table.rates[0][0] == 7.469959534415053
    assert table.rates[1][1] == 0.0 and table.limits[1][1] == "unservable-slo"
    assert table.limits[0][1] == "unprofiled"
    # a looser SLO admits rate 16 for (512, 128), but 11.4 < 0.9 x 16: not sustained, so 8 stays
    assert reduce_sweep(points, grid, {"E2E": 6.0}, "P99").rates[0][0] == 7.469959534415053
    # (2048, 256) at rate 2: P99 9.26 s, throughput 1.948 >= 1.8; at rate 4: 2.60 < 3.6
    assert reduce_sweep(points, grid, {"E2E": 10.0}, "P99").rates[1][1] == 1.9483843880012008


def test_reduce_sweep_keeps_the_hardest_point_of_a_bucket_and_checks_names():
    lat = {"TPOT": {"P90": 0.01}}
    pts = [SweepPoint(10, 10, 4.0, 4.0, lat), SweepPoint(20, 10, 2.0, 2.0, lat)]
    assert reduce_sweep(pts, BucketGrid((20,), (10,)), {"TPOT": 0.05}, "P90").rates == ((2.0,),)
    with pytest.raises(AllocationInputError, match="unknown metric 'TPTO'.*did you mean 'TPOT'"):
        reduce_sweep(pts, BucketGrid((20,), (10,)), {"TPTO": 0.05})
    with pytest.raises(AllocationInputError, match="no TPOT P99 latency"):
        reduce_sweep(pts, BucketGrid((20,), (10,)), {"TPOT": 0.05}, "P99")


def test_load_rate_sweep_errors_name_file_line_and_field(tmp_path):
    f = tmp_path / "s.jsonl"
    good = {"input_tokens": 8, "output_tokens": 8, "request_rate": 1.0, "metric": "TPUT", "mean": 1.0}
    f.write_text(json.dumps(good) + "\n" + json.dumps({**good, "input_tokens": -3}) + "\n")
    with pytest.raises(InputError, match=r"s\.jsonl:2: field 'input_tokens' = -3"):
        load_rate_sweep(f)
    f.write_text(json.dumps({**good, "metric": "E2E", "P99": 1.0}) + "\n")
    with pytest.raises(InputError, match=r"s\.jsonl:1: .*has no TPUT line"):
        load_rate_sweep(f)
    f.write_text("{nope\n")
    with pytest.raises(InputError, match=r"s\.jsonl:1: not valid JSON"):
        load_rate_sweep(f)
