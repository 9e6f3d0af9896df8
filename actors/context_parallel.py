"""Context-parallel prefill and decoding of a Llama across a group of Ray actors.

A group is ``n`` :class:`ContextParallelRank` actors, each placed on a ``device:<kind>`` unit
(the same placement a :class:`actors.device.DeviceActor` uses) and joined in one gloo group of
``ray.util.collective`` (:meth:`attention.comm.Communicator.join`; one group per actor process, so
a group of another size is a fresh set of actors). Every rank loads the model's weights.

**Prefill.** The prompt's ``L`` rows are cut by a :class:`attention.partition.ShardPlan` (the
strategy's layout, shares from the ranks' relative speeds: unequal shares for unequal devices).
Rank ``r`` embeds only its rows, rotates q and k by their absolute positions and runs every layer
on them; in each layer the attention of its queries over *all* earlier keys is computed by the
chosen strategy of :mod:`attention.strategies` (``ring``/``zigzag``: K/V shards travel round the
ring; ``ulysses``: all-to-all to head shards; ``hybrid``; ``gather_kv``), merged exactly by
log-sum-exp. Each rank keeps its own rows' K/V: the KV cache is distributed, never assembled.

**Decoding (tree decoding).** The new token is replicated: every rank runs the layers on it.
The rank holding the prompt's last row (the *owner*) appends the token's K/V to its shard. In each
layer rank ``r`` computes ``(out_r, lse_r)`` of the query over its shard; the exact result is::

    m   = max_r lse_r
    out = sum_r exp(lse_r - m) out_r / sum_r exp(lse_r - m)

(one allgather of the packed partials, merged on every rank in rank order:
:func:`attention.strategies.tree_decode_attention`). All ranks then hold bitwise the same hidden
state; rank 0 turns it into logits. The owner's shard grows in place (a buffer with spare rows,
grown by a quarter when full), so a step does not copy the cache.

:class:`ContextParallelGroup` is the driver side: ``generate(prompt_ids, n)`` gives the greedy
tokens, the logits that chose them and the final hidden states of every prompt row.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from attention.partition import ShardPlan, normalise_speeds
from attention.strategies import SEQUENCE_STRATEGIES, run_strategy, tree_decode_attention
from actors.device import CONTEXT_PARALLEL_SHARE
from cluster.exceptions import CapacityError, InputError, did_you_mean

#: Strategies a context-parallel prefill can use (tree decoding follows every one of them).
CP_STRATEGIES = tuple(s for s in SEQUENCE_STRATEGIES)
#: Share of a ``device:<kind>`` unit a rank holds, and its CPU scheduling share.
CP_DEVICE_SHARE = CONTEXT_PARALLEL_SHARE  # kept free on every device by its ExpertActor
CP_NUM_CPUS = 0.25


class _PrefillAttention:
    """The model's attention callable during a context-parallel prefill (one rank)."""

    def __init__(self, rank: "ContextParallelRank", plan: ShardPlan, strategy: str,
                 speeds: Sequence[float], ulysses_degree: int | None) -> None:
        self.rank, self.plan, self.strategy = rank, plan, strategy
        self.speeds, self.ulysses_degree = list(speeds), ulysses_degree

    def __call__(self, layer: int, q, k, v, positions) -> torch.Tensor:
        self.rank.k[layer], self.rank.v[layer] = k.contiguous(), v.contiguous()
        out, _ = run_strategy(
            self.strategy, self.rank.comm, q.contiguous(), k.contiguous(), v.contiguous(),
            self.plan, causal=True, speeds=self.speeds, ulysses_degree=self.ulysses_degree,
        )
        return out


class _DecodeAttention:
    """The model's attention callable for one replicated new token (tree decoding)."""

    def __init__(self, rank: "ContextParallelRank") -> None:
        self.rank = rank

    def __call__(self, layer: int, q, k, v, positions) -> torch.Tensor:
        r = self.rank
        if r.comm.rank == r.owner:
            r.append_kv(layer, k, v)
        lengths = r.kv_lengths()
        segs, pos = [], 0
        for n in lengths:
            segs.append(((pos, pos + n),))
            pos += n
        plan = ShardPlan(pos, tuple(segs))
        # every cached key precedes the new token: non-causal over the shards
        out, _ = tree_decode_attention(r.comm, q, r.k[layer], r.v[layer], plan, causal=False)
        return out


class ContextParallelRank:
    """One rank of a context-parallel group (the Ray actor body; plain class, no Ray import)."""

    def __init__(self, world_size: int, rank: int, group_name: str, model: str | None = None,
                 num_threads: int = 1) -> None:
        from actors.llm.llama import load_bundled

        torch.set_num_threads(num_threads)
        self.world_size, self.rank_id, self.group_name = world_size, rank, group_name
        self.model, _ = load_bundled(model)
        self.comm = None
        self.k: list[torch.Tensor | None] = []
        self.v: list[torch.Tensor | None] = []
        self.owner = world_size - 1
        self.lengths: list[int] = []
        self.decoded = 0

    def join(self) -> int:
        from attention.comm import Communicator

        self.comm = Communicator.join(self.world_size, self.rank_id, "gloo", self.group_name)
        return self.rank_id

    def append_kv(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Append one token's K/V to this rank's shard of ``layer``: written into spare rows of a
        buffer that grows by a quarter (at least 256 rows) when full, so a step copies the shard
        only once every ``max(256, n / 4)`` tokens instead of every token; ``self.k[layer]``
        stays a view of the filled rows."""
        n = self.k[layer].shape[2]
        buf_k, buf_v = self._kv_room[layer]
        if buf_k is None or buf_k.shape[2] < n + k.shape[2]:
            room = n + max(256, n // 4, k.shape[2])
            shape = (*k.shape[:2], room, k.shape[3])
            buf_k = torch.empty(shape, dtype=k.dtype)
            buf_v = torch.empty(shape, dtype=v.dtype)
            buf_k[:, :, :n], buf_v[:, :, :n] = self.k[layer], self.v[layer]
            self._kv_room[layer] = (buf_k, buf_v)
        buf_k[:, :, n : n + k.shape[2]] = k
        buf_v[:, :, n : n + v.shape[2]] = v
        self.k[layer] = buf_k[:, :, : n + k.shape[2]]
        self.v[layer] = buf_v[:, :, : n + v.shape[2]]

    def kv_lengths(self) -> list[int]:
        """Every rank's KV shard length in the layer being decoded (no communication needed:
        the prefill plan's lengths, the owner's grown by the tokens decoded so far)."""
        lengths = list(self.lengths)
        lengths[self.owner] += self.decoded + 1
        return lengths

    def heads(self) -> tuple[int, int]:
        """(query heads, key/value heads) of the loaded model."""
        return self.model.cfg.num_heads, self.model.cfg.num_kv_heads

    @torch.inference_mode()
    def prefill(self, plan: ShardPlan, tokens: Sequence[int], strategy: str,
                speeds: Sequence[float], ulysses_degree: int | None = None) -> dict:
        """Run every layer on this rank's rows; returns its final hidden states, the last row's
        logits (on the rank holding it, else None), seconds and bytes sent."""
        n_layers = self.model.cfg.num_layers
        self.k, self.v = [None] * n_layers, [None] * n_layers
        self._kv_room = [(None, None)] * n_layers
        self.lengths = [plan.length(r) for r in range(plan.world_size)]
        self.decoded = 0
        last = plan.seq_len - 1
        self.owner = next(r for r, segs in enumerate(plan.segments) if any(s <= last < e for s, e in segs))
        positions = torch.cat([torch.arange(s, e) for s, e in plan.segments[self.rank_id]])
        ids = torch.tensor([list(tokens)], dtype=torch.long)
        sent0 = self.comm.stats.payload_bytes + self.comm.stats.collective_bytes
        t0 = time.perf_counter()
        attn = _PrefillAttention(self, plan, strategy, speeds, ulysses_degree)
        hidden = self.model.hidden(ids, positions, attn)[0]
        logits = None
        if self.rank_id == self.owner:
            row = int((positions == last).nonzero()[0, 0])
            logits = self.model.logits(hidden[row]).numpy()
        seconds = time.perf_counter() - t0
        sent = self.comm.stats.payload_bytes + self.comm.stats.collective_bytes - sent0
        return {"hidden": hidden.numpy(), "logits": logits, "seconds": seconds, "bytes_sent": sent,
                "kv_rows": int(self.k[0].shape[2])}

    @torch.inference_mode()
    def decode(self, token: int, position: int) -> dict:
        """One replicated decoding step of ``token`` at ``position``; the next-token logits."""
        if not self.k or self.k[0] is None:
            raise InputError("decode: prefill must run first")
        hidden = self.model.hidden(torch.tensor([[int(token)]]), torch.tensor([int(position)]),
                                   _DecodeAttention(self))
        self.decoded += 1
        last = hidden[0, -1]
        # every rank holds the same final hidden state (checked by the driver); one computes
        # the logits from it
        logits = self.model.logits(last).numpy() if self.rank_id == 0 else None
        return {"logits": logits, "hidden": last.numpy(), "kv_rows": int(self.k[0].shape[2])}


@dataclass(frozen=True, slots=True)
class ContextParallelResult:
    """Greedy ``tokens``, the ``logits`` [vocab] that chose each, the prompt's final ``hidden``
    states [L, hidden], the ``plan`` and per-rank prefill seconds, bytes sent and KV rows."""

    tokens: list[int]
    logits: list[torch.Tensor]
    hidden: torch.Tensor
    plan: ShardPlan
    strategy: str
    devices: tuple[str, ...]
    prefill_seconds: tuple[float, ...]
    bytes_sent: tuple[int, ...]
    kv_rows: tuple[int, ...]
    decode_agree: bool


def shares_plan(strategy: str, shares: Sequence[int]) -> ShardPlan:
    """The :class:`ShardPlan` giving rank ``r`` exactly ``shares[r]`` rows (e.g. the shares of
    :func:`solvers.shards.solve`): contiguous in rank order for ring, ulysses, hybrid and gather_kv;
    for zigzag rank ``r`` holds chunk ``r`` (``ceil(n_r / 2)`` rows) and chunk ``2P - 1 - r`` (the
    rest), chunks laid out in the order ``0, 1, ..., P-1, P-1, ..., 0``."""
    check_strategy(strategy)
    shares = [int(n) for n in shares]
    if not shares or any(n < 1 for n in shares) or (strategy == "zigzag" and any(n < 2 for n in shares)):
        least = 2 if strategy == "zigzag" else 1
        raise InputError(f"shares: expected one integer >= {least} per rank, got {shares}")
    p, pos = len(shares), 0
    if strategy != "zigzag":
        segs = []
        for n in shares:
            segs.append(((pos, pos + n),))
            pos += n
        return ShardPlan(pos, tuple(segs))
    first = [(n + 1) // 2 for n in shares]
    chunks: list[list[tuple[int, int]]] = [[] for _ in range(p)]
    for r in [*range(p), *reversed(range(p))]:
        n = first[r] if not chunks[r] else shares[r] - first[r]
        chunks[r].append((pos, pos + n))
        pos += n
    return ShardPlan(pos, tuple(tuple(c) for c in chunks))


def check_strategy(strategy: str) -> str:
    if strategy not in CP_STRATEGIES:
        raise InputError(
            f"strategy: expected one of {', '.join(CP_STRATEGIES)}, got {strategy!r}"
            f"{did_you_mean(str(strategy), CP_STRATEGIES)}"
        )
    return strategy


class ContextParallelGroup:
    """``len(devices)`` ranks, rank ``r`` placed on a ``device:<devices[r]>`` unit."""

    def __init__(self, devices: Sequence[str], *, model: str | None = None, timeout_s: float | None = None) -> None:
        """Start and join the ranks; with ``timeout_s``, CapacityError (the ranks killed) when they
        are not all placed, loaded and joined by then (e.g. no free ``device:<kind>`` share)."""
        import ray

        from actors.device import placement_options

        if not devices:
            raise InputError("devices: expected at least one device kind, got none")
        if not ray.is_initialized():
            raise InputError("ray: context-parallel groups need ray.init() first")
        self.devices = tuple(devices)
        self._heads: tuple[int, int] | None = None
        self._prompt_len, self._decoded = 0, 0
        name = f"flotilla-cp-{len(devices)}-{uuid.uuid4().hex[:8]}"
        self.actors = []
        for r, kind in enumerate(self.devices):
            opts = placement_options(kind, CP_DEVICE_SHARE, cpus=CP_NUM_CPUS)
            self.actors.append(ray.remote(ContextParallelRank).options(**opts).remote(
                len(devices), r, name, model))
        try:
            ray.get([a.join.remote() for a in self.actors], timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            self.shutdown()
            raise CapacityError(
                f"devices: the context-parallel ranks on {', '.join(self.devices)} were not placed and "
                f"joined within {timeout_s:g} s; each needs {CP_DEVICE_SHARE} of a free device:<kind> unit"
            ) from None
        self._heads = tuple(ray.get(self.actors[0].heads.remote()))

    @property
    def world_size(self) -> int:
        return len(self.actors)

    def plan(self, seq_len: int, strategy: str, speeds: Sequence[float] | None = None,
             ulysses_degree: int | None = None) -> ShardPlan:
        from attention.api import make_plan

        speeds = normalise_speeds(speeds, self.world_size)
        return make_plan(check_strategy(strategy), seq_len, speeds, causal=True, num_heads=self._heads[0],
                         ulysses_degree=ulysses_degree)

    def prefill(self, prompt: Sequence[int], *, strategy: str = "ring", speeds: Sequence[float] | None = None,
                ulysses_degree: int | None = None, plan: ShardPlan | None = None) -> tuple[torch.Tensor, ShardPlan, list[dict]]:
        """Context-parallel prefill of ``prompt``: the next-token logits [vocab], the plan used and
        every rank's report (hidden rows, seconds, bytes sent, KV rows). Decode with :meth:`decode`."""
        import ray

        from attention.api import default_ulysses_degree

        if not prompt:
            raise InputError("prompt: expected at least one token, got none")
        speeds = list(normalise_speeds(speeds, self.world_size))
        if strategy == "hybrid" and ulysses_degree is None:
            ulysses_degree = default_ulysses_degree(self.world_size, self._heads[0])
        plan = plan or self.plan(len(prompt), strategy, speeds, ulysses_degree)
        if plan.world_size != self.world_size or plan.seq_len != len(prompt):
            raise InputError(f"plan: expected {self.world_size} ranks over {len(prompt)} rows")
        ids = torch.tensor(list(prompt), dtype=torch.long)
        outs = ray.get([
            a.prefill.remote(plan, plan.shard(ids, r, dim=0).tolist(), strategy, speeds, ulysses_degree)
            for r, a in enumerate(self.actors)
        ])
        logits = torch.from_numpy(np.array(next(o["logits"] for o in outs if o["logits"] is not None)))
        self._prompt_len, self._decoded = len(prompt), 0
        return logits, plan, outs

    def decode(self, token: int) -> tuple[torch.Tensor, bool]:
        """One tree-decoding step of ``token`` (after :meth:`prefill`): the next-token logits (rank
        0 computes them) and whether every rank computed exactly the same final hidden state, from
        which they follow."""
        import ray

        res = ray.get([a.decode.remote(int(token), self._prompt_len + self._decoded) for a in self.actors])
        self._decoded += 1
        hidden = [np.asarray(x["hidden"]) for x in res]
        same = all(np.array_equal(hidden[0], h) for h in hidden[1:])
        return torch.from_numpy(np.array(res[0]["logits"])), same

    def generate(self, prompt: Sequence[int], max_new_tokens: int, *, strategy: str = "ring",
                 speeds: Sequence[float] | None = None, ulysses_degree: int | None = None,
                 plan: ShardPlan | None = None) -> ContextParallelResult:
        """Greedy generation of ``max_new_tokens`` after a context-parallel prefill of ``prompt``."""
        if max_new_tokens < 1:
            raise InputError(f"max_new_tokens: expected >= 1, got {max_new_tokens}")
        logits, plan, outs = self.prefill(prompt, strategy=strategy, speeds=speeds,
                                          ulysses_degree=ulysses_degree, plan=plan)
        hidden = plan.unshard([torch.from_numpy(np.array(o["hidden"])) for o in outs], dim=0)
        tokens, all_logits, agree = [], [], True
        for step in range(max_new_tokens):
            tok = int(torch.argmax(logits))
            tokens.append(tok)
            all_logits.append(logits)
            if step == max_new_tokens - 1:
                break
            logits, same = self.decode(tok)
            agree = agree and same
        kv = tuple(int(o["kv_rows"]) for o in outs)
        return ContextParallelResult(
            tokens, all_logits, hidden, plan, strategy, self.devices,
            tuple(float(o["seconds"]) for o in outs), tuple(int(o["bytes_sent"]) for o in outs),
            kv, agree,
        )

    def shutdown(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []
