"""edge.gating on the committed MMLU-Pro fixture: the mixture loss, training, top-k restriction,
the on-disk embedding cache, and the gate restricted to S against a gate retrained on S."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cluster.exceptions import InputError
from edge.dataset import FIXTURE_DIR, load_mmlu_pro
from edge.gating import Embedder, GateConfig, mixture_loss, restrict, routed_score, train_gate
from solvers.selection import gate_objective, mask_of

EMB_FILE = FIXTURE_DIR.parent / "mmlu_pro_fixture_embeddings.npy"
FAST = GateConfig(epochs=120, lr=5e-3, hidden=64)


@pytest.fixture(scope="module")
def fixture():
    data = load_mmlu_pro(FIXTURE_DIR)
    emb = np.load(EMB_FILE).astype(np.float32)
    assert emb.shape == (data.n_questions, 384)
    return data, emb


def test_mixture_loss_matches_formula() -> None:
    g = torch.tensor([[0.25, 0.75], [0.5, 0.5]])
    p = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    eps = 1e-3
    want = -(np.log(0.25 * (1 - eps) + 0.75 * eps) + np.log(eps)) / 2
    assert float(mixture_loss(g, p, eps)) == pytest.approx(want, rel=1e-6)


def test_gate_learns_routing_beyond_the_best_single_expert_on_train(fixture) -> None:
    data, emb = fixture
    train_rows = np.arange(0, data.n_questions, 2)
    gate = train_gate(emb[train_rows], data.correct[train_rows], data.models, FAST)
    assert gate.losses[-1] < gate.losses[0] * 0.8
    w = gate.weights(emb[train_rows])
    assert w.shape == (len(train_rows), len(data.models)) and np.allclose(w.sum(axis=1), 1.0)
    all_experts = list(range(len(data.models)))
    best_single = data.correct[train_rows].mean(axis=0).max()
    assert routed_score(w, data.correct[train_rows], all_experts) > best_single + 0.05


def test_restrict_keeps_top_k_inside_s_and_renormalises() -> None:
    w = np.array([[0.1, 0.4, 0.2, 0.3], [0.25, 0.25, 0.25, 0.25]])
    r = restrict(w, [0, 2, 3], top_k=2)
    assert np.allclose(r[0], [0.0, 0.0, 0.2 / 0.5, 0.3 / 0.5])
    assert np.allclose(r[1], [0.5, 0.0, 0.5, 0.0])  # ties: lower index
    assert np.allclose(restrict(w, [1], top_k=3)[:, 1], 1.0)
    assert not restrict(w, [], top_k=1).any()
    with pytest.raises(InputError, match="subset"):
        restrict(w, [7])


def test_routed_score_agrees_with_the_solver_gate_objective(fixture) -> None:
    data, emb = fixture
    rng = np.random.default_rng(0)
    w = rng.dirichlet(np.ones(len(data.models)), size=data.n_questions)
    for k in (1, 2, 3):
        f = gate_objective(data.correct, w, top_k=k)
        for subset in ([0], [1, 5, 12], list(range(14))):
            assert routed_score(w, data.correct, subset, k) == pytest.approx(f(mask_of(subset)), abs=1e-12)


def test_restricted_gate_against_gate_retrained_on_s(fixture) -> None:
    """MoE²'s optimality-preserving property, measured: the gap on the held-out half is reported
    and must stay small; both must beat the uniform-random router over S."""
    data, emb = fixture
    tr, te = np.arange(0, data.n_questions, 2), np.arange(1, data.n_questions, 2)
    full = train_gate(emb[tr], data.correct[tr], data.models, FAST)
    S = [0, 8, 12, 13]
    sub = train_gate(emb[tr], data.correct[tr][:, S], [data.models[i] for i in S], FAST)
    restricted = routed_score(full.weights(emb[te]), data.correct[te], S)
    retrained = routed_score(sub.weights(emb[te]), data.correct[te][:, S], list(range(len(S))))
    uniform = data.correct[te][:, S].mean()
    print(f"held-out routed accuracy: restricted {restricted:.3f}, retrained {retrained:.3f}, uniform {uniform:.3f}")
    assert abs(restricted - retrained) < 0.08
    assert min(restricted, retrained) > uniform - 0.02


def test_embedder_cache_and_committed_embeddings(tmp_path: Path, fixture) -> None:
    data, emb = fixture
    texts = list(data.texts[:3])
    e = Embedder(cache_dir=tmp_path)
    a = e.embed(texts)
    assert e.misses == 1 and a.shape == (3, 384)
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert np.allclose(a, emb[:3], atol=2e-3)  # the committed fixture embeddings are this model's
    assert len(list(tmp_path.glob("*.npy"))) == 1
    e2 = Embedder(cache_dir=tmp_path)
    b = e2.embed(texts)
    assert e2.misses == 0 and np.array_equal(a, b)  # served from the disk cache, no model load
    assert e2._model is None


def test_train_gate_rejects_bad_input() -> None:
    with pytest.raises(InputError, match="same Q"):
        train_gate(np.zeros((3, 4)), np.zeros((2, 2)))
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        train_gate(np.zeros((2, 4)), np.full((2, 2), 2.0))
    with pytest.raises(InputError, match="GateConfig.epochs"):
        GateConfig(epochs=0)
