"""``flotilla stop``: SIGTERM to the gateway recorded in the pidfile ``flotilla serve`` writes
(``$XDG_CACHE_HOME/flotilla/run/gateway-PORT.json``), a one-line failure when there is none or it
is stale, exit 2 on a bad ``--server``.

The stopped process here is a real process that writes its pidfile with
:func:`cluster.shell.serving.write_pidfile` and stops on SIGTERM the way ``run_until_stopped``
does (a full ``flotilla serve`` takes most of a minute to start on this machine).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

GATEWAY = """
import signal, sys, threading
from cluster.shell.serving import remove_pidfile, write_pidfile
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
path = write_pidfile(sys.argv[1], None)
print("ready", flush=True)
stop.wait(120)
remove_pidfile(path)
"""


def _cli(args: list[str], cache: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, XDG_CACHE_HOME=str(cache), COLUMNS="80")
    env.pop("FLOTILLA_SERVER", None)
    return subprocess.run([sys.executable, "-m", "cluster.shell.cli.main", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_stop_signals_the_gateway_and_it_exits(tmp_path):
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", GATEWAY, "127.0.0.1:50999"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        pidfile = tmp_path / "flotilla" / "run" / "gateway-50999.json"
        assert json.loads(pidfile.read_text())["pid"] == proc.pid
        p = _cli(["stop", "--server", "127.0.0.1:50999", "--json"], tmp_path)
        assert p.returncode == 0, p.stderr
        doc = json.loads(p.stdout)
        assert doc["stopped"] is True and doc["pid"] == proc.pid and doc["address"] == "127.0.0.1:50999"
        assert proc.wait(timeout=10) == 0  # it stopped by its SIGTERM handler, cleanly
        assert not pidfile.exists()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_stop_without_a_gateway_is_one_line_exit_1(tmp_path):
    p = _cli(["stop", "--server", "127.0.0.1:50998"], tmp_path)
    assert p.returncode == 1
    assert p.stderr.strip().count("\n") == 0 and p.stderr.startswith("flotilla: failed: no gateway started on this host listens on port 50998")


def test_stale_pidfile_is_reported_and_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = tmp_path / "flotilla" / "run"
    run.mkdir(parents=True)
    (run / "gateway-50997.json").write_text(json.dumps({"pid": dead.pid, "address": "127.0.0.1:50997"}))
    p = _cli(["stop", "--server", "127.0.0.1:50997"], tmp_path)
    assert p.returncode == 1 and "no longer running" in p.stderr and p.stderr.strip().count("\n") == 0
    assert not (run / "gateway-50997.json").exists()


def test_bad_server_is_exit_2_naming_the_field(tmp_path):
    p = _cli(["stop", "--server", "nohost"], tmp_path)
    assert p.returncode == 2
    assert p.stderr.strip() == "flotilla: error: --server: expected HOST:PORT with a port in 1..65535, got 'nohost'"
