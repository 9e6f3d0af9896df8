"""What one simulated replica is: a device kind serving a model, its step-time model and its engine.

A *replica* is one device of the fleet running one copy of the model (no tensor parallelism). Its
engine steps are timed by the roofline of :mod:`cluster.perf`, generalised from a uniform batch to
a mixed one. With ``P``, ``B``, ``e_c``, ``e_m``, ``e_a``, ``o_s``, ``W``, ``F = flops_per_token``
and ``A = 4 L h d`` as in :mod:`cluster.perf`, a step that pushes ``n`` tokens through the weights,
computes ``pairs`` (query, key) attention pairs and reads or writes ``kv`` cached tokens takes::

    t_comp = n F / (P e_c) + pairs A / (P e_a)
    t_mem  = (W + kv * kv_bytes_per_token) / (B e_m)
    t      = max(t_comp, t_mem) + o_s

A decode step of ``b`` sequences with contexts ``c_i`` has ``n = b``, ``pairs = kv = sum c_i``; a
prefill chunk of ``q`` new tokens after ``k`` cached ones has ``n = q``,
``pairs = q k + q (q + 1) / 2`` and ``kv = k + q``; a mixed step adds the terms. For a uniform
batch these are exactly :func:`cluster.perf.prefill_time` and :func:`cluster.perf.decode_step_time`
(tests/cluster/sim checks it). Energy per step is ``P_idle t + (P_max - P_idle) busy`` with
``busy = max(u_c t_comp, u_m t_mem)`` (:mod:`cluster.perf`'s formula); an idle replica draws
``P_idle``. Every time and energy here is MODELED.
"""

from __future__ import annotations

from dataclasses import dataclass

from cluster import perf
from cluster.catalog import DeviceSpec
from cluster.exceptions import InputError
from cluster.models import ModelShape
from solvers import validate


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """A continuous-batching engine's knobs (vLLM's names).

    * ``max_num_seqs``: most sequences in a batch (vLLM's default 256).
    * ``max_batched_tokens``: most tokens one step pushes through the model; with
      ``chunked_prefill`` it is the per-step token budget shared by decodes and prefill chunks,
      without it the budget of one prefill step (a lone prompt longer than that still runs alone).
    * ``chunked_prefill``: Sarathi-style mixed steps (decodes first, then prefill chunks) instead
      of prefill-priority steps that pause decoding.
    * ``gpu_memory_utilization`` / ``activation_reserve_gib``: the KV-cache budget
      (:func:`cluster.perf.kv_capacity_tokens`).
    """

    max_num_seqs: int = 256
    max_batched_tokens: int = 8192
    chunked_prefill: bool = False
    gpu_memory_utilization: float = 0.9
    activation_reserve_gib: float = perf.DEFAULT_ACTIVATION_RESERVE_GIB

    def __post_init__(self) -> None:
        validate.integer("max_num_seqs", self.max_num_seqs, minimum=1)
        validate.integer("max_batched_tokens", self.max_batched_tokens, minimum=1)
        if not isinstance(self.chunked_prefill, bool):
            raise InputError(f"chunked_prefill: expected a bool, got {self.chunked_prefill!r}")
        validate.real("gpu_memory_utilization", self.gpu_memory_utilization, lo=0.0, hi=1.0, lo_open=True)
        validate.real("activation_reserve_gib", self.activation_reserve_gib, lo=0.0)
        if self.chunked_prefill and self.max_batched_tokens <= self.max_num_seqs:
            raise InputError(f"max_batched_tokens: expected more than max_num_seqs={self.max_num_seqs} "
                             f"with chunked prefill (decodes take one token each), got {self.max_batched_tokens}")


@dataclass(frozen=True, slots=True)
class StepCost:
    """Per-token coefficients of a replica's step time (module docstring), in seconds and joules.

    ``tok_comp = F / (P e_c)``, ``attn_comp = A / (P e_a)``, ``weights_mem = W / (B e_m)``,
    ``kv_mem = kv_bytes_per_token / (B e_m)``, ``overhead = o_s``; ``u_c``, ``u_m`` and the power
    figures give the energy. ``kv_capacity`` is the replica's KV-cache size in tokens.
    """

    tok_comp: float
    attn_comp: float
    weights_mem: float
    kv_mem: float
    overhead: float
    u_c: float
    u_m: float
    power_idle_w: float
    power_max_w: float
    kv_capacity: int

    @classmethod
    def of(cls, model: ModelShape, device: DeviceSpec, engine: EngineConfig = EngineConfig(),
           eff: perf.Efficiency = perf.DEFAULT_EFFICIENCY) -> StepCost:
        """The coefficients of ``model`` on ``device`` (InputError when the weights do not fit)."""
        peak = perf.peak_flops(device, model.compute_dtype)
        bw = device.mem_bw_bytes_s * eff.memory
        cap = perf.kv_capacity_tokens(model, device, engine.gpu_memory_utilization, engine.activation_reserve_gib)
        if cap < 1:
            raise InputError(f"fleet.kind: {device.kind!r} cannot hold {model.name} "
                             f"({model.weight_bytes / 2**30:.1f} GiB of weights, {device.memory_gib:g} GiB of memory); "
                             "drop it from the fleet or pick a smaller model")
        return cls(
            tok_comp=model.flops_per_token / (peak * eff.compute),
            attn_comp=model.attention_flops_per_token(1) / (peak * eff.attention),
            weights_mem=model.weight_bytes / bw,
            kv_mem=model.kv_bytes_per_token / bw,
            overhead=eff.step_overhead_s,
            u_c=eff.compute_power_util,
            u_m=eff.memory_power_util,
            power_idle_w=float(device.power_idle_w),
            power_max_w=float(device.power_max_w),
            kv_capacity=cap,
        )

    def step(self, n_tokens: int, pairs: int, kv: int) -> tuple[float, float]:
        """``(t, busy)`` of one step: duration and ``max(u_c t_comp, u_m t_mem)``."""
        tc = n_tokens * self.tok_comp + pairs * self.attn_comp
        tm = self.weights_mem + kv * self.kv_mem
        return (tc if tc > tm else tm) + self.overhead, max(self.u_c * tc, self.u_m * tm)


@dataclass(frozen=True, slots=True)
class ReplicaSpec:
    """One replica of the fleet: ``name`` (``a100-80g-sxm-0``), its ``kind``, its step costs, its
    price per hour and its router ``slots`` (how many mean-sized requests its KV cache holds, the
    capacity the router divides the load by)."""

    name: str
    kind: str
    cost: StepCost
    price_per_hour: float | None
    slots: int


__all__ = ["EngineConfig", "ReplicaSpec", "StepCost"]
