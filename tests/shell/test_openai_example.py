"""``examples/openai_chat.py``, the README's first call to a running server, run as a user runs
it: against an echo-model server it streams the answer (exit 0); it waits, saying so, for a server
that is not up yet and gives up with one line (exit 1); a wrong token is one line (exit 2)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from testkit import free_ports

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "openai_chat.py"
TOKEN = "example-token"
KIND = "rtx4090"


@pytest.fixture(scope="module")
def http(ray_session):
    """One echo expert -> Router -> the OpenAI HTTP server with a bearer token."""
    import ray

    from actors.device import spawn
    from actors.expert import ExpertConfig, spawn_expert
    from actors.routing import Replica
    from actors.router import Router
    from cluster.catalog import default_catalog
    from cluster.shell.openai_api import ChatTemplate, HttpConfig, HttpServer, OpenAIApp
    from cluster.state import open_store

    dev = spawn(default_catalog().get(KIND), f"{KIND}-0")
    exp = spawn_expert(dev, KIND, f"{KIND}-0", ExpertConfig(model="echo"))
    store = open_store(None, namespace=f"test-example-{uuid.uuid4().hex[:8]}")
    router = Router(store, [Replica(f"{KIND}-0", KIND, exp, 2)])
    router.start()
    server = HttpServer(HttpConfig(port=0, token=TOKEN))
    server.start(OpenAIApp(router, "echo", token=TOKEN, template=ChatTemplate.for_model("echo")))
    yield server
    server.stop()
    router.close()
    for a in (exp, dev):
        ray.kill(a)


def _run(*args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "FLOTILLA_TOKEN"}
    if token is not None:
        env["FLOTILLA_TOKEN"] = token
    return subprocess.run([sys.executable, str(EXAMPLE), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)


def test_streams_the_answer_of_the_listed_model(http):
    p = _run("say hello fleet", "--base-url", http.base_url)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "say hello fleet\n"  # the echo model answers with the prompt, streamed word by word
    assert p.stderr == ""


def test_waits_for_a_server_then_gives_up_in_one_line():
    (port,) = free_ports(1)
    p = _run("hi", "--base-url", f"http://127.0.0.1:{port}/v1", "--wait", "2")
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    assert lines[0].startswith(f"waiting for the server at http://127.0.0.1:{port}/v1 (")
    assert lines[-1] == (f"openai_chat: no server answers at http://127.0.0.1:{port}/v1 after 2 s; "
                         "start one with `flotilla serve`")
    assert "Traceback" not in p.stderr


def test_a_wrong_token_is_one_line(http):
    p = _run("hi", "--base-url", http.base_url, token="wrong")
    assert p.returncode == 2
    assert p.stderr.startswith("openai_chat: the server refused the request: HTTP 401: ")
    assert p.stderr.strip().count("\n") == 0
