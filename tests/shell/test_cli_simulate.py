"""`flotilla simulate` and `flotilla plan --simulate` as a user runs them: one JSON object, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cluster.catalog import default_catalog
from cluster.shell.cli import main as cli

ROOT = Path(__file__).resolve().parents[2]
FLEET = str(ROOT / "examples" / "fleet.yaml")


def run(capsys, *args: str) -> tuple[int, str, str]:
    rc = cli.main(list(args))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def one_line_error(rc: int, out: str, err: str, *words: str) -> None:
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], lines[0]


def test_simulate_the_example_fleet_as_json(capsys) -> None:
    rc, out, err = run(capsys, "simulate", "--fleet", FLEET, "--workload", "arena", "--rate", "3", "--requests", "2000",
                       "--tpot-slo-ms", "150", "--ttft-slo-ms", "2000", "--json")
    assert rc == 0, err
    doc = json.loads(out)
    for key in ("slo_attainment", "p99_tpot_ms", "p50_tpot_ms", "p99_ttft_ms", "cost_per_hour", "simulated_requests_per_s"):
        assert key in doc
    assert doc["modeled"] is True and "not measured" in doc["note"]
    assert 0.0 <= doc["slo_attainment"] <= 1.0 and doc["requests"] == 2000
    cat = default_catalog()
    assert doc["cost_per_hour"] == pytest.approx(2 * cat.get("rtx4090").price_per_hour + cat.get("a100-80g-sxm").price_per_hour)
    assert doc["fleet"] == {"a100-80g-sxm": 1, "jetson-agx-orin-64": 2, "rtx4090": 2}
    assert doc["unpriced_kinds"] == ["jetson-agx-orin-64"]


def test_both_engines_agree_through_the_cli(capsys) -> None:
    docs = []
    for engine in ("fast", "simpy"):
        rc, out, err = run(capsys, "simulate", "--fleet", FLEET, "--rate", "4", "--requests", "800", "--arrivals", "gamma:2",
                           "--seed", "3", "--engine", engine, "--chunked-prefill", "--json")
        assert rc == 0, err
        docs.append(json.loads(out))
    for key in ("p50_ttft_ms", "p99_ttft_ms", "p50_tpot_ms", "p99_tpot_ms", "mean_e2e_ms", "makespan_s"):
        assert docs[0][key] == pytest.approx(docs[1][key], rel=1e-9)


def test_plan_json_feeds_simulate_plan(capsys, tmp_path: Path) -> None:
    rc, out, err = run(capsys, "plan", "--model", "llama-3-8b", "--rate", "20", "--tpot-slo-ms", "16", "--json")
    assert rc == 0, err
    plan = json.loads(out)
    f = tmp_path / "plan.json"
    f.write_text(out)
    rc, out, err = run(capsys, "simulate", "--plan", str(f), "--requests", "1500", "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["fleet"] == {k: n for k, n in plan["allocation"].items() if n > 0}
    assert doc["model"] == "llama-3-8b" and doc["tpot_slo_ms"] == 16.0 and doc["rate"] == 20.0
    assert doc["routing"] == "plan"
    assert doc["cost_per_hour"] == pytest.approx(plan["cost_per_hour"])


def test_plan_simulate_reports_attainment_and_warns_below_target(capsys) -> None:
    args = ("plan", "--model", "llama-3-8b", "--rate", "20", "--tpot-slo-ms", "16", "--simulate", "--sim-requests", "2000")
    rc, out, err = run(capsys, *args, "--json")
    assert rc == 0, err
    sim = json.loads(out)["simulation"]
    assert sim["meets_target"] == (sim["slo_attainment"] >= 0.99) and sim["target"] == 0.99
    assert sim["slo_attainment"] < 0.99  # this plan's modeled tables are optimistic at a 16 ms TPOT
    rc, out, err = run(capsys, *args)
    assert rc == 0
    assert "simulated SLO attainment" in out and "below the target 99%" in err
    rc, out, err = run(capsys, *args, "--target", "0.5")
    assert rc == 0 and "below the target" not in err


def test_trace_replay_and_plot(capsys, tmp_path: Path) -> None:
    trace = tmp_path / "trace.csv"
    trace.write_text("arrival_s,input_len,output_len\n" + "".join(f"{0.5 * i},{100 + i},{20 + i}\n" for i in range(40)))
    png = tmp_path / "timeline.png"
    rc, out, err = run(capsys, "simulate", "--fleet", FLEET, "--workload", str(trace), "--arrivals", "trace",
                       "--requests", "30", "--plot", str(png), "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["requests"] == 30 and doc["rate"] is None and doc["plot"]["file"] == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_human_output_fits_80_columns(capsys) -> None:
    rc, out, err = run(capsys, "simulate", "--fleet", FLEET, "--requests", "500")
    assert rc == 0, err
    assert "MODELED" in out and "SLO attainment" in out
    assert max(len(line) for line in out.splitlines()) <= 80


@pytest.mark.parametrize(("body", "words"), [
    ('{"arrival_s": -1, "input_len": 5, "output_len": 2}\n', ("arrival_s", ":1")),
    ('{"arrival_s": 0, "input_len": 5, "output_len": 2}\n{"arrival_s": -0.5, "input_len": 5, "output_len": 2}\n', ("arrival_s", ":2")),
    ('{"arrival_s": 0, "input_len": 1.5, "output_len": 2}\n', ("input_len",)),
    ("\n", ("no requests",)),
])
def test_bad_trace_exits_2_naming_the_field(capsys, tmp_path: Path, body: str, words: tuple[str, ...]) -> None:
    f = tmp_path / "bad.jsonl"
    f.write_text(body)
    one_line_error(*run(capsys, "simulate", "--fleet", FLEET, "--workload", str(f), "--arrivals", "trace", "--json"), *words)


def test_bad_input_exits_2(capsys, tmp_path: Path) -> None:
    one_line_error(*run(capsys, "simulate", "--json"), "--fleet / --plan")
    one_line_error(*run(capsys, "simulate", "--fleet", FLEET, "--plan", "x.json"), "--fleet / --plan")
    bad = tmp_path / "fleet.yaml"
    bad.write_text("devices:\n  - kind: rtx9090\n")
    one_line_error(*run(capsys, "simulate", "--fleet", str(bad)), "devices[0].kind", "rtx9090")
    one_line_error(*run(capsys, "simulate", "--fleet", FLEET, "--arrivals", "bursty"), "arrivals")
    one_line_error(*run(capsys, "simulate", "--fleet", FLEET, "--rate", "-1"), "rate")
    one_line_error(*run(capsys, "simulate", "--fleet", FLEET, "--workload", "arenna"), "workload", "arena")
    one_line_error(*run(capsys, "simulate", "--fleet", FLEET, "--engine", "warp"), "engine")
    one_line_error(*run(capsys, "simulate", "--plan", str(tmp_path / "missing.json")), "--plan")
    notplan = tmp_path / "p.json"
    notplan.write_text('{"allocation": {"l4": 0}}')
    one_line_error(*run(capsys, "simulate", "--plan", str(notplan)), "provisions no device")


def test_worked_example_of_the_docs(capsys, tmp_path: Path) -> None:
    """docs/simulation.md's worked example: the figures it quotes (modeled, deterministic)."""
    rc, out, err = run(capsys, "simulate", "--fleet", FLEET, "--model", "llama-2-7b", "--workload", "arena", "--rate", "3",
                       "--requests", "2000", "--tpot-slo-ms", "150", "--ttft-slo-ms", "1000", "--seed", "0",
                       "--plot", str(tmp_path / "t.png"), "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["slo_attainment"] == pytest.approx(0.9905)
    assert (round(doc["p50_ttft_ms"], 1), round(doc["p99_ttft_ms"], 1)) == (29.0, 880.6)
    assert (round(doc["p50_tpot_ms"], 1), round(doc["p99_tpot_ms"], 1)) == (13.3, 112.0)
    assert round(doc["cost_per_hour"], 2) == 3.94 and round(doc["energy_per_request_j"], 1) == 263.8
    assert doc["requests_per_kind"]["a100-80g-sxm"] == 1283
    text = (ROOT / "docs" / "simulation.md").read_text()
    for figure in ("29.0 | 880.6", "13.3 | 112.0", "99.05 %", "$3.94/h", "263.8 J", "1283 of the 2000"):
        assert figure in text, figure


def test_autoscale_dry_run_compares_policies(capsys, tmp_path: Path) -> None:
    import numpy as np

    rng = np.random.default_rng(1)
    t = np.cumsum(rng.exponential(1 / 6.0, 3000))
    trace = tmp_path / "day.jsonl"
    trace.write_text("".join(json.dumps({"arrival_s": float(x), "input_len": int(rng.integers(50, 800)),
                                         "output_len": int(rng.integers(20, 300))}) + "\n" for x in t))
    png = tmp_path / "as.png"
    rc, out, err = run(capsys, "autoscale", "--dry-run", "--trace", str(trace), "--interval-s", "120",
                       "--window-s", "240", "--plot", str(png), "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["dry_run"] is True and doc["modeled"] is True and doc["requests"] == 3000
    assert set(doc["policies"]) == {"cost", "energy", "target-ongoing", "best-single-kind"}
    for p in doc["policies"].values():
        assert 0 <= p["slo_attainment"] <= 1 and p["cost_usd"] > 0 and p["rejected"] == 0
        assert p["timeline"] and all(row["replicas"] >= 1 for row in p["timeline"])
    assert png.read_bytes()[:4] == b"\x89PNG"
    rc, out, err = run(capsys, "autoscale", "--dry-run", "--trace", str(trace), "--policy", "cost",
                       "--interval-s", "120")
    assert rc == 0 and "cost" in out and "MODELED" in out
    assert max(len(line) for line in out.splitlines()) <= 80


def test_autoscale_bad_input_exits_2(capsys, tmp_path: Path) -> None:
    one_line_error(*run(capsys, "autoscale", "--requests", "100"), "--dry-run")
    one_line_error(*run(capsys, "autoscale", "--dry-run", "--policy", "cheap", "--requests", "100"), "--policy")
    empty = tmp_path / "e.jsonl"
    empty.write_text("")
    one_line_error(*run(capsys, "autoscale", "--dry-run", "--trace", str(empty)), "no requests")
    neg = tmp_path / "n.jsonl"
    neg.write_text('{"arrival_s": -3, "input_len": 5, "output_len": 5}\n')
    one_line_error(*run(capsys, "autoscale", "--dry-run", "--trace", str(neg)), "arrival_s")
    one_line_error(*run(capsys, "autoscale", "--dry-run", "--devices", "rtx9090", "--requests", "100"), "rtx9090")


def test_docs_autoscaling_table_is_the_committed_result() -> None:
    doc = json.loads((ROOT / "bench" / "results" / "autoscale_dry_run.json").read_text())
    text = (ROOT / "docs" / "simulation.md").read_text()
    assert doc["modeled"] is True and doc["requests"] == 1036800
    for name, p in doc["policies"].items():
        row = next(line for line in text.splitlines() if line.startswith(f"| {name} "))
        assert f"{100 * p['slo_attainment']:.1f} %" in row and f"${p['cost_usd']:.2f}" in row, row
        assert f"| {p['p99_tpot_ms']:.1f} |" in row and f"| {p['peak_replicas']} | {p['changes']} |" in row, row


def test_docs_speed_table_is_the_committed_result() -> None:
    doc = json.loads((ROOT / "bench" / "results" / "simulator.json").read_text())
    text = (ROOT / "docs" / "simulation.md").read_text()
    for row in doc["rows"]:
        line = next(x for x in text.splitlines() if x.startswith(f"| {row['rate_rps']:.0f} | "))
        assert f"| {row['fast']['per_min_median'] / 1e6:.2f} | {row['fast']['per_min_cpu_median'] / 1e6:.2f} |" in line
        assert f"| {row['simpy']['per_min'] / 1e3:.0f} | {row['simpy']['per_min_cpu'] / 1e3:.0f} |" in line
        assert row["engines_agree"] is True
