"""Ray job submission: a head started here (``ray start --head --block`` on free ports, with a
device resource), ``python -m cluster.shell.job serve`` submitted through JobSubmissionClient with the
repository as working dir, a request through the gateway, then the job and the head stopped.

The head is stopped by signalling its own process group, never with ``ray stop`` (which would stop
every Ray instance on the machine, the test session's included).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from testkit import free_ports

REPO = Path(__file__).resolve().parents[2]

def _ray_auth_headers() -> dict[str, str]:
    """Ray's token authentication stays on: send the token ``ray start`` uses (``$RAY_AUTH_TOKEN``
    or ``~/.ray/auth_token``), when there is one."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if not token and path.is_file():
        token = path.read_text().strip()
    return {"authorization": f"Bearer {token}"} if token else {}


@pytest.fixture(scope="module")
def head():
    from ray.job_submission import JobSubmissionClient

    gcs, dash, agent_grpc, agent_http, node_mgr, obj_mgr, metrics, runtime_env, client = free_ports(9)
    tmp = tempfile.mkdtemp(prefix="rayjob")
    bindir = str(Path(sys.executable).parent)
    env = dict(os.environ, PATH=bindir + os.pathsep + os.environ.get("PATH", ""), RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    cmd = [str(Path(bindir) / "ray"), "start", "--head", "--block", "--port", str(gcs), "--dashboard-port", str(dash),
           "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--node-ip-address", "127.0.0.1",
           "--dashboard-agent-grpc-port", str(agent_grpc), "--dashboard-agent-listen-port", str(agent_http),
           "--node-manager-port", str(node_mgr), "--object-manager-port", str(obj_mgr), "--metrics-export-port", str(metrics),
           "--runtime-env-agent-port", str(runtime_env), "--ray-client-server-port", str(client),
           "--num-cpus", "2", "--resources", '{"device:rtx4090": 1}', "--temp-dir", tmp, "--disable-usage-stats"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    client_obj = None
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"ray start exited {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
            try:
                client_obj = JobSubmissionClient(url, headers=_ray_auth_headers())
                client_obj.list_jobs()
                break
            except Exception:  # noqa: BLE001 - the dashboard is still starting
                time.sleep(2)
        else:
            raise RuntimeError("the Ray dashboard did not come up in 90 s")
        yield client_obj
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(3)  # a throw-away head: a few seconds' grace, then its group is killed
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)


def test_submitted_job_serves_through_the_gateway(head):
    from ray.job_submission import JobStatus

    from cluster.shell.client import Client

    (port,) = free_ports(1)
    deadline = time.monotonic() + 60
    while True:  # the dashboard answers before the head's job agent has registered with it
        try:
            job = head.submit_job(
                entrypoint=f"python -m cluster.shell.job serve --model echo --port {port}",
                runtime_env={"working_dir": str(REPO),
                             "excludes": [".venv", ".git", "**/__pycache__", ".hypothesis", ".pytest_cache"]},
            )
            break
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(1)
    try:
        with Client(f"127.0.0.1:{port}") as c:
            deadline = time.monotonic() + 150
            while True:
                status = head.get_job_status(job)
                assert status not in (JobStatus.FAILED, JobStatus.STOPPED), head.get_job_logs(job)[-3000:]
                try:
                    c.wait_ready(2)
                    if c.health() == "SERVING":
                        break
                except Exception:  # noqa: BLE001 - not up yet
                    pass
                assert time.monotonic() < deadline, head.get_job_logs(job)[-3000:]
            result = c.generate("sail the fleet", max_tokens=8)
        assert result.text == "sail the fleet"
        assert result.device_kind == "rtx4090" and result.device_id == "rtx4090-0"
    finally:
        head.stop_job(job)
        deadline = time.monotonic() + 60
        while head.get_job_status(job) not in (JobStatus.STOPPED, JobStatus.SUCCEEDED, JobStatus.FAILED):
            assert time.monotonic() < deadline, "the job did not stop"
            time.sleep(1)
