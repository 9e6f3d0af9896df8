"""`flotilla select` / `flotilla experts build`: JSON output, exit codes, errors naming the field.

Runs through a local Typer app that the module registers into (exit codes mapped as cluster.shell.cli.main's
main does), and through `python -m cluster.shell.cli.main` once cluster/shell/cli/main.py wires cluster.shell.cli.select."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from testkit import run_command

from cluster.shell.cli.select import register
from edge.dataset import FIXTURE_DIR

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> tuple[int, str, str]:
    return run_command(register, *args)


INSTANCE = {
    "experts": [
        {"name": "phi3@orin", "energy_j": 3.0, "latency_ms": {"math": 400.0, "chat": 150.0}},
        {"name": "llama@4090", "energy_j": 5.0, "latency_ms": {"math": 200.0, "chat": 100.0}},
        {"name": "qwen@nano", "energy_j": 2.0, "latency_ms": {"math": 900.0, "chat": 300.0}},
    ],
    "categories": ["math", "math", "chat", "chat"],
    "scores": [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]],
    "budgets": {"energy_j": 8.0, "latency_ms": {"math": 800.0}},
    "objective": "oracle", "top_k": 1,
}


def write(tmp_path: Path, doc) -> str:
    p = tmp_path / "inst.json"
    p.write_text(json.dumps(doc))
    return str(p)


@pytest.mark.parametrize("method", ["monotonic", "exhaustive", "greedy"])
def test_select_json_has_the_documented_fields(tmp_path: Path, method: str) -> None:
    code, stdout, _ = run("select", "--instance", write(tmp_path, INSTANCE), "--method", method, "--json")
    assert code == 0
    doc = json.loads(stdout)
    assert doc["method"] == method
    assert sorted(doc["selected"]) == ["llama@4090", "phi3@orin"]  # qwen@nano breaks the math budget
    assert doc["objective_value"] == pytest.approx(0.75)
    assert doc["energy_j"] == pytest.approx(8.0)
    assert doc["latency_ms"] == {"chat": 150.0, "math": 400.0}
    assert doc["evaluations"] >= 1 and "modeled" in doc["note"]


def test_select_reports_an_empty_answer_without_crashing(tmp_path: Path) -> None:
    doc = dict(INSTANCE, budgets={"energy_j": 1.0})
    code, stdout, _ = run("select", "--instance", write(tmp_path, doc), "--json")
    assert code == 0
    out = json.loads(stdout)
    assert out["selected"] == [] and out["empty"] and "empty set is the answer" in out["note"]


def test_select_gate_objective_reports_monotonicity_violations(tmp_path: Path) -> None:
    doc = dict(INSTANCE, objective="gate", gate=[[0.2, 0.8, 0.0], [0.5, 0.5, 0.0], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]],
               budgets={})
    code, stdout, _ = run("select", "--instance", write(tmp_path, doc), "--method", "exhaustive", "--json")
    assert code == 0
    out = json.loads(stdout)
    assert out["monotonicity"]["pairs_checked"] == 12 and out["monotonicity"]["violations"] >= 1
    # by hand (top-1 routing): {phi3} = {llama} = {phi3, qwen} = {llama, qwen} = 0.5, {phi3, llama} = 0.25
    # (adding llama to {phi3} drops 0.25: the gate sends q0 to llama, which is wrong)
    assert out["objective_value"] == pytest.approx(0.5)
    assert any(w["subset"] == ["phi3@orin"] and w["added"] == "llama@4090" and w["drop"] == pytest.approx(-0.25)
               for w in out["monotonicity"]["worst"])


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        ({"scores": [[1, 0, 0], [0, 1.5, 0], [0, 0, 1], [1, 1, 0]]}, r"scores[1][1]: expected a number in [0, 1]"),
        ({"scores": [[1, 0, 0], [0, 1], [0, 0, 1], [1, 1, 0]]}, "scores[1]: expected 3 values"),
        ({"budgets": {"energy_j": -1.0}}, "budgets.energy_j"),
        ({"budgets": {"latency_ms": {"math": -5}}}, "budgets.latency_ms.math"),
        ({"budgets": {"latency_ms": {"maths": 5}}}, "did you mean 'math'"),
        ({"objective": "best"}, "objective: unknown objective 'best'"),
        ({"objective": "gate"}, "gate: objective 'gate' needs"),
        ({"top_k": 0}, "top_k"),
        ({"gate": [[0.5, 0.6, 0], [1, 0, 0], [1, 0, 0], [1, 0, 0]]}, "gate[0]: a row must sum to 1"),
    ],
)
def test_bad_instances_exit_2_naming_the_field(tmp_path: Path, patch: dict, needle: str) -> None:
    code, _, stderr = run("select", "--instance", write(tmp_path, {**INSTANCE, **patch}))
    assert code == 2
    assert needle in stderr


def test_bad_method_and_missing_file_exit_2(tmp_path: Path) -> None:
    code, _, stderr = run("select", "--instance", write(tmp_path, INSTANCE), "--method", "anneal")
    assert code == 2 and "allowed: monotonic, exhaustive, greedy" in stderr
    code, _, stderr = run("select", "--instance", str(tmp_path / "nope.json"))
    assert code == 2 and "cannot read" in stderr


def test_experts_build_then_select_on_the_fixture(tmp_path: Path) -> None:
    out = tmp_path / "built.json"
    code, stdout, _ = run("experts", "build", "--data", str(FIXTURE_DIR), "--devices", "jetson-agx-orin-64,rtx4090",
                          "--models", "Phi-3-mini-4k-instruct,mathstral-7B,gemma-7b,Meta-Llama-3_1-8B-Instruct",
                          "--energy-budget", "1500", "--latency-budget", "math=30000", "--out", str(out), "--json")
    assert code == 0
    summary = json.loads(stdout)
    assert [e["device"] for e in summary["experts"]] == ["jetson-agx-orin-64", "rtx4090"] * 2
    assert all(e["modeled"] for e in summary["experts"]) and "modeled" in summary["note"]
    inst = json.loads(out.read_text())
    assert len(inst["scores"]) == 308 and len(inst["scores"][0]) == 4
    results = {}
    for method in ("monotonic", "exhaustive", "greedy"):
        code, stdout, _ = run("select", "--instance", str(out), "--method", method, "--json")
        assert code == 0
        results[method] = json.loads(stdout)
    assert results["monotonic"]["objective_value"] == pytest.approx(results["exhaustive"]["objective_value"])
    assert results["greedy"]["objective_value"] <= results["exhaustive"]["objective_value"] + 1e-12
    assert results["monotonic"]["energy_j"] <= 1500 and results["monotonic"]["latency_ms"]["math"] <= 30000


def test_experts_build_rejects_unknown_model_and_device(tmp_path: Path) -> None:
    code, _, stderr = run("experts", "build", "--data", str(FIXTURE_DIR), "--models", "gemma-7", "--out", str(tmp_path / "x"))
    assert code == 2 and "did you mean 'gemma-7b'" in stderr
    code, _, stderr = run("experts", "build", "--data", str(tmp_path), "--out", str(tmp_path / "x"))
    assert code == 2 and "not found" in stderr


def _wired() -> bool:
    try:
        import cluster.shell.cli.main as cli

        return "cluster.shell.cli.select" in getattr(cli, "COMMAND_MODULES", ())
    except Exception:
        return False


@pytest.mark.skipif(not _wired(), reason="cluster.shell.cli.select is not yet in cluster.shell.cli.main.COMMAND_MODULES")
def test_python_m_cluster_cli_select(tmp_path: Path) -> None:
    path = write(tmp_path, INSTANCE)
    res = subprocess.run([sys.executable, "-m", "cluster.shell.cli.main", "select", "--instance", path, "--json"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert sorted(json.loads(res.stdout)["selected"]) == ["llama@4090", "phi3@orin"]
    bad = write(tmp_path, {**INSTANCE, "objective": "best"})
    res = subprocess.run([sys.executable, "-m", "cluster.shell.cli.main", "select", "--instance", bad], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "objective" in res.stderr and "Traceback" not in res.stderr
