"""Selection drives serving: a fleet hosts SmolLM2-135M as an edge expert on two kinds, SelectExperts
answers with the routed expert and the devices hosting it, and a Generate with ``routing: experts``
is served on a replica of that expert's device (real Ray actors, the real model, the real gateway).

The two hosted experts trade off: on the Jetson AGX Orin the modeled energy per query is lower,
on the RTX 4090 the modeled latency. So with no latency budget the Orin is routed, with a latency
budget between the two latencies the 4090 is. Expected figures are cluster/perf's, computed here."""

from __future__ import annotations

import json
import math

import grpc
import pytest

from tests.shell.test_cli import flotilla

MODEL = "smollm2-135m"
ORIN, RTX = "jetson-agx-orin-64", "rtx4090"
PROMPT = "What is the capital of France?"
NEW_TOKENS = 4


def modeled(kind: str, chars: int, out_tokens: int) -> tuple[float, float]:
    """(energy J, latency ms) of one query as the hosted experts model it: cluster/perf directly."""
    from cluster import models, perf
    from cluster.probe import probed_catalog

    c = perf.request_latency(models.get_model(MODEL), probed_catalog().get(kind), max(1, math.ceil(chars / 4)),
                             out_tokens)
    return c.energy_j, c.e2e_s * 1e3


@pytest.fixture(scope="module")
def served(ray_session, tmp_path_factory):
    from cluster.shell.gateway import GatewayConfig
    from cluster.shell.serving import ServeConfig, start_serving

    d = tmp_path_factory.mktemp("hosted")
    fleet = d / "fleet.yaml"
    fleet.write_text("name: hosted-test\ndevices:\n"
                     + "".join(f"  - kind: {k}\n    count: 1\n" for k in (ORIN, RTX))
                     + f"experts:\n  - {MODEL}@{ORIN}\n  - {MODEL}@rtx-4090\n")  # an alias resolves to the kind
    s = start_serving(ServeConfig(fleet=str(fleet), gateway=GatewayConfig(port=0), max_concurrency=1,
                                  max_context=1024))
    yield s
    s.shutdown()


@pytest.fixture(scope="module")
def stub(served):
    from cluster.shell.proto import flotilla_pb2_grpc as pb_grpc

    ch = grpc.insecure_channel(served.gateway.address)
    yield pb_grpc.FlotillaStub(ch)
    ch.close()


def between() -> float:
    """A latency budget the 4090 meets and the Orin does not."""
    t_orin, t_rtx = modeled(ORIN, len(PROMPT), NEW_TOKENS)[1], modeled(RTX, len(PROMPT), NEW_TOKENS)[1]
    assert t_rtx < t_orin
    return (t_rtx + t_orin) / 2


def test_the_fleet_hosts_the_served_model_on_the_listed_kinds(served):
    assert served.hosting.names() == (f"{MODEL}@{ORIN}", f"{MODEL}@{RTX}")
    assert {e.name: e.device_ids for e in served.hosting.experts} == {f"{MODEL}@{ORIN}": (f"{ORIN}-0",),
                                                                       f"{MODEL}@{RTX}": (f"{RTX}-0",)}


@pytest.mark.parametrize("latency_budget, routed", [(1e9, ORIN), (None, RTX)])
def test_select_experts_routes_one_expert_and_names_its_devices(stub, latency_budget, routed):
    from cluster.shell.proto import flotilla_pb2 as pb

    t_budget = between() if latency_budget is None else latency_budget
    resp = stub.SelectExperts(pb.SelectExpertsRequest(query=PROMPT, energy_budget_j=1e9, latency_budget_ms=t_budget,
                                                      max_tokens=NEW_TOKENS), timeout=60)
    assert resp.routed == f"{MODEL}@{routed}" and resp.experts[0] == resp.routed
    assert list(resp.weights) == [1.0] + [0.0] * (len(resp.experts) - 1)
    e, t = modeled(routed, len(PROMPT), NEW_TOKENS)
    assert resp.energy_j == pytest.approx(e, rel=1e-9) and resp.latency_ms == pytest.approx(t, rel=1e-9)
    hosts = {h.expert: (list(h.device_ids), h.energy_j, h.latency_ms) for h in resp.hosts}
    assert hosts[resp.routed][0] == [f"{routed}-0"]
    # brute force: S is every hosted expert within both budgets, the routed one the least energy
    want = {k: modeled(k, len(PROMPT), NEW_TOKENS) for k in (ORIN, RTX)}
    fits = sorted((v[0], f"{MODEL}@{k}") for k, v in want.items() if v[1] <= t_budget)
    assert list(resp.experts) == [n for _, n in fits] == list(resp.deployed) == list(hosts)
    assert "MODELED" in resp.note


def test_generate_routed_by_experts_lands_on_the_routed_experts_device(served):
    address = served.gateway.address
    for args, kind in ((["--routing", "experts"], ORIN), (["--routing", "experts", "--latency-budget", f"{between():.3f}"], RTX)):
        for _ in range(3):  # the plan's least-loaded choice (ties round-robin) would alternate the devices
            res = flotilla("generate", PROMPT, "--max-tokens", str(NEW_TOKENS), "--json", "--server", address, *args,
                           timeout=300)
            assert res.returncode == 0, res.stderr
            doc = json.loads(res.stdout)
            assert doc["device_id"] == f"{kind}-0" and doc["device_kind"] == kind
            assert doc["expert"] == f"{MODEL}@{kind}" and doc["text"]
    plain = json.loads(flotilla("generate", PROMPT, "--max-tokens", "2", "--json", "--server", address).stdout)
    assert plain["expert"] == ""  # the plan routed it: no expert named
    assert served.store.journal_unacked() == []


@pytest.mark.parametrize("fields, where", [
    ({"routing": "fastest"}, "routing: expected one of plan, experts, got 'fastest'"),
    ({"routing": "experts", "energy_budget_j": 1e-6}, "routing: no hosted expert fits these budgets (energy_budget_j"),
    ({"routing": "experts", "latency_budget_ms": -1.0}, "latency_budget_ms: -1.0; allowed: a finite number > 0"),
    ({"energy_budget_j": 5.0}, "energy_budget_j: only with routing 'experts'"),
])
def test_bad_routing_is_invalid_argument_naming_the_field(stub, fields, where):
    from cluster.shell.proto import flotilla_pb2 as pb

    with pytest.raises(grpc.RpcError) as info:
        list(stub.Generate(pb.GenerateRequest(prompt=PROMPT, max_tokens=2, **fields), timeout=60))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(where), info.value.details()


def test_cli_routing_flags_exit_2(served):
    address = served.gateway.address
    bad = flotilla("generate", PROMPT, "--routing", "cheapest", "--server", address)
    assert bad.returncode == 2 and "--routing: expected plan or experts, got 'cheapest'" in bad.stderr
    alone = flotilla("generate", PROMPT, "--energy-budget", "3", "--server", address)
    assert alone.returncode == 2 and "--energy-budget: only with --routing experts" in alone.stderr
