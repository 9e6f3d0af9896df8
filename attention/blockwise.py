"""Blockwise (flash-style) exact attention with its log-sum-exp, and the merge of partials.

Notation, per batch b and query head h: queries ``q_i`` at absolute positions ``p_i``, keys and
values ``k_j, v_j`` at positions ``t_j``, scale ``s = 1/sqrt(D)``. The scores are
``x_ij = s q_i . k_j`` and, for causal attention, only pairs with ``t_j <= p_i`` take part. Then::

    lse_i = log sum_j exp(x_ij)                      (-inf when row i sees no key)
    out_i = sum_j exp(x_ij - lse_i) v_j              (0 when row i sees no key)

Blockwise evaluation: query rows are processed ``block`` at a time, each block's softmax exact
and stable (subtract the row maximum ``m``, ``l = sum exp(x - m)``, ``lse = m + log l``); only a
``[block, Lk]`` score tile exists at any time, so memory is O(L x block), never O(L^2). Key-side
blocking (flash-style online softmax) happens across shards and ring steps through
:func:`merge_partials`, whose recurrence is the same one FlashAttention applies per key block::

    lse' = log(exp(lse) + exp(lse_J)),   out' = exp(lse - lse') out + exp(lse_J - lse') out_J
 Accumulation is float32 (float64 when the
inputs are float64); the output is returned in the input dtype and lse in the accumulator dtype.

Grouped-query attention: with ``H`` query heads and ``Hkv`` key/value heads (``Hkv`` divides
``H``), query head ``h`` reads key/value head ``h // (H // Hkv)``.

Positions: ``q_offset`` and ``k_offset`` give the absolute position of the first query row and
key row, so a shard of a longer sequence knows where it sits; causal masking compares absolute
positions, hence any pair of shards can be evaluated and merged.

Two kernels compute the same (out, lse). ``"fused"`` calls a fused kernel of torch that returns the
log-sum-exp: on CPU ``aten._scaled_dot_product_flash_attention_for_cpu``, on CUDA the
memory-efficient kernel ``aten._scaled_dot_product_efficient_attention(..., compute_log_sumexp=
True)`` (fp16, bf16, fp32; the flash CUDA kernel refuses causal with ``Lq != Lk``, which every
off-diagonal shard pair needs). Both only know "no mask" and top-left-aligned causal (row ``i``
sees key ``j <= i``), so offsets are reduced to those two cases. With ``delta = q_offset - k_offset``,
row ``i`` sees key ``j`` iff ``j <= i + delta``; let ``r0 = max(0, -delta)`` be the first row that
sees any key and ``P = q_offset + r0`` its position. Then::

    rows [0, r0)                     see nothing          -> out = 0, lse = -inf
    keys [0, np),   np = clamp(r0 + delta, 0, Lk)   positions < P: seen by every row >= r0
                                                          -> one non-causal call
    keys [np, ke),  ke = clamp(Lq + delta, np, Lk)   start at position P, like row r0
                                                          -> one top-left causal call

and the two partials of rows ``[r0, Lq)`` are merged with :func:`merge_partials`. Top-left
alignment is exact for the tail because tail key ``j'`` and row ``r0 + i'`` sit at ``P + j'`` and
``P + i'``; a tail shorter than the rows (keys run out, or were cut at the last row's position) is
also exact, since the missing keys do not exist. ``"tiled"`` is the pure-torch blockwise loop
below (any device, any dtype, any torch: the fallback); ``"auto"`` picks by device and dtype
(:func:`choose_kernel`).
"""

from __future__ import annotations

import math

import torch

from attention.exceptions import AttentionInputError

DEFAULT_BLOCK = 512
KERNELS = ("auto", "fused", "tiled")


#: dtypes torch's CUDA memory-efficient attention kernel takes (no float64)
CUDA_FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def choose_kernel(
    kernel: str, device_type: str, dtype: torch.dtype, *, cpu_op: bool, cuda_op: bool
) -> str:
    """The kernel that runs: ``"fused_cpu"``, ``"fused_cuda"`` or ``"tiled"`` (pure rule).

    ``"auto"``: CPU tensors take torch's fused CPU flash kernel when torch has it (``cpu_op``);
    CUDA tensors take the memory-efficient CUDA kernel when torch has it (``cuda_op``: built with
    CUDA and a device present) and the dtype is one it takes (fp16, bf16, fp32); anything else
    (float64 on CUDA, other devices, a torch without the op) takes the tiled loop. ``"fused"``
    is the same choice but refuses to fall back; ``"tiled"`` always is the loop.
    """
    if kernel not in KERNELS:
        raise AttentionInputError(f"kernel must be one of {', '.join(KERNELS)}; got {kernel!r}")
    if kernel == "tiled":
        return "tiled"
    if device_type == "cpu" and cpu_op:
        return "fused_cpu"
    if device_type == "cuda" and cuda_op and dtype in CUDA_FUSED_DTYPES:
        return "fused_cuda"
    if kernel == "fused":
        raise AttentionInputError(
            f"kernel 'fused' needs CPU tensors and torch's "
            f"_scaled_dot_product_flash_attention_for_cpu, or CUDA tensors of "
            f"{', '.join(str(d).removeprefix('torch.') for d in CUDA_FUSED_DTYPES)} and "
            f"_scaled_dot_product_efficient_attention; got {device_type} {dtype}, torch "
            f"{torch.__version__}; use kernel='tiled' or 'auto'"
        )
    return "tiled"


def _cpu_op() -> bool:
    return hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu")


def _cuda_op() -> bool:
    return torch.cuda.is_available() and hasattr(
        torch.ops.aten, "_scaled_dot_product_efficient_attention"
    )


def kernel_for(device: torch.device | str, dtype: torch.dtype, kernel: str = "auto") -> str:
    """:func:`choose_kernel` for tensors of ``dtype`` on ``device`` in this process's torch."""
    dev = torch.device(device)
    return choose_kernel(
        kernel, dev.type, dtype, cpu_op=_cpu_op(), cuda_op=dev.type == "cuda" and _cuda_op()
    )


def fused_kernel_available(device: torch.device | str, dtype: torch.dtype = torch.float32) -> bool:
    """True when a fused kernel (with log-sum-exp) runs for ``dtype`` tensors on ``device``."""
    return kernel_for(device, dtype) != "tiled"


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 inputs, float32 for everything else (fp16, bf16, fp32)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, same_length: bool) -> None:
    """Raise :class:`AttentionInputError` unless q [B,H,Lq,D], k and v [B,Hkv,Lk,D] fit together.

    Checks rank 4, equal batch and head dim, ``k.shape == v.shape``, ``Hkv`` dividing ``H``, equal
    dtypes and devices, and (when ``same_length``) ``Lq == Lk``.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise AttentionInputError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise AttentionInputError(
                f"{name} must have 4 dimensions [B, heads, L, D], got shape {tuple(t.shape)}"
            )
    if k.shape != v.shape:
        raise AttentionInputError(
            f"k and v must have the same shape, got k {tuple(k.shape)} and v {tuple(v.shape)}"
        )
    b, h, lq, d = q.shape
    bk, hkv, lk, dk = k.shape
    if b != bk or d != dk:
        raise AttentionInputError(
            f"q {tuple(q.shape)} and k {tuple(k.shape)} must agree on batch (dim 0) and "
            f"head dim (dim 3)"
        )
    if hkv == 0 or h % hkv != 0:
        raise AttentionInputError(
            f"the number of query heads ({h}) must be a multiple of the number of key/value "
            f"heads ({hkv})"
        )
    if same_length and lq != lk:
        raise AttentionInputError(
            f"q and k must have the same sequence length here, got {lq} and {lk}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise AttentionInputError(
            f"q, k and v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    if not (q.device == k.device == v.device):
        raise AttentionInputError(
            f"q, k and v must be on one device, got {q.device}, {k.device}, {v.device}"
        )
    if not q.dtype.is_floating_point:
        raise AttentionInputError(f"q, k and v must be floating point, got {q.dtype}")


def empty_partial(
    q: torch.Tensor, acc: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The neutral element of :func:`merge_partials`: out = 0 and lse = -inf for every row."""
    acc = acc or accumulator_dtype(q.dtype)
    b, h, lq, d = q.shape
    out = torch.zeros((b, h, lq, d), dtype=acc, device=q.device)
    lse = torch.full((b, h, lq), -math.inf, dtype=acc, device=q.device)
    return out, lse


def blockwise_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool,
    q_offset: int = 0,
    k_offset: int = 0,
    block: int = DEFAULT_BLOCK,
    scale: float | None = None,
    out_dtype: torch.dtype | None = None,
    kernel: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact attention of q [B,H,Lq,D] over k, v [B,Hkv,Lk,D]; returns (out [B,H,Lq,D], lse [B,H,Lq]).

    Query row ``i`` sits at position ``q_offset + i``, key row ``j`` at ``k_offset + j``; with
    ``causal`` a row sees the keys at positions ``<=`` its own. Queries are taken ``block`` rows
    at a time; a block's scores against the keys it can see form one ``[block, Lk']`` tile whose
    softmax is exact (max, exp, sum, then ``P V``), so memory is O(block x Lk) and the work for
    causal attention is the visible pairs plus at most one ``block x block`` triangle per block.
    Key-side blocking is done one level up, by :func:`merge_partials` (ring steps, shard pairs).
    Rows that see no key get out = 0 and lse = -inf (never NaN). ``out_dtype`` defaults to q's.

    ``kernel``: ``"tiled"`` is that loop; ``"fused"`` calls torch's fused kernel for the device
    (CPU flash, CUDA memory-efficient; module docstring: offsets become one non-causal and one
    top-left causal call, merged; its own tiling replaces ``block``) and raises where there is
    none; ``"auto"`` uses it where :func:`choose_kernel` finds one and ``"tiled"`` otherwise
    (float64 on CUDA, other devices, older torch, and tensors with a zero-sized dimension,
    which the fused kernels cannot take).
    """
    check_qkv(q, k, v, same_length=False)
    if block < 1:
        raise AttentionInputError(f"block must be >= 1, got {block}")
    chosen = kernel_for(q.device, q.dtype, kernel)
    acc = accumulator_dtype(q.dtype)
    out_dtype = out_dtype or q.dtype
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    nonempty = q.numel() > 0 and k.numel() > 0  # the fused kernels divide by the sizes (SIGFPE)
    if nonempty and chosen != "tiled":
        out, lse = _fused_attention(q, k, v, causal, q_offset, k_offset, scale, acc)
        return out.to(out_dtype), lse
    return _tiled_attention(q, k, v, causal, q_offset, k_offset, block, scale, acc, out_dtype)


def _fused_call(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """One call of a fused kernel (Lq, Lk >= 1): (out in the accumulator dtype, lse in fp32/64).

    CPU: torch's fused flash kernel, inputs in the accumulator dtype; query head ``h`` reads
    key/value head ``h // (H // Hkv)`` inside the kernel. CUDA: the memory-efficient kernel
    (``aten._scaled_dot_product_efficient_attention(q, k, v, None, compute_log_sumexp=True,
    is_causal=...)``), inputs in their own dtype (it accumulates in fp32), K/V repeated to the
    query heads when ``Hkv < H``, and its lse (padded to a multiple of 32 rows) cut to ``Lq``.
    Both are top-left causal: row ``i`` sees key ``j <= i``.
    """
    acc = accumulator_dtype(q.dtype)
    if q.device.type == "cuda":
        g = q.shape[1] // k.shape[1]
        if g > 1:
            k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
        out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(
            q, k, v, None, True, 0.0, causal, scale=scale
        )[:2]
        return out.to(acc), lse[:, :, : q.shape[2]].to(acc)
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q.to(acc), k.to(acc), v.to(acc), 0.0, causal, scale=scale
    )


def _fused_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool,
    q_offset: int,
    k_offset: int,
    scale: float,
    acc: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse) in ``acc`` through the fused kernel, offsets decomposed as in the module doc.

    Needs every dimension of q and k non-zero.
    """
    lq, lk = q.shape[2], k.shape[2]
    qa, ka, va = q, k, v  # _fused_call casts for the kernel it calls
    if not causal:
        return _fused_call(qa, ka, va, False, scale)
    delta = q_offset - k_offset
    r0 = max(0, -delta)  # first row that sees a key
    if r0 >= lq or lk == 0:  # no row sees a key (also guards the kernel against empty sizes)
        return empty_partial(q, acc)
    n_pre = min(max(r0 + delta, 0), lk)  # keys before row r0's position: seen by all rows >= r0
    k_end = min(max(lq + delta, n_pre), lk)  # one past the last key the last row sees
    rows = qa[:, :, r0:]
    part = None
    if n_pre > 0:
        part = _fused_call(rows, ka[:, :, :n_pre], va[:, :, :n_pre], False, scale)
    if k_end > n_pre:
        tail = _fused_call(
            rows, ka[:, :, n_pre:k_end], va[:, :, n_pre:k_end], True, scale
        )
        part = tail if part is None else merge_partials(*part, *tail)
    if r0 == 0:
        return part
    out, lse = empty_partial(q, acc)
    out[:, :, r0:], lse[:, :, r0:] = part
    return out, lse


def _tiled_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool,
    q_offset: int,
    k_offset: int,
    block: int,
    scale: float,
    acc: torch.dtype,
    out_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pure-torch blockwise loop of :func:`blockwise_attention` (any device)."""
    b, h, lq, d = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    g = h // hkv

    qg = q.reshape(b, hkv, g, lq, d)  # query heads grouped under the key/value head they read
    kt = k.to(acc).transpose(-1, -2)  # [B, Hkv, D, Lk]
    va = v.to(acc)
    out = torch.zeros((b, hkv, g, lq, d), dtype=acc, device=q.device)
    lse = torch.full((b, hkv, g, lq), -math.inf, dtype=acc, device=q.device)

    for qs in range(0, lq, block):
        qe = min(qs + block, lq)
        n = qe - qs
        # keys visible to some row of this block: positions <= the block's last query position
        kend = min(lk, q_offset + qe - k_offset) if causal else lk
        if kend <= 0:
            continue  # the whole block sees no key
        qb = (qg[:, :, :, qs:qe].to(acc) * scale).reshape(b, hkv, g * n, d)
        s = torch.matmul(qb, kt[..., :kend]).view(b, hkv, g, n, kend)
        if causal:
            c0 = max(0, q_offset + qs - k_offset + 1)  # first column the block's first row misses
            if c0 < kend:
                rows = torch.arange(q_offset + qs, q_offset + qe, device=q.device)
                cols = torch.arange(k_offset + c0, k_offset + kend, device=q.device)
                s[..., c0:kend].masked_fill_(cols[None, :] > rows[:, None], -math.inf)
        m = s.amax(dim=-1, keepdim=True)
        m = torch.where(torch.isneginf(m), torch.zeros_like(m), m)  # rows that see nothing
        p = s.sub_(m).exp_()
        l = p.sum(dim=-1, keepdim=True)
        o = torch.matmul(p.view(b, hkv, g * n, kend), va[..., :kend, :]).view(b, hkv, g, n, d)
        seen = l > 0
        out[:, :, :, qs:qe] = torch.where(seen, o / torch.where(seen, l, 1.0), 0.0)
        lse[:, :, :, qs:qe] = torch.where(
            seen, m + torch.log(torch.where(seen, l, 1.0)), -math.inf
        ).squeeze(-1)
    return out.reshape(b, h, lq, d).to(out_dtype), lse.reshape(b, h, lq)


def merge_partials(
    out1: torch.Tensor, lse1: torch.Tensor, out2: torch.Tensor, lse2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge two partial attentions of the same queries over disjoint key sets.

    If partial ``n`` has ``lse_n = log sum_{j in S_n} exp(x_j)`` and
    ``out_n = sum_{j in S_n} exp(x_j - lse_n) v_j``, then over ``S_1 u S_2``::

        lse = log(exp(lse1) + exp(lse2))
            = max + log(exp(lse1 - max) + exp(lse2 - max))      (stable form, max = max(lse1, lse2))
        out = exp(lse1 - lse) out1 + exp(lse2 - lse) out2

    because ``sum_{S_1 u S_2} exp(x_j) v_j = exp(lse1) out1 + exp(lse2) out2``. A row with both
    lse = -inf (no key seen yet) stays out = 0, lse = -inf: the weights are computed against a
    finite stand-in for lse, so ``-inf - -inf`` never appears. The result is in the wider of the
    input dtypes (pass accumulator-dtype partials to keep precision). Pure: inputs are not changed.
    """
    if out1.shape != out2.shape or lse1.shape != lse2.shape or out1.shape[:-1] != lse1.shape:
        raise AttentionInputError(
            f"partials do not match: out {tuple(out1.shape)} / {tuple(out2.shape)}, "
            f"lse {tuple(lse1.shape)} / {tuple(lse2.shape)}"
        )
    lse = torch.logaddexp(lse1, lse2)
    lse_safe = torch.where(torch.isneginf(lse), torch.zeros_like(lse), lse)
    w1 = torch.exp(lse1 - lse_safe).unsqueeze(-1)
    w2 = torch.exp(lse2 - lse_safe).unsqueeze(-1)
    return w1 * out1 + w2 * out2, lse


def merge_partials_(
    out: torch.Tensor, lse: torch.Tensor, out2: torch.Tensor, lse2: torch.Tensor
) -> None:
    """:func:`merge_partials` in place: ``(out, lse)`` becomes the merge of itself and
    ``(out2, lse2)``; ``out2`` is scaled in place too (the caller gives it up). Allocates only
    ``lse``-sized temporaries, so a long accumulator can be merged into without a second copy of it
    (``out`` may be a view, e.g. a slice of rows of a larger accumulator)."""
    if out.shape != out2.shape or lse.shape != lse2.shape or out.shape[:-1] != lse.shape:
        raise AttentionInputError(
            f"partials do not match: out {tuple(out.shape)} / {tuple(out2.shape)}, "
            f"lse {tuple(lse.shape)} / {tuple(lse2.shape)}"
        )
    new = torch.logaddexp(lse, lse2)
    safe = torch.where(torch.isneginf(new), torch.zeros_like(new), new)
    out.mul_(torch.exp(lse - safe).unsqueeze(-1))
    out.add_(out2.mul_(torch.exp(lse2 - safe).unsqueeze(-1)))
    lse.copy_(new)


def naive_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool,
    q_offset: int = 0,
    k_offset: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: softmax(q k^T / sqrt(D)) v with the full score matrix (tests only; O(Lq Lk)).

    Computed in float64 whatever the input dtype; returns (out, lse) in float64. Rows that see no
    key give out = 0 and lse = -inf.
    """
    check_qkv(q, k, v, same_length=False)
    h, hkv, d = q.shape[1], k.shape[1], q.shape[-1]
    g = h // hkv
    q64, k64, v64 = q.double(), k.double(), v.double()
    if g > 1:
        k64 = k64.repeat_interleave(g, dim=1)
        v64 = v64.repeat_interleave(g, dim=1)
    s = torch.matmul(q64, k64.transpose(-1, -2)) / math.sqrt(d)
    if causal:
        q_pos = torch.arange(q_offset, q_offset + q.shape[2])
        k_pos = torch.arange(k_offset, k_offset + k.shape[2])
        s = s.masked_fill(k_pos[None, :] > q_pos[:, None], -math.inf)
    lse = torch.logsumexp(s, dim=-1)
    lse_safe = torch.where(torch.isneginf(lse), torch.zeros_like(lse), lse)
    p = torch.exp(s - lse_safe.unsqueeze(-1))
    return torch.matmul(p, v64), lse
