"""The local kernel and the (out, lse) merge against the full-matrix reference (no Ray)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from attention.blockwise import blockwise_attention, merge_partials, naive_attention
from attention.exceptions import AttentionInputError


def _qkv(b, h, hkv, lq, lk, d, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, lq, d, generator=g, dtype=dtype)
    k = torch.randn(b, hkv, lk, d, generator=g, dtype=dtype)
    v = torch.randn(b, hkv, lk, d, generator=g, dtype=dtype)
    return q, k, v


def _assert_close(out, lse, ref_out, ref_lse, tol):
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()
    assert torch.equal(torch.isneginf(lse), torch.isneginf(ref_lse))
    fin = torch.isfinite(ref_lse)
    assert (out.double() - ref_out).abs().max().item() <= tol
    if fin.any():
        assert (lse.double()[fin] - ref_lse[fin]).abs().max().item() <= tol


@settings(max_examples=60, deadline=None)
@given(
    b=st.integers(1, 2),
    hkv=st.integers(1, 3),
    groups=st.integers(1, 3),
    lq=st.integers(1, 40),
    lk=st.integers(1, 40),
    d=st.sampled_from([1, 4, 8]),
    q_offset=st.integers(0, 50),
    k_offset=st.integers(0, 50),
    causal=st.booleans(),
    block=st.integers(1, 17),
    seed=st.integers(0, 10_000),
)
def test_blockwise_matches_reference_fp64(b, hkv, groups, lq, lk, d, q_offset, k_offset, causal, block, seed):
    q, k, v = _qkv(b, hkv * groups, hkv, lq, lk, d, torch.float64, seed)
    out, lse = blockwise_attention(
        q, k, v, causal=causal, q_offset=q_offset, k_offset=k_offset, block=block
    )
    assert out.dtype == torch.float64 and lse.dtype == torch.float64
    ref = naive_attention(q, k, v, causal, q_offset, k_offset)
    _assert_close(out, lse, *ref, 1e-10)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("lq,lk,q_offset,k_offset", [(31, 31, 0, 0), (300, 517, 217, 0), (64, 40, 0, 30)])
def test_blockwise_fp32_within_1e5(causal, lq, lk, q_offset, k_offset):
    q, k, v = _qkv(2, 4, 2, lq, lk, 16, torch.float32, 7)
    out, lse = blockwise_attention(q, k, v, causal=causal, q_offset=q_offset, k_offset=k_offset, block=64)
    assert out.dtype == torch.float32 and lse.dtype == torch.float32
    _assert_close(out, lse, *naive_attention(q, k, v, causal, q_offset, k_offset), 1e-5)


def test_rows_that_see_no_key_give_zero_and_minus_inf():
    q, k, v = _qkv(1, 2, 1, 10, 5, 4, torch.float64, 1)
    # queries at positions 0..9, keys at 5..9: rows 0..4 see nothing
    out, lse = blockwise_attention(q, k, v, causal=True, q_offset=0, k_offset=5, block=3)
    assert torch.isneginf(lse[..., :5]).all()
    assert torch.equal(out[..., :5, :], torch.zeros_like(out[..., :5, :]))
    assert torch.isfinite(lse[..., 5:]).all()
    _assert_close(out, lse, *naive_attention(q, k, v, True, 0, 5), 1e-12)


def test_gqa_equals_repeated_kv_heads():
    q, k, v = _qkv(2, 6, 2, 19, 19, 8, torch.float64, 3)
    out, lse = blockwise_attention(q, k, v, causal=True, block=5)
    k3, v3 = k.repeat_interleave(3, dim=1), v.repeat_interleave(3, dim=1)
    out3, lse3 = blockwise_attention(q, k3, v3, causal=True, block=5)
    assert (out - out3).abs().max().item() <= 1e-12
    assert (lse - lse3).abs().max().item() <= 1e-12


def test_matches_torch_sdpa():
    q, k, v = _qkv(1, 4, 4, 70, 70, 32, torch.float64, 5)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    out, _ = blockwise_attention(q, k, v, causal=True, block=16)
    assert (out - ref).abs().max().item() <= 1e-12


class _LargestTensor(TorchDispatchMode):
    """Records the largest number of elements any op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        res = func(*args, **(kwargs or {}))
        for t in res if isinstance(res, (tuple, list)) else (res,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return res


@pytest.mark.parametrize("causal", [True, False])
def test_memory_is_block_times_length_never_length_squared(causal):
    b, h, length, d, block = 1, 2, 512, 4, 32
    q, k, v = _qkv(b, h, h, length, length, d, torch.float32, 0)
    probe = _LargestTensor()
    with probe:
        blockwise_attention(q, k, v, causal=causal, block=block)
    assert probe.largest <= b * h * block * length  # one score tile
    assert probe.largest < b * h * length * length // 4


def _split_keys(q, k, v, cut, causal):
    o1, l1 = blockwise_attention(q, k[:, :, :cut], v[:, :, :cut], causal=causal, out_dtype=torch.float64)
    o2, l2 = blockwise_attention(
        q, k[:, :, cut:], v[:, :, cut:], causal=causal, k_offset=cut, out_dtype=torch.float64
    )
    return (o1, l1), (o2, l2)


@settings(max_examples=30, deadline=None)
@given(length=st.integers(2, 30), cut_frac=st.floats(0.0, 1.0), causal=st.booleans(), seed=st.integers(0, 999))
def test_merge_of_key_halves_is_exact_and_symmetric(length, cut_frac, causal, seed):
    q, k, v = _qkv(1, 2, 1, length, length, 4, torch.float64, seed)
    cut = min(length - 1, max(1, int(cut_frac * length)))
    (o1, l1), (o2, l2) = _split_keys(q, k, v, cut, causal)
    out, lse = merge_partials(o1, l1, o2, l2)
    _assert_close(out, lse, *naive_attention(q, k, v, causal), 1e-12)
    out_b, lse_b = merge_partials(o2, l2, o1, l1)
    assert (out - out_b).abs().max().item() <= 1e-15
    assert torch.equal(torch.isneginf(lse), torch.isneginf(lse_b))


def test_merge_with_empty_partials_gives_no_nan():
    out = torch.randn(1, 1, 3, 2, dtype=torch.float64)
    lse = torch.tensor([[[0.5, -math.inf, 2.0]]], dtype=torch.float64)
    empty_out = torch.zeros_like(out)
    empty_lse = torch.full_like(lse, -math.inf)
    m_out, m_lse = merge_partials(out, lse, empty_out, empty_lse)
    assert not torch.isnan(m_out).any() and not torch.isnan(m_lse).any()
    assert torch.equal(m_lse, lse)
    assert torch.equal(m_out[..., 0, :], out[..., 0, :])
    assert torch.equal(m_out[..., 1, :], torch.zeros(1, 1, 2, dtype=torch.float64))  # both empty


def test_merge_rejects_mismatched_partials():
    o = torch.zeros(1, 1, 3, 2)
    with pytest.raises(AttentionInputError, match="partials do not match"):
        merge_partials(o, torch.zeros(1, 1, 3), torch.zeros(1, 1, 4, 2), torch.zeros(1, 1, 4))


@pytest.mark.parametrize(
    "shapes,match",
    [
        (((1, 4, 5, 8), (1, 3, 5, 8), (1, 3, 5, 8)), "multiple of the number of key/value heads"),
        (((1, 4, 5, 8), (1, 2, 5, 8), (1, 2, 6, 8)), "k and v must have the same shape"),
        (((1, 4, 5, 8), (1, 2, 5, 4), (1, 2, 5, 4)), "head dim"),
        (((4, 5, 8), (1, 2, 5, 8), (1, 2, 5, 8)), "4 dimensions"),
    ],
)
def test_bad_shapes_are_named(shapes, match):
    q, k, v = (torch.zeros(s) for s in shapes)
    with pytest.raises(AttentionInputError, match=match):
        blockwise_attention(q, k, v, causal=True)
