"""The evaluation protocol for routers and expert subsets: dedup, a seeded split, CV folds, bootstrap.

Rules (docs/edge-experts.md, "Protocol"):

1. **Deduplicate by question text.** Questions are grouped by their normalised stem (the question
   without its options, lower-cased, whitespace collapsed). Rows with the same full text (stem and
   options) are duplicates: only the first is kept. Rows that share a stem but differ in options are
   kept, but a group never straddles two splits, so no test question text appears in train or
   validation (:func:`text_groups`, :func:`dedupe`).
2. **Split by a seed** into train / validation / test, stratified by category, whole groups at a
   time (:func:`split_protocol`).
3. **Hyperparameters** (epochs, shrinkage, C, k) are chosen by k-fold cross-validation on the
   training rows only (:func:`kfold`, group-aware); the router is chosen by k-fold CV on
   train + validation with the one-standard-error rule (:func:`edge.evaluate.one_se_choice`);
   subsets are scored with out-of-fold predictions on train + validation. The test rows are read
   once, at the end, to report.
4. **Test figures** carry a bootstrap 95 % interval (:func:`bootstrap_ci`, percentile method over
   questions, seeded).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from cluster.exceptions import InputError
from solvers.validate import integer, real

_WS = re.compile(r"\s+")


def normalise(text: str) -> str:
    """Lower-case, whitespace collapsed, stripped."""
    return _WS.sub(" ", str(text)).strip().lower()


def stem(text: str) -> str:
    """The question without its lettered options (``edge.dataset.question_text`` puts them after
    ``"\\nA. "``), normalised."""
    return normalise(str(text).split("\nA. ", 1)[0])


def dedupe(texts: tuple[str, ...] | list[str]) -> tuple[np.ndarray, int]:
    """Rows to keep (first occurrence of every normalised full text, ascending) and how many dropped."""
    seen: set[str] = set()
    keep = []
    for i, t in enumerate(texts):
        k = normalise(t)
        if k not in seen:
            seen.add(k)
            keep.append(i)
    return np.asarray(keep, dtype=int), len(texts) - len(keep)


def text_groups(texts: tuple[str, ...] | list[str]) -> np.ndarray:
    """Group id per row: rows with the same normalised stem share one."""
    ids: dict[str, int] = {}
    return np.asarray([ids.setdefault(stem(t), len(ids)) for t in texts], dtype=int)


@dataclass(frozen=True, slots=True)
class Split:
    """Row indices (into the deduplicated data) of the three parts, ascending and disjoint."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    seed: int

    @property
    def dev(self) -> np.ndarray:
        """Train and validation together (what subset selection and the final fit may read)."""
        return np.sort(np.concatenate([self.train, self.val]))

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def split_protocol(categories, groups, *, val_fraction: float = 0.2, test_fraction: float = 0.2,
                   seed: int = 0) -> Split:
    """Seeded, category-stratified, group-aware split of rows into train / validation / test.

    Within each category (a group's category is its first row's) the groups are shuffled and cut so
    that about ``test_fraction`` of the rows go to test and ``val_fraction`` to validation.
    """
    real("val_fraction", val_fraction, lo=0, hi=1, lo_open=True, hi_open=True)
    real("test_fraction", test_fraction, lo=0, hi=1, lo_open=True, hi_open=True)
    if val_fraction + test_fraction >= 1:
        raise InputError(f"val_fraction + test_fraction: expected < 1, got {val_fraction + test_fraction:g}")
    seed = integer("seed", seed, minimum=0)
    cats = np.asarray(categories)
    g = np.asarray(groups)
    if len(cats) != len(g) or len(cats) == 0:
        raise InputError(f"groups: expected one per row ({len(cats)}), got {len(g)}")
    rng = np.random.default_rng(seed)
    first: dict[int, int] = {}
    for i, gid in enumerate(g):
        first.setdefault(int(gid), i)
    rows_of: dict[int, list[int]] = {}
    for i, gid in enumerate(g):
        rows_of.setdefault(int(gid), []).append(i)
    parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for c in sorted(set(cats.tolist())):
        gids = [gid for gid, i in first.items() if cats[i] == c]
        gids = [gids[j] for j in rng.permutation(len(gids))]
        total = sum(len(rows_of[x]) for x in gids)
        n_test, n_val = round(total * test_fraction), round(total * val_fraction)
        got = {"test": 0, "val": 0}
        for gid in gids:
            part = "test" if got["test"] < n_test else "val" if got["val"] < n_val else "train"
            parts[part].extend(rows_of[gid])
            if part != "train":
                got[part] += len(rows_of[gid])
    return Split(*(np.asarray(sorted(parts[p]), dtype=int) for p in ("train", "val", "test")), seed=seed)


def kfold(rows: np.ndarray, k: int = 5, *, groups: np.ndarray | None = None, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` (fit, held-out) pairs of row indices covering ``rows``; groups never straddle folds.

    Every row of ``rows`` is held out exactly once; fit and held-out rows are disjoint.
    """
    k = integer("k", k, minimum=2)
    rows = np.asarray(rows, dtype=int)
    if len(rows) < k:
        raise InputError(f"k: expected at most {len(rows)} folds for {len(rows)} rows, got {k}")
    gid = np.asarray(groups)[rows] if groups is not None else rows
    uniq = np.unique(gid)
    perm = np.random.default_rng(seed).permutation(len(uniq))
    fold_of_group = {int(u): int(j % k) for j, u in zip(perm, uniq)}
    fold = np.asarray([fold_of_group[int(x)] for x in gid])
    return [(rows[fold != f], rows[fold == f]) for f in range(k)]


def bootstrap_ci(values, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (one per question), seeded."""
    v = np.asarray(values, dtype=float)
    if v.ndim != 1 or len(v) == 0:
        raise InputError(f"values: expected a non-empty vector, got shape {v.shape}")
    n_boot = integer("n_boot", n_boot, minimum=10)
    real("level", level, lo=0, hi=1, lo_open=True, hi_open=True)
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for b in range(0, n_boot, 200):  # chunks bound the memory: 200 x len(v) indices at a time
        m = min(200, n_boot - b)
        means[b:b + m] = v[rng.integers(0, len(v), (m, len(v)))].mean(axis=1)
    a = (1 - level) / 2
    lo, hi = np.quantile(means, [a, 1 - a])
    return float(lo), float(hi)


def routed_correct(correct: np.ndarray, predicted: np.ndarray, subset=None) -> np.ndarray:
    """0/1 per question: is the expert the router prefers (inside ``subset``, default all) correct?
    Ties go to the lower expert index."""
    s = np.asarray(correct, dtype=float)
    p = np.asarray(predicted, dtype=float)
    if p.shape != s.shape:
        raise InputError(f"predicted: expected shape {s.shape}, got {p.shape}")
    cols = np.arange(s.shape[1]) if subset is None else np.asarray(sorted(subset), dtype=int)
    r = cols[np.argmax(p[:, cols], axis=1)]
    return s[np.arange(len(s)), r]
