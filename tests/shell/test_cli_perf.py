"""`flotilla perf layer`: JSON output, which predictor answered, exit 2 naming the field.

Runs through a local Typer app the module registers into (InputError mapped to exit 2 as
cluster.shell.cli.main's main does), and once through `python -m cluster.shell.cli.main`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from testkit import run_command
from typer.testing import CliRunner

from cluster import perf
from cluster.catalog import default_catalog
from cluster.exceptions import InputError
from cluster.opmodel import load_vidur
from cluster.shell.cli.perf import parse_tokens, register

ROOT = Path(__file__).resolve().parents[2]
LLAMA7B = ["--hidden", "4096", "--heads", "32", "--kv-heads", "32", "--ffn", "11008", "--gated"]


def run(*args: str) -> tuple[int, str, str]:
    return run_command(register, *args)


def test_roofline_fallback_equals_perf():
    code, stdout, _ = run("perf", "layer", "--device", "L4", *LLAMA7B, "--tokens", "1,64,2048", "--json")
    assert code == 0
    doc = json.loads(stdout)
    assert doc["predictor"] == "roofline" and doc["modeled"] is True and doc["device"] == "l4"
    l4 = default_catalog().get("l4")
    want = [perf.linear_layer_time(t, 4096, 32, 32, 11008, l4, gated=True, dtype="fp16") * 1e3 for t in (1, 64, 2048)]
    assert doc["tokens"] == [1, 64, 2048]
    assert doc["layer_ms"] == pytest.approx(want, rel=1e-12)
    assert doc["gemms_nk"]["up"] == [22016, 4096]


def test_learned_prediction_is_close_to_the_measured_point():
    rows = load_vidur()
    i = int(np.flatnonzero((rows.device == "h100-sxm") & (rows.model == "Llama-2-70b-hf") & (rows.tp == 4)
                           & (rows.tokens == 256))[0])
    code, stdout, _ = run("perf", "layer", "--device", "H100", "--hidden", "8192", "--heads", "64", "--kv-heads", "8",
                          "--ffn", "28672", "--gated", "--tp", "4", "--tokens", "256", "--json")
    assert code == 0
    doc = json.loads(stdout)
    assert doc["predictor"] == "learned" and doc["device"] == "h100-sxm"
    assert doc["layer_ms"][0] == pytest.approx(rows.layer_seconds[i] * 1e3, rel=0.05)
    # forcing the roofline on the same kind gives perf's figure instead
    code, stdout, _ = run("perf", "layer", "--device", "H100", "--hidden", "8192", "--heads", "64", "--kv-heads", "8",
                          "--ffn", "28672", "--gated", "--tp", "4", "--tokens", "256", "--predictor", "roofline", "--json")
    h100 = default_catalog().get("h100-sxm")
    assert json.loads(stdout)["layer_ms"][0] == pytest.approx(
        perf.linear_layer_time(256, 8192, 64, 8, 28672, h100, gated=True, tp=4, dtype="fp16") * 1e3, rel=1e-12)


@pytest.mark.parametrize("args,field", [
    (["--device", "l4", *LLAMA7B, "--tokens", "1,x"], "--tokens"),
    (["--device", "l4", *LLAMA7B, "--tokens", "0"], "--tokens"),
    (["--device", "l4", *LLAMA7B, "--tokens", "8", "--predictor", "magic"], "--predictor"),
    (["--device", "l4", *LLAMA7B, "--tokens", "8", "--predictor", "learned"], "device"),
    (["--device", "nosuchgpu", *LLAMA7B, "--tokens", "8"], "--device"),
    (["--device", "l4", "--hidden", "4096", "--heads", "32", "--kv-heads", "5", "--ffn", "11008", "--tokens", "8"], "kv_heads"),
    (["--device", "l4", *LLAMA7B, "--tokens", "8", "--tp", "0"], "tp"),
    (["--device", "l4", *LLAMA7B, "--tokens", "8", "--dtype", "fp12"], "dtype"),
])
def test_bad_input_exits_2_naming_the_field(args, field):
    code, stdout, stderr = run("perf", "layer", *args, "--json")
    assert code == 2 and stdout == ""
    assert stderr.count("\n") == 0 and stderr.startswith(f"flotilla: error: {field}")


def test_parse_tokens():
    assert parse_tokens("1, 16,512") == [1, 16, 512]
    with pytest.raises(InputError, match="^--tokens: "):
        parse_tokens("")


def test_through_main_one_json_object_and_exit_codes():
    base = [sys.executable, "-m", "cluster.shell.cli.main", "perf", "layer", "--device", "t4", *LLAMA7B]
    ok = subprocess.run(base + ["--tokens", "1,8", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    lines = ok.stdout.strip().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["predictor"] == "roofline"
    bad = subprocess.run(base + ["--tokens", "a", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stdout == "" and "--tokens" in bad.stderr
    human = subprocess.run(base + ["--tokens", "16"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert human.returncode == 0 and "modeled" in human.stdout
    assert max(len(line) for line in human.stdout.splitlines()) <= 80


# ------------------------------------------------------------------------------- calibrate


def _cal_app() -> typer.Typer:
    from cluster.shell.cli.calibrate import register as register_calibrate

    app = typer.Typer(pretty_exceptions_enable=False)

    @app.callback()
    def _root() -> None:
        """test root"""

    register_calibrate(app)
    register(app)
    return app


def run_cal(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(_cal_app(), list(args))
    if isinstance(res.exception, InputError):
        return 2, res.stdout, f"flotilla: error: {res.exception}"
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.stdout, ""


def test_calibrate_reports_before_and_after(tmp_path):
    code, stdout, _ = run_cal("calibrate", "--profile", "melange-2024", "--write", str(tmp_path / "m.json"), "--json")
    assert code == 0
    doc = json.loads(stdout)
    assert doc["name"] == "melange-2024" and doc["modeled"] is True
    for kind in ("a100-80g-sxm", "a10g"):
        assert doc["fits"][kind]["error_before"] > 0.1 > 1e-3 > doc["fits"][kind]["error_after"]
    assert json.loads((tmp_path / "m.json").read_text())["efficiency"] == doc["efficiency"]
    for args, field in ((["--profile", "x"], "--profile"), (["--tpot-slo-ms", "0"], "--tpot-slo-ms")):
        code, stdout, stderr = run_cal("calibrate", *args, "--json")
        assert code == 2 and stdout == "" and stderr.startswith(f"flotilla: error: {field}")


def test_calibrate_engines_profile_is_todays_engines_with_errors_before_and_after():
    code, stdout, _ = run_cal("calibrate", "--profile", "engines-2026", "--json")
    assert code == 0
    doc = json.loads(stdout)
    assert doc["name"] == "engines-2026" and "today's engines" in doc["description"]
    assert set(doc["fits"]) == {"a100-80g-sxm", "h100-sxm", "h200-sxm"}
    for fit in doc["fits"].values():
        assert fit["error_after"]["median"] < fit["error_before"]["median"]
    code, stdout, stderr = run_cal("calibrate", "--profile", "nope")
    assert code == 2 and "engines-2026" in stderr and "melange-2024" in stderr


def test_perf_layer_with_a_calibration_profile_uses_its_efficiency():
    from cluster.calibration import load_profile

    code, stdout, _ = run_cal("perf", "layer", "--device", "A10G", *LLAMA7B, "--tokens", "1,512",
                              "--calibration", "melange-2024", "--json")
    assert code == 0
    doc = json.loads(stdout)
    a10g = default_catalog().get("a10g")
    eff = load_profile("melange-2024").for_kind("a10g")
    want = [perf.linear_layer_time(t, 4096, 32, 32, 11008, a10g, gated=True, dtype="fp16", eff=eff) * 1e3 for t in (1, 512)]
    assert doc["predictor"] == "roofline" and doc["calibration"] == "melange-2024"
    assert doc["layer_ms"] == pytest.approx(want, rel=1e-12)
    default = [perf.linear_layer_time(t, 4096, 32, 32, 11008, a10g, gated=True, dtype="fp16") * 1e3 for t in (1, 512)]
    assert all(c > d for c, d in zip(doc["layer_ms"], default))
