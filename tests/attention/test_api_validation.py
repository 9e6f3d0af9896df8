"""Invalid calls fail before any actor starts, with a message naming the problem (no Ray)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from attention import distributed_attention
from attention.comm import Communicator, Handle
from attention.exceptions import AttentionInputError, CommMisuseError


def _qkv(h=4, hkv=2, length=16, d=8):
    return torch.randn(1, h, length, d), torch.randn(1, hkv, length, d), torch.randn(1, hkv, length, d)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"strategy": "zigzg"}, r"unknown strategy 'zigzg' \(did you mean 'zigzag'\?\); valid: ring, zigzag"),
        ({"strategy": "ulysses", "world_size": 5}, "ulysses needs world_size <= number of heads: world_size 5 > 4"),
        ({"world_size": 3, "speeds": [1.0, 2.0]}, "speeds has 2 entries but world_size is 3"),
        ({"speeds": [1.0, -2.0]}, r"speeds\[1\] = -2.0 must be a finite number > 0"),
        ({"world_size": 0}, "world_size must be an integer >= 1"),
        ({"strategy": "hybrid", "world_size": 4, "ulysses_degree": 3}, "ulysses_degree 3 must divide world_size 4"),
        ({"strategy": "ring", "ulysses_degree": 2}, "ulysses_degree is only for strategy 'hybrid'"),
    ],
)
def test_invalid_combinations_are_named(kwargs, match):
    q, k, v = _qkv()
    with pytest.raises(AttentionInputError, match=match):
        distributed_attention(q, k, v, **kwargs)


def test_mismatched_shapes_are_named():
    q, k, v = _qkv()
    with pytest.raises(AttentionInputError, match="same sequence length"):
        distributed_attention(q, k[:, :, :8], v[:, :, :8])
    with pytest.raises(AttentionInputError, match="multiple of the number of key/value heads"):
        distributed_attention(q, torch.randn(1, 3, 16, 8), torch.randn(1, 3, 16, 8))
    with pytest.raises(AttentionInputError, match="tree_decode: q has 16 rows but the KV cache only 8"):
        distributed_attention(q, k[:, :, :8], v[:, :, :8], strategy="tree_decode")


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_inputs_are_refused(bad):
    q, k, v = _qkv()
    v[0, 1, 3, 2] = bad
    with pytest.raises(AttentionInputError, match="v contains NaN or infinite values"):
        distributed_attention(q, k, v)


def test_sequence_too_short_for_zigzag():
    q, k, v = _qkv(length=5)
    with pytest.raises(AttentionInputError, match="zigzag on 3 ranks"):
        distributed_attention(q, k, v, world_size=3)


def test_communicator_refuses_self_and_out_of_range_peers():
    comm = Communicator(world_size=2, rank=1, backend="gloo", group_name="never-joined")
    t = torch.zeros(3)
    with pytest.raises(CommMisuseError, match="rank 1 cannot send to itself"):
        comm.exchange(t, 1, None, None)
    with pytest.raises(CommMisuseError, match="rank 1 cannot receive from itself"):
        comm.exchange(None, None, t, 1)
    with pytest.raises(CommMisuseError, match=r"destination rank 2 is not a rank of this group \(0..1\)"):
        comm.exchange(t, 2, None, None)
    with pytest.raises(CommMisuseError, match="backend 'mpi' is not one of"):
        Communicator(world_size=2, rank=0, backend="mpi", group_name="g")


def test_handle_refuses_a_second_wait():
    buf = torch.ones(2)
    h = Handle([], buf, "rank 0: send to 1, receive from 1")
    assert h.wait() is buf
    with pytest.raises(CommMisuseError, match="wait\\(\\) called a second time on the handle of rank 0"):
        h.wait()


def test_wire_format_round_trips_and_returns_writable_copies():
    from attention.worker import from_wire, to_wire

    t = torch.randn(2, 3, 5, 4)[:, :, 1:4]  # a non-contiguous view, like a shard
    w = to_wire(t)
    assert isinstance(w, np.ndarray)
    w.flags.writeable = False  # as the object store hands it back
    back = from_wire(w, copy=True)
    assert torch.equal(back, t)
    back.add_(1.0)  # private copy: writable, and the source is untouched
    assert torch.equal(torch.from_numpy(np.array(w)), t)
    bf = torch.randn(2, 2).to(torch.bfloat16)  # numpy has no bfloat16: stays a tensor
    assert to_wire(bf) is bf and from_wire(bf, copy=True) is bf
