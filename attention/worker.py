"""The Ray actor body that runs one rank of a distributed attention group.

Plain class: :mod:`attention.api` wraps it with ``ray.remote`` when a group is created, so
importing this module needs no Ray. Shards arrive through the object store once (from the
driver), results go back once; everything between ranks moves through the communicator.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from attention.comm import Communicator
from attention.partition import ShardPlan
from attention.strategies import run_strategy


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
        """Run ``strategy`` on this rank's shard; returns out/lse (on CPU), seconds, bytes sent."""
        if self.comm is None:
            raise RuntimeError("join() must run before run()")
        if num_threads is not None:
            torch.set_num_threads(num_threads)
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
        result = {"seconds": seconds, "bytes_sent": sent, "out": None, "lse": None}
        if return_output:
            result["out"], result["lse"] = out.cpu(), lse.cpu()
        return result
