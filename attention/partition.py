"""How to cut a sequence and the heads among unequal devices (pure: numbers in, numbers out).

Speeds ``s_r > 0`` (relative throughput of rank ``r``, from the DeviceSpec or measured) give
shares ``w_r = s_r / sum s``. The aim is that every rank's work divided by its speed is equal, so
the slowest rank finishes no later than the others.

* **Non-causal, or any per-row-constant work** (Ulysses heads, KV shards for decoding): rank ``r``
  gets ``n_r ~ N w_r`` items, rounded by the largest-remainder method (Hamilton): floors first,
  then the leftover units to the largest fractional parts (ties to the lower rank), and when
  ``N >= P`` every rank gets at least one (taken from the rank that can best spare it).
* **Causal attention over contiguous row shards**: query row ``i`` sees ``i + 1`` keys, so rows
  ``[0, b)`` cost ``C(b) = b (b + 1) / 2`` pairs. Boundaries ``b_r`` with ``C(b_r) = S_r C(L)``,
  ``S_r = w_0 + ... + w_{r-1}`` the cumulative share, give every rank its share of the work:
  ``b_r = (sqrt(1 + 8 S_r C(L)) - 1) / 2 ~ L sqrt(S_r)`` (the square-root rule), rounded.
* **Zigzag** (causal, ring): the sequence is cut into ``2P`` chunks and rank ``r`` holds chunks
  ``r`` and ``2P - 1 - r``. With equal speeds the chunks are equal, so rank ``r``'s work is
  ``(2r + 1) + (4P - 2r - 1) = 4P`` chunk-triangles: equal for all ranks. With unequal speeds each
  of a rank's two chunks carries half its share, ``C(c_j) = C(L) sum_{chunks i < j} w_owner(i) / 2``
  (the square-root rule over chunk ownership ``0, 1, ..., P-1, P-1, ..., 0``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from attention.exceptions import AttentionInputError

Segment = tuple[int, int]


def normalise_speeds(speeds: Sequence[float] | None, world_size: int) -> tuple[float, ...]:
    """Speeds as floats, all 1.0 when ``None``; raise unless one finite positive value per rank."""
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise AttentionInputError(f"world_size must be an integer >= 1, got {world_size!r}")
    if speeds is None:
        return (1.0,) * world_size
    speeds = tuple(float(s) for s in speeds)
    if len(speeds) != world_size:
        raise AttentionInputError(
            f"speeds has {len(speeds)} entries but world_size is {world_size}: give one speed "
            f"per rank"
        )
    for r, s in enumerate(speeds):
        if not math.isfinite(s) or s <= 0:
            raise AttentionInputError(
                f"speeds[{r}] = {s} must be a finite number > 0 (a relative device speed)"
            )
    return speeds


def largest_remainder(total: int, weights: Sequence[float], *, at_least_one: bool = True) -> tuple[int, ...]:
    """Split ``total`` units in proportion to ``weights`` (Hamilton's method); sums to ``total``.

    Quotas ``total * w_r / sum w``; floors first, then the remaining units to the largest
    fractional parts (ties to the lower index). With ``at_least_one`` and ``total >= len(weights)``,
    a rank left at 0 takes one unit from the rank with the largest ``n_r - quota_r`` (ties: the
    larger ``n_r``, then the lower index), repeated until none is 0.
    """
    p = len(weights)
    if p == 0:
        raise AttentionInputError("weights must not be empty")
    if total < 0:
        raise AttentionInputError(f"total must be >= 0, got {total}")
    wsum = float(sum(weights))
    quotas = [total * w / wsum for w in weights]
    sizes = [int(math.floor(x)) for x in quotas]
    left = total - sum(sizes)
    order = sorted(range(p), key=lambda r: (-(quotas[r] - sizes[r]), r))
    for r in order[:left]:
        sizes[r] += 1
    if at_least_one and total >= p:
        while 0 in sizes:
            poor = sizes.index(0)
            donor = max(
                (r for r in range(p) if sizes[r] > 1),
                key=lambda r: (sizes[r] - quotas[r], sizes[r], -r),
            )
            sizes[donor] -= 1
            sizes[poor] += 1
    return tuple(sizes)


def causal_prefix_pairs(b: int) -> int:
    """``C(b) = b (b + 1) / 2``: the (query, key) pairs of causal rows ``[0, b)`` against keys ``[0, b)``."""
    return b * (b + 1) // 2


def _inverse_prefix_pairs(work: float) -> float:
    """The real ``b >= 0`` with ``b (b + 1) / 2 = work``."""
    return (math.sqrt(1.0 + 8.0 * work) - 1.0) / 2.0


def _boundaries_from_cumulative(
    total: int, cum_shares: Sequence[float], minimum: int = 1
) -> tuple[int, ...]:
    """Round the square-root-rule boundaries, keeping each piece >= ``minimum`` rows when
    ``total`` allows."""
    n = len(cum_shares) - 1
    full = causal_prefix_pairs(total)
    raw = [round(_inverse_prefix_pairs(s * full)) for s in cum_shares]
    raw[0], raw[-1] = 0, total
    if total >= n * minimum:  # b_i in [b_{i-1} + minimum, total - (n - i) minimum]
        for i in range(1, n):
            raw[i] = min(max(raw[i], raw[i - 1] + minimum), total - (n - i) * minimum)
    else:
        for i in range(1, n):
            raw[i] = min(max(raw[i], raw[i - 1]), total)
    return tuple(raw)


def causal_boundaries(total: int, speeds: Sequence[float], minimum: int = 1) -> tuple[int, ...]:
    """Row boundaries ``0 = b_0 <= ... <= b_P = total`` so causal work follows the speed shares.

    ``b_r = (sqrt(1 + 8 S_r C(total)) - 1) / 2`` rounded, ``S_r`` the cumulative share of ranks
    ``< r`` (module docstring); each rank keeps at least one row when ``total >= P``.
    """
    wsum = float(sum(speeds))
    cum = [0.0]
    for s in speeds:
        cum.append(cum[-1] + s / wsum)
    cum[-1] = 1.0
    return _boundaries_from_cumulative(total, cum, minimum)


def proportional_boundaries(total: int, speeds: Sequence[float]) -> tuple[int, ...]:
    """Boundaries of contiguous shards sized by :func:`largest_remainder`."""
    out = [0]
    for n in largest_remainder(total, speeds):
        out.append(out[-1] + n)
    return tuple(out)


def zigzag_boundaries(total: int, speeds: Sequence[float]) -> tuple[int, ...]:
    """The ``2P + 1`` chunk boundaries of the zigzag layout (rank ``r`` owns chunks r, 2P-1-r).

    Equal speeds: ``2P`` equal chunks (sizes differ by at most one). Unequal speeds: chunk ``j``
    (owner ``o(j) = j`` for ``j < P``, else ``2P - 1 - j``) carries half its owner's share of
    the causal work, boundaries by the square-root rule (module docstring).
    """
    p = len(speeds)
    if len(set(speeds)) == 1:
        out = [0]
        for n in largest_remainder(total, [1.0] * (2 * p)):
            out.append(out[-1] + n)
        return tuple(out)
    wsum = float(sum(speeds))
    owners = list(range(p)) + list(range(p - 1, -1, -1))
    cum = [0.0]
    for o in owners:
        cum.append(cum[-1] + speeds[o] / wsum / 2.0)
    cum[-1] = 1.0
    return _boundaries_from_cumulative(total, cum)


def split_heads(num_heads: int, speeds: Sequence[float]) -> tuple[int, ...]:
    """Heads per rank by largest remainder, at least one each; raise when ``num_heads < P``."""
    if num_heads < len(speeds):
        raise AttentionInputError(
            f"cannot give each of {len(speeds)} ranks a head: only {num_heads} heads; use "
            f"world_size <= {num_heads} or a sequence strategy ('ring', 'zigzag', 'gather_kv')"
        )
    return largest_remainder(num_heads, speeds)


@dataclass(frozen=True, slots=True)
class ShardPlan:
    """Which rows of a length-``seq_len`` sequence each rank holds.

    ``segments[r]`` is a tuple of half-open ``(start, end)`` row ranges; rank ``r``'s local tensor
    is their concatenation in that order. Together the segments tile ``[0, seq_len)`` exactly.
    """

    seq_len: int
    segments: tuple[tuple[Segment, ...], ...]

    def __post_init__(self) -> None:
        if self.seq_len < 1:
            raise AttentionInputError(f"seq_len must be >= 1, got {self.seq_len}")
        if not self.segments:
            raise AttentionInputError("a ShardPlan needs at least one rank")
        flat = sorted(seg for segs in self.segments for seg in segs)
        pos = 0
        for start, end in flat:
            if start != pos or end <= start:
                raise AttentionInputError(
                    f"segments {flat} must tile [0, {self.seq_len}) with non-empty, "
                    f"non-overlapping ranges"
                )
            pos = end
        if pos != self.seq_len:
            raise AttentionInputError(f"segments {flat} do not cover [0, {self.seq_len})")
        for r, segs in enumerate(self.segments):
            if not segs:
                raise AttentionInputError(f"rank {r} holds no rows; every rank needs >= 1")

    @property
    def world_size(self) -> int:
        return len(self.segments)

    def length(self, rank: int) -> int:
        """Rows held by ``rank``."""
        return sum(e - s for s, e in self.segments[rank])

    def shard(self, x: torch.Tensor, rank: int, dim: int = 2) -> torch.Tensor:
        """Rank ``rank``'s rows of a whole tensor ``x`` (a contiguous copy)."""
        parts = [x.narrow(dim, s, e - s) for s, e in self.segments[rank]]
        return torch.cat(parts, dim=dim).contiguous() if len(parts) > 1 else parts[0].contiguous()

    def unshard(self, parts: Sequence[torch.Tensor], dim: int = 2) -> torch.Tensor:
        """Reassemble the whole tensor from every rank's local tensor."""
        pieces: list[tuple[int, torch.Tensor]] = []
        for r, x in enumerate(parts):
            off = 0
            for s, e in self.segments[r]:
                pieces.append((s, x.narrow(dim, off, e - s)))
                off += e - s
        pieces.sort(key=lambda t: t[0])
        return torch.cat([t for _, t in pieces], dim=dim)


def _check_len(seq_len: int, pieces: int, what: str) -> None:
    if seq_len < pieces:
        raise AttentionInputError(
            f"sequence length {seq_len} is too short for {what}: it needs >= {pieces} rows"
        )


def contiguous_plan(seq_len: int, speeds: Sequence[float], *, causal: bool) -> ShardPlan:
    """One contiguous shard per rank: square-root rule when causal, proportional otherwise."""
    _check_len(seq_len, len(speeds), f"{len(speeds)} ranks")
    b = causal_boundaries(seq_len, speeds) if causal else proportional_boundaries(seq_len, speeds)
    return ShardPlan(seq_len, tuple(((b[r], b[r + 1]),) for r in range(len(speeds))))


def zigzag_plan(seq_len: int, speeds: Sequence[float]) -> ShardPlan:
    """Rank ``r`` holds chunks ``r`` and ``2P - 1 - r`` of :func:`zigzag_boundaries`."""
    p = len(speeds)
    _check_len(seq_len, 2 * p, f"zigzag on {p} ranks (2 chunks per rank)")
    c = zigzag_boundaries(seq_len, speeds)
    return ShardPlan(
        seq_len,
        tuple(((c[r], c[r + 1]), (c[2 * p - 1 - r], c[2 * p - r])) for r in range(p)),
    )


def hybrid_plan(
    seq_len: int, speeds: Sequence[float], ulysses_degree: int, *, causal: bool
) -> ShardPlan:
    """Layout for Ulysses groups of ``u = ulysses_degree`` consecutive ranks x a ring of groups.

    Group ``g`` (ranks ``g u .. g u + u - 1``) holds one contiguous chunk, sized from the group's
    summed speed (square-root rule when causal, proportional otherwise, at least ``u`` rows);
    the chunk is cut among the members by :func:`largest_remainder` on their speeds (after the
    all-to-all every member works on the whole chunk, so this cut only sets transfer sizes).
    """
    n, u = len(speeds), ulysses_degree
    if u < 1 or n % u != 0:
        raise AttentionInputError(f"ulysses_degree {u} must be >= 1 and divide world_size {n}")
    _check_len(seq_len, n, f"{n} ranks")
    groups = n // u
    gspeeds = [sum(speeds[g * u : (g + 1) * u]) for g in range(groups)]
    if causal:
        b = causal_boundaries(seq_len, gspeeds, minimum=u)
    else:
        b = [0]
        for m in largest_remainder(seq_len, gspeeds):
            b.append(b[-1] + m)
        b = _fix_minimum(b, u)
    segs = []
    for g in range(groups):
        pos = b[g]
        for m in largest_remainder(b[g + 1] - b[g], speeds[g * u : (g + 1) * u]):
            segs.append(((pos, pos + m),))
            pos += m
    return ShardPlan(seq_len, tuple(segs))


def _fix_minimum(b: list[int], minimum: int) -> list[int]:
    """Push boundaries so every piece has >= ``minimum`` rows (the total allowing it)."""
    n, total = len(b) - 1, b[-1]
    for i in range(1, n):
        b[i] = min(max(b[i], b[i - 1] + minimum), total - (n - i) * minimum)
    return b


def visible_pairs(q: Segment, k: Segment, *, causal: bool) -> int:
    """Number of (query row i, key row j) pairs in ``q x k`` that attention evaluates.

    Non-causal: all ``|q| |k|``. Causal: pairs with ``j <= i``; row ``i`` sees
    ``clamp(i - k_start + 1, 0, |k|)`` keys, summed in closed form.
    """
    qs, qe = q
    ks, ke = k
    if qe <= qs or ke <= ks:
        return 0
    if not causal:
        return (qe - qs) * (ke - ks)
    total = 0
    a, b = max(qs, ks), min(qe, ke)  # rows inside the key range: i - ks + 1 keys each
    if b > a:
        total += (b - a) * (a - ks + 1 + b - ks) // 2
    a = max(qs, ke)  # rows at or past the end of the key range see all of it
    if qe > a:
        total += (qe - a) * (ke - ks)
    return total


def visible_tiles(q: Segment, k: Segment, *, causal: bool, block: int) -> int:
    """``block x block`` tiles (q and k segments each cut from their start) holding a visible pair."""
    count = 0
    for qs in range(q[0], q[1], block):
        qe = min(qs + block, q[1])
        for ks in range(k[0], k[1], block):
            ke = min(ks + block, k[1])
            if visible_pairs((qs, qe), (ks, ke), causal=causal) > 0:
                count += 1
    return count


def rank_pairs(plan: ShardPlan, *, causal: bool) -> tuple[int, ...]:
    """Per-rank work of a sequence-sharded strategy (ring, zigzag, gather_kv): own query rows
    against every key row, counted in (query, key) pairs."""
    everything = ((0, plan.seq_len),)
    return tuple(
        sum(visible_pairs(qs, ks, causal=causal) for qs in segs for ks in everything)
        for segs in plan.segments
    )


def rank_tiles(plan: ShardPlan, *, causal: bool, block: int) -> tuple[int, ...]:
    """Per-rank work in ``block x block`` tiles: own query segments against every rank's key
    segments, as a ring evaluates them."""
    all_k = [seg for segs in plan.segments for seg in segs]
    return tuple(
        sum(visible_tiles(qs, ks, causal=causal, block=block) for qs in segs for ks in all_k)
        for segs in plan.segments
    )
