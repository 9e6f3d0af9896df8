"""Routers: which expert should answer a query. One interface, four kinds, hyperparameters by CV.

A router is fitted on (features, per-expert 0/1 correctness) and predicts a queries x experts score
matrix; a query is routed to the expert with the largest score (ties: lower index;
:func:`edge.protocol.routed_correct`). Features are the query's category and, optionally, its
sentence embedding (:class:`Features`).

=========  ==========================================================  =======================
name       model                                                       tuned by k-fold CV
=========  ==========================================================  =======================
table      per-category accuracy of each expert, shrunk toward the      m (pseudo-questions)
           expert's global accuracy: (hits_c + m acc) / (n_c + m)
logreg     one L2-regularised logistic regression per expert,           C
           P(correct | one-hot category [, embedding]) (scikit-learn)
knn        mean correctness of the k nearest training questions         k
           (cosine on embeddings)
mlp        the MoE² gate of :mod:`edge.gating` (embedding -> MLP ->     epochs
           softmax, mixture loss)
=========  ==========================================================  =======================

Cross-validation (:func:`edge.protocol.kfold`, group-aware) runs on the rows given to ``fit``
only, scoring each candidate by routed accuracy on the held-out folds; the best candidate (ties:
the first in the grid, which lists the most regularised first) is refitted on all rows. A router
with fixed hyperparameters (:meth:`Router.fixed`) skips the search: used for out-of-fold
predictions, where the search already ran on the training split.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from cluster.exceptions import InputError
from edge.protocol import kfold, routed_correct

ROUTERS = ("table", "logreg", "knn", "mlp")
#: Routers that need sentence embeddings.
NEEDS_EMBEDDINGS = ("knn", "mlp")


@dataclass(frozen=True, slots=True)
class Features:
    """Per query: its category and, optionally, a unit-norm sentence embedding (rows aligned)."""

    categories: tuple[str, ...]
    embeddings: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.embeddings is not None and len(self.embeddings) != len(self.categories):
            raise InputError(f"embeddings: expected {len(self.categories)} rows, got {len(self.embeddings)}")

    def __len__(self) -> int:
        return len(self.categories)

    def rows(self, idx) -> Features:
        idx = np.asarray(idx, dtype=int)
        return Features(tuple(self.categories[i] for i in idx),
                        None if self.embeddings is None else self.embeddings[idx])


def _check_fit(x: Features, correct) -> np.ndarray:
    s = np.asarray(correct, dtype=float)
    if s.ndim != 2 or len(s) != len(x) or len(s) == 0:
        raise InputError(f"correct: expected a {len(x)} x experts matrix, got shape {s.shape}")
    if not np.all((s == 0) | (s == 1)):
        raise InputError("correct: expected 0/1 values")
    return s


class Router:
    """Base: ``fit(x, correct, groups=None)`` then ``predict(x)``; ``params`` holds the chosen
    hyperparameters, ``cv`` the mean held-out routed accuracy of every candidate."""

    name = "router"
    needs_embeddings = False
    grid: tuple = ()
    param = ""

    def __init__(self, value=None, *, folds: int = 5, seed: int = 0) -> None:
        self.value = value
        self.folds = folds
        self.seed = seed
        self.cv: dict = {}

    @property
    def params(self) -> dict:
        return {self.param: self.value}

    def fixed(self) -> Router:
        """A fresh copy with the chosen hyperparameter fixed (no search on the next fit)."""
        r = copy.copy(self)
        r.cv = dict(self.cv)
        return r

    def _check_x(self, x: Features) -> None:
        if self.needs_embeddings and x.embeddings is None:
            raise InputError(f"router: {self.name!r} needs sentence embeddings; none were given")

    def fit(self, x: Features, correct, groups=None) -> Router:
        self._check_x(x)
        s = _check_fit(x, correct)
        if self.value is None:
            self.value = self._search(x, s, groups)
        self._fit(x, s, self.value)
        return self

    def predict(self, x: Features) -> np.ndarray:
        self._check_x(x)
        return self._predict(x)

    # -- CV over the grid: one fit per fold and candidate unless a subclass shares work
    def _search(self, x: Features, s: np.ndarray, groups):
        folds = kfold(np.arange(len(x)), self.folds, groups=groups, seed=self.seed)
        scores = self._cv_scores(x, s, folds)
        self.cv = {v: float(a) for v, a in zip(self.grid, scores)}
        return self.grid[int(np.argmax(scores))]

    def _cv_scores(self, x: Features, s: np.ndarray, folds) -> np.ndarray:
        hits = np.zeros(len(self.grid))
        for fit_rows, held in folds:
            for j, v in enumerate(self.grid):
                r = copy.copy(self)
                r._fit(x.rows(fit_rows), s[fit_rows], v)
                hits[j] += routed_correct(s[held], r._predict(x.rows(held))).sum()
        return hits / len(x)

    def _fit(self, x: Features, s: np.ndarray, value) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _predict(self, x: Features) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


class CategoryTable(Router):
    """p[c, i] = (hits_{c,i} + m * acc_i) / (n_c + m); an unseen category gets acc_i."""

    name = "table"
    param = "shrinkage"
    grid = (300.0, 100.0, 30.0, 10.0, 3.0, 1.0, 0.0)

    def _fit(self, x: Features, s: np.ndarray, value) -> None:
        self.global_ = s.mean(axis=0)
        cats = np.asarray(x.categories)
        self.table_ = {}
        for c in sorted(set(x.categories)):
            rows = s[cats == c]
            self.table_[c] = (rows.sum(axis=0) + value * self.global_) / (len(rows) + value)

    def _predict(self, x: Features) -> np.ndarray:
        return np.asarray([self.table_.get(c, self.global_) for c in x.categories], dtype=float)


class LogisticRouter(Router):
    """One ``LogisticRegression(C)`` per expert on one-hot category [+ embedding]."""

    name = "logreg"
    param = "C"
    grid = (0.01, 0.1, 1.0)

    def __init__(self, value=None, *, use_embeddings: bool = True, folds: int = 5, seed: int = 0) -> None:
        super().__init__(value, folds=folds, seed=seed)
        self.use_embeddings = use_embeddings

    def _design(self, x: Features) -> np.ndarray:
        cats = np.asarray(x.categories)
        onehot = (cats[:, None] == np.asarray(self.cats_)[None, :]).astype(float)
        if self.use_embeddings and x.embeddings is not None:
            return np.hstack([onehot, np.asarray(x.embeddings, dtype=float)])
        return onehot

    def _fit(self, x: Features, s: np.ndarray, value) -> None:
        from sklearn.linear_model import LogisticRegression

        if self.use_embeddings and x.embeddings is None:
            raise InputError("router: 'logreg' with embeddings needs sentence embeddings; none were given")
        self.cats_ = sorted(set(x.categories))
        d = self._design(x)
        self.models_ = []
        for i in range(s.shape[1]):
            y = s[:, i]
            if y.min() == y.max():  # one class only: a constant predictor
                self.models_.append(float(y[0]))
                continue
            self.models_.append(LogisticRegression(C=value, max_iter=500).fit(d, y))

    def _predict(self, x: Features) -> np.ndarray:
        d = self._design(x)
        return np.column_stack([np.full(len(d), m) if isinstance(m, float) else m.predict_proba(d)[:, 1]
                                for m in self.models_])


class KNNRouter(Router):
    """p[q, i] = mean correctness of expert i on the k training questions nearest to q (cosine)."""

    name = "knn"
    param = "k"
    needs_embeddings = True
    grid = (200, 100, 50, 25, 10)

    def _fit(self, x: Features, s: np.ndarray, value) -> None:
        self.emb_ = np.asarray(x.embeddings, dtype=np.float32)
        self.s_ = s

    def _neighbours(self, x: Features, k: int) -> np.ndarray:
        k = min(k, len(self.emb_))
        out = np.empty((len(x), k), dtype=int)
        e = np.asarray(x.embeddings, dtype=np.float32)
        for b in range(0, len(e), 1024):  # bounded memory: 1024 x n_train similarities at a time
            sim = e[b:b + 1024] @ self.emb_.T
            top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
            order = np.argsort(-np.take_along_axis(sim, top, axis=1), axis=1, kind="stable")
            out[b:b + 1024] = np.take_along_axis(top, order, axis=1)
        return out

    def _predict(self, x: Features) -> np.ndarray:
        nb = self._neighbours(x, int(self.value))
        return self.s_[nb].mean(axis=1)

    def _cv_scores(self, x: Features, s: np.ndarray, folds) -> np.ndarray:
        hits = np.zeros(len(self.grid))
        kmax = max(self.grid)
        for fit_rows, held in folds:  # one neighbour search per fold serves every k
            r = copy.copy(self)
            r._fit(x.rows(fit_rows), s[fit_rows], kmax)
            nb = r._neighbours(x.rows(held), kmax)
            csum = np.cumsum(r.s_[nb], axis=1)  # held x kmax x experts
            for j, k in enumerate(self.grid):
                kk = min(k, nb.shape[1])
                hits[j] += routed_correct(s[held], csum[:, kk - 1] / kk).sum()
        return hits / len(x)


class MLPRouter(Router):
    """The MoE² gate (:func:`edge.gating.train_gate`) on embeddings; epochs by CV from one run per
    fold (the held-out routed accuracy is read at every grid epoch)."""

    name = "mlp"
    param = "epochs"
    needs_embeddings = True
    grid = (25, 50, 100, 200, 300)

    def _config(self, epochs: int):
        from edge.gating import GateConfig

        return GateConfig(epochs=int(epochs), seed=self.seed)

    def _fit(self, x: Features, s: np.ndarray, value) -> None:
        from edge.gating import train_gate

        self.gate_ = train_gate(x.embeddings, s, config=self._config(value))

    def _predict(self, x: Features) -> np.ndarray:
        return self.gate_.weights(x.embeddings)

    def _cv_scores(self, x: Features, s: np.ndarray, folds) -> np.ndarray:
        from edge.gating import train_gate

        hits = np.zeros(len(self.grid))
        at = {e: j for j, e in enumerate(self.grid)}
        for fit_rows, held in folds:
            xe = x.embeddings[held]

            def read(epoch: int, gate, held=held, xe=xe) -> None:
                if epoch in at:
                    hits[at[epoch]] += routed_correct(s[held], gate.weights(xe)).sum()

            train_gate(x.embeddings[fit_rows], s[fit_rows], config=self._config(max(self.grid)), callback=read)
        return hits / len(x)


def make_router(name: str, *, folds: int = 5, seed: int = 0, use_embeddings: bool = True) -> Router:
    """A fresh router by name (hyperparameters to be chosen by CV on ``fit``)."""
    if name == "table":
        return CategoryTable(folds=folds, seed=seed)
    if name == "logreg":
        return LogisticRouter(use_embeddings=use_embeddings, folds=folds, seed=seed)
    if name == "knn":
        return KNNRouter(folds=folds, seed=seed)
    if name == "mlp":
        return MLPRouter(folds=folds, seed=seed)
    from cluster.exceptions import did_you_mean

    raise InputError(f"router: unknown router {name!r}{did_you_mean(str(name), ROUTERS)}; allowed: {', '.join(ROUTERS)}")


def out_of_fold(router: Router, x: Features, correct, rows, *, folds: int = 5, groups=None, seed: int = 0) -> np.ndarray:
    """Predictions for ``rows``, each from a copy of ``router`` (hyperparameters fixed) fitted on the
    other folds of ``rows``: no row is scored by a model that saw it. ``len(rows) x experts``."""
    s = np.asarray(correct, dtype=float)
    rows = np.asarray(rows, dtype=int)
    out = np.zeros((len(rows), s.shape[1]))
    pos = {int(r): j for j, r in enumerate(rows)}
    for fit_rows, held in kfold(rows, folds, groups=groups, seed=seed):
        r = router.fixed()
        r.fit(x.rows(fit_rows), s[fit_rows])
        out[[pos[int(h)] for h in held]] = r.predict(x.rows(held))
    return out
