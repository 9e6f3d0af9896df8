"""Driver API: whole tensors in, whole output out, computed by a reused group of Ray actors.

``distributed_attention`` validates, picks a :class:`ShardPlan` for the strategy (speeds in,
shard sizes out: :mod:`attention.partition`), puts each rank's shard in the object store once,
runs the strategy on a group of actors (one group per ``(world_size, backend)``, created on first
use and reused while the Ray session lives) and reassembles the output. Backend: ``gloo`` for
CPU tensors, ``nccl`` for CUDA tensors (actors then ask for one GPU each).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cluster.exceptions import CapacityError, did_you_mean
from attention.blockwise import DEFAULT_BLOCK, check_qkv
from attention.exceptions import AttentionInputError
from attention.partition import (
    ShardPlan,
    contiguous_plan,
    hybrid_plan,
    normalise_speeds,
    zigzag_plan,
)
from attention.strategies import STRATEGIES
from attention.worker import from_wire, to_wire

ACTOR_NUM_CPUS = 0.25


@dataclass(frozen=True, slots=True)
class DistributedResult:
    """Whole output and lse, the plan used, and per-rank seconds and bytes sent."""

    out: torch.Tensor
    lse: torch.Tensor
    plan: ShardPlan
    seconds: tuple[float, ...]
    bytes_sent: tuple[int, ...]


@dataclass
class _Group:
    actors: list
    job_id: str
    lock: threading.Lock


_groups: dict[tuple[int, str], _Group] = {}
_groups_lock = threading.Lock()


def default_ulysses_degree(world_size: int, num_heads: int) -> int:
    """Smallest divisor ``u > 1`` of ``world_size`` with ``u <= num_heads`` (1 if none)."""
    for u in range(2, world_size + 1):
        if world_size % u == 0 and u <= num_heads:
            return u
    return 1


def make_plan(
    strategy: str,
    seq_len: int,
    speeds: Sequence[float],
    *,
    causal: bool,
    num_heads: int,
    ulysses_degree: int | None = None,
) -> ShardPlan:
    """The shard layout each strategy uses (see docs/attention.md)."""
    if strategy in ("ring", "gather_kv"):
        return contiguous_plan(seq_len, speeds, causal=causal)
    if strategy == "zigzag":
        return zigzag_plan(seq_len, speeds)
    if strategy in ("ulysses", "tree_decode"):
        # Ulysses computes on heads and tree_decode's KV rows all cost the same: proportional.
        return contiguous_plan(seq_len, speeds, causal=False)
    if strategy == "hybrid":
        u = ulysses_degree or default_ulysses_degree(len(speeds), num_heads)
        return hybrid_plan(seq_len, speeds, u, causal=causal)
    raise AttentionInputError(
        f"unknown strategy {strategy!r}{did_you_mean(str(strategy), STRATEGIES)}; valid: "
        f"{', '.join(STRATEGIES)}"
    )


def validate(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    strategy: str,
    world_size: int,
    speeds: Sequence[float] | None,
    ulysses_degree: int | None,
) -> tuple[float, ...]:
    """Raise :class:`AttentionInputError` naming the problem; return the normalised speeds."""
    if strategy not in STRATEGIES:
        raise AttentionInputError(
            f"unknown strategy {strategy!r}{did_you_mean(str(strategy), STRATEGIES)}; valid: "
            f"{', '.join(STRATEGIES)}"
        )
    speeds = normalise_speeds(speeds, world_size)
    check_qkv(q, k, v, same_length=strategy != "tree_decode")
    if strategy == "tree_decode" and q.shape[2] > k.shape[2]:
        raise AttentionInputError(
            f"tree_decode: q has {q.shape[2]} rows but the KV cache only {k.shape[2]}"
        )
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not bool(torch.isfinite(t).all()):
            raise AttentionInputError(f"{name} contains NaN or infinite values")
    h = q.shape[1]
    if strategy == "ulysses" and world_size > h:
        raise AttentionInputError(
            f"ulysses needs world_size <= number of heads: world_size {world_size} > {h} heads; "
            f"use world_size <= {h}, or 'ring' / 'zigzag' / 'gather_kv' / 'hybrid'"
        )
    if strategy == "hybrid":
        u = ulysses_degree or default_ulysses_degree(world_size, h)
        if u < 1 or world_size % u != 0 or u > h:
            raise AttentionInputError(
                f"hybrid: ulysses_degree {u} must divide world_size {world_size} and be <= "
                f"the {h} heads"
            )
    elif ulysses_degree is not None:
        raise AttentionInputError(
            f"ulysses_degree is only for strategy 'hybrid', not {strategy!r}"
        )
    return speeds


def _group(world_size: int, backend: str) -> _Group:
    import ray

    if not ray.is_initialized():
        raise RuntimeError("distributed_attention needs Ray: call ray.init() first")
    job = ray.get_runtime_context().get_job_id()
    with _groups_lock:
        grp = _groups.get((world_size, backend))
        if grp is not None and grp.job_id == job:
            return grp
        from attention.worker import AttentionWorker

        remote = ray.remote(AttentionWorker).options(
            num_cpus=ACTOR_NUM_CPUS, num_gpus=1 if backend == "nccl" else 0
        )
        name = f"flotilla-attn-{backend}-{world_size}-{uuid.uuid4().hex[:8]}"
        actors = [remote.remote(world_size, r, backend, name) for r in range(world_size)]
        ray.get([a.join.remote() for a in actors])
        grp = _Group(actors, job, threading.Lock())
        _groups[(world_size, backend)] = grp
        return grp


def _discard_group(world_size: int, backend: str, grp: _Group) -> None:
    """Kill one group's actors and forget it (the next call creates a fresh one)."""
    import ray

    with _groups_lock:
        if _groups.get((world_size, backend)) is grp:
            del _groups[(world_size, backend)]
    for a in grp.actors:
        try:
            ray.kill(a)
        except Exception:  # noqa: BLE001 - already dead
            pass


def _gather_capped(refs: list, cap: int, world_size: int, backend: str, grp: _Group) -> list:
    """Results of a capped run, in rank order. The first rank that reports ``over_cap`` (or
    fails) leaves its peers waiting on messages it will never send, so the group is killed and
    forgotten and :class:`CapacityError` (or the rank's error) is raised."""
    import ray

    results: dict[int, dict] = {}
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        r = refs.index(ready[0])
        try:
            res = ray.get(ready[0])
        except Exception:
            _discard_group(world_size, backend, grp)
            raise
        if res["over_cap"]:
            _discard_group(world_size, backend, grp)
            raise CapacityError(
                f"rank {r} of {world_size} went over the memory cap of {cap} bytes "
                f"({res['error']}); the group was discarded"
            )
        results[r] = res
    return [results[r] for r in range(len(refs))]


def shutdown_groups() -> None:
    """Kill every cached actor group (they are recreated on next use)."""
    import ray

    with _groups_lock:
        for grp in _groups.values():
            for a in grp.actors:
                try:
                    ray.kill(a)
                except Exception:  # noqa: BLE001 - the session may already be gone
                    pass
        _groups.clear()


def run_distributed(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    strategy: str = "zigzag",
    world_size: int = 2,
    speeds: Sequence[float] | None = None,
    ulysses_degree: int | None = None,
    block: int = DEFAULT_BLOCK,
    num_threads: int | None = None,
    memory_cap_bytes: int | None = None,
    kv_heads_per_pass: int | None = None,
) -> DistributedResult:
    """:func:`distributed_attention` with the lse, the plan and per-rank timings and bytes.

    ``memory_cap_bytes`` (keyword-only, default ``None``: no cap) bounds each actor's host memory
    during the step (:func:`attention.worker.memory_cap`: its shards, buffers, outputs and kernel
    scratch count); a rank that needs more raises :class:`cluster.exceptions.CapacityError` and
    the group is discarded (recreated on the next call).

    ``kv_heads_per_pass`` (``ring`` and ``zigzag`` only; default ``None``: the plain ring) runs
    :func:`attention.strategies.grouped_ring_attention`: one ring pass per that many key/value
    heads, the same result with per-rank memory bounded by the shard (see docs/attention.md).
    """
    import ray

    speeds = validate(
        q, k, v, strategy=strategy, world_size=world_size, speeds=speeds,
        ulysses_degree=ulysses_degree,
    )
    if memory_cap_bytes is not None and (
        isinstance(memory_cap_bytes, bool)
        or not isinstance(memory_cap_bytes, int)
        or memory_cap_bytes <= 0
    ):
        raise AttentionInputError(
            f"memory_cap_bytes must be a positive int or None, got {memory_cap_bytes!r}"
        )
    h = q.shape[1]
    if kv_heads_per_pass is not None and (
        strategy not in ("ring", "zigzag")
        or isinstance(kv_heads_per_pass, bool)
        or not isinstance(kv_heads_per_pass, int)
        or not 1 <= kv_heads_per_pass <= k.shape[1]
    ):
        raise AttentionInputError(
            f"kv_heads_per_pass must be None or an int in [1, {k.shape[1]}] (the key/value "
            f"heads) with strategy 'ring' or 'zigzag'; got {kv_heads_per_pass!r} with "
            f"{strategy!r}"
        )
    u = None
    if strategy == "hybrid":
        u = ulysses_degree or default_ulysses_degree(world_size, h)
    plan = make_plan(
        strategy, k.shape[2], speeds, causal=causal, num_heads=h, ulysses_degree=u
    )
    backend = "nccl" if q.is_cuda else "gloo"
    grp = _group(world_size, backend)
    qc, kc, vc = q.detach().cpu(), k.detach().cpu(), v.detach().cpu()
    with grp.lock:
        refs = []
        q_ref = ray.put(to_wire(qc)) if strategy == "tree_decode" else None
        for r, actor in enumerate(grp.actors):
            qs = q_ref if q_ref is not None else ray.put(to_wire(plan.shard(qc, r)))
            refs.append(
                actor.run.remote(
                    strategy, plan, qs, ray.put(to_wire(plan.shard(kc, r))),
                    ray.put(to_wire(plan.shard(vc, r))),
                    causal=causal, speeds=speeds, ulysses_degree=u, block=block,
                    num_threads=num_threads,
                    return_output=strategy != "tree_decode" or r == 0,
                    memory_cap_bytes=memory_cap_bytes, kv_heads_per_pass=kv_heads_per_pass,
                )
            )
        if memory_cap_bytes is None:
            results = ray.get(refs)
        else:
            results = _gather_capped(refs, memory_cap_bytes, world_size, backend, grp)
    for res in results:  # private writable copies: callers own what we return
        if res["out"] is not None:
            res["out"], res["lse"] = (from_wire(res[x], copy=True) for x in ("out", "lse"))
    if strategy == "tree_decode":
        out, lse = results[0]["out"], results[0]["lse"]
    else:
        out = plan.unshard([r["out"] for r in results], dim=2)
        lse = plan.unshard([r["lse"] for r in results], dim=2)
    return DistributedResult(
        out=out.to(device=q.device, dtype=q.dtype),
        lse=lse.to(q.device),
        plan=plan,
        seconds=tuple(r["seconds"] for r in results),
        bytes_sent=tuple(r["bytes_sent"] for r in results),
    )


def distributed_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    strategy: str = "zigzag",
    world_size: int = 2,
    speeds: Sequence[float] | None = None,
    ulysses_degree: int | None = None,
    block: int = DEFAULT_BLOCK,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Exact softmax(q k^T / sqrt(D)) v for q [B,H,L,D], k, v [B,Hkv,L,D] over ``world_size`` actors.

    ``strategy`` is one of :data:`STRATEGIES`; ``speeds`` (one per rank, > 0) size the shards;
    ``ulysses_degree`` sets the Ulysses group size of ``hybrid``. For ``tree_decode`` q may be
    shorter than k (its rows are the last positions). Needs an initialised Ray. Returns the output
    in q's dtype (and the lse, float32/float64, with ``return_lse``).
    """
    res = run_distributed(
        q, k, v, causal=causal, strategy=strategy, world_size=world_size, speeds=speeds,
        ulysses_degree=ulysses_degree, block=block,
    )
    return (res.out, res.lse) if return_lse else res.out
