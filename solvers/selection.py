"""Which experts to deploy: maximise a set function under an energy budget and latency budgets.

The offline level of MoE² ("Optimizing Collaborative Inference for Edge Large Language Models",
arXiv 2501.09410): choose the subset S of LLM experts to keep.

Sets and data
    N = {0 .. n-1}   experts; a subset S is held as a bitmask (bit i set <=> expert i in S)
    e_i >= 0         energy of expert i per query (additive: the selected experts all run)
    t_{c,i} >= 0     latency of expert i on query category c (they run in parallel: max-type)
    a >= 0           aggregation latency, added once to a non-empty deployment
    E                energy budget (None: unconstrained)
    T_c              latency budget of category c (a category without a budget is unconstrained)
    f : 2^N -> R     the objective (e.g. expected accuracy), f given as a callable on bitmasks

Problem
    maximise   f(S)
    subject to E(S)   = sum_{i in S} e_i                  <= E
               L_c(S) = max_{i in S} t_{c,i} + a          <= T_c   for every budgeted c
                        (L_c(empty) = 0, E(empty) = 0: the empty set is always feasible)

Feasibility is *down-closed*: every subset of a feasible set is feasible. A max-type budget
couples nothing: ``L_c(S) <= T_c`` holds iff every i in S has ``t_{c,i} + a <= T_c``, so it is a
per-expert filter, applied first ("allowed" experts A). What remains is a knapsack constraint.

Methods (each returns the subset, f(S), the budgets used and the number of distinct f evaluations)

``exhaustive``  the reference: f on every feasible subset of A, keeping the best. No assumption
                on f. ``2^|A|`` subsets are visited; f is evaluated on the feasible ones.
``greedy``      a baseline: from the empty set, repeatedly add the feasible expert with the
                largest marginal gain per joule ``(f(S + i) - f(S)) / max(e_i, eps)`` while some gain
                is positive; return the better of that and the best feasible single expert. No
                guarantee; never better than the optimum.
``monotonic``   discrete monotonic optimisation, exact when f is non-decreasing
                (S ⊆ S' => f(S) <= f(S')). Branch-reduce-bound over the subset lattice, the
                discrete form of the polyblock outer approximation (Tuy; MoE² Sec. IV):

                A node is a box [I, I ∪ U] of the lattice {0,1}^n: experts in I are in, experts in
                U undecided, the rest out. For a non-decreasing f, the box's upper corner is a
                polyblock vertex that bounds the whole box:

                    max_{I ⊆ S ⊆ I ∪ U} f(S)  <=  f(I ∪ U).

                *Reduce*: an undecided expert i with ``e_i > E - E(I)`` fits in no feasible
                completion; drop it from U (this tightens the vertex without losing a feasible
                point). *Bound*: if ``f(I ∪ U) <= best`` the box cannot improve the incumbent;
                prune it. *Leaf*: if ``E(I ∪ U) <= E`` the upper corner itself is feasible, so it
                is the box's optimum (by monotonicity); update the incumbent. *Branch*: otherwise
                split on the undecided expert of largest energy: the box with it in, then the box
                with it out (depth first, "in" first, so feasible incumbents appear early).

                Every feasible S lies in exactly one leaf-or-pruned box, and a box is only pruned
                when its bound cannot beat the incumbent, so the result is optimal whenever f is
                non-decreasing. When f is not (the ``gate`` objective can violate it), the result is
                a feasible set but not guaranteed optimal: check with :func:`monotonicity_violations`.

Objectives live in :mod:`solvers.objectives` (re-exported here): ``oracle`` (proven
non-decreasing), ``gate`` and ``routed`` (not monotone in general).

What ``exact`` means: ``exhaustive`` is exact for any f. ``monotonic`` is exact only when f is
non-decreasing, which is *proven* for ``oracle`` only; for ``gate``/``routed`` a caller can run
:func:`monotonicity_violations`, which checks every pair (S, i) when there are few and otherwise a
seeded *sample*: a sample without violations is "monotonicity checked on a sample", not a proof,
and the result must not be called exact on that basis (see :func:`edge.instance.solve_instance`).

Energy semantics: :class:`SelectionProblem` charges every expert of S on every query (they all
run: ``E(S) = sum e_i``). For routing each query to ONE expert, where energy, latency and accuracy
all follow the routed expert, see :mod:`solvers.selection_routed` (``E(S)`` = mean energy of the
routed expert; not additive, not down-closed, so every subset is scored).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field

from solvers.exceptions import did_you_mean
from solvers.objectives import (
    OBJECTIVES,
    MonotonicityReport,
    gate_objective,
    make_objective,
    monotonicity_violations,
    oracle_objective,
    routed_objective,
)
from solvers.selection_base import (
    TOL,
    Objective,
    SelectionInputError,
    _Counter,
    _finite_nonneg,
    mask_of,
    members,
)
from solvers.selection_routed import RoutedTable, routed_table

#: Methods :func:`solve` accepts.
METHODS = ("monotonic", "exhaustive", "greedy")


# ------------------------------------------------------------------------------------- problem


@dataclass(frozen=True, slots=True)
class SelectionProblem:
    """Experts, their costs and the budgets (module docstring's notation).

    ``energy[i]`` = e_i (J per query). ``latency[c][i]`` = t_{c,i} (any time unit, the same as the
    budgets) for category ``categories[c]``. ``energy_budget`` = E or None. ``latency_budget`` maps a
    category to T_c; categories absent from it are unconstrained. ``aggregation`` = a.
    """

    names: tuple[str, ...]
    energy: tuple[float, ...]
    categories: tuple[str, ...] = ()
    latency: tuple[tuple[float, ...], ...] = ()
    energy_budget: float | None = None
    latency_budget: tuple[tuple[str, float], ...] = ()
    aggregation: float = 0.0

    def __post_init__(self) -> None:
        n = len(self.names)
        if n == 0:
            raise SelectionInputError("names: expected at least one expert, got none")
        if len(set(self.names)) != n:
            dup = sorted({x for x in self.names if self.names.count(x) > 1})
            raise SelectionInputError(f"names: expert names must be unique, repeated: {dup}")
        if len(self.energy) != n:
            raise SelectionInputError(f"energy: expected {n} values (one per expert), got {len(self.energy)}")
        for i, v in enumerate(self.energy):
            _finite_nonneg(f"energy[{i}]", v)
        if len(self.latency) != len(self.categories):
            raise SelectionInputError(
                f"latency: expected {len(self.categories)} rows (one per category), got {len(self.latency)}")
        if len(set(self.categories)) != len(self.categories):
            raise SelectionInputError(f"categories: must be unique, got {list(self.categories)}")
        for c, row in enumerate(self.latency):
            if len(row) != n:
                raise SelectionInputError(
                    f"latency[{self.categories[c]!r}]: expected {n} values (one per expert), got {len(row)}")
            for i, v in enumerate(row):
                _finite_nonneg(f"latency[{self.categories[c]!r}][{i}]", v)
        if self.energy_budget is not None:
            _finite_nonneg("energy_budget", self.energy_budget)
        for cat, t in self.latency_budget:
            if cat not in self.categories:
                raise SelectionInputError(
                    f"latency_budget: unknown category {cat!r}{did_you_mean(cat, self.categories)}; "
                    f"known: {', '.join(self.categories)}")
            _finite_nonneg(f"latency_budget[{cat!r}]", t)
        _finite_nonneg("aggregation", self.aggregation)

    @property
    def n(self) -> int:
        return len(self.names)

    def allowed_mask(self) -> int:
        """Experts that satisfy every max-type budget alone and fit the energy budget alone."""
        budget = dict(self.latency_budget)
        m = 0
        for i in range(self.n):
            ok = self.energy_budget is None or self.energy[i] <= self.energy_budget + TOL
            for c, cat in enumerate(self.categories):
                if cat in budget and self.latency[c][i] + self.aggregation > budget[cat] + TOL:
                    ok = False
            if ok:
                m |= 1 << i
        return m

    def energy_of(self, mask: int) -> float:
        return float(sum(self.energy[i] for i in members(mask)))

    def latency_of(self, mask: int) -> dict[str, float]:
        """L_c(S) for every category (0 for the empty set)."""
        idx = members(mask)
        if not idx:
            return {cat: 0.0 for cat in self.categories}
        return {cat: max(self.latency[c][i] for i in idx) + self.aggregation for c, cat in enumerate(self.categories)}

    def feasible(self, mask: int) -> bool:
        if mask & ~self.allowed_mask():
            return False
        return self.energy_budget is None or self.energy_of(mask) <= self.energy_budget + TOL


@dataclass(frozen=True, slots=True)
class SelectionResult:
    """A selected subset and what it costs.

    ``evaluations``: distinct subsets on which f was evaluated. ``exact``: whether the method
    guarantees optimality for the objective it was given (exhaustive: always; monotonic: when the
    caller declared f non-decreasing; greedy: never). ``empty``: no non-empty subset is feasible,
    so the empty set is the answer.
    """

    method: str
    selected: tuple[int, ...]
    names: tuple[str, ...]
    objective_value: float
    energy: float
    latency: tuple[tuple[str, float], ...]
    evaluations: int
    seconds: float
    exact: bool
    empty: bool = field(default=False)

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "selected": list(self.names),
            "selected_indices": list(self.selected),
            "objective_value": self.objective_value,
            "energy_j": self.energy,
            "latency": dict(self.latency),
            "evaluations": self.evaluations,
            "seconds": self.seconds,
            "exact": self.exact,
            "empty": self.empty,
        }


def _result(problem: SelectionProblem, method: str, mask: int, value: float, ev: _Counter, t0: float,
            exact: bool) -> SelectionResult:
    idx = members(mask)
    return SelectionResult(
        method=method, selected=idx, names=tuple(problem.names[i] for i in idx), objective_value=value,
        energy=problem.energy_of(mask), latency=tuple(problem.latency_of(mask).items()),
        evaluations=ev.count, seconds=time.perf_counter() - t0, exact=exact, empty=(mask == 0),
    )


# ------------------------------------------------------------------------------------- methods


def solve_exhaustive(problem: SelectionProblem, f: Objective) -> SelectionResult:
    """The reference: f on every feasible subset of the allowed experts; the best wins (ties: first)."""
    t0 = time.perf_counter()
    ev = _Counter(f)
    allowed = members(problem.allowed_mask())
    k = len(allowed)
    e = [problem.energy[i] for i in allowed]
    cap = math.inf if problem.energy_budget is None else problem.energy_budget + TOL
    energy_sub = [0.0] * (1 << k)  # energy of each sub-mask over `allowed`, by its lowest bit
    best_mask, best = 0, ev(0)
    for sub in range(1, 1 << k):
        low = (sub & -sub).bit_length() - 1
        energy_sub[sub] = energy_sub[sub & (sub - 1)] + e[low]
        if energy_sub[sub] > cap:
            continue
        mask = 0
        s, j = sub, 0
        while s:
            if s & 1:
                mask |= 1 << allowed[j]
            s >>= 1
            j += 1
        v = ev(mask)
        if v > best + TOL:
            best_mask, best = mask, v
    return _result(problem, "exhaustive", best_mask, best, ev, t0, exact=True)


def solve_greedy(problem: SelectionProblem, f: Objective) -> SelectionResult:
    """Cost-benefit greedy (module docstring); the better of it and the best single expert."""
    t0 = time.perf_counter()
    ev = _Counter(f)
    allowed = members(problem.allowed_mask())
    cap = math.inf if problem.energy_budget is None else problem.energy_budget + TOL
    mask, used, cur = 0, 0.0, ev(0)
    while True:
        best_i, best_ratio, best_v = -1, 0.0, cur
        for i in allowed:
            if mask >> i & 1 or used + problem.energy[i] > cap:
                continue
            v = ev(mask | 1 << i)
            gain = v - cur
            if gain <= TOL:
                continue
            ratio = gain / max(problem.energy[i], 1e-12)
            if ratio > best_ratio:
                best_i, best_ratio, best_v = i, ratio, v
        if best_i < 0:
            break
        mask |= 1 << best_i
        used += problem.energy[best_i]
        cur = best_v
    for i in allowed:  # the best single expert (already evaluated in the first round)
        v = ev(1 << i)
        if v > cur + TOL:
            mask, cur = 1 << i, v
    return _result(problem, "greedy", mask, cur, ev, t0, exact=False)


def solve_monotonic(problem: SelectionProblem, f: Objective, *, assume_monotone: bool = True) -> SelectionResult:
    """Branch-reduce-bound over the subset lattice (module docstring); exact for non-decreasing f.

    ``assume_monotone`` only sets the result's ``exact`` flag: pass False when f is not known to
    be non-decreasing (the search is the same, its answer then a feasible set, not a certificate).
    """
    t0 = time.perf_counter()
    ev = _Counter(f)
    allowed = members(problem.allowed_mask())
    e = problem.energy
    cap = math.inf if problem.energy_budget is None else problem.energy_budget + TOL
    order = sorted(allowed, key=lambda i: (-e[i], i))  # branch on the largest energy first
    best_mask, best = 0, ev(0)
    # DFS stack of boxes (I mask, E(I), undecided experts in branching order)
    stack: list[tuple[int, float, tuple[int, ...]]] = [(0, 0.0, tuple(order))]
    while stack:
        inc, used, und = stack.pop()
        room = cap - used
        und = tuple(i for i in und if e[i] <= room)  # reduce
        top = inc
        top_e = used
        for i in und:
            top |= 1 << i
            top_e += e[i]
        bound = ev(top)
        if bound <= best + TOL:
            continue  # prune (also covers a feasible corner that does not improve)
        if top_e <= cap:
            best_mask, best = top, bound  # leaf: the feasible corner is the box's optimum
            continue
        i, rest = und[0], und[1:]
        stack.append((inc, used, rest))  # "out" box, explored second
        stack.append((inc | 1 << i, used + e[i], rest))  # "in" box, explored first
    return _result(problem, "monotonic", best_mask, best, ev, t0, exact=assume_monotone)


def solve(problem: SelectionProblem, f: Objective, method: str = "monotonic", *,
          assume_monotone: bool = True) -> SelectionResult:
    """Dispatch to :func:`solve_monotonic`, :func:`solve_exhaustive` or :func:`solve_greedy`."""
    if method == "monotonic":
        return solve_monotonic(problem, f, assume_monotone=assume_monotone)
    if method == "exhaustive":
        return solve_exhaustive(problem, f)
    if method == "greedy":
        return solve_greedy(problem, f)
    raise SelectionInputError(f"method: unknown method {method!r}{did_you_mean(str(method), METHODS)}; "
                              f"allowed: {', '.join(METHODS)}")


# ------------------------------------------------------------------------------------ baselines


def best_single(problem: SelectionProblem, f: Objective) -> SelectionResult:
    """The best feasible single expert (the empty set when none is feasible)."""
    t0 = time.perf_counter()
    ev = _Counter(f)
    best_mask, best = 0, ev(0)
    for i in members(problem.allowed_mask()):
        v = ev(1 << i)
        if v > best + TOL:
            best_mask, best = 1 << i, v
    return _result(problem, "best-single", best_mask, best, ev, t0, exact=False)


def random_maximal(problem: SelectionProblem, f: Objective, seed: int = 0) -> SelectionResult:
    """A random maximal feasible subset: allowed experts in random order, each kept if it fits."""
    t0 = time.perf_counter()
    ev = _Counter(f)
    allowed = list(members(problem.allowed_mask()))
    random.Random(seed).shuffle(allowed)
    cap = math.inf if problem.energy_budget is None else problem.energy_budget + TOL
    mask, used = 0, 0.0
    for i in allowed:
        if used + problem.energy[i] <= cap:
            mask |= 1 << i
            used += problem.energy[i]
    return _result(problem, "random", mask, ev(mask), ev, t0, exact=False)


__all__ = [
    "METHODS", "OBJECTIVES", "MonotonicityReport", "Objective", "SelectionInputError", "SelectionProblem",
    "SelectionResult", "best_single", "gate_objective", "make_objective", "mask_of", "members",
    "monotonicity_violations", "oracle_objective", "random_maximal", "solve", "solve_exhaustive",
    "solve_greedy", "solve_monotonic", "routed_objective", "TOL", "RoutedTable", "routed_table",
]
