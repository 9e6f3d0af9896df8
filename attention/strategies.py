"""The distributed attention strategies, run by every rank on its own shard (in-actor API).

Each function takes this rank's local tensors (rows given by a :class:`ShardPlan`), a
:class:`Communicator`, and returns this rank's ``(out, lse)`` rows, out in the accumulator dtype
(float32, or float64 for float64 inputs). All ranks call the same function with the same plan.

* ``ring`` / ``zigzag``: K/V shards travel around the ring (step ``s``: rank ``i`` holds the K/V
  of ring position ``i - s``), while the next transfer is in flight; partials are merged by
  log-sum-exp. Zigzag is the ring over the zigzag plan; query/key segment pairs that causality
  hides are skipped, which is where zigzag's balance shows. Bytes sent per rank: ``(n - 1)`` K/V
  shards, ``~ 2 L Hkv D (n-1)/n`` elements.
* ``ring`` / ``zigzag`` with ``kv_heads_per_pass`` (:func:`grouped_ring_attention`): the same
  ring, one full pass per group of key/value heads, query rows ``block`` at a time, partials merged
  in place; per-rank memory is linear in the shard and, beyond q, k, v and the output (which may be
  q's own storage), only one head group's accumulator and two of its K/V buffers.
* ``gather_kv``: one (uneven) allgather of K/V, then local queries against all keys.
* ``ulysses``: all-to-all from sequence shards to head shards, full-sequence attention on a
  rank's heads, all-to-all back. Heads follow the KV heads (GQA groups stay whole) when
  ``n <= Hkv``; otherwise query heads are split and K/V expanded per query head.
* ``hybrid``: Ulysses inside groups of ``u`` consecutive ranks x ring across the ``n / u`` groups
  (ranks with the same position in their group form a ring over the group chunks).
* ``tree_decode``: q replicated, K/V sharded; local (out, lse), then one allgather of the packed
  ``[out, lse]`` partials (tiny: ``H x (D + 1)`` numbers per query row) and the exact merge on every
  rank: ``m = max lse``, Tree Attention's numerator ``sum exp(lse - m) out`` and denominator
  ``sum exp(lse - m)``. One collective per layer (latency-bound at decode sizes) instead of an
  ``allreduce_max`` and an ``allreduce_sum``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from attention.blockwise import (
    DEFAULT_BLOCK,
    accumulator_dtype,
    blockwise_attention,
    empty_partial,
    merge_partials_,
)
from attention.comm import Communicator
from attention.exceptions import AttentionInputError
from attention.partition import ShardPlan, split_heads

SEQUENCE_STRATEGIES = ("ring", "zigzag", "ulysses", "hybrid", "gather_kv")
STRATEGIES = SEQUENCE_STRATEGIES + ("tree_decode",)


def _ring_members(comm: Communicator, plan: ShardPlan, ring: Sequence[int] | None) -> list[int]:
    """The global ranks of the ring (default all), checked against the plan's rank count."""
    members = list(range(comm.world_size)) if ring is None else list(ring)
    if plan.world_size != len(members):
        raise AttentionInputError(f"plan has {plan.world_size} ranks, ring has {len(members)}")
    return members


def ring_attention(
    comm: Communicator,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: ShardPlan,
    *,
    causal: bool,
    ring: Sequence[int] | None = None,
    block: int = DEFAULT_BLOCK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ring attention over the global ranks ``ring`` (default all); ``plan`` indexes ring positions."""
    ring = _ring_members(comm, plan, ring)
    n = len(ring)
    i = ring.index(comm.rank)
    out, lse = empty_partial(q)
    kv = torch.stack([k, v])
    for step in range(n):
        src_pos = (i - step) % n
        handle = None
        if step < n - 1:
            nxt = (i - step - 1) % n
            shape = list(kv.shape)
            shape[3] = plan.length(nxt)
            buf = torch.empty(shape, dtype=kv.dtype, device=kv.device)
            handle = comm.exchange(kv, ring[(i + 1) % n], buf, ring[(i - 1) % n])
        _attend_into(
            q, plan.segments[i], kv[0], kv[1], plan.segments[src_pos], out, lse, causal=causal, block=block
        )
        if handle is not None:
            kv = handle.wait()
    return out, lse


def _attend_into(
    q: torch.Tensor,
    q_segs: Sequence[tuple[int, int]],
    k: torch.Tensor,
    v: torch.Tensor,
    k_segs: Sequence[tuple[int, int]],
    out: torch.Tensor,
    lse: torch.Tensor,
    *,
    causal: bool,
    block: int,
) -> None:
    """Merge in place into (out, lse) the attention of q's segments over k/v's segments, query
    rows ``block`` at a time (so a partial never exceeds ``block`` rows of one head group)."""
    qo = 0
    for qs, qe in q_segs:
        for cs in range(qs, qe, block):
            ce = min(cs + block, qe)
            rows = slice(qo + cs - qs, qo + ce - qs)
            ko = 0
            for ks, ke in k_segs:
                if not (causal and ks > ce - 1):
                    o, l = blockwise_attention(
                        q[:, :, rows], k[:, :, ko : ko + ke - ks], v[:, :, ko : ko + ke - ks],
                        causal=causal, q_offset=cs, k_offset=ks, block=block,
                        out_dtype=out.dtype,
                    )
                    merge_partials_(out[:, :, rows], lse[:, :, rows], o, l)
                ko += ke - ks
        qo += qe - qs


def grouped_ring_attention(
    comm: Communicator,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: ShardPlan,
    *,
    causal: bool,
    kv_heads_per_pass: int = 1,
    ring: Sequence[int] | None = None,
    block: int = DEFAULT_BLOCK,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ring attention with bounded extra memory: exact, same result as :func:`ring_attention`.

    Key/value heads are taken ``kv_heads_per_pass`` at a time (with their ``H / Hkv`` query heads);
    for each group the K/V shards make one full ring pass, this rank's query rows are processed
    ``block`` at a time and every partial is merged into the group's accumulator in place
    (:func:`attention.blockwise.merge_partials_`). When the pass ends, the group's rows are written
    to ``out`` [B, H, Lq, D] (accumulator dtype; allocated when ``None``). ``out`` may be ``q``
    itself when q is in the accumulator dtype: a group's query heads are read only during its own
    pass, so writing them afterwards is safe, and the output then costs no memory of its own.

    Extra memory beyond q, k, v, out and lse: the group accumulator (``Lq x g`` rows of ``D``,
    ``g = kv_heads_per_pass x H / Hkv``), two K/V buffers of one group (the shard being used and
    the next one arriving: at most ``2 x 2 x max_shard x kv_heads_per_pass x D``) and one query
    block's partial. Messages: ``(n - 1)`` per group instead of ``n - 1``, each ``Hkv /
    kv_heads_per_pass`` times smaller; bytes sent are those of :func:`ring_attention`.
    """
    ring = _ring_members(comm, plan, ring)
    n = len(ring)
    b, h, lq, d = q.shape
    hkv = k.shape[1]
    if isinstance(kv_heads_per_pass, bool) or not isinstance(kv_heads_per_pass, int) or not (
        1 <= kv_heads_per_pass <= hkv
    ):
        raise AttentionInputError(
            f"kv_heads_per_pass must be an int in [1, {hkv}] (the key/value heads), "
            f"got {kv_heads_per_pass!r}"
        )
    acc = accumulator_dtype(q.dtype)
    if out is None:
        out = torch.empty((b, h, lq, d), dtype=acc, device=q.device)
    elif out.shape != q.shape or out.dtype != acc or out.device != q.device:
        raise AttentionInputError(
            f"out must be a {acc} tensor of q's shape {tuple(q.shape)} on {q.device}, got "
            f"{out.dtype} {tuple(out.shape)} on {out.device}"
        )
    lse = torch.empty((b, h, lq), dtype=acc, device=q.device)
    i = ring.index(comm.rank)
    g = h // hkv
    for a in range(0, hkv, kv_heads_per_pass):
        e = min(a + kv_heads_per_pass, hkv)
        heads = slice(a * g, e * g)
        qg = q[:, heads]
        out_g, lse_g = empty_partial(qg, acc)
        kv = torch.stack([k[:, a:e], v[:, a:e]]) if n > 1 else None
        for step in range(n):
            src_pos = (i - step) % n
            handle = None
            if step < n - 1:
                shape = list(kv.shape)
                shape[3] = plan.length((i - step - 1) % n)
                buf = torch.empty(shape, dtype=kv.dtype, device=kv.device)
                handle = comm.exchange(kv, ring[(i + 1) % n], buf, ring[(i - 1) % n])
            kk, vv = (k[:, a:e], v[:, a:e]) if kv is None else (kv[0], kv[1])
            _attend_into(
                qg, plan.segments[i], kk, vv, plan.segments[src_pos], out_g, lse_g,
                causal=causal, block=block,
            )
            del kk, vv
            if handle is not None:
                kv = handle.wait()
                del buf
        kv = None
        out[:, heads] = out_g
        lse[:, heads] = lse_g
        del out_g, lse_g
    return out, lse


def gather_kv_attention(
    comm: Communicator,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: ShardPlan,
    *,
    causal: bool,
    block: int = DEFAULT_BLOCK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """All-gather K/V (shards may be uneven), then this rank's queries against every key."""
    parts = comm.allgather_uneven(torch.stack([k, v]), dim=3)
    kv = plan.unshard(parts, dim=3)
    out, lse = empty_partial(q)
    _attend_into(
        q, plan.segments[comm.rank], kv[0], kv[1], ((0, plan.seq_len),), out, lse, causal=causal, block=block
    )
    return out, lse


def _head_ranges(sizes: Sequence[int]) -> list[tuple[int, int]]:
    out, pos = [], 0
    for s in sizes:
        out.append((pos, pos + s))
        pos += s
    return out


def _ulysses_heads(
    h: int, hkv: int, head_speeds: Sequence[float]
) -> tuple[list[tuple[int, int]], list[tuple[int, int]], bool]:
    """(query head ranges, kv head ranges, expand_kv) per member (see module docstring)."""
    n, g = len(head_speeds), h // hkv
    if n > h:
        raise AttentionInputError(
            f"ulysses needs world_size (or ulysses_degree) <= number of query heads: {n} ranks "
            f"but {h} heads; use fewer ranks or 'ring' / 'zigzag' / 'gather_kv'"
        )
    if n <= hkv:
        kvr = _head_ranges(split_heads(hkv, head_speeds))
        return [(a * g, b * g) for a, b in kvr], kvr, False
    qr = _head_ranges(split_heads(h, head_speeds))
    return qr, qr, True


def _seq_to_heads(comm, members, sub_plan, q, k, v, qr, kvr):
    """All-to-all: my rows of every member's heads out, the whole chunk of my heads in."""
    i = members.index(comm.rank)
    n = len(members)
    b, _, _, d = q.shape
    kv = torch.stack([k, v])
    mine_q, mine_kv = qr[i], kvr[i]
    sends, bufs = [], []
    for j in range(n):
        qa, qb = qr[j]
        ka, kb = kvr[j]
        sends.append(
            torch.cat([q[:, qa:qb].reshape(-1), kv[:, :, ka:kb].reshape(-1)])
        )
        rows = sub_plan.length(j)
        nq = b * (mine_q[1] - mine_q[0]) * rows * d
        nkv = 2 * b * (mine_kv[1] - mine_kv[0]) * rows * d
        bufs.append(torch.empty(nq + nkv, dtype=q.dtype, device=q.device))
    got = comm.alltoall(sends, bufs, members)
    q_parts, kv_parts = [], []
    for j in range(n):
        rows = sub_plan.length(j)
        hq, hk = mine_q[1] - mine_q[0], mine_kv[1] - mine_kv[0]
        nq = b * hq * rows * d
        q_parts.append(got[j][:nq].view(b, hq, rows, d))
        kv_parts.append(got[j][nq:].view(2, b, hk, rows, d))
    qh = sub_plan.unshard(q_parts, dim=2)
    kvh = sub_plan.unshard(kv_parts, dim=3)
    return qh, kvh[0], kvh[1]


def _heads_to_seq(comm, members, sub_plan, out_h, lse_h, qr):
    """All-to-all back: my heads' output rows to their owners; my rows of every head in."""
    i = members.index(comm.rank)
    n = len(members)
    b, hq, _, d = out_h.shape
    rows_i = sub_plan.length(i)
    sends, bufs = [], []
    for j in range(n):
        o = sub_plan.shard(out_h, j, dim=2)
        l = sub_plan.shard(lse_h, j, dim=2)
        sends.append(torch.cat([o.reshape(-1), l.reshape(-1)]))
        hj = qr[j][1] - qr[j][0]
        bufs.append(torch.empty(b * hj * rows_i * (d + 1), dtype=out_h.dtype, device=out_h.device))
    got = comm.alltoall(sends, bufs, members)
    outs, lses = [], []
    for j in range(n):
        hj = qr[j][1] - qr[j][0]
        no = b * hj * rows_i * d
        outs.append(got[j][:no].view(b, hj, rows_i, d))
        lses.append(got[j][no:].view(b, hj, rows_i))
    return torch.cat(outs, dim=1), torch.cat(lses, dim=1)


def _expand_kv(k: torch.Tensor, v: torch.Tensor, h: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = h // k.shape[1]
    if g == 1:
        return k, v
    return k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)


def ulysses_attention(
    comm: Communicator,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: ShardPlan,
    *,
    causal: bool,
    speeds: Sequence[float] | None = None,
    block: int = DEFAULT_BLOCK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSpeed-Ulysses: seq shards -> head shards (all-to-all), attend, and back."""
    members = list(range(comm.world_size))
    speeds = speeds or (1.0,) * comm.world_size
    qr, kvr, expand = _ulysses_heads(q.shape[1], k.shape[1], speeds)
    if expand:
        k, v = _expand_kv(k, v, q.shape[1])
    qh, kh, vh = _seq_to_heads(comm, members, plan, q, k, v, qr, kvr)
    acc = accumulator_dtype(q.dtype)
    o, l = blockwise_attention(qh, kh, vh, causal=causal, block=block, out_dtype=acc)
    return _heads_to_seq(comm, members, plan, o, l, qr)


def hybrid_groups(world_size: int, ulysses_degree: int) -> list[list[int]]:
    """Ulysses groups of consecutive ranks: ``[[0..u-1], [u..2u-1], ...]``."""
    if ulysses_degree < 1 or world_size % ulysses_degree != 0:
        raise AttentionInputError(
            f"ulysses_degree {ulysses_degree} must be >= 1 and divide world_size {world_size}"
        )
    u = ulysses_degree
    return [list(range(g * u, (g + 1) * u)) for g in range(world_size // u)]


def hybrid_attention(
    comm: Communicator,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: ShardPlan,
    *,
    causal: bool,
    ulysses_degree: int,
    speeds: Sequence[float] | None = None,
    block: int = DEFAULT_BLOCK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """USP: Ulysses inside each group of ``ulysses_degree`` ranks, ring across groups.

    ``plan`` must give each rank one segment, the members of a group holding consecutive rows
    (see :func:`attention.partition.hybrid_plan`). Head split: one for all groups, from the
    summed speeds of each in-group position (so ring partners hold the same heads).
    """
    speeds = speeds or (1.0,) * comm.world_size
    groups = hybrid_groups(comm.world_size, ulysses_degree)
    u = ulysses_degree
    g_idx, pos = divmod(comm.rank, u)
    members = groups[g_idx]
    chunks = []
    for grp in groups:
        first, last = plan.segments[grp[0]], plan.segments[grp[-1]]
        if any(len(plan.segments[r]) != 1 for r in grp):
            raise AttentionInputError("hybrid needs one contiguous segment per rank")
        chunks.append((first[0][0], last[0][1]))
    gs, ge = chunks[g_idx]
    sub_plan = ShardPlan(
        ge - gs, tuple(((plan.segments[r][0][0] - gs, plan.segments[r][0][1] - gs),) for r in members)
    )
    head_speeds = [sum(speeds[grp[p]] for grp in groups) for p in range(u)]
    qr, kvr, expand = _ulysses_heads(q.shape[1], k.shape[1], head_speeds)
    if expand:
        k, v = _expand_kv(k, v, q.shape[1])
    qh, kh, vh = _seq_to_heads(comm, members, sub_plan, q, k, v, qr, kvr)
    ring_plan = ShardPlan(plan.seq_len, tuple((c,) for c in chunks))
    ring = [grp[pos] for grp in groups]
    o, l = ring_attention(comm, qh, kh, vh, ring_plan, causal=causal, ring=ring, block=block)
    return _heads_to_seq(comm, members, sub_plan, o, l, qr)


def tree_decode_attention(
    comm: Communicator,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: ShardPlan,
    *,
    causal: bool,
    block: int = DEFAULT_BLOCK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tree Attention decoding: q [B,H,Lq,D] on every rank (its rows are the last Lq positions,
    ``plan.seq_len - Lq ...``), K/V sharded by ``plan``; every rank returns the whole result.

    ``m = max_r lse_r``; ``out = sum_r exp(lse_r - m) out_r / sum_r exp(lse_r - m)``,
    ``lse = m + log sum_r exp(lse_r - m)``, from one allgather of the packed partials (merged in
    rank order on every rank, so all ranks return bitwise the same result).
    """
    lq = q.shape[2]
    out, lse = empty_partial(q)
    q_seg = ((plan.seq_len - lq, plan.seq_len),)
    # k, v are read in place (no stacked copy of the cache shard per call)
    _attend_into(q, q_seg, k, v, plan.segments[comm.rank], out, lse, causal=causal, block=block)
    # one collective: every rank's packed (out, lse) partial, merged locally in rank order (so
    # every rank computes bitwise the same result)
    parts = comm.allgather(torch.cat([out.reshape(-1), lse.reshape(-1)]), check=False)
    outs = torch.stack([p[: out.numel()].view(out.shape) for p in parts])
    lses = torch.stack([p[out.numel() :].view(lse.shape) for p in parts])
    m = lses.amax(dim=0)
    m_safe = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
    w = torch.exp(lses - m_safe)
    num = (outs * w.unsqueeze(-1)).sum(dim=0)
    den = w.sum(dim=0)
    seen = den > 0
    res = torch.where(seen.unsqueeze(-1), num / torch.where(seen, den, 1.0).unsqueeze(-1), 0.0)
    res_lse = torch.where(seen, m_safe + torch.log(torch.where(seen, den, 1.0)), -math.inf)
    return res, res_lse


def run_strategy(
    strategy: str,
    comm: Communicator,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: ShardPlan,
    *,
    causal: bool,
    speeds: Sequence[float] | None = None,
    ulysses_degree: int | None = None,
    block: int = DEFAULT_BLOCK,
    kv_heads_per_pass: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """In-actor entry point for already-sharded tensors: dispatch ``strategy`` (see module doc).

    ``kv_heads_per_pass`` (ring and zigzag only) selects :func:`grouped_ring_attention`."""
    if kv_heads_per_pass is not None and strategy not in ("ring", "zigzag"):
        raise AttentionInputError(
            f"kv_heads_per_pass is only for strategies 'ring' and 'zigzag', not {strategy!r}"
        )
    if strategy in ("ring", "zigzag"):
        if kv_heads_per_pass is not None:
            return grouped_ring_attention(
                comm, q, k, v, plan, causal=causal, kv_heads_per_pass=kv_heads_per_pass,
                block=block,
            )
        return ring_attention(comm, q, k, v, plan, causal=causal, block=block)
    if strategy == "gather_kv":
        return gather_kv_attention(comm, q, k, v, plan, causal=causal, block=block)
    if strategy == "ulysses":
        return ulysses_attention(comm, q, k, v, plan, causal=causal, speeds=speeds, block=block)
    if strategy == "hybrid":
        if ulysses_degree is None:
            raise AttentionInputError("hybrid needs ulysses_degree")
        return hybrid_attention(
            comm, q, k, v, plan, causal=causal, ulysses_degree=ulysses_degree, speeds=speeds,
            block=block,
        )
    if strategy == "tree_decode":
        return tree_decode_attention(comm, q, k, v, plan, causal=causal, block=block)
    raise AttentionInputError(f"unknown strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")
