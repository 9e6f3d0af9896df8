"""The reference engine: a simpy process per replica that plans and times every engine step.

Semantics (both engines implement exactly these; tests/cluster/sim checks they agree):

* A request is routed when it arrives (:class:`~cluster.sim.routing.Router`); a request whose
  ``input + output`` tokens exceed the replica's whole KV cache is *rejected* there.
* A replica plans a step when the previous one ends (or, idle, when a request arrives) from what
  is in it at that instant; a request arriving at the exact end of a step is not in that plan
  (step ends are processed before arrivals at the same time), and of simultaneous arrivals at an
  idle replica the first starts a step alone.
* Admission is FCFS by KV-cache memory: a request reserves ``input + output`` tokens when admitted
  (no preemption) and at most ``max_num_seqs`` sequences are in the engine.
* Without chunked prefill (vLLM v0's default): if the head of the queue can be admitted, the step
  is a prefill of the admissible prefix of the queue (up to ``max_batched_tokens`` prompt tokens,
  a longer lone prompt alone), pausing decodes; else a decode step of every running sequence.
* With chunked prefill (Sarathi / vLLM v1): every step carries all running decodes, then prefill
  chunks (earlier admitted sequences first, then new admissions) up to ``max_batched_tokens``.
* The step that completes a prompt emits the first token (TTFT); each later step emits one token;
  a sequence of ``o`` output tokens leaves after ``o - 1`` decode steps, freeing its memory.
  Decode step ``j`` reads ``input + j`` cached tokens (:func:`cluster.perf.request_latency`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import numpy as np
import simpy
from simpy.core import URGENT
from simpy.events import Event

from cluster.sim.engine_fast import PROGRESS_EVERY
from cluster.sim.model import EngineConfig, ReplicaSpec
from cluster.sim.requests import Requests
from cluster.sim.routing import Router
from cluster.sim.trace_result import RawRun


class _Seq:
    __slots__ = ("i", "p", "o", "k", "d")

    def __init__(self, i: int, p: int, o: int) -> None:
        self.i, self.p, self.o, self.k, self.d = i, p, o, 0, 0


class _Urgent(Event):
    """A timeout processed before ordinary events of the same time (step ends before arrivals)."""

    def __init__(self, env: simpy.Environment, delay: float) -> None:
        super().__init__(env)
        self._ok = True
        self._value = None
        env.schedule(self, URGENT, delay)


def run_simpy(replicas: list[ReplicaSpec], router: Router, reqs: Requests, engine: EngineConfig,
              progress: Callable[[int, int], None] | None = None) -> RawRun:
    """Simulate ``reqs`` on ``replicas`` with simpy, one step at a time (``progress(done, total)``
    every :data:`~cluster.sim.engine_fast.PROGRESS_EVERY` arrivals)."""
    env = simpy.Environment()
    n, nr = len(reqs), len(replicas)
    res = RawRun.empty(n, nr)
    outstanding = np.zeros(nr, dtype=np.int64)
    last = [0.0] * nr
    waiting = [deque() for _ in range(nr)]
    running: list[list[_Seq]] = [[] for _ in range(nr)]
    prefilling: list[list[_Seq]] = [[] for _ in range(nr)]
    reserved = [0] * nr
    wake: list[Event | None] = [None] * nr
    a, p_all, o_all = reqs.arrival, reqs.input_len.tolist(), reqs.output_len.tolist()
    buckets = router.buckets_of(reqs.input_len, reqs.output_len).tolist()
    T, max_seqs = engine.max_batched_tokens, engine.max_num_seqs

    def touch(r: int, now: float) -> None:
        res.area[r] += outstanding[r] * (now - last[r])
        last[r] = now

    def done(r: int, s: _Seq, now: float) -> None:
        touch(r, now)
        outstanding[r] -= 1
        reserved[r] -= s.p + s.o
        res.finish[s.i] = now

    def admissible(r: int, s: _Seq, in_engine: int) -> bool:
        return in_engine < max_seqs and reserved[r] + s.p + s.o <= replicas[r].cost.kv_capacity

    def replica(r: int):
        cost = replicas[r].cost
        q, run, pre = waiting[r], running[r], prefilling[r]
        while True:
            if not (q or run or pre):
                wake[r] = env.event()
                yield wake[r]
                wake[r] = None
            decodes: list[_Seq] = []
            chunks: list[tuple[_Seq, int]] = []
            if not engine.chunked_prefill:
                tokens = 0
                while q and admissible(r, q[0], len(run) + len(chunks)):
                    s = q[0]
                    if chunks and tokens + s.p > T:
                        break
                    q.popleft()
                    reserved[r] += s.p + s.o
                    tokens += s.p
                    chunks.append((s, s.p))
                if not chunks:
                    decodes = run
            else:
                decodes = run
                left = T - len(run)
                for s in pre:
                    if left <= 0:
                        break
                    c = min(s.p - s.k, left)
                    chunks.append((s, c))
                    left -= c
                while left > 0 and q and admissible(r, q[0], len(run) + len(pre)):
                    s = q.popleft()
                    reserved[r] += s.p + s.o
                    pre.append(s)
                    c = min(s.p, left)
                    chunks.append((s, c))
                    left -= c
            sc = sum(s.p + s.d + 1 for s in decodes)
            ntok = len(decodes) + sum(c for _, c in chunks)
            pairs = sc + sum(c * s.k + c * (c + 1) // 2 for s, c in chunks)
            kv = sc + sum(s.k + c for s, c in chunks)
            dt, busy = cost.step(ntok, pairs, kv)
            yield _Urgent(env, dt)
            now = env.now
            res.busy_s[r] += dt
            res.busy_term[r] += busy
            res.steps[r] += 1
            keep = []
            for s in decodes:
                s.d += 1
                if s.d == s.o - 1:
                    done(r, s, now)
                else:
                    keep.append(s)
            if decodes:
                run[:] = keep
            for s, c in chunks:
                s.k += c
                if s.k == s.p:
                    res.first_token[s.i] = now
                    if engine.chunked_prefill:
                        pre.remove(s)
                    if s.o == 1:
                        done(r, s, now)
                    else:
                        run.append(s)

    def arrivals():
        for j in range(n):
            if progress is not None and j % PROGRESS_EVERY == 0:
                progress(j, n)
            t = a[j]
            # a zero delay too: a replica woken by the previous arrival at the same instant plans
            # its step (URGENT) before this one is routed, as in the fast engine
            yield env.timeout(max(0.0, t - env.now))
            r = router.pick(router.candidates(buckets[j]), outstanding)
            res.replica[j] = r
            s = _Seq(j, p_all[j], o_all[j])
            if s.p + s.o > replicas[r].cost.kv_capacity:
                res.rejected[j] = True
                continue
            touch(r, env.now)
            outstanding[r] += 1
            waiting[r].append(s)
            if wake[r] is not None and not wake[r].triggered:
                # Event.succeed() with URGENT priority (succeed() itself schedules NORMAL), as
                # simpy's own Initialize/Interruption events do: the replica starts before the
                # next arrival of the same instant is routed
                wake[r]._ok, wake[r]._value = True, None
                env.schedule(wake[r], URGENT)

    for r in range(nr):
        env.process(replica(r))
    env.process(arrivals())
    env.run()
    if progress is not None:
        progress(n, n)
    for r in range(nr):
        touch(r, env.now)
    return res


__all__ = ["run_simpy"]
