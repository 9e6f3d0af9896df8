"""Long prompts served context-parallel: the router's dispatch hook and the serving adapter.

A request whose prompt is longer than ``above`` tokens (and that does not ask for
``context_parallel: "off"``) is not given to one ExpertActor: the router's dispatch hook
(:class:`ContextParallelRoute`, called from :meth:`actors.dispatch.Dispatcher.acquire`) hands it to one
:class:`ContextParallelServer` actor, which has the same ``generate_stream`` / ``generate``
interface as an ExpertActor. The request is journaled, re-dispatched and acknowledged by the
router exactly like any other; only the replica differs.

For each request the server

1. tokenises the prompt as an expert does (chat template unless ``chat`` is false);
2. asks :func:`solvers.shards.solve` which devices, strategy and shares minimise the **modeled**
   prefill latency (:func:`placement`: the model shape from :mod:`cluster.models`, the device
   figures from the catalog, each device's free memory = 90 % of its capacity less what its
   DeviceActor's ledger already reserves);
3. prefills across a :class:`actors.context_parallel.ContextParallelGroup` with one rank per chosen
   device (``device:<kind>`` placement; the group is created lazily and kept while the solver keeps
   choosing the same kinds), the prompt cut by the solver's shares
   (:func:`actors.context_parallel.shares_plan`);
4. decodes with the KV cache left distributed (tree decoding), sampling each token from the
   replicated logits with the expert's rule (:func:`actors.llm.generate.next_token`: greedy, or
   seeded), and streams the text as an expert does (stop strings, EOS).

The final dict is an expert's (text, usage, measured ``ttft_s``/``tpot_s``/``e2e_s``) plus
``context_parallel``: ``{devices (kinds, one per rank), strategy, shares, modeled_prefill_s,
modeled_energy_j, note}``. The ranks compute on the CPU here (gloo); ``simulated`` says so.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from cluster.exceptions import InputError

log = logging.getLogger(__name__)
#: Share of a device's memory a placement may use (as vLLM's gpu_memory_utilization).
MEMORY_UTILIZATION = 0.9
#: The replica name the router reports for the adapter.
CP_REPLICA_ID = "context-parallel"
CP_MODES = ("auto", "off")
#: Seconds the ranks of a new group have to be placed, load the weights and join.
GROUP_TIMEOUT_S = 180.0
NOTE = ("modeled: the shard solver's roofline prefill time and makespan x power energy at the "
        "catalog's figures; not measured")


def check_mode(value: Any) -> str:
    """A request's ``context_parallel`` field: ``auto`` (default) or ``off`` (one device)."""
    mode = "auto" if value in (None, "") else value
    if mode not in CP_MODES:
        raise InputError(f"context_parallel: expected one of {', '.join(CP_MODES)}, got {value!r:.40}")
    return mode


#: ``--context-parallel-above`` default of ``flotilla serve`` and ``python -m cluster.shell.job serve``, tokens.
CP_DEFAULT_ABOVE = 1024


def parse_above(value: str) -> int | None:
    """The ``--context-parallel-above`` flag: a token count >= 1, or ``off`` (None)."""
    if value.strip().lower() == "off":
        return None
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise InputError(f"--context-parallel-above: expected TOKENS (an integer >= 1) or off, got {value!r}")
    return n


def check_above(value: Any) -> int | None:
    """``context_parallel_above``: an integer >= 1 (tokens) or None (off)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"context_parallel_above: expected an integer >= 1 (tokens) or off, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Candidate:
    """A device the group may use: its id, kind and the handle of its DeviceActor (for the ledger)."""

    device_id: str
    kind: str
    device_actor: Any = None


def shard_model(shape: Any) -> Any:
    """The :class:`solvers.shards.ShardModel` of a :class:`cluster.models.ModelShape`."""
    from cluster.models import DTYPE_BYTES
    from solvers.shards import ShardModel

    return ShardModel(shape.n_layers, shape.n_heads, shape.n_kv_heads, shape.head_dim, shape.hidden_size,
                      shape.intermediate_size, float(shape.flops_per_token), float(shape.weight_bytes),
                      DTYPE_BYTES[shape.cache_dtype])


def shard_device(shape: Any, kind: str, reserved_bytes: float = 0.0) -> Any:
    """The :class:`solvers.shards.ShardDevice` of a catalog kind with ``reserved_bytes`` in use."""
    from cluster.perf import DEFAULT_EFFICIENCY, peak_flops
    from cluster.probe import probed_catalog
    from solvers.shards import ShardDevice

    catalog = probed_catalog()
    spec = catalog.get(catalog.resolve(kind))
    eff = DEFAULT_EFFICIENCY
    free = max(0.0, spec.memory_gib * 2**30 * MEMORY_UTILIZATION - reserved_bytes)
    return ShardDevice(spec.kind, free, spec.link_gbs, peak_flops(spec, shape.compute_dtype) * eff.compute,
                       spec.mem_bw_gbs * eff.memory, spec.power_max_w)


def placement(n_tokens: int, shape: Any, candidates: Sequence[Candidate]) -> Any:
    """The solver's :class:`solvers.shards.ShardPlacement` for ``n_tokens`` over ``candidates``
    (their ledgers read now; a ledger that cannot be read counts as nothing reserved)."""
    import ray

    from solvers.shards import solve

    reserved = []
    for c in candidates:
        try:
            reserved.append(float(ray.get(c.device_actor.ledger.remote(), timeout=10)["reserved_bytes"])
                            if c.device_actor is not None else 0.0)
        except Exception:  # noqa: BLE001 - a dead DeviceActor: catalog figures only
            reserved.append(0.0)
    devices = [shard_device(shape, c.kind, r) for c, r in zip(candidates, reserved)]
    return solve(n_tokens, shard_model(shape), devices)


def plan_shards(tokens: int, model: str, kinds: Sequence[str], *, latency_budget_s: float | None = None,
                energy_budget_j: float | None = None, objective: str = "latency") -> dict[str, Any]:
    """``flotilla plan-shards``' document for a registry ``model`` over catalog ``kinds`` (the Plan
    RPC's ``shards`` query): the placement (:meth:`ShardPlacement.to_dict`), ``solve_ms`` measured,
    the rest MODELED."""
    from cluster.models import get_model
    from solvers.shards import solve

    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
        raise InputError(f"tokens: expected an integer >= 1, got {tokens!r}")
    if not kinds or not all(isinstance(k, str) and k.strip() for k in kinds):
        raise InputError(f"devices: expected one or more device kinds, got {list(kinds)!r}")
    shape = get_model(model)
    devices = [shard_device(shape, k.strip()) for k in kinds]
    t0 = time.perf_counter()
    place = solve(tokens, shard_model(shape), devices, latency_budget_s=latency_budget_s,
                  energy_budget_j=energy_budget_j, objective=objective)
    return {"modeled": True, "note": NOTE, "tokens": tokens, "model": shape.name, "objective": objective,
            "candidates": [d.kind for d in devices], **place.to_dict(),
            "solve_ms": (time.perf_counter() - t0) * 1e3}


def model_shape_of(model: str | None) -> Any:
    """The registry :class:`cluster.models.ModelShape` of a served model name (None: the default)."""
    from actors.llm.loader import resolve_source
    from cluster.models import get_model

    return get_model(resolve_source(model).name)


class ContextParallelServer:
    """The adapter actor body (see the module docstring); wrapped by :func:`spawn_server`."""

    def __init__(self, model: str | None, candidates: Sequence[Candidate]) -> None:
        from actors.llm.loader import ensure_cached, resolve_source
        from actors.llm.tokenizer import load_tokenizer

        source = resolve_source(model)
        path = ensure_cached(source)
        self.model, self.model_name = model, source.name
        self.shape = model_shape_of(model)
        self.candidates = list(candidates)
        self.tokenizer = load_tokenizer(path)
        cfg = json.loads((path / "config.json").read_text())
        self.max_positions = int(cfg.get("max_position_embeddings", 2048))
        eos = cfg.get("eos_token_id", self.tokenizer.eos_token_id)
        self.eos = set(eos if isinstance(eos, list) else [eos]) - {None}
        if self.tokenizer.eos_token_id is not None:
            self.eos.add(self.tokenizer.eos_token_id)
        self._group: Any = None
        self._lock = threading.Lock()
        self.served = 0

    def info(self) -> dict[str, Any]:
        g = self._group
        return {"device_id": CP_REPLICA_ID, "model": self.model_name, "served": self.served,
                "group": list(g.devices) if g is not None else None}

    def ping(self) -> bool:
        return True

    def stop(self) -> int:
        if self._group is not None:
            self._group.shutdown()
            self._group = None
        return 0

    def _group_for(self, kinds: tuple[str, ...]) -> Any:
        from actors.context_parallel import ContextParallelGroup

        if self._group is not None and self._group.devices != kinds:
            self._group.shutdown()
            self._group = None
        if self._group is None:
            self._group = ContextParallelGroup(kinds, model=self.model, timeout_s=GROUP_TIMEOUT_S)
        return self._group

    def generate(self, request: dict[str, Any]) -> dict[str, Any]:
        final: dict[str, Any] = {}
        for ev in self.generate_stream(request):
            if ev["type"] == "done":
                final = ev
        return final

    def generate_stream(self, request: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Chunk dicts, then the final dict (an ExpertActor's, plus ``context_parallel``)."""
        from actors.expert import request_params
        from actors.llm.generate import encode_prompt

        t0 = time.perf_counter()
        prompt = request.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError("prompt: must be a non-empty string")
        params = request_params(request)
        ids = encode_prompt(self.tokenizer, prompt, chat=bool(request.get("chat", True)))
        if len(ids) + params.max_tokens > self.max_positions:
            raise InputError(f"max_tokens: prompt of {len(ids)} tokens + max_tokens={params.max_tokens} exceeds the "
                             f"model's context of {self.max_positions} tokens; lower max_tokens or shorten the prompt")
        with self._lock:  # one request at a time: the ranks hold one request's KV cache
            place = placement(len(ids), self.shape, self.candidates)
            held = self._reserve(place)
            try:
                yield from self._serve(ids, params, place, t0)
            finally:
                self._release(held)

    def _reserve(self, place: Any) -> list[tuple[Any, str]]:
        """Reserve each chosen device's MODELED bytes (the placement's weights + KV + activations)
        in its DeviceActor's ledger for the request; CapacityError (nothing kept) if one refuses."""
        import ray

        held: list[tuple[Any, str]] = []
        try:
            for i, nbytes in zip(place.devices, place.memory_bytes):
                actor = self.candidates[i].device_actor
                if actor is not None:
                    held.append((actor, ray.get(actor.reserve.remote(int(nbytes), "context-parallel rank (modeled)"))))
        except BaseException:
            self._release(held)
            raise
        return held

    @staticmethod
    def _release(held: list[tuple[Any, str]]) -> None:
        import ray

        for actor, rid in held:
            try:
                ray.get(actor.release.remote(rid), timeout=30)
            except Exception:  # a dead DeviceActor took its ledger with it
                log.warning("context-parallel reservation %s not released", rid, exc_info=True)

    def _serve(self, ids: list[int], params: Any, place: Any, t0: float) -> Iterator[dict[str, Any]]:
        import torch

        from actors.context_parallel import shares_plan
        from actors.llm.generate import _held_back, next_token

        kinds = tuple(place.kinds)
        group = self._group_for(kinds)
        strategy = "ring" if place.strategy == "single" else place.strategy
        plan = shares_plan(strategy, place.shares)
        gen = None
        if not params.greedy:
            gen = torch.Generator(device="cpu")
            gen.manual_seed(params.seed if params.seed is not None else int(torch.seed() % 2**63))
        logits, _, _ = group.prefill(ids, strategy=strategy, plan=plan)
        out: list[int] = []
        text, emitted, n_chunks, finish, t_first = "", 0, 0, "length", None
        for step in range(params.max_tokens):
            tok = next_token(logits, params, gen)
            t_first = t_first or time.perf_counter()
            if tok in self.eos:
                finish = "stop"
                break
            out.append(tok)
            text = self.tokenizer.decode(out, skip_special_tokens=True)
            cut = min((i for i in (text.find(s) for s in params.stop) if i >= 0), default=-1)
            if cut >= 0:
                text, finish = text[:cut], "stop"
                break
            safe = len(text) - _held_back(text, params.stop)
            if safe > emitted:
                yield {"type": "chunk", "index": n_chunks, "text": text[emitted:safe]}
                n_chunks, emitted = n_chunks + 1, safe
            if step + 1 == params.max_tokens:
                break
            logits, _ = group.decode(tok)
        self.served += 1
        text = text.rstrip("\ufffd") if finish == "length" else text
        if len(text) > emitted:
            yield {"type": "chunk", "index": n_chunks, "text": text[emitted:]}
        t_end = time.perf_counter()
        t_first = t_first or t_end
        n = len(out)
        yield {
            "type": "done", "text": text, "finish_reason": finish, "prompt_tokens": len(ids),
            "completion_tokens": n, "ttft_s": t_first - t0, "tpot_s": (t_end - t_first) / (n - 1) if n > 1 else 0.0,
            "e2e_s": t_end - t0, "device_id": CP_REPLICA_ID, "device_kind": "+".join(kinds),
            "label": f"context-parallel {place.strategy} over {len(kinds)} simulated devices on cpu",
            "simulated": True, "model": self.model_name, "modeled": None,
            "context_parallel": {"devices": list(kinds), "strategy": place.strategy, "shares": list(place.shares),
                                 "modeled_prefill_s": place.latency_s, "modeled_energy_j": place.energy_j,
                                 "modeled_memory_bytes": list(place.memory_bytes), "note": NOTE},
        }


def spawn_server(model: str | None, candidates: Sequence[Candidate]) -> Any:
    """Start the adapter actor (a driver: a small CPU share, no device; its ranks take the devices)."""
    import ray

    return ray.remote(ContextParallelServer).options(num_cpus=0.1, max_concurrency=3, max_restarts=0).remote(
        model, list(candidates))


class ContextParallelRoute:
    """The router's dispatch hook: ``route(request)`` is the adapter's replica for a long prompt,
    else None (the router's plan picks an expert). The adapter actor is started on the first long
    request. Prompts of at most ``above - 64`` characters are never tokenised here (a token is at
    least one character; the chat template adds fewer than 64 tokens)."""

    def __init__(self, above: int, model: str | None, candidates: Sequence[Candidate]) -> None:
        from actors.llm.loader import resolve_source

        self.above = check_above(above)
        self.model = model
        self.candidates = list(candidates)
        self.shape = model_shape_of(model)  # InputError now when the model has no registry shape
        self._source = resolve_source(model)
        self._tokenizer: Any = None
        self._replica: Any = None
        self._lock = threading.Lock()

    def tokens(self, request: dict[str, Any]) -> int:
        from actors.llm.generate import encode_prompt

        if self._tokenizer is None:
            from actors.llm.loader import ensure_cached
            from actors.llm.tokenizer import load_tokenizer

            self._tokenizer = load_tokenizer(ensure_cached(self._source))
        return len(encode_prompt(self._tokenizer, request["prompt"], chat=bool(request.get("chat", True))))

    def wants(self, request: dict[str, Any]) -> bool:
        """Whether ``request`` goes context-parallel: long, not ``off``, and the solver takes more
        than one device for it."""
        if check_mode(request.get("context_parallel")) == "off" or len(request["prompt"]) + 64 <= self.above:
            return False
        n = self.tokens(request)
        if n <= self.above:
            return False
        try:
            return len(placement(n, self.shape, self.candidates).devices) > 1
        except Exception:  # noqa: BLE001 - no feasible placement: one expert serves it as usual
            return False

    def replica(self) -> Any:
        from actors.routing import Replica

        with self._lock:
            if self._replica is None or not self._replica.alive:
                handle = spawn_server(self.model, self.candidates)
                self._replica = Replica(CP_REPLICA_ID, CP_REPLICA_ID, handle, 1)
            return self._replica

    def __call__(self, request: dict[str, Any]) -> Any:
        return self.replica() if self.wants(request) else None

    def close(self) -> None:
        import ray

        with self._lock:
            if self._replica is not None:
                try:
                    ray.get(self._replica.handle.stop.remote(), timeout=30)
                except Exception:  # already dead; killed below either way
                    log.debug("context-parallel adapter did not stop cleanly", exc_info=True)
                ray.kill(self._replica.handle)
                self._replica = None


__all__ = ["CP_MODES", "CP_REPLICA_ID", "Candidate", "ContextParallelRoute", "ContextParallelServer",
           "check_above", "check_mode", "placement", "plan_shards", "shard_device", "shard_model", "spawn_server"]
