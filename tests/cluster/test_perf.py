"""The performance model: physics of the roofline, not copied constants.

Devices come from the catalog (cluster.catalog) or are built with ``DeviceSpec(...)``; no Ray.
"""

from __future__ import annotations

import dataclasses
import math
import random

import pytest

from cluster import perf
from cluster.catalog import DeviceSpec, default_catalog
from cluster.exceptions import InputError
from cluster import models
from cluster.models import ModelShape
from cluster.perf import DEFAULT_EFFICIENCY, Efficiency, RequestCost


@pytest.fixture(scope="module")
def catalog():
    return default_catalog()


@pytest.fixture(scope="module")
def a100(catalog) -> DeviceSpec:
    return catalog.get("a100-80g-sxm")


def make_device(**over) -> DeviceSpec:
    """A device that is in no catalog: the formulas must take any DeviceSpec."""
    fields = dict(kind="test-gpu", name="Test GPU", category="datacenter", memory_gib=40.0, mem_bw_gbs=1000.0,
                  tflops_fp16=200.0, tflops_fp8=None, power_idle_w=50.0, power_max_w=300.0,
                  interconnect="PCIe 4.0 x16", link_gbs=32.0, price_per_hour=None)
    fields.update(over)
    return DeviceSpec(**fields)


def scaled(spec: DeviceSpec, **over) -> DeviceSpec:
    """``spec`` with some figures changed (its provenance dropped, since the figures now differ)."""
    return dataclasses.replace(spec, figures=(), **over)


LLAMA2_7B = models.get_model("llama-2-7b")


# ------------------------------------------------------------------------------------ models


def params_from_config(m: ModelShape) -> int:
    """Parameters of a Llama-style decoder recomputed from its config: embedding + layers * (attention
    + MLP + 2 RMSNorms) + final norm + LM head when untied (biases, e.g. Qwen2's qkv bias, ignored)."""
    h, d = m.hidden_size, m.head_dim
    attn = h * (m.n_heads * d) + 2 * h * (m.n_kv_heads * d) + (m.n_heads * d) * h
    mlp = 3 * h * m.intermediate_size  # gate, up, down
    embed = m.vocab_size * h
    lm_head = 0 if m.tie_word_embeddings else embed
    return embed + m.n_layers * (attn + mlp + 2 * h) + h + lm_head


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_model_parameter_count_agrees_with_its_shape(name: str) -> None:
    m = models.MODELS[name]
    assert m.name == name
    assert m.n_params == pytest.approx(params_from_config(m), rel=0.05)


def test_llama_counts_are_exact_without_biases() -> None:
    for name in ("llama-2-7b", "llama-2-13b", "llama-3-8b"):
        m = models.MODELS[name]
        assert m.n_params == params_from_config(m)


def test_gqa_llama3_has_a_quarter_of_llama2_kv_bytes() -> None:
    l2, l3 = models.get_model("llama-2-7b"), models.get_model("llama-3-8b")
    assert l2.kv_bytes_per_token == 4 * l3.kv_bytes_per_token
    # bf16 K and V, 32 layers, 32 heads of 128: 2 * 32 * 32 * 128 * 2 bytes = 512 KiB per token
    assert l2.kv_bytes_per_token == 2 * 32 * 4096 * 2


def test_weight_and_kv_bytes_follow_dtype() -> None:
    bf16 = LLAMA2_7B
    assert bf16.weight_bytes == 2 * bf16.n_params
    int4 = dataclasses.replace(bf16, dtype="int4")
    assert int4.weight_bytes == math.ceil(bf16.n_params / 2)
    # weight-only int4 keeps activations, and so the KV cache, in 16 bits
    assert int4.kv_bytes_per_token == bf16.kv_bytes_per_token
    fp8kv = dataclasses.replace(bf16, kv_dtype="fp8")
    assert 2 * fp8kv.kv_bytes_per_token == bf16.kv_bytes_per_token
    fp32 = dataclasses.replace(bf16, dtype="fp32")
    assert fp32.weight_bytes == 2 * bf16.weight_bytes and fp32.kv_bytes_per_token == 2 * bf16.kv_bytes_per_token


def test_flops_per_token_is_about_twice_the_parameters() -> None:
    for m in models.MODELS.values():
        assert 2 * m.n_params * 0.7 < m.flops_per_token <= 2 * m.n_params
        untied_embedding = 0 if m.tie_word_embeddings else m.vocab_size * m.hidden_size
        assert m.flops_per_token == 2 * (m.n_params - untied_embedding)


def test_prefill_attention_flops_count_causal_pairs() -> None:
    m = models.get_model("smollm2-135m")
    for p in (1, 2, 7, 100):
        pairs = sum(i + 1 for i in range(p))  # query i sees keys 0..i
        assert m.prefill_attention_flops(p) == 4 * m.n_layers * m.n_heads * m.head_dim * pairs
        assert m.prefill_attention_flops(p) == sum(m.attention_flops_per_token(c) for c in range(1, p + 1))


def test_get_model_is_case_insensitive_and_names_known_models() -> None:
    assert models.get_model("  Llama-3-8B ") is models.MODELS["llama-3-8b"]
    with pytest.raises(InputError, match=r"llama-2-7bb.*did you mean 'llama-2-7b'.*known: .*qwen2-1.5b"):
        models.get_model("llama-2-7bb")
    with pytest.raises(InputError, match="unknown model"):
        models.get_model(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        ({"n_kv_heads": 5}, r"n_kv_heads: 5 does not divide n_heads=32"),
        ({"n_layers": 0}, r"ModelShape\.n_layers: expected an integer >= 1, got 0"),
        ({"n_params": -1}, r"ModelShape\.n_params"),
        ({"hidden_size": 4096.0}, r"ModelShape\.hidden_size"),
        ({"dtype": "bf61"}, r"ModelShape\.dtype: unknown dtype 'bf61'.*allowed: fp32, bf16"),
        ({"kv_dtype": "int4"}, r"ModelShape\.kv_dtype: unknown dtype 'int4'"),
        ({"name": ""}, r"ModelShape\.name"),
        ({"tie_word_embeddings": 1}, r"tie_word_embeddings"),
    ],
)
def test_model_shape_validation(change: dict, pattern: str) -> None:
    with pytest.raises(InputError, match=pattern):
        dataclasses.replace(LLAMA2_7B, **change)


# ------------------------------------------------------------------------------------ decode


def test_sanity_llama2_7b_decode_on_a100_is_a_few_ms(a100) -> None:
    t = perf.decode_step_time(LLAMA2_7B, a100, batch=1, context_len=128)
    assert 5e-3 < t < 20e-3
    # and it is bounded below by streaming the 13.5 GB of weights at the datasheet bandwidth
    assert t > LLAMA2_7B.weight_bytes / a100.mem_bw_bytes_s


def test_decode_grows_with_context_and_batch(a100) -> None:
    times = [perf.decode_step_time(LLAMA2_7B, a100, b, c) for b in (1, 4, 16) for c in (0, 512, 2048, 8192)]
    grid = [times[i:i + 4] for i in range(0, 12, 4)]
    for row in grid:
        assert row == sorted(row) and len(set(row)) == 4
    for col in zip(*grid):
        assert list(col) == sorted(col)
    assert grid[0][0] < grid[1][1]


def test_decode_is_linear_in_kv_bytes_read(a100) -> None:
    m = LLAMA2_7B
    t0 = perf.decode_step_time(m, a100, 1, 0)
    # memory bound: only the total KV bytes matter, not how they split into batch x context
    assert perf.decode_step_time(m, a100, 4, 1000) == pytest.approx(perf.decode_step_time(m, a100, 1, 4000), rel=1e-3)
    deltas = [perf.decode_step_time(m, a100, 2, c) - t0 for c in (1000, 2000, 4000, 8000)]
    for c, dt in zip((1000, 2000, 4000, 8000), deltas):
        assert dt == pytest.approx(deltas[0] * c / 1000, rel=1e-9)
    # each extra KV byte costs one byte over the effective bandwidth
    per_byte = deltas[0] / (2 * 1000 * m.kv_bytes_per_token)
    assert per_byte == pytest.approx(1 / (a100.mem_bw_bytes_s * DEFAULT_EFFICIENCY.memory), rel=1e-9)
    # halving the KV bytes (fp8 cache) halves the context-dependent part
    fp8kv = dataclasses.replace(m, kv_dtype="fp8")
    assert perf.decode_step_time(fp8kv, a100, 2, 8000) - t0 == pytest.approx(deltas[-1] / 2, rel=1e-9)


def test_decode_turns_compute_bound_at_large_batch(a100) -> None:
    m = LLAMA2_7B
    # at batch 1 doubling the FLOPs (batch 2, no context) barely moves the step: weights dominate
    assert perf.decode_step_time(m, a100, 2, 0) == perf.decode_step_time(m, a100, 1, 0)
    # at batch 1024 the matmuls dominate: doubling the batch nearly doubles the step
    big = perf.decode_step_time(m, a100, 1024, 0)
    assert perf.decode_step_time(m, a100, 2048, 0) / big > 1.9


# ----------------------------------------------------------------------------------- prefill


def test_prefill_grows_with_prompt_and_is_proportional_to_flops(a100) -> None:
    m = LLAMA2_7B
    lengths = [16, 128, 512, 2048, 4096, 8192]
    times = [perf.prefill_time(m, a100, 1, p) for p in lengths]
    assert times == sorted(times) and len(set(times)) == len(times)
    for p in (2048, 4096):
        ratio_t = perf.prefill_time(m, a100, 1, 2 * p) / perf.prefill_time(m, a100, 1, p)
        ratio_f = perf.prefill_flops(m, 1, 2 * p) / perf.prefill_flops(m, 1, p)
        assert ratio_t == pytest.approx(ratio_f, rel=0.05)
    # attention is quadratic: doubling a long prompt more than doubles the FLOPs and the time
    assert perf.prefill_time(m, a100, 1, 8192) / perf.prefill_time(m, a100, 1, 4096) > 2.05
    # a batch of 4 prompts costs 4x one prompt's FLOPs
    assert perf.prefill_time(m, a100, 4, 2048) == pytest.approx(4 * perf.prefill_time(m, a100, 1, 2048), rel=0.05)


def test_prefill_of_a_long_prompt_runs_near_the_compute_roofline(a100) -> None:
    t = perf.prefill_time(LLAMA2_7B, a100, 1, 4096)
    ideal = perf.prefill_flops(LLAMA2_7B, 1, 4096) / a100.flops_fp16
    # slower than the peak would allow, but within the assumed efficiencies (>= 0.5 of peak here)
    assert ideal < t < ideal / 0.5 + DEFAULT_EFFICIENCY.step_overhead_s


def test_faster_devices_win(catalog) -> None:
    a100, l4, h100 = catalog.get("a100-80g-sxm"), catalog.get("l4"), catalog.get("h100-sxm")
    for m in (LLAMA2_7B, models.get_model("llama-3-8b")):
        for slow, fast in ((l4, a100), (a100, h100)):
            assert perf.prefill_time(m, fast, 1, 1024) < perf.prefill_time(m, slow, 1, 1024)
            assert perf.decode_step_time(m, fast, 8, 1024) < perf.decode_step_time(m, slow, 8, 1024)
            fast_r = perf.request_latency(m, fast, 512, 128)
            slow_r = perf.request_latency(m, slow, 512, 128)
            assert fast_r.ttft_s < slow_r.ttft_s and fast_r.tpot_s < slow_r.tpot_s


def test_fp8_uses_fp8_tensor_cores_only_where_they_exist(catalog) -> None:
    h100, a100 = catalog.get("h100-sxm"), catalog.get("a100-80g-sxm")
    assert perf.peak_flops(h100, "fp8") == pytest.approx(2 * perf.peak_flops(h100, "bf16"), rel=0.01)
    assert perf.peak_flops(a100, "fp8") == perf.peak_flops(a100, "bf16")
    assert perf.peak_flops(a100, "int4") == perf.peak_flops(a100, "bf16")
    fp8 = dataclasses.replace(LLAMA2_7B, dtype="fp8")
    assert perf.prefill_time(fp8, h100, 1, 4096) < 0.6 * perf.prefill_time(LLAMA2_7B, h100, 1, 4096)


# --------------------------------------------------------------------------------- capacity


@pytest.mark.parametrize(("model", "kind"), [("llama-2-13b", "rtx4070"), ("llama-2-7b", "jetson-orin-nano-8")])
def test_models_that_do_not_fit(catalog, model: str, kind: str) -> None:
    m, dev = models.get_model(model), catalog.get(kind)
    assert m.weight_bytes > dev.memory_bytes  # the weights alone are larger than the device
    assert perf.kv_capacity_tokens(m, dev) == 0
    assert perf.fits(m, dev) is False


def test_quantised_weights_make_a_model_fit(catalog) -> None:
    rtx4070 = catalog.get("rtx4070")
    int4 = dataclasses.replace(models.get_model("llama-2-13b"), dtype="int4")
    assert perf.fits(int4, rtx4070) is True
    assert perf.kv_capacity_tokens(int4, rtx4070) > 1000


def test_capacity_is_the_largest_token_count_that_fits(catalog) -> None:
    for kind in ("rtx4090", "a100-80g-sxm", "l4", "jetson-agx-orin-32"):
        dev = catalog.get(kind)
        for m in models.MODELS.values():
            n = perf.kv_capacity_tokens(m, dev, 0.85, 1.5)
            budget = dev.memory_bytes * 0.85 - 1.5 * 2**30
            if n > 0:
                assert m.weight_bytes + n * m.kv_bytes_per_token <= budget
            assert m.weight_bytes + (n + 1) * m.kv_bytes_per_token > budget
            assert perf.fits(m, dev, 0.85, 1.5) == (n >= 1)


def test_capacity_grows_with_memory_and_shrinks_with_kv_heads(catalog) -> None:
    a100_40, a100_80 = catalog.get("a100-40g-sxm"), catalog.get("a100-80g-sxm")
    assert perf.kv_capacity_tokens(LLAMA2_7B, a100_80) > 2 * perf.kv_capacity_tokens(LLAMA2_7B, a100_40)
    caps = [perf.kv_capacity_tokens(LLAMA2_7B, scaled(a100_80, memory_gib=g)) for g in (12, 24, 40, 80, 141)]
    assert caps[0] == 0 and caps[1:] == sorted(caps[1:]) and len(set(caps)) == len(caps)
    # 40 extra GiB hold 40 GiB * util more KV bytes, to within one token of rounding
    extra = perf.kv_capacity_tokens(LLAMA2_7B, scaled(a100_80, memory_gib=120)) - caps[3]
    assert abs(extra - 40 * 2**30 * 0.9 / LLAMA2_7B.kv_bytes_per_token) <= 1

    l2, l3 = models.get_model("llama-2-7b"), models.get_model("llama-3-8b")
    assert perf.kv_capacity_tokens(l3, a100_80) > 3 * perf.kv_capacity_tokens(l2, a100_80)
    by_heads = [perf.kv_capacity_tokens(dataclasses.replace(l2, n_kv_heads=k), a100_80) for k in (1, 2, 4, 8, 16, 32)]
    assert by_heads == sorted(by_heads, reverse=True) and len(set(by_heads)) == len(by_heads)


def test_capacity_validates_its_arguments(a100) -> None:
    with pytest.raises(InputError, match="gpu_memory_utilization"):
        perf.kv_capacity_tokens(LLAMA2_7B, a100, gpu_memory_utilization=1.5)
    with pytest.raises(InputError, match="gpu_memory_utilization"):
        perf.kv_capacity_tokens(LLAMA2_7B, a100, gpu_memory_utilization=0)
    with pytest.raises(InputError, match="activation_reserve_gib"):
        perf.kv_capacity_tokens(LLAMA2_7B, a100, activation_reserve_gib=-1)
    with pytest.raises(InputError, match="min_kv_tokens"):
        perf.fits(LLAMA2_7B, a100, min_kv_tokens=0)


# ------------------------------------------------------------------------------ gemm, attention


def test_gemm_roofline_switches_from_memory_to_compute_bound() -> None:
    dev = make_device()
    n = k = 4096
    # small m: bandwidth bound; doubling the FLOPs at (nearly) the same bytes changes little
    assert perf.gemm_time(2, n, k, dev) / perf.gemm_time(1, n, k, dev) < 1.01
    # large m: compute bound; doubling m doubles the time
    assert perf.gemm_time(16384, n, k, dev) / perf.gemm_time(8192, n, k, dev) == pytest.approx(2.0, rel=0.01)
    # more peak FLOPs help only the compute-bound shape, more bandwidth only the memory-bound one
    dev_fast = scaled(dev, tflops_fp16=400.0)
    dev_wide = scaled(dev, mem_bw_gbs=2000.0)
    o = DEFAULT_EFFICIENCY.kernel_overhead_s
    assert perf.gemm_time(1, n, k, dev_fast) == perf.gemm_time(1, n, k, dev)
    assert perf.gemm_time(1, n, k, dev_wide) - o == pytest.approx((perf.gemm_time(1, n, k, dev) - o) / 2)
    assert perf.gemm_time(8192, n, k, dev_fast) - o == pytest.approx((perf.gemm_time(8192, n, k, dev) - o) / 2)
    assert perf.gemm_time(8192, n, k, dev_wide) == perf.gemm_time(8192, n, k, dev)


def test_gemm_time_per_flop_falls_until_the_ridge_point() -> None:
    dev = make_device()
    ms = [2**i for i in range(14)]
    per_flop = [perf.gemm_time(m, 4096, 4096, dev) / (2 * m * 4096 * 4096) for m in ms]
    assert per_flop == sorted(per_flop, reverse=True)
    # far past the ridge every FLOP costs 1 / (P e_c)
    assert per_flop[-1] == pytest.approx(1 / (dev.flops_fp16 * DEFAULT_EFFICIENCY.compute), rel=0.01)


def test_gemm_equals_op_time_of_its_flops_and_bytes() -> None:
    dev = make_device()
    for m, n, k, dt in ((3, 5, 7, "bf16"), (1024, 512, 256, "fp32"), (64, 4096, 4096, "int4")):
        s = models.DTYPE_BYTES[dt]
        expect = perf.op_time(2 * m * n * k, s * (m * k + k * n + m * n), dev, dt)
        assert perf.gemm_time(m, n, k, dev, dt) == expect
    # fp32 runs at half the tensor rate on an accelerator, at the measured figure on a host CPU
    assert perf.gemm_time(8192, 8192, 8192, dev, "fp32") > 1.9 * perf.gemm_time(8192, 8192, 8192, dev, "bf16")
    host = make_device(kind="test-host", category="host")
    assert perf.peak_flops(host, "fp32") == host.flops_fp16


def test_attention_causal_halves_the_work_and_gqa_cuts_decode_bytes() -> None:
    dev = make_device()
    full = perf.attention_time(1, 32, 8192, 8192, 128, dev)
    causal = perf.attention_time(1, 32, 8192, 8192, 128, dev, causal=True)
    assert causal / full == pytest.approx(0.5, rel=0.01)
    # one decode query: memory bound on K and V, so 4x fewer KV heads reads ~4x fewer bytes
    mha = perf.attention_time(8, 32, 1, 32768, 128, dev, n_kv_heads=32)
    gqa = perf.attention_time(8, 32, 1, 32768, 128, dev, n_kv_heads=8)
    o = DEFAULT_EFFICIENCY.kernel_overhead_s
    assert (mha - o) / (gqa - o) == pytest.approx(4.0, rel=0.01)
    # a causal query block at the end of a long cache sees (almost) every key
    assert perf.attention_time(1, 32, 16, 8192, 128, dev, causal=True) == pytest.approx(
        perf.attention_time(1, 32, 16, 8192, 128, dev), rel=0.01)


def test_attention_validation() -> None:
    dev = make_device()
    with pytest.raises(InputError, match=r"q_len: causal attention needs q_len <= kv_len"):
        perf.attention_time(1, 8, 10, 5, 64, dev, causal=True)
    with pytest.raises(InputError, match=r"n_kv_heads: 3 does not divide n_heads=8"):
        perf.attention_time(1, 8, 10, 10, 64, dev, n_kv_heads=3)
    with pytest.raises(InputError, match=r"kv_len: expected an integer >= 1, got 0"):
        perf.attention_time(1, 8, 1, 0, 64, dev)


# ---------------------------------------------------------------------------- power, energy


def test_power_is_linear_between_idle_and_max() -> None:
    dev = make_device(power_idle_w=50.0, power_max_w=300.0)
    assert perf.power_w(dev, 0) == 50.0
    assert perf.power_w(dev, 1) == 300.0
    assert perf.power_w(dev, 0.5) == 175.0
    for u in (-0.01, 1.01, float("nan"), True):
        with pytest.raises(InputError, match="utilization"):
            perf.power_w(dev, u)
    with pytest.raises(ValueError):  # InputError is a ValueError
        perf.power_w(dev, 2)


def _brute_force(model, dev, prompt_len, output_len, batch, eff) -> tuple[float, float]:
    ttft = perf.prefill_time(model, dev, batch, prompt_len, eff)
    decode = [perf.decode_step_time(model, dev, batch, prompt_len + j, eff) for j in range(1, output_len)]
    return ttft, ttft + sum(decode)


def test_request_latency_sums_prefill_and_every_decode_step(catalog) -> None:
    rng = random.Random(7)
    kinds = ("a100-80g-sxm", "l4", "rtx4090", "jetson-agx-orin-64", "h100-sxm")
    for _ in range(40):
        m = models.MODELS[rng.choice(sorted(models.MODELS))]
        dev = catalog.get(rng.choice(kinds))
        # batches up to 512 put decode on both sides of the compute/memory crossing
        batch, p, o = rng.choice((1, 3, 64, 256, 512)), rng.randint(1, 3000), rng.randint(1, 400)
        eff = Efficiency(step_overhead_s=rng.choice((0.0, 3e-3)))
        r = perf.request_latency(m, dev, p, o, batch, eff)
        ttft, e2e = _brute_force(m, dev, p, o, batch, eff)
        assert r.ttft_s == pytest.approx(ttft, rel=1e-12)
        assert r.e2e_s == pytest.approx(e2e, rel=1e-9)
        assert r.tpot_s == (pytest.approx((e2e - ttft) / (o - 1), rel=1e-9) if o > 1 else 0.0)


def test_request_latency_crosses_from_compute_to_memory_bound(a100) -> None:
    # batch 256: compute bound at short context, memory bound at long context; sum must stay exact
    m = LLAMA2_7B
    cb = perf.decode_step_time(m, a100, 256, 10) - perf.decode_step_time(m, a100, 256, 9)
    mb = perf.decode_step_time(m, a100, 256, 5000) - perf.decode_step_time(m, a100, 256, 4999)
    assert mb > 2 * cb  # the slope changes: two regimes are visited
    r = perf.request_latency(m, a100, 10, 2000, batch=256)
    assert r.e2e_s == pytest.approx(_brute_force(m, a100, 10, 2000, 256, DEFAULT_EFFICIENCY)[1], rel=1e-9)


def test_energy_is_the_integral_of_power_over_the_request(catalog) -> None:
    for kind in ("a100-80g-sxm", "l4", "jetson-agx-orin-64"):
        dev = catalog.get(kind)
        for batch in (1, 32):
            r = perf.request_latency(LLAMA2_7B, dev, 512, 128, batch)
            total = r.energy_j * batch
            assert dev.power_idle_w * r.e2e_s < total < dev.power_max_w * r.e2e_s
            assert perf.energy_per_request(LLAMA2_7B, dev, 512, 128, batch) == r.energy_j
    dev = make_device(power_idle_w=50.0, power_max_w=300.0)
    # flat power: energy = P * t exactly
    flat = scaled(dev, power_idle_w=120.0, power_max_w=120.0)
    r = perf.request_latency(LLAMA2_7B, flat, 300, 40)
    assert r.energy_j == pytest.approx(120.0 * r.e2e_s, rel=1e-12)
    # a device that never leaves idle, or is saturated for the whole request with no overhead
    idle = Efficiency(compute_power_util=0.0, memory_power_util=0.0)
    r = perf.request_latency(LLAMA2_7B, dev, 300, 40, eff=idle)
    assert r.energy_j == pytest.approx(50.0 * r.e2e_s, rel=1e-12)
    busy = Efficiency(compute_power_util=1.0, memory_power_util=1.0, step_overhead_s=0.0)
    r = perf.request_latency(LLAMA2_7B, dev, 300, 40, eff=busy)
    assert r.energy_j == pytest.approx(300.0 * r.e2e_s, rel=1e-12)


def test_batching_amortises_weight_reads_into_less_energy_per_request(a100) -> None:
    e1 = perf.energy_per_request(LLAMA2_7B, a100, 256, 256, batch=1)
    e16 = perf.energy_per_request(LLAMA2_7B, a100, 256, 256, batch=16)
    assert e16 < e1 / 4


def test_op_energy_lies_between_idle_and_max_power() -> None:
    dev = make_device()
    for flops, nbytes in ((0, 0), (1e12, 1e6), (1e6, 1e10), (5e12, 5e10)):
        t = perf.op_time(flops, nbytes, dev)
        e = perf.op_energy(flops, nbytes, dev)
        assert dev.power_idle_w * t <= e <= dev.power_max_w * t


def test_request_cost_fields() -> None:
    assert [f.name for f in dataclasses.fields(RequestCost)] == ["ttft_s", "tpot_s", "e2e_s", "energy_j"]
    r = perf.request_latency(LLAMA2_7B, make_device(), 100, 1)
    assert r.tpot_s == 0.0 and r.e2e_s == r.ttft_s


# ------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("call", "pattern"),
    [
        (lambda d: perf.prefill_time(LLAMA2_7B, d, 1, -5), r"prompt_len: expected an integer >= 1, got -5"),
        (lambda d: perf.prefill_time(LLAMA2_7B, d, 0, 10), r"batch: expected an integer >= 1, got 0"),
        (lambda d: perf.decode_step_time(LLAMA2_7B, d, 1, -1), r"context_len: expected an integer >= 0, got -1"),
        (lambda d: perf.decode_step_time(LLAMA2_7B, d, True, 10), r"batch: expected an integer >= 1, got True"),
        (lambda d: perf.request_latency(LLAMA2_7B, d, 10, 0), r"output_len: expected an integer >= 1, got 0"),
        (lambda d: perf.request_latency(LLAMA2_7B, d, 0, 10), r"prompt_len"),
        (lambda d: perf.gemm_time(1, 2, 3, d, dtype="fp12"), r"dtype: unknown dtype 'fp12'.*allowed: fp32"),
        (lambda d: perf.gemm_time(0, 2, 3, d), r"m: expected an integer >= 1, got 0"),
        (lambda d: perf.gemm_time(4, 2.5, 3, d), r"n: expected an integer >= 1, got 2.5"),
        (lambda d: perf.op_time(-1.0, 10.0, d), r"flops: expected a finite number >= 0"),
        (lambda d: perf.peak_flops(d, "bf-16"), r"did you mean 'bf16'"),
    ],
)
def test_bad_input_names_the_argument(call, pattern: str) -> None:
    with pytest.raises(InputError, match=pattern):
        call(make_device())


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        ({"compute": 0.0}, r"Efficiency\.compute: expected a finite number > 0 and <= 1, got 0.0"),
        ({"memory": 1.2}, r"Efficiency\.memory"),
        ({"attention": -0.5}, r"Efficiency\.attention"),
        ({"step_overhead_s": -1e-3}, r"Efficiency\.step_overhead_s"),
        ({"kernel_overhead_s": float("inf")}, r"Efficiency\.kernel_overhead_s"),
        ({"memory_power_util": 1.5}, r"Efficiency\.memory_power_util"),
    ],
)
def test_efficiency_validation(change: dict, pattern: str) -> None:
    with pytest.raises(InputError, match=pattern):
        Efficiency(**change)


def test_efficiency_scales_the_roofline(a100) -> None:
    slow_mem = Efficiency(memory=0.4, step_overhead_s=0.0)
    fast_mem = Efficiency(memory=0.8, step_overhead_s=0.0)
    t_slow = perf.decode_step_time(LLAMA2_7B, a100, 1, 1000, slow_mem)
    assert t_slow == pytest.approx(2 * perf.decode_step_time(LLAMA2_7B, a100, 1, 1000, fast_mem))
    with_overhead = Efficiency(memory=0.8, step_overhead_s=0.01)
    assert perf.decode_step_time(LLAMA2_7B, a100, 1, 1000, with_overhead) == pytest.approx(
        perf.decode_step_time(LLAMA2_7B, a100, 1, 1000, fast_mem) + 0.01)
