"""solvers.routing (allocation plan -> the Router's routing plan) and the Router's plan matching and
weighted kind choice: pure, no Ray."""

from __future__ import annotations

import random

import pytest

from actors.routing import Replica, WeightedTurns, bucket_index, choose_replica, validate_plan
from actors.routing import NoReplicaError
from cluster.exceptions import InputError
from solvers.routing import routing_plan
from cluster.tables import paper_grid
from solvers.allocation import AllocationPlan

GRID = paper_grid()


def _plan(assignment, counts):
    return AllocationPlan(counts=counts, cost_per_hour=1.0, assignment=assignment, load_per_type={k: 0.0 for k in counts})


def test_first_matching_bucket_is_the_grids_bucket_of_every_request():
    rng = random.Random(0)
    assignment = {b: {"a": 1.0} for b in GRID.buckets()}
    plan = validate_plan(routing_plan(_plan(assignment, {"a": 1}), GRID.in_edges, GRID.out_edges))
    n_out = len(GRID.out_edges)
    assert len(plan["buckets"]) == len(GRID.in_edges) * n_out
    lengths = [1, 24, 25, 26, 99, 100, 101, 16000, 16001, 50000] + [rng.randint(1, 20000) for _ in range(200)]
    for p in lengths:
        for o in [1, 25, 26, 2000, 2001, 4096] + [rng.randint(1, 4096) for _ in range(5)]:
            i, j = GRID.bucket_of(p, o)
            assert bucket_index(plan, p, o) == i * n_out + j, (p, o)


def test_weights_are_the_assignment_and_unassigned_buckets_follow_the_fleet():
    assignment = {(0, 0): {"a": 0.75, "b": 0.25}, (3, 2): {"b": 1.0}}
    plan = routing_plan(_plan(assignment, {"a": 3, "b": 1, "c": 0}), GRID.in_edges, GRID.out_edges, source="t")
    n_out = len(GRID.out_edges)
    b00, b32 = plan["buckets"][0], plan["buckets"][3 * n_out + 2]
    assert b00 == {"kinds": ["a", "b"], "weights": {"a": 0.75, "b": 0.25}, "max_input_tokens": 25, "max_output_tokens": 25}
    assert b32["kinds"] == ["b"] and b32["weights"] == {"b": 1.0}
    other = plan["buckets"][1]
    assert other["weights"] == {"a": 0.75, "b": 0.25}  # counts 3:1, "c" (0 devices) left out
    last = plan["buckets"][-1]
    assert "max_input_tokens" not in last and "max_output_tokens" not in last
    assert plan["source"] == "t"


def test_the_to_json_form_gives_the_same_plan():
    p = _plan({(1, 4): {"x": 0.5, "y": 0.5}}, {"x": 1, "y": 2})
    via_json = routing_plan(p.to_json(), GRID.in_edges, GRID.out_edges)
    assert via_json == routing_plan(p, GRID.in_edges, GRID.out_edges)


@pytest.mark.parametrize("plan, needle", [
    (_plan({}, {"a": 0}), "provisions no device"),
    (_plan({(10, 0): {"a": 1.0}}, {"a": 1}), "outside the 10 x 6 grid"),
    (_plan({(0, 0): {"a": 1.5}}, {"a": 1}), "allowed: a fraction in (0, 1]"),
    ({"allocation": {"a": 1}}, "expected an AllocationPlan"),
    ({"allocation": {"a": 1}, "assignment": {"zero": {"a": 1.0}}}, "bucket key 'zero'"),
])
def test_bad_plans_are_refused_naming_the_problem(plan, needle):
    with pytest.raises(InputError) as info:
        routing_plan(plan, GRID.in_edges, GRID.out_edges)
    assert needle in str(info.value)


@pytest.mark.parametrize("bucket, field", [
    ({"kinds": ["a"], "weights": {"b": 1.0}}, "weights"),
    ({"kinds": ["a"], "weights": {"a": 0}}, "weights"),
    ({"kinds": ["a"], "max_input_tokens": 0}, "max_input_tokens"),
    ({"kinds": ["a"], "max_output_tokens": True}, "max_output_tokens"),
])
def test_router_plan_validation_names_the_field(bucket, field):
    with pytest.raises(InputError, match=rf"plan\.buckets\[0\]\.{field}"):
        validate_plan({"buckets": [bucket]})


@pytest.mark.parametrize("weights", [{"a": 0.75, "b": 0.25}, {"a": 1, "b": 2, "c": 5}, {"a": 0.125, "b": 0.875}])
def test_weighted_turns_give_each_kind_its_share_within_one_pick(weights):
    turns = WeightedTurns()
    kinds = sorted(weights)
    total = sum(weights.values())
    got = {k: 0 for k in kinds}
    for n in range(1, 161):
        got[turns.pick((1, 0), weights, kinds)] += 1
        for k in kinds:
            assert abs(got[k] - n * weights[k] / total) <= 1.0 + 1e-9, (n, got)


def _replicas(spec: list[tuple[str, int, int]]) -> list[Replica]:
    return [Replica(f"{k}-{i}", k, handle=None, capacity=c, active=a) for i, (k, c, a) in enumerate(spec)]


def test_choose_replica_takes_the_least_loaded_free_replica_of_the_buckets_kinds():
    reps = _replicas([("a", 2, 1), ("b", 2, 0), ("a", 4, 1), ("a", 2, 2)])
    choice = choose_replica(reps, {"kinds": ["a"]}, (0, 0), WeightedTurns(), 0)
    assert choice.replica is reps[2] and not choice.fallback  # 1/4 < 1/2; the full one is skipped
    # every replica of the kind full: no choice (the caller waits), never a replica of another kind
    full = _replicas([("a", 1, 1), ("b", 2, 0)])
    assert choose_replica(full, {"kinds": ["a"]}, (0, 0), WeightedTurns(), 0).replica is None


def test_choose_replica_falls_back_to_any_live_replica_and_refuses_when_none_lives():
    reps = _replicas([("a", 2, 0), ("b", 2, 0)])
    reps[0].alive = False
    choice = choose_replica(reps, {"kinds": ["a"]}, (0, 0), WeightedTurns(), 0)
    assert choice.replica is reps[1] and choice.fallback
    reps[1].alive = False
    with pytest.raises(NoReplicaError, match="no live replica"):
        choose_replica(reps, {"kinds": ["a"]}, (0, 0), WeightedTurns(), 0)


def test_choose_replica_ties_rotate_with_the_turn():
    reps = _replicas([("a", 2, 0), ("a", 2, 0), ("a", 2, 0)])
    picks = [choose_replica(reps, {"kinds": ["a"]}, (0, 0), WeightedTurns(), t).replica for t in range(6)]
    assert picks == reps + reps


def test_choose_replica_with_weights_gives_each_kind_its_share():
    reps = _replicas([("a", 100, 0), ("b", 100, 0)])
    turns = WeightedTurns()
    bucket = {"kinds": ["a", "b"], "weights": {"a": 3.0, "b": 1.0}}
    kinds = [choose_replica(reps, bucket, (1, 0), turns, t).replica.kind for t in range(40)]
    assert kinds.count("a") == 30 and kinds.count("b") == 10
    # a kind with no free replica drops out of the turn: the other takes everything
    reps[0].active = 100
    assert {choose_replica(reps, bucket, (1, 0), turns, t).replica.kind for t in range(5)} == {"b"}
