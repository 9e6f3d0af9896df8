"""A replica timed by a MEASURED step-time table, serving as flotilla's ExpertActor does.

The continuous-batching engines (:mod:`cluster.sim.engine_fast`, :mod:`cluster.sim.engine_simpy`)
model a vLLM-like engine that batches every running sequence into one step. flotilla's own
ExpertActor does not batch: each request runs alone (batch 1, its own KV cache) in one of the
actor's ``max_concurrency`` threads, and concurrent requests share the host's cores. The Router
dispatches a request only to a replica with a free slot (``active < capacity``); requests that
find none queue in the slot pool, and a released slot goes to the oldest waiter whose pick takes
it (:mod:`actors.replica_pool`). This module simulates exactly that policy,
timed by a table measured on the real serving path (``bench/bench_fidelity.py`` measures one):

* a request admitted at ``t`` (a slot free) spends ``overhead_s`` (router, Ray call, first
  streamed item), then its prefill, then ``output - 1`` decode steps; the end of the prefill is
  its first token;
* per-concurrency table (``prefill_contention`` empty): the prefill takes ``(prefill_base_s +
  prefill_per_token_s * p) * prefill_slowdown[k-1]`` for ``p`` prompt tokens, ``k`` the requests
  holding a slot of the replica when it starts; each decode step ``decode_step_s[k-1]`` (``k`` at
  the step's start: a change during a step does not stretch it);
* phased table (``prefill_contention``, ``decode_contention`` given): a prefill is
  ``prefill_s(p, 1)`` of work and a decode ``(output - 1) * decode_step_s[0]``, done at rate
  ``1 / (1 + a * others in prefill + b * others decoding)`` (``(a, b)`` the phase's contention,
  the others those holding a slot of the same replica), the rate changing the instant another
  request starts or ends a phase. On the CPU path two decodes slow each other much more than a
  decode and a prefill do, so how a replay mixes the phases matters, not only how many run;
* per-request noise (optional): a request draws one factor from ``prefill_jitter`` for its
  prefill and one from ``decode_jitter`` for its decode (empirical ratios of measured per-request
  times to the table's value, so the simulated spread is the measured spread); seeded, so a run
  is reproducible;
* when a request finishes its slot goes at once to a waiting request: the oldest (``"fifo"``, the
  Router's slot pool) or any of them, uniformly at random (``hand_off="random"``, what the pool did
  while a release woke every waiter and the first to take the lock won); an arrival
  with several free replicas takes the least loaded (ties: the lowest index).

The host's speed drifts (a shared machine): :func:`speed_factor` says how much slower a stretch
of calibration ran than the table, and :meth:`MeasuredEngine.scaled` times a replay by it.

Outputs per request are those of :func:`cluster.sim.core.summarize`: ``ttft = first - arrival``,
``tpot = (finish - first) / (output - 1)``. Times are as measured on the host that produced the
table; they are predictions for that host, not for any catalog kind.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
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
    #: Phase contention (both or neither; module docstring): ``(a, b)``: a prefill takes ``1 + a *
    #: (others in prefill) + b * (others decoding)`` times its time alone, at every instant.
    prefill_contention: tuple[float, ...] = ()
    #: Likewise for a decode step (alone: ``decode_step_s[0]``).
    decode_contention: tuple[float, ...] = ()
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
        for name in ("prefill_contention", "decode_contention"):
            vals = getattr(self, name)
            if not isinstance(vals, (list, tuple)) or len(vals) not in (0, 2):
                raise InputError(f"{name}: expected [per other request in prefill, per other request decoding] (2 numbers >= 0) "
                                 f"or [], got {vals!r:.80}")
            for i, v in enumerate(vals):
                validate.real(f"{name}[{i}]", v, lo=0.0)
            object.__setattr__(self, name, tuple(float(v) for v in vals))
        if bool(self.prefill_contention) != bool(self.decode_contention):
            raise InputError("prefill_contention, decode_contention: give both or neither")
        if not isinstance(self.source, str):
            raise InputError(f"source: expected a string, got {self.source!r:.80}")

    def prefill_s(self, prompt_tokens: int, k: int) -> float:
        """Prefill time of ``prompt_tokens`` with ``k`` requests holding a slot (no jitter)."""
        return (self.prefill_base_s + self.prefill_per_token_s * prompt_tokens) * self.prefill_slowdown[k - 1]

    def scaled(self, factor: float) -> MeasuredEngine:
        """The same table on a host ``factor`` times slower (> 1) or faster: every time multiplied."""
        validate.real("factor", factor, lo=0.0, lo_open=True)
        return MeasuredEngine(max_concurrency=self.max_concurrency, overhead_s=self.overhead_s * factor,
                              prefill_base_s=self.prefill_base_s * factor, prefill_per_token_s=self.prefill_per_token_s * factor,
                              decode_step_s=tuple(x * factor for x in self.decode_step_s), prefill_slowdown=self.prefill_slowdown,
                              prefill_jitter=self.prefill_jitter, decode_jitter=self.decode_jitter,
                              prefill_contention=self.prefill_contention, decode_contention=self.decode_contention,
                              source=self.source)

    @property
    def phased(self) -> bool:
        """Timed by phase contention (:attr:`prefill_contention`) rather than by concurrency."""
        return bool(self.prefill_contention)

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


class _Segments:
    """Every sample's prefill ``[first_s - engine_ttft_s, first_s]`` and decode ``[first_s,
    end_s]`` (instants on one clock, s) cut where another sample starts or ends a phase: per piece
    its owner, phase (0 prefill, 1 decode), length and the number of OTHER samples in prefill and
    decoding during it. Samples measured at different times simply do not overlap."""

    def __init__(self, samples: Sequence[Mapping[str, Any]]) -> None:
        self.n = len(samples)
        first = np.array([float(s["first_s"]) for s in samples])
        pre0 = first - np.array([float(s["engine_ttft_s"]) for s in samples])
        end = np.array([float(s["end_s"]) for s in samples])
        order = np.argsort(pre0)
        starts = pre0[order]
        owner, phase, dt, npre, ndec = [], [], [], [], []
        for i in range(self.n):
            for ph, (lo, hi) in enumerate(((pre0[i], first[i]), (first[i], end[i]))):
                if hi <= lo:
                    continue
                near = order[: np.searchsorted(starts, hi)]
                near = near[(end[near] > lo) & (near != i)]
                cuts = np.unique(np.concatenate([[lo, hi], pre0[near], first[near], end[near]]))
                cuts = cuts[(cuts >= lo) & (cuts <= hi)]
                for a, b in zip(cuts[:-1], cuts[1:]):
                    mid = 0.5 * (a + b)
                    owner.append(i)
                    phase.append(ph)
                    dt.append(b - a)
                    npre.append(int(np.sum((pre0[near] <= mid) & (first[near] > mid))))
                    ndec.append(int(np.sum((first[near] <= mid) & (end[near] > mid))))
        self.owner, self.phase = np.array(owner, dtype=int), np.array(phase, dtype=int)
        self.dt, self.npre, self.ndec = np.array(dt, dtype=float), np.array(npre, dtype=float), np.array(ndec, dtype=float)

    def work(self, ph: int, coef: Sequence[float], speed: np.ndarray) -> np.ndarray:
        """Per sample: the time alone its phase ``ph`` did at ``speed`` under contention ``coef``."""
        m = self.phase == ph
        w = self.dt[m] / speed[self.owner[m]] / (1.0 + coef[0] * self.npre[m] + coef[1] * self.ndec[m])
        return np.bincount(self.owner[m], weights=w, minlength=self.n)

    def contended(self, ph: int) -> np.ndarray:
        """Per sample: whether any other sample ran during its phase ``ph``."""
        m = (self.phase == ph) & (self.npre + self.ndec > 0)
        return np.bincount(self.owner[m], minlength=self.n) > 0


def _is_phased(samples: Sequence[Mapping[str, Any]]) -> bool:
    return bool(samples) and all("first_s" in s and "end_s" in s for s in samples)


def _contention(segs: _Segments, ph: int, alone: np.ndarray, speed: np.ndarray) -> tuple[float, float]:
    """``(a, b)`` >= 0 so that each contended sample's phase, undone at rate ``1 / (1 + a * others
    in prefill + b * others decoding)``, is the time ``alone`` says: robust least squares (soft L1)
    of the log ratio."""
    from scipy.optimize import least_squares

    m = segs.contended(ph) & np.isfinite(alone) & (alone > 0)
    if not m.any():
        return 0.0, 0.0

    def resid(c: np.ndarray) -> np.ndarray:
        return np.log(segs.work(ph, c, speed)[m]) - np.log(alone[m])

    got = least_squares(resid, x0=[0.3, 0.3], bounds=([0.0, 0.0], [np.inf, np.inf]), loss="soft_l1", f_scale=0.1)
    return float(got.x[0]), float(got.x[1])


def _alone(engine: MeasuredEngine, samples: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: its prefill's and its whole decode's time alone by the table (nan: no decode)."""
    pre = np.array([engine.prefill_base_s + engine.prefill_per_token_s * float(s["prompt_tokens"]) for s in samples])
    dec = np.array([(float(s["end_s"]) - float(s["first_s"])) / float(s["tpot_s"]) * engine.decode_step_s[0]
                    if s.get("tpot_s") else np.nan for s in samples], dtype=float)  # (tokens - 1) decode steps
    return np.where(pre > 0, pre, np.nan), np.where(dec > 0, dec, np.nan)


def _ratios(engine: MeasuredEngine, samples: Sequence[Mapping[str, Any]], segs: _Segments | None,
            speed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per sample its prefill and its TPOT over the table's value for it (nan: none), durations
    divided by ``speed``; with ``segs`` and a phased table, the time alone each phase did under the
    table's contention over the table's time alone."""
    k = np.array([int(s["concurrency"]) for s in samples])
    if np.any((k < 1) | (k > engine.max_concurrency)):
        raise InputError(f"samples: a concurrency outside 1..{engine.max_concurrency}")
    speed = np.ones(len(samples)) if speed is None else speed
    if engine.phased and segs is not None:
        pre_alone, dec_alone = _alone(engine, samples)
        return (segs.work(0, engine.prefill_contention, speed) / pre_alone,
                segs.work(1, engine.decode_contention, speed) / dec_alone)
    line = np.array([engine.prefill_base_s + engine.prefill_per_token_s * float(s["prompt_tokens"]) for s in samples])
    pre = np.array([float(s["engine_ttft_s"]) for s in samples]) / speed / np.where(line > 0, line, np.nan)
    tpot = np.array([float(s["tpot_s"]) if s.get("tpot_s") else np.nan for s in samples]) / speed
    return pre / np.array(engine.prefill_slowdown)[k - 1], tpot / np.array(engine.decode_step_s)[k - 1]


def _fit_once(samples: Sequence[Mapping[str, Any]], max_concurrency: int, segs: _Segments | None,
              speed: np.ndarray, source: str) -> MeasuredEngine:
    by_k: dict[int, list[int]] = {}
    for i, s in enumerate(samples):
        by_k.setdefault(int(s["concurrency"]), []).append(i)
    for k in range(1, max_concurrency + 1):
        if not by_k.get(k):
            raise InputError(f"samples: no sample at concurrency {k}; every concurrency 1..{max_concurrency} is needed")
    ettft = np.array([float(s["engine_ttft_s"]) for s in samples]) / speed
    # the prefill line: least squares through the median prefill of each prompt length (weighted by
    # how many samples it has), so one slow outlier moves a median, not the line
    groups: dict[int, list[float]] = {}
    for i in by_k[1]:
        groups.setdefault(int(samples[i]["prompt_tokens"]), []).append(float(ettft[i]))
    gp = np.array(sorted(groups), dtype=float)
    gm = np.array([np.median(groups[int(p)]) for p in gp])
    if gp.size >= 2:
        w = np.sqrt([len(groups[int(p)]) for p in gp])
        slope, base = np.polyfit(gp, gm, 1, w=w)
        slope = max(float(slope), 0.0)
        base = max(float(np.average(gm - slope * gp, weights=w ** 2)), 0.0)
    else:
        slope, base = 0.0, float(gm[0])
    overhead = max(0.0, float(np.median([(float(samples[i]["ttft_s"]) - float(samples[i]["engine_ttft_s"])) / speed[i]
                                         for i in by_k[1]])))
    line = np.array([base + slope * float(s["prompt_tokens"]) for s in samples])
    pre = ettft / np.where(line > 0, line, np.nan)
    tpot = np.array([float(s["tpot_s"]) if s.get("tpot_s") else np.nan for s in samples]) / speed
    slow, dec = [], []
    for k in range(1, max_concurrency + 1):
        r = pre[by_k[k]][np.isfinite(pre[by_k[k]])]
        slow.append(float(np.median(r)) if r.size else 1.0)
        tp = tpot[by_k[k]][np.isfinite(tpot[by_k[k]])]
        if not tp.size:
            raise InputError(f"samples: no decode sample (output of 2+ tokens) at concurrency {k}")
        dec.append(float(np.median(tp)))
    engine = MeasuredEngine(max_concurrency=max_concurrency, overhead_s=overhead, prefill_base_s=base,
                            prefill_per_token_s=slope, decode_step_s=tuple(dec), prefill_slowdown=tuple(slow), source=source)
    if segs is None:
        return engine
    pre_alone, dec_alone = _alone(engine, samples)
    return dataclasses.replace(engine, prefill_contention=_contention(segs, 0, pre_alone, speed),
                               decode_contention=_contention(segs, 1, dec_alone, speed))


def fit_measured(samples: Sequence[Mapping[str, Any]], *, max_concurrency: int, source: str = "") -> MeasuredEngine:
    """A :class:`MeasuredEngine` from per-request calibration samples, each
    ``{"concurrency": k, "prompt_tokens": p, "ttft_s": client TTFT, "engine_ttft_s": the actor's
    TTFT (tokenisation + prefill), "tpot_s": client TPOT}`` (``tpot_s`` None for one-token outputs),
    optionally with ``"first_s"``, ``"end_s"`` (the instants of the first chunk and of the end, on
    one clock, s) and ``"measurement"`` (which closed-loop measurement it came from).

    * ``prefill_base_s``, ``prefill_per_token_s``: at concurrency 1, least squares through the
      median ``engine_ttft_s`` of each prompt length ``p`` (weighted by its sample count; slope and
      base clipped at 0);
    * ``overhead_s``: the median of ``ttft_s - engine_ttft_s`` at concurrency 1;
    * ``prefill_slowdown[k-1]``: the median ratio of ``engine_ttft_s`` to the concurrency-1 line;
    * ``decode_step_s[k-1]``: the median ``tpot_s`` at concurrency ``k``;
    * with the instants on every sample, the phase contention (``prefill_contention``,
      ``decode_contention``): the coefficients under which each sample's prefill (decode), cut
      into pieces where the number of other samples in prefill and decoding holds still and each
      piece undone at the rate the coefficients give, is the line's time (``(tokens - 1) *
      decode_step_s[0]``): robust least squares (soft L1) of the log ratio;
    * jitter: each sample's ratio to the table's value for it (prefill and decode; phased: the
      time alone its phase did over the table's time alone);
    * with ``measurement`` on every sample: the host's speed drifts between measurements, so the
      table is fitted on the samples' durations divided by their measurement's speed against a
      first fit (the median of its samples' ratios); the jitter is then the spread within a
      measurement, and the drift is left to :func:`speed_factor` and :meth:`MeasuredEngine.scaled`.

    Every concurrency 1..``max_concurrency`` needs samples (InputError naming the missing one).
    """
    validate.integer("max_concurrency", max_concurrency, minimum=1, maximum=1024)
    samples = list(samples)
    segs = _Segments(samples) if _is_phased(samples) else None
    speed = np.ones(len(samples))
    engine = _fit_once(samples, max_concurrency, segs, speed, source)
    if samples and all("measurement" in s for s in samples):
        pre, dec = _ratios(engine, samples, segs)
        marks = [s["measurement"] for s in samples]
        for m in set(marks):
            idx = [i for i, x in enumerate(marks) if x == m]
            r = np.concatenate([pre[idx], dec[idx]])
            r = r[np.isfinite(r)]
            speed[idx] = float(np.median(r)) if r.size else 1.0
        engine = _fit_once(samples, max_concurrency, segs, speed, source)
    pre, dec = _ratios(engine, samples, segs, speed)
    return dataclasses.replace(engine, prefill_jitter=tuple(sorted(pre[np.isfinite(pre)].tolist())),
                               decode_jitter=tuple(sorted(dec[np.isfinite(dec)].tolist())))


def speed_factor(engine: MeasuredEngine, samples: Sequence[Mapping[str, Any]]) -> float:
    """How much slower (> 1) the host ran in ``samples`` (calibration samples as
    :func:`fit_measured` takes) than ``engine`` says: the median, over every sample's prefill and
    decode, of the measured time over the table's for it (with the phase overlaps when the table
    is phased and the samples carry their instants). Multiply the table by it
    (:meth:`MeasuredEngine.scaled`) to time a stretch of work these samples bracket."""
    samples = list(samples)
    pre, dec = _ratios(engine, samples, _Segments(samples) if _is_phased(samples) else None)
    r = np.concatenate([pre, dec])
    r = r[np.isfinite(r)]
    if not r.size:
        raise InputError("samples: no sample to compare with the table")
    return float(np.median(r))


@dataclass(frozen=True)
class MeasuredRun:
    """Per request: ``first_token`` and ``finish`` times (s), ``replica`` index, ``admitted`` (the
    instant it got a slot); per replica: the most requests it held at once (``peak``)."""

    first_token: np.ndarray
    finish: np.ndarray
    replica: np.ndarray
    admitted: np.ndarray
    peak: np.ndarray


#: How a freed slot picks among the waiting requests: ``"fifo"`` (the oldest; what the Router's slot
#: pool does) or ``"random"`` (any waiter, uniformly).
HAND_OFFS = ("fifo", "random")


def run_measured(engine: MeasuredEngine, reqs: Requests, *, replicas: int = 1, seed: int = 0,
                 jitter: bool = True, hand_off: str = "fifo") -> MeasuredRun:
    """Simulate ``reqs`` on ``replicas`` identical replicas of ``engine`` (module docstring)."""
    validate.integer("replicas", replicas, minimum=1, maximum=100_000)
    if hand_off not in HAND_OFFS:
        raise InputError(f"hand_off: {hand_off!r:.80}; allowed: {', '.join(HAND_OFFS)}")
    n = len(reqs)
    rng = np.random.default_rng(seed)
    use_pj = jitter and bool(engine.prefill_jitter)
    use_dj = jitter and bool(engine.decode_jitter)
    pj = rng.choice(np.asarray(engine.prefill_jitter), n) if use_pj else np.ones(n)
    dj = rng.choice(np.asarray(engine.decode_jitter), n) if use_dj else np.ones(n)
    if engine.phased:
        return _run_phased(engine, reqs, replicas, pj, dj, rng, hand_off)
    arrival, P, O = reqs.arrival.tolist(), reqs.input_len.tolist(), reqs.output_len.tolist()
    first, finish, admitted = [math.nan] * n, [math.nan] * n, [math.nan] * n
    where = [-1] * n
    held = [0] * replicas
    peak = [0] * replicas
    left = [0] * n  # decode steps still to run
    queue: list[int] = []  # waiting requests, oldest first
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
            j = 0 if hand_off == "fifo" or len(queue) == 1 else int(rng.integers(len(queue)))
            start(queue.pop(j), r, t)
    return MeasuredRun(np.asarray(first), np.asarray(finish), np.asarray(where), np.asarray(admitted),
                       np.asarray(peak))


def _run_phased(engine: MeasuredEngine, reqs: Requests, replicas: int, pj: np.ndarray, dj: np.ndarray,
                rng: np.random.Generator, hand_off: str) -> MeasuredRun:
    """:func:`run_measured` for a phased table: every request on a replica progresses through its
    overhead (a plain delay), its prefill (``prefill_s(p, 1) * jitter`` of work) and its decode
    (``(o - 1) * decode_step_s[0] * jitter``) at rate ``1 / (1 + a * others in prefill + b * others
    decoding)``, the rates recomputed whenever a request on the replica changes phase, arrives or leaves."""
    n = len(reqs)
    arrival, P, O = reqs.arrival.tolist(), reqs.input_len.tolist(), reqs.output_len.tolist()
    first, finish, admitted = [math.nan] * n, [math.nan] * n, [math.nan] * n
    where = [-1] * n
    peak = [0] * replicas
    active: list[list[int]] = [[] for _ in range(replicas)]
    last = [0.0] * replicas
    version = [0] * replicas
    phase = [0] * n  # 0 overhead, 1 prefill, 2 decode
    work = [0.0] * n  # seconds alone left in the current phase
    rate = [1.0] * n
    (app, apd), (adp, add) = engine.prefill_contention, engine.decode_contention
    queue: list[int] = []  # waiting requests, oldest first
    # events: (time, kind, order, payload); kind 0 = the next phase end on replica ``payload``
    # (stale unless its version still matches), 1 = the arrival of request ``payload``
    events: list[tuple[float, int, int, int, int]] = [(arrival[i], 1, i, i, 0) for i in range(n)]
    heapq.heapify(events)
    order = n
    cap = engine.max_concurrency

    def advance(r: int, t: float) -> None:
        dt = t - last[r]
        if dt > 0:
            for i in active[r]:
                work[i] -= dt * rate[i]
        last[r] = t

    def settle(r: int, t: float) -> None:
        """Move every request whose phase is done to its next one; refill freed slots; reschedule."""
        nonlocal order
        moved = True
        while moved:
            moved = False
            for i in list(active[r]):
                if work[i] > 1e-9 * max(1.0, t):
                    continue
                moved = True
                if phase[i] == 0:
                    phase[i], work[i] = 1, engine.prefill_s(P[i], 1) * pj[i]
                elif phase[i] == 1:
                    first[i] = t
                    phase[i], work[i] = 2, (O[i] - 1) * engine.decode_step_s[0] * dj[i]
                else:
                    finish[i] = t
                    active[r].remove(i)
                    if queue:
                        j = 0 if hand_off == "fifo" or len(queue) == 1 else int(rng.integers(len(queue)))
                        admit(queue.pop(j), r, t)
        npre = sum(1 for i in active[r] if phase[i] == 1)
        ndec = sum(1 for i in active[r] if phase[i] == 2)
        nxt = math.inf
        for i in active[r]:
            if phase[i] == 1:
                rate[i] = 1.0 / (1.0 + app * (npre - 1) + apd * ndec)
            elif phase[i] == 2:
                rate[i] = 1.0 / (1.0 + adp * npre + add * (ndec - 1))
            else:
                rate[i] = 1.0
            nxt = min(nxt, work[i] / rate[i])
        version[r] += 1
        if nxt < math.inf:
            order += 1
            heapq.heappush(events, (t + nxt, 0, order, r, version[r]))

    def admit(i: int, r: int, t: float) -> None:
        active[r].append(i)
        peak[r] = max(peak[r], len(active[r]))
        where[i], admitted[i] = r, t
        phase[i], work[i], rate[i] = 0, engine.overhead_s, 1.0

    while events:
        t, kind, _, x, ver = heapq.heappop(events)
        if kind == 1:
            free = [r for r in range(replicas) if len(active[r]) < cap]
            if free and not queue:
                r = min(free, key=lambda r: (len(active[r]), r))
                advance(r, t)
                admit(x, r, t)
                settle(r, t)
            else:
                queue.append(x)
            continue
        if ver != version[x]:
            continue
        advance(x, t)
        settle(x, t)
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


__all__ = ["HAND_OFFS", "MeasuredEngine", "MeasuredRun", "fit_measured", "latency_percentiles", "run_measured", "speed_factor"]
