"""A newcomer's first commands: ``flotilla --version``, ``flotilla status`` with no flags (the local
gateway, as ``generate``), and ``flotilla serve`` / ``flotilla demo`` with no ``--fleet`` (the
packaged example fleet, from any directory)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_version_prints_the_installed_version(capsys):
    from importlib.metadata import version

    from cluster.shell.cli.main import main

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"flotilla {version('flotilla')}\n"


def test_status_and_generate_share_the_default_gateway():
    from cluster.shell.client import Client, default_server

    assert default_server() in ("127.0.0.1:50051", __import__("os").environ.get("FLOTILLA_SERVER", "").strip())
    with Client() as c:  # what `flotilla generate` uses without --server
        assert c.server == default_server()


def test_status_without_flags_asks_the_local_gateway(ray_session, monkeypatch, capsys):
    """No --server, no --redis: the gateway at the default address answers (here a real one)."""
    import uuid

    import ray

    from actors.device import spawn
    from actors.expert import ExpertConfig, spawn_expert
    from actors.routing import Replica
    from actors.router import Router
    from cluster.catalog import default_catalog
    from cluster.shell import client as client_mod
    from cluster.shell.cli.main import main
    from cluster.shell.gateway import Gateway, GatewayConfig
    from cluster.state import open_store

    dev = spawn(default_catalog().get("jetson-agx-orin-64"), "jetson-agx-orin-64-0")
    exp = spawn_expert(dev, "jetson-agx-orin-64", "jetson-agx-orin-64-0", ExpertConfig(model="echo"))
    store = open_store(None, namespace=f"zero-{uuid.uuid4().hex[:8]}")
    router = Router(store, [Replica("jetson-agx-orin-64-0", "jetson-agx-orin-64", exp, 2)])
    gw = Gateway(router, store, GatewayConfig(port=0), "echo").start()
    try:
        for var in ("FLOTILLA_SERVER", "FLOTILLA_REDIS_URL", "FLOTILLA_TOKEN"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setattr(client_mod, "DEFAULT_SERVER", gw.address)  # stands in for 127.0.0.1:50051
        assert main(["status", "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["model"] == "echo" and [r["device_id"] for r in doc["replicas"]] == ["jetson-agx-orin-64-0"]
    finally:
        gw.stop(0.5)
        for a in (exp, dev):
            ray.kill(a)


def test_status_without_flags_and_no_gateway_says_what_to_do(monkeypatch, capsys):
    from cluster.shell.cli.main import main

    monkeypatch.setenv("FLOTILLA_SERVER", "127.0.0.1:1")
    monkeypatch.delenv("FLOTILLA_REDIS_URL", raising=False)
    assert main(["status"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no gateway answers at 127.0.0.1:1" in err and "flotilla serve" in err


def test_the_packaged_fleet_is_the_example_fleet():
    from cluster.runtime import load_fleet
    from cluster.shell.serving import example_fleet

    packaged = Path(example_fleet())
    assert packaged.read_text() == (REPO / "examples" / "fleet.yaml").read_text()
    fleet = load_fleet(packaged)
    assert fleet.name == "example"


def test_serve_without_fleet_uses_the_packaged_one_unless_joining(monkeypatch):
    from cluster.config import FlotillaConfig
    from cluster.shell.cli.serve import with_default_fleet
    from cluster.shell.serving import example_fleet

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert with_default_fleet(FlotillaConfig()).fleet == example_fleet()
    assert with_default_fleet(FlotillaConfig(fleet="my.yaml")).fleet == "my.yaml"
    assert with_default_fleet(FlotillaConfig(ray_address="10.0.0.1:6379")).fleet is None
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    assert with_default_fleet(FlotillaConfig()).fleet is None


def test_demo_without_fleet_runs_from_any_directory(ray_session, tmp_path, monkeypatch, capsys):
    from cluster.shell.cli.main import main

    monkeypatch.chdir(tmp_path)  # no examples/ here
    assert main(["demo", "--model", "echo", "--requests", "3", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["requests"] == 3 and sum(r["requests"] for r in doc["by_kind"]) == 3
    assert all(s["answer"] == s["prompt"] for s in doc["samples"])
