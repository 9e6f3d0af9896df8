"""The gateway's Plan (allocation solver, apply -> routing) and SelectExperts (selection solver + gate)
RPCs, and the Router dispatching by an applied allocation plan. Real Ray echo experts of two kinds,
a real Redis store, the committed MMLU-Pro fixture."""

from __future__ import annotations

import dataclasses
import json
import math
import time
import uuid
from pathlib import Path

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster.shell.proto import flotilla_pb2 as pb
from cluster.shell.proto import flotilla_pb2_grpc as pb_grpc

SMALL, LARGE = "jetson-agx-orin-64", "rtx4090"
APPLY_TOKEN = "apply-s3cret"
MAY_APPLY = [("authorization", f"Bearer {APPLY_TOKEN}")]
EXPERT_MODELS = ("Phi-3-mini-4k-instruct", "mathstral-7B", "gemma-7b", "Meta-Llama-3_1-8B-Instruct", "Yi-6B")
QUERIES = ["What is the derivative of x^2 + 3x?", "Which court case established judicial review in the United States?",
           "A 2 kg mass accelerates at 3 m/s^2. What net force acts on it?", "Define opportunity cost."]


@pytest.fixture(scope="module")
def instance(tmp_path_factory):
    from edge.dataset import FIXTURE_DIR, load_mmlu_pro
    from edge.instance import build_instance, load_instance
    from edge.profiles import build_profiles, default_placements

    data = load_mmlu_pro(FIXTURE_DIR, EXPERT_MODELS)
    profiles = build_profiles(data, default_placements(data.models, [SMALL, LARGE]))
    path = tmp_path_factory.mktemp("experts") / "instance.json"
    path.write_text(json.dumps(build_instance(data, profiles, aggregation_ms=5.0).to_dict()))
    return load_instance(path)


@pytest.fixture(scope="module")
def selector(instance):
    from cluster.shell.selector import ExpertSelector, encoder_embed, fixture_gate
    from edge.gating import GateConfig

    return ExpertSelector(instance, fixture_gate(instance.experts, GateConfig(epochs=60, hidden=32)), encoder_embed())


@pytest.fixture(scope="module")
def served(ray_session, redis_url, selector):
    """One jetson and one rtx4090 echo expert -> Router (plan re-read every 0.2 s) -> two gateways:
    one with the expert selector, one without."""
    import ray

    from actors.device import spawn
    from actors.expert import ExpertConfig, spawn_expert
    from actors.routing import Replica
    from actors.router import Router, RouterConfig
    from cluster.catalog import default_catalog
    from cluster.shell.gateway import Gateway, GatewayConfig
    from cluster.state import open_store

    cat = default_catalog()
    devs = [spawn(cat.get(k), f"{k}-0") for k in (SMALL, LARGE)]
    exps = [spawn_expert(d, k, f"{k}-0", ExpertConfig(model="echo"), start=False) for d, k in zip(devs, (SMALL, LARGE))]
    ray.get([e.start.remote() for e in exps])
    store = open_store(redis_url, namespace=f"test-plan-{uuid.uuid4().hex[:8]}")
    router = Router(store, [Replica(f"{k}-0", k, e, 2) for k, e in zip((SMALL, LARGE), exps)], RouterConfig(plan_refresh_s=0.2))
    router.start()
    gw = Gateway(router, store, GatewayConfig(port=0, apply_token=APPLY_TOKEN, max_apply_devices=40), "echo", selector).start()
    bare = Gateway(router, store, GatewayConfig(port=0), "echo").start()
    yield gw, bare, router, store
    gw.stop(0.5)
    bare.stop(0.5)
    store.clear()
    store.close()
    for a in exps + devs:
        ray.kill(a)


def _problem(**kw):
    from cluster.shell.cli.plan import build_problem

    args = dict(model="llama-2-7b", workload="arena", rate=4.0, tpot_slo_ms=120.0, ttft_slo_ms=None, devices="l4,a100-80g-sxm",
                max_count=[], power_budget_w=None, headroom=0.0, slice_factor=8, prices="catalog")
    args.update(kw)
    return build_problem(**args)[0]


# ------------------------------------------------------------------------------------------ Plan


def test_plan_query_answers_the_allocation_solvers_mix(stub):
    from solvers.allocation import solve

    want = solve(_problem(rate=6.0))
    got = stub.Plan(pb.PlanRequest(query=pb.PlanQuery(rate=6.0, devices=["l4", "a100-80g-sxm"])), timeout=60).allocation
    assert dict(got.counts) == want.counts and got.cost_per_hour == pytest.approx(want.cost_per_hour)
    assert dict(got.baselines) == pytest.approx({k: v for k, v in want.baselines.items() if v is not None})
    assert list(got.infeasible_alone) == sorted(k for k, v in want.baselines.items() if v is None)
    assert got.throughput_source == "modeled" and "MODELED" in got.note and got.solve_seconds > 0
    assert not got.applied and got.allocation_version == 0


def test_empty_plan_request_still_returns_the_current_plan(stub):
    resp = stub.Plan(pb.PlanRequest(), timeout=10)
    assert not resp.HasField("allocation") and len(resp.replicas) == 2


def test_infeasible_query_is_failed_precondition_with_the_binding_cause(stub):
    with pytest.raises(grpc.RpcError) as info:
        stub.Plan(pb.PlanRequest(query=pb.PlanQuery(devices=["l4"], tpot_slo_ms=0.5)), timeout=60)
    assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert info.value.details().startswith("infeasible") and "no allowed type can serve it" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        stub.Plan(pb.PlanRequest(query=pb.PlanQuery(devices=["l4", "a100-80g-sxm"], rate=50, power_budget_w=100)), timeout=60)
    assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION and "power budget" in info.value.details()


@pytest.mark.parametrize("query, field", [
    ({"rate": -1}, "query.rate"), ({"rate": math.inf}, "query.rate"), ({"tpot_slo_ms": 0}, "query.tpot_slo_ms"),
    ({"ttft_slo_ms": -3}, "query.ttft_slo_ms"), ({"power_budget_w": math.nan}, "query.power_budget_w"),
    ({"devices": ["nope"]}, "query.devices"), ({"devices": ["l4,a10g"]}, "query.devices"),
    ({"workload": "/etc/passwd"}, "query.workload"), ({"model": "llama-9000"}, "query.model"),
    ({"devices": ["l4"], "max_count": {"l4": -1}}, "query.max_count"),
    ({"devices": ["l4"], "max_count": {"h100-sxm": 1}}, "query.max_count"),
    ({"simulate": True, "target": 1.5}, "query.target"), ({"simulate": True, "target": -0.1}, "query.target"),
    ({"simulate": True, "target": math.nan}, "query.target"), ({"simulate": True, "sim_requests": 5}, "query.sim_requests"),
    ({"simulate": True, "rate": 0.0}, "query.simulate"),
])
def test_bad_query_fields_are_invalid_argument_naming_the_field(stub, query, field):
    with pytest.raises(grpc.RpcError) as info:
        stub.Plan(pb.PlanRequest(query=pb.PlanQuery(**query)), timeout=60)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(field), info.value.details()


@pytest.mark.parametrize("query, below", [
    ({"rate": 6.0, "devices": ["l4", "a100-80g-sxm"]}, False),
    ({"model": "llama-3-8b", "rate": 20.0, "tpot_slo_ms": 16.0}, True),
])
def test_plan_simulate_carries_the_simulated_attainment_next_to_the_cost(stub, query, below):
    """The reply's simulation is the simulator's answer on the very plan the RPC solved (the
    same figures ``flotilla plan --simulate`` computes); below the target it is flagged."""
    from cluster.shell.planner import PlanQuery, solve_query
    from cluster.shell.simulator import check_plan

    got = stub.Plan(pb.PlanRequest(query=pb.PlanQuery(simulate=True, sim_requests=600, **query)), timeout=120).allocation
    sim = got.simulation
    assert got.HasField("simulation") and 0.0 <= sim.slo_attainment <= 1.0
    assert sim.requests == 600 and sim.target == 0.99 and "modeled" in sim.note
    plan, desc = solve_query(PlanQuery(**{k: tuple(v) if isinstance(v, list) else v for k, v in query.items()}))
    assert dict(got.counts) == plan.counts
    want = check_plan({**plan.to_json(), **desc, "applied": False}, requests=600, target=0.99)
    assert sim.slo_attainment == want["slo_attainment"] and sim.p99_tpot_ms == pytest.approx(want["p99_tpot_ms"])
    assert sim.meets_target is (not below) and (sim.slo_attainment < 0.99) is below
    # the target moves the flag only
    lax = stub.Plan(pb.PlanRequest(query=pb.PlanQuery(simulate=True, sim_requests=600, target=0.0, **query)), timeout=120)
    assert lax.allocation.simulation.meets_target and lax.allocation.simulation.slo_attainment == sim.slo_attainment
    plain = stub.Plan(pb.PlanRequest(query=pb.PlanQuery(**query)), timeout=120).allocation
    assert not plain.HasField("simulation")


def test_cli_plan_server_simulate_goes_through_the_rpc(served):
    from cluster.shell.cli.plan import register
    from testkit import run_command

    addr = served[0].address
    code, stdout, _ = run_command(register, "plan", "--server", addr, "--model", "llama-3-8b", "--rate", "20",
                                  "--tpot-slo-ms", "16", "--simulate", "--sim-requests", "600", "--json")
    assert code == 0, stdout
    doc = json.loads(stdout)
    assert doc["server"] == addr and doc["cost_per_hour"] > 0 and doc["simulation"]["requests"] == 600
    assert doc["simulation"]["meets_target"] is False and doc["simulation"]["slo_attainment"] < 0.99
    code, stdout, stderr = run_command(register, "plan", "--server", addr, "--model", "llama-3-8b", "--rate", "20",
                                       "--tpot-slo-ms", "16", "--simulate", "--sim-requests", "600")
    assert code == 0 and "simulated SLO attainment" in stdout and "below the target 99%" in stderr
    code, _, stderr = run_command(register, "plan", "--server", addr, "--simulate", "--target", "2")
    assert code == 2 and "query.target" in stderr
    code, _, stderr = run_command(register, "plan", "--server", addr, "--headroom", "0.2")
    assert code == 2 and "--headroom" in stderr


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rate=st.none() | st.floats(width=64), tpot=st.none() | st.floats(width=64), ttft=st.none() | st.floats(width=64),
       devices=st.lists(st.sampled_from(["l4", "a10g", "t4", "", "x", "rtx4090"]), max_size=3),
       model=st.sampled_from(["", "llama-2-7b", "qwen2-1.5b", "??"]), workload=st.sampled_from(["", "pubmed", "bad"]),
       power=st.none() | st.floats(width=64))
def test_fuzzed_plan_queries_are_never_internal(stub, rate, tpot, ttft, devices, model, workload, power):
    q = pb.PlanQuery(devices=devices, model=model, workload=workload)
    for name, v in (("rate", rate), ("tpot_slo_ms", tpot), ("ttft_slo_ms", ttft), ("power_budget_w", power)):
        if v is not None:
            setattr(q, name, v)
    try:
        stub.Plan(pb.PlanRequest(query=q), timeout=60)
    except grpc.RpcError as exc:
        assert exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION), exc.details()


def test_applying_needs_the_apply_token(stub, served):
    bare = pb_grpc.FlotillaStub(grpc.insecure_channel(served[1].address))
    store = served[3]
    before = store.plan_versions(name="default")
    for st_, md in ((stub, None), (stub, [("authorization", "Bearer wrong")]), (bare, MAY_APPLY)):
        with pytest.raises(grpc.RpcError) as info:
            st_.Plan(pb.PlanRequest(query=pb.PlanQuery(rate=6.0, devices=["l4"], apply=True)), timeout=60, metadata=md)
        assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert info.value.details().startswith("query.apply") and APPLY_TOKEN not in info.value.details()
    assert store.plan_versions(name="default") == before


@pytest.mark.parametrize("query, needle", [
    ({"rate": 0}, "provisions no device"),
    ({"rate": 400.0, "devices": ["a100-80g-sxm"]}, "asks for 55 devices; this gateway applies at most 40"),
])
def test_apply_limits_are_invalid_argument_and_request_nothing(stub, served, query, needle):
    store = served[3]
    before = store.plan_versions(name="default")
    with pytest.raises(grpc.RpcError) as info:
        stub.Plan(pb.PlanRequest(query=pb.PlanQuery(apply=True, **query)), timeout=60, metadata=MAY_APPLY)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("query.apply") and needle in info.value.details()
    assert store.plan_versions(name="default") == before


def test_applied_plan_is_stored_and_its_routing_served(stub, served):
    from actors.router import PLAN_NAME
    from solvers.routing import routing_plan
    from cluster.tables import paper_grid
    from solvers.allocation import solve

    _, _, router, store = served
    want = solve(_problem(rate=6.0))
    resp = stub.Plan(pb.PlanRequest(query=pb.PlanQuery(rate=6.0, devices=["l4", "a100-80g-sxm"], apply=True)), timeout=60,
                     metadata=MAY_APPLY)
    assert resp.allocation.applied and resp.allocation.bundles == sum(want.counts.values())
    version, stored = store.get_plan(name="default")
    assert version == resp.allocation.allocation_version and stored["allocation"] == want.counts
    assert len(stored["bundles"]) == resp.allocation.bundles
    rversion, routing = store.get_plan(name=PLAN_NAME)
    grid = paper_grid()
    assert routing["buckets"] == routing_plan(want, grid.in_edges, grid.out_edges)["buckets"]
    assert resp.version == rversion == router.plan()[0] and resp.source == f"allocation v{version}"
    assert [dict(b.weights) for b in resp.buckets] == [b["weights"] for b in routing["buckets"]]
    assert [b.max_input_tokens for b in resp.buckets] == [b.get("max_input_tokens", 0) for b in routing["buckets"]]


# ------------------------------------------------------------------------------ routing by plan


def test_router_dispatches_by_the_applied_allocation_plan(served):
    from cluster.shell.planner import apply_allocation
    from cluster.tables import paper_grid
    from solvers.allocation import AllocationPlan

    _, _, router, store = served
    grid = paper_grid()
    # inputs up to 25 tokens -> SMALL; longer -> LARGE; except bucket (1, 0): half each
    assignment = {(i, j): {SMALL if i == 0 else LARGE: 1.0} for i, j in grid.buckets()}
    assignment[(1, 0)] = {SMALL: 0.5, LARGE: 0.5}
    plan = AllocationPlan(counts={SMALL: 1, LARGE: 1}, cost_per_hour=1.0, assignment=assignment,
                          load_per_type={SMALL: 0.5, LARGE: 0.5})
    applied = apply_allocation(plan, store, (grid.in_edges, grid.out_edges))
    time.sleep(0.3)  # one plan_refresh_s: the router re-reads the store by itself
    fallback = store.counter("router.plan_fallback")
    short = "tiny prompt here"  # 4 tokens in
    long = " ".join(f"word{i}" for i in range(60))  # ~110 tokens in
    middle = "x" * 150  # 38 tokens in: bucket (1, 0) with max_tokens <= 25
    kinds = {name: [router.generate({"prompt": p, "max_tokens": 8})["device_kind"] for _ in range(6)]
             for name, p in (("short", short), ("long", long), ("middle", middle))}
    assert router.plan()[0] == applied["routing_version"]
    assert kinds["short"] == [SMALL] * 6 and kinds["long"] == [LARGE] * 6
    assert sorted(kinds["middle"]) == [SMALL] * 3 + [LARGE] * 3
    # output length decides too: a short prompt asking for 300 tokens is bucket (0, 3) -> still SMALL
    assert router.generate({"prompt": short, "max_tokens": 300})["device_kind"] == SMALL
    assert store.counter("router.plan_fallback") == fallback


# ------------------------------------------------------------------------------------ SelectExperts


def _select(stub, query, energy, latency, k=1):
    return stub.SelectExperts(pb.SelectExpertsRequest(query=query, energy_budget_j=energy, latency_budget_ms=latency,
                                                      max_experts=k), timeout=60)


@pytest.mark.parametrize("energy, latency, k", [(1e9, 1e9, 2), (600.0, 12_000.0, 3), (450.0, 8_000.0, 1), (2000.0, 11_000.0, 64)])
def test_select_experts_is_the_solvers_subset_then_the_gates_top_k(stub, selector, instance, energy, latency, k):
    from edge.gating import restrict
    from edge.instance import solve_instance

    budgeted = dataclasses.replace(instance, energy_budget=energy,
                                   latency_budget=tuple((c, latency) for c in instance.latency_categories))
    want = solve_instance(budgeted, "monotonic")
    names = list(instance.experts)
    for q in QUERIES:
        resp = _select(stub, q, energy, latency, k)
        assert list(resp.deployed) == want["selected"] and resp.objective_value == pytest.approx(want["objective_value"])
        assert len(resp.experts) == min(k, len(want["selected"])) and set(resp.experts) <= set(want["selected"])
        assert sum(resp.weights) == pytest.approx(1.0) and list(resp.weights) == sorted(resp.weights, reverse=True)
        w = restrict(selector.gate.weights(selector.embed([q])), [names.index(n) for n in want["selected"]], k)[0]
        assert list(resp.weights) == pytest.approx([w[names.index(n)] for n in resp.experts])
        # one expert answers: energy and latency are the routed (first) expert's, not a sum over the top-k
        assert resp.routed == resp.experts[0]
        r = names.index(resp.routed)
        assert resp.energy_j == pytest.approx(instance.energy_j[r]) and resp.energy_j <= energy
        worst = max(row[r] for row in instance.latency_ms) + instance.aggregation_ms
        assert resp.latency_ms == pytest.approx(worst) and resp.latency_ms <= latency
        assert "MODELED" in resp.note


def test_deployments_are_cached_per_budget_pair(stub, selector):
    _select(stub, QUERIES[0], 777.0, 9_999.0)
    solves = selector.solves
    for q in QUERIES:
        _select(stub, q, 777.0, 9_999.0, 2)
    assert selector.solves == solves
    _select(stub, QUERIES[0], 778.0, 9_999.0)
    assert selector.solves == solves + 1


def test_budget_below_every_expert_answers_the_empty_set(stub, instance):
    resp = _select(stub, QUERIES[1], min(instance.energy_j) * 0.99, 1e9, 3)
    assert list(resp.experts) == [] and list(resp.weights) == [] and list(resp.deployed) == []
    assert resp.energy_j == 0 and "empty set" in resp.note
    assert list(_select(stub, QUERIES[1], 1e9, 1.0).experts) == []


def test_gateway_without_experts_is_failed_precondition(served):
    with grpc.insecure_channel(served[1].address) as ch:
        with pytest.raises(grpc.RpcError) as info:
            _select(pb_grpc.FlotillaStub(ch), "hello", 100.0, 100.0)
    assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION and "--experts FILE" in info.value.details()


_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=_text, energy=st.floats(width=64), latency=st.floats(width=64), k=st.integers(-(2**31), 2**31 - 1))
def test_fuzzed_select_experts_is_ok_or_invalid_argument(stub, query, energy, latency, k):
    try:
        resp = _select(stub, query, energy, latency, k)
    except grpc.RpcError as exc:
        assert exc.code() is grpc.StatusCode.INVALID_ARGUMENT, exc.details()
    else:
        assert not resp.weights or sum(resp.weights) == pytest.approx(1.0)
        assert np.isfinite(resp.energy_j) and resp.energy_j <= energy


def test_client_plan_query_and_select(served):
    from cluster.shell.client import Client

    with Client(served[0].address) as c:
        resp = c.plan({"rate": 2.0, "devices": ["a100-80g-sxm"], "ttft_slo_ms": None})
        assert dict(resp.allocation.counts) == {"a100-80g-sxm": 1} and resp.allocation.solver == "closed-form"
        sel = c.select_experts(QUERIES[2], 1e9, 1e9, 2)
        assert len(sel.experts) == 2 and sum(sel.weights) == pytest.approx(1.0)


def test_serve_with_an_unreadable_experts_file_fails_before_starting(tmp_path):
    from cluster.exceptions import InputError
    from cluster.shell.serving import ServeConfig, start_serving

    with pytest.raises(InputError, match="instance: cannot read"):
        start_serving(ServeConfig(model="echo", experts=str(tmp_path / "missing.json")))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"experts": [{"name": "m@rtx4090", "energy_j": 1, "latency_ms": {"a": 1}}],
                               "categories": ["a"], "scores": [[1]]}))
    with pytest.raises(InputError, match="experts: expert 'm@rtx4090' .* has no column in the MMLU-Pro fixture"):
        start_serving(ServeConfig(model="echo", experts=str(bad)))


def test_unary_dispatch_for_short_requests_gives_the_streamed_answer(served):
    from actors.routing import Replica
    from actors.router import Router, RouterConfig

    _, _, router, store = served
    streaming = Router(store, [Replica(r.device_id, r.kind, r.handle, 2) for r in router._replicas],
                       RouterConfig(unary_max_tokens=0))
    streaming.start(replay=False)
    unary = Router(store, [Replica(r.device_id, r.kind, r.handle, 2) for r in router._replicas],
                   RouterConfig(unary_max_tokens=8))
    unary.start(replay=False)
    prompt = "alpha beta gamma delta epsilon zeta eta theta iota kappa"
    for max_tokens in (3, 8, 9):
        events = list(unary.stream({"prompt": prompt, "max_tokens": max_tokens}))
        streamed = streaming.generate({"prompt": prompt, "max_tokens": max_tokens})
        chunks = [e for e in events if e["type"] == "chunk"]
        assert "".join(c["text"] for c in chunks) == events[-1]["text"] == streamed["text"]
        assert events[-1]["finish_reason"] == streamed["finish_reason"] and events[-1]["attempts"] == 1
        if max_tokens <= 8:
            assert len(chunks) == 1  # one unary call: the whole text in one chunk
    assert unary.status()["admitted"] == 0 and store.journal_unacked() == []


def test_a_solve_nobody_waits_for_is_killed(served, monkeypatch):
    """A client that cancels its Plan call stops the solve (the worker process is killed), so the
    solver slots are free again at once instead of after the 60 s limit."""
    import functools
    import sys

    import cluster.shell.planner as planner_module

    sys.path.insert(0, str(Path(__file__).parents[2] / "bench"))
    from bench_allocation import instance

    gw = served[0]
    planner = gw.servicer.planner
    # Every query CBC answers in about a second here, so the gateway's workers are handed an
    # instance that takes CBC tens of seconds (Mélange's binary formulation over 16 types; see
    # test_solver_process): the solve, the worker and the cancellation stay real.
    hard = instance(16, 1, 2)
    monkeypatch.setattr(planner_module, "build_problem", lambda **_: (hard, {}))
    for w in planner._all:
        monkeypatch.setattr(w, "solve", functools.partial(type(w).solve, w, formulation="binary", baselines=False))
    stub = pb_grpc.FlotillaStub(grpc.insecure_channel(gw.address))
    before = planner.cancelled
    call = stub.Plan.future(pb.PlanRequest(query=pb.PlanQuery(rate=2.0, devices=["l4"])), timeout=120)
    deadline = time.monotonic() + 30
    while planner.solving == 0 and not call.done() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert planner.solving == 1 and not call.done()
    time.sleep(0.5)  # the worker has the problem
    call.cancel()
    deadline = time.monotonic() + 10
    while (planner.cancelled == before or planner.solving) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert planner.cancelled == before + 1 and planner.solving == 0
    monkeypatch.undo()
    t0 = time.monotonic()  # both slots are free: an easy plan answers at once
    quick = [stub.Plan(pb.PlanRequest(query=pb.PlanQuery(rate=6.0, devices=["l4", "a100-80g-sxm"])), timeout=60)
             for _ in range(2)]
    assert all(q.allocation.counts for q in quick) and time.monotonic() - t0 < 30
