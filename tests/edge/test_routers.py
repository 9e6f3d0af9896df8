"""edge.routers: the category table against a brute-force count, every router beats random routing
on a planted rule, CV stays inside the rows it is given, out-of-fold predictions never see their row."""

from __future__ import annotations

import numpy as np
import pytest

from cluster.exceptions import InputError
from edge.protocol import routed_correct
from edge.routers import (
    CategoryTable,
    Features,
    KNNRouter,
    LogisticRouter,
    MLPRouter,
    make_router,
    out_of_fold,
)


def test_category_table_equals_a_brute_force_count() -> None:
    cats = ("a", "a", "a", "b", "b", "c")
    s = np.array([[1, 0], [1, 1], [0, 0], [0, 1], [0, 1], [1, 1]], dtype=float)
    x = Features(cats)
    for m in (0.0, 2.0, 10.0):
        r = CategoryTable(m).fit(x, s)
        p = r.predict(Features(("a", "b", "c", "unseen")))
        for i in range(2):
            g = sum(s[q][i] for q in range(6)) / 6  # global accuracy of expert i
            for row, c in enumerate(("a", "b", "c")):
                hits = sum(s[q][i] for q in range(6) if cats[q] == c)
                n = sum(1 for q in range(6) if cats[q] == c)
                assert p[row, i] == pytest.approx((hits + m * g) / (n + m))
            assert p[3, i] == pytest.approx(g)


def planted(n=900, n_cats=4, n_exp=4, dim=16, seed=0):
    """Expert (category mod n_exp) is right 85 % of the time on its category, the others 35 %;
    embeddings are noisy copies of a per-category centre."""
    rng = np.random.default_rng(seed)
    c = rng.integers(0, n_cats, n)
    centres = rng.normal(size=(n_cats, dim))
    emb = centres[c] + 0.3 * rng.normal(size=(n, dim))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    p = np.full((n, n_exp), 0.35)
    p[np.arange(n), c % n_exp] = 0.85
    s = (rng.random((n, n_exp)) < p).astype(float)
    return Features(tuple(f"cat{k}" for k in c), emb.astype(np.float32)), s


@pytest.mark.parametrize("router", [CategoryTable(), LogisticRouter(folds=3), KNNRouter(folds=3),
                                    MLPRouter(folds=3)], ids=lambda r: r.name)
def test_every_router_beats_random_routing_on_a_planted_rule(router) -> None:
    if isinstance(router, MLPRouter):
        router.grid = (25, 100)  # keep the test fast
    x, s = planted()
    tr, te = np.arange(0, 600), np.arange(600, 900)
    router.fit(x.rows(tr), s[tr])
    acc = routed_correct(s[te], router.predict(x.rows(te))).mean()
    rng = np.random.default_rng(1)
    random_acc = np.mean([s[te][np.arange(len(te)), rng.integers(0, 4, len(te))].mean() for _ in range(20)])
    assert random_acc < 0.55
    assert acc > 0.75, (router.name, router.params, acc)
    assert router.value in router.grid and set(router.cv) == set(router.grid)


def test_cv_reads_only_the_rows_given_to_fit() -> None:
    x, s = planted(seed=2)
    tr = np.arange(0, 600)
    a = CategoryTable(folds=5).fit(x.rows(tr), s[tr])
    poisoned = s.copy()
    poisoned[600:] = 1 - poisoned[600:]  # flip every label outside the training rows
    b = CategoryTable(folds=5).fit(x.rows(tr), poisoned[tr])
    assert a.cv == b.cv and a.value == b.value


def test_out_of_fold_prediction_of_a_row_comes_from_the_other_folds() -> None:
    from edge.protocol import kfold

    x, s = planted(n=200, seed=3)
    rows = np.arange(200)
    r = CategoryTable(0.0)
    oof = out_of_fold(r, x, s, rows, folds=4, seed=5)
    for fit, held in kfold(rows, 4, seed=5):
        ref = CategoryTable(0.0).fit(x.rows(fit), s[fit]).predict(x.rows(held))
        assert np.allclose(oof[held], ref)


def test_errors_name_the_field() -> None:
    x, s = planted(n=50)
    with pytest.raises(InputError, match="needs sentence embeddings"):
        KNNRouter().fit(Features(x.categories), s)
    with pytest.raises(InputError, match="correct"):
        CategoryTable().fit(x, s[:10])
    with pytest.raises(InputError, match="did you mean 'knn'"):
        make_router("kn")
