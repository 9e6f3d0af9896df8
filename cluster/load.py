"""The load the router observes, kept in the state store over a sliding window.

What the autoscaling loop (:mod:`cluster.shell.autoscale_loop`) re-plans from: the request rate
and the (input, output) token-length histogram of the last ``window_s`` seconds.

Recording (:func:`record_request`; the router increments :func:`load_counter`'s counter in the
same atomic step as the request's journal entry) is one atomic counter increment,
``load.<slot>.<i>.<j>``: ``slot`` the request's arrival time in whole ``SLOT_S`` seconds, ``i``/``j`` its input/output length on a power-of-two grid (bin ``i`` holds
lengths in ``(2**(i-1), 2**i]``). Counters are shared by every router on the same store, so the
window is the whole fleet's load.

Reading (:func:`read_window`) sums the slots inside the window and returns the rate and, per
request, a length pair: each bin's upper edge (a request is never taken as shorter than it was,
so a plan sized from it errs towards more capacity). Slots older than the window are never read;
they stay in the store (a few counters per 5 s slot and length bin; see docs/autoscaling.md).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from solvers import validate

#: Width of one counter slot, seconds; the window's resolution.
SLOT_S = 5.0
#: Highest length bin: 2**MAX_BIN tokens (longer requests are counted in it).
MAX_BIN = 20
PREFIX = "load."


def public_counters(counters: dict[str, float]) -> dict[str, float]:
    """``counters`` without the load window's (what status displays show)."""
    return {k: v for k, v in counters.items() if not k.startswith(PREFIX)}


def length_bin(n: int) -> int:
    """The bin of a length of ``n`` tokens: the smallest ``i`` with ``n <= 2**i`` (0 for n <= 1)."""
    return min(MAX_BIN, max(0, math.ceil(math.log2(max(n, 1)))))


def load_counter(input_tokens: int, output_tokens: int, *, now: float | None = None) -> str:
    """The counter that counts one request arriving at ``now`` (unix seconds): what the router
    increments in the same store round trip as the request's journal entry."""
    validate.integer("input_tokens", input_tokens, minimum=0)
    validate.integer("output_tokens", output_tokens, minimum=0)
    t = time.time() if now is None else now
    return f"{PREFIX}{int(t // SLOT_S)}.{length_bin(input_tokens)}.{length_bin(output_tokens)}"


def record_request(store: Any, input_tokens: int, output_tokens: int, *, now: float | None = None) -> str:
    """Count one request arriving at ``now`` (unix seconds); returns the counter's name."""
    key = load_counter(input_tokens, output_tokens, now=now)
    store.incr(key)
    return key


def read_window(store: Any, window_s: float, *, now: float | None = None) -> tuple[float, np.ndarray, np.ndarray]:
    """``(rate req/s, input lengths, output lengths)`` of the requests of the last ``window_s``
    seconds (whole slots: those whose start lies in ``(now - window_s, now]``, at least one)."""
    validate.real("window_s", window_s, lo=0.0, lo_open=True)
    t = time.time() if now is None else now
    last = int(t // SLOT_S)
    n_slots = max(1, round(window_s / SLOT_S))
    first = last - n_slots + 1
    inp: list[int] = []
    out: list[int] = []
    for name, value in store.counters().items():
        if not name.startswith(PREFIX):
            continue
        try:
            slot, i, j = (int(x) for x in name[len(PREFIX):].split("."))
        except ValueError:
            continue
        if first <= slot <= last and value > 0:
            k = int(value)
            inp.extend([2 ** i] * k)
            out.extend([2 ** j] * k)
    # the current slot is only partly over: the window spans the full slots before it and the
    # elapsed part of this one
    span = (n_slots - 1) * SLOT_S + max(t - last * SLOT_S, 1e-3)
    return len(inp) / span, np.asarray(inp, dtype=np.int64), np.asarray(out, dtype=np.int64)


__all__ = ["MAX_BIN", "SLOT_S", "length_bin", "load_counter", "public_counters", "read_window", "record_request"]
