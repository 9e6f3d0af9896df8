"""actors/llm/llama.py against transformers' Llama on the same SmolLM2-135M weights."""

from __future__ import annotations

import pytest
import torch

from actors.llm.llama import LlamaConfig, LocalAttention, greedy_generate, load_bundled
from cluster.exceptions import InputError


def long_text(n_lines: int) -> str:
    """Deterministic prose-like text (no file that may change)."""
    animals = ["fox", "dog", "cat", "owl", "eel", "yak", "elk"]
    return " ".join(
        f"Line {i}: the {animals[i % 7]} met the {animals[(3 * i) % 7]} and counted "
        f"{(i * 37) % 101} stones by the river." for i in range(n_lines)
    )


@pytest.fixture(scope="module")
def models():
    torch.set_num_threads(1)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    mine, path = load_bundled()
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(path))
    return mine, hf, tok


@torch.inference_mode()
def hf_prefill_and_greedy(hf, ids: list[int], n: int):
    out = hf(torch.tensor([ids]), use_cache=True)
    logits, pkv, toks = out.logits[0], out.past_key_values, []
    nxt = int(logits[-1].argmax())
    for _ in range(n):
        toks.append(nxt)
        out = hf(torch.tensor([[nxt]]), past_key_values=pkv, use_cache=True)
        pkv, nxt = out.past_key_values, int(out.logits[0, -1].argmax())
    return logits, toks


@torch.inference_mode()
def mine_prefill_and_greedy(model, ids: list[int], n: int):
    attn = LocalAttention(model.cfg.num_layers)
    logits = model(torch.tensor([ids]), torch.arange(len(ids)), attn)[0]
    nxt, toks = int(logits[-1].argmax()), []
    for step in range(n):
        toks.append(nxt)
        lg = model(torch.tensor([[nxt]]), torch.tensor([len(ids) + step]), attn)[0, -1]
        nxt = int(lg.argmax())
    return logits, toks


@pytest.mark.parametrize("n_tokens,n_new", [(24, 12), (600, 3)])
def test_logits_and_greedy_match_transformers(models, n_tokens, n_new):
    mine, hf, tok = models
    ids = tok(long_text(n_tokens // 10 + 5))["input_ids"][:n_tokens]
    assert len(ids) == n_tokens
    ref_logits, ref_toks = hf_prefill_and_greedy(hf, ids, n_new)
    logits, toks = mine_prefill_and_greedy(mine, ids, n_new)
    assert logits.shape == ref_logits.shape == (n_tokens, 49152)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)
    assert toks == ref_toks


def test_config_is_smollm2(models):
    cfg = models[0].cfg
    assert (cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (30, 9, 3, 64)
    assert cfg.rope_theta == 100000.0 and cfg.tie_embeddings
    assert models[0].lm_head is None


def test_greedy_generate_matches_stepwise(models):
    mine, _, tok = models
    ids = tok(long_text(3))["input_ids"]
    toks, logits = greedy_generate(mine, ids, 5)
    assert toks == mine_prefill_and_greedy(mine, ids, 5)[1]
    assert [int(l.argmax()) for l in logits] == toks


def test_bad_input_names_the_field(models):
    mine = models[0]
    with pytest.raises(InputError, match="prompt"):
        greedy_generate(mine, [], 3)
    with pytest.raises(InputError, match="max_new_tokens"):
        greedy_generate(mine, [1, 2], -1)
    with pytest.raises(InputError, match="positions"):
        mine(torch.tensor([[1, 2]]), torch.tensor([5, 6]), LocalAttention(30))
    with pytest.raises(InputError, match="config.vocab_size"):
        LlamaConfig.from_hf({"model_type": "llama", "num_attention_heads": 2, "hidden_size": 8})
    with pytest.raises(InputError, match="config.model_type"):
        LlamaConfig.from_hf({"model_type": "gpt2"})
