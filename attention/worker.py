"""The Ray actor body that runs one rank of a distributed attention group.

Plain class: :mod:`attention.api` wraps it with ``ray.remote`` when a group is created, so
importing this module needs no Ray. Shards arrive through the object store once (from the
driver), results go back once; everything between ranks moves through the communicator.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from attention.comm import Communicator
from attention.partition import ShardPlan
from attention.strategies import run_strategy


# dtypes that travel through the object store as numpy arrays: Ray stores those zero-copy
# (a pickled torch tensor is copied on put and on get: ~3x slower for an 8 MB shard here)
WIRE_DTYPES = (torch.float32, torch.float64, torch.float16)


def to_wire(t: torch.Tensor) -> np.ndarray | torch.Tensor:
    """A CPU tensor as the object the object store moves fastest (numpy when the dtype allows)."""
    return t.numpy() if t.dtype in WIRE_DTYPES and not t.requires_grad else t


def from_wire(x: np.ndarray | torch.Tensor, *, copy: bool) -> torch.Tensor:
    """Inverse of :func:`to_wire`. A numpy array from the object store is read-only shared
    memory: ``copy=False`` wraps it (for tensors only ever read), ``copy=True`` gives a private
    writable tensor (for tensors handed to callers)."""
    if not isinstance(x, np.ndarray):
        return x
    if copy:
        return torch.from_numpy(np.array(x))
    with warnings.catch_warnings():  # torch warns that the array is not writable; we only read
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(x)


class AttentionWorker:
    """Rank ``rank`` of a group of ``world_size`` actors joined in ``group_name`` over ``backend``."""

    def __init__(self, world_size: int, rank: int, backend: str, group_name: str) -> None:
        self.world_size = world_size
        self.rank = rank
        self.backend = backend
        self.group_name = group_name
        self.comm: Communicator | None = None

    def join(self) -> int:
        """Initialise the collective group in this process (all ranks call it together)."""
        self.comm = Communicator.join(self.world_size, self.rank, self.backend, self.group_name)
        return self.rank

    def run(
        self,
        strategy: str,
        plan: ShardPlan,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        causal: bool,
        speeds: Sequence[float] | None,
        ulysses_degree: int | None,
        block: int,
        num_threads: int | None,
        return_output: bool = True,
    ) -> dict:
        """Run ``strategy`` on this rank's shard; returns out/lse (on CPU), seconds, bytes sent and
        the intra-op threads used.

        ``num_threads`` sets torch's intra-op threads in this actor; ``None`` keeps what the actor
        has, which is Ray's ``OMP_NUM_THREADS`` for an actor with fractional ``num_cpus``: 1. One
        thread per rank is right when the ranks share the cores (2 ranks on 2 cores); a rank that
        has a machine to itself should be given its core count.
        """
        if self.comm is None:
            raise RuntimeError("join() must run before run()")
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        q, k, v = (from_wire(t, copy=False) for t in (q, k, v))  # read-only from here on
        if self.backend == "nccl":
            q, k, v = q.cuda(), k.cuda(), v.cuda()
        before = self.comm.stats.payload_bytes + self.comm.stats.collective_bytes
        t0 = time.perf_counter()
        out, lse = run_strategy(
            strategy, self.comm, q, k, v, plan, causal=causal, speeds=speeds,
            ulysses_degree=ulysses_degree, block=block,
        )
        if out.is_cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        sent = self.comm.stats.payload_bytes + self.comm.stats.collective_bytes - before
        result = {
            "seconds": seconds, "bytes_sent": sent, "out": None, "lse": None,
            "threads": torch.get_num_threads(),
        }
        if return_output:
            result["out"], result["lse"] = to_wire(out.cpu()), to_wire(lse.cpu())
        return result
