"""Workload generators (published means, exact histograms vs sampling) and record files."""

from __future__ import annotations

import json
import math

import pytest

from cluster.exceptions import InputError
from cluster.tables import paper_grid
from cluster.workload_files import load_requests
from solvers.exceptions import AllocationInputError
from solvers.tables import BucketGrid
from solvers.workloads import (
    LogNormalLengths,
    bin_requests,
    expected_histogram,
    get_workload,
    mixture,
    sample_requests,
)

# Fig. 10 legend of the Mélange paper (arXiv 2404.14527)
PUBLISHED = {"arena": (329.43, 195.66), "pubmed": (4174.13, 314.1)}


@pytest.mark.parametrize("name", ["arena", "pubmed"])
def test_spec_and_sample_means_match_the_published_means(name):
    spec = get_workload(name)
    want_in, want_out = PUBLISHED[name]
    assert (spec.mean_input, spec.mean_output) == pytest.approx((want_in, want_out))
    reqs = sample_requests(spec, 40000, seed=1)
    mean_in = sum(p for p, _ in reqs) / len(reqs)
    mean_out = sum(o for _, o in reqs) / len(reqs)
    assert mean_in == pytest.approx(want_in, rel=0.03)
    assert mean_out == pytest.approx(want_out, rel=0.03)


def test_mixed_is_80_20_by_request():
    mixed = get_workload("mixed")
    assert mixed.mean_output == pytest.approx(0.8 * 195.66 + 0.2 * 314.1)
    assert mixed.mean_output == pytest.approx(219.87, rel=0.01)  # the paper's figure
    assert mixed.mean_input == pytest.approx(0.8 * 329.43 + 0.2 * 4174.13)
    g = paper_grid()
    a, p, m = (expected_histogram(get_workload(n), g) for n in ("arena", "pubmed", "mixed"))
    for i in range(10):
        for j in range(6):
            assert m[i][j] == pytest.approx(0.8 * a[i][j] + 0.2 * p[i][j], abs=1e-15)


def test_lognormal_parameters():
    d = LogNormalLengths(329.43, 1.2)
    assert math.exp(d.mu + d.sigma**2 / 2) == pytest.approx(329.43)
    assert d.cdf(math.exp(d.mu)) == pytest.approx(0.5)
    assert d.cdf(0) == 0.0
    with pytest.raises(AllocationInputError, match="LogNormalLengths.sigma = 0"):
        LogNormalLengths(10, 0)


@pytest.mark.parametrize("name", ["arena", "pubmed", "mixed"])
def test_exact_histogram_agrees_with_sampling(name):
    g = paper_grid()
    spec = get_workload(name)
    hist = expected_histogram(spec, g)
    assert math.fsum(v for row in hist for v in row) == pytest.approx(1.0, abs=1e-12)
    assert all(v >= 0 for row in hist for v in row)
    emp = bin_requests(sample_requests(spec, 30000, seed=7), g).histogram
    tv = 0.5 * sum(abs(hist[i][j] - emp[i][j]) for i in range(10) for j in range(6))
    assert tv < 0.02


def test_sampling_is_seeded():
    spec = get_workload("mixed")
    assert sample_requests(spec, 50, seed=3) == sample_requests(spec, 50, seed=3)
    assert sample_requests(spec, 50, seed=3) != sample_requests(spec, 50, seed=4)


def test_bin_requests_edges_and_clamping():
    g = BucketGrid((25, 100), (10,))
    b = bin_requests([(25, 10), (26, 10), (100, 5), (500, 20)], g)
    assert b.histogram == ((0.25,), (0.75,))
    assert (b.count, b.clamped) == (4, 1)
    with pytest.raises(AllocationInputError, match="no records"):
        bin_requests([], g)
    with pytest.raises(AllocationInputError, match="record 1: input_len: expected an integer >= 1, got 0"):
        bin_requests([(1, 1), (0, 1)], g)


def test_unknown_workload_and_bad_share():
    with pytest.raises(AllocationInputError, match="unknown.*did you mean 'arena'"):
        get_workload("arenaa")
    with pytest.raises(AllocationInputError, match="pubmed_share = 1.5"):
        mixture(1.5)


# ----------------------------------------------------------------------------------- files
def test_load_jsonl_and_csv(tmp_path):
    j = tmp_path / "w.jsonl"
    j.write_text(json.dumps({"input_len": 12, "output_len": 3, "id": "x"}) + "\n\n"
                 + json.dumps({"input_tokens": 7, "output_tokens": 9}) + "\n")
    assert load_requests(j) == [(12, 3), (7, 9)]
    c = tmp_path / "w.csv"
    c.write_text("input_len,output_len,who\n12,3,a\n7,9,b\n")
    assert load_requests(c) == [(12, 3), (7, 9)]


def test_file_errors_name_file_line_and_field(tmp_path):
    j = tmp_path / "w.jsonl"
    j.write_text(json.dumps({"input_len": 12, "output_len": 3}) + "\n"
                 + json.dumps({"input_len": 12, "output_len": -1}) + "\n")
    with pytest.raises(InputError, match=r"w\.jsonl:2: field 'output_len' = -1"):
        load_requests(j)
    j.write_text(json.dumps({"input_len": 5}) + "\n")
    with pytest.raises(InputError, match=r"w\.jsonl:1: missing field 'output_len'"):
        load_requests(j)
    c = tmp_path / "w.csv"
    c.write_text("input_len,output_len\n12,3\n4,lots\n")
    with pytest.raises(InputError, match=r"w\.csv:3: field 'output_len' = 'lots'"):
        load_requests(c)
    c.write_text("in,out\n1,2\n")
    with pytest.raises(InputError, match=r"w\.csv:1: header .* no column 'input_len'"):
        load_requests(c)
    with pytest.raises(InputError, match="unknown format '.txt'"):
        load_requests(tmp_path / "w.txt")
    with pytest.raises(InputError, match="cannot read"):
        load_requests(tmp_path / "missing.csv")
