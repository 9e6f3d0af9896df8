"""Shard sizing for unequal devices, checked against brute force and exact work counts (no Ray)."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attention.exceptions import AttentionInputError
from attention.partition import (
    ShardPlan,
    causal_boundaries,
    contiguous_plan,
    hybrid_plan,
    largest_remainder,
    normalise_speeds,
    rank_pairs,
    rank_tiles,
    split_heads,
    visible_pairs,
    visible_tiles,
    zigzag_plan,
)

speeds_st = st.lists(st.floats(0.1, 10.0), min_size=1, max_size=6)


@settings(max_examples=200, deadline=None)
@given(total=st.integers(0, 200), speeds=speeds_st)
def test_largest_remainder_sums_and_stays_near_quota(total, speeds):
    sizes = largest_remainder(total, speeds)
    assert sum(sizes) == total
    if total >= len(speeds):
        assert min(sizes) >= 1
    quotas = [total * s / sum(speeds) for s in speeds]
    if all(q >= 1 for q in quotas):  # no minimum fix-up needed: Hamilton's bound holds
        assert all(abs(n - q) < 1 for n, q in zip(sizes, quotas))


def test_largest_remainder_known_values():
    assert largest_remainder(10, [1, 1, 1]) == (4, 3, 3)
    assert largest_remainder(7, [1, 2, 4]) == (1, 2, 4)
    assert largest_remainder(8, [1, 100, 100]) == (1, 3, 4)  # at least one each; tie: rank 1 gives
    assert split_heads(8, [1.0, 3.0]) == (2, 6)


def test_split_heads_refuses_more_ranks_than_heads():
    with pytest.raises(AttentionInputError, match="only 2 heads"):
        split_heads(2, [1.0, 1.0, 1.0])


@settings(max_examples=300, deadline=None)
@given(qs=st.integers(0, 30), ql=st.integers(0, 20), ks=st.integers(0, 30), kl=st.integers(0, 20), causal=st.booleans())
def test_visible_pairs_matches_brute_force(qs, ql, ks, kl, causal):
    brute = sum(1 for i in range(qs, qs + ql) for j in range(ks, ks + kl) if not causal or j <= i)
    assert visible_pairs((qs, qs + ql), (ks, ks + kl), causal=causal) == brute


def _max_time(bounds, speeds):
    return max(
        visible_pairs((bounds[r], bounds[r + 1]), (0, bounds[-1]), causal=True) / speeds[r]
        for r in range(len(speeds))
    )


@pytest.mark.parametrize("speeds", [(1.0, 1.0), (1.0, 3.0), (3.0, 1.0), (1.0, 2.0, 4.0), (2.0, 1.0, 1.0, 5.0)])
@pytest.mark.parametrize("length", [24, 31, 40])
def test_square_root_rule_is_near_the_brute_force_optimum(speeds, length):
    """The slowest rank's time under the square-root rule is within one row of the best cut."""
    b = causal_boundaries(length, speeds)
    best = min(
        _max_time((0, *cuts, length), speeds)
        for cuts in itertools.combinations(range(1, length), len(speeds) - 1)
    )
    row = length / min(speeds)  # the cost of one full row on the slowest device
    assert _max_time(b, speeds) <= best + row


@settings(max_examples=100, deadline=None)
@given(length=st.integers(64, 5000), speeds=speeds_st)
def test_causal_boundaries_balance_work_per_speed(length, speeds):
    """Perf model: each rank's pairs / speed is within one shard-edge row of the ideal."""
    b = causal_boundaries(length, speeds)
    assert b[0] == 0 and b[-1] == length and all(b[i] < b[i + 1] for i in range(len(speeds)))
    plan = ShardPlan(length, tuple(((b[r], b[r + 1]),) for r in range(len(speeds))))
    work = rank_pairs(plan, causal=True)
    total = length * (length + 1) // 2
    assert sum(work) == total
    ideals = [total * s / sum(speeds) for s in speeds]
    if min(ideals) >= 2 * length:  # no rank forced up to its one-row minimum
        # rounding moves each of a shard's two boundaries by <= 1/2 row (<= length/2 pairs each)
        assert all(abs(w - i) <= length for w, i in zip(work, ideals))


@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("chunk", [16, 64])
def test_zigzag_work_is_exactly_equal_when_chunks_are_whole_blocks(world, chunk):
    plan = zigzag_plan(2 * world * chunk, [1.0] * world)
    assert len(set(rank_pairs(plan, causal=True))) == 1
    assert len(set(rank_tiles(plan, causal=True, block=16))) == 1


@pytest.mark.parametrize("world", [2, 3, 4])
@pytest.mark.parametrize("length", [31, 1001, 3824])
def test_zigzag_work_is_equal_within_one_block(world, length):
    block = 64
    plan = zigzag_plan(length, [1.0] * world)
    pairs = rank_pairs(plan, causal=True)
    tiles = rank_tiles(plan, causal=True, block=block)
    assert max(pairs) - min(pairs) <= block * block
    assert max(tiles) - min(tiles) <= 1 + 2 * world  # uneven chunk ends: at most a ragged tile per segment pair
    contiguous = rank_pairs(contiguous_plan(length, [1.0] * world, causal=False), causal=True)
    assert max(pairs) < max(contiguous)  # zigzag beats an equal contiguous cut


def test_zigzag_with_unequal_speeds_follows_speed():
    speeds = [1.0, 2.0, 3.0]
    plan = zigzag_plan(6000, speeds)
    work = rank_pairs(plan, causal=True)
    per_speed = [w / s for w, s in zip(work, speeds)]
    assert max(per_speed) / min(per_speed) < 1.01


def test_tiles_count_brute_force():
    assert visible_tiles((0, 8), (0, 8), causal=True, block=4) == 3
    assert visible_tiles((0, 8), (0, 8), causal=False, block=4) == 4


def test_plans_tile_the_sequence_and_roundtrip():
    x = torch.arange(2 * 3 * 37 * 2).reshape(2, 3, 37, 2)
    for plan in (
        zigzag_plan(37, [1.0, 1.0, 1.0]),
        contiguous_plan(37, [1.0, 2.0, 5.0], causal=True),
        hybrid_plan(37, [1.0, 2.0, 1.0, 3.0], 2, causal=True),
    ):
        parts = [plan.shard(x, r) for r in range(plan.world_size)]
        assert sum(p.shape[2] for p in parts) == 37
        assert torch.equal(plan.unshard(parts), x)


def test_hybrid_plan_keeps_groups_contiguous_and_at_least_u_rows():
    plan = hybrid_plan(9, [1.0, 1.0, 100.0, 100.0], 2, causal=True)
    segs = [s[0] for s in plan.segments]
    assert segs[0][1] == segs[1][0] and segs[2][1] == segs[3][0]
    assert all(e - s >= 1 for s, e in segs)


@pytest.mark.parametrize(
    "segments,match",
    [
        ((((0, 3),), ((2, 5),)), "tile"),
        ((((0, 3),), ((3, 4),)), "do not cover"),
        ((((0, 5),), ()), "holds no rows"),
    ],
)
def test_shard_plan_rejects_bad_segments(segments, match):
    with pytest.raises(AttentionInputError, match=match):
        ShardPlan(5, segments)


@pytest.mark.parametrize(
    "speeds,world,match",
    [
        ([1.0], 2, "speeds has 1 entries but world_size is 2"),
        ([1.0, 0.0], 2, r"speeds\[1\] = 0.0 must be a finite number > 0"),
        ([1.0, float("nan")], 2, r"speeds\[1\]"),
        (None, 0, "world_size must be an integer >= 1"),
    ],
)
def test_bad_speeds_are_named(speeds, world, match):
    with pytest.raises(AttentionInputError, match=match):
        normalise_speeds(speeds, world)


def test_too_short_sequences_are_refused():
    with pytest.raises(AttentionInputError, match="zigzag on 3 ranks"):
        zigzag_plan(5, [1.0] * 3)
    with pytest.raises(AttentionInputError, match="needs >= 4 rows"):
        contiguous_plan(3, [1.0] * 4, causal=True)
