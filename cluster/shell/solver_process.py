"""Solving in a worker process that can be killed, so a plan nobody waits for stops using a core.

The allocation ILP runs CBC (a child process of whoever calls PuLP) or HiGHS (in-process C code);
neither can be interrupted from a Python thread. :class:`SolverProcess` keeps one worker process
(started with ``spawn``, in its own session, so CBC is its descendant) that solves one problem at
a time; :meth:`SolverProcess.solve` waits for the answer while watching a cancel event, and on
cancellation kills the worker's whole process group and raises :class:`SolveCancelledError`. The
next solve starts a fresh worker.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
from typing import Any

from cluster.exceptions import FlotillaError


class SolveCancelledError(FlotillaError):
    """The caller went away; the solve was killed (gRPC CANCELLED)."""


def _worker(conn: Any) -> None:  # pragma: no cover - runs in the child process
    os.setsid()  # its own process group: CBC and anything else it starts die with it
    from solvers.allocation import solve

    while True:
        try:
            problem, kwargs = conn.recv()
        except EOFError:
            return
        try:
            conn.send(("ok", solve(problem, **kwargs)))
        except Exception as exc:  # noqa: BLE001 - sent back and re-raised in the parent
            conn.send(("error", exc))


class SolverProcess:
    """One reusable, killable solver worker; see the module docstring. Thread-safe: one solve at
    a time per instance (callers hold a pool of them)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: Any = None
        self._conn: Any = None
        self.killed = 0

    def _ensure(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            return
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=_worker, args=(child,), name="flotilla-solver", daemon=True)
        self._proc.start()
        child.close()
        self._conn = parent

    def solve(self, problem: Any, cancel: threading.Event | None = None, **kwargs: Any) -> Any:
        """``solvers.allocation.solve(problem, **kwargs)`` in the worker; its errors re-raised
        here; SolveCancelledError (worker killed) once ``cancel`` is set."""
        with self._lock:
            self._ensure()
            self._conn.send((problem, kwargs))
            while not self._conn.poll(0.05):
                if cancel is not None and cancel.is_set():
                    self._kill()
                    raise SolveCancelledError("the client went away; the solve was stopped")
                if not self._proc.is_alive():
                    self._proc = None
                    raise FlotillaError("the solver worker died; retry")
            status, value = self._conn.recv()
        if status == "error":
            raise value
        return value

    def _kill(self) -> None:
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._proc.join(5)
        self._proc = None
        self.killed += 1

    def close(self) -> None:
        with self._lock:
            if self._proc is not None and self._proc.is_alive():
                self._kill()
