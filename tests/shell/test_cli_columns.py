"""At 80 columns the CLI's tables fold instead of cutting: identifiers users type back (device ids,
kinds) are printed whole on one line, nothing ends in an ellipsis, no line is wider than 80."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _render(table, width: int = 80) -> str:
    from cluster.shell.console import _FittingConsole

    buf = io.StringIO()
    _FittingConsole(file=buf, width=width, highlight=False, force_terminal=False, color_system=None).print(table)
    return buf.getvalue()


def test_fleet_table_keeps_long_device_ids_whole_at_80_columns():
    from cluster.probe import probed_catalog
    from cluster.shell.cli.main import _fleet_table

    catalog = probed_catalog()
    kinds = ["jetson-agx-orin-64", "jetson-orin-nano-8", "rtx6000-ada", "a100-80g-pcie"]
    reports, specs = [], {}
    for i, kind in enumerate(kinds):
        device_id = f"{kind}-{i + 10}"
        specs[device_id] = catalog.get(kind)
        reports.append({"device_id": device_id, "simulated": i % 2 == 0, "label": f"{kind} on NVIDIA GeForce RTX 4090",
                        "checked": True, "wall_s": 0.0123, "modeled_s": 1.2e-5, "modeled_j": 3.4e-3})
    text = _render(_fleet_table("fleet 'long-names': 4 devices, up in 12.3 s", reports, specs))
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 80
    for r in reports:
        assert any(r["device_id"] in line for line in text.splitlines()), r["device_id"]  # whole, on one line
    cells = "".join(line.split("│")[2].strip() for line in text.splitlines() if line.count("│") > 2)
    assert cells.count("cpu(simulated)") == 2  # the "runs on" text folds onto more lines, none of it is cut


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, COLUMNS="80")
    return subprocess.run([sys.executable, "-m", "cluster.shell.cli.main", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_devices_at_80_columns_prints_every_kind_whole():
    from cluster.catalog import default_catalog

    kinds = list(default_catalog().kinds())  # the probed catalog adds figures for 'cpu', not kinds
    p = _cli("devices")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert "…" not in p.stdout and max(len(line) for line in lines) <= 80
    for kind in kinds:
        assert any(f"│ {kind} " in line for line in lines), kind


def test_plan_at_80_columns_prints_every_kind_whole():
    kinds = ("rtx6000-ada", "a100-80g-pcie", "a100-40g-sxm", "h100-sxm", "l4")
    p = _cli("plan", "--devices", ",".join(kinds))
    assert p.returncode == 0, p.stderr
    assert "…" not in p.stdout and max(len(line) for line in p.stdout.splitlines()) <= 80
    for kind in kinds:
        assert any(f"│ {kind} " in line for line in p.stdout.splitlines()), kind
