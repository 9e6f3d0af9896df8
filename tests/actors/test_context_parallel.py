"""Context-parallel prefill + tree decoding across Ray actors equals single-process generation.

One 1024-token prompt; groups of 2 (ring), 3 (zigzag) and 4 (hybrid: Ulysses pairs x ring) ranks
placed on ``device:<kind>`` units, with unequal speeds (zigzag: explicit shares 350/200/474) so
the shares are unequal. Each group is a
fresh set of actors (one collective group per actor process).
"""

from __future__ import annotations

import pytest
import torch

from actors.context_parallel import ContextParallelGroup, check_strategy, shares_plan
from actors.llm.llama import LocalAttention, load_bundled
from cluster.exceptions import InputError
from tests.actors.test_llama import long_text

PROMPT_TOKENS = 1024
NEW_TOKENS = 4
KINDS = ["rtx4090", "a100-80g-sxm", "jetson-agx-orin-64", "rtx4090"]


@pytest.fixture(scope="module")
def reference():
    from transformers import AutoTokenizer

    torch.set_num_threads(1)
    model, path = load_bundled()
    tok = AutoTokenizer.from_pretrained(str(path))
    ids = tok(long_text(PROMPT_TOKENS // 10 + 5))["input_ids"][:PROMPT_TOKENS]
    assert len(ids) == PROMPT_TOKENS
    with torch.inference_mode():  # one prefill, then greedy steps (as greedy_generate does)
        attn = LocalAttention(model.cfg.num_layers)
        hidden = model.hidden(torch.tensor([ids]), torch.arange(len(ids)), attn)[0]
        logits = [model.logits(hidden[-1])]
        tokens = [int(logits[0].argmax())]
        for step in range(NEW_TOKENS - 1):
            h = model.hidden(torch.tensor([[tokens[-1]]]), torch.tensor([len(ids) + step]), attn)
            logits.append(model.logits(h[0, -1]))
            tokens.append(int(logits[-1].argmax()))
    return ids, hidden, tokens, logits


@pytest.mark.parametrize("world,strategy", [(2, "ring"), (3, "zigzag"), (4, "hybrid")])
def test_context_parallel_equals_single_process(ray_session, reference, world, strategy):
    ids, hidden, tokens, logits = reference
    group = ContextParallelGroup(KINDS[:world])
    try:
        speeds = [1.0 + 0.7 * r for r in range(world)]
        # zigzag takes explicit shares (as solvers.shards.solve gives them), the others speeds
        plan = shares_plan("zigzag", [350, 200, 474]) if strategy == "zigzag" else None
        res = group.generate(ids, NEW_TOKENS, strategy=strategy, speeds=speeds, plan=plan)
    finally:
        group.shutdown()
    lengths = [res.plan.length(r) for r in range(world)]
    assert len(set(lengths)) == world, f"shares should be unequal, got {lengths}"
    # the KV cache stays distributed: each rank holds exactly its rows after prefill
    assert list(res.kv_rows) == lengths and sum(lengths) == PROMPT_TOKENS
    assert res.tokens == tokens
    assert res.decode_agree  # every rank computed the same next-token logits
    torch.testing.assert_close(res.hidden, hidden, rtol=1e-4, atol=2e-4)
    for got, want in zip(res.logits, logits):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)
    assert all(b > 0 for b in res.bytes_sent)


def test_bad_strategy_names_the_field():
    with pytest.raises(InputError, match="strategy: expected one of .*got 'rnig'.*ring"):
        check_strategy("rnig")
    assert check_strategy("zigzag") == "zigzag"


@pytest.mark.parametrize("strategy", ["ring", "zigzag", "ulysses", "hybrid"])
def test_shares_plan_gives_each_rank_its_share(strategy):
    shares = [5, 2, 9, 4]
    plan = shares_plan(strategy, shares)
    assert plan.seq_len == 20 and [plan.length(r) for r in range(4)] == shares
    if strategy == "zigzag":  # rank r: chunk r and chunk 2P-1-r
        assert plan.segments == (((0, 3), (18, 20)), ((3, 4), (17, 18)), ((4, 9), (13, 17)),
                                 ((9, 11), (11, 13)))
        starts = sorted((seg[0], r) for r, segs in enumerate(plan.segments) for seg in segs)
        assert [r for _, r in starts] == [0, 1, 2, 3, 3, 2, 1, 0]
    else:
        assert all(len(s) == 1 for s in plan.segments)
    with pytest.raises(InputError, match="shares"):
        shares_plan(strategy, [3, 0])


def test_kv_shard_grows_in_place_and_equals_concatenation():
    """The owner's decode-time appends (spare rows, grown when full) give exactly the
    concatenated cache, as views of one buffer between regrowths."""
    from actors.context_parallel import ContextParallelRank

    rank = object.__new__(ContextParallelRank)  # the append logic only; no model, no Ray
    g = torch.Generator().manual_seed(0)
    k0, v0 = torch.randn(1, 3, 700, 8, generator=g), torch.randn(1, 3, 700, 8, generator=g)
    rank.k, rank.v, rank._kv_room = [k0], [v0], [(None, None)]
    ks, vs = [k0], [v0]
    ptrs = set()
    for _ in range(600):
        k, v = torch.randn(1, 3, 1, 8, generator=g), torch.randn(1, 3, 1, 8, generator=g)
        rank.append_kv(0, k, v)
        ks.append(k)
        vs.append(v)
        ptrs.add(rank.k[0].data_ptr())
    assert torch.equal(rank.k[0], torch.cat(ks, dim=2)) and torch.equal(rank.v[0], torch.cat(vs, dim=2))
    assert len(ptrs) == 3  # room 956, 1212, 1515 rows: three buffers for 600 tokens, not 600
