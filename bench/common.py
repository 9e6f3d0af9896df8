"""What the benchmarks share: the machine record every result file starts with, free TCP ports
for the servers they start, and writing the result (printed, and to ``--out`` when given)."""

from __future__ import annotations

import json
import os
import platform
import socket
import time
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


def emit(result: dict[str, Any], out: str | None) -> int:
    """Print ``result`` as indented JSON and, with ``out``, write the same text there; returns 0."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")
    return 0
