"""`flotilla plan`: flags -> problem -> exact plan, Mélange config, exit codes, --json, --plot."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cluster.shell.cli import main as cli
from cluster.shell.cli.plan import build_problem, register
from solvers.allocation import single_type_count, solve

TOY = json.loads((Path(__file__).parents[2] / "examples" / "melange_config.json").read_text())


@pytest.fixture(scope="module")
def flotilla():
    """cli.main with `plan` registered (the lead wires it into COMMAND_MODULES)."""
    added = "plan" not in {c.name for c in cli.app.registered_commands}
    if added:
        register(cli.app)
    yield cli.main
    if added:
        cli.app.registered_commands[:] = [c for c in cli.app.registered_commands if c.name != "plan"]


def run(flotilla, capsys, *args):
    rc = flotilla(["plan", *args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_toy_config_exact_optimum_and_name_mapping(flotilla, capsys, tmp_path):
    f = tmp_path / "toy.json"
    f.write_text(json.dumps(TOY))
    rc, out, err = run(flotilla, capsys, "--config", str(f), "--json")
    assert rc == 0, err
    doc = json.loads(out)  # stdout is exactly one JSON object
    assert doc["allocation"] == {"a10g": 3, "a100-80g-sxm": 1}
    assert doc["cost_per_hour"] == pytest.approx(6.70)
    assert doc["baselines"] == {"a10g": pytest.approx(12.12), "a100-80g-sxm": pytest.approx(7.34)}
    assert doc["names"] == {"A10G": "a10g", "A100-80GB": "a100-80g-sxm"}
    assert doc["throughput_source"] == "config" and doc["solve_seconds"] >= 0
    # unknown names are kept as given
    toy = json.loads(json.dumps(TOY))
    toy["gpu_info"]["MyBox"] = toy["gpu_info"].pop("A10G")
    f.write_text(json.dumps(toy))
    rc, out, _ = run(flotilla, capsys, "--config", str(f), "--json")
    assert rc == 0 and json.loads(out)["allocation"] == {"a100-80g-sxm": 1, "MyBox": 3}


def test_modeled_plan_json_equals_solving_the_same_problem(flotilla, capsys):
    args = dict(model="llama-2-7b", workload="arena", rate=8.0, tpot_slo_ms=120.0, ttft_slo_ms=None,
                devices="l4,a10g,a100-80g-sxm,h100-sxm", max_count=[], power_budget_w=None,
                headroom=0.0, slice_factor=8, prices="catalog")
    problem, _ = build_problem(**args)
    want = solve(problem)
    rc, out, err = run(flotilla, capsys, "--model", "llama-2-7b", "--workload", "arena", "--rate", "8",
                       "--tpot-slo-ms", "120", "--devices", "l4,a10g,a100-80g-sxm,h100-sxm", "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["allocation"] == want.counts
    assert doc["cost_per_hour"] == pytest.approx(want.cost_per_hour)
    assert "MODELED" in doc["note"] and doc["throughput_source"] == "modeled"
    for name, price in doc["prices_per_hour"].items():  # baselines = ceil(load alone) x price
        n = single_type_count(problem, name)
        assert doc["baselines"][name] == (None if n is None else pytest.approx(n * price))
    assert doc["cost_per_hour"] <= min(v for v in doc["baselines"].values() if v is not None) + 1e-9
    # the cost is what the counts cost
    assert doc["cost_per_hour"] == pytest.approx(
        sum(doc["prices_per_hour"][k] * n for k, n in doc["allocation"].items()))


def test_human_output_says_modeled(flotilla, capsys):
    rc, out, _ = run(flotilla, capsys, "--workload", "arena", "--rate", "2", "--devices", "a100-80g-sxm,h100-sxm")
    assert rc == 0
    assert "cheapest device mix" in out and "MODELED" in out and "h100-sxm" in out


def test_caps_power_and_ttft_change_the_answer(flotilla, capsys):
    base = ["--workload", "mixed", "--rate", "16", "--tpot-slo-ms", "120", "--json"]
    free = json.loads(run(flotilla, capsys, *base)[1])
    kind, n = max(free["allocation"].items(), key=lambda kv: kv[1])
    assert n >= 1
    capped = json.loads(run(flotilla, capsys, *base, "--max-count", f"{kind}={n - 1}")[1])
    assert capped["allocation"][kind] <= n - 1 and capped["max_count"] == {kind: n - 1}
    assert capped["cost_per_hour"] >= free["cost_per_hour"]
    assert capped["allocation"] != free["allocation"]
    # TTFT as well as TPOT: never cheaper
    ttft = json.loads(run(flotilla, capsys, *base, "--ttft-slo-ms", "2000")[1])
    assert ttft["cost_per_hour"] >= free["cost_per_hour"] and ttft["ttft_slo_ms"] == 2000
    # a power budget below the free plan's draw is honoured, or reported infeasible with the cause
    watts = {"l4": 72, "a10g": 300, "a100-80g-sxm": 400, "h100-sxm": 700}
    drawn = sum(watts[k] * n for k, n in free["allocation"].items())
    rc, out, err = run(flotilla, capsys, *base, "--power-budget-w", str(drawn - 1))
    if rc == 0:
        doc = json.loads(out)
        assert sum(watts[k] * n for k, n in doc["allocation"].items()) <= drawn - 1
    else:
        assert rc == 2 and "power budget" in err
    rc, _, err = run(flotilla, capsys, *base, "--power-budget-w", "100")
    assert rc == 2 and "infeasible: power budget too tight" in err


@pytest.mark.parametrize("args,needle", [
    (["--rate", "-1"], "--rate: -1.0; allowed: >= 0"),
    (["--devices", "l4,a1000"], "a1000"),
    (["--model", "llama-9"], "model: unknown model 'llama-9'"),
    (["--workload", "arenna"], "did you mean 'arena'"),
    (["--max-count", "h100-sxm=two"], "--max-count: 'two' is not an integer"),
    (["--max-count", "t4=1"], "'t4' is not in --devices"),
    (["--devices", "rtx4070"], "'rtx4070' has no catalog price"),
    (["--solver", "gurobi"], "solver = 'gurobi': unknown"),
    (["--tpot-slo-ms", "0"], "--tpot-slo-ms: 0.0; allowed: > 0"),
    (["--workload", "pubmed", "--devices", "l4", "--strict"], "cannot be served by any candidate type (['l4'])"),
    (["--devices", "l4", "--tpot-slo-ms", "0.5"], "infeasible: bucket"),
    (["--devices", "a100-80g-sxm", "--max-count", "a100-80g-sxm=0"], "infeasible: caps too low"),
])
def test_bad_input_exits_2_naming_the_field(flotilla, capsys, args, needle):
    rc, out, err = run(flotilla, capsys, *args, "--json")
    assert rc == 2
    assert out == ""
    assert needle in err and err.startswith("flotilla: error:")


def test_bad_config_exits_2_with_json_path(flotilla, capsys, tmp_path):
    toy = json.loads(json.dumps(TOY))
    toy["gpu_info"]["A10G"]["tputs"][1] = [5, 2, 7]
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(toy))
    rc, _, err = run(flotilla, capsys, "--config", str(f))
    assert rc == 2 and "gpu_info.A10G.tputs[1]" in err
    toy = json.loads(json.dumps(TOY))
    toy["workload_distribution"] = [[0.2, 0.1], [0.5, 0.1]]
    f.write_text(json.dumps(toy))
    rc, _, err = run(flotilla, capsys, "--config", str(f))
    assert rc == 2 and "sums to" in err


def test_workload_file_and_plot(flotilla, capsys, tmp_path):
    f = tmp_path / "w.csv"
    f.write_text("input_len,output_len\n" + "300,200\n" * 7 + "3000,300\n" * 3)
    png = tmp_path / "cost.png"
    rc, out, err = run(flotilla, capsys, "--workload", str(f), "--rate", "4", "--slice-factor", "2",
                       "--plot", str(png), "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["workload"]["requests"] == 10
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plot = doc["plot"]
    assert 4.0 in plot["rates"] and len(plot["mix"]) == len(plot["rates"])
    assert plot["requested_rate"] == 4.0
    # a kind labelled infeasible alone has no cost at any plotted rate, and every other kind has one
    assert set(plot["infeasible_alone"]) == {n for n, v in plot["single"].items() if all(x is None for x in v)}
    i = plot["rates"].index(4.0)
    assert plot["mix"][i] == pytest.approx(doc["cost_per_hour"])
    for name, costs in plot["single"].items():  # the mix is never dearer than a single type
        for m, c in zip(plot["mix"], costs):
            assert c is None or m is None or m <= c + 1e-9
    # mix cost never decreases with the rate
    mix = [m for m in plot["mix"] if m is not None]
    assert all(a <= b + 1e-9 for a, b in zip(mix, mix[1:]))
    assert not math.isnan(doc["cost_per_hour"])


def test_json_stdout_holds_only_the_json_even_when_a_c_library_prints():
    """HiGHS prints its banner on file descriptor 1 from C; under --json it goes to stderr."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "cluster.shell.cli.main", "plan", "--solver", "highs", "--json"],
                          capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[2])
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)  # exactly one JSON object, no banner
    assert doc["solver"] == "highs" and "HiGHS" in proc.stderr


def test_time_limit_reports_status_and_gap(flotilla, capsys):
    rc, out, err = run(flotilla, capsys, "--time-limit", "30", "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["status"] == "Optimal" and doc["gap"] == 0.0  # the default instance solves at once
    for bad in ("0", "-1", "nan"):
        rc, out, err = run(flotilla, capsys, "--time-limit", bad)
        assert rc == 2 and "--time-limit" in err, err


def test_calibration_profile_drives_the_tables(flotilla, capsys):
    args = ("--prices", "melange", "--devices", "a10g,a100-80g-sxm", "--json")
    rc, out, err = run(flotilla, capsys, *args)
    plain = json.loads(out)
    rc, out, err = run(flotilla, capsys, "--calibration", "melange-2024", *args)
    assert rc == 0, err
    cal = json.loads(out)
    assert cal["calibration"] == {"profile": "melange-2024", "calibrated_kinds": ["a100-80g-sxm", "a10g"]}
    assert plain["calibration"] is None
    # the paper's measured capacities are lower than the uncalibrated roofline: more devices, more $
    assert sum(cal["allocation"].values()) > sum(plain["allocation"].values())
    assert cal["cost_per_hour"] > plain["cost_per_hour"]
    rc, out, err = run(flotilla, capsys, "--calibration", "nope")
    assert rc == 2 and err.startswith("flotilla: error: --calibration: no profile 'nope'")
    assert "engines-2026 (today's engines" in err and "melange-2024 (the Mélange paper's setting" in err
    rc, out, err = run(flotilla, capsys, "--calibration", "engines-2026", "--devices", "l4,a100-80g-sxm,h200-sxm",
                       "--json")
    assert rc == 0, err
    assert json.loads(out)["calibration"] == {"profile": "engines-2026", "calibrated_kinds": ["a100-80g-sxm",
                                                                                              "h200-sxm"]}


def test_config_refuses_flags_it_would_ignore(flotilla, capsys):
    rc, out, err = run(flotilla, capsys, "--config", "examples/melange_config.json", "--rate", "5", "--devices", "l4")
    assert rc == 2 and "--rate, --devices would be ignored" in err


def test_unservable_buckets_are_left_out_reported_or_refused_with_strict(flotilla, capsys, tmp_path):
    # L4 and A10G cannot hold Arena's 12k-16k-token buckets: planned without them, and said
    rc, out, err = run(flotilla, capsys, "--devices", "l4,a10g", "--json")
    assert rc == 0, err
    doc = json.loads(out)
    left = {tuple(b["bucket"]): b for b in doc["unservable_buckets"]}
    assert left and all(i == 9 for i, _ in left) and all(b["tokens"].startswith("12001-16000 in") for b in left.values())
    assert doc["unservable_mass"] == pytest.approx(sum(b["mass"] for b in left.values()))
    assert 0 < doc["unservable_mass"] < 1e-3
    assert doc["planned_rate"] == pytest.approx(4.0 * (1 - doc["unservable_mass"]))
    assert sum(doc["allocation"].values()) > 0 and doc["cost_per_hour"] > 0
    for key in left:  # the plan never assigns a left-out bucket
        assert f"{key[0]},{key[1]}" not in doc["assignment"]
    # the same buckets are served when a kind that serves them is a candidate: they count as
    # unservable only because the user left A100/H100 out
    rc, out, _ = run(flotilla, capsys, "--json")
    assert rc == 0 and json.loads(out)["unservable_mass"] == 0.0
    rc, out, _ = run(flotilla, capsys, "--devices", "l4,a10g")
    assert rc == 0 and "left out: 3 bucket(s)" in out and "--strict refuses" in out
    # the plot's x axis is the total rate: at the requested 4 req/s it shows this plan's cost
    rc, out, err = run(flotilla, capsys, "--devices", "l4,a10g", "--plot", str(tmp_path / "p.png"), "--json")
    assert rc == 0, err
    plotted = json.loads(out)
    at = plotted["plot"]["rates"].index(4.0)
    assert plotted["plot"]["requested_rate"] == 4.0 and plotted["plot"]["mix"][at] == pytest.approx(doc["cost_per_hour"])
    rc, out, err = run(flotilla, capsys, "--devices", "l4,a10g", "--strict")
    assert rc == 2 and out == ""
    assert "3 bucket(s) of total mass" in err and "12001-16000 in, 251-500 out" in err


def test_plan_rpc_path_reports_unservable_and_strict_refuses():
    from cluster.shell.gateway import allocation_message
    from cluster.shell.planner import PlanInfeasibleError, PlanQuery, solve_query

    plan, desc = solve_query(PlanQuery(devices=("l4", "a10g")))
    assert desc["unservable_mass"] > 0 and len(desc["unservable_buckets"]) == 3
    msg = allocation_message({**plan.to_json(), **desc, "applied": False})
    assert msg.unservable_mass == pytest.approx(desc["unservable_mass"])
    assert [(b.input_index, b.output_index) for b in msg.unservable_buckets] == [
        tuple(b["bucket"]) for b in desc["unservable_buckets"]]
    with pytest.raises(PlanInfeasibleError, match=r"^query.strict: infeasible: 3 bucket\(s\)"):
        solve_query(PlanQuery(devices=("l4", "a10g"), strict=True))


def test_measured_cpu_table_drives_a_cost_plan_at_the_derived_cpu_price(flotilla, capsys, tmp_path):
    """The cpu kind has a price (quoted vCPU-hour x logical CPUs), so its measured table plans."""
    import os

    from cluster.catalog import default_catalog

    table_file = Path(__file__).parents[2] / "bench" / "results" / "profile_cpu_smollm2_table.json"
    measured = json.loads(table_file.read_text())
    reqs = tmp_path / "short.jsonl"  # only buckets (0, 0) and (0, 1), the two the profile measured
    reqs.write_text("".join(json.dumps({"input_len": 20, "output_len": o}) + "\n" for o in (20, 20, 80)))
    rc, out, err = run(flotilla, capsys, "--model", "smollm2-135m", "--devices", "cpu", "--workload", str(reqs),
                       "--rate", "0.5", "--tables", str(table_file), "--tpot-slo-ms", "400", "--json")
    assert rc == 0, err
    doc = json.loads(out)
    price = dict(default_catalog().host.figures)["price_per_vcpu_hour"].value * (os.cpu_count() or 1)
    assert doc["prices_per_hour"]["cpu"] == pytest.approx(price)
    assert doc["measured"]["cpu"]["measured_buckets"] == 2 and doc["throughput_source"] == "modeled+measured"
    mu = measured["rates"][0]
    load = 0.5 * (2 / 3 / mu[0] + 1 / 3 / mu[1])  # both buckets at the measured rates
    assert doc["load_per_type"]["cpu"] == pytest.approx(load)
    assert doc["allocation"] == {"cpu": math.ceil(load)} and doc["cost_per_hour"] == pytest.approx(math.ceil(load) * price)
