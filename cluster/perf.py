"""The performance model: time and energy of LLM inference on a device, from a roofline.

Pure functions of (model shape, device spec, batch, lengths, dtype); no I/O, no Ray, no catalog
look-ups inside the formulas (only :func:`get_model` looks a name up). Every figure they return is
*modeled*, never measured. The efficiency factors are assumptions until calibrated
(:class:`Efficiency`).

Notation
--------
``P`` = peak dense FLOP/s of the device for the compute dtype (:func:`peak_flops`), ``B`` = memory
bandwidth in bytes/s, ``e_c``, ``e_m``, ``e_a`` = compute, memory-bandwidth and attention-kernel
efficiency, ``o_k`` = per-kernel and ``o_s`` = per-engine-step overhead in seconds,
``N`` = model parameters, ``W`` = weight bytes, ``L`` = layers, ``h`` = query heads,
``h_kv`` = KV heads, ``d`` = head dim, ``s_kv`` = bytes per KV-cache element, ``b`` = batch.

Roofline (one operation of ``F`` FLOPs moving ``Q`` bytes)::

    t_comp = F / (P * e_c)        t_mem = Q / (B * e_m)        t = max(t_comp, t_mem) + o_k

GEMM ``(m x k) @ (k x n)``: ``F = 2 m n k``, ``Q = s (m k + k n + m n)`` (``s`` bytes/element).

Attention (``b`` sequences, ``q`` queries, ``kv`` keys, ``h`` heads): ``F = 4 b h d * pairs`` with
``pairs = q * kv`` (QK^T and PV, two FLOPs per multiply-add each); causal, with the queries the last
``q`` of ``kv`` positions, ``pairs = q * kv - q (q - 1) / 2`` (``q (q + 1) / 2`` when ``q == kv``);
``Q = s (2 b h q d + 2 b h_kv kv d)`` for q, o, k, v; compute time uses ``e_a`` instead of ``e_c``.

Model per token::

    W                     = N * bytes_per_param(dtype)
    kv_bytes_per_token    = 2 * L * h_kv * d * s_kv                 (K and V, every layer)
    flops_per_token       = 2 * N_mm                                (N_mm = N minus the input
                                                                    embedding table when untied: a
                                                                    lookup, no FLOPs)
    attn_flops(c)         = 4 * L * h * d * c                       (one query against c keys)

Prefill of ``b`` prompts of ``p`` tokens (one engine step, compute bound)::

    t_comp = b p flops_per_token / (P e_c) + b * 4 L h d * p (p + 1) / 2 / (P e_a)
    t_mem  = (W + b p kv_bytes_per_token) / (B e_m)
    t      = max(t_comp, t_mem) + o_s

Decode step of ``b`` sequences each reading ``c`` cached tokens (memory bound)::

    t_mem  = (W + b c kv_bytes_per_token) / (B e_m)
    t_comp = b flops_per_token / (P e_c) + b attn_flops(c) / (P e_a)
    t      = max(t_comp, t_mem) + o_s

KV capacity: ``floor((M * util - W - reserve) / kv_bytes_per_token)``, 0 when that is negative.

Power and energy: ``power(u) = P_idle + (P_max - P_idle) u`` for utilisation ``u`` in [0, 1]. A
phase with roofline terms ``t_comp``, ``t_mem`` and duration ``t`` draws utilisation
``u = max(u_c t_comp, u_m t_mem) / t`` (``u_c``, ``u_m`` from :class:`Efficiency`: the power drawn
while tensor cores, resp. the memory system, are saturated; overhead time idles), so its energy is::

    E = P_idle t + (P_max - P_idle) max(u_c t_comp, u_m t_mem)

which always lies in ``[P_idle t, P_max t]``. A request's energy is the integral of that power over
its prefill and its decode steps, shared equally by the ``b`` requests of the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cluster.exceptions import InputError
from cluster.models import DTYPE_BYTES, ModelShape, check_dtype
from solvers import validate

if TYPE_CHECKING:  # the formulas take any DeviceSpec-like object; no catalog import at runtime
    from cluster.catalog import DeviceSpec

GIB = 2**30

#: Memory kept back for activations, CUDA graphs and the allocator, in GiB. An assumption of the
#: order vLLM's profiling run reserves for a 7B model at its default batch token budget (~1 GiB).
DEFAULT_ACTIVATION_RESERVE_GIB = 1.0


# ------------------------------------------------------------------------------------ efficiency


@dataclass(frozen=True, slots=True)
class Efficiency:
    """Fractions of the device's peak the model assumes, and fixed overheads.

    All defaults are assumptions taken from published ranges, to be replaced by calibration from
    measured profiles:

    * ``compute`` (e_c, 0.6): model FLOPs utilisation of large prefill GEMMs. Well-tuned inference
      prefill and training reach 40-70 % MFU on A100/H100 (PaLM reports 46-57 %, Megatron-LM
      ~50-60 %, cuBLAS GEMMs up to ~80 % at large shapes).
    * ``memory`` (e_m, 0.8): memory-bandwidth utilisation (MBU) of decode. Streaming kernels reach
      80-90 % of datasheet bandwidth; measured LLM decode MBU is 50-80 % (Databricks' "LLM
      inference performance engineering" reports ~60-75 % on A100/H100).
    * ``attention`` (e_a, 0.5): fraction of peak the attention kernel reaches; FlashAttention-2
      reports 50-73 % of peak forward on A100, less for short sequences.
    * ``kernel_overhead_s`` (o_k, 5 µs): launch and tail cost of one kernel (CUDA launch latency
      is a few microseconds).
    * ``step_overhead_s`` (o_s, 3 ms): fixed cost of one engine step (scheduling, sampling,
      detokenisation, Python) in a vLLM-like server; measured vLLM per-step CPU overhead is a few
      milliseconds at small batch.
    * ``compute_power_util`` (u_c, 0.9) and ``memory_power_util`` (u_m, 0.6): the fraction of the
      idle-to-max power range drawn while the tensor cores, resp. the memory system, are
      saturated. Dense GEMMs run near the board power limit; memory-bound decode draws well below
      it (ML.ENERGY leaderboard measurements). See the module docstring for the energy formula.
    """

    compute: float = 0.6
    memory: float = 0.8
    attention: float = 0.5
    kernel_overhead_s: float = 5e-6
    step_overhead_s: float = 3e-3
    compute_power_util: float = 0.9
    memory_power_util: float = 0.6

    def __post_init__(self) -> None:
        for field in ("compute", "memory", "attention"):
            validate.real(f"Efficiency.{field}", getattr(self, field), lo=0.0, hi=1.0, lo_open=True)
        for field in ("kernel_overhead_s", "step_overhead_s"):
            validate.real(f"Efficiency.{field}", getattr(self, field), lo=0.0)
        for field in ("compute_power_util", "memory_power_util"):
            validate.real(f"Efficiency.{field}", getattr(self, field), lo=0.0, hi=1.0)


DEFAULT_EFFICIENCY = Efficiency()


# -------------------------------------------------------------------------------------- roofline


def peak_flops(device: DeviceSpec, dtype: str = "bf16") -> float:
    """Peak dense FLOP/s of ``device`` for matmuls in ``dtype``.

    bf16/fp16: the datasheet dense tensor figure. fp8: the fp8 figure, or the fp16 one on devices
    without fp8 tensor cores. int8/int4 (weight-only): fp16, the weights being dequantised before
    the multiply. fp32: half the fp16 figure on accelerators (TF32 tensor cores run at half the
    fp16 rate on Ampere, Ada and Hopper; an approximation elsewhere), the figure itself on a
    ``host`` CPU, whose catalog figure is measured fp32 GEMM throughput.
    """
    check_dtype("dtype", dtype)
    fp16 = float(device.flops_fp16)
    if device.category == "host":
        return fp16
    if dtype == "fp8":
        return fp16 if device.tflops_fp8 is None else float(device.tflops_fp8) * 1e12
    if dtype == "fp32":
        return fp16 / 2.0
    return fp16


def _times(flops: float, nbytes: float, peak: float, device: DeviceSpec, e_c: float,
           eff: Efficiency) -> tuple[float, float]:
    """(t_comp, t_mem) of ``flops`` at ``peak * e_c`` and ``nbytes`` at ``B * e_m``."""
    return flops / (peak * e_c), nbytes / (float(device.mem_bw_bytes_s) * eff.memory)


def _energy(t_comp: float, t_mem: float, duration: float, device: DeviceSpec, eff: Efficiency) -> float:
    """``P_idle t + (P_max - P_idle) max(u_c t_comp, u_m t_mem)``."""
    busy = max(eff.compute_power_util * t_comp, eff.memory_power_util * t_mem)
    return device.power_idle_w * duration + (device.power_max_w - device.power_idle_w) * busy


def op_time(flops: float, bytes_moved: float, device: DeviceSpec, dtype: str = "bf16",
            eff: Efficiency = DEFAULT_EFFICIENCY) -> float:
    """Roofline time of one operation: ``max(F / (P e_c), Q / (B e_m)) + o_k`` seconds."""
    validate.real("flops", flops, lo=0.0)
    validate.real("bytes_moved", bytes_moved, lo=0.0)
    t_c, t_m = _times(flops, bytes_moved, peak_flops(device, dtype), device, eff.compute, eff)
    return max(t_c, t_m) + eff.kernel_overhead_s


def op_energy(flops: float, bytes_moved: float, device: DeviceSpec, dtype: str = "bf16",
              eff: Efficiency = DEFAULT_EFFICIENCY) -> float:
    """Energy in joules of the operation :func:`op_time` times (module docstring's ``E``)."""
    t = op_time(flops, bytes_moved, device, dtype, eff)
    t_c, t_m = _times(flops, bytes_moved, peak_flops(device, dtype), device, eff.compute, eff)
    return _energy(t_c, t_m, t, device, eff)


def gemm_time(m: int, n: int, k: int, device: DeviceSpec, dtype: str = "bf16",
              eff: Efficiency = DEFAULT_EFFICIENCY) -> float:
    """Time of ``(m x k) @ (k x n)``: roofline of ``F = 2 m n k``, ``Q = s (m k + k n + m n)``."""
    for name, value in (("m", m), ("n", n), ("k", k)):
        validate.integer(name, value, minimum=1)
    s = DTYPE_BYTES[check_dtype("dtype", dtype)]
    return op_time(2.0 * m * n * k, s * (m * k + k * n + m * n), device, dtype, eff)


#: The four projections of one transformer layer, in order.
PROJECTIONS: tuple[str, ...] = ("qkv", "o", "up", "down")


def projection_gemms(hidden: int, heads: int, kv_heads: int, ffn: int, gated: bool = False,
                     tp: int = 1) -> dict[str, tuple[int, int]]:
    """``(n, k)`` of each projection's GEMM ``(tokens x k) @ (k x n)`` on one of ``tp`` GPUs.

    With ``d = hidden / heads`` and the weights split over ``tp`` GPUs (Megatron-style)::

        qkv:  k = hidden,            n = (heads + 2 kv_heads) d / tp
        o:    k = heads d / tp,      n = hidden
        up:   k = hidden,            n = (2 if gated else 1) ffn / tp   (gate and up fused)
        down: k = ffn / tp,          n = hidden
    """
    for name, value in (("hidden", hidden), ("heads", heads), ("kv_heads", kv_heads), ("ffn", ffn), ("tp", tp)):
        validate.integer(name, value, minimum=1)
    if not isinstance(gated, bool):
        raise InputError(f"gated: expected a bool, got {gated!r}")
    if hidden % heads:
        raise InputError(f"heads: {heads} does not divide hidden={hidden}")
    if heads % kv_heads:
        raise InputError(f"kv_heads: {kv_heads} does not divide heads={heads}")
    if kv_heads % tp or ffn % tp:
        raise InputError(f"tp: {tp} must divide kv_heads={kv_heads} and ffn={ffn}")
    d = hidden // heads
    return {
        "qkv": ((heads + 2 * kv_heads) * d // tp, hidden),
        "o": (hidden, heads * d // tp),
        "up": ((2 if gated else 1) * ffn // tp, hidden),
        "down": (hidden, ffn // tp),
    }


def linear_layer_time(tokens: int, hidden: int, heads: int, kv_heads: int, ffn: int, device: DeviceSpec,
                      gated: bool = False, tp: int = 1, dtype: str = "bf16",
                      eff: Efficiency = DEFAULT_EFFICIENCY) -> float:
    """Roofline seconds of one layer's four projections at ``tokens`` tokens on one of ``tp`` GPUs.

    ``sum over qkv, o, up, down of gemm_time(tokens, n, k)`` (:func:`projection_gemms`); each
    term carries its kernel overhead ``o_k``. Attention, norms and communication are not included.
    The learned model (:mod:`cluster.opmodel`) replaces this where the device has measurements.
    """
    validate.integer("tokens", tokens, minimum=1)
    gemms = projection_gemms(hidden, heads, kv_heads, ffn, gated, tp)
    return sum(gemm_time(tokens, n, k, device, dtype, eff) for n, k in gemms.values())


def attention_time(batch: int, n_heads: int, q_len: int, kv_len: int, head_dim: int, device: DeviceSpec,
                   causal: bool = False, dtype: str = "bf16", eff: Efficiency = DEFAULT_EFFICIENCY,
                   n_kv_heads: int | None = None) -> float:
    """Time of one fused attention kernel (module docstring's attention roofline, with ``e_a``).

    Causal masking takes the queries to be the last ``q_len`` of the ``kv_len`` positions, so it
    needs ``q_len <= kv_len``. ``n_kv_heads`` (default ``n_heads``) sets the K/V bytes under GQA.
    """
    for name, value in (("batch", batch), ("n_heads", n_heads), ("q_len", q_len), ("kv_len", kv_len),
                        ("head_dim", head_dim)):
        validate.integer(name, value, minimum=1)
    h_kv = n_heads if n_kv_heads is None else validate.integer("n_kv_heads", n_kv_heads, minimum=1)
    if n_heads % h_kv:
        raise InputError(f"n_kv_heads: {h_kv} does not divide n_heads={n_heads}")
    if causal and q_len > kv_len:
        raise InputError(f"q_len: causal attention needs q_len <= kv_len, got q_len={q_len}, kv_len={kv_len}")
    s = DTYPE_BYTES[check_dtype("dtype", dtype)]
    pairs = q_len * kv_len - (q_len * (q_len - 1) // 2 if causal else 0)
    flops = 4.0 * batch * n_heads * head_dim * pairs
    nbytes = s * (2 * batch * n_heads * q_len * head_dim + 2 * batch * h_kv * kv_len * head_dim)
    t_c, t_m = _times(flops, nbytes, peak_flops(device, dtype), device, eff.attention, eff)
    return max(t_c, t_m) + eff.kernel_overhead_s


# ---------------------------------------------------------------------------- prefill and decode


def _prefill_terms(model: ModelShape, device: DeviceSpec, batch: int, prompt_len: int,
                   eff: Efficiency) -> tuple[float, float]:
    validate.integer("batch", batch, minimum=1)
    validate.integer("prompt_len", prompt_len, minimum=1)
    peak = peak_flops(device, model.compute_dtype)
    t_comp = (batch * prompt_len * model.flops_per_token / (peak * eff.compute)
              + batch * model.prefill_attention_flops(prompt_len) / (peak * eff.attention))
    t_mem = (model.weight_bytes + batch * prompt_len * model.kv_bytes_per_token) / (device.mem_bw_bytes_s * eff.memory)
    return t_comp, t_mem


def prefill_flops(model: ModelShape, batch: int, prompt_len: int) -> int:
    """FLOPs of prefilling ``batch`` prompts: ``b p flops_per_token + b * 4 L h d p (p + 1) / 2``."""
    validate.integer("batch", batch, minimum=1)
    validate.integer("prompt_len", prompt_len, minimum=1)
    return batch * (prompt_len * model.flops_per_token + model.prefill_attention_flops(prompt_len))


def prefill_time(model: ModelShape, device: DeviceSpec, batch: int, prompt_len: int,
                 eff: Efficiency = DEFAULT_EFFICIENCY) -> float:
    """Seconds to prefill ``batch`` prompts of ``prompt_len`` tokens in one step (compute bound)."""
    t_comp, t_mem = _prefill_terms(model, device, batch, prompt_len, eff)
    return max(t_comp, t_mem) + eff.step_overhead_s


def _decode_affine(model: ModelShape, device: DeviceSpec, batch: int,
                   eff: Efficiency) -> tuple[tuple[float, float], tuple[float, float]]:
    """Decode's roofline terms as affine functions of the context ``c``: ((a_c, b_c), (a_m, b_m))."""
    validate.integer("batch", batch, minimum=1)
    peak = peak_flops(device, model.compute_dtype)
    bw = device.mem_bw_bytes_s * eff.memory
    comp = (batch * model.flops_per_token / (peak * eff.compute),
            batch * model.attention_flops_per_token(1) / (peak * eff.attention))
    mem = (model.weight_bytes / bw, batch * model.kv_bytes_per_token / bw)
    return comp, mem


def decode_step_time(model: ModelShape, device: DeviceSpec, batch: int, context_len: int,
                     eff: Efficiency = DEFAULT_EFFICIENCY) -> float:
    """Seconds of one decode step for ``batch`` sequences each reading ``context_len`` cached tokens."""
    validate.integer("context_len", context_len, minimum=0)
    (ac, bc), (am, bm) = _decode_affine(model, device, batch, eff)
    return max(ac + bc * context_len, am + bm * context_len) + eff.step_overhead_s


def _sum_affine(a: float, b: float, c0: int, n: int) -> float:
    """``sum_{c=c0}^{c0+n-1} (a + b c)``."""
    return n * a + b * (n * c0 + n * (n - 1) / 2) if n > 0 else 0.0


def _sum_max_affine(f: tuple[float, float], g: tuple[float, float], c0: int, n: int) -> float:
    """``sum_{c=c0}^{c0+n-1} max(f(c), g(c))`` for affine ``f``, ``g``, in closed form.

    ``f - g`` is affine, so it changes sign at most once; the range splits at the first integer
    past the crossing ``c* = (a_g - a_f) / (b_f - b_g)``.
    """
    if n <= 0:
        return 0.0
    (af, bf), (ag, bg) = f, g
    if bf == bg:
        return _sum_affine(max(af, ag), bf, c0, n)
    cross = (ag - af) / (bf - bg)
    if cross < c0:
        split = c0
    elif cross >= c0 + n:
        split = c0 + n
    else:
        split = math.floor(cross) + 1  # c < split lies on one side of the crossing
    lo, hi = (g, f) if bf > bg else (f, g)  # below the crossing the smaller slope dominates
    return _sum_affine(*lo, c0, split - c0) + _sum_affine(*hi, split, c0 + n - split)


# ------------------------------------------------------------------------------ memory and power


def kv_capacity_tokens(model: ModelShape, device: DeviceSpec, gpu_memory_utilization: float = 0.9,
                       activation_reserve_gib: float = DEFAULT_ACTIVATION_RESERVE_GIB) -> int:
    """KV-cache tokens that fit: ``floor((M util - W - reserve) / kv_bytes_per_token)``, never < 0."""
    util = validate.real("gpu_memory_utilization", gpu_memory_utilization, lo=0.0, hi=1.0, lo_open=True)
    reserve = validate.real("activation_reserve_gib", activation_reserve_gib, lo=0.0) * GIB
    free = device.memory_bytes * util - model.weight_bytes - reserve
    return max(0, math.floor(free / model.kv_bytes_per_token))


def fits(model: ModelShape, device: DeviceSpec, gpu_memory_utilization: float = 0.9,
         activation_reserve_gib: float = DEFAULT_ACTIVATION_RESERVE_GIB, min_kv_tokens: int = 1) -> bool:
    """Whether the weights fit with room for at least ``min_kv_tokens`` tokens of KV cache."""
    validate.integer("min_kv_tokens", min_kv_tokens, minimum=1)
    return kv_capacity_tokens(model, device, gpu_memory_utilization, activation_reserve_gib) >= min_kv_tokens


def power_w(device: DeviceSpec, utilization: float) -> float:
    """``P_idle + (P_max - P_idle) u`` watts, for ``u`` in [0, 1]."""
    u = validate.real("utilization", utilization, lo=0.0, hi=1.0)
    return device.power_idle_w + (device.power_max_w - device.power_idle_w) * u


@dataclass(frozen=True, slots=True)
class RequestCost:
    """Modeled cost of one request served in a batch of ``batch`` identical requests.

    ``ttft_s``: the prefill step (it emits the first token). ``tpot_s``: mean time of the
    ``output_len - 1`` decode steps that follow (0 when ``output_len == 1``). ``e2e_s``:
    ``ttft_s + (output_len - 1) * tpot_s``. ``energy_j``: the device's energy over ``e2e_s``
    divided by the batch size.
    """

    ttft_s: float
    tpot_s: float
    e2e_s: float
    energy_j: float


def request_latency(model: ModelShape, device: DeviceSpec, prompt_len: int, output_len: int, batch: int = 1,
                    eff: Efficiency = DEFAULT_EFFICIENCY) -> RequestCost:
    """Latency and energy of a request: one prefill, then ``output_len - 1`` decode steps.

    Decode step ``j`` (``j = 1 .. output_len - 1``) reads ``c = prompt_len + j`` cached tokens.
    Both roofline terms are affine in ``c``, so the sums of step times and step energies over the
    decode phase are exact closed forms (:func:`_sum_max_affine`), not loops.
    """
    validate.integer("output_len", output_len, minimum=1)
    t_comp, t_mem = _prefill_terms(model, device, batch, prompt_len, eff)
    ttft = max(t_comp, t_mem) + eff.step_overhead_s
    energy = _energy(t_comp, t_mem, ttft, device, eff)

    steps, c0 = output_len - 1, prompt_len + 1
    (ac, bc), (am, bm) = _decode_affine(model, device, batch, eff)
    decode_s = _sum_max_affine((ac, bc), (am, bm), c0, steps) + steps * eff.step_overhead_s
    busy = _sum_max_affine((eff.compute_power_util * ac, eff.compute_power_util * bc),
                           (eff.memory_power_util * am, eff.memory_power_util * bm), c0, steps)
    energy += device.power_idle_w * decode_s + (device.power_max_w - device.power_idle_w) * busy

    tpot = decode_s / steps if steps else 0.0
    return RequestCost(ttft_s=ttft, tpot_s=tpot, e2e_s=ttft + decode_s, energy_j=energy / batch)


def energy_per_request(model: ModelShape, device: DeviceSpec, prompt_len: int, output_len: int, batch: int = 1,
                       eff: Efficiency = DEFAULT_EFFICIENCY) -> float:
    """Joules per request: :func:`request_latency`'s ``energy_j``."""
    return request_latency(model, device, prompt_len, output_len, batch, eff).energy_j
