"""The per-call memory cap of the attention worker (soft RLIMIT_DATA), no Ray.

An allocation that would take the process more than ``cap`` bytes above where the block started is
refused and recognised as over-cap; one below succeeds; the previous soft limit is back afterwards
whether the block succeeded, hit the cap or raised something else.

The allocation checks run in one fresh process (``fresh``): in the test runner's own process, heap
that earlier tests freed but the allocator kept mapped can serve an allocation without growing
VmData, which is what the cap counts (as a worker's first call would not see).
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import sys

import numpy as np
import pytest
import torch

from attention import run_distributed
from attention.exceptions import AttentionInputError
from attention.worker import (
    data_bytes,
    is_over_cap,
    memory_cap,
    peak_rss_bytes,
    reset_peak_rss,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_DATA: Linux")

MiB = 2**20


@pytest.fixture(scope="module")
def fresh():
    """A fresh (spawned) process to run a check in; its assertion errors come back as themselves."""
    with mp.get_context("spawn").Pool(1) as pool:
        yield lambda fn: pool.apply(fn)


def _alloc(nbytes: int) -> int:
    t = torch.empty(nbytes, dtype=torch.uint8)
    t.fill_(1)  # touch it: a lazily mapped tensor would count anyway, but be explicit
    return int(t[-1])


def _allocation_above_cap_is_refused_and_recognised_then_limit_restored() -> None:
    before = resource.getrlimit(resource.RLIMIT_DATA)
    with pytest.raises(RuntimeError) as info:
        with memory_cap(64 * MiB) as limit:
            assert resource.getrlimit(resource.RLIMIT_DATA) == (limit, before[1])
            _alloc(80 * MiB)
    assert is_over_cap(info.value)
    assert "can't allocate memory" in str(info.value)
    assert resource.getrlimit(resource.RLIMIT_DATA) == before
    _alloc(80 * MiB)  # no cap any more


def _allocation_below_cap_succeeds_and_limit_restored() -> None:
    before = resource.getrlimit(resource.RLIMIT_DATA)
    with memory_cap(64 * MiB):
        assert _alloc(48 * MiB) == 1
        # pieces freed in between do not accumulate: 4 x 40 MiB one after another fit 64 MiB
        for _ in range(4):
            assert _alloc(40 * MiB) == 1
    assert resource.getrlimit(resource.RLIMIT_DATA) == before


def _the_sum_of_live_tensors_is_what_counts() -> None:
    with pytest.raises(RuntimeError) as info:
        with memory_cap(64 * MiB):
            kept = [torch.ones(20 * MiB // 4) for _ in range(4)]  # 80 MiB live
            del kept
    assert is_over_cap(info.value)
    with memory_cap(64 * MiB):
        kept = [torch.ones(20 * MiB // 4) for _ in range(3)]  # 60 MiB live
        assert sum(t.numel() * 4 for t in kept) == 60 * MiB
        del kept


def _numpy_allocation_over_cap_is_recognised() -> None:
    with pytest.raises(MemoryError) as info:
        with memory_cap(32 * MiB):
            np.ones(48 * MiB, dtype=np.uint8)
    assert is_over_cap(info.value)


def test_limit_restored_when_block_raises_something_else():
    before = resource.getrlimit(resource.RLIMIT_DATA)
    with pytest.raises(KeyError):
        with memory_cap(16 * MiB):
            raise KeyError("x")
    assert resource.getrlimit(resource.RLIMIT_DATA) == before


def _vmdata_counts_torch_tensors() -> None:
    start = data_bytes()
    t = torch.empty(32 * MiB, dtype=torch.uint8)
    assert data_bytes() - start >= 32 * MiB
    del t


def test_is_over_cap_rejects_other_errors():
    assert not is_over_cap(RuntimeError("shape mismatch"))
    assert not is_over_cap(ValueError("can't allocate memory"))
    assert is_over_cap(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried ..."))


@pytest.mark.parametrize("cap", [0, -5, 1.5, True, "64"])
def test_bad_cap_is_rejected(cap):
    with pytest.raises(AttentionInputError, match="memory cap"):
        with memory_cap(cap):
            pass


@pytest.mark.parametrize("cap", [0, -1, 2.0])
def test_run_distributed_rejects_bad_cap_before_starting_actors(cap):
    q = torch.randn(1, 2, 8, 4)
    with pytest.raises(AttentionInputError, match="memory_cap_bytes"):
        run_distributed(q, q, q, strategy="ring", world_size=2, memory_cap_bytes=cap)


def test_allocation_above_cap_is_refused_and_recognised_then_limit_restored(fresh):
    fresh(_allocation_above_cap_is_refused_and_recognised_then_limit_restored)


def test_allocation_below_cap_succeeds_and_limit_restored(fresh):
    fresh(_allocation_below_cap_succeeds_and_limit_restored)


def test_the_sum_of_live_tensors_is_what_counts(fresh):
    fresh(_the_sum_of_live_tensors_is_what_counts)


def test_numpy_allocation_over_cap_is_recognised(fresh):
    fresh(_numpy_allocation_over_cap_is_recognised)


def test_vmdata_counts_torch_tensors(fresh):
    fresh(_vmdata_counts_torch_tensors)


def _peak_rss_sees_a_freed_tensor_and_resets() -> None:
    with memory_cap(256 * MiB):  # fixed mmap threshold: freed tensors go back to the kernel
        base = reset_peak_rss()
        t = torch.ones(48 * MiB, dtype=torch.uint8)  # touched: resident
        del t
        peak = peak_rss_bytes() - base
        assert 46 * MiB <= peak < 56 * MiB, peak  # give or take pages freed meanwhile
        base = reset_peak_rss()
        u = torch.ones(8 * MiB, dtype=torch.uint8)
        peak = peak_rss_bytes() - base
        del u
        assert 6 * MiB <= peak < 16 * MiB, peak  # the 48 MiB is forgotten after the reset


def test_peak_rss_sees_a_freed_tensor_and_resets(fresh):
    fresh(_peak_rss_sees_a_freed_tensor_and_resets)
