"""The fast engine: the same semantics as :mod:`cluster.sim.engine_simpy`, with decode runs vectorised.

Between two events that change a replica's batch (a completion, an admission, an arrival routed to
it) its engine runs identical decode steps over a fixed set of ``b`` sequences whose summed
context grows by ``b`` a step. Step ``i`` of such a run, ``i = 0 .. k-1`` (``k`` = steps until the
next sequence finishes, read off a heap of finishing step numbers), has::

    C_i  = C_0 + i b
    dt_i = max(b F/(P e_c) + C_i A/(P e_a), W/(B e_m) + C_i kv/(B e_m)) + o_s

so the whole run is one numpy expression and its step end times one ``cumsum`` started at the run's
start time: sequential float additions, the very additions the simpy engine makes step by step, so
both engines produce the same times bit for bit (up to how simpy rounds an arrival instant). A
request routed to a replica in the middle of a run cuts the run after the step in progress
(``bisect`` in the end times). Per sequence the engine keeps only (finishing step, index) in a heap
and the replica's summed context; nothing loops over the batch per step.

The router must see each candidate's outstanding requests at an arrival instant, so replicas are
advanced lazily: ``wake[r]`` is the end of replica ``r``'s current step or run (no completion can
happen before it), and at an arrival only candidates with ``wake <= t`` are advanced.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_right
from collections import deque
from collections.abc import Callable

import numpy as np

from cluster.sim.model import EngineConfig, ReplicaSpec, StepCost
from cluster.sim.requests import Requests
from cluster.sim.routing import Router
from cluster.sim.trace_result import RawRun

_IDLE, _STEP, _RUN = 0, 1, 2
#: Runs of at most this many steps are timed in a Python loop (cheaper than numpy's call overhead;
#: the same float operations, so the same results).
_SMALL_RUN = 6
#: A decode run is timed this many steps at a time (arrivals usually cut runs short); a block that
#: ends before the next completion is followed by the next block.
_BLOCK = 48
_AR = np.arange(_BLOCK, dtype=np.float64)
_INF = math.inf
#: Arrivals between two progress reports.
PROGRESS_EVERY = 8192


class _Rep:
    __slots__ = ("cost", "cap", "q", "pre", "prog", "b", "sumc", "g", "heap", "reserved", "mode", "end",
                 "start", "chunks", "has_decode", "dt", "busy", "ends", "dts", "busys", "length", "last", "out")

    def __init__(self, cost: StepCost) -> None:
        self.cost, self.cap = cost, cost.kv_capacity
        self.q: deque[int] = deque()
        self.pre: list[int] = []          # chunked prefill: admitted, prompt not finished (FCFS)
        self.prog: dict[int, int] = {}    # prompt tokens done, per prefilling sequence
        self.b = self.sumc = self.g = self.reserved = 0
        self.heap: list[tuple[int, int]] = []
        self.mode, self.end, self.start = _IDLE, _INF, 0.0
        self.chunks: list[tuple[int, int]] = []
        self.has_decode = False
        self.dt = self.busy = 0.0
        self.ends: list[float] | np.ndarray = []
        self.dts: list[float] | np.ndarray = []
        self.busys: list[float] | np.ndarray = []
        self.length = 0
        self.last = 0.0
        self.out = 0


def run_fast(replicas: list[ReplicaSpec], router: Router, reqs: Requests, engine: EngineConfig,
             progress: Callable[[int, int], None] | None = None) -> RawRun:
    """Simulate ``reqs`` on ``replicas`` (module docstring); ``progress(done, total)`` is called
    every :data:`PROGRESS_EVERY` arrivals."""
    n, nr = len(reqs), len(replicas)
    res = RawRun.empty(n, nr)
    first = [math.nan] * n
    finish = [math.nan] * n
    routed = [0] * n
    busy_s, busy_term, steps, area = [0.0] * nr, [0.0] * nr, [0] * nr, [0.0] * nr
    outstanding = [0] * nr
    wake = [_INF] * nr
    reps = [_Rep(s.cost) for s in replicas]
    deferred: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(nr)]
    a = reqs.arrival.tolist()
    P, O = reqs.input_len.tolist(), reqs.output_len.tolist()
    buckets = router.buckets_of(reqs.input_len, reqs.output_len).tolist()
    T, max_seqs, chunked = engine.max_batched_tokens, engine.max_num_seqs, engine.chunked_prefill

    def done(rep: _Rep, r: int, i: int, now: float) -> None:
        area[r] += rep.out * (now - rep.last)
        rep.last = now
        rep.out -= 1
        outstanding[r] -= 1
        rep.reserved -= P[i] + O[i]
        finish[i] = now

    def decode_done(rep: _Rep, r: int, now: float) -> None:
        heap = rep.heap
        while heap and heap[0][0] == rep.g:
            _, i = heapq.heappop(heap)
            rep.b -= 1
            rep.sumc -= P[i] + O[i]
            done(rep, r, i, now)

    def plan_run(rep: _Rep, s: float) -> None:
        c = rep.cost
        b, c0 = rep.b, rep.sumc
        k = min(rep.heap[0][0] - rep.g, _BLOCK)  # the run ends at the next completion, or a block
        if k <= _SMALL_RUN:
            ends, dts, busys = [], [], []
            t = s
            for i in range(k):
                dt, bz = c.step(b, c0 + i * b, c0 + i * b)
                t = t + dt
                ends.append(t)
                dts.append(dt)
                busys.append(bz)
        else:
            ci = c0 + b * _AR[:k]
            tc = b * c.tok_comp + ci * c.attn_comp
            tm = c.weights_mem + ci * c.kv_mem
            acc = np.empty(k + 1)
            acc[0] = s
            np.maximum(tc, tm, out=acc[1:])
            acc[1:] += c.overhead
            ends = np.add.accumulate(acc)[1:]
            dts, busys = None, (tc, tm)
        rep.mode, rep.start, rep.ends, rep.dts, rep.busys, rep.length = _RUN, s, ends, dts, busys, k
        rep.end = float(ends[k - 1])

    def plan(rep: _Rep, s: float) -> None:
        q, cap = rep.q, rep.cap
        chunks: list[tuple[int, int]] = []
        if not chunked:
            tokens = pairs = 0
            while q:
                i = q[0]
                need = P[i] + O[i]
                if rep.b + len(chunks) >= max_seqs or rep.reserved + need > cap or (chunks and tokens + P[i] > T):
                    break
                q.popleft()
                rep.reserved += need
                tokens += P[i]
                pairs += P[i] * (P[i] + 1) // 2
                chunks.append((i, P[i]))
            if chunks:
                rep.dt, rep.busy = rep.cost.step(tokens, pairs, tokens)
                rep.mode, rep.chunks, rep.has_decode, rep.start = _STEP, chunks, False, s
                rep.end = s + rep.dt
                return
        else:
            pre, prog = rep.pre, rep.prog
            if pre or (q and rep.b + len(pre) < max_seqs and rep.reserved + P[q[0]] + O[q[0]] <= cap):
                left = T - rep.b
                ntok, pairs, kv = rep.b, rep.sumc, rep.sumc
                for i in pre:
                    if left <= 0:
                        break
                    k = prog[i]
                    c = min(P[i] - k, left)
                    chunks.append((i, c))
                    ntok += c
                    pairs += c * k + c * (c + 1) // 2
                    kv += k + c
                    left -= c
                while left > 0 and q and rep.b + len(pre) < max_seqs and rep.reserved + P[q[0]] + O[q[0]] <= cap:
                    i = q.popleft()
                    rep.reserved += P[i] + O[i]
                    pre.append(i)
                    prog[i] = 0
                    c = min(P[i], left)
                    chunks.append((i, c))
                    ntok += c
                    pairs += c * (c + 1) // 2
                    kv += c
                    left -= c
                rep.dt, rep.busy = rep.cost.step(ntok, pairs, kv)
                rep.mode, rep.chunks, rep.has_decode, rep.start = _STEP, chunks, rep.b > 0, s
                rep.end = s + rep.dt
                return
        if rep.b:
            plan_run(rep, s)
        else:
            rep.mode, rep.end = _IDLE, _INF

    def finish_step(rep: _Rep, r: int) -> None:
        now = rep.end
        if rep.mode == _RUN:
            L = rep.length
            if isinstance(rep.busys, list):
                busy_s[r] += sum(rep.dts[:L])
                busy_term[r] += sum(rep.busys[:L])
            else:  # busy time from the end times; the energy terms summed once, at the end of the run
                busy_s[r] += float(rep.ends[L - 1]) - rep.start
                tc, tm = rep.busys
                deferred[r].append((tc[:L], tm[:L]))
            steps[r] += L
            rep.g += L
            rep.sumc += L * rep.b
            decode_done(rep, r, now)
            return
        busy_s[r] += rep.dt
        busy_term[r] += rep.busy
        steps[r] += 1
        if rep.has_decode:
            rep.g += 1
            rep.sumc += rep.b
            decode_done(rep, r, now)
        for i, c in rep.chunks:
            if chunked:
                k = rep.prog[i] + c
                if k < P[i]:
                    rep.prog[i] = k
                    continue
                del rep.prog[i]
                rep.pre.remove(i)
            first[i] = now
            if O[i] == 1:
                done(rep, r, i, now)
            else:
                rep.b += 1
                rep.sumc += P[i] + 1
                heapq.heappush(rep.heap, (rep.g + O[i] - 1, i))

    def advance(r: int, t: float) -> None:
        rep = reps[r]
        while rep.mode != _IDLE and rep.end <= t:
            finish_step(rep, r)
            plan(rep, rep.end)
        wake[r] = rep.end

    for j in range(n):
        if progress is not None and j % PROGRESS_EVERY == 0:
            progress(j, n)
        t = a[j]
        cands = router.candidates(buckets[j])
        for r in cands:
            if wake[r] <= t:
                advance(r, t)
        r = router.pick(cands, outstanding)
        routed[j] = r
        rep = reps[r]
        if P[j] + O[j] > rep.cap:
            res.rejected[j] = True
            continue
        area[r] += rep.out * (t - rep.last)
        rep.last = t
        rep.out += 1
        outstanding[r] += 1
        rep.q.append(j)
        if rep.mode == _IDLE:
            plan(rep, t)
        elif rep.mode == _RUN:
            m = bisect_right(rep.ends, t, 0, rep.length)
            rep.length = m + 1
            rep.end = float(rep.ends[m])
        wake[r] = rep.end
    for r in range(nr):
        advance(r, _INF)
    end = max((rep.last for rep in reps), default=0.0)
    for r, rep in enumerate(reps):
        area[r] += rep.out * (end - rep.last)
        if deferred[r]:
            tc = np.concatenate([d[0] for d in deferred[r]])
            tm = np.concatenate([d[1] for d in deferred[r]])
            busy_term[r] += float(np.maximum(rep.cost.u_c * tc, rep.cost.u_m * tm).sum())
    if progress is not None:
        progress(n, n)
    res.first_token[:] = first
    res.finish[:] = finish
    res.replica[:] = routed
    res.busy_s[:] = busy_s
    res.busy_term[:] = busy_term
    res.steps[:] = steps
    res.area[:] = area
    return res


__all__ = ["run_fast"]
