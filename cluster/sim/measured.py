"""A replica timed by a MEASURED step-time table, serving as flotilla's ExpertActor does.

The continuous-batching engines (:mod:`cluster.sim.engine_fast`, :mod:`cluster.sim.engine_simpy`)
model a vLLM-like engine that batches every running sequence into one step. flotilla's own
ExpertActor does not batch: each request runs alone (batch 1, its own KV cache) in one of the
actor's ``max_concurrency`` threads, and concurrent requests share the host's cores. The Router
holds requests in one central queue and dispatches a request only to a replica with a free slot
(``active < capacity``). This module simulates exactly that policy, timed by a table measured on
the real serving path (``bench/bench_fidelity.py`` measures one):

* a request admitted at ``t`` (a slot free) spends ``overhead_s`` (router, Ray call, first
  streamed item), then its prefill, ``(prefill_base_s + prefill_per_token_s * p) * prefill_slowdown[k-1]``
  for ``p`` prompt tokens, ``k`` the requests holding a slot of the replica when it starts; the
  end of the prefill is its first token;
* each later token is one decode step of ``decode_step_s[k-1]`` (``k`` at the step's start: a
  step is timed by the contention when it begins, a change during it does not stretch it);
* per-request noise (optional): a request draws one factor from ``prefill_jitter`` for its
  prefill and one from ``decode_jitter`` for all its decode steps (empirical ratios of measured
  per-request times to the table's value, so the simulated spread is the measured spread);
  seeded, so a run is reproducible;
* when a request finishes its slot goes at once to the head of the central queue (FCFS); an
  arrival with several free replicas takes the least loaded (ties: the lowest index).

Outputs per request are those of :func:`cluster.sim.core.summarize`: ``ttft = first - arrival``,
``tpot = (finish - first) / (output - 1)``. Times are as measured on the host that produced the
table; they are predictions for that host, not for any catalog kind.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from cluster.exceptions import InputError
from cluster.sim.requests import Requests
from solvers import validate


def _positive_tuple(field: str, values: Sequence[float], *, allow_empty: bool = False) -> tuple[float, ...]:
    vals = tuple(values) if isinstance(values, (list, tuple)) else None
    if vals is None or (not vals and not allow_empty):
        raise InputError(f"{field}: expected a {'' if allow_empty else 'non-empty '}list of numbers > 0, got {values!r:.80}")
    for i, v in enumerate(vals):
        validate.real(f"{field}[{i}]", v, lo=0.0, lo_open=True)
    return tuple(float(v) for v in vals)


@dataclass(frozen=True, slots=True)
class MeasuredEngine:
    """One replica's measured timings (module docstring), seconds. ``decode_step_s`` and
    ``prefill_slowdown`` have one entry per number of requests holding a slot, 1..``max_concurrency``."""

    max_concurrency: int
    overhead_s: float
    prefill_base_s: float
    prefill_per_token_s: float
    decode_step_s: tuple[float, ...]
    prefill_slowdown: tuple[float, ...]
    prefill_jitter: tuple[float, ...] = ()
    decode_jitter: tuple[float, ...] = ()
    #: Where the figures come from (a result file, a host); carried into reports.
    source: str = ""

    def __post_init__(self) -> None:
        validate.integer("max_concurrency", self.max_concurrency, minimum=1, maximum=1024)
        validate.real("overhead_s", self.overhead_s, lo=0.0)
        validate.real("prefill_base_s", self.prefill_base_s, lo=0.0)
        validate.real("prefill_per_token_s", self.prefill_per_token_s, lo=0.0)
        for name in ("decode_step_s", "prefill_slowdown"):
            vals = _positive_tuple(name, getattr(self, name))
            if len(vals) != self.max_concurrency:
                raise InputError(f"{name}: expected {self.max_concurrency} values (one per concurrency 1.."
                                 f"{self.max_concurrency}), got {len(vals)}")
            object.__setattr__(self, name, vals)
        for name in ("prefill_jitter", "decode_jitter"):
            object.__setattr__(self, name, _positive_tuple(name, getattr(self, name), allow_empty=True))
        if not isinstance(self.source, str):
            raise InputError(f"source: expected a string, got {self.source!r:.80}")

    def prefill_s(self, prompt_tokens: int, k: int) -> float:
        """Prefill time of ``prompt_tokens`` with ``k`` requests holding a slot (no jitter)."""
        return (self.prefill_base_s + self.prefill_per_token_s * prompt_tokens) * self.prefill_slowdown[k - 1]

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> MeasuredEngine:
        """From :meth:`to_json`'s object (InputError naming a missing or unknown field)."""
        if not isinstance(doc, Mapping):
            raise InputError(f"measured engine: expected an object, got {type(doc).__name__}")
        fields = set(cls.__dataclass_fields__)
        unknown = sorted(set(doc) - fields)
        if unknown:
            raise InputError(f"measured engine: unknown field {unknown[0]!r}; allowed: {', '.join(sorted(fields))}")
        return cls(**{k: v for k, v in doc.items()})


def fit_measured(samples: Sequence[Mapping[str, Any]], *, max_concurrency: int, source: str = "") -> MeasuredEngine:
    """A :class:`MeasuredEngine` from per-request calibration samples, each
    ``{"concurrency": k, "prompt_tokens": p, "ttft_s": client TTFT, "engine_ttft_s": the actor's
    TTFT (tokenisation + prefill), "tpot_s": client TPOT}`` (``tpot_s`` None for one-token outputs).

    * ``prefill_base_s``, ``prefill_per_token_s``: at concurrency 1, least squares through the
      median ``engine_ttft_s`` of each prompt length ``p`` (weighted by its sample count; slope and
      base clipped at 0);
    * ``overhead_s``: the median of ``ttft_s - engine_ttft_s`` at concurrency 1;
    * ``prefill_slowdown[k-1]``: the median ratio of ``engine_ttft_s`` to the concurrency-1 line;
    * ``decode_step_s[k-1]``: the median ``tpot_s`` at concurrency ``k``;
    * jitter: each sample's ratio to its table value (prefill at every ``k``, decode likewise).

    Every concurrency 1..``max_concurrency`` needs samples (InputError naming the missing one).
    """
    validate.integer("max_concurrency", max_concurrency, minimum=1, maximum=1024)
    by_k: dict[int, list[Mapping[str, Any]]] = {}
    for s in samples:
        by_k.setdefault(int(s["concurrency"]), []).append(s)
    for k in range(1, max_concurrency + 1):
        if not by_k.get(k):
            raise InputError(f"samples: no sample at concurrency {k}; every concurrency 1..{max_concurrency} is needed")
    one = by_k[1]
    # the prefill line: least squares through the median prefill of each prompt length (weighted by
    # how many samples it has), so one slow outlier moves a median, not the line
    groups: dict[int, list[float]] = {}
    for s in one:
        groups.setdefault(int(s["prompt_tokens"]), []).append(float(s["engine_ttft_s"]))
    gp = np.array(sorted(groups), dtype=float)
    gm = np.array([np.median(groups[int(p)]) for p in gp])
    if gp.size >= 2:
        w = np.sqrt([len(groups[int(p)]) for p in gp])
        slope, base = np.polyfit(gp, gm, 1, w=w)
        slope = max(float(slope), 0.0)
        base = max(float(np.average(gm - slope * gp, weights=w ** 2)), 0.0)
    else:
        slope, base = 0.0, float(gm[0])
    overhead = max(0.0, float(np.median([s["ttft_s"] - s["engine_ttft_s"] for s in one])))

    def line(p: float) -> float:
        return base + slope * p

    slow, dec, pj, dj = [], [], [], []
    for k in range(1, max_concurrency + 1):
        ratios = [s["engine_ttft_s"] / line(s["prompt_tokens"]) for s in by_k[k] if line(s["prompt_tokens"]) > 0]
        sk = float(np.median(ratios)) if ratios else 1.0
        slow.append(sk)
        pj.extend(r / sk for r in ratios)
        tp = [s["tpot_s"] for s in by_k[k] if s.get("tpot_s")]
        if not tp:
            raise InputError(f"samples: no decode sample (output of 2+ tokens) at concurrency {k}")
        dk = float(np.median(tp))
        dec.append(dk)
        dj.extend(t / dk for t in tp)
    return MeasuredEngine(max_concurrency=max_concurrency, overhead_s=overhead, prefill_base_s=base,
                          prefill_per_token_s=slope, decode_step_s=tuple(dec), prefill_slowdown=tuple(slow),
                          prefill_jitter=tuple(sorted(pj)), decode_jitter=tuple(sorted(dj)), source=source)


@dataclass(frozen=True)
class MeasuredRun:
    """Per request: ``first_token`` and ``finish`` times (s), ``replica`` index, ``admitted`` (the
    instant it got a slot); per replica: the most requests it held at once (``peak``)."""

    first_token: np.ndarray
    finish: np.ndarray
    replica: np.ndarray
    admitted: np.ndarray
    peak: np.ndarray


def run_measured(engine: MeasuredEngine, reqs: Requests, *, replicas: int = 1, seed: int = 0,
                 jitter: bool = True) -> MeasuredRun:
    """Simulate ``reqs`` on ``replicas`` identical replicas of ``engine`` (module docstring)."""
    validate.integer("replicas", replicas, minimum=1, maximum=100_000)
    n = len(reqs)
    rng = np.random.default_rng(seed)
    use_pj = jitter and bool(engine.prefill_jitter)
    use_dj = jitter and bool(engine.decode_jitter)
    pj = rng.choice(np.asarray(engine.prefill_jitter), n) if use_pj else np.ones(n)
    dj = rng.choice(np.asarray(engine.decode_jitter), n) if use_dj else np.ones(n)
    arrival, P, O = reqs.arrival.tolist(), reqs.input_len.tolist(), reqs.output_len.tolist()
    first, finish, admitted = [math.nan] * n, [math.nan] * n, [math.nan] * n
    where = [-1] * n
    held = [0] * replicas
    peak = [0] * replicas
    left = [0] * n  # decode steps still to run
    queue: deque[int] = deque()
    # events: (time, kind, order, request); kind 0 = a step of the request ends, 1 = an arrival.
    # Ends sort before arrivals at the same instant (a slot freed at t serves a request arriving at t).
    events: list[tuple[float, int, int, int]] = [(arrival[i], 1, i, i) for i in range(n)]
    heapq.heapify(events)
    order = n
    cap = engine.max_concurrency

    def start(i: int, r: int, t: float) -> None:
        nonlocal order
        held[r] += 1
        peak[r] = max(peak[r], held[r])
        where[i], admitted[i] = r, t
        begin = t + engine.overhead_s
        dt = engine.prefill_s(P[i], held[r]) * pj[i]
        left[i] = O[i] - 1
        order += 1
        heapq.heappush(events, (begin + dt, 0, order, i))

    while events:
        t, kind, _, i = heapq.heappop(events)
        if kind == 1:
            free = [r for r in range(replicas) if held[r] < cap]
            if free and not queue:
                start(i, min(free, key=lambda r: (held[r], r)), t)
            else:
                queue.append(i)
            continue
        r = where[i]
        if math.isnan(first[i]):
            first[i] = t
        if left[i] > 0:
            left[i] -= 1
            order += 1
            heapq.heappush(events, (t + engine.decode_step_s[held[r] - 1] * dj[i], 0, order, i))
            continue
        finish[i] = t
        held[r] -= 1
        if queue:
            start(queue.popleft(), r, t)
    return MeasuredRun(np.asarray(first), np.asarray(finish), np.asarray(where), np.asarray(admitted),
                       np.asarray(peak))


def latency_percentiles(reqs: Requests, first: np.ndarray, finish: np.ndarray) -> dict[str, float | None]:
    """p50 / p99 / mean of TTFT and TPOT in ms (TPOT over outputs of 2+ tokens), numpy's linear
    percentile as :func:`cluster.sim.core.summarize` uses."""
    ttft = (np.asarray(first) - reqs.arrival) * 1e3
    o = reqs.output_len
    multi = o > 1
    tpot = (np.asarray(finish)[multi] - np.asarray(first)[multi]) / (o[multi] - 1) * 1e3

    def pct(x: np.ndarray, q: float) -> float | None:
        return None if x.size == 0 else float(np.percentile(x, q))

    return {"p50_ttft_ms": pct(ttft, 50), "p99_ttft_ms": pct(ttft, 99), "mean_ttft_ms": float(ttft.mean()) if ttft.size else None,
            "p50_tpot_ms": pct(tpot, 50), "p99_tpot_ms": pct(tpot, 99), "mean_tpot_ms": float(tpot.mean()) if tpot.size else None}


__all__ = ["MeasuredEngine", "MeasuredRun", "fit_measured", "latency_percentiles", "run_measured"]
