"""The native engine (plain-torch Llama + ``tokenizers`` + jinja2 chat template) against the
transformers engine on the same SmolLM2-135M weights: the same chat-template text and prompt ids,
logits within fp32 tolerance, identical greedy token ids, the same streamed text, stop strings and
seeded samples; and an expert process that serves with it never imports transformers."""

from __future__ import annotations

import json

import pytest
import torch

from actors.llm.generate import Chunk, Completion, SamplingParams, _decoder, encode_prompt, stream_generate
from cluster.exceptions import InputError

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Sky colour?"}],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "  spaces\n\nand lines  "}],
    [{"role": "user", "content": "é 漢字 🙂 <|im_end|> {{ not a template }}"}],
    [{"role": "user", "content": ""}],
]
PROMPTS = [  # (text, chat)
    ("What is the capital of France?", True),
    ("Write a haiku about the sea.", True),
    ("List three prime numbers and explain why they are prime.", True),
    ("Once upon a time", False),
    ("def fibonacci(n):", False),
]


@pytest.fixture(scope="module")
def engines():
    """(native, transformers) LoadedModels of the default model; the native one built from the
    shared numpy arrays, as an expert with shared weights builds it."""
    from actors.llm.loader import ensure_cached, load, resolve_source, weight_arrays

    torch.set_num_threads(1)
    arrays = weight_arrays(ensure_cached(resolve_source(None)))
    native = load(None, engine="native", arrays=arrays)
    hf = load(None, engine="transformers")
    assert (native.engine, hf.engine) == ("native", "transformers")
    return native, hf


@torch.inference_mode()
def greedy_ids(lm, prompt_ids: list[int], n: int) -> tuple[list[int], torch.Tensor]:
    """n greedy tokens through the engine's decoder (no EOS stop) and the logits that chose them."""
    dec = _decoder(lm.model)
    logits, toks, rows = dec.prefill(prompt_ids), [], []
    for _ in range(n):
        rows.append(logits.float().clone())
        toks.append(int(torch.argmax(logits)))
        logits = dec.step(toks[-1])
    return toks, torch.stack(rows)


def run(lm, prompt: str, chat: bool, params: SamplingParams) -> tuple[list[str], Completion]:
    ids = encode_prompt(lm.tokenizer, prompt, chat=chat)
    evs = list(stream_generate(lm.model, lm.tokenizer, ids, params))
    assert isinstance(evs[-1], Completion) and all(isinstance(e, Chunk) for e in evs[:-1])
    return [e.text for e in evs[:-1]], evs[-1]


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_chat_template_text_and_ids_equal_transformers(engines, messages):
    native, hf = engines
    want = hf.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert native.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == want
    assert want.endswith("<|im_start|>assistant\n")
    want_ids = list(hf.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])
    assert native.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"] == want_ids


@pytest.mark.parametrize("prompt,chat", PROMPTS)
def test_prompt_ids_and_decoding_equal_transformers(engines, prompt, chat):
    native, hf = engines
    ids = encode_prompt(hf.tokenizer, prompt, chat=chat)
    assert encode_prompt(native.tokenizer, prompt, chat=chat) == ids
    with_specials = ids + [2, 1, 0, 4000, 49151]
    for skip in (True, False):
        assert native.tokenizer.decode(with_specials, skip_special_tokens=skip) == hf.tokenizer.decode(with_specials, skip_special_tokens=skip)
    assert native.tokenizer.eos_token_id == hf.tokenizer.eos_token_id == 2


@pytest.mark.parametrize("prompt,chat,n", [(p, c, 16 if i % 2 else 32) for i, (p, c) in enumerate(PROMPTS)])
def test_greedy_token_ids_equal_and_logits_within_fp32_tolerance(engines, prompt, chat, n):
    native, hf = engines
    ids = encode_prompt(hf.tokenizer, prompt, chat=chat)
    mine, mine_logits = greedy_ids(native, ids, n)
    ref, ref_logits = greedy_ids(hf, ids, n)
    assert mine == ref
    torch.testing.assert_close(mine_logits, ref_logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("prompt,chat", PROMPTS[:3])
def test_streamed_text_equals_transformers(engines, prompt, chat):
    native, hf = engines
    params = SamplingParams(max_tokens=24)
    chunks, done = run(native, prompt, chat, params)
    ref_chunks, ref = run(hf, prompt, chat, params)
    assert "".join(chunks) == done.text == ref.text == "".join(ref_chunks)
    assert (done.finish_reason, done.prompt_tokens, done.completion_tokens) == (ref.finish_reason, ref.prompt_tokens, ref.completion_tokens)


def test_stop_string_and_eos_as_transformers(engines):
    native, hf = engines
    _, full = run(native, "What is the capital of France?", True, SamplingParams(max_tokens=32))
    assert full.finish_reason == "stop" and "Paris" in full.text  # EOS (<|im_end|>) ended it
    params = SamplingParams(max_tokens=32, stop=("Paris",))
    chunks, done = run(native, "What is the capital of France?", True, params)
    _, ref = run(hf, "What is the capital of France?", True, params)
    assert done.text == ref.text == full.text[: full.text.index("Paris")] == "".join(chunks)
    assert done.finish_reason == ref.finish_reason == "stop"


def test_seeded_sampling_is_reproducible_and_matches_transformers(engines):
    native, hf = engines
    params = SamplingParams(max_tokens=32, temperature=0.8, top_p=0.9, seed=11)
    a = run(native, "Tell me a story.", True, params)[1]
    b = run(native, "Tell me a story.", True, params)[1]
    c = run(hf, "Tell me a story.", True, params)[1]
    assert a.text == b.text == c.text and a.completion_tokens == c.completion_tokens
    other = run(native, "Tell me a story.", True, SamplingParams(max_tokens=32, temperature=0.8, top_p=0.9, seed=12))[1]
    assert other.text != a.text


def test_engine_is_validated(tmp_path):
    from actors.expert import ExpertConfig
    from actors.llm.loader import load

    with pytest.raises(InputError, match=r"^engine: 'fast'; allowed: auto, native, transformers$"):
        ExpertConfig(engine="fast")
    with pytest.raises(InputError, match=r"^engine: 'fast'; allowed: auto, native, transformers$"):
        load(None, engine="fast")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(InputError, match=r"engine: 'native' cannot serve '\S+': model_type is 'gpt2', not 'llama'"):
        load(str(tmp_path), engine="native")


@pytest.mark.parametrize("change,reason", [
    ({"model_type": "qwen2"}, "model_type is 'qwen2', not 'llama'"),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5}}, "rope_type is 'llama3', not 'default'"),
    ({"attention_bias": True}, "attention_bias is set (the native Llama has no biases)"),
    ({}, None),
])
def test_native_reason_names_what_the_native_engine_cannot_serve(tmp_path, change, reason):
    from actors.llm.loader import ensure_cached, native_reason, resolve_source

    cache = ensure_cached(resolve_source(None))
    for f in ("model.safetensors", "tokenizer.json"):
        (tmp_path / f).symlink_to(cache / f)
    cfg = json.loads((cache / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, **change}))
    assert native_reason(tmp_path) == reason
    (tmp_path / "tokenizer.json").unlink()
    assert native_reason(tmp_path) == (reason or "no tokenizer.json")


@pytest.mark.parametrize("engine,imported", [("auto", False), ("transformers", True)])
def test_an_expert_imports_transformers_only_with_that_engine(ray_session, engine, imported):
    import ray

    from actors.device import spawn
    from actors.expert import ExpertConfig, put_weights, spawn_expert
    from cluster.catalog import default_catalog

    weights = put_weights(None)
    dev = spawn(default_catalog().get("jetson-agx-orin-64"), f"jetson-agx-orin-64-{engine}")
    expert = spawn_expert(dev, "jetson-agx-orin-64", f"jetson-agx-orin-64-{engine}",
                          ExpertConfig(max_concurrency=1, max_context=256, engine=engine), weights=weights)
    try:
        out = ray.get(expert.generate.remote({"prompt": "What is the capital of France?", "max_tokens": 16}))
        assert "Paris" in out["text"]
        info = ray.get(expert.info.remote())
        assert info["engine"] == ("transformers" if imported else "native") and info["weights"] == "shared"
        assert ray.get(expert.__ray_call__.remote(lambda self: "transformers" in __import__("sys").modules)) is imported
    finally:
        ray.get(expert.stop.remote())
        ray.kill(expert)
        ray.kill(dev)


def test_auto_falls_back_to_transformers_for_what_native_cannot_serve(engines, tmp_path):
    """A copy of the cache entry whose config asks for linear rope scaling with factor 1 (the same
    angles as the default, but not a rope type the native engine takes): auto loads it with
    transformers, and it answers as the native engine does on the original."""
    from actors.llm.loader import ensure_cached, load, resolve_source

    cache = ensure_cached(resolve_source(None))
    for f in cache.iterdir():
        if f.name != "config.json":
            (tmp_path / f.name).symlink_to(f)
    cfg = json.loads((cache / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "linear", "factor": 1.0, "rope_theta": cfg["rope_parameters"]["rope_theta"]}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    lm = load(str(tmp_path))
    assert lm.engine == "transformers"
    params = SamplingParams(max_tokens=16)
    assert run(lm, "What is the capital of France?", True, params)[1].text == run(engines[0], "What is the capital of France?", True, params)[1].text
