"""The trivial echo model: answers with the prompt's words, one word per token, no torch.

It has the same streaming interface as a real model (:class:`~actors.llm.generate.Chunk` s then a
:class:`~actors.llm.generate.Completion`), so the gateway, router and actors can be exercised and
their overhead measured without model compute. ``max_tokens`` and stop strings apply as usual.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from actors.llm.generate import Chunk, Completion, SamplingParams


def echo_stream(prompt: str, params: SamplingParams, *, t0: float | None = None) -> Iterator[Chunk | Completion]:
    """Yield the prompt's words (with their leading spaces) as chunks, then a Completion."""
    t0 = time.perf_counter() if t0 is None else t0
    words = prompt.split()
    pieces = [w if i == 0 else " " + w for i, w in enumerate(words)][: params.max_tokens]
    text = ""
    finish = "stop" if len(words) <= params.max_tokens else "length"
    t_first = None
    n = 0
    for piece in pieces:
        candidate = text + piece
        cut = min((i for i in (candidate.find(s) for s in params.stop) if i >= 0), default=-1)
        if t_first is None:
            t_first = time.perf_counter()
        if cut >= 0:
            if cut > len(text):
                yield Chunk(n, candidate[len(text):cut])
                n += 1
            text = candidate[:cut]
            finish = "stop"
            break
        yield Chunk(n, piece)
        n += 1
        text = candidate
    t_end = time.perf_counter()
    t_first = t_first or t_end
    return_tokens = n
    yield Completion(text, finish, len(words), return_tokens, t_first - t0,
                     (t_end - t_first) / (return_tokens - 1) if return_tokens > 1 else 0.0, t_end - t0)
