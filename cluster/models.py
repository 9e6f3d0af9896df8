"""The one model-shape registry: every transformer shape flotilla models, serves or selects.

:class:`ModelShape` is a decoder-only transformer as its Hugging Face ``config.json`` gives it.
:data:`MODELS` holds the shapes served and planned for (looked up by :func:`get_model`);
:data:`EXPERT_SHAPES` the edge-size LLM experts of the MMLU-Pro data (looked up by data column with
:func:`expert_model`); :func:`shape_from_config` reads a shape off a loaded model's config. Every
figure is a published ``config.json`` value (the source is named next to each); nothing here is
measured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from cluster.exceptions import InputError, did_you_mean
from solvers import validate

#: Bytes per element of each supported dtype. int8/int4 are weight-only quantisation formats.
DTYPE_BYTES: dict[str, float] = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5}
#: Dtypes that hold activations (and so the KV cache by default); int8/int4 weights run W8A16/W4A16.
FLOAT_DTYPES = ("fp32", "bf16", "fp16", "fp8")
#: Dtypes allowed for the KV cache (vLLM supports fp8 and int8 caches, not int4).
KV_DTYPES = ("fp32", "bf16", "fp16", "fp8", "int8")


def check_dtype(name: str, dtype: object, allowed: tuple[str, ...] = tuple(DTYPE_BYTES)) -> str:
    """``dtype`` when it is one of ``allowed``; InputError naming ``name`` (with a did-you-mean) if not."""
    if not isinstance(dtype, str) or dtype not in allowed:
        hint = did_you_mean(dtype, allowed) if isinstance(dtype, str) else ""
        raise InputError(f"{name}: unknown dtype {dtype!r}{hint}; allowed: {', '.join(allowed)}")
    return dtype


@dataclass(frozen=True, slots=True)
class ModelShape:
    """The shape of a decoder-only transformer, as its Hugging Face ``config.json`` gives it.

    ``n_params`` is the total parameter count (embeddings included, counted once when tied).
    ``dtype`` is the weight storage dtype; ``kv_dtype`` the KV-cache dtype, by default the
    activation dtype: ``dtype`` itself for float formats, fp16 for the weight-only int8/int4 ones.
    """

    name: str
    n_params: int
    n_layers: int
    hidden_size: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    dtype: str = "bf16"
    tie_word_embeddings: bool = False
    kv_dtype: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise InputError(f"ModelShape.name: expected a non-empty string, got {self.name!r}")
        for field in ("n_params", "n_layers", "hidden_size", "n_heads", "n_kv_heads", "head_dim",
                      "intermediate_size", "vocab_size"):
            validate.integer(f"ModelShape.{field}", getattr(self, field), minimum=1)
        if self.n_heads % self.n_kv_heads:
            raise InputError(
                f"ModelShape.n_kv_heads: {self.n_kv_heads} does not divide n_heads={self.n_heads}; "
                "grouped-query attention needs n_heads % n_kv_heads == 0"
            )
        check_dtype("ModelShape.dtype", self.dtype)
        if self.kv_dtype is not None:
            check_dtype("ModelShape.kv_dtype", self.kv_dtype, KV_DTYPES)
        if not isinstance(self.tie_word_embeddings, bool):
            raise InputError(f"ModelShape.tie_word_embeddings: expected a bool, got {self.tie_word_embeddings!r}")

    @property
    def bytes_per_param(self) -> float:
        """Bytes per stored weight (int4: 0.5; group scales are ignored)."""
        return DTYPE_BYTES[self.dtype]

    @property
    def compute_dtype(self) -> str:
        """The dtype the matmuls run in: ``dtype`` for float formats, fp16 for int8/int4 weights."""
        return self.dtype if self.dtype in FLOAT_DTYPES else "fp16"

    @property
    def cache_dtype(self) -> str:
        """The KV-cache dtype: ``kv_dtype`` when given, else :attr:`compute_dtype`."""
        return self.kv_dtype if self.kv_dtype is not None else self.compute_dtype

    @property
    def weight_bytes(self) -> int:
        """``W = ceil(N * bytes_per_param)``."""
        return math.ceil(self.n_params * self.bytes_per_param)

    @property
    def kv_bytes_per_token(self) -> int:
        """``2 * L * h_kv * d * s_kv``: one token's K and V in every layer."""
        return math.ceil(2 * self.n_layers * self.n_kv_heads * self.head_dim * DTYPE_BYTES[self.cache_dtype])

    @property
    def matmul_params(self) -> int:
        """Parameters a token multiplies through: ``N`` minus the input embedding when untied."""
        return self.n_params - (0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size)

    @property
    def flops_per_token(self) -> int:
        """``2 * N_mm``: one multiply-add per matmul parameter (≈ 2 N), attention excluded."""
        return 2 * self.matmul_params

    def attention_flops_per_token(self, context_len: int) -> int:
        """``4 * L * h * d * c``: one query against ``c`` keys (QK^T and PV) in every layer."""
        validate.integer("context_len", context_len, minimum=0)
        return 4 * self.n_layers * self.n_heads * self.head_dim * context_len

    def prefill_attention_flops(self, prompt_len: int) -> int:
        """Causal self-attention FLOPs of one prompt: ``4 L h d * p (p + 1) / 2``."""
        validate.integer("prompt_len", prompt_len, minimum=1)
        return 4 * self.n_layers * self.n_heads * self.head_dim * (prompt_len * (prompt_len + 1) // 2)


#: Published shapes (from each model's config.json on the Hugging Face Hub; n_params from the
#: safetensors index / model card, checked against the shape in tests/test_perf.py).
MODELS: dict[str, ModelShape] = {
    # meta-llama/Llama-2-7b-hf config.json: 32 layers, 4096 hidden, 32 heads (MHA), 11008 FFN.
    "llama-2-7b": ModelShape("llama-2-7b", 6_738_415_616, 32, 4096, 32, 32, 128, 11008, 32000),
    # meta-llama/Llama-2-13b-hf config.json: 40 layers, 5120 hidden, 40 heads (MHA), 13824 FFN.
    "llama-2-13b": ModelShape("llama-2-13b", 13_015_864_320, 40, 5120, 40, 40, 128, 13824, 32000),
    # meta-llama/Meta-Llama-3-8B config.json: 32 layers, 4096 hidden, 32 heads, 8 KV heads (GQA).
    "llama-3-8b": ModelShape("llama-3-8b", 8_030_261_248, 32, 4096, 32, 8, 128, 14336, 128256),
    # Qwen/Qwen2-1.5B config.json: 28 layers, 1536 hidden, 12 heads, 2 KV heads, tied embeddings.
    "qwen2-1.5b": ModelShape("qwen2-1.5b", 1_543_714_304, 28, 1536, 12, 2, 128, 8960, 151936,
                             tie_word_embeddings=True),
    # HuggingFaceTB/SmolLM2-135M config.json: 30 layers, 576 hidden, 9 heads, 3 KV heads, tied.
    "smollm2-135m": ModelShape("smollm2-135m", 134_515_008, 30, 576, 9, 3, 64, 1536, 49152,
                               tie_word_embeddings=True),
}


def get_model(name: str) -> ModelShape:
    """The shape in :data:`MODELS` called ``name`` (case-insensitive)."""
    key = name.strip().lower() if isinstance(name, str) else ""
    if key not in MODELS:
        hint = did_you_mean(key, MODELS) if key else ""
        raise InputError(f"model: unknown model {name!r}{hint}; known: {', '.join(sorted(MODELS))}")
    return MODELS[key]


# ------------------------------------------------------------------------------- edge experts
# One shape per model column of the llm-experts data (``mmlu_pro_correct_wide.csv``: the 14
# models of at most 9B parameters). The parameter count is the published total (safetensors
# metadata / model card) and agrees with the shape: ``N ≈ L (attn + 3 h_ffn d_model) +
# embeddings``. Fine-tunes share their base model's shape (Mistral-7B-Instruct-v0.2 =
# Mistral-7B-v0.2).
# microsoft/Phi-3-mini-4k-instruct config.json: 32 layers, 3072 hidden, 32 heads (MHA), 8192 FFN,
# vocab 32064, untied; 3.82B parameters (model card "3.8B").
_PHI3_MINI = dict(n_params=3_821_079_552, n_layers=32, hidden_size=3072, n_heads=32, n_kv_heads=32, head_dim=96,
                  intermediate_size=8192, vocab_size=32064)
# 01-ai/Yi-6B config.json: 32 layers, 4096 hidden, 32 heads, 4 KV heads (GQA), 11008 FFN, vocab 64000; 6.06B.
_YI_6B = dict(n_params=6_061_035_520, n_layers=32, hidden_size=4096, n_heads=32, n_kv_heads=4, head_dim=128,
              intermediate_size=11008, vocab_size=64000)
# meta-llama/Llama-2-7b-hf config.json: 32 layers, 4096 hidden, 32 heads (MHA), 11008 FFN, vocab 32000; 6.74B.
_LLAMA2_7B = dict(n_params=6_738_415_616, n_layers=32, hidden_size=4096, n_heads=32, n_kv_heads=32, head_dim=128,
                  intermediate_size=11008, vocab_size=32000)
# mistralai/Mistral-7B-v0.1 config.json (v0.2 and the Instruct versions: same shape): 32 layers, 4096
# hidden, 32 heads, 8 KV heads, 14336 FFN, vocab 32000; 7.24B.
_MISTRAL_7B = dict(n_params=7_241_732_096, n_layers=32, hidden_size=4096, n_heads=32, n_kv_heads=8, head_dim=128,
                   intermediate_size=14336, vocab_size=32000)
# mistralai/Mathstral-7B-v0.1 config.json: Mistral-7B shape with vocab 32768; 7.25B.
_MATHSTRAL_7B = dict(_MISTRAL_7B, n_params=7_248_023_552, vocab_size=32768)
# Qwen/Qwen1.5-7B-Chat config.json: 32 layers, 4096 hidden, 32 heads (MHA), 11008 FFN, vocab 151936,
# untied; 7.72B.
_QWEN15_7B = dict(n_params=7_721_324_544, n_layers=32, hidden_size=4096, n_heads=32, n_kv_heads=32, head_dim=128,
                  intermediate_size=11008, vocab_size=151936)
# meta-llama/Meta-Llama-3-8B and Llama-3.1-8B(-Instruct) config.json: 32 layers, 4096 hidden, 32 heads,
# 8 KV heads, 14336 FFN, vocab 128256; 8.03B.
_LLAMA3_8B = dict(n_params=8_030_261_248, n_layers=32, hidden_size=4096, n_heads=32, n_kv_heads=8, head_dim=128,
                  intermediate_size=14336, vocab_size=128256)
# google/gemma-7b config.json: 28 layers, 3072 hidden, 16 heads of dim 256 (MHA), 24576 FFN, vocab 256000,
# tied embeddings; 8.54B.
_GEMMA_7B = dict(n_params=8_537_680_896, n_layers=28, hidden_size=3072, n_heads=16, n_kv_heads=16, head_dim=256,
                 intermediate_size=24576, vocab_size=256000, tie_word_embeddings=True)

#: Data column (``mmlu_pro_models.csv:column``) -> shape parameters.
EXPERT_SHAPES: dict[str, dict] = {
    "Phi-3-mini-4k-instruct": _PHI3_MINI,
    "Yi-6B": _YI_6B,
    "Yi-6b-Chat": _YI_6B,
    "Llama-2-7b-hf": _LLAMA2_7B,
    "Mistral-7B-Instruct-v0.1": _MISTRAL_7B,
    "Mistral-7B-Instruct-v0.2": _MISTRAL_7B,
    "Mistral-7B-v0.1": _MISTRAL_7B,
    "Mistral-7B-v0.2-hf": _MISTRAL_7B,
    "mathstral-7B": _MATHSTRAL_7B,
    "Qwen1.5-7B-Chat": _QWEN15_7B,
    "Meta-Llama-3-8B": _LLAMA3_8B,
    "Meta-Llama-3_1-8B": _LLAMA3_8B,
    "Meta-Llama-3_1-8B-Instruct": _LLAMA3_8B,
    "gemma-7b": _GEMMA_7B,
}

#: The edge-size model columns, in the data's order (by parameter count).
EDGE_MODELS: tuple[str, ...] = tuple(EXPERT_SHAPES)


def expert_model(column: str, dtype: str = "bf16") -> ModelShape:
    """The :class:`ModelShape` of data column ``column`` with weights stored in ``dtype``."""
    if column not in EXPERT_SHAPES:
        raise InputError(f"model: unknown expert model {column!r}{did_you_mean(column, EXPERT_SHAPES)}; "
                         f"known: {', '.join(EXPERT_SHAPES)}")
    if dtype not in DTYPE_BYTES:
        raise InputError(f"dtype: unknown dtype {dtype!r}{did_you_mean(dtype, DTYPE_BYTES)}; "
                         f"allowed: {', '.join(DTYPE_BYTES)}")
    return ModelShape(name=column, dtype=dtype, **EXPERT_SHAPES[column])


def shape_from_config(name: str, cfg: Any, n_params: int, dtype: str = "bf16") -> ModelShape:
    """The :class:`ModelShape` of a loaded model from its (transformers) ``config``.

    ``n_params`` is the loaded model's parameter count (tied weights once); ``dtype`` the dtype the
    modeled device would serve it in, not the one it was loaded in.
    """
    n_heads = int(cfg.num_attention_heads)
    hidden = int(cfg.hidden_size)
    return ModelShape(
        name=name,
        n_params=int(n_params),
        n_layers=int(cfg.num_hidden_layers),
        hidden_size=hidden,
        n_heads=n_heads,
        n_kv_heads=int(getattr(cfg, "num_key_value_heads", None) or n_heads),
        head_dim=int(getattr(cfg, "head_dim", None) or hidden // n_heads),
        intermediate_size=int(getattr(cfg, "intermediate_size", 4 * hidden)),
        vocab_size=int(cfg.vocab_size),
        dtype=dtype,
        tie_word_embeddings=bool(getattr(cfg, "tie_word_embeddings", False)),
    )
