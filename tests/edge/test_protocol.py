"""edge.protocol: dedup by question text, disjoint group-aware splits, CV folds, bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pytest

from cluster.exceptions import InputError
from edge.dataset import FIXTURE_DIR, load_mmlu_pro
from edge.protocol import bootstrap_ci, dedupe, kfold, routed_correct, split_protocol, stem, text_groups


def test_dedupe_keeps_the_first_of_each_normalised_text() -> None:
    texts = ["What is 2+2?\nA. 3\nB. 4", "what is  2+2?\nA. 3\nB. 4", "What is 2+2?\nA. 4\nB. 5", "Other"]
    keep, dropped = dedupe(texts)
    assert keep.tolist() == [0, 2, 3] and dropped == 1
    # same stem, different options: kept, but one group
    g = text_groups([texts[i] for i in keep])
    assert g[0] == g[1] != g[2]
    assert stem(texts[2]) == "what is 2+2?"


def _synthetic(n=600, seed=0):
    rng = np.random.default_rng(seed)
    cats = [f"c{int(c)}" for c in rng.integers(0, 5, n)]
    stems = [f"q{int(s)}" for s in rng.integers(0, n // 2, n)]  # many repeated stems
    return cats, stems


def test_split_is_disjoint_covers_everything_and_never_splits_a_text_group() -> None:
    cats, texts = _synthetic()
    g = text_groups(texts)
    sp = split_protocol(cats, g, val_fraction=0.2, test_fraction=0.25, seed=3)
    parts = [set(sp.train.tolist()), set(sp.val.tolist()), set(sp.test.tolist())]
    assert sum(map(len, parts)) == len(cats)
    assert set().union(*parts) == set(range(len(cats)))
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    test_texts = {texts[i] for i in sp.test}
    assert not test_texts & {texts[i] for i in sp.dev}  # no test question text in train or val
    assert 0.2 < len(sp.test) / len(cats) < 0.3
    again = split_protocol(cats, g, val_fraction=0.2, test_fraction=0.25, seed=3)
    assert again.test.tolist() == sp.test.tolist()
    other = split_protocol(cats, g, val_fraction=0.2, test_fraction=0.25, seed=4)
    assert other.test.tolist() != sp.test.tolist()


def test_real_fixture_has_no_test_text_in_train() -> None:
    d = load_mmlu_pro(FIXTURE_DIR)
    keep, _ = dedupe(d.texts)
    texts = [d.texts[i] for i in keep]
    sp = split_protocol([d.categories[i] for i in keep], text_groups(texts), seed=0)
    assert not {stem(texts[i]) for i in sp.test} & {stem(texts[i]) for i in sp.train}


def test_kfold_holds_each_row_out_once_and_respects_groups() -> None:
    cats, texts = _synthetic(200)
    g = text_groups(texts)
    rows = np.arange(0, 200, 2)
    folds = kfold(rows, 5, groups=g, seed=1)
    held = np.concatenate([h for _, h in folds])
    assert sorted(held.tolist()) == rows.tolist()
    for fit, h in folds:
        assert not set(fit.tolist()) & set(h.tolist())
        assert set(fit.tolist()) | set(h.tolist()) == set(rows.tolist())
        assert not {g[i] for i in fit} & {g[i] for i in h}


def test_bootstrap_interval_is_seeded_and_brackets_the_mean() -> None:
    v = (np.random.default_rng(0).random(400) < 0.4).astype(float)
    lo, hi = bootstrap_ci(v, seed=1)
    assert lo < v.mean() < hi
    # about 2 * 1.96 * sqrt(p(1-p)/n) wide
    assert hi - lo == pytest.approx(2 * 1.96 * np.sqrt(0.4 * 0.6 / 400), rel=0.15)
    assert bootstrap_ci(v, seed=1) == (lo, hi)
    assert bootstrap_ci(np.ones(10)) == (1.0, 1.0)


def test_routed_correct_ties_go_to_the_lower_index() -> None:
    s = np.array([[1, 0, 1], [0, 1, 0]], dtype=float)
    p = np.array([[0.5, 0.5, 0.9], [0.5, 0.5, 0.1]])
    assert routed_correct(s, p).tolist() == [1.0, 0.0]
    assert routed_correct(s, p, subset=[0, 1]).tolist() == [1.0, 0.0]
    assert routed_correct(s, p, subset=[1]).tolist() == [0.0, 1.0]


@pytest.mark.parametrize(("call", "field"), [
    (lambda: split_protocol(["a"], [0], test_fraction=1.5), "test_fraction"),
    (lambda: split_protocol(["a"], [0], val_fraction=0.6, test_fraction=0.5), "val_fraction \\+ test_fraction"),
    (lambda: split_protocol(["a", "b"], [0], seed=0), "groups"),
    (lambda: kfold(np.arange(3), 5), "k: expected at most 3"),
    (lambda: bootstrap_ci([]), "values"),
])
def test_bad_input_names_the_field(call, field) -> None:
    with pytest.raises(InputError, match=field):
        call()
