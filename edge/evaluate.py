"""``flotilla experts evaluate``: routers and expert subsets judged on held-out questions.

The protocol of :mod:`edge.protocol`, end to end:

1. Load the per-question results (:func:`edge.dataset.load_mmlu_pro`), drop duplicate question
   texts, group the rest by question stem, split train / validation / test by a seed.
2. Fit every router of :mod:`edge.routers` on the training split (its hyperparameter by k-fold CV
   on the training split). Then score each router, hyperparameter fixed, by k-fold
   cross-validation on train + validation: the mean routed accuracy of its out-of-fold predictions
   (all experts) and its standard error ``sd(hits) / sqrt(n)`` over the n questions. The router is
   chosen by the **one-standard-error rule** (Hastie, Tibshirani and Friedman, *The Elements of
   Statistical Learning*, 7.10): the simplest router whose CV accuracy is at least the best one's
   minus the best one's standard error, in the order of simplicity of
   :data:`edge.routers.ROUTERS` (category table < logistic < kNN < MLP). The validation accuracy
   of each router (fitted on train) is reported, not used.
3. The chosen router's out-of-fold predictions on train + validation (the ones step 2 scored)
   score every subset S of experts under ONE-expert-per-query routing
   (:func:`solvers.selection.routed_table`): accuracy, energy and latency all follow the expert each
   query is routed to. Per energy budget the best subset on these out-of-fold scores is chosen.
4. The router is refitted on train + validation and routes the test questions inside each chosen
   subset. Every compared router is also refitted and routes the test questions among ALL experts
   (``test_accuracy_all_experts``): reported beside the choice, read after it, never used by it. Reported per budget: test accuracy with a bootstrap 95 % interval, the best single expert
   that fits the budget (chosen on train + validation) and its test accuracy, the oracle accuracy of
   the subset, and the MODELED energy and latency per query of the routed experts.

Budgets: the modeled energy of each single expert (mean over train + validation questions), then no
limit. Nothing is chosen on the test questions: they are read once, in step 4.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from cluster.exceptions import InputError
from edge.protocol import bootstrap_ci, dedupe, routed_correct, split_protocol, text_groups
from edge.routers import NEEDS_EMBEDDINGS, ROUTERS, Features, make_router, out_of_fold

Progress = Callable[[str, float], None]  # (what is being done, fraction of the whole run done)

DEFAULT_DEVICES = ("jetson-agx-orin-64", "rtx4090")
MODELED = "modeled: cluster/perf roofline energy and latency, not a measurement"


def _cost_matrices(categories, profiles) -> tuple[np.ndarray, np.ndarray]:
    """Per question x expert: modeled energy (J) and latency (ms) for the question's category."""
    cats = list(categories)
    e = np.asarray([[dict(p.energy_by_category)[c] for p in profiles] for c in cats])
    t = np.asarray([[dict(p.latency_ms)[c] for p in profiles] for c in cats])
    return e, t


def _ci(v: np.ndarray, n_boot: int, seed: int) -> list[float]:
    lo, hi = bootstrap_ci(v, n_boot=n_boot, seed=seed)
    return [round(lo, 4), round(hi, 4)]


def cv_score(hits: np.ndarray) -> tuple[float, float]:
    """Mean of the per-question 0/1 ``hits`` and its standard error ``sd / sqrt(n)`` (ddof 1)."""
    h = np.asarray(hits, dtype=float)
    if h.ndim != 1 or len(h) < 2:
        raise InputError(f"hits: expected at least 2 questions, got shape {h.shape}")
    return float(h.mean()), float(h.std(ddof=1) / math.sqrt(len(h)))


def one_se_choice(scores: Sequence[tuple[float, float]]) -> int:
    """Index of the first candidate (candidates in order of simplicity) whose mean is at least the
    best mean minus the best candidate's standard error; ``scores`` holds (mean, standard error).
    The best is the highest mean (ties: the simpler)."""
    if not scores:
        raise InputError("routers: expected at least one candidate")
    best = max(range(len(scores)), key=lambda i: (scores[i][0], -i))
    threshold = scores[best][0] - scores[best][1]
    return next(i for i, (m, _) in enumerate(scores) if m >= threshold - 1e-12)


def evaluate_experts(data_dir: str | Path, *, models: Sequence[str] | None = None,
                     devices: Sequence[str] = DEFAULT_DEVICES, routers: Sequence[str] = ROUTERS,
                     embeddings: bool = True, cache_dir: str | Path | None = None, seed: int = 0,
                     val_fraction: float = 0.2, test_fraction: float = 0.2, folds: int = 5,
                     n_boot: int = 2000, limit: int | None = None,
                     progress: Progress | None = None) -> dict:
    """The module docstring's protocol; returns the JSON document of ``flotilla experts evaluate``."""
    from edge.dataset import load_mmlu_pro
    from edge.profiles import build_profiles, default_placements
    from solvers.selection import members, routed_table

    t0 = time.perf_counter()
    say = progress or (lambda what, frac: None)
    routers = tuple(routers)
    if not routers:
        raise InputError("routers: expected at least one of " + ", ".join(ROUTERS))
    for r in routers:
        make_router(r)  # validates the name
    routers = tuple(sorted(set(routers), key=ROUTERS.index))  # the one-SE rule reads them simplest first
    if not embeddings:
        dropped_r = [r for r in routers if r in NEEDS_EMBEDDINGS]
        routers = tuple(r for r in routers if r not in NEEDS_EMBEDDINGS)
        if not routers:
            raise InputError(f"routers: {', '.join(dropped_r)} need embeddings; pass table or logreg "
                             "when embeddings are off")
    if not isinstance(folds, int) or isinstance(folds, bool) or folds < 2:
        raise InputError(f"folds: expected an integer >= 2, got {folds!r}")

    say("loading data", 0.0)
    full = load_mmlu_pro(data_dir, tuple(models) if models else None, limit)
    if full.n_questions < 10 * folds:
        raise InputError(f"data: {full.n_questions} questions are too few for {folds}-fold CV "
                         f"(need at least {10 * folds})")
    emb_full = None
    if embeddings:
        from edge.gating import Embedder

        say("embedding questions (cached on disk)", 0.02)
        emb_full = Embedder(cache_dir).embed(full.texts)
    keep, n_dup = dedupe(full.texts)
    ds = full.subset(keep)
    emb = None if emb_full is None else emb_full[keep]
    groups = text_groups(ds.texts)
    sp = split_protocol(ds.categories, groups, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    s = ds.correct
    x = Features(ds.categories, emb)
    dev, test = sp.dev, sp.test

    placements = default_placements(ds.models, list(devices))
    profiles = build_profiles(ds.subset(dev), placements)  # lengths from train + validation only
    e_q, t_q = _cost_matrices(ds.categories, profiles)
    names = [p.name for p in profiles]

    # 2. routers: hyperparameter by CV on train; k-fold CV on train + validation; one-SE rule
    cands = []
    for j, name in enumerate(routers):
        say(f"router {name}: {folds}-fold CV on the training split", 0.1 + 0.6 * j / len(routers))
        r = make_router(name, folds=folds, seed=seed, use_embeddings=embeddings)
        r.fit(x.rows(sp.train), s[sp.train], groups[sp.train])
        val_acc = float(routed_correct(s[sp.val], r.predict(x.rows(sp.val))).mean())
        say(f"router {name}: {folds}-fold CV on train + validation", 0.1 + 0.6 * (j + 0.5) / len(routers))
        oof_r = out_of_fold(r, x, s, dev, folds=folds, groups=groups, seed=seed)
        mean, se = cv_score(routed_correct(s[dev], oof_r))
        cands.append({"name": name, "router": r, "val": val_acc, "cv": mean, "se": se, "oof": oof_r})
    val_best_single = float(s[sp.val].mean(axis=0).max())
    pick = one_se_choice([(c["cv"], c["se"]) for c in cands])
    chosen_name, chosen, oof = cands[pick]["name"], cands[pick]["router"], cands[pick]["oof"]
    best = max(range(len(cands)), key=lambda i: (cands[i]["cv"], -i))
    threshold = cands[best]["cv"] - cands[best]["se"]

    # 3. out-of-fold scores of every subset on train + validation
    say("scoring every subset (one expert per query)", 0.8)
    table = routed_table(s[dev], oof, e_q[dev], t_q[dev])
    single_e = e_q[dev].mean(axis=0)
    single_acc_dev = s[dev].mean(axis=0)

    # 4. refit on train + validation, route the test questions
    say("refitting on train + validation; routing the test questions", 0.9)
    st, et, tt = s[test], e_q[test], t_q[test]
    for c in cands:  # every router among all experts on test: reported next to the choice, never used by it
        c["final"] = c["router"].fixed().fit(x.rows(dev), s[dev])
        c["test_hits"] = routed_correct(st, c["final"].predict(x.rows(test)))
    final = cands[pick]["final"]
    pred_test = final.predict(x.rows(test))
    rows = np.arange(len(test))
    budgets = sorted(set(math.ceil(float(v) * 10) / 10 for v in single_e)) + [None]  # 0.1 J up: each fits
    out = []
    for budget in budgets:
        mask = table.best(budget)
        fits = [i for i in range(len(names)) if budget is None or single_e[i] <= budget + 1e-9]
        bs = max(fits, key=lambda i: (single_acc_dev[i], -i))
        if mask == 0:  # cannot happen (the cheapest single expert defines the smallest budget)
            continue
        sub = members(mask)
        cols = np.asarray(sub)
        routed = cols[np.argmax(pred_test[:, cols], axis=1)]
        hit = st[rows, routed]
        single_hit = st[:, bs]
        gain = hit - single_hit
        seed_b = seed  # one seed for all budgets: the same subset gets the same interval
        out.append({
            "energy_budget_j": budget,
            "subset": [names[i] for i in sub],
            "router": chosen_name if len(sub) > 1 else "single expert (no routing)",
            "test_accuracy": round(float(hit.mean()), 4),
            "ci95": _ci(hit, n_boot, seed_b),
            "best_single": names[bs],
            "best_single_accuracy": round(float(single_hit.mean()), 4),
            "best_single_ci95": _ci(single_hit, n_boot, seed_b),
            "gain_vs_best_single": round(float(gain.mean()), 4),
            "gain_ci95": _ci(gain, n_boot, seed_b),
            "oracle_accuracy": round(float(st[:, cols].max(axis=1).mean()), 4),
            "energy_j": round(float(et[rows, routed].mean()), 1),
            "best_single_energy_j": round(float(et[:, bs].mean()), 1),
            "latency_ms": round(float(tt[rows, routed].mean()), 1),
            "dev_oof_accuracy": round(float(table.accuracy[mask - 1]), 4),
            "dev_energy_j": round(float(table.energy[mask - 1]), 1),
        })
    all_oracle = float(st.max(axis=1).mean())
    say("done", 1.0)
    return {
        "data": str(data_dir),
        "questions": {"loaded": full.n_questions, "duplicates_dropped": n_dup, **sp.sizes()},
        "seed": seed, "folds": folds, "bootstrap": n_boot,
        "experts": [p.to_dict() for p in profiles],
        "routers": [{"router": c["name"],
                     "params": {k: (float(v) if v is not None else None) for k, v in c["router"].params.items()},
                     "cv_accuracy": {str(k): round(v, 4) for k, v in c["router"].cv.items()},
                     "val_accuracy": round(c["val"], 4),
                     "dev_cv_accuracy": round(c["cv"], 4), "dev_cv_se": round(c["se"], 4),
                     "test_accuracy_all_experts": round(float(c["test_hits"].mean()), 4),
                     "test_ci95_all_experts": _ci(c["test_hits"], n_boot, seed)} for c in cands],
        "chosen_router": chosen_name,
        "chosen_on": (f"one-standard-error rule on {folds}-fold CV over train + validation (routing among all "
                      "experts): the simplest router (table < logreg < knn < mlp) within one standard error "
                      "of the best"),
        "router_choice": {"best_cv": cands[best]["name"], "best_cv_accuracy": round(cands[best]["cv"], 4),
                          "best_cv_se": round(cands[best]["se"], 4), "threshold": round(threshold, 4),
                          "chosen": chosen_name},
        "val_best_single_accuracy": round(val_best_single, 4),
        "test_oracle_all_experts": round(all_oracle, 4),
        "budgets": out,
        "semantics": "one expert per query: accuracy, energy_j and latency_ms follow the routed expert",
        "energy_note": MODELED,
        "embeddings": bool(embeddings),
        "seconds": round(time.perf_counter() - t0, 1),
    }
