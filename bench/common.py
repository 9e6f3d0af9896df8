"""What the benchmarks share: the machine record every result file starts with, free TCP ports
for the servers they start, and writing the result (printed, and to ``--out`` when given)."""

from __future__ import annotations

import json
import os
import platform
import socket
import time
from collections.abc import Callable
from typing import Any


def machine(*, torch: bool = False) -> dict[str, Any]:
    """Host, CPU, cores, Python, the UTC date and the 1-minute load average; with ``torch``, its
    version and thread count too."""
    out: dict[str, Any] = {"host": platform.node(), "cpu": platform.processor() or platform.machine(),
                           "cores": os.cpu_count(), "python": platform.python_version()}
    if torch:
        import torch as _torch

        out.update(torch=_torch.__version__, threads=_torch.get_num_threads())
    out.update(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), load_avg_1m=os.getloadavg()[0])
    return out


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports on 127.0.0.1 that nothing listened on when asked."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def percentile(xs: list[float], p: float) -> float | None:
    """The nearest-rank ``p``-th percentile of ``xs`` (None when empty)."""
    if not xs:
        return None
    xs = sorted(xs)
    return xs[max(0, min(len(xs) - 1, int(round(p / 100 * len(xs))) - 1))]


def emit(result: dict[str, Any], out: str | None) -> int:
    """Print ``result`` as indented JSON and, with ``out``, write the same text there; returns 0."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")
    return 0


async def read_sse_text(response: Any, on_first: Callable[[], None] | None = None) -> tuple[str, bool]:
    """Read an OpenAI server-sent-event stream (an ``aiohttp`` response) to ``data: [DONE]``:
    ``(the content deltas joined, whether [DONE] came)``; ``on_first`` is called when the first
    non-empty delta arrives."""
    text, first = "", True
    async for line in response.content:
        if not line.startswith(b"data: "):
            continue
        data = line[6:].strip()
        if data == b"[DONE]":
            return text, True
        ev = json.loads(data)
        piece = ev["choices"][0]["delta"].get("content") if ev.get("choices") else None
        if piece and first and on_first is not None:
            on_first()
        first = first and not piece
        text += piece or ""
    return text, False
