"""The selection instance file (docs/edge-experts.md): parse, validate, solve, and build from data.

Format::

    {"experts": [{"name": "...", "energy_j": 3.2, "latency_ms": {"math": 420.0, "chat": 180.0}}, ...],
     "categories": ["math", "chat", ...],          # one per query
     "scores": [[0.0, 1.0, ...], ...],               # queries x experts, each in [0, 1]
     "gate": [[...], ...],                           # optional, queries x experts, rows sum to 1
     "budgets": {"energy_j": 10.0, "latency_ms": {"math": 900.0}},   # both optional
     "objective": "oracle" | "gate", "top_k": 1,
     "aggregation_ms": 0.0}                          # optional, added to a non-empty deployment

Every error is an :class:`cluster.exceptions.InputError` that names the JSON path of the field.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cluster.exceptions import InputError, did_you_mean
from solvers.selection import (
    METHODS,
    OBJECTIVES,
    SelectionProblem,
    make_objective,
    monotonicity_violations,
    solve,
)


def _num(path: str, v: Any, *, lo: float = 0.0) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < lo:
        raise InputError(f"{path}: expected a finite number >= {lo:g}, got {v!r}")
    return float(v)


def _matrix(path: str, rows: Any, n_rows: int, n_cols: int) -> np.ndarray:
    if not isinstance(rows, list) or len(rows) != n_rows:
        got = len(rows) if isinstance(rows, list) else type(rows).__name__
        raise InputError(f"{path}: expected a list of {n_rows} rows (one per query), got {got}")
    for q, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != n_cols:
            got = len(row) if isinstance(row, list) else type(row).__name__
            raise InputError(f"{path}[{q}]: expected {n_cols} values (one per expert), got {got} (ragged matrix)")
        for i, v in enumerate(row):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= 1:
                raise InputError(f"{path}[{q}][{i}]: expected a number in [0, 1], got {v!r}")
    return np.asarray(rows, dtype=float)


@dataclass(frozen=True, slots=True)
class Instance:
    """A validated instance. ``latency_ms[c][i]``: expert i on category c (categories sorted)."""

    experts: tuple[str, ...]
    energy_j: tuple[float, ...]
    latency_categories: tuple[str, ...]
    latency_ms: tuple[tuple[float, ...], ...]
    query_categories: tuple[str, ...]
    scores: np.ndarray
    gate: np.ndarray | None
    energy_budget: float | None
    latency_budget: tuple[tuple[str, float], ...]
    objective: str
    top_k: int
    aggregation_ms: float

    @classmethod
    def from_dict(cls, doc: Any) -> Instance:
        if not isinstance(doc, dict):
            raise InputError(f"instance: expected a JSON object, got {type(doc).__name__}")
        known = {"experts", "categories", "scores", "gate", "budgets", "objective", "top_k", "aggregation_ms", "note"}
        for k in doc:
            if k not in known:
                raise InputError(f"{k}: unknown field{did_you_mean(str(k), known)}; allowed: {', '.join(sorted(known))}")
        experts = doc.get("experts")
        if not isinstance(experts, list) or not experts:
            raise InputError("experts: expected a non-empty list of {name, energy_j, latency_ms}")
        names, energy, lat = [], [], []
        for i, e in enumerate(experts):
            if not isinstance(e, dict):
                raise InputError(f"experts[{i}]: expected an object, got {type(e).__name__}")
            name = e.get("name")
            if not isinstance(name, str) or not name:
                raise InputError(f"experts[{i}].name: expected a non-empty string, got {name!r}")
            if name in names:
                raise InputError(f"experts[{i}].name: {name!r} is listed twice")
            names.append(name)
            energy.append(_num(f"experts[{i}].energy_j", e.get("energy_j")))
            lm = e.get("latency_ms", {})
            if not isinstance(lm, dict):
                raise InputError(f"experts[{i}].latency_ms: expected an object category -> ms, got {lm!r}")
            lat.append({str(c): _num(f"experts[{i}].latency_ms.{c}", v) for c, v in lm.items()})
        cats = doc.get("categories")
        if not isinstance(cats, list) or not cats or not all(isinstance(c, str) for c in cats):
            raise InputError("categories: expected a non-empty list of category names, one per query")
        n, q = len(names), len(cats)
        scores = _matrix("scores", doc.get("scores"), q, n)
        gate = None
        if doc.get("gate") is not None:
            gate = _matrix("gate", doc["gate"], q, n)
            bad = np.flatnonzero(np.abs(gate.sum(axis=1) - 1) > 1e-6)
            if bad.size:
                raise InputError(f"gate[{bad[0]}]: a row must sum to 1, got {gate[bad[0]].sum():.6g}")
        latency_cats = sorted(set().union(*[set(d) for d in lat]) | set(cats))
        for i, d in enumerate(lat):
            missing = [c for c in latency_cats if c not in d]
            if missing:
                raise InputError(f"experts[{i}].latency_ms: no latency for categor{'y' if len(missing) == 1 else 'ies'} "
                                 f"{missing}; every expert needs one per category")
        budgets = doc.get("budgets", {}) or {}
        if not isinstance(budgets, dict):
            raise InputError(f"budgets: expected an object, got {budgets!r}")
        for k in budgets:
            if k not in ("energy_j", "latency_ms"):
                raise InputError(f"budgets.{k}: unknown budget{did_you_mean(str(k), ('energy_j', 'latency_ms'))}; "
                                 "allowed: energy_j, latency_ms")
        eb = budgets.get("energy_j")
        eb = None if eb is None else _num("budgets.energy_j", eb)
        lb = budgets.get("latency_ms", {}) or {}
        if not isinstance(lb, dict):
            raise InputError(f"budgets.latency_ms: expected an object category -> ms, got {lb!r}")
        lbt = []
        for c, v in lb.items():
            if c not in latency_cats:
                raise InputError(f"budgets.latency_ms.{c}: unknown category{did_you_mean(c, latency_cats)}; "
                                 f"known: {', '.join(latency_cats)}")
            lbt.append((c, _num(f"budgets.latency_ms.{c}", v)))
        objective = doc.get("objective", "oracle")
        if objective not in OBJECTIVES:
            raise InputError(f"objective: unknown objective {objective!r}{did_you_mean(str(objective), OBJECTIVES)}; "
                             f"allowed: {', '.join(OBJECTIVES)}")
        if objective == "gate" and gate is None:
            raise InputError("gate: objective 'gate' needs a 'gate' matrix (queries x experts)")
        top_k = doc.get("top_k", 1)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise InputError(f"top_k: expected an integer >= 1, got {top_k!r}")
        agg = _num("aggregation_ms", doc.get("aggregation_ms", 0.0))
        return cls(tuple(names), tuple(energy), tuple(latency_cats),
                   tuple(tuple(d[c] for d in lat) for c in latency_cats), tuple(cats), scores, gate, eb,
                   tuple(lbt), objective, top_k, agg)

    def to_dict(self) -> dict:
        doc: dict[str, Any] = {
            "experts": [{"name": n, "energy_j": self.energy_j[i],
                         "latency_ms": {c: self.latency_ms[j][i] for j, c in enumerate(self.latency_categories)}}
                        for i, n in enumerate(self.experts)],
            "categories": list(self.query_categories),
            "scores": self.scores.tolist(),
            "budgets": {"latency_ms": dict(self.latency_budget)},
            "objective": self.objective, "top_k": self.top_k, "aggregation_ms": self.aggregation_ms,
        }
        if self.energy_budget is not None:
            doc["budgets"]["energy_j"] = self.energy_budget
        if self.gate is not None:
            doc["gate"] = self.gate.tolist()
        return doc

    def problem(self) -> SelectionProblem:
        return SelectionProblem(names=self.experts, energy=self.energy_j, categories=self.latency_categories,
                                latency=self.latency_ms, energy_budget=self.energy_budget,
                                latency_budget=self.latency_budget, aggregation=self.aggregation_ms)

    def objective_fn(self):
        return make_objective(self.objective, self.scores, self.gate, self.top_k)


def load_instance(path: str | Path) -> Instance:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise InputError(f"instance: cannot read {str(p)!r}: {exc.strerror or exc}") from exc
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"instance: {p} is not valid JSON (line {exc.lineno}: {exc.msg})") from exc
    return Instance.from_dict(doc)


def solve_instance(inst: Instance, method: str = "monotonic", *, check_pairs: int = 20_000) -> dict:
    """Solve and return the CLI's JSON document (selected names, f, budgets used, evaluations, ...).

    For the ``gate`` objective the monotonicity of f is checked on the data first (all pairs (S, i)
    when there are at most ``check_pairs``, else a seeded sample) and the violations reported. The
    monotonic method's answer is ``exact: true`` only when monotonicity is proven (the oracle
    objective, or every pair checked without a violation); ``exact_basis`` says which, e.g.
    "monotonicity checked on a sample" (then ``exact: false``).
    """
    if method not in METHODS:
        raise InputError(f"method: unknown method {method!r}{did_you_mean(str(method), METHODS)}; "
                         f"allowed: {', '.join(METHODS)}")
    try:
        problem = inst.problem()
        f = inst.objective_fn()
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    report = None
    if inst.objective == "gate":
        report = monotonicity_violations(f, problem.n, max_pairs=check_pairs)
    if inst.objective == "gate" and inst.top_k == 1 and problem.n <= ROUTED_MAX_EXPERTS:
        doc = _solve_routed(inst, problem)
    else:
        proven = True  # the oracle objective is non-decreasing by construction
        if report is not None:
            # only an exhaustive check without violations proves monotonicity; a clean sample does not
            proven = report.monotone and report.exhaustive
        res = solve(problem, f, method, assume_monotone=proven)
        doc = res.to_dict()
        doc["energy_semantics"] = ("all experts of S run on every query: energy_j = sum of their energies, "
                                   "latency = the slowest")
        if method == "monotonic":
            doc["exact_basis"] = ("objective non-decreasing by construction" if inst.objective == "oracle" else
                                  "monotonicity checked on every pair" if proven else
                                  "monotonicity checked on a sample" if report.monotone else
                                  "monotonicity violated on the data")
    doc["latency_ms"] = doc.pop("latency")
    doc["objective"] = inst.objective
    doc["top_k"] = inst.top_k
    doc["budgets"] = {"energy_j": inst.energy_budget, "latency_ms": dict(inst.latency_budget)}
    doc["n_experts"] = problem.n
    doc["n_queries"] = len(inst.query_categories)
    doc["subsets"] = 2 ** problem.n
    if doc["empty"]:
        doc["note"] = "no non-empty subset of experts meets the budgets: the empty set is the answer"
    if report is not None:
        doc["monotonicity"] = {"pairs_checked": report.pairs_checked, "violations": report.violations,
                               "exhaustive": report.exhaustive, "violation_rate": report.violation_rate,
                               "worst": [{"subset": [inst.experts[i] for i in s], "added": inst.experts[i],
                                          "drop": d} for s, i, d in report.worst[:5]]}
    return doc


#: Above this many experts the routed semantics (every subset scored) is not used.
ROUTED_MAX_EXPERTS = 16


def _solve_routed(inst: Instance, problem: SelectionProblem) -> dict:
    """Gate objective, top-1: each query goes to ONE expert (the gate's favourite inside S), and its
    energy and latency are that expert's. Energy is then not additive (nor down-closed), so every
    subset is scored (:func:`solvers.selection.routed_table`); the latency budgets stay per-expert
    filters (a query routed to i in category c takes t_{c,i}, so S meets T_c iff each of its experts
    does)."""
    import time

    from solvers.selection import members, routed_table

    t0 = time.perf_counter()
    cat_index = {c: j for j, c in enumerate(inst.latency_categories)}
    qcat = np.asarray([cat_index[c] for c in inst.query_categories])
    lat = np.asarray(inst.latency_ms)[qcat] + inst.aggregation_ms  # queries x experts
    table = routed_table(inst.scores, inst.gate, np.asarray(inst.energy_j), lat)
    from dataclasses import replace

    # latency budgets filter single experts; the energy budget applies to the routed mean, not per expert
    allowed = replace(problem, energy_budget=None).allowed_mask()
    mask = table.best(inst.energy_budget, allowed)
    idx = members(mask)
    doc = {
        "method": "exhaustive-routed", "selected": [inst.experts[i] for i in idx], "selected_indices": list(idx),
        "objective_value": float(table.accuracy[mask - 1]) if mask else 0.0,
        "energy_j": float(table.energy[mask - 1]) if mask else 0.0,
        "latency": {},
        "mean_latency_ms": float(table.latency[mask - 1]) if mask else 0.0,
        "evaluations": (1 << problem.n) - 1, "seconds": time.perf_counter() - t0,
        "exact": True, "exact_basis": "every subset scored", "empty": mask == 0,
        "energy_semantics": "one expert per query (the gate's top-1 inside S): energy_j = mean energy of the "
                            "routed expert, latency_ms = slowest routed expert per category",
    }
    if mask:
        for c, cat in enumerate(inst.latency_categories):
            rows = qcat == c
            if rows.any():
                sub = np.asarray(idx)
                r = sub[np.argmax(inst.gate[np.ix_(rows, sub)], axis=1)]
                doc["latency"][cat] = float(np.asarray(inst.latency_ms)[c][r].max() + inst.aggregation_ms)
    return doc


def build_instance(data, profiles, *, energy_budget: float | None = None,
                   latency_budget: dict[str, float] | None = None, objective: str = "oracle",
                   gate: np.ndarray | None = None, top_k: int = 1, aggregation_ms: float = 0.0) -> Instance:
    """An instance over ``data``'s questions with the experts of ``profiles`` (edge.profiles)."""
    cols = [data.models.index(p.model) for p in profiles]
    doc = {
        "experts": [{"name": p.name, "energy_j": p.energy_j, "latency_ms": dict(p.latency_ms)} for p in profiles],
        "categories": list(data.categories),
        "scores": data.correct[:, cols].tolist(),
        "budgets": {"latency_ms": dict(latency_budget or {})},
        "objective": objective, "top_k": top_k, "aggregation_ms": aggregation_ms,
    }
    if energy_budget is not None:
        doc["budgets"]["energy_j"] = energy_budget
    if gate is not None:
        doc["gate"] = np.asarray(gate).tolist()
    return Instance.from_dict(doc)
