"""``python -m cluster.shell.job serve`` fails fast with one line and exit 1 instead of hanging or
serving nothing: a wrong ``--address`` (nothing listens there), a cluster whose nodes advertise no
``device:<kind>`` resource (0 experts), and a cluster that requires token authentication while the
job runs without ``RAY_AUTH_MODE=token``.

The head is a real ``ray start --head`` with token authentication on and no device resources,
stopped by signalling its own process group (never ``ray stop``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from testkit import free_ports

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable

def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_USAGE_STATS_ENABLED="0", **extra)
    return env


def _job(args: list[str], env: dict[str, str], timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    p = subprocess.run([PY, "-m", "cluster.shell.job", "serve", *args], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=timeout)
    return p, time.monotonic() - t0


def _error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("flotilla:")]


@pytest.fixture(scope="module")
def token_head(tmp_path_factory):
    """A Ray head with token authentication and no device:<kind> resource; yields its GCS address."""
    token_dir = tmp_path_factory.mktemp("raytoken")
    token_file = token_dir / "auth_token"
    token_file.write_text("flotilla-test-token-" + os.urandom(8).hex())
    token_file.chmod(0o600)
    gcs, node_mgr, obj_mgr, metrics, runtime_env, agent_grpc, agent_http, client = free_ports(8)
    tmp = tempfile.mkdtemp(prefix="rayff")
    bindir = str(Path(PY).parent)
    env = _env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file),
               PATH=bindir + os.pathsep + os.environ.get("PATH", ""))
    cmd = [str(Path(bindir) / "ray"), "start", "--head", "--block", "--port", str(gcs), "--node-ip-address", "127.0.0.1",
           "--include-dashboard", "false", "--node-manager-port", str(node_mgr), "--object-manager-port", str(obj_mgr),
           "--metrics-export-port", str(metrics), "--runtime-env-agent-port", str(runtime_env),
           "--dashboard-agent-grpc-port", str(agent_grpc), "--dashboard-agent-listen-port", str(agent_http),
           "--ray-client-server-port", str(client), "--num-cpus", "1", "--temp-dir", tmp, "--disable-usage-stats"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"ray start exited {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", gcs), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        else:
            raise RuntimeError("the Ray head did not listen in 90 s")
        time.sleep(2)  # the GCS listens a moment before the head's raylet registers
        yield f"127.0.0.1:{gcs}", token_file
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=3)  # a throw-away head: a few seconds' grace, then its group is killed
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the head's own group only: its raylet, GCS and workers
            proc.wait(timeout=10)


def test_wrong_address_fails_within_the_timeout_naming_it():
    (port,) = free_ports(1)  # nothing listens there
    address = f"127.0.0.1:{port}"
    p, took = _job(["--address", address, "--port", "0", "--http-port", "0"], _env(), timeout=60)
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr
    lines = _error_lines(p.stderr)
    assert len(lines) == 1 and address in lines[0] and "no Ray cluster answers" in lines[0], p.stderr
    assert took < 10 + 15  # the 10 s connect timeout plus interpreter start-up on a loaded machine


def test_an_open_port_that_is_not_ray_times_out_naming_it():
    """A listening port that does not speak gRPC (here a plain TCP server that never answers,
    like Redis on the port Ray also defaults to): the timeout ends it, not minutes of retries."""
    from cluster.shell.job import JoinError, check_reachable

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    address = f"127.0.0.1:{srv.getsockname()[1]}"
    try:
        t0 = time.monotonic()
        with pytest.raises(JoinError, match=f"--address {address}: no Ray cluster answers there within 1 s"):
            check_reachable(address, timeout_s=1.0)
        assert time.monotonic() - t0 < 5
    finally:
        srv.close()


def test_token_auth_required_but_unset_says_to_set_it(token_head):
    address, _ = token_head
    p, took = _job(["--address", address, "--port", "0", "--http-port", "0"], _env(), timeout=120)
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr
    lines = _error_lines(p.stderr)
    assert len(lines) == 1 and "RAY_AUTH_MODE=token" in lines[0] and address in lines[0], p.stderr
    assert took < 15  # asked once, not ray.init's half a minute of retries


def test_cluster_without_devices_refuses_with_the_hint(token_head):
    address, token_file = token_head
    env = _env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file))
    p, _took = _job(["--address", address, "--port", "0", "--http-port", "0"], env, timeout=120)
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr
    lines = _error_lines(p.stderr)
    assert len(lines) == 1, p.stderr
    assert "no device:<kind> resources" in lines[0] and "0 experts" in lines[0] and "ray start --resources" in lines[0]
    assert "joining the Ray cluster at" in p.stderr  # a progress line outside a terminal


def test_http_port_is_validated():
    p, _ = _job(["--http-port", "70000", "--fleet", "examples/fleet.yaml"], _env(), timeout=60)
    assert p.returncode == 2 and _error_lines(p.stderr) == [
        "flotilla: error: --http-port: 70000; allowed: 1..65535, or 0 to disable the HTTP server"], p.stderr


def test_auth_errors_are_recognised_anywhere_in_the_chain():
    """The fallback when ray.init itself fails: Ray's AuthenticationError, or an InvalidAuthToken
    status wrapped in another exception, is an auth error; a plain connection error is not."""
    from ray.exceptions import AuthenticationError

    from cluster.shell.job import _is_auth_error

    try:
        try:
            raise RuntimeError("Failed to get cluster ID: InvalidAuthToken: Authentication token is missing")
        except RuntimeError as inner:
            raise ConnectionError("could not connect to the GCS") from inner
    except ConnectionError as wrapped:
        assert _is_auth_error(wrapped)
    assert _is_auth_error(AuthenticationError("token mismatch"))
    assert not _is_auth_error(ConnectionError("Connection refused"))
