"""solvers.selection: monotonic == exhaustive on random monotone instances, greedy <= optimum,
errors that name the field, and the monotonicity check."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from solvers.selection import (
    SelectionInputError,
    SelectionProblem,
    best_single,
    gate_objective,
    make_objective,
    mask_of,
    members,
    monotonicity_violations,
    oracle_objective,
    random_maximal,
    solve,
    solve_exhaustive,
    solve_greedy,
    solve_monotonic,
)


def brute_force(problem: SelectionProblem, f) -> float:
    """Independent reference: every subset, feasibility recomputed from the definition."""
    budget = dict(problem.latency_budget)
    best = 0.0
    for mask in range(1 << problem.n):
        idx = members(mask)
        if problem.energy_budget is not None and sum(problem.energy[i] for i in idx) > problem.energy_budget + 1e-12:
            continue
        ok = True
        for c, cat in enumerate(problem.categories):
            if idx and cat in budget and max(problem.latency[c][i] for i in idx) + problem.aggregation > budget[cat] + 1e-12:
                ok = False
        if ok:
            best = max(best, f(mask))
    return best


@st.composite
def instances(draw, max_n: int = 14, kind: str = "both"):
    n = draw(st.integers(1, max_n))
    q = draw(st.integers(1, 25))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    binary = draw(st.booleans())
    scores = (rng.random((q, n)) < rng.uniform(0.1, 0.7, n)).astype(float) if binary else rng.random((q, n))
    energy = tuple(float(x) for x in rng.uniform(0.1, 10, n))
    cats = ("math", "chat")
    latency = tuple(tuple(float(x) for x in rng.uniform(50, 1000, n)) for _ in cats)
    e_budget = None
    l_budget: tuple = ()
    if kind in ("energy", "both"):
        e_budget = float(sum(energy) * draw(st.floats(0.0, 1.0)))
    if kind in ("latency", "both"):
        l_budget = (("math", float(draw(st.floats(40, 1100)))),)
        if draw(st.booleans()):
            l_budget += (("chat", float(draw(st.floats(40, 1100)))),)
    agg = float(draw(st.sampled_from([0.0, 20.0])))
    p = SelectionProblem(names=tuple(f"e{i}" for i in range(n)), energy=energy, categories=cats, latency=latency,
                         energy_budget=e_budget, latency_budget=l_budget, aggregation=agg)
    return p, scores


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("kind", ["energy", "latency", "both"])
def test_monotonic_equals_exhaustive_on_random_monotone_instances(kind: str) -> None:
    @SETTINGS
    @given(instances(kind=kind))
    def check(inst) -> None:
        p, scores = inst
        f = oracle_objective(scores)
        mono, exh, greedy = solve_monotonic(p, f), solve_exhaustive(p, f), solve_greedy(p, f)
        assert mono.objective_value == pytest.approx(exh.objective_value, abs=1e-12)
        assert greedy.objective_value <= exh.objective_value + 1e-12
        for r in (mono, exh, greedy):
            assert p.feasible(mask_of(r.selected))
            assert r.objective_value == pytest.approx(f(mask_of(r.selected)), abs=1e-12)
        if p.n <= 10:
            assert exh.objective_value == pytest.approx(brute_force(p, f), abs=1e-12)

    check()


@SETTINGS
@given(instances(max_n=12), st.integers(0, 2**31 - 1))
def test_monotonic_exact_for_non_submodular_monotone_objective(inst, seed: int) -> None:
    """A monotone but supermodular f (a square of a coverage, plus a bonus for pairs)."""
    p, _ = inst
    rng = np.random.default_rng(seed)
    w = rng.random(p.n)
    pairs = rng.random((p.n, p.n))

    def f(mask: int) -> float:
        idx = members(mask)
        return float(sum(w[i] for i in idx) ** 2 + sum(pairs[i, j] for i in idx for j in idx if i < j))

    assert solve_monotonic(p, f).objective_value == pytest.approx(solve_exhaustive(p, f).objective_value, rel=1e-12)


def test_monotonic_evaluates_far_fewer_than_exhaustive_on_larger_instances() -> None:
    rng = np.random.default_rng(7)
    n, q = 16, 400
    scores = (rng.random((q, n)) < rng.uniform(0.2, 0.6, n)).astype(float)
    energy = tuple(float(x) for x in rng.uniform(1, 10, n))
    p = SelectionProblem(names=tuple(f"e{i}" for i in range(n)), energy=energy, energy_budget=sum(energy) * 0.4)
    f = oracle_objective(scores)
    mono, exh = solve_monotonic(p, f), solve_exhaustive(p, f)
    assert mono.objective_value == pytest.approx(exh.objective_value)
    assert mono.evaluations * 20 < exh.evaluations


def test_infeasible_budgets_give_the_empty_set() -> None:
    p = SelectionProblem(names=("a", "b"), energy=(5.0, 6.0), categories=("math",), latency=((100.0, 200.0),),
                         energy_budget=4.0)
    f = oracle_objective([[1.0, 0.0], [0.0, 1.0]])
    for method in ("monotonic", "exhaustive", "greedy"):
        r = solve(p, f, method)
        assert r.empty and r.selected == () and r.objective_value == 0.0 and r.energy == 0.0
        assert dict(r.latency) == {"math": 0.0}


def test_budgets_used_are_reported() -> None:
    p = SelectionProblem(names=("a", "b", "c"), energy=(1.0, 2.0, 4.0), categories=("math", "chat"),
                         latency=((100.0, 300.0, 50.0), (10.0, 20.0, 30.0)), energy_budget=3.5,
                         latency_budget=(("math", 400.0),), aggregation=5.0)
    f = oracle_objective([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    r = solve(p, f, "monotonic")
    assert r.names == ("a", "b") and r.objective_value == pytest.approx(2 / 3)
    assert r.energy == pytest.approx(3.0)
    assert dict(r.latency) == {"math": 305.0, "chat": 25.0}
    assert r.to_dict()["selected"] == ["a", "b"]


def test_latency_budget_filters_experts_including_aggregation() -> None:
    p = SelectionProblem(names=("a", "b"), energy=(1.0, 1.0), categories=("math",), latency=((100.0, 95.0),),
                         latency_budget=(("math", 100.0),), aggregation=5.0)
    f = oracle_objective([[1, 1]])
    r = solve(p, f, "exhaustive")
    assert r.names == ("b",)


def test_oracle_objective_values() -> None:
    s = [[0.2, 0.9], [0.5, 0.1], [1.0, 0.0]]
    f = oracle_objective(s)
    assert f(0) == 0.0
    assert f(0b01) == pytest.approx((0.2 + 0.5 + 1.0) / 3)
    assert f(0b11) == pytest.approx((0.9 + 0.5 + 1.0) / 3)
    fb = oracle_objective([[1, 0], [0, 0], [1, 1]])
    assert fb(0b10) == pytest.approx(1 / 3) and fb(0b11) == pytest.approx(2 / 3)


def test_gate_objective_top_k_renormalises_inside_s() -> None:
    scores = [[1.0, 0.0, 0.5]]
    gate = [[0.2, 0.5, 0.3]]
    f1 = gate_objective(scores, gate, top_k=1)
    assert f1(0b111) == pytest.approx(0.0)        # expert 1 has the largest weight
    assert f1(0b101) == pytest.approx(0.5)        # inside {0, 2}: expert 2
    f2 = gate_objective(scores, gate, top_k=2)
    assert f2(0b111) == pytest.approx((0.5 * 0.0 + 0.3 * 0.5) / 0.8)
    assert f2(0b101) == pytest.approx((0.2 * 1.0 + 0.3 * 0.5) / 0.5)
    assert f2(0b100) == pytest.approx(0.5) and f2(0b001) == pytest.approx(1.0)


def test_monotonicity_check_reports_gate_violations_and_none_for_oracle() -> None:
    scores = [[1.0, 0.0], [1.0, 0.0]]
    gate = [[0.4, 0.6], [0.4, 0.6]]  # the gate prefers the wrong expert: adding it hurts
    rep = monotonicity_violations(gate_objective(scores, gate), 2)
    assert rep.exhaustive and rep.pairs_checked == 4 and rep.violations == 1 and not rep.monotone
    assert rep.worst[0][:2] == ((0,), 1) and rep.worst[0][2] == pytest.approx(-1.0)
    rep2 = monotonicity_violations(oracle_objective(np.random.default_rng(0).random((20, 12))), 12, max_pairs=5000)
    assert not rep2.exhaustive and rep2.pairs_checked == 5000 and rep2.monotone


def test_baselines_are_feasible_and_bounded_by_the_optimum() -> None:
    rng = np.random.default_rng(3)
    scores = (rng.random((50, 10)) < 0.4).astype(float)
    energy = tuple(float(x) for x in rng.uniform(1, 5, 10))
    p = SelectionProblem(names=tuple("abcdefghij"), energy=energy, energy_budget=8.0)
    f = oracle_objective(scores)
    opt = solve_exhaustive(p, f).objective_value
    for r in (best_single(p, f), random_maximal(p, f, seed=1)):
        assert p.feasible(mask_of(r.selected)) and r.objective_value <= opt + 1e-12
    assert len(best_single(p, f).selected) == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(names=(), energy=()), "names"),
        (dict(names=("a", "a"), energy=(1.0, 1.0)), "unique"),
        (dict(names=("a",), energy=(-1.0,)), r"energy\[0\]"),
        (dict(names=("a",), energy=(1.0,), energy_budget=-3.0), "energy_budget"),
        (dict(names=("a",), energy=(1.0,), energy_budget=math.nan), "energy_budget"),
        (dict(names=("a",), energy=(1.0,), categories=("math",), latency=((1.0, 2.0),)), r"latency\['math'\]"),
        (dict(names=("a",), energy=(1.0,), categories=("math",), latency=((1.0,),), latency_budget=(("maths", 1.0),)),
         "did you mean 'math'"),
    ],
)
def test_bad_problems_name_the_field(kwargs, match) -> None:
    with pytest.raises(SelectionInputError, match=match):
        SelectionProblem(**kwargs)


def test_bad_objectives_name_the_field() -> None:
    with pytest.raises(SelectionInputError, match=r"scores\[1\]\[0\]"):
        oracle_objective([[0.5], [1.5]])
    with pytest.raises(SelectionInputError, match="shape"):
        gate_objective([[0.5, 0.5]], [[1.0]])
    with pytest.raises(SelectionInputError, match="did you mean 'oracle'"):
        make_objective("orcle", [[1.0]])
    with pytest.raises(SelectionInputError, match="allowed: monotonic, exhaustive, greedy"):
        solve(SelectionProblem(names=("a",), energy=(1.0,)), oracle_objective([[1.0]]), "anneal")


# ------------------------------------------------------------- module split and routed selection


def test_objectives_module_and_selection_reexports_are_the_same_objects() -> None:
    import solvers.objectives as obj
    import solvers.selection as sel

    for name in ("oracle_objective", "gate_objective", "routed_objective", "make_objective",
                 "monotonicity_violations", "MonotonicityReport", "OBJECTIVES"):
        assert getattr(sel, name) is getattr(obj, name)


def _brute_routed(s, p, e, mask):
    """Reference: route each query to argmax_{i in S} p (lowest index on ties), by plain loops."""
    idx = members(mask)
    acc = en = 0.0
    for q in range(len(s)):
        best = idx[0]
        for i in idx[1:]:
            if p[q][i] > p[q][best]:
                best = i
        acc += s[q][best]
        en += e[q][best]
    return acc / len(s), en / len(s)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_routed_table_matches_brute_force_on_every_subset(seed: int) -> None:
    from solvers.selection import routed_objective, routed_table

    rng = np.random.default_rng(seed)
    q, n = 40, 6
    s = (rng.random((q, n)) < 0.5).astype(float)
    p = np.round(rng.random((q, n)), 1)  # rounding makes ties, which must go to the lower index
    e = rng.uniform(1, 10, (q, n))
    tab = routed_table(s, p, e)
    f = routed_objective(s, p)
    for mask in range(1, 1 << n):
        acc, en = _brute_routed(s.tolist(), p.tolist(), e.tolist(), mask)
        assert tab.accuracy[mask - 1] == pytest.approx(acc, abs=1e-12)
        assert tab.energy[mask - 1] == pytest.approx(en, abs=1e-12)
        assert f(mask) == pytest.approx(acc, abs=1e-12)


def test_routed_table_best_respects_the_budget_and_is_not_additive() -> None:
    from solvers.selection import routed_table

    # expert 0: cheap, right on the first half; expert 1: expensive, right on the second half;
    # a perfect router sends each query to the right one, so {0, 1} costs the MEAN of the two energies
    s = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], dtype=float)
    tab = routed_table(s, s, np.array([1.0, 3.0]))
    assert tab.energy[0b11 - 1] == pytest.approx(2.0)  # not 1 + 3 = 4
    assert tab.accuracy[0b11 - 1] == 1.0
    assert tab.best(None) == 0b11
    assert tab.best(2.0) == 0b11
    assert tab.best(1.5) == 0b01
    assert tab.best(0.5) == 0
    assert tab.best(None, allowed=0b10) == 0b10
    with pytest.raises(SelectionInputError, match="energy_budget"):
        tab.best(-1.0)
    with pytest.raises(SelectionInputError, match="predicted"):
        routed_table(s, s[:, :1], [1.0, 3.0])
