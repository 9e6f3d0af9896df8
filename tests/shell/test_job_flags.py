"""``python -m cluster.shell.job serve`` takes ``--context-parallel-above`` as ``flotilla serve``
does: the same default, the same validation (exit 2, one line, before anything starts), and the
value passed through to the serving configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.cp_adapter import CP_DEFAULT_ABOVE
from cluster.shell.job import parser, serve_config

FLEET = str(Path(__file__).resolve().parents[2] / "examples" / "fleet.yaml")


@pytest.fixture(autouse=True)
def _no_cluster(monkeypatch, tmp_path):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("FLOTILLA_CONFIG", str(tmp_path / "none.yaml"))


@pytest.mark.parametrize(("flag", "expected"), [(None, CP_DEFAULT_ABOVE), ("64", 64), ("off", None), ("OFF", None)])
def test_flag_passes_through_to_the_serve_config(flag, expected):
    argv = ["serve", "--fleet", FLEET] + ([] if flag is None else ["--context-parallel-above", flag])
    sc = serve_config(parser().parse_args(argv))
    assert sc.context_parallel_above == expected
    assert sc.fleet == FLEET and sc.ray_address is None


def test_default_is_the_one_flotilla_serve_uses():
    import typer

    from cluster.shell.cli.serve import serve

    import inspect

    option = inspect.signature(serve).parameters["context_parallel_above"].default
    assert isinstance(option, typer.models.OptionInfo) and option.default == str(CP_DEFAULT_ABOVE)


@pytest.mark.parametrize("bad", ["0", "-5", "many", ""])
def test_bad_value_exits_2_with_one_line_before_joining(bad, tmp_path):
    """Run as Ray runs a job: exit 2, the one line on stderr and nothing else (nothing started)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["FLOTILLA_CONFIG"] = str(tmp_path / "none.yaml")
    p = subprocess.run([sys.executable, "-m", "cluster.shell.job", "serve", "--fleet", FLEET, "--context-parallel-above", bad],
                       cwd=Path(FLEET).parents[1], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.splitlines() == [f"flotilla: error: --context-parallel-above: expected TOKENS (an integer >= 1) or off, got {bad!r}"]
