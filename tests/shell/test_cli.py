"""The `flotilla` command as a user runs it: JSON on stdout, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REQUIRED_KINDS = {
    "rtx4090", "rtx4070", "rtx3090", "jetson-agx-orin-64", "jetson-agx-orin-32", "jetson-orin-nano-8",
    "a100-40g-sxm", "a100-80g-sxm", "a100-80g-pcie", "h100-sxm", "h100-pcie", "h200-sxm", "l4", "a10g",
    "t4", "l40s", "cpu",
}


def flotilla(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "FLOTILLA_CONFIG": "/nonexistent/flotilla.yaml", **(env or {})}
    full_env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [sys.executable, "-m", "cluster.shell.cli.main", *args], cwd=ROOT, capture_output=True, text=True, env=full_env, timeout=timeout,
    )


def test_devices_json_lists_every_kind_with_sources() -> None:
    res = flotilla("devices", "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)  # exactly one JSON object on stdout
    kinds = {d["kind"] for d in doc["devices"]}
    assert REQUIRED_KINDS <= kinds
    for d in doc["devices"]:
        for name, fig in d["figures"].items():
            assert fig["source"], (d["kind"], name)
            assert fig["date"], (d["kind"], name)


def test_devices_resolves_an_alias() -> None:
    res = flotilla("devices", "A100-80GB", "--json")
    assert res.returncode == 0, res.stderr
    assert [d["kind"] for d in json.loads(res.stdout)["devices"]] == ["a100-80g-sxm"]


def test_unknown_kind_exits_2_with_one_line_listing_kinds() -> None:
    res = flotilla("devices", "rtx9090")
    assert res.returncode == 2
    assert res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr
    assert "rtx4090" in lines[0] and "l40s" in lines[0]


def test_bad_fleet_file_exits_2_naming_file_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "fleet.yaml"
    bad.write_text("devices:\n  - kind: rtx4090\n    count: lots\n")
    res = flotilla("up", "--fleet", str(bad), "--once")
    assert res.returncode == 2
    assert str(bad) in res.stderr and "devices[0].count" in res.stderr
    assert "Traceback" not in res.stderr


def test_unreachable_redis_names_the_url() -> None:
    res = flotilla("status", "--redis", "redis://:secret@127.0.0.1:1/0")
    assert res.returncode == 1
    assert "127.0.0.1:1" in res.stderr and "secret" not in res.stderr
    assert "Traceback" not in res.stderr


def test_status_without_a_source_asks_the_default_gateway() -> None:
    res = flotilla("status", env={"FLOTILLA_REDIS_URL": "", "FLOTILLA_SERVER": "127.0.0.1:1"})
    assert res.returncode == 1 and "no gateway answers at 127.0.0.1:1" in res.stderr and "--redis" in res.stderr


def test_unknown_flag_exits_2() -> None:
    res = flotilla("devices", "--frobnicate")
    assert res.returncode == 2


def test_up_once_probes_the_example_fleet_and_status_reads_redis(redis_url: str) -> None:
    """The demo path end to end: a fresh embedded Ray, five simulated devices, a real GEMM on each."""
    ns = f"cli-{uuid.uuid4().hex[:8]}"
    res = flotilla("up", "--fleet", "examples/fleet.yaml", "--once", "--json", "--redis", redis_url, "--namespace", ns, timeout=240)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["fleet"] == "example" and doc["embedded"] is True
    assert sorted(d["device_id"] for d in doc["devices"]) == [
        "a100-80g-sxm-0", "jetson-agx-orin-64-0", "jetson-agx-orin-64-1", "rtx4090-0", "rtx4090-1",
    ]
    assert all(d["checked"] and d["simulated"] and "simulated" in d["label"] for d in doc["devices"])
    assert "modeled" in doc["note"]
    # --once shuts down cleanly: nothing stays registered
    st = flotilla("status", "--redis", redis_url, "--namespace", ns, "--json")
    assert st.returncode == 0, st.stderr
    assert json.loads(st.stdout)["devices"] == {}


def test_status_of_an_unreachable_gateway_exits_1_naming_the_status() -> None:
    res = flotilla("status", "--server", "127.0.0.1:1", "--json")
    assert res.returncode == 1
    assert res.stdout == ""
    assert "UNAVAILABLE" in res.stderr and "Traceback" not in res.stderr


def test_json_mode_sends_stray_prints_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    from cluster.shell.console import emit_json, reserve_stdout_for_json

    with reserve_stdout_for_json():
        print("(raylet) WARNING: something a library printed")
        emit_json({"ok": True})
    captured = capsys.readouterr()
    assert captured.out == '{"ok": true}\n'
    assert "WARNING" in captured.err
    print("after")
    assert capsys.readouterr().out == "after\n"
