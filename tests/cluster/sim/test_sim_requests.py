"""Request streams: arrival processes, workloads, trace files and the errors bad input gets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cluster.exceptions import InputError
from cluster.models import get_model
from cluster.sim import EngineConfig, build_replicas, load_trace, make_requests, parse_arrivals
from solvers.workloads import WORKLOADS


def _jsonl(tmp_path: Path, rows: list[dict], name: str = "t.jsonl") -> Path:
    p = tmp_path / name
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


@pytest.mark.parametrize("arrivals", ["poisson", "gamma:4", "onoff:2:3"])
def test_arrival_processes_keep_the_mean_rate(arrivals: str) -> None:
    reqs = make_requests("arena", 40_000, rate=10.0, arrivals=arrivals, seed=1)
    assert np.all(np.diff(reqs.arrival) >= 0)
    assert len(reqs) / reqs.arrival[-1] == pytest.approx(10.0, rel=0.05)


def test_burstiness_orders_the_gap_cv() -> None:
    cv = {a: np.std(np.diff(r.arrival)) / np.mean(np.diff(r.arrival))
          for a in ("deterministic", "poisson", "gamma:3")
          for r in [make_requests("arena", 20_000, rate=5.0, arrivals=a, seed=2)]}
    assert cv["deterministic"] == pytest.approx(0.0, abs=1e-9)
    assert cv["poisson"] == pytest.approx(1.0, rel=0.05)
    assert cv["gamma:3"] == pytest.approx(3.0, rel=0.1)


def test_named_workload_lengths_have_the_specs_means() -> None:
    reqs = make_requests("pubmed", 50_000, rate=1.0, seed=3)
    spec = WORKLOADS["pubmed"]
    assert reqs.input_len.mean() == pytest.approx(spec.mean_input, rel=0.02)
    assert reqs.output_len.mean() == pytest.approx(spec.mean_output, rel=0.02)
    assert reqs.input_len.min() >= 1


def test_same_seed_same_stream() -> None:
    a, b = (make_requests("mixed", 500, rate=3.0, seed=11) for _ in range(2))
    assert np.array_equal(a.arrival, b.arrival) and np.array_equal(a.input_len, b.input_len)


def test_workload_file_lengths_are_drawn_from_its_records(tmp_path: Path) -> None:
    f = _jsonl(tmp_path, [{"input_len": 10, "output_len": 3}, {"input_tokens": 20, "output_tokens": 7}], "w.jsonl")
    reqs = make_requests(str(f), 200, rate=2.0, seed=0)
    assert set(zip(reqs.input_len.tolist(), reqs.output_len.tolist())) == {(10, 3), (20, 7)}


def test_trace_jsonl_and_csv(tmp_path: Path) -> None:
    j = _jsonl(tmp_path, [{"arrival_s": 0, "input_len": 5, "output_len": 2}, {"time": 1.5, "input_tokens": 9, "output_tokens": 4}])
    c = tmp_path / "t.csv"
    c.write_text("arrival_s,input_len,output_len\n0,5,2\n1.5,9,4\n")
    for path in (j, c):
        tr = load_trace(path)
        assert tr.arrival.tolist() == [0.0, 1.5] and tr.input_len.tolist() == [5, 9] and tr.output_len.tolist() == [2, 4]
    reqs = make_requests(str(j), 1, rate=99.0, arrivals="trace")
    assert len(reqs) == 1


@pytest.mark.parametrize(("rows", "field"), [
    ([{"arrival_s": -1, "input_len": 5, "output_len": 2}], "arrival_s"),
    ([{"arrival_s": 2, "input_len": 5, "output_len": 2}, {"arrival_s": 1, "input_len": 5, "output_len": 2}], "arrival_s"),
    ([{"arrival_s": 0, "input_len": 2.5, "output_len": 2}], "input_len"),
    ([{"arrival_s": 0, "input_len": 5, "output_tokens": 0}], "output_tokens"),
    ([{"arrival_s": 0, "input_len": 5}], "output_len"),
    ([{"input_len": 5, "output_len": 1}], "arrival_s"),
    ([{"arrival_s": "soon", "input_len": 5, "output_len": 1}], "arrival_s"),
])
def test_bad_trace_records_name_the_field_and_line(tmp_path: Path, rows: list[dict], field: str) -> None:
    p = _jsonl(tmp_path, rows)
    with pytest.raises(InputError, match=field) as e:
        load_trace(p)
    assert f"{p}:{len(rows)}" in str(e.value)


def test_empty_trace_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "empty.jsonl"
    p.write_text("\n")
    with pytest.raises(InputError, match="no requests"):
        load_trace(p)
    with pytest.raises(InputError, match="unknown format"):
        load_trace(tmp_path / "trace.txt")


@pytest.mark.parametrize(("text", "match"), [
    ("poison", "did you mean 'poisson'"), ("gamma", "takes 1 parameter"), ("gamma:-1", "arrivals"),
    ("onoff:1", "takes 2"), ("gamma:x", "must be numbers"),
])
def test_bad_arrivals_are_named(text: str, match: str) -> None:
    with pytest.raises(InputError, match=match):
        parse_arrivals(text)


def test_bad_workload_rate_and_fleet_are_named() -> None:
    with pytest.raises(InputError, match="workload: 'arenna'.*did you mean 'arena'"):
        make_requests("arenna", 10, rate=1.0)
    with pytest.raises(InputError, match="rate"):
        make_requests("arena", 10, rate=0.0)
    with pytest.raises(InputError, match="requests"):
        make_requests("arena", 0, rate=1.0)
    model = get_model("llama-3-8b")
    with pytest.raises(InputError, match="fleet.kind: .*rtx9090"):
        build_replicas({"rtx9090": 1}, model)
    with pytest.raises(InputError, match="fleet.kind: 't4' cannot hold llama-3-8b"):
        build_replicas({"t4": 1}, model)
    with pytest.raises(InputError, match="no device"):
        build_replicas({"l4": 0}, model)
    with pytest.raises(InputError, match="max_batched_tokens"):
        EngineConfig(chunked_prefill=True, max_batched_tokens=128)
