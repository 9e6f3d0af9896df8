"""What an engine run returns: per-request times and per-replica accounting (MODELED seconds)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class RawRun:
    """Per request (index = request): ``first_token`` and ``finish`` times (NaN when rejected),
    the ``replica`` it was routed to, ``rejected`` (its prompt + output exceed the replica's whole
    KV cache). Per replica: ``busy_s`` (sum of step times), ``busy_term`` (sum of
    ``max(u_c t_comp, u_m t_mem)``, for energy), ``steps``, ``area`` (integral of its outstanding
    requests over time, for Little's law)."""

    first_token: np.ndarray
    finish: np.ndarray
    replica: np.ndarray
    rejected: np.ndarray
    busy_s: np.ndarray
    busy_term: np.ndarray
    steps: np.ndarray
    area: np.ndarray

    @classmethod
    def empty(cls, n: int, r: int) -> RawRun:
        nan = np.full(n, np.nan)
        return cls(nan, nan.copy(), np.full(n, -1, dtype=np.int64), np.zeros(n, dtype=bool),
                   np.zeros(r), np.zeros(r), np.zeros(r, dtype=np.int64), np.zeros(r))


__all__ = ["RawRun"]
