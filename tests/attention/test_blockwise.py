"""The local kernel and the (out, lse) merge against the full-matrix reference (no Ray)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from attention.blockwise import (
    blockwise_attention,
    choose_kernel,
    fused_kernel_available,
    kernel_for,
    merge_partials,
    merge_partials_,
    naive_attention,
)
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
    kernel=st.sampled_from(["tiled", "fused"]),
)
def test_blockwise_matches_reference_fp64(
    b, hkv, groups, lq, lk, d, q_offset, k_offset, causal, block, seed, kernel
):
    q, k, v = _qkv(b, hkv * groups, hkv, lq, lk, d, torch.float64, seed)
    out, lse = blockwise_attention(
        q, k, v, causal=causal, q_offset=q_offset, k_offset=k_offset, block=block, kernel=kernel
    )
    assert out.dtype == torch.float64 and lse.dtype == torch.float64
    ref = naive_attention(q, k, v, causal, q_offset, k_offset)
    _assert_close(out, lse, *ref, 1e-10)


@pytest.mark.parametrize("kernel", ["tiled", "fused"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("lq,lk,q_offset,k_offset", [(31, 31, 0, 0), (300, 517, 217, 0), (64, 40, 0, 30)])
def test_blockwise_fp32_within_1e5(causal, lq, lk, q_offset, k_offset, kernel):
    q, k, v = _qkv(2, 4, 2, lq, lk, 16, torch.float32, 7)
    out, lse = blockwise_attention(
        q, k, v, causal=causal, q_offset=q_offset, k_offset=k_offset, block=64, kernel=kernel
    )
    assert out.dtype == torch.float32 and lse.dtype == torch.float32
    _assert_close(out, lse, *naive_attention(q, k, v, causal, q_offset, k_offset), 1e-5)


@pytest.mark.parametrize("kernel", ["tiled", "fused"])
def test_rows_that_see_no_key_give_zero_and_minus_inf(kernel):
    q, k, v = _qkv(1, 2, 1, 10, 5, 4, torch.float64, 1)
    # queries at positions 0..9, keys at 5..9: rows 0..4 see nothing
    out, lse = blockwise_attention(q, k, v, causal=True, q_offset=0, k_offset=5, block=3, kernel=kernel)
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


@pytest.mark.parametrize("kernel", ["tiled", "fused"])
@pytest.mark.parametrize("causal", [True, False])
def test_memory_is_block_times_length_never_length_squared(causal, kernel):
    # for "fused" only the tensors torch's kernel returns are visible here (its own scratch is
    # per-thread q-split x kv-split tiles inside C++)
    b, h, length, d, block = 1, 2, 512, 4, 32
    q, k, v = _qkv(b, h, h, length, length, d, torch.float32, 0)
    probe = _LargestTensor()
    with probe:
        blockwise_attention(q, k, v, causal=causal, block=block, kernel=kernel)
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


# --- the fused CPU kernel: offsets decomposed into one non-causal and one top-left causal call ---

needs_fused = pytest.mark.skipif(
    not fused_kernel_available("cpu"), reason="torch lacks _scaled_dot_product_flash_attention_for_cpu"
)


def _both_kernels(q, k, v, causal, q_offset, k_offset, **kw):
    f = blockwise_attention(q, k, v, causal=causal, q_offset=q_offset, k_offset=k_offset, kernel="fused", **kw)
    t = blockwise_attention(q, k, v, causal=causal, q_offset=q_offset, k_offset=k_offset, kernel="tiled", block=5, **kw)
    return f, t


@needs_fused
@pytest.mark.parametrize(
    "where,lq,lk,q_offset,k_offset",
    [
        ("queries start before the keys, end inside", 12, 9, 0, 6),   # rows 0..5 see nothing
        ("queries start before the keys, end after", 20, 6, 0, 4),
        ("queries start at the keys", 11, 11, 3, 3),
        ("queries start inside the keys, end inside", 5, 17, 8, 0),   # keys 0..7 prefix, tail cut
        ("queries start inside the keys, end after", 13, 10, 4, 0),   # tail shorter than the rows
        ("queries start after the keys", 7, 9, 30, 0),                # every key is prefix
        ("queries start right after the last key", 6, 9, 9, 0),
        ("queries end right before the keys", 6, 9, 0, 6),           # all rows see nothing
        ("queries end far before the keys", 4, 9, 0, 50),
    ],
)
@pytest.mark.parametrize("groups", [1, 3])
def test_fused_offsets_match_reference_and_tiled(where, lq, lk, q_offset, k_offset, groups):
    q, k, v = _qkv(2, 2 * groups, 2, lq, lk, 8, torch.float64, lq * 100 + lk)
    ref = naive_attention(q, k, v, True, q_offset, k_offset)
    (fo, fl), (to, tl) = _both_kernels(q, k, v, True, q_offset, k_offset)
    _assert_close(fo, fl, *ref, 1e-10)
    _assert_close(fo, fl, to.double(), tl.double(), 1e-12)
    assert fo.dtype == torch.float64 and fl.dtype == torch.float64


@needs_fused
def test_fused_fully_masked_rows_are_zero_and_minus_inf():
    q, k, v = _qkv(1, 4, 2, 9, 6, 8, torch.float32, 11)
    out, lse = blockwise_attention(q, k, v, causal=True, q_offset=10, k_offset=14, kernel="fused")
    # query positions 10..18, keys 14..19: rows 0..3 (positions 10..13) see nothing
    assert torch.isneginf(lse[..., :4]).all() and torch.isfinite(lse[..., 4:]).all()
    assert torch.equal(out[..., :4, :], torch.zeros_like(out[..., :4, :]))
    _assert_close(out, lse, *naive_attention(q, k, v, True, 10, 14), 1e-5)
    out, lse = blockwise_attention(q, k, v, causal=True, q_offset=0, k_offset=9, kernel="fused")
    assert torch.isneginf(lse).all() and torch.equal(out, torch.zeros_like(out))


@needs_fused
@pytest.mark.parametrize("causal", [True, False])
def test_fused_gqa_equals_repeated_kv_heads(causal):
    q, k, v = _qkv(2, 8, 2, 23, 31, 16, torch.float64, 4)
    out, lse = blockwise_attention(q, k, v, causal=causal, q_offset=15, k_offset=3, kernel="fused")
    k4, v4 = k.repeat_interleave(4, dim=1), v.repeat_interleave(4, dim=1)
    out4, lse4 = blockwise_attention(q, k4, v4, causal=causal, q_offset=15, k_offset=3, kernel="tiled")
    assert (out - out4).abs().max().item() <= 1e-12
    assert (lse - lse4).abs().max().item() <= 1e-12
    _assert_close(out, lse, *naive_attention(q, k, v, causal, 15, 3), 1e-10)


@needs_fused
@pytest.mark.parametrize("lq,lk,q_offset,k_offset", [(300, 517, 217, 0), (257, 700, 0, 0), (700, 300, 0, 333)])
def test_fused_fp32_longer_sequences_within_1e5(lq, lk, q_offset, k_offset):
    q, k, v = _qkv(1, 4, 2, lq, lk, 64, torch.float32, 9)
    ref = naive_attention(q, k, v, True, q_offset, k_offset)
    (fo, fl), (to, tl) = _both_kernels(q, k, v, True, q_offset, k_offset)
    assert fo.dtype == torch.float32 and fl.dtype == torch.float32
    _assert_close(fo, fl, *ref, 1e-5)
    _assert_close(to, tl, *ref, 1e-5)


@needs_fused
def test_fused_half_inputs_accumulate_in_fp32_and_match_tiled():
    q, k, v = (t.to(torch.bfloat16) for t in _qkv(1, 2, 2, 40, 40, 16, torch.float32, 2))
    (fo, fl), (to, tl) = _both_kernels(q, k, v, True, 5, 0, out_dtype=torch.float32)
    assert fo.dtype == torch.float32 and fl.dtype == torch.float32
    assert (fo - to).abs().max().item() <= 1e-5 and (fl - tl).abs().max().item() <= 1e-5


@needs_fused
def test_auto_kernel_on_cpu_calls_torch_fused_op():
    seen = []

    class _Ops(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(func.__name__)
            return func(*args, **(kwargs or {}))

    q, k, v = _qkv(1, 2, 2, 16, 16, 8, torch.float32, 0)
    with _Ops():
        blockwise_attention(q, k, v, causal=True)
    assert any("_scaled_dot_product_flash_attention_for_cpu" in n for n in seen)
    seen.clear()
    with _Ops():
        blockwise_attention(q, k, v, causal=True, kernel="tiled")
    assert not any("flash" in n for n in seen)


@pytest.mark.parametrize("kernel", ["auto", "tiled", "fused"])
@pytest.mark.parametrize("lq,lk", [(0, 5), (5, 0)])
def test_zero_length_sequences_do_not_reach_the_fused_kernel(kernel, lq, lk):
    q, k, v = _qkv(1, 2, 2, lq, lk, 4, torch.float64, 0)
    out, lse = blockwise_attention(q, k, v, causal=False, kernel=kernel)
    assert out.shape == (1, 2, lq, 4) and lse.shape == (1, 2, lq)
    assert torch.isneginf(lse).all() and torch.equal(out, torch.zeros_like(out))


def test_unknown_kernel_and_fused_off_cpu_are_named():
    q, k, v = _qkv(1, 2, 2, 4, 4, 4, torch.float32, 0)
    with pytest.raises(AttentionInputError, match="kernel must be one of auto, fused, tiled; got 'flash'"):
        blockwise_attention(q, k, v, causal=True, kernel="flash")
    qm, km, vm = (t.to("meta") for t in (q, k, v))
    with pytest.raises(AttentionInputError, match="kernel 'fused' needs CPU tensors"):
        blockwise_attention(qm, km, vm, causal=True, kernel="fused")


@pytest.mark.parametrize("causal", [True, False])
def test_in_place_merge_equals_merge_and_writes_into_a_view(causal):
    q, k, v = _qkv(1, 4, 2, 37, 50, 8, torch.float64, 3)
    p1 = naive_attention(q, k[:, :, :20], v[:, :, :20], causal, q_offset=13, k_offset=0)
    p2 = naive_attention(q, k[:, :, 20:], v[:, :, 20:], causal, q_offset=13, k_offset=20)
    want = merge_partials(*p1, *p2)
    big_out = torch.zeros(1, 4, 60, 8, dtype=torch.float64)
    big_lse = torch.full((1, 4, 60), 7.0, dtype=torch.float64)
    out, lse = big_out[:, :, 10:47], big_lse[:, :, 10:47]
    out.copy_(p1[0])
    lse.copy_(p1[1])
    merge_partials_(out, lse, p2[0].clone(), p2[1])
    assert torch.equal(out, want[0]) or (out - want[0]).abs().max() <= 1e-14
    assert (lse - want[1]).abs().max() <= 1e-14
    assert (big_lse[:, :, :10] == 7.0).all() and (big_out[:, :, 47:] == 0).all()
    ref = naive_attention(q, k, v, causal, q_offset=13)
    assert (out - ref[0]).abs().max() <= 1e-12


@pytest.mark.parametrize(
    "kernel,device,dtype,cpu_op,cuda_op,want",
    [
        ("auto", "cpu", torch.float32, True, False, "fused_cpu"),
        ("auto", "cpu", torch.float64, True, False, "fused_cpu"),
        ("auto", "cpu", torch.float32, False, False, "tiled"),  # older torch
        ("auto", "cuda", torch.bfloat16, True, True, "fused_cuda"),
        ("auto", "cuda", torch.float16, False, True, "fused_cuda"),
        ("auto", "cuda", torch.float32, True, True, "fused_cuda"),
        ("auto", "cuda", torch.float64, True, True, "tiled"),  # no fp64 efficient kernel
        ("auto", "cuda", torch.float32, True, False, "tiled"),  # torch without CUDA
        ("auto", "meta", torch.float32, True, True, "tiled"),
        ("tiled", "cpu", torch.float32, True, True, "tiled"),
        ("tiled", "cuda", torch.bfloat16, True, True, "tiled"),
        ("fused", "cuda", torch.bfloat16, False, True, "fused_cuda"),
        ("fused", "cpu", torch.float32, True, False, "fused_cpu"),
    ],
)
def test_kernel_choice_by_device_and_dtype(kernel, device, dtype, cpu_op, cuda_op, want):
    assert choose_kernel(kernel, device, dtype, cpu_op=cpu_op, cuda_op=cuda_op) == want


@pytest.mark.parametrize("device,dtype", [("cuda", torch.float64), ("cpu", torch.float32)])
def test_fused_without_a_kernel_is_refused_by_name(device, dtype):
    with pytest.raises(AttentionInputError, match=f"kernel 'fused' needs.*got {device}"):
        choose_kernel("fused", device, dtype, cpu_op=False, cuda_op=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CUDA-less dispatch")
@pytest.mark.parametrize("causal", [True, False])
def test_without_cuda_the_dispatch_takes_the_tiled_fallback_and_it_is_exact(causal):
    """No CUDA here: a CUDA (or other non-CPU) tensor would take the tiled loop; that loop's
    (out, lse) on offsets and GQA match the float64 reference (fp32 and fp64 inputs)."""
    assert kernel_for("cuda", torch.float32) == "tiled"
    assert kernel_for("cuda", torch.bfloat16) == "tiled"
    assert kernel_for("meta", torch.float32) == "tiled"
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        q, k, v = _qkv(2, 6, 2, 45, 70, 16, dtype, 4)
        out, lse = blockwise_attention(q, k, v, causal=causal, q_offset=25, k_offset=0, block=16,
                                       kernel="tiled")
        ref_out, ref_lse = naive_attention(q, k, v, causal, q_offset=25, k_offset=0)
        assert (out.double() - ref_out).abs().max().item() <= tol
        assert (lse.double() - ref_lse).abs().max().item() <= tol
