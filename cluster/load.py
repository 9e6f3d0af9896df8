"""The load the router observes, kept in the state store over a sliding window.

What the autoscaling loop (:mod:`cluster.shell.autoscale_loop`) re-plans from: the request rate
and the (input, output) token-length histogram of the last ``window_s`` seconds.

Recording (:func:`record_request`) is one atomic increment of field ``<i>.<j>`` of the windowed
bucket ``load.<slot>`` (:meth:`~cluster.state.base.StateStore.incr_windowed`). The router counts its
requests through a :class:`LoadRecorder`, which adds them up in memory and writes each
``(slot, i, j)`` count once per flush (every half second), so recording costs a request no store
round trip; a router that dies loses at most its last half second of samples. ``slot`` is the request's arrival time in
whole ``SLOT_S`` seconds, ``i``/``j`` its input/output length on a power-of-two grid (bin ``i``
holds lengths in ``(2**(i-1), 2**i]``). Buckets are shared by every router on the same store, so
the window is the whole fleet's load. Each bucket expires ``ttl_s`` (:data:`LOAD_TTL_S`, one
hour, twelve of the autoscaling loop's default 300 s windows) after its last increment, so the
store holds at most an hour of buckets however long the fleet runs.

Reading (:func:`read_window`) fetches the buckets of the slots inside the window and returns the
rate and, per request, a length pair: each bin's upper edge (a request is never taken as shorter
than it was, so a plan sized from it errs towards more capacity). A window longer than the
buckets live is refused.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from typing import Any

import numpy as np

from solvers import validate

#: Width of one counter slot, seconds; the window's resolution.
SLOT_S = 5.0
#: Highest length bin: 2**MAX_BIN tokens (longer requests are counted in it).
MAX_BIN = 20
PREFIX = "load."
#: Seconds a slot's bucket lives after its last increment; the longest window one can read.
LOAD_TTL_S = 3600.0
#: Seconds between a LoadRecorder's writes.
FLUSH_S = 0.5

log = logging.getLogger(__name__)


def public_counters(counters: dict[str, float]) -> dict[str, float]:
    """``counters`` without load-window ones (what status displays show; the window lives in
    windowed buckets now, but a store written by an older router may still hold ``load.*``
    counters)."""
    return {k: v for k, v in counters.items() if not k.startswith(PREFIX)}


def length_bin(n: int) -> int:
    """The bin of a length of ``n`` tokens: the smallest ``i`` with ``n <= 2**i`` (0 for n <= 1)."""
    return min(MAX_BIN, max(0, math.ceil(math.log2(max(n, 1)))))


def record_request(store: Any, input_tokens: int, output_tokens: int, *, now: float | None = None,
                   ttl_s: float = LOAD_TTL_S) -> str:
    """Count one request arriving at ``now`` (unix seconds); returns ``bucket/field`` of its count.
    The slot's bucket expires ``ttl_s`` seconds after this increment."""
    validate.integer("input_tokens", input_tokens, minimum=0)
    validate.integer("output_tokens", output_tokens, minimum=0)
    t = time.time() if now is None else now
    bucket = f"{PREFIX}{int(t // SLOT_S)}"
    field = f"{length_bin(input_tokens)}.{length_bin(output_tokens)}"
    store.incr_windowed(bucket, field, ttl_s=ttl_s)
    return f"{bucket}/{field}"


class LoadRecorder:
    """Counts requests into the load window in batches (see the module docstring): :meth:`record`
    adds one request in memory; :meth:`flush` (every ``flush_s`` once :meth:`start` ed, and on
    :meth:`close`) writes each slot's counts with one increment per field. A store error costs
    that flush's samples, never a request. Thread-safe."""

    def __init__(self, store: Any, *, flush_s: float = FLUSH_S, ttl_s: float = LOAD_TTL_S) -> None:
        validate.real("flush_s", flush_s, lo=0.0, lo_open=True)
        self.store = store
        self.flush_s = flush_s
        self.ttl_s = ttl_s
        self._counts: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Requests whose samples a failed flush lost.
        self.lost = 0

    def record(self, input_tokens: int, output_tokens: int, *, now: float | None = None) -> None:
        """Count one request arriving at ``now`` (unix seconds; default the clock)."""
        t = time.time() if now is None else now
        key = (f"{PREFIX}{int(t // SLOT_S)}", f"{length_bin(input_tokens)}.{length_bin(output_tokens)}")
        with self._lock:
            self._counts[key] += 1

    def flush(self) -> int:
        """Write the counts recorded since the last flush; returns how many requests they hold."""
        with self._lock:
            counts, self._counts = self._counts, Counter()
        written = 0
        for (bucket, field), n in sorted(counts.items()):
            try:
                self.store.incr_windowed(bucket, field, n, ttl_s=self.ttl_s)
                written += n
            except Exception:  # noqa: BLE001 - the samples are lost, the requests are not
                self.lost += n
                log.debug("could not record %d requests' load", n, exc_info=True)
        return written

    def start(self) -> LoadRecorder:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="flotilla-load", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.flush_s):
            self.flush()

    def close(self) -> None:
        """Stop the flushing thread and write what is left."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.flush()


def read_window(store: Any, window_s: float, *, now: float | None = None) -> tuple[float, np.ndarray, np.ndarray]:
    """``(rate req/s, input lengths, output lengths)`` of the requests of the last ``window_s``
    seconds (whole slots: those whose start lies in ``(now - window_s, now]``, at least one);
    ``window_s`` at most :data:`LOAD_TTL_S` (older buckets have expired)."""
    validate.real("window_s", window_s, lo=0.0, hi=LOAD_TTL_S, lo_open=True)
    t = time.time() if now is None else now
    last = int(t // SLOT_S)
    n_slots = max(1, round(window_s / SLOT_S))
    first = last - n_slots + 1
    inp: list[int] = []
    out: list[int] = []
    for fields in store.windowed([f"{PREFIX}{s}" for s in range(first, last + 1)]).values():
        for name, value in fields.items():
            try:
                i, j = (int(x) for x in name.split("."))
            except ValueError:
                continue
            if value > 0:
                k = int(value)
                inp.extend([2 ** i] * k)
                out.extend([2 ** j] * k)
    # the current slot is only partly over: the window spans the full slots before it and the
    # elapsed part of this one
    span = (n_slots - 1) * SLOT_S + max(t - last * SLOT_S, 1e-3)
    return len(inp) / span, np.asarray(inp, dtype=np.int64), np.asarray(out, dtype=np.int64)


__all__ = ["FLUSH_S", "LOAD_TTL_S", "LoadRecorder", "MAX_BIN", "SLOT_S", "length_bin", "public_counters", "read_window", "record_request"]
