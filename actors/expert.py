"""ExpertActor: a causal language model served on one (real or simulated) device.

Placement: the device's DeviceActor holds ``DEVICE_ACTOR_SHARE`` (0.5) of the ``device:<kind>``
unit; the ExpertActor asks for the rest but a context-parallel rank's ``CONTEXT_PARALLEL_SHARE`` (0.1),
``1 - DEVICE_ACTOR_SHARE - CONTEXT_PARALLEL_SHARE`` (and the same share of the GPU
when the device is real), so a device hosts exactly one expert next to its DeviceActor. On one
node (the embedded runtime) that pins the pair to the same device pool; on a multi-node cluster
pass ``node_id`` (the DeviceActor's node) so the expert is placed there with a hard
``NodeAffinitySchedulingStrategy``.

Memory: :meth:`ExpertActor.start` reserves the weights as loaded plus the KV cache for
``max_context`` tokens x ``max_concurrency`` requests in the DeviceActor's ledger; a model that
does not fit is refused with :class:`~cluster.exceptions.CapacityError` and nothing is reserved.

Weights: :func:`put_weights` puts a model's weights in Ray's object store once; experts spawned
with that :class:`SharedWeights` build their model from the object's numpy arrays, which every
worker on a node maps read-only from the same shared memory (zero-copy), so N experts on a node
hold one copy of the weights, not N, and none of them reads the weight file (on another node
Ray copies the object into that node's store once, and its experts share that copy). A real CUDA
device copies them to the GPU once, as bf16. Without shared weights each expert loads its own.

Engine: ``ExpertConfig.engine`` ``auto`` (the default) serves a Llama such as SmolLM2 with the
native engine (:mod:`actors.llm.llama`, :mod:`actors.llm.tokenizer`): the expert process imports
torch, ``tokenizers`` and jinja2 but never transformers, which makes it start sooner;
``transformers`` keeps the transformers model and tokenizer (``info()["engine"]`` says which).

Responses: :meth:`ExpertActor.generate_stream` yields ``{"type": "chunk", "text"}`` dicts and one
final ``{"type": "done", ...}`` dict carrying the text, usage, measured ``ttft_s`` / ``tpot_s`` /
``e2e_s`` on the hardware it ran on, and, for a simulated device, the device kind's *modeled*
``ttft_s`` / ``tpot_s`` / ``e2e_s`` / ``energy_j`` from :func:`cluster.perf.request_latency`
(under ``"modeled"``, labelled as such). Text produced since the last chunk rides with the final
dict as ``"tail"`` (one stream item less per request); the text streamed is the chunks and then
the tail.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cluster.exceptions import InputError

EXPERT_CPUS = 0.5  # Ray scheduling share; the device resource places the actor
MAX_PROMPT_CHARS = 32_768


@dataclass(frozen=True, slots=True)
class ExpertConfig:
    """How one ExpertActor serves. Each field is validated; errors name it."""

    #: Bundled model name, ``echo``, or a local Hugging Face model directory (None: the default).
    model: str | None = None
    #: Requests served at once (threads of the actor); also the KV-cache reservation multiplier.
    max_concurrency: int = 2
    #: Longest prompt + completion, in tokens, that a request may use (KV cache reserved for it).
    max_context: int = 2048
    #: Echo model only: seconds to sleep per emitted word (makes streams observable in tests).
    echo_delay_s: float = 0.0
    #: Chunks produced less than this many seconds after the last one sent are coalesced.
    stream_interval_s: float = 0.005
    #: What runs the model: ``native`` (plain-torch Llama, ``tokenizers`` + jinja2 chat template;
    #: the expert never imports transformers), ``transformers``, or ``auto`` (native when the model
    #: is a Llama it can serve, see :func:`actors.llm.loader.native_reason`; else transformers).
    engine: str = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.max_concurrency, bool) or not isinstance(self.max_concurrency, int) or not 1 <= self.max_concurrency <= 64:
            raise InputError(f"max_concurrency: {self.max_concurrency!r}; allowed: 1..64")
        if isinstance(self.max_context, bool) or not isinstance(self.max_context, int) or not 16 <= self.max_context <= 1 << 20:
            raise InputError(f"max_context: {self.max_context!r}; allowed: 16..1048576 tokens")
        if self.engine not in ("auto", "native", "transformers"):
            raise InputError(f"engine: {self.engine!r}; allowed: auto, native, transformers")
        for name in ("echo_delay_s", "stream_interval_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 10:
                raise InputError(f"{name}: {v!r}; allowed: 0..10 seconds")


@dataclass(frozen=True, slots=True)
class SharedWeights:
    """A model's weights in Ray's object store (:func:`put_weights`), for ExpertActors to share."""

    #: The model name as :func:`actors.llm.loader.resolve_source` gives it (checked by the expert).
    model: str
    #: The ObjectRef of ``{parameter name: numpy array}``.
    ref: Any
    #: Bytes of all arrays (one copy).
    nbytes: int


def put_weights(model: str | None) -> SharedWeights | None:
    """Read ``model``'s weights once (building its cache entry if absent) and put them in the
    object store; None for the echo model or weights numpy cannot hold (each expert then loads
    its own copy). The caller keeps the returned object (its ``ref``) alive while experts serve."""
    import ray

    from actors.llm.loader import ensure_cached, resolve_source, weight_arrays

    source = resolve_source(model)
    if source.kind == "echo":
        return None
    arrays = weight_arrays(ensure_cached(source))
    if arrays is None:
        return None
    nbytes = sum(int(a.nbytes) for a in arrays.values())
    return SharedWeights(source.name, ray.put(arrays), nbytes)


def request_params(request: dict[str, Any]) -> Any:
    """The :class:`~actors.llm.generate.SamplingParams` of a request dict (InputError naming the field)."""
    from actors.llm.generate import SamplingParams

    stop = request.get("stop") or ()
    if not isinstance(stop, (list, tuple)):
        raise InputError(f"stop: expected a list of strings, got {type(stop).__name__}")
    return SamplingParams(
        max_tokens=request.get("max_tokens", 64),
        temperature=request.get("temperature", 0.0),
        top_p=request.get("top_p", 1.0),
        seed=request.get("seed"),
        stop=tuple(stop),
    )


class ExpertActor:
    """One model on one device. Wrapped with ``ray.remote`` by :func:`spawn_expert`."""

    def __init__(self, config: ExpertConfig, device_id: str, kind: str, device_actor: Any = None, *, real_cuda: bool = False,
                 weights: SharedWeights | None = None) -> None:
        from cluster.probe import probed_catalog

        self.config = config
        self.weights = weights
        self.device_id = device_id
        self.spec = probed_catalog().get(kind)
        self.device_actor = device_actor
        self.real_cuda = real_cuda
        self.simulated = not real_cuda and self.spec.kind != "cpu"
        self.torch_device = "cuda:0" if real_cuda else "cpu"
        self._lm: Any = None
        self._shape: Any = None
        self._echo = False
        self._reservation: str | None = None
        self._reserved = 0
        self._lock = threading.Lock()
        self._active = 0
        self._served = 0
        self._started = False

    @property
    def label(self) -> str:
        return f"simulated {self.spec.kind} on cpu" if self.simulated else f"{self.spec.kind} on {self.torch_device}"

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> dict[str, Any]:
        """Load the model and reserve its memory on the device; returns :meth:`info`.

        CapacityError (nothing reserved, nothing kept loaded) when it does not fit.
        """
        import ray

        from actors.llm.loader import ECHO_MODEL, load, model_shape, resolve_source

        if self._started:
            return self.info()
        source = resolve_source(self.config.model)
        if source.kind == "echo":
            self._echo = True
            self.model_name = ECHO_MODEL
            nbytes = 0
        else:
            arrays = None
            if self.weights is not None:
                if self.weights.model != source.name:
                    raise InputError(f"weights: shared weights of {self.weights.model!r}, but this expert serves {source.name!r}")
                arrays = ray.get(self.weights.ref)  # zero-copy: read-only views of the node's shared memory
            lm = load(self.config.model, self.torch_device, arrays=arrays, engine=self.config.engine)
            # The KV cache is held in the dtype the weights were loaded in (fp32 on the CPU).
            loaded_dtype = {4: "fp32", 2: "bf16", 1: "int8"}[next(lm.model.parameters()).element_size()]
            kv_per_token = model_shape(lm, dtype=loaded_dtype).kv_bytes_per_token
            nbytes = lm.weight_bytes + kv_per_token * min(self.config.max_context, lm.max_positions) * self.config.max_concurrency
            self._lm = lm
            self._shape = model_shape(lm)
            self.model_name = lm.name
        if self.device_actor is not None:
            try:
                self._reservation = ray.get(self.device_actor.reserve.remote(nbytes, f"expert {self.model_name}"))
            except BaseException:
                self._lm = None
                raise
        self._reserved = nbytes
        self._started = True
        return self.info()

    def stop(self) -> int:
        """Release the memory reservation; returns the bytes released."""
        import ray

        freed = 0
        if self._reservation is not None and self.device_actor is not None:
            freed = ray.get(self.device_actor.release.remote(self._reservation))
            self._reservation = None
        return freed

    def info(self) -> dict[str, Any]:
        with self._lock:
            active, served = self._active, self._served
        return {
            "device_id": self.device_id,
            "kind": self.spec.kind,
            "label": self.label,
            "simulated": self.simulated,
            "model": getattr(self, "model_name", None),
            "engine": self._lm.engine if self._lm is not None else None,
            "reserved_bytes": self._reserved,
            "weights": "shared" if self.weights is not None and self._lm is not None and not self.real_cuda else "own",
            "max_concurrency": self.config.max_concurrency,
            "max_context": self.config.max_context,
            "active": active,
            "served": served,
        }

    def ping(self) -> bool:
        return True

    # ------------------------------------------------------------------ generation
    def generate_stream(self, request: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Stream one request: chunk dicts, then the final dict (see the module docstring)."""
        from actors.llm.generate import Chunk, encode_prompt, stream_generate

        t0 = time.perf_counter()
        if not self._started:
            raise InputError(f"expert on {self.device_id} is not started; call start() first")
        prompt = request.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError("prompt: must be a non-empty string")
        params = request_params(request)
        with self._lock:
            self._active += 1
        try:
            if self._echo:
                events = self._echo_events(prompt, params, t0)
            else:
                ids = encode_prompt(self._lm.tokenizer, prompt, chat=bool(request.get("chat", True)))
                limit = min(self.config.max_context, self._lm.max_positions)
                events = stream_generate(self._lm.model, self._lm.tokenizer, ids, params, max_positions=limit, t0=t0)
            # Chunks that arrive within ``stream_interval_s`` of the last one sent are coalesced
            # (the first goes at once): fewer stream items, the same text.
            buf, last, n = "", -1.0, 0
            for ev in events:
                if isinstance(ev, Chunk):
                    buf += ev.text
                    now = time.perf_counter()
                    if now - last >= self.config.stream_interval_s:
                        yield {"type": "chunk", "index": n, "text": buf}
                        buf, last, n = "", now, n + 1
                else:
                    final = self._final(ev)
                    if buf:  # the last chunk's text rides with the final dict: one stream item less
                        final["tail"] = buf
                    yield final
        finally:
            with self._lock:
                self._active -= 1
                self._served += 1

    def generate(self, request: dict[str, Any]) -> dict[str, Any]:
        """Generate without streaming; returns the final dict."""
        final: dict[str, Any] = {}
        for ev in self.generate_stream(request):
            if ev["type"] == "done":
                final = ev
        final.pop("tail", None)
        return final

    def _echo_events(self, prompt: str, params: Any, t0: float) -> Iterator[Any]:
        from actors.llm.echo import echo_stream

        for ev in echo_stream(prompt, params, t0=t0):
            if self.config.echo_delay_s:
                time.sleep(self.config.echo_delay_s)
            yield ev

    def _final(self, c: Any) -> dict[str, Any]:
        from cluster import perf

        modeled = None
        if self.simulated and self._shape is not None:
            cost = perf.request_latency(self._shape, self.spec, max(1, c.prompt_tokens), max(1, c.completion_tokens))
            modeled = {"ttft_s": cost.ttft_s, "tpot_s": cost.tpot_s, "e2e_s": cost.e2e_s, "energy_j": cost.energy_j,
                       "note": f"modeled for {self.spec.kind} by cluster/perf, not measured"}
        return {
            "type": "done",
            "text": c.text,
            "finish_reason": c.finish_reason,
            "prompt_tokens": c.prompt_tokens,
            "completion_tokens": c.completion_tokens,
            "ttft_s": c.ttft_s,
            "tpot_s": c.tpot_s,
            "e2e_s": c.e2e_s,
            "device_id": self.device_id,
            "device_kind": self.spec.kind,
            "label": self.label,
            "simulated": self.simulated,
            "model": self.model_name,
            "modeled": modeled,
        }


def spawn_expert(device_actor: Any, kind: str, device_id: str, config: ExpertConfig | None = None, *,
                 real_cuda: bool = False, node_id: str | None = None, name: str | None = None,
                 namespace: str | None = None, start: bool = True, weights: SharedWeights | None = None) -> Any:
    """Start an ExpertActor next to ``device_actor`` (see the module docstring for placement),
    building its model from ``weights`` (:func:`put_weights`) when given.

    With ``start`` (the default) the model is loaded and its memory reserved before returning;
    a CapacityError or InputError from that is re-raised and the actor is killed.
    """
    import ray

    from actors.device import CONTEXT_PARALLEL_SHARE, DEVICE_ACTOR_SHARE, placement_options

    config = config or ExpertConfig()
    options = placement_options(kind, 1 - DEVICE_ACTOR_SHARE - CONTEXT_PARALLEL_SHARE, cpus=EXPERT_CPUS, real_cuda=real_cuda, node_id=node_id,
                                name=name, namespace=namespace)
    options.update(max_concurrency=config.max_concurrency + 2, max_restarts=0)  # + info/ping while serving
    actor = ray.remote(ExpertActor).options(**options).remote(config, device_id, kind, device_actor, real_cuda=real_cuda,
                                                                       weights=weights)
    if start:
        try:
            ray.get(actor.start.remote())
        except BaseException:
            ray.kill(actor)
            raise
    return actor
