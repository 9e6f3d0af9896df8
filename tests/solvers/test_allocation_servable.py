"""Planning for the servable mass: the split against an independent brute force on small instances.

The plan of the split problem must cost what an exhaustive search over every slice-to-type
assignment of the *servable* buckets costs, each bucket at its original absolute rate R w_b; the
left-out buckets must be exactly those of positive weight that no type (uncapped at 0) serves.
"""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from solvers.allocation import (
    LOAD_TOLERANCE,
    AllocationProblem,
    DeviceType,
    Workload,
    refuse_unservable,
    servable_split,
    solve,
)
from solvers.exceptions import InfeasibleError


def _ok(dev: DeviceType, i: int, j: int) -> bool:
    rates = [dev.max_rate[i][j]] + ([dev.ttft_max_rate[i][j]] if dev.ttft_max_rate is not None else [])
    return dev.max_count != 0 and all(v is not None and not math.isnan(v) and v > 0 for v in rates)


def brute_force_servable(problem: AllocationProblem) -> tuple[float | None, set, float]:
    """(min cost over the servable buckets or None, the left-out buckets, their rate R u)."""
    types, hist, factor = problem.device_types, problem.workload.histogram, problem.slice_factor
    slices, left, left_rate = [], set(), 0.0
    for i, row in enumerate(hist):
        for j, w in enumerate(row):
            if w <= 0:
                continue
            r = problem.workload.total_rate * w / factor
            options = {}
            for t, dev in enumerate(types):
                if _ok(dev, i, j):
                    rates = [dev.max_rate[i][j]] + ([dev.ttft_max_rate[i][j]] if dev.ttft_max_rate else [])
                    options[t] = r * (1 + problem.headroom) / min(rates)
            if not options:
                left.add((i, j))
                left_rate += problem.workload.total_rate * w
                continue
            slices.extend([options] * factor)
    best = None
    for choice in itertools.product(*[list(o) for o in slices]):
        loads = [0.0] * len(types)
        for options, t in zip(slices, choice):
            loads[t] += options[t]
        counts = [max(0, math.ceil(v - LOAD_TOLERANCE)) for v in loads]
        if any(d.max_count is not None and n > d.max_count for d, n in zip(types, counts)):
            continue
        cost = sum(d.price_per_hour * n for d, n in zip(types, counts))
        best = cost if best is None else min(best, cost)
    return best, left, left_rate


@st.composite
def problems_with_holes(draw):
    shape = draw(st.sampled_from([(1, 2), (2, 1), (2, 2), (1, 3)]))
    cells = shape[0] * shape[1]
    weights = draw(st.lists(st.integers(0, 5), min_size=cells, max_size=cells).filter(any))
    total = sum(weights)
    hist = tuple(tuple(weights[i * shape[1] + j] / total for j in range(shape[1])) for i in range(shape[0]))
    entry = st.sampled_from([0, None, 0, 1, 2, 4, 7])  # many holes: buckets nobody serves are common
    table = st.lists(entry, min_size=cells, max_size=cells).map(
        lambda v: tuple(tuple(v[i * shape[1]:(i + 1) * shape[1]]) for i in range(shape[0])))
    types = tuple(
        DeviceType(f"t{k}", draw(st.sampled_from([0.5, 1.0, 2.5])), draw(table),
                   max_count=draw(st.sampled_from([None, None, 0, 3])),
                   ttft_max_rate=draw(st.one_of(st.none(), table)))
        for k in range(draw(st.integers(1, 3))))
    return AllocationProblem(types, Workload(hist, float(draw(st.integers(1, 12)))),
                             slice_factor=draw(st.integers(1, 2)), headroom=draw(st.sampled_from([0.0, 0.5])))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems_with_holes())
def test_plan_of_the_servable_split_equals_brute_force_over_servable_buckets(problem):
    expected, left, left_rate = brute_force_servable(problem)
    if not left or len(left) == sum(w > 0 for row in problem.workload.histogram for w in row):
        # nothing left out: the split is the problem itself; everything left out: refused
        if not left:
            assert servable_split(problem).problem is problem
        else:
            with pytest.raises(InfeasibleError, match="infeasible"):
                servable_split(problem)
        return
    split = servable_split(problem)
    assert {b for b, _ in split.unservable} == left
    assert split.unservable_rate == pytest.approx(left_rate)
    # every servable bucket keeps its absolute rate R w_b; the left-out ones carry none
    new = split.problem.workload
    for i, row in enumerate(problem.workload.histogram):
        for j, w in enumerate(row):
            want = 0.0 if (i, j) in left else problem.workload.total_rate * w
            assert new.total_rate * new.histogram[i][j] == pytest.approx(want)
    if expected is None:
        with pytest.raises(InfeasibleError):
            solve(split.problem)
        return
    plan = solve(split.problem)
    assert plan.cost_per_hour == pytest.approx(expected, abs=1e-6)
    assert not set(plan.assignment) & left
    with pytest.raises(InfeasibleError) as err:  # strict: the same split is refused, naming buckets
        refuse_unservable(split)
    assert f"{len(left)} bucket(s)" in str(err.value) and str(sorted(left)[0]) in str(err.value)


def _two_buckets(**b_kw) -> AllocationProblem:
    a = DeviceType("a", 1.0, ((2.0, None),))  # a serves only bucket (0, 0)
    b = DeviceType("b", 3.0, ((1.0, 1.0),), **b_kw)  # b serves both
    return AllocationProblem((a, b), Workload(((0.75, 0.25),), 8.0), slice_factor=1)


def test_a_bucket_only_an_excluded_or_zero_capped_kind_serves_is_left_out_not_renormalised():
    full = solve(_two_buckets())
    assert full.counts == {"a": 3, "b": 2}  # 6/2 -> 3 a for (0,0); 2/1 -> 2 b for (0,1)
    for excluded in (AllocationProblem(_two_buckets().device_types[:1], _two_buckets().workload, 1),
                     _two_buckets(max_count=0)):
        split = servable_split(excluded)
        assert split.unservable == (((0, 1), 0.25),) and split.unservable_mass == 0.25
        assert split.unservable_rate == pytest.approx(2.0)
        plan = solve(split.problem)
        # the kept bucket is planned at its own 6 req/s (3 a), not renormalised to 8 req/s (4 a)
        assert plan.counts["a"] == 3 and plan.cost_per_hour == pytest.approx(3.0)


def test_strict_names_buckets_and_mass_and_nothing_servable_is_always_refused():
    split = servable_split(AllocationProblem(_two_buckets().device_types[:1], _two_buckets().workload, 1))
    with pytest.raises(InfeasibleError, match=r"1 bucket\(s\) of total mass 0.25 .*\(\['a'\]\): big \(mass 0.25\)"):
        refuse_unservable(split, {(0, 1): "big"})
    refuse_unservable(servable_split(_two_buckets()))  # nothing left out: no error
    nobody = AllocationProblem((DeviceType("a", 1.0, ((None, 0.0),)),), Workload(((0.5, 0.5),), 1.0), 1)
    with pytest.raises(InfeasibleError, match=r"bucket \(0, 0\) .* no allowed type can serve it"):
        servable_split(nobody)
