"""The Llama forward in plain torch, with the attention pluggable (gpt-fast style).

SmolLM2-135M-Instruct is a Llama: 30 decoder layers, hidden size 576, 9 query heads over 3
key/value heads (grouped-query attention, head dim 64), SwiGLU MLP of width 1536, RMSNorm
(eps 1e-5), rotary embeddings with theta 1e5 (HF "default" rope: the two halves of a head are
rotated as a pair), and the output projection tied to the token embeddings. One layer::

    h   = x + o_proj(attn(rope(q_proj(norm1(x))), rope(k_proj(norm1(x))), v_proj(norm1(x))))
    out = h + down_proj(silu(gate_proj(norm2(h))) * up_proj(norm2(h)))

``rms_norm(x) = w * x / sqrt(mean(x^2) + eps)`` (computed in fp32), ``rope(x)_p = x cos(p f) +
rotate_half(x) sin(p f)`` with ``f_i = theta^(-2i/D)`` and ``rotate_half([a, b]) = [-b, a]``.

The attention is a callable ``attn(layer, q, k, v, positions) -> out`` with ``q`` [B, H, L, D],
``k``/``v`` [B, Hkv, L, D] (already rotated), ``positions`` the L absolute positions of these rows
(a LongTensor; any order the callable understands) and ``out`` [B, H, L, D]. It owns the KV cache:
:class:`LocalAttention` keeps the whole cache in this process (single-device generation);
:mod:`actors.context_parallel` keeps a shard of it per rank. Weights load from the safetensors the
loader (:mod:`actors.llm.loader`) writes, so no transformers import is needed here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from attention.blockwise import blockwise_attention
from cluster.exceptions import InputError

AttentionFn = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True, slots=True)
class LlamaConfig:
    """The shape of a Llama model (the fields of a Hugging Face ``config.json`` it needs)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float
    rms_eps: float
    tie_embeddings: bool
    max_positions: int

    @classmethod
    def from_hf(cls, cfg: dict) -> "LlamaConfig":
        """From a parsed ``config.json``; InputError names a missing field or a non-Llama model."""
        if cfg.get("model_type") not in ("llama", None):
            raise InputError(f"config.model_type: expected 'llama', got {cfg.get('model_type')!r}")
        rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
        if rope.get("rope_type", "default") != "default":
            raise InputError(f"config.rope_type: expected 'default', got {rope.get('rope_type')!r}")
        theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
        try:
            heads = int(cfg["num_attention_heads"])
            hidden = int(cfg["hidden_size"])
            return cls(
                vocab_size=int(cfg["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(cfg["intermediate_size"]),
                num_layers=int(cfg["num_hidden_layers"]),
                num_heads=heads,
                num_kv_heads=int(cfg.get("num_key_value_heads", heads)),
                head_dim=int(cfg.get("head_dim") or hidden // heads),
                rope_theta=float(theta),
                rms_eps=float(cfg.get("rms_norm_eps", 1e-6)),
                tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                max_positions=int(cfg.get("max_position_embeddings", 2048)),
            )
        except KeyError as e:
            raise InputError(f"config.{e.args[0]}: expected a value, got nothing") from None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rope_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [L, D] for ``positions`` [L] (fp32 angles, as HF computes them)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    freqs = positions.to(torch.float32)[:, None] * inv_freq.to(positions.device)[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, heads, L, D] by the angles of its rows (cos/sin [L, D])."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class Block(nn.Module):
    """One decoder layer (attention + SwiGLU MLP, each with a pre-norm and a residual)."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        h, d = cfg.hidden_size, cfg.head_dim
        self.cfg = cfg
        self.input_layernorm = RMSNorm(h, cfg.rms_eps)
        self.post_attention_layernorm = RMSNorm(h, cfg.rms_eps)
        self.q_proj = nn.Linear(h, cfg.num_heads * d, bias=False)
        self.k_proj = nn.Linear(h, cfg.num_kv_heads * d, bias=False)
        self.v_proj = nn.Linear(h, cfg.num_kv_heads * d, bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * d, h, bias=False)
        self.gate_proj = nn.Linear(h, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(h, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, h, bias=False)

    def forward(self, layer: int, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                positions: torch.Tensor, attn: AttentionFn) -> torch.Tensor:
        b, n, _ = x.shape
        c = self.cfg
        y = self.input_layernorm(x)
        q = self.q_proj(y).view(b, n, c.num_heads, c.head_dim).transpose(1, 2)
        k = self.k_proj(y).view(b, n, c.num_kv_heads, c.head_dim).transpose(1, 2)
        v = self.v_proj(y).view(b, n, c.num_kv_heads, c.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        o = attn(layer, q, k, v, positions).to(x.dtype)
        x = x + self.o_proj(o.transpose(1, 2).reshape(b, n, c.num_heads * c.head_dim))
        y = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(y)) * self.up_proj(y))


class Llama(nn.Module):
    """Token embeddings, the decoder layers, the final norm and the (possibly tied) output head."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_eps)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def hidden(self, tokens: torch.Tensor, positions: torch.Tensor, attn: AttentionFn) -> torch.Tensor:
        """Final-normed hidden states [B, L, hidden] of ``tokens`` [B, L] at ``positions`` [L]."""
        if tokens.dim() != 2 or positions.dim() != 1 or positions.shape[0] != tokens.shape[1]:
            raise InputError(
                f"tokens/positions: expected [B, L] and [L], got {tuple(tokens.shape)} and "
                f"{tuple(positions.shape)}"
            )
        x = self.embed_tokens(tokens)
        cos, sin = rope_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta, x.dtype)
        for i, layer in enumerate(self.layers):
            x = layer(i, x, cos, sin, positions, attn)
        return self.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        w = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return hidden @ w.T

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, attn: AttentionFn) -> torch.Tensor:
        return self.logits(self.hidden(tokens, positions, attn))

    def decoder(self) -> "LocalDecoder":
        """A fresh single-request decoder (its own KV cache) over this model."""
        return LocalDecoder(self)


def hf_to_local(name: str) -> str:
    """A Hugging Face Llama weight name as this module's parameter name."""
    name = name.removeprefix("model.")
    for part in ("self_attn.", "mlp."):
        name = name.replace(part, "")
    return name


def load_llama(path: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu",
               arrays: dict | None = None) -> Llama:
    """A :class:`Llama` with the weights of the Hugging Face model directory ``path``
    (``config.json`` + ``model.safetensors``, as :func:`actors.llm.loader.ensure_cached` writes).

    With ``arrays`` (``{Hugging Face weight name: numpy array}``, e.g. read zero-copy from Ray's
    object store) the parameters view those arrays (``torch.from_numpy``, no copy) instead of
    reading the file; ``.to(device, dtype)`` copies them only when the device or dtype differ.
    """
    from safetensors.torch import load_file

    path = Path(path)
    cfg = LlamaConfig.from_hf(json.loads((path / "config.json").read_text()))
    if arrays is not None:
        import warnings

        with warnings.catch_warnings():  # "the given NumPy array is not writable": shared, by design
            warnings.simplefilter("ignore", UserWarning)
            state = {hf_to_local(k): torch.from_numpy(v) for k, v in arrays.items()}
    else:
        state = {hf_to_local(k): v for k, v in load_file(str(path / "model.safetensors")).items()}
    if cfg.tie_embeddings:
        state.pop("lm_head.weight", None)
    with torch.device("meta"):
        model = Llama(cfg)
    missing = set(model.state_dict()) - set(state)
    extra = set(state) - set(model.state_dict())
    if missing or extra:
        raise InputError(
            f"model.safetensors: expected the weights of {cfg.num_layers} Llama layers, missing "
            f"{sorted(missing)[:3]}, unexpected {sorted(extra)[:3]}"
        )
    model.load_state_dict(state, assign=True)
    return model.to(device=device, dtype=dtype).eval()


def load_bundled(model: str | None = None) -> tuple[Llama, Path]:
    """The Llama of a loader model name (default SmolLM2-135M) and its cache directory."""
    from actors.llm.loader import ensure_cached, resolve_source

    path = ensure_cached(resolve_source(model))
    return load_llama(path), path


class LocalAttention:
    """Causal attention with the whole KV cache in this process (positions are contiguous and
    appended in order: a prompt, then one token at a time). ``kernel`` as in
    :func:`attention.blockwise.blockwise_attention`."""

    def __init__(self, num_layers: int, kernel: str = "auto") -> None:
        self.kernel = kernel
        self.k: list[torch.Tensor | None] = [None] * num_layers
        self.v: list[torch.Tensor | None] = [None] * num_layers

    @property
    def length(self) -> int:
        return 0 if self.k[0] is None else int(self.k[0].shape[2])

    def __call__(self, layer: int, q, k, v, positions) -> torch.Tensor:
        start = 0 if self.k[layer] is None else int(self.k[layer].shape[2])
        if int(positions[0]) != start or int(positions[-1]) != start + len(positions) - 1:
            raise InputError(f"positions: expected {start}..{start + len(positions) - 1} (contiguous)")
        if self.k[layer] is None:
            self.k[layer], self.v[layer] = k, v
        else:
            self.k[layer] = torch.cat([self.k[layer], k], dim=2)
            self.v[layer] = torch.cat([self.v[layer], v], dim=2)
        out, _ = blockwise_attention(q, self.k[layer], self.v[layer], causal=True,
                                     q_offset=start, k_offset=0, kernel=self.kernel)
        return out


@torch.inference_mode()
def greedy_generate(model: Llama, prompt: Sequence[int], max_new_tokens: int,
                    attn: LocalAttention | None = None) -> tuple[list[int], list[torch.Tensor]]:
    """Greedy decoding on one process: the new tokens and the logits [vocab] that chose each."""
    if max_new_tokens < 0:
        raise InputError(f"max_new_tokens: expected >= 0, got {max_new_tokens}")
    if not prompt:
        raise InputError("prompt: expected at least one token, got none")
    attn = attn or LocalAttention(model.cfg.num_layers)
    ids = torch.tensor([list(prompt)], dtype=torch.long)
    pos = torch.arange(len(prompt))
    hidden = model.hidden(ids, pos, attn)
    logits = model.logits(hidden[0, -1])
    tokens, all_logits = [], []
    for step in range(max_new_tokens):
        tok = int(torch.argmax(logits))
        tokens.append(tok)
        all_logits.append(logits)
        if step == max_new_tokens - 1:
            break
        p = len(prompt) + step
        hidden = model.hidden(torch.tensor([[tok]]), torch.tensor([p]), attn)
        logits = model.logits(hidden[0, -1])
    return tokens, all_logits


class LocalDecoder:
    """One request's decoding on one process (the generation loop's interface): :meth:`prefill`
    the prompt, then :meth:`step` one token at a time; each returns the logits [vocab] of the
    last position. The KV cache is a :class:`LocalAttention`."""

    def __init__(self, model: Llama) -> None:
        self.model = model
        self.attn = LocalAttention(model.cfg.num_layers)
        self.device = model.embed_tokens.weight.device
        self.length = 0

    def _last_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[1]
        positions = torch.arange(self.length, self.length + n, device=self.device)
        hidden = self.model.hidden(tokens, positions, self.attn)
        self.length += n
        return self.model.logits(hidden[0, -1])

    def prefill(self, prompt: Sequence[int]) -> torch.Tensor:
        if not prompt:
            raise InputError("prompt: expected at least one token, got none")
        return self._last_logits(torch.tensor([list(prompt)], dtype=torch.long, device=self.device))

    def step(self, token: int) -> torch.Tensor:
        return self._last_logits(torch.tensor([[int(token)]], dtype=torch.long, device=self.device))


def check_positions(total: int, max_positions: int) -> None:
    if total > max_positions:
        raise InputError(f"prompt: {total} tokens exceed the model's {max_positions} positions")


__all__ = [
    "AttentionFn", "Llama", "LlamaConfig", "LocalAttention", "LocalDecoder", "greedy_generate", "load_bundled",
    "load_llama",
]
