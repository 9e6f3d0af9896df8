"""The killable solver worker: a solve nobody waits for is stopped (its whole process group), and
the next solve gets a fresh worker with the same answers as an in-process solve."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

from cluster.shell.solver_process import SolveCancelledError, SolverProcess
from solvers.allocation import solve
from solvers.exceptions import InfeasibleError

sys.path.insert(0, str(Path(__file__).parents[2] / "bench"))
from bench_allocation import instance  # noqa: E402


def test_cancelling_kills_the_worker_and_the_next_solve_gets_a_fresh_one():
    hard = instance(16, 1, 2)  # Mélange's binary formulation over 16 types: tens of seconds for CBC
    worker = SolverProcess()
    try:
        cancel = threading.Event()
        threading.Timer(1.5, cancel.set).start()
        t0 = time.monotonic()
        with pytest.raises(SolveCancelledError):
            worker.solve(hard, cancel, formulation="binary", baselines=False)
        assert time.monotonic() - t0 < 10 and worker.killed == 1
        easy = instance(4, 0, 4)
        assert worker.solve(easy, None, baselines=False).counts == solve(easy, baselines=False).counts
    finally:
        worker.close()


def test_solver_errors_come_back_as_themselves():
    import dataclasses

    worker = SolverProcess()
    try:
        p = instance(4, 0, 4)
        capped = dataclasses.replace(p, device_types=tuple(dataclasses.replace(d, max_count=0) for d in p.device_types))
        with pytest.raises(InfeasibleError, match="infeasible"):
            worker.solve(capped, None, baselines=False)
    finally:
        worker.close()
