"""Which edge experts answer a query: the gateway's ``SelectExperts`` (MoE²'s two levels, online).

Given a selection instance (the JSON of ``flotilla experts build``: experts, their MODELED energy
per query e_i and latency per category t_{c,i}, the aggregation time a, and the per-query scores
the objective f needs) and a gate, a request (query, energy budget E, latency budget T, k) is
answered in two steps:

1. **Deployment** S (offline level): the instance's problem with the request's budgets,
   ``E(S) = sum_{i in S} e_i <= E`` and ``L_c(S) = max_{i in S} t_{c,i} + a <= T`` for *every*
   category c (the query's category is unknown), maximising the instance's objective f with
   :func:`solvers.selection.solve` (``monotonic``; exact for the non-decreasing ``oracle``
   objective; for ``gate`` the monotonicity of f is checked once at start, as
   :func:`edge.instance.solve_instance` does). S depends only on (E, T), so it is cached per budget
   pair (LRU, ``cache_size`` pairs).
2. **Routing** (online level): the gate's softmax weights g(x) for the query's embedding x
   (all-MiniLM-L6-v2 via :class:`edge.gating.Embedder`), restricted to the top-k experts of S and
   renormalised over them (:func:`edge.gating.restrict`), k = ``max_experts``. The experts are
   returned best first with their weights (sum 1).

One expert answers the query (the one-expert-per-query semantics of ``flotilla experts
evaluate`` and of the hosted experts, :mod:`cluster.shell.hosting`): the first of the returned
experts, ``routed``; the others are its alternatives, with their gate weights. The answer's energy
and latency are the routed expert's: ``e_r`` and ``max_c t_{c,r} + a`` (the worst category), both
MODELED by the instance. They never exceed the budgets, since r is a member of a feasible S and
feasibility is down-closed. When no expert fits the budgets S is empty, and so is the answer
(``experts`` empty, a note saying why): a valid answer, as in ``flotilla select``.

The gate: the instance carries per-query scores but no query texts, so the gate is trained at start
on the committed MMLU-Pro fixture (:data:`edge.dataset.FIXTURE_DIR`, 308 questions with
precomputed embeddings) against the correctness of each expert's model column
(expert ``MODEL@DEVICE[:DTYPE]`` -> column ``MODEL``): about a second on a CPU.
"""

from __future__ import annotations

import collections
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from cluster.exceptions import InputError

#: Budget pairs whose deployment is kept.
DEFAULT_CACHE_SIZE = 256
#: Longest query accepted, characters (the encoder reads its first 256 tokens anyway).
MAX_QUERY_CHARS = 16_384
MODELED_NOTE = ("energy_j and latency_ms are MODELED (the instance's figures from cluster/perf's roofline), "
                "not measured")

Embed = Callable[[list[str]], np.ndarray]


def fixture_gate(experts: tuple[str, ...], config: Any = None) -> Any:
    """A gate over ``experts`` trained on the committed fixture (module docstring)."""
    from edge.dataset import FIXTURE_DIR, load_mmlu_pro
    from edge.gating import GateConfig, train_gate

    data = load_mmlu_pro(FIXTURE_DIR)
    emb = np.load(FIXTURE_DIR.parent / "mmlu_pro_fixture_embeddings.npy").astype(np.float32)
    cols = []
    for name in experts:
        model = name.partition("@")[0]
        if model not in data.models:
            raise InputError(
                f"experts: expert {name!r} (model {model!r}) has no column in the MMLU-Pro fixture the gate is "
                f"trained on; known models: {', '.join(data.models)}")
        cols.append(data.models.index(model))
    return train_gate(emb, data.correct[:, cols], experts, config or GateConfig())


def encoder_embed(embedder: Any = None) -> Embed:
    """Embed query texts with the gate's encoder, without the Embedder's per-text disk cache (one
    file per distinct query would grow without bound on a server)."""
    from edge.gating import Embedder

    emb = embedder or Embedder()
    lock = threading.Lock()

    def embed(texts: list[str]) -> np.ndarray:
        with lock:
            return emb.encode(texts)

    return embed


@dataclass(frozen=True, slots=True)
class Selection:
    """One answer (see the module docstring)."""

    experts: tuple[str, ...]
    weights: tuple[float, ...]
    energy_j: float
    latency_ms: float
    deployed: tuple[str, ...]
    objective_value: float
    note: str


class ExpertSelector:
    """Deployment per budget pair (cached) + the gate's top-k inside it."""

    def __init__(self, instance: Any, gate: Any, embed: Embed, *, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        from solvers.selection import monotonicity_violations

        if tuple(gate.experts) != tuple(instance.experts):
            raise InputError(f"gate: trained for {list(gate.experts)}, the instance has {list(instance.experts)}")
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 1:
            raise InputError(f"cache_size: {cache_size!r}; allowed: an integer >= 1")
        self.instance = instance
        self.gate = gate
        self.embed = embed
        self.cache_size = cache_size
        self._f = instance.objective_fn()
        self.monotone = True
        if instance.objective == "gate":
            rep = monotonicity_violations(self._f, len(instance.experts))
            # a clean *sample* is not a proof: only an exhaustive check makes the answer exact
            self.monotone = rep.monotone and rep.exhaustive
        self._cache: collections.OrderedDict[tuple[float, float], Any] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.solves = 0

    @classmethod
    def from_file(cls, path: str | Path, *, embedder: Any = None, gate_config: Any = None) -> ExpertSelector:
        """The selector ``flotilla serve --experts FILE`` starts: the instance, a fixture-trained gate."""
        from edge.instance import load_instance

        inst = load_instance(path)
        gate = fixture_gate(inst.experts, gate_config)
        embed = encoder_embed(embedder)
        embed(["warm up the encoder"])  # load it now: fail at start, not on the first request
        return cls(inst, gate, embed)

    def problem(self, energy_budget_j: float, latency_budget_ms: float) -> Any:
        """The instance's selection problem under the request's budgets (T on every category)."""
        inst = replace(self.instance, energy_budget=float(energy_budget_j),
                       latency_budget=tuple((c, float(latency_budget_ms)) for c in self.instance.latency_categories))
        return inst.problem()

    def deployment(self, energy_budget_j: float, latency_budget_ms: float) -> Any:
        """The solver's :class:`~solvers.selection.SelectionResult` for a budget pair (cached)."""
        from solvers.selection import solve

        key = (float(energy_budget_j), float(latency_budget_ms))
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        res = solve(self.problem(*key), self._f, "monotonic", assume_monotone=self.monotone)
        with self._lock:
            self.solves += 1
            self._cache[key] = res
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return res

    def select(self, query: str, energy_budget_j: float, latency_budget_ms: float, max_experts: int = 1) -> Selection:
        """Answer one request (module docstring). InputError names a bad field."""
        from edge.gating import restrict
        from solvers.selection import mask_of

        if not isinstance(query, str) or not query.strip():
            raise InputError("query: must be a non-empty string")
        if len(query) > MAX_QUERY_CHARS:
            raise InputError(f"query: {len(query)} characters; allowed: at most {MAX_QUERY_CHARS}")
        for name, v in (("energy_budget_j", energy_budget_j), ("latency_budget_ms", latency_budget_ms)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise InputError(f"{name}: {v!r}; allowed: a finite number > 0")
        if isinstance(max_experts, bool) or not isinstance(max_experts, int) or not 1 <= max_experts <= 64:
            raise InputError(f"max_experts: {max_experts!r}; allowed: 1..64")
        res = self.deployment(energy_budget_j, latency_budget_ms)
        names = self.instance.experts
        if not res.selected:
            return Selection((), (), 0.0, 0.0, (), 0.0,
                             "no expert fits these budgets (each one alone exceeds the energy or latency budget): "
                             f"the empty set is the answer; {MODELED_NOTE}")
        w = self.gate.weights(self.embed([query]))
        kept = restrict(w, list(res.selected), max_experts)[0]
        order = [i for i in np.argsort(-kept, kind="stable") if kept[i] > 0 and i in res.selected]
        if not order:  # every kept weight was 0: restrict made them uniform, so this cannot happen
            raise InputError("query: the gate gave no weight inside the deployment")
        problem = self.problem(energy_budget_j, latency_budget_ms)
        mask = mask_of(order[:1])  # the routed expert alone answers the query
        lat = problem.latency_of(mask)
        return Selection(
            experts=tuple(names[i] for i in order), weights=tuple(float(kept[i]) for i in order),
            energy_j=problem.energy_of(mask), latency_ms=max(lat.values()) if lat else 0.0,
            deployed=tuple(res.names), objective_value=float(res.objective_value), note=MODELED_NOTE,
        )


__all__ = ["ExpertSelector", "Selection", "encoder_embed", "fixture_gate"]
