"""The hosted experts' selection and the ``routing: experts`` hook, without a cluster: the routed
expert against a brute force over the budgets, the replica the hook hands the router, and how the
hook composes with another (the context-parallel hook's place)."""

from __future__ import annotations

import itertools

import pytest

from actors.routing import Replica
from cluster.exceptions import InputError
from cluster.shell.hosting import (
    ExpertsRoute,
    ExpertUnavailableError,
    HostedExperts,
    check_routing,
    compose_hooks,
    expert_of,
)

KINDS = {"jetson-agx-orin-64-0": "jetson-agx-orin-64", "jetson-agx-orin-64-1": "jetson-agx-orin-64",
         "rtx4090-0": "rtx4090", "a100-80g-sxm-0": "a100-80g-sxm"}
FLEET = ("smollm2-135m@jetson-agx-orin-64", "smollm2-135m@rtx4090", "smollm2-135m@a100-80g-sxm")


@pytest.fixture(scope="module")
def hosted() -> HostedExperts:
    h, skipped = HostedExperts.from_fleet((*FLEET, "phi3@rtx4090"), "smollm2-135m", KINDS)
    assert skipped == ["phi3@rtx4090: this gateway serves 'smollm2-135m'"]
    return h


def test_only_the_served_models_entries_are_hosted() -> None:
    h, skipped = HostedExperts.from_fleet(FLEET, "echo", KINDS)
    assert h is None and len(skipped) == 3
    h, skipped = HostedExperts.from_fleet(("smollm2-135m@l4",), "smollm2-135m", KINDS)
    assert h is None and skipped == ["smollm2-135m@l4: no device of kind 'l4' is up"]


def test_routed_expert_is_the_cheapest_within_both_budgets_brute_force(hosted) -> None:
    for chars, out in ((30, 4), (4000, 64), (200, 512)):
        costs = {e.name: hosted.cost(e, -(-chars // 4), out) for e in hosted.experts}
        es = sorted({v[0] for v in costs.values()})
        ts = sorted({v[1] for v in costs.values()})
        grid_e = [None, es[0] * 0.99, *[v * 1.0001 for v in es]]
        grid_t = [None, ts[0] * 0.99, *[v * 1.0001 for v in ts]]
        for eb, tb in itertools.product(grid_e, grid_t):
            c = hosted.select(chars, out, eb, tb)
            fits = {n: v for n, v in costs.items() if (eb is None or v[0] <= eb) and (tb is None or v[1] <= tb)}
            if not fits:
                assert c.routed == "" and c.experts == () and "empty set" in c.note
                continue
            want = min(fits, key=lambda n: (fits[n][0], fits[n][1], n))
            assert c.routed == want and c.experts[0] == want and set(c.experts) == set(fits)
            assert (c.energy_j, c.latency_ms) == costs[want]
            assert c.weights == (1.0,) + (0.0,) * (len(fits) - 1)
            assert c.device_ids == next(e.device_ids for e in hosted.experts if e.name == want)


def test_hook_hands_back_the_least_loaded_live_replica_of_the_routed_expert(hosted) -> None:
    pool = [Replica(d, k, handle=None, capacity=2) for d, k in KINDS.items()]
    hook = ExpertsRoute(hosted, lambda: pool)
    req = {"prompt": "What is the capital of France?", "max_tokens": 4, "routing": "experts"}
    routed = hosted.select(len(req["prompt"]), 4).routed
    assert routed == "smollm2-135m@jetson-agx-orin-64"  # the least modeled energy, no budget
    pool[0].active = 1  # jetson-0 busier than jetson-1
    assert hook(req) is pool[1]
    pool[1].alive = False
    assert hook(req) is pool[0]
    pool[0].alive = False
    with pytest.raises(ExpertUnavailableError, match="^routing: no live replica hosts the routed expert"):
        hook(req)
    import grpc

    from cluster.shell.gateway import status_for

    assert status_for(ExpertUnavailableError("x")) == grpc.StatusCode.UNAVAILABLE
    assert status_for(InputError("x")) == grpc.StatusCode.INVALID_ARGUMENT
    assert hook({"prompt": "hi", "max_tokens": 4}) is None  # the plan routes it
    with pytest.raises(InputError, match="^routing: no hosted expert fits these budgets"):
        hook({**req, "energy_budget_j": 1e-9})


def test_compose_hooks_first_non_none_wins() -> None:
    calls = []

    def a(req):
        calls.append("a")
        return "A" if req.get("routing") == "experts" else None

    def b(req):
        calls.append("b")
        return "B"

    hook = compose_hooks(a, None, b)
    assert hook({"routing": "experts"}) == "A" and calls == ["a"]
    assert hook({}) == "B" and calls == ["a", "a", "b"]
    assert compose_hooks(None, b) is b and compose_hooks(None, None) is None


def test_routing_values_and_expert_naming(hosted) -> None:
    assert check_routing("") == "plan" and check_routing(None) == "plan" and check_routing("experts") == "experts"
    with pytest.raises(InputError, match="^routing: expected one of plan, experts, got 'best'"):
        check_routing("best")
    routed = {"routing": "experts"}
    assert expert_of({"device_kind": "rtx4090"}, routed, hosted) == "smollm2-135m@rtx4090"
    assert expert_of({"device_kind": "l4"}, routed, hosted) == ""  # served elsewhere: no expert named
    assert expert_of({"device_kind": "rtx4090"}, {}, hosted) == ""
    assert expert_of({"device_kind": "rtx4090"}, routed, None) == ""
