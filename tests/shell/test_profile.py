"""`flotilla profile` end to end against a real gateway (Ray echo experts that stream one word per
20 ms), the resumable sweep file, the reduced table and `flotilla plan --tables`."""

from __future__ import annotations

import json
import uuid

import pytest

from cluster.shell.cli import main as cli

KIND = "rtx4090"


@pytest.fixture(scope="module")
def gateway(ray_session):
    import ray

    from actors.device import spawn
    from actors.expert import ExpertConfig, spawn_expert
    from actors.router import Router
    from actors.routing import Replica
    from cluster.catalog import default_catalog
    from cluster.shell.gateway import Gateway, GatewayConfig
    from cluster.state import MemoryStore

    dev = spawn(default_catalog().get(KIND), f"{KIND}-prof")
    exp = spawn_expert(dev, KIND, f"{KIND}-prof", ExpertConfig(model="echo", echo_delay_s=0.02, max_concurrency=4))
    store = MemoryStore(f"profile-{uuid.uuid4().hex[:6]}")
    router = Router(store, [Replica(f"{KIND}-prof", KIND, exp, 4)])
    router.start()
    gw = Gateway(router, store, GatewayConfig(port=0), "echo").start()
    yield gw
    gw.stop(0.2)
    router.close()
    for a in (exp, dev):
        ray.kill(a)


def test_profile_sweep_resume_table_and_plan(gateway, tmp_path, capsys):
    sweep, table = tmp_path / "sweep.jsonl", tmp_path / "table.json"
    args = ["profile", "--target", f"grpc://{gateway.address}", "--kind", KIND, "--model", "echo", "--inputs", "12",
            "--outputs", "4,8", "--rates", "2,10", "--requests", "6", "--out", str(sweep), "--table", str(table),
            "--tpot-slo-ms", "120", "--json"]
    assert cli.main(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["measured"] and doc["device_kind"] == KIND and len(doc["points"]) == 4
    lines = [json.loads(x) for x in sweep.read_text().splitlines()]
    assert len(lines) == 4 * 4  # 4 points x (TPUT, TTFT, TPOT, E2E)
    assert all(x["samples"] == 6 and x["failed"] == 0 for x in lines)
    tpot = [x for x in lines if x["metric"] == "TPOT"]
    assert all(0.015 <= x["P50"] <= 1.0 for x in tpot)  # the echo expert waits 20 ms a word
    e2e = {(x["output_tokens"], x["request_rate"]): x["P50"] for x in lines if x["metric"] == "E2E"}
    assert e2e[(8, 2.0)] > e2e[(4, 2.0)]  # twice the words take longer

    before = sweep.read_text()
    assert cli.main(args) == 0  # resumed: every point is already in the file
    again = json.loads(capsys.readouterr().out)
    assert all(p["skipped"] for p in again["points"]) and sweep.read_text() == before

    tab = json.loads(table.read_text())
    assert tab["kind"] == KIND and tab["source"] == "measured" and tab["engine"] == "flotilla"
    profiled = [(i, j) for i, row in enumerate(tab["limits"]) for j, lim in enumerate(row) if lim != "unprofiled"]
    assert profiled == [(0, 0)]  # 12 words in, 4 or 8 out: the first bucket of the paper's grid
    assert tab["rates"][0][0] > 0

    assert cli.main(["plan", "--devices", f"{KIND},a100-80g-sxm", "--tables", str(table), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["throughput_source"] == "modeled+measured"
    assert plan["measured"][KIND]["measured_buckets"] == 1 and plan["measured"][KIND]["engine"] == "flotilla"
    assert plan["rate_tables"][KIND][0][0] == tab["rates"][0][0]  # the measured entry replaces the modeled one


@pytest.mark.parametrize("extra, needle", [
    (["--rates", "-1"], "--rates"), (["--target", "ftp://x"], "--target"), (["--inputs", "a,b"], "--inputs"),
    (["--table", "t.json"], "--table: needs"),
])
def test_profile_bad_input_exits_2(extra, needle, capsys, tmp_path):
    rc = cli.main(["profile", "--kind", KIND, "--out", str(tmp_path / "s.jsonl"), *extra])
    assert rc == 2 and needle in capsys.readouterr().err


def test_plan_rejects_a_table_for_another_kind_or_slo(tmp_path, capsys):
    from cluster.tables import paper_grid

    g = paper_grid()
    doc = {"kind": KIND, "source": "measured", "slo_ms": {"tpot": 50.0},
           "grid": {"input_edges": list(g.in_edges), "output_edges": list(g.out_edges)},
           "rates": [[0.0] * len(g.out_edges) for _ in g.in_edges],
           "limits": [["unprofiled"] * len(g.out_edges) for _ in g.in_edges]}
    f = tmp_path / "t.json"
    f.write_text(json.dumps(doc))
    assert cli.main(["plan", "--devices", "l4,a100-80g-sxm", "--tables", str(f)]) == 2
    assert "not in --devices" in capsys.readouterr().err
    assert cli.main(["plan", "--devices", f"{KIND},a100-80g-sxm", "--tables", str(f)]) == 2
    assert "TPOT SLO of 50 ms" in capsys.readouterr().err
