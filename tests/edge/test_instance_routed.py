"""edge.instance.solve_instance with the gate objective, top-1: one expert per query, so energy and
latency follow the routed expert (not the sum over the subset), checked by hand."""

from __future__ import annotations

import pytest

from edge.instance import Instance, solve_instance

DOC = {
    "experts": [{"name": "cheap", "energy_j": 1.0, "latency_ms": {"m": 100.0, "c": 50.0}},
                {"name": "dear", "energy_j": 3.0, "latency_ms": {"m": 400.0, "c": 200.0}}],
    "categories": ["m", "m", "c", "c"],
    "scores": [[1, 0], [1, 0], [0, 1], [0, 1]],
    "gate": [[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.3, 0.7]],
    "objective": "gate", "top_k": 1,
}


@pytest.mark.parametrize(("budget", "selected", "acc", "energy"), [
    (None, ["cheap", "dear"], 1.0, 2.0),  # half the queries to each: mean 2 J, not 1 + 3 = 4 J
    (2.0, ["cheap", "dear"], 1.0, 2.0),
    (1.9, ["cheap"], 0.5, 1.0),
    (0.5, [], 0.0, 0.0),
])
def test_routed_energy_is_the_mean_energy_of_the_routed_expert(budget, selected, acc, energy) -> None:
    doc = dict(DOC, budgets={} if budget is None else {"energy_j": budget})
    out = solve_instance(Instance.from_dict(doc), "monotonic")
    assert out["selected"] == selected
    assert out["objective_value"] == pytest.approx(acc)
    assert out["energy_j"] == pytest.approx(energy)
    assert out["exact"] and out["exact_basis"] == "every subset scored"
    assert "one expert per query" in out["energy_semantics"]
    if selected == ["cheap", "dear"]:
        # category m is routed to cheap (100 ms), c to dear (200 ms)
        assert out["latency_ms"] == {"c": 200.0, "m": 100.0}


def test_latency_budget_filters_experts_under_routing() -> None:
    doc = dict(DOC, budgets={"latency_ms": {"m": 300.0}})
    out = solve_instance(Instance.from_dict(doc), "monotonic")
    assert out["selected"] == ["cheap"]


def test_oracle_objective_keeps_the_all_run_semantics_and_a_proven_exact() -> None:
    doc = dict(DOC, objective="oracle")
    out = solve_instance(Instance.from_dict(doc), "monotonic")
    assert out["energy_j"] == pytest.approx(4.0) and out["exact"]
    assert out["exact_basis"] == "objective non-decreasing by construction"


def test_a_clean_sample_is_not_a_proof_of_monotonicity() -> None:
    n = 12  # 12 * 2^11 = 24,576 pairs > 20,000: the check samples
    doc = {"experts": [{"name": f"e{i}", "energy_j": 1.0, "latency_ms": {"m": 1.0}} for i in range(n)],
           "categories": ["m", "m"], "scores": [[1.0] * n, [1.0] * n],
           "gate": [[1.0 / n] * n, [1.0 / n] * n], "objective": "gate", "top_k": 2,
           "budgets": {"energy_j": 3.0}}
    out = solve_instance(Instance.from_dict(doc), "monotonic")
    assert out["monotonicity"]["violations"] == 0 and not out["monotonicity"]["exhaustive"]
    assert out["exact"] is False
    assert out["exact_basis"] == "monotonicity checked on a sample"
