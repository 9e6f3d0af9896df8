"""Token generation with a KV cache: sampling, stop strings, streaming, measured TTFT / TPOT.

The loop (one request, batch 1):

1. prefill: one forward pass over the prompt ids ``x_1..x_p`` fills the KV cache and gives the
   logits of position ``p`` (only the last position's logits are computed). The model is either
   the native :class:`actors.llm.llama.Llama` (its ``decoder()``) or a transformers causal LM
   (a ``DynamicCache``, ``logits_to_keep=1``); both behind the same prefill / step interface;
2. decode step ``j``: sample ``y_j`` from the logits, feed it alone with the cache, get the next
   logits; stop at EOS, at ``max_tokens``, or when the text contains a stop string.

Sampling: ``temperature < 1e-5`` (``GREEDY_BELOW``) is greedy (``argmax``). Otherwise the logits
are divided by the temperature, softmaxed, and restricted to the nucleus: the smallest set of most probable tokens
whose probability sums to at least ``top_p`` (the top token is always kept); the draw uses a
``torch.Generator`` seeded with ``seed``, so a seeded request gives the same tokens on every replica
of the same model and device type (the router relies on this to re-dispatch without duplicates).

Streaming: the text is re-decoded from all generated ids each step and only the new suffix is
emitted, except a tail that could still become a stop string or is an incomplete UTF-8 sequence
(``\\ufffd``), which is held back until resolved. A stop string is cut from the text.

Timings are measured with ``time.perf_counter``: ``ttft_s`` from the start of the call to the
first token sampled (tokenisation + prefill), ``tpot_s`` the mean time per token after the first.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from cluster.exceptions import InputError

MAX_TOKENS_LIMIT = 4096
MAX_STOP_STRINGS = 8
MAX_STOP_LEN = 64


#: Temperatures below this are greedy (the threshold vLLM uses too).
GREEDY_BELOW = 1e-5


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to generate. ``seed`` None draws from torch's global generator (not reproducible)."""

    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or not 1 <= self.max_tokens <= MAX_TOKENS_LIMIT:
            raise InputError(f"max_tokens: {self.max_tokens!r} is out of range; allowed: 1..{MAX_TOKENS_LIMIT}")
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0 or t > 100:
            raise InputError(f"temperature: {t!r} is out of range; allowed: 0 (greedy) .. 100")
        p = self.top_p
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or not 0 < p <= 1:
            raise InputError(f"top_p: {p!r} is out of range; allowed: 0 < top_p <= 1")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63):
            raise InputError(f"seed: {self.seed!r}; allowed: an integer in 0..2**63-1, or none")
        if not isinstance(self.stop, tuple) or len(self.stop) > MAX_STOP_STRINGS:
            raise InputError(f"stop: expected at most {MAX_STOP_STRINGS} strings, got {self.stop!r:.80}")
        for s in self.stop:
            if not isinstance(s, str) or not s or len(s) > MAX_STOP_LEN:
                raise InputError(f"stop: each stop string must be 1..{MAX_STOP_LEN} characters; got {s!r:.80}")

    @property
    def greedy(self) -> bool:
        """Temperatures below :data:`GREEDY_BELOW` sample as greedy (dividing logits by a
        temperature that small overflows to inf and the softmax to NaN)."""
        return self.temperature < GREEDY_BELOW


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of streamed text; ``index`` counts chunks from 0."""

    index: int
    text: str


@dataclass(frozen=True, slots=True)
class Completion:
    """The end of a generation: the whole text and measured figures."""

    text: str
    finish_reason: str  # "stop" (EOS or stop string) | "length"
    prompt_tokens: int
    completion_tokens: int
    ttft_s: float
    tpot_s: float
    e2e_s: float
    extra: dict[str, Any] = field(default_factory=dict)


def next_token(logits: Any, params: SamplingParams, generator: Any) -> int:
    """Pick the next token id from 1-D ``logits`` (see the module docstring for the rule)."""
    import torch

    if params.greedy:
        return int(torch.argmax(logits).item())
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        cum = torch.cumsum(sorted_p, dim=-1)
        # keep token i when the mass before it is < top_p (so the top token always stays)
        keep = (cum - sorted_p) < params.top_p
        sorted_p = torch.where(keep, sorted_p, torch.zeros_like(sorted_p))
        pick = torch.multinomial(sorted_p / sorted_p.sum(), 1, generator=generator)
        return int(order[pick].item())
    return int(torch.multinomial(probs, 1, generator=generator).item())


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters of ``text`` might still start a stop string (or be partial)."""
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    if text.endswith("\ufffd"):
        hold = max(hold, len(text) - len(text.rstrip("\ufffd")))
    return hold


def _cache_keyword(model: Any) -> str:
    """``cache`` in transformers >= 5.2x, ``past_key_values`` before."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _new_cache(model: Any) -> Any:
    """An empty DynamicCache, filled in place by each forward pass."""
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:  # older transformers
        return DynamicCache()


class _HFDecoder:
    """A transformers causal LM behind the decoder interface of
    :class:`actors.llm.llama.LocalDecoder` (``prefill`` / ``step`` -> last logits), with a
    DynamicCache and ``logits_to_keep=1``."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.cache_kw = _cache_keyword(model)
        self.cache = _new_cache(model)

    def _run(self, ids: list[int], **kw: Any) -> Any:
        import torch

        inp = torch.tensor([ids], dtype=torch.long, device=self.device)
        return self.model(input_ids=inp, use_cache=True, **kw, **{self.cache_kw: self.cache}).logits[0, -1]

    def prefill(self, prompt: list[int]) -> Any:
        return self._run(list(prompt), logits_to_keep=1)

    def step(self, token: int) -> Any:
        return self._run([int(token)])


def _decoder(model: Any) -> Any:
    """A fresh single-request decoder of ``model``: its own ``decoder()`` (the plain-torch Llama of
    :mod:`actors.llm.llama`) or a transformers model wrapped in :class:`_HFDecoder`."""
    return model.decoder() if hasattr(model, "decoder") else _HFDecoder(model)


def eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """The token ids that end a generation: the tokenizer's EOS and the model's (its
    ``eos_token_ids``, or a transformers model's generation config)."""
    eos: set[int] = set()
    for e in (getattr(tokenizer, "eos_token_id", None), getattr(getattr(model, "generation_config", None), "eos_token_id", None),
              getattr(model, "eos_token_ids", None)):
        if isinstance(e, int):
            eos.add(e)
        elif isinstance(e, (list, tuple, set, frozenset)):
            eos.update(int(x) for x in e)
    return eos


def encode_prompt(tokenizer: Any, prompt: str, *, chat: bool = True) -> list[int]:
    """Token ids of ``prompt``: through the chat template (user turn + generation prompt) when the
    tokenizer has one and ``chat`` is true, else plain."""
    if chat and getattr(tokenizer, "chat_template", None):
        enc = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True, return_dict=True)
        return list(enc["input_ids"])
    return list(tokenizer(prompt)["input_ids"])


def stream_generate(model: Any, tokenizer: Any, prompt_ids: list[int], params: SamplingParams,
                    *, max_positions: int | None = None, t0: float | None = None) -> Iterator[Chunk | Completion]:
    """Yield :class:`Chunk` s of new text, then one :class:`Completion`.

    ``prompt_ids`` plus ``max_tokens`` must fit ``max_positions`` (InputError naming max_tokens).
    ``t0`` is when the request started (defaults to now) for TTFT.
    """
    import torch

    t0 = time.perf_counter() if t0 is None else t0
    if not prompt_ids:
        raise InputError("prompt: empty after tokenisation; send at least one character")
    if max_positions is not None and len(prompt_ids) + params.max_tokens > max_positions:
        raise InputError(
            f"max_tokens: prompt of {len(prompt_ids)} tokens + max_tokens={params.max_tokens} exceeds the model's "
            f"context of {max_positions} tokens; lower max_tokens or shorten the prompt"
        )
    gen = None
    if not params.greedy:
        gen = torch.Generator(device="cpu")
        gen.manual_seed(params.seed if params.seed is not None else int(torch.seed() % 2**63))
    eos = eos_ids(model, tokenizer)

    ids: list[int] = []
    emitted = 0
    n_chunks = 0
    finish = "length"
    text = ""
    t_first = None
    with torch.inference_mode():
        decoder = _decoder(model)
        logits = decoder.prefill(prompt_ids)
        for step in range(params.max_tokens):
            tok = next_token(logits if gen is None else logits.cpu(), params, gen)
            if t_first is None:
                t_first = time.perf_counter()
            if tok in eos:
                finish = "stop"
                break
            ids.append(tok)
            text = tokenizer.decode(ids, skip_special_tokens=True)
            cut = min((i for i in (text.find(s) for s in params.stop) if i >= 0), default=-1)
            if cut >= 0:
                text = text[:cut]
                finish = "stop"
                break
            safe = len(text) - _held_back(text, params.stop)
            if safe > emitted:
                yield Chunk(n_chunks, text[emitted:safe])
                n_chunks += 1
                emitted = safe
            if step + 1 == params.max_tokens:
                break
            logits = decoder.step(tok)
    text = text.rstrip("\ufffd") if finish == "length" else text
    if len(text) > emitted:
        yield Chunk(n_chunks, text[emitted:])
    t_end = time.perf_counter()
    t_first = t_first if t_first is not None else t_end
    n = len(ids)
    yield Completion(
        text=text,
        finish_reason=finish,
        prompt_tokens=len(prompt_ids),
        completion_tokens=n,
        ttft_s=t_first - t0,
        tpot_s=(t_end - t_first) / (n - 1) if n > 1 else 0.0,
        e2e_s=t_end - t0,
    )
