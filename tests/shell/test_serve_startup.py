"""``flotilla serve`` as a user starts it, outside a terminal: one progress line per startup phase
(with the seconds since the start) rather than silence until ready, and a busy gRPC port
reported at once, before Ray starts."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from testkit import free_ports

REPO = Path(__file__).resolve().parents[2]
FLEET = str(REPO / "examples" / "fleet.yaml")


def _serve(*args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_USAGE_STATS_ENABLED="0", COLUMNS="80")
    return subprocess.Popen([sys.executable, "-m", "cluster.shell.cli.main", "serve", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


def test_busy_grpc_port_is_reported_before_ray_starts():
    from concurrent import futures

    import grpc

    other = grpc.server(futures.ThreadPoolExecutor(max_workers=1))  # SO_REUSEPORT on, as gRPC's default
    port = other.add_insecure_port("127.0.0.1:0")
    other.start()
    try:
        p = _serve("--fleet", FLEET, "--model", "echo", "--port", str(port), "--http-port", "0")
        _, err = p.communicate(timeout=120)
    finally:
        other.stop(0)
    assert p.returncode == 2, err
    assert err.strip().splitlines()[-1] == (
        f"flotilla: error: port: cannot bind 127.0.0.1:{port} (Address already in use); is another flotilla "
        "serve running (flotilla stop)? pick another --port")
    assert "starting Ray" not in err and "Traceback" not in err


def test_progress_lines_outside_a_terminal_then_ready():
    (http_port,) = free_ports(1)
    p = _serve("--fleet", FLEET, "--model", "echo", "--port", "0", "--http-port", str(http_port))
    lines = []
    try:
        assert p.stderr is not None
        deadline = time.monotonic() + 280
        for raw in p.stderr:
            lines.append(raw.rstrip("\n"))
            if raw.startswith("flotilla gateway on") or time.monotonic() > deadline:
                break
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        _, rest = p.communicate(timeout=90)
    phases = [m.groups() for m in (re.match(r"^\[ *(\d+\.\d) s\] (.*)$", ln) for ln in lines) if m]
    said = [text for _, text in phases]
    whole = "\n".join(lines) + "\n" + rest  # all of stderr, unabridged, when an assertion fails
    assert said[0] == "starting Ray for 5 devices (fleet 'example')…", whole
    assert said[1:] == ["Ray is up; starting 5 device actors…", "starting 5 echo experts…", "5 device actors up",
                        "5 experts loaded; starting the router and the gateways…", "ready"], whole
    times = [float(t) for t, _ in phases]
    assert times == sorted(times)
    assert lines[-1].startswith("flotilla gateway on 127.0.0.1:")
    assert "stopping…" in rest and "Traceback" not in rest
