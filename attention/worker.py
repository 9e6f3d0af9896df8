"""The Ray actor body that runs one rank of a distributed attention group.

Plain class: :mod:`attention.api` wraps it with ``ray.remote`` when a group is created, so
importing this module needs no Ray. Shards arrive through the object store once (from the
driver), results go back once; everything between ranks moves through the communicator.

Memory cap (optional, per call; Linux): :func:`memory_cap` sets the process's soft
``RLIMIT_DATA`` to ``VmData + cap`` for the duration of a block and restores the previous soft
limit afterwards. Since Linux 4.7 ``RLIMIT_DATA`` bounds every private writable mapping (brk heap,
anonymous ``mmap``: every torch CPU tensor, the fused kernel's C++ scratch, numpy arrays, thread
stacks), so an allocation that would take the process more than ``cap`` bytes above where the block
started fails: torch raises ``RuntimeError`` ("DefaultCPUAllocator: can't allocate memory"),
numpy ``MemoryError``; :func:`is_over_cap` recognises both. Shared mappings (Ray's object store)
do not count. The limit is process-wide, so other threads' allocations in the block count too.

Peak memory (measured): :func:`reset_peak_rss` resets the kernel's high-water mark of resident
memory (``VmHWM``) to the current ``VmRSS``; :func:`peak_rss_bytes` minus that baseline is the
most memory a block made resident at once (bench/bench_capacity.py reports it per rank).
"""

from __future__ import annotations

import contextlib
import ctypes
import resource
import sys
import time
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from attention.comm import Communicator
from attention.exceptions import AttentionInputError
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


# glibc mallopt parameter: a fixed mmap threshold (bytes) turns off glibc's dynamic threshold
_M_MMAP_THRESHOLD = -3
CAP_MMAP_THRESHOLD = 256 * 1024
_OVER_CAP_MESSAGES = ("can't allocate memory", "defaultcpuallocator", "can't start new thread")
_malloc_fixed = False


def data_bytes() -> int:
    """This process's private writable memory in bytes: ``VmData`` of ``/proc/self/status``."""
    return _status_kib("VmData")


def _status_kib(field: str) -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError as e:
        raise RuntimeError(f"peak memory needs Linux's /proc/self/status: {e}") from e
    raise RuntimeError(f"peak memory needs Linux: /proc/self/status has no {field} line")


def rss_bytes() -> int:
    """This process's resident memory now (``VmRSS``), bytes."""
    return _status_kib("VmRSS")


def peak_rss_bytes() -> int:
    """This process's peak resident memory since start or the last :func:`reset_peak_rss`
    (``VmHWM``), bytes: measured by the kernel, every page the process touched counts (torch
    tensors, kernel scratch, communication buffers, numpy arrays)."""
    return _status_kib("VmHWM")


def reset_peak_rss() -> int:
    """Reset ``VmHWM`` to the current ``VmRSS`` (writing ``5`` to ``/proc/self/clear_refs``,
    Linux >= 4.0) and return that resident size, bytes: the baseline of a peak measurement."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError as e:
        raise RuntimeError(f"cannot reset the peak RSS (/proc/self/clear_refs): {e}") from e
    return rss_bytes()


def _steady_malloc() -> None:
    """Make ``VmData`` track live allocations (glibc; a no-op elsewhere).

    glibc raises its mmap threshold to the size of the last freed mmapped chunk (up to 32 MiB)
    and keeps up to twice that free at the top of a heap, so after a large tensor is freed the
    next ones come from heap pages already counted in ``VmData``: up to 64 MiB the cap would not
    see. A fixed threshold (set once per process, the first time a cap is used) sends every block
    over 256 KiB to its own mmap, returned to the kernel on free; ``malloc_trim`` hands back what
    earlier calls left at the top of the heap.
    """
    global _malloc_fixed
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    if not _malloc_fixed:
        libc.mallopt(_M_MMAP_THRESHOLD, CAP_MMAP_THRESHOLD)
        _malloc_fixed = True
    libc.malloc_trim(0)


@contextlib.contextmanager
def memory_cap(cap_bytes: int) -> Iterator[int]:
    """Within the block this process may hold at most ``cap_bytes`` of private writable memory
    above what it held on entry: soft ``RLIMIT_DATA = VmData + cap_bytes`` (never above the hard
    limit, never above a lower soft limit already set). Yields the limit set; the previous soft
    limit is restored on exit, also when the block raises. Linux only."""
    if isinstance(cap_bytes, bool) or not isinstance(cap_bytes, int) or cap_bytes <= 0:
        raise AttentionInputError(f"memory cap must be a positive int of bytes, got {cap_bytes!r}")
    _steady_malloc()
    prev = resource.getrlimit(resource.RLIMIT_DATA)
    limit = data_bytes() + cap_bytes
    for bound in prev:
        if bound != resource.RLIM_INFINITY:
            limit = min(limit, bound)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, prev[1]))
    try:
        yield limit
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, prev)


def is_over_cap(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation refused by the memory limit (torch, numpy, a thread)."""
    if isinstance(exc, MemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(
        m in str(exc).lower() for m in _OVER_CAP_MESSAGES
    )


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
        memory_cap_bytes: int | None = None,
        kv_heads_per_pass: int | None = None,
    ) -> dict:
        """Run ``strategy`` on this rank's shard; returns out/lse (on CPU), seconds, bytes sent,
        the intra-op threads used and ``over_cap`` (with the allocator's message in ``error``).

        ``num_threads`` sets torch's intra-op threads in this actor; ``None`` keeps what the actor
        has, which is Ray's ``OMP_NUM_THREADS`` for an actor with fractional ``num_cpus``: 1. One
        thread per rank is right when the ranks share the cores (2 ranks on 2 cores); a rank that
        has a machine to itself should be given its core count.

        ``memory_cap_bytes`` (default ``None``: no cap) runs the step under :func:`memory_cap`:
        the shards are then copied into private memory inside the cap (so they count, as the
        inputs of a single process would), and an allocation refused by the cap ends the step
        with ``over_cap=True`` instead of an exception (the actor stays usable; its peers, if
        they were waiting on this rank, are not: the driver discards the group).
        Host memory only: CUDA allocations are not bounded by it.
        """
        if self.comm is None:
            raise RuntimeError("join() must run before run()")
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        capped = memory_cap_bytes is not None
        before = self.comm.stats.payload_bytes + self.comm.stats.collective_bytes
        t0 = time.perf_counter()
        error = None
        with memory_cap(memory_cap_bytes) if capped else contextlib.nullcontext():
            try:
                # without a cap the shards stay read-only views of the object store
                q, k, v = (from_wire(t, copy=capped) for t in (q, k, v))
                if self.backend == "nccl":
                    q, k, v = q.cuda(), k.cuda(), v.cuda()
                out, lse = run_strategy(
                    strategy, self.comm, q, k, v, plan, causal=causal, speeds=speeds,
                    ulysses_degree=ulysses_degree, block=block,
                    kv_heads_per_pass=kv_heads_per_pass,
                )
                if out.is_cuda:
                    torch.cuda.synchronize()
            except (RuntimeError, MemoryError) as e:
                if not (capped and is_over_cap(e)):
                    raise
                error = str(e).splitlines()[0][:300]
                out = lse = q = k = v = None
        seconds = time.perf_counter() - t0
        sent = self.comm.stats.payload_bytes + self.comm.stats.collective_bytes - before
        result = {
            "seconds": seconds, "bytes_sent": sent, "out": None, "lse": None,
            "threads": torch.get_num_threads(), "over_cap": error is not None, "error": error,
        }
        if error is not None:
            return result
        if return_output:
            result["out"], result["lse"] = to_wire(out.cpu()), to_wire(lse.cpu())
        return result
