"""`flotilla plan-shards` as a user runs it: one JSON object, modeled labels, exit codes."""

from __future__ import annotations

import json

from cluster.shell.cli import main as cli
from cluster.shell.cli.shards import shard_inputs
from solvers.shards import evaluate, solve


def run(capsys, *args: str) -> tuple[int, str, str]:
    rc = cli.main(list(args))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_plan_shards_json_is_the_solver_optimum(capsys) -> None:
    kinds = "rtx4090,rtx4090,a100-80g-sxm,jetson-agx-orin-64"
    rc, out, err = run(capsys, "plan-shards", "--tokens", "32768", "--model", "llama-3-8b",
                       "--devices", kinds, "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["modeled"] is True and "not measured" in doc["note"]
    assert sum(doc["shares"]) == 32768 and len(doc["shares"]) == len(doc["devices"])
    _, model, devs = shard_inputs("llama-3-8b", kinds.split(","))
    t, e = evaluate(devs, model, 32768, doc["devices"], doc["strategy"], doc["shares"])
    assert (t, e) == (doc["modeled_latency_s"], doc["modeled_energy_j"])
    # no single device or pair the solver skipped is faster
    for i in range(4):
        best_single = solve(32768, model, [devs[i]])
        assert best_single.latency_s >= t


def test_plan_shards_energy_objective_respects_the_budget(capsys) -> None:
    rc, out, _ = run(capsys, "plan-shards", "--tokens", "8192", "--model", "smollm2-135m",
                     "--devices", "rtx4090,a100-80g-sxm,jetson-agx-orin-64", "--objective", "energy",
                     "--latency-budget-s", "0.05", "--json")
    assert rc == 0
    doc = json.loads(out)
    assert doc["modeled_latency_s"] <= 0.05 and doc["objective"] == "energy"


def test_plan_shards_human_output_fits_80_columns(capsys) -> None:
    rc, out, _ = run(capsys, "plan-shards", "--tokens", "4096", "--devices", "rtx4090,rtx4090")
    assert rc == 0 and "MODELED" in out and "modeled prefill" in out
    assert max(len(line) for line in out.splitlines()) <= 80


def test_plan_shards_bad_input_is_one_line_naming_the_flag(capsys) -> None:
    for args, word in ((["--tokens", "0", "--devices", "rtx4090"], "--tokens"),
                       (["--tokens", "10", "--devices", "rtx4090,"], "--devices"),
                       (["--tokens", "10", "--devices", "rtx4091"], "rtx4091"),
                       (["--tokens", "10", "--devices", "rtx4090", "--objective", "speed"], "--objective"),
                       (["--tokens", "10", "--devices", "rtx4090", "--model", "llama-9"], "llama-9"),
                       (["--tokens", "10", "--devices", "rtx4090", "--latency-budget-s", "-1"],
                        "--latency-budget-s")):
        rc, out, err = run(capsys, "plan-shards", *args)
        lines = err.strip().splitlines()
        assert rc == 2 and out == "" and len(lines) == 1 and word in lines[0], (args, err)
    rc, out, err = run(capsys, "plan-shards", "--tokens", "1000000", "--model", "llama-3-8b",
                       "--devices", "jetson-agx-orin-64", "--json")
    assert rc != 0 and out == "" and "memory" in err
