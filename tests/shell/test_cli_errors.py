"""Every error of the ``flotilla`` CLI is one line on stderr: usage errors (unknown option, missing
argument, unknown command) as ``flotilla: error: ...`` with exit 2, a Redis URL whose DB index the
server refuses (exit 2), and SIGTERM (exit 143). The CLI runs as a user runs it, in a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = dict(os.environ, COLUMNS="80")
    for k in ("FLOTILLA_SERVER", "FLOTILLA_REDIS_URL", "FLOTILLA_CONFIG"):
        env.pop(k, None)
    return env


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cluster.shell.cli.main", *args], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, expected", [
    (("devices", "--bogus"), "flotilla: error: No such option: --bogus (see flotilla devices --help)"),
    (("generate",), "flotilla: error: prompt: expected the prompt as an argument or --file FILE (exactly one)"),
    (("plan-shards",), "flotilla: error: Missing option '--tokens'. (see flotilla plan-shards --help)"),
    (("nosuch",), "flotilla: error: No such command 'nosuch'. (see flotilla --help)"),
    (("plan", "--rate", "abc"), None),
])
def test_usage_errors_are_one_line_exit_2(args, expected):
    p = _cli(*args)
    assert p.returncode == 2, p.stderr
    assert p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("flotilla: error: "), p.stderr
    if expected is not None:
        assert lines[0] == expected
    else:
        assert "--rate" in lines[0]


def test_bad_redis_db_index_is_one_line(redis_url):
    base = redis_url.rsplit("/", 1)[0]
    p = _cli("status", "--redis", f"{base}/99")
    assert p.returncode == 2
    assert p.stderr.strip() == "flotilla: error: --redis: the Redis server refused: DB index is out of range"


def test_sigterm_is_one_line_exit_143(tmp_path):
    """SIGTERM while ``flotilla serve`` is starting (before Ray): one line, exit 143, no traceback."""
    env = dict(_env(), XDG_CACHE_HOME=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-m", "cluster.shell.cli.main", "serve", "--model", "echo", "--port", "0",
                             "--http-port", "0"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the CLI has started once the zero-config line is out
            line = proc.stderr.readline()
            if "packaged example fleet" in line or not line:
                break
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, rest
    assert "Traceback" not in rest and "SIGTERM received" not in rest
    assert [ln for ln in rest.splitlines() if ln.startswith("flotilla:")] == ["flotilla: stopped by SIGTERM"], rest
