"""Shapes of the edge-size LLM experts whose MMLU-Pro answers are in the llm-experts data.

One :class:`cluster.perf.ModelShape` per model column of ``mmlu_pro_correct_wide.csv`` (the 14
models of at most 9B parameters). Figures are the published ``config.json`` values on the Hugging
Face Hub (num_hidden_layers, hidden_size, num_attention_heads, num_key_value_heads, head_dim
(hidden_size / heads unless given), intermediate_size, vocab_size, tie_word_embeddings); the
parameter count is the published total (safetensors metadata / model card), and it agrees with
the shape: ``N ≈ L (attn + 3 h_ffn d_model) + embeddings``. Fine-tunes share their base model's
shape (e.g. Mistral-7B-Instruct-v0.2 = Mistral-7B-v0.2). Nothing here is measured.
"""

from __future__ import annotations

from cluster.exceptions import InputError, did_you_mean
from cluster.perf import DTYPE_BYTES, ModelShape

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
_SHAPES: dict[str, dict] = {
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
EDGE_MODELS: tuple[str, ...] = tuple(_SHAPES)


def expert_model(column: str, dtype: str = "bf16") -> ModelShape:
    """The :class:`ModelShape` of data column ``column`` with weights stored in ``dtype``."""
    if column not in _SHAPES:
        raise InputError(f"model: unknown expert model {column!r}{did_you_mean(column, _SHAPES)}; "
                         f"known: {', '.join(_SHAPES)}")
    if dtype not in DTYPE_BYTES:
        raise InputError(f"dtype: unknown dtype {dtype!r}{did_you_mean(dtype, DTYPE_BYTES)}; "
                         f"allowed: {', '.join(DTYPE_BYTES)}")
    return ModelShape(name=column, dtype=dtype, **_SHAPES[column])
