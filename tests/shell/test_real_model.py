"""The real model (SmolLM2-135M-Instruct from the bundled GGUF) in an ExpertActor, end to end
through the router and gRPC; its memory reservation; a local model directory loaded by path."""

from __future__ import annotations

import uuid

import pytest

KIND = "a100-80g-sxm"
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def real(ray_session):
    """One a100 DeviceActor + an ExpertActor with the default model -> Router -> gateway."""
    import ray

    from actors.device import spawn
    from actors.expert import ExpertConfig, spawn_expert
    from actors.llm.loader import ensure_cached, resolve_source
    from actors.routing import Replica
    from actors.router import Router
    from cluster.catalog import default_catalog
    from cluster.shell.gateway import Gateway, GatewayConfig
    from cluster.state import open_store

    ensure_cached(resolve_source(None))  # dequantise once (shared default cache)
    dev = spawn(default_catalog().get(KIND), f"{KIND}-0")
    exp = spawn_expert(dev, KIND, f"{KIND}-0", ExpertConfig(max_concurrency=2, max_context=1024))
    store = open_store(None, namespace=f"test-real-{uuid.uuid4().hex[:8]}")
    router = Router(store, [Replica(f"{KIND}-0", KIND, exp, 2)])
    router.start()
    gw = Gateway(router, store, GatewayConfig(port=0), "smollm2-135m").start()
    yield {"dev": dev, "exp": exp, "router": router, "gateway": gw, "store": store}
    gw.stop(0.5)
    ray.get(exp.stop.remote())
    for a in (exp, dev):
        ray.kill(a)


def test_paris_end_to_end_through_grpc(real):
    from cluster import models, perf
    from cluster.shell.client import Client, GenerateResult
    from cluster.catalog import default_catalog

    with Client(real["gateway"].address) as c:
        items = list(c.stream(QUESTION, max_tokens=12))
    result = items[-1]
    assert isinstance(result, GenerateResult)
    assert "Paris" in result.text
    assert "".join(items[:-1]) == result.text and len(items) > 2  # streamed in several chunks
    assert result.finish_reason == "stop" and result.device_kind == KIND and result.simulated
    assert result.ttft_ms > 0 and result.tpot_ms > 0 and result.e2e_ms >= result.ttft_ms
    # the modeled figures are exactly cluster/perf's for this model shape on an A100
    cost = perf.request_latency(models.get_model("smollm2-135m"), default_catalog().get(KIND),
                                result.prompt_tokens, result.completion_tokens)
    assert result.modeled_ttft_ms == pytest.approx(cost.ttft_s * 1e3, rel=1e-12)
    assert result.modeled_energy_j == pytest.approx(cost.energy_j, rel=1e-12)
    assert real["store"].journal_unacked() == []


def test_stop_string_and_seeded_sampling(real):
    router = real["router"]
    cut = router.generate({"prompt": QUESTION, "max_tokens": 12, "stop": ["Paris"]})
    assert "Paris" not in cut["text"] and cut["finish_reason"] == "stop" and cut["text"].startswith("The capital")
    a = router.generate({"prompt": "Tell me a word.", "max_tokens": 5, "temperature": 0.9, "top_p": 0.9, "seed": 11})
    b = router.generate({"prompt": "Tell me a word.", "max_tokens": 5, "temperature": 0.9, "top_p": 0.9, "seed": 11})
    assert a["text"] == b["text"] and a["completion_tokens"] == b["completion_tokens"] <= 5
    short = router.generate({"prompt": "Count from one to twenty.", "max_tokens": 3})
    assert short["completion_tokens"] == 3 and short["finish_reason"] == "length"


def test_context_limit_is_invalid_argument(real):
    from cluster.exceptions import InputError

    with pytest.raises(InputError, match=r"^max_tokens: prompt of \d+ tokens \+ max_tokens=1020 exceeds"):
        real["router"].generate({"prompt": QUESTION, "max_tokens": 1020})


def test_weights_and_kv_cache_are_reserved_in_the_device_ledger(real):
    import ray

    info = ray.get(real["exp"].info.remote())
    ledger = ray.get(real["dev"].ledger.remote())
    # fp32 weights of 134,515,008 parameters + K and V (30 layers x 3 heads x 64 x 4 B) x 1024 tokens x 2
    expected = 134_515_008 * 4 + 2 * 30 * 3 * 64 * 4 * 1024 * 2
    assert info["reserved_bytes"] == expected == ledger["reserved_bytes"]


def test_model_that_does_not_fit_is_refused(ray_session):
    import ray

    from actors.device import spawn
    from actors.expert import spawn_expert
    from cluster.catalog import default_catalog
    from cluster.exceptions import CapacityError

    kind = "jetson-agx-orin-64"
    spec = default_catalog().get(kind)
    dev = spawn(spec, f"{kind}-tight")
    try:
        ray.get(dev.reserve.remote(spec.memory_bytes - 100 * 2**20, "someone else"))
        before = ray.get(dev.ledger.remote())
        with pytest.raises(CapacityError, match="cannot reserve"):
            spawn_expert(dev, kind, f"{kind}-tight")
        assert ray.get(dev.ledger.remote()) == before
    finally:
        ray.kill(dev)


def test_local_model_directory_gives_the_same_greedy_answer(real):
    from actors.llm.generate import Completion, SamplingParams, encode_prompt, stream_generate
    from actors.llm.loader import cache_dir, load

    local = load(str(cache_dir() / "smollm2-135m"))  # a plain Hugging Face directory, by path
    ids = encode_prompt(local.tokenizer, QUESTION)
    final = [e for e in stream_generate(local.model, local.tokenizer, ids, SamplingParams(max_tokens=8)) if isinstance(e, Completion)][0]
    served = real["router"].generate({"prompt": QUESTION, "max_tokens": 8})
    assert final.text == served["text"] and final.prompt_tokens == served["prompt_tokens"]
