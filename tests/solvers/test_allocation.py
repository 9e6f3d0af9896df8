"""The device-mix ILP (solvers/allocation.py) and Mélange's input format (solvers/melange_format.py).

Exact answers: the Mélange toy config, hand-solved cases for masks, caps, power, headroom and
TTFT, and a brute force over every slice-to-type assignment on random small instances.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from solvers.allocation import (
    LOAD_TOLERANCE,
    AllocationProblem,
    DeviceType,
    Workload,
    single_type_count,
    solve,
)
from solvers.allocation import model as alloc_model
from solvers.allocation import optimize as alloc_solve
from solvers.exceptions import (
    AllocationInputError,
    InfeasibleError,
    MelangeFormatError,
    SolveIncompleteError,
    SolverUnavailableError,
)
from solvers.melange_format import parse_melange_config

# Mélange's own example input (provenance in examples/README.md); optimum 3 x A10G + 1 x A100-80GB = $6.70/h.
MELANGE_TOY = json.loads((Path(__file__).parents[2] / "examples" / "melange_config.json").read_text())


def one_bucket(*types: DeviceType, rate: float, slice_factor: int = 1, **kw) -> AllocationProblem:
    return AllocationProblem(types, Workload(((1.0,),), rate), slice_factor=slice_factor, **kw)


# ------------------------------------------------------------------------------ Mélange toy
@pytest.mark.parametrize("formulation", alloc_model.FORMULATIONS)
def test_melange_toy_config_optimum(formulation):
    plan = solve(parse_melange_config(MELANGE_TOY), formulation=formulation)
    assert plan.counts == {"A10G": 3, "A100-80GB": 1}
    assert plan.cost_per_hour == pytest.approx(6.70, abs=1e-9)
    assert plan.status == "Optimal" and plan.solver == "cbc"
    # Alone: A10G needs 3+3+3+3 = 12 devices, A100 needs 0.3+0.15+0.375+0.3 -> 2.
    assert plan.baselines == pytest.approx({"A10G": 12 * 1.01, "A100-80GB": 2 * 3.67})
    assert plan.savings_vs["A100-80GB"] == pytest.approx((7.34 - 6.70) / 7.34)
    # Every bucket wholly placed; the A10G load is exactly one 3-device bucket.
    assert set(plan.assignment) == {(0, 0), (0, 1), (1, 0), (1, 1)}
    for shares in plan.assignment.values():
        assert sum(shares.values()) == pytest.approx(1.0)
    assert plan.load_per_type["A10G"] == pytest.approx(3.0)
    assert plan.to_json()["allocation"] == {"A10G": 3, "A100-80GB": 1}


def test_melange_parse_keeps_names_and_numbers():
    problem = parse_melange_config(MELANGE_TOY)
    assert problem.type_names == ("A10G", "A100-80GB")
    assert problem.device_types[1].max_rate == ((20.0, 20.0), (40.0, 20.0))
    assert problem.device_types[0].price_per_hour == 1.01
    assert problem.workload.total_rate == 30.0 and problem.slice_factor == 1


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda c: c["gpu_info"]["A10G"].update(tputs=[[2, 1], [5, 2, 3]]),
         "gpu_info.A10G.tputs[1]: expected 2 numbers, got 3"),
        (lambda c: c["gpu_info"]["A10G"].update(tputs=[[2, 1]]),
         "gpu_info.A10G.tputs: expected 2 rows"),
        (lambda c: c["gpu_info"]["A10G"].update(tputs=[[2, -1], [5, 2]]),
         "gpu_info.A10G.tputs[0][1]: expected a finite number >= 0"),
        (lambda c: c["gpu_info"]["A100-80GB"].update(cost="3.67"), "gpu_info.A100-80GB.cost"),
        (lambda c: c["gpu_info"]["A10G"].pop("cost"), "gpu_info.A10G: missing key 'cost'"),
        (lambda c: c.update(slice_factr=c.pop("slice_factor")), "did you mean 'slice_factor'"),
        (lambda c: c.update(slice_factor=0), "slice_factor: expected an integer >= 1, got 0"),
        (lambda c: c.update(total_request_rate=-1), "total_request_rate: expected a finite"),
        (lambda c: c.update(workload_distribution=[[0.2, 0.1], [0.5, 0.1]]),
         "workload_distribution: Workload.histogram sums to 0.9"),
        (lambda c: c.update(workload_distribution=[[0.2, -0.1], [0.7, 0.2]]),
         "workload_distribution[0][1]"),
        (lambda c: c.update(gpu_info={}), "gpu_info: expected a non-empty object"),
    ],
)
def test_melange_format_errors_name_the_json_path(mutate, message):
    config = copy.deepcopy(MELANGE_TOY)
    mutate(config)
    with pytest.raises(MelangeFormatError) as err:
        parse_melange_config(config)
    assert message in str(err.value)
    assert isinstance(err.value, ValueError)


# ------------------------------------------------------------------------------ brute force
def brute_force(problem: AllocationProblem) -> float | None:
    """Min cost over every slice->type assignment with counts ceil(load); None if infeasible."""
    types = problem.device_types
    hist = problem.workload.histogram
    factor = problem.slice_factor
    slices = []  # per slice: {type index: devices it occupies}
    for i, row in enumerate(hist):
        for j, w in enumerate(row):
            if w <= 0:
                continue
            r = problem.workload.total_rate * w / factor
            options = {}
            for t, dev in enumerate(types):
                rates = [dev.max_rate[i][j]]
                if dev.ttft_max_rate is not None:
                    rates.append(dev.ttft_max_rate[i][j])
                if all(v is not None and v > 0 for v in rates):
                    options[t] = r * (1 + problem.headroom) / min(rates)
            slices.extend([options] * factor)
    best = None
    for choice in itertools.product(*[list(o) for o in slices]):
        loads = [0.0] * len(types)
        for options, t in zip(slices, choice):
            loads[t] += options[t]
        counts = [max(0, math.ceil(v - LOAD_TOLERANCE)) for v in loads]
        if any(d.max_count is not None and n > d.max_count for d, n in zip(types, counts)):
            continue
        if problem.power_budget_w is not None and sum(
            d.power_w * n for d, n in zip(types, counts)
        ) > problem.power_budget_w + 1e-9:
            continue
        cost = sum(d.price_per_hour * n for d, n in zip(types, counts))
        best = cost if best is None else min(best, cost)
    return best


@st.composite
def small_problems(draw):
    shape = draw(st.sampled_from([(1, 1), (1, 2), (2, 1), (1, 3), (3, 1)]))
    n_types = draw(st.integers(1, 3))
    cells = shape[0] * shape[1]
    weights = draw(st.lists(st.integers(0, 4), min_size=cells, max_size=cells).filter(any))
    total = sum(weights)
    hist = tuple(
        tuple(weights[i * shape[1] + j] / total for j in range(shape[1])) for i in range(shape[0])
    )
    entry = st.sampled_from([0, 0, None, 1, 2, 3, 5, 8, 10])
    table = st.lists(entry, min_size=cells, max_size=cells).map(
        lambda v: tuple(tuple(v[i * shape[1]:(i + 1) * shape[1]]) for i in range(shape[0]))
    )
    power = draw(st.booleans())
    types = tuple(
        DeviceType(
            name=f"t{k}",
            price_per_hour=draw(st.sampled_from([0.5, 1.0, 1.5, 2.5, 4.0])),
            max_rate=draw(table),
            power_w=draw(st.sampled_from([100, 250, 400])) if power else None,
            max_count=draw(st.one_of(st.none(), st.integers(0, 6))),
            ttft_max_rate=draw(st.one_of(st.none(), table)),
        )
        for k in range(n_types)
    )
    return AllocationProblem(
        types,
        Workload(hist, float(draw(st.integers(1, 24)))),
        slice_factor=draw(st.integers(1, 2)),
        headroom=draw(st.sampled_from([0.0, 0.25])),
        power_budget_w=float(draw(st.integers(0, 3000))) if power else None,
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_problems())
def test_ilp_equals_brute_force(problem):
    expected = brute_force(problem)
    for formulation in alloc_model.FORMULATIONS:
        if expected is None:
            with pytest.raises(InfeasibleError, match=r"infeasible: .*instance: \d+ slices x \d"):
                solve(problem, formulation=formulation)
            continue
        plan = solve(problem, formulation=formulation)
        assert plan.cost_per_hour == pytest.approx(expected, abs=1e-6)
        types = {d.name: d for d in problem.device_types}
        assert plan.cost_per_hour == pytest.approx(
            sum(types[t].price_per_hour * n for t, n in plan.counts.items())
        )
        for name, n in plan.counts.items():
            d = types[name]
            assert n >= math.ceil(plan.load_per_type[name] - LOAD_TOLERANCE)
            assert d.max_count is None or n <= d.max_count
        if problem.power_budget_w is not None:
            assert sum(types[t].power_w * n for t, n in plan.counts.items()) <= (
                problem.power_budget_w + 1e-9
            )
        for (i, j), shares in plan.assignment.items():
            assert sum(shares.values()) == pytest.approx(1.0)
            for name in shares:  # a type that cannot serve a bucket never gets it
                assert types[name].rate((i, j)) is not None


# ------------------------------------------------------------------------------ baselines
def closed_form_baseline(problem: AllocationProblem, dev: DeviceType) -> float | None:
    load = 0.0
    for i, row in enumerate(problem.workload.histogram):
        for j, w in enumerate(row):
            if w > 0:
                mu = dev.rate((i, j))
                if mu is None:
                    return None
                load += problem.workload.total_rate * (1 + problem.headroom) * w / mu
    n = math.ceil(load - LOAD_TOLERANCE)
    if dev.max_count is not None and n > dev.max_count:
        return None
    if problem.power_budget_w is not None and n * dev.power_w > problem.power_budget_w:
        return None
    return n * dev.price_per_hour


@settings(max_examples=30, deadline=None)
@given(small_problems())
def test_single_type_baselines_are_ceil_of_summed_load_and_match_the_ilp(problem):
    try:
        plan = solve(problem)
    except InfeasibleError:
        plan = None
    for dev in problem.device_types:
        expected = closed_form_baseline(problem, dev)
        if plan is not None:
            assert plan.baselines[dev.name] == (
                None if expected is None else pytest.approx(expected, abs=1e-9)
            )
            if expected is not None:  # the mix is never worse than any single type
                assert plan.cost_per_hour <= expected + 1e-9
        # The same ILP restricted to this one type, solved by CBC without the fast path.
        alone = AllocationProblem(
            (dev,), problem.workload, problem.slice_factor, problem.headroom,
            problem.power_budget_w,
        )
        if expected is None:
            assert single_type_count(alone, dev.name) is None
            with pytest.raises(InfeasibleError):
                alloc_solve.solve_ilp(alloc_model.Instance.of(alone), "cbc", None)
        else:
            ilp = alloc_solve.solve_ilp(alloc_model.Instance.of(alone), "cbc", None)
            assert ilp.cost_per_hour == pytest.approx(expected, abs=1e-9)
            fast = solve(alone)
            assert fast.solver == "closed-form"
            assert fast.counts == ilp.counts


def test_seeded_random_baselines_and_savings():
    rng = random.Random(7)
    shape = (3, 2)
    for _ in range(5):
        types = tuple(
            DeviceType(f"g{k}", rng.choice([0.7, 1.01, 3.67]),
                       tuple(tuple(rng.uniform(0.5, 20) for _ in range(2)) for _ in range(3)))
            for k in range(3)
        )
        raw = [[rng.random() for _ in range(shape[1])] for _ in range(shape[0])]
        s = sum(map(sum, raw))
        problem = AllocationProblem(
            types, Workload(tuple(tuple(v / s for v in r) for r in raw), rng.uniform(1, 40)), 4
        )
        plan = solve(problem)
        for dev in types:
            base = closed_form_baseline(problem, dev)
            assert plan.baselines[dev.name] == pytest.approx(base)
            assert plan.savings_vs[dev.name] == pytest.approx((base - plan.cost_per_hour) / base)
            assert plan.savings_vs[dev.name] >= -1e-12


# ------------------------------------------------------------------------------ extensions
CHEAP = DeviceType("cheap", 1.0, ((10.0,),), power_w=300)
DEAR = DeviceType("dear", 3.0, ((10.0,),), power_w=100)


def test_mask_keeps_a_type_off_a_bucket_it_cannot_serve():
    small = DeviceType("small", 1.0, ((10.0, 0.0),))  # cannot serve bucket (0, 1)
    big = DeviceType("big", 5.0, ((10.0, 10.0),))
    work = Workload(((0.5, 0.5),), 20.0)
    plan = solve(AllocationProblem((small, big), work, slice_factor=4))
    assert "small" not in plan.assignment[(0, 1)]
    assert plan.assignment[(0, 1)] == {"big": 1.0}
    assert plan.counts == {"small": 1, "big": 1}  # 10 req/s on small, 10 req/s on big
    assert plan.baselines["small"] is None and plan.savings_vs["small"] is None
    # Without the mask, small would take everything: 2 devices, $2/h.
    unmasked = DeviceType("small", 1.0, ((10.0, 10.0),))
    assert solve(AllocationProblem((unmasked, big), work, 4)).cost_per_hour == pytest.approx(2.0)


def test_cap_on_the_cheapest_forces_a_costlier_mix():
    assert solve(one_bucket(CHEAP, DEAR, rate=25, slice_factor=5)).counts == {"cheap": 3, "dear": 0}
    capped = DeviceType("cheap", 1.0, ((10.0,),), max_count=2)
    plan = solve(one_bucket(capped, DEAR, rate=25, slice_factor=5))
    # 4 slices of 5 req/s fill the 2 cheap devices; the 5th needs a dear one.
    assert plan.counts == {"cheap": 2, "dear": 1}
    assert plan.cost_per_hour == pytest.approx(5.0)
    assert plan.baselines["cheap"] is None


def test_power_budget_changes_the_answer_and_names_the_cause_when_too_tight():
    def cost(budget):
        return solve(one_bucket(CHEAP, DEAR, rate=25, slice_factor=5, power_budget_w=budget))

    assert cost(None).counts == {"cheap": 3, "dear": 0}  # 900 W
    assert cost(700).counts == {"cheap": 2, "dear": 1}  # 700 W, $5
    assert cost(500).counts == {"cheap": 1, "dear": 2}  # 500 W, $7
    plan = cost(300)
    assert plan.counts == {"cheap": 0, "dear": 3} and plan.cost_per_hour == pytest.approx(9.0)
    # 250 W passes the fractional bound (5 slices x 0.5 dear x 100 W) but no integer mix fits.
    with pytest.raises(InfeasibleError, match=r"power budget too tight.*300 W.*instance: 5 slices x 2"):
        cost(250)
    with pytest.raises(InfeasibleError, match=r"power budget too tight.*at least 250 W"):
        cost(200)


def test_headroom_scales_the_load():
    single = DeviceType("g", 2.0, ((10.0,),))
    assert solve(one_bucket(single, rate=20)).counts == {"g": 2}
    plan = solve(one_bucket(single, rate=20, headroom=0.25))
    assert plan.counts == {"g": 3} and plan.load_per_type["g"] == pytest.approx(2.5)
    mix = solve(one_bucket(CHEAP, DEAR, rate=20, slice_factor=4, headroom=0.5))
    assert sum(mix.load_per_type.values()) == pytest.approx(3.0)
    assert mix.counts == {"cheap": 3, "dear": 0}


def test_ttft_table_binds_and_masks():
    tight = DeviceType("g", 1.0, ((10.0, 10.0),), ttft_max_rate=((5.0, 20.0),))
    work = Workload(((0.5, 0.5),), 20.0)
    plan = solve(AllocationProblem((tight,), work, 1))
    # bucket (0,0): 10 req/s at min(10, 5) = 5 -> 2 devices; (0,1): 10 at min(10, 20) -> 1.
    assert plan.load_per_type["g"] == pytest.approx(3.0)
    masked = DeviceType("m", 0.1, ((10.0, 10.0),), ttft_max_rate=((10.0, 0.0),))
    big = DeviceType("big", 2.0, ((10.0, 10.0),))
    plan = solve(AllocationProblem((masked, big), work, 2))
    assert plan.assignment[(0, 1)] == {"big": 1.0} and plan.counts == {"m": 1, "big": 1}
    with pytest.raises(InfeasibleError, match=r"bucket \(0, 1\).*ttft_max_rate\[0\]\[1\] = 0.0"):
        solve(AllocationProblem((masked,), work, 2))


def test_zero_rate_is_an_empty_plan():
    plan = solve(one_bucket(CHEAP, DEAR, rate=0))
    assert plan.counts == {"cheap": 0, "dear": 0} and plan.cost_per_hour == 0
    assert plan.assignment == {} and plan.baselines == {"cheap": 0.0, "dear": 0.0}


def test_zero_weight_bucket_needs_no_server():
    small = DeviceType("small", 1.0, ((10.0, 0.0),))
    plan = solve(AllocationProblem((small,), Workload(((1.0, 0.0),), 10.0), 2))
    assert plan.counts == {"small": 1} and set(plan.assignment) == {(0, 0)}


# ------------------------------------------------------------------------------ infeasible
def test_uncovered_bucket_names_bucket_and_types():
    a = DeviceType("a", 1.0, ((1.0,), (None,)))
    b = DeviceType("b", 2.0, ((1.0,), (0.0,)))
    with pytest.raises(InfeasibleError) as err:
        solve(AllocationProblem((a, b), Workload(((0.5,), (0.5,)), 4.0), 8))
    msg = str(err.value)
    assert "bucket (1, 0)" in msg and "['a', 'b']" in msg
    assert "a: max_rate[1][0] = None" in msg and "b: max_rate[1][0] = 0.0" in msg
    assert "instance: 16 slices x 2 types" in msg


def test_caps_too_low_by_bound_and_by_integrality():
    a = DeviceType("a", 1.0, ((10.0,),), max_count=1)
    b = DeviceType("b", 2.0, ((10.0,),), max_count=1)
    with pytest.raises(InfeasibleError, match=r"caps too low.*at least 3 devices.*allow 2"):
        solve(one_bucket(a, b, rate=30, slice_factor=4))
    # 15 req/s fits 2 devices fractionally, but one indivisible slice needs 2 of one type.
    with pytest.raises(InfeasibleError, match=r"caps too low: no assignment.*a <= 1, b <= 1"):
        solve(one_bucket(a, b, rate=15, slice_factor=1))
    with pytest.raises(InfeasibleError, match=r"caps too low.*at least 1.5 devices.*allow 1 in"):
        solve(one_bucket(a, rate=15))
    # One type (closed form): 2.5 devices fit 800 W fractionally (750 W) but 3 x 300 W do not.
    with pytest.raises(InfeasibleError, match=r"power budget too tight: 3 x cheap draw 900 W"):
        solve(one_bucket(CHEAP, rate=25, power_budget_w=800))


# ------------------------------------------------------------------------------ validation
def test_workload_validation():
    with pytest.raises(AllocationInputError, match=r"bucket \(0, 1\)\) = -0.1"):
        Workload(((0.6, -0.1, 0.5),), 1.0)
    with pytest.raises(AllocationInputError, match=r"sums to 0.9.*must sum to 1"):
        Workload(((0.4, 0.5),), 1.0)
    Workload(((0.4, 0.6 + 5e-7),), 1.0)  # within 1e-6
    with pytest.raises(AllocationInputError, match=r"total_rate = -2.0 req/s"):
        Workload(((1.0,),), -2.0)
    with pytest.raises(AllocationInputError, match=r"expected 2 entries"):
        Workload(((0.5, 0.5), (0.0,)), 1.0)


def test_problem_and_device_validation():
    work = Workload(((0.5, 0.5),), 1.0)
    with pytest.raises(AllocationInputError) as err:
        AllocationProblem((DeviceType("x", 1.0, ((1.0,), (1.0,))),), work)
    assert "'x'" in str(err.value) and "(2, 1)" in str(err.value) and "(1, 2)" in str(err.value)
    with pytest.raises(AllocationInputError, match=r"ttft_max_rate has shape \(1, 1\).*\(1, 2\)"):
        DeviceType("y", 1.0, ((1.0, 1.0),), ttft_max_rate=((1.0,),))
    with pytest.raises(AllocationInputError, match=r"max_rate\[0\]\[1\] = -1.0"):
        DeviceType("y", 1.0, ((1.0, -1.0),))
    with pytest.raises(AllocationInputError, match=r"price_per_hour = -1"):
        DeviceType("y", -1, ((1.0,),))
    with pytest.raises(AllocationInputError, match=r"max_count = 1.5"):
        DeviceType("y", 1, ((1.0,),), max_count=1.5)
    g = DeviceType("g", 1.0, ((1.0, 1.0),))
    with pytest.raises(AllocationInputError, match=r"duplicate name 'g'"):
        AllocationProblem((g, g), work)
    with pytest.raises(AllocationInputError, match=r"slice_factor = 0; allowed: an integer >= 1"):
        AllocationProblem((g,), work, slice_factor=0)
    with pytest.raises(AllocationInputError, match=r"headroom = -0.1"):
        AllocationProblem((g,), work, headroom=-0.1)
    with pytest.raises(AllocationInputError, match=r"needs power_w.*\['g'\]"):
        AllocationProblem((g,), work, power_budget_w=100.0)
    # Tables are normalised to tuples, so the value object stays immutable and hashable.
    assert DeviceType("l", 1, [[1, None]]).max_rate == ((1.0, None),)


def test_solver_choice_errors():
    problem = one_bucket(CHEAP, DEAR, rate=25, slice_factor=5)
    with pytest.raises(SolverUnavailableError, match=r"allowed values: \['cbc', 'highs'\].*'cbc'"):
        solve(problem, solver="cbcc")
    with pytest.raises(AllocationInputError, match=r"formulation = 'dense'"):
        solve(problem, formulation="dense")
    with pytest.raises(AllocationInputError, match=r"time_limit_s = -1"):
        solve(problem, time_limit_s=-1)
    import pulp

    available = pulp.listSolvers(onlyAvailable=True)
    if any("HiGHS" in name for name in available):
        assert solve(problem, solver="highs").cost_per_hour == pytest.approx(3.0)
    else:
        with pytest.raises(SolverUnavailableError, match=r"available PuLP solvers: .*PULP_CBC_CMD"):
            solve(problem, solver="highs")


def test_a_non_integral_solver_answer_is_a_solver_answer_error_not_a_time_limit():
    from solvers.allocation.ilp import integral
    from solvers.exceptions import SolveIncompleteError, SolverAnswerError

    assert integral(3.0000000001, "n_0") == 3
    with pytest.raises(SolverAnswerError, match="n_0 = 2.5") as info:
        integral(2.5, "n_0")
    assert isinstance(info.value, SolveIncompleteError)  # callers that catch the parent still do


@pytest.mark.parametrize("seed", [1, 6])
def test_a_time_limited_solve_returns_its_incumbent_with_a_valid_gap(seed):
    """With accept_incumbent, a time limit that stops the solver early gives the best mix found
    so far, marked Feasible, with a gap against the LP bound that brackets the true optimum."""
    import sys

    sys.path.insert(0, str(Path(__file__).parents[2] / "bench"))
    from bench_allocation import instance

    problem = instance(16, seed, [1, 2, 4, 8, 16, 32][seed % 6])
    optimum = solve(problem, baselines=False).cost_per_hour
    try:
        plan = solve(problem, time_limit_s=0.3, baselines=False, accept_incumbent=True)
    except SolveIncompleteError:  # stopped before any feasible mix: nothing to return
        return
    assert plan.status in ("Optimal", "Feasible")
    assert plan.cost_per_hour >= optimum - 1e-6
    assert 0.0 <= plan.gap < 1.0
    assert plan.cost_per_hour * (1 - plan.gap) <= optimum + 1e-6  # the bound is a lower bound
    if plan.status == "Optimal":
        assert plan.gap == 0.0 and plan.cost_per_hour == pytest.approx(optimum)
    with pytest.raises(SolveIncompleteError):  # without it, a limit hit is still an error
        solve(problem, time_limit_s=0.01, baselines=False)
