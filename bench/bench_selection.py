"""Benchmark of expert selection (MoE², issue 4): solver scaling and accuracy-versus-budget sweeps.

    python bench/bench_selection.py --data-dir $LLM_EXPERTS_DATA --out-dir /tmp/flotilla-sel

Part 1 (scaling): f evaluations and wall time of ``monotonic`` against ``exhaustive`` for 8, 12,
16, 20, 24 experts (placements of the 14 edge-size MMLU-Pro models on an AGX Orin, an RTX 4090 and
an Orin Nano, in that order), oracle objective on all questions, energy budget = 40 % of the total.
Exhaustive runs up to 20 experts (2^24 subsets in Python would take minutes).

Part 2 (sweeps): 14 experts (model i on Orin 64 GB if i is even, else RTX 4090). Questions are split
70/30 (stratified by category). Selection uses the training split; accuracy is on the held-out
split. Two objectives:
* ``gate``: the gate (edge/gating.py) is trained on the training split of a category-stratified
  sample of ``--gate-questions`` questions (embedding 12k questions on a 2-core CPU takes too
  long); selection maximises the gate's top-1 routed accuracy on the training split (exhaustive,
  since that objective is not monotone); accuracy = the restricted gate's top-1 routed accuracy on
  the held-out split. Best single expert = the feasible expert with the best training accuracy.
* ``oracle``: all questions; f(S) = share of questions some expert of S answers (an upper bound
  that no router reaches); reported for the solvers, not as a deployable accuracy.
Random subset: a random maximal feasible subset, mean over 10 seeds. All costs are modeled.

Caveat (issue 15): the ``gate`` sweep here selects on in-sample gate scores (the gate scored on
its own training questions) and charges every expert of S on every query while routing each query
to one; its accuracy figures are superseded by ``flotilla experts evaluate`` (edge/evaluate.py:
out-of-fold selection, one energy semantics, bootstrap intervals). Part 1 (solver scaling) stands.
Writes ``results.json`` and four PNG plots to ``--out-dir`` and prints a markdown summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from edge.dataset import FIXTURE_DIR, load_mmlu_pro  # noqa: E402
from edge.gating import Embedder, GateConfig, routed_score, train_gate  # noqa: E402
from cluster.models import EDGE_MODELS  # noqa: E402
from edge.plots import plot_sweep  # noqa: E402
from edge.profiles import Placement, build_profiles, default_placements  # noqa: E402
from solvers.selection import (  # noqa: E402
    SelectionProblem, best_single, gate_objective, mask_of, monotonicity_violations, oracle_objective,
    random_maximal, solve_exhaustive, solve_greedy, solve_monotonic,
)


def problem_of(profiles, energy_budget=None, latency_budget=None, aggregation=5.0) -> SelectionProblem:
    cats = tuple(c for c, _ in profiles[0].latency_ms)
    return SelectionProblem(
        names=tuple(p.name for p in profiles), energy=tuple(p.energy_j for p in profiles), categories=cats,
        latency=tuple(tuple(dict(p.latency_ms)[c] for p in profiles) for c in cats), energy_budget=energy_budget,
        latency_budget=tuple((latency_budget or {}).items()), aggregation=aggregation)


def scaling(ds, out: dict) -> None:
    devices = ["jetson-agx-orin-64", "rtx4090", "jetson-orin-nano-8"]
    placements: list[Placement] = []
    for d in devices:
        placements += default_placements(EDGE_MODELS, [d])
    rows = []
    for n in (8, 12, 16, 20, 24):
        pl = placements[:n]
        prof = build_profiles(ds, pl)
        f = oracle_objective(ds.correct[:, [ds.models.index(p.model) for p in prof]])
        p = problem_of(prof, energy_budget=0.4 * sum(x.energy_j for x in prof))
        mono = solve_monotonic(p, f)
        row = {"experts": n, "subsets": 2 ** n, "monotonic_evals": mono.evaluations, "monotonic_s": mono.seconds,
               "value": mono.objective_value}
        if n <= 20:
            exh = solve_exhaustive(p, f)
            assert abs(exh.objective_value - mono.objective_value) < 1e-12, (n, exh, mono)
            row.update(exhaustive_evals=exh.evaluations, exhaustive_s=exh.seconds)
        row["fewer_than_2n"] = 2 ** n / mono.evaluations
        rows.append(row)
        print(f"  scaling n={n}: {row}", flush=True)
    out["scaling"] = rows


def sweep_rows(problem_fn, budgets, f_train, acc_test, n, seeds=10, exact_method=solve_monotonic):
    rows = []
    for b in budgets:
        p = problem_fn(b)
        opt = exact_method(p, f_train)
        gr = solve_greedy(p, f_train)
        bs = best_single(p, f_train)
        rnd = [acc_test(random_maximal(p, f_train, seed=s).selected) for s in range(seeds)]
        rows.append({"budget": b, "optimum": acc_test(opt.selected), "greedy": acc_test(gr.selected),
                     "random": float(np.mean(rnd)), "best_single": acc_test(bs.selected),
                     "optimum_set": list(opt.names), "best_single_set": list(bs.names),
                     "train_optimum": opt.objective_value, "evaluations": opt.evaluations})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=os.environ.get("LLM_EXPERTS_DATA", str(FIXTURE_DIR)),
                    help="llm-experts data directory (default: $LLM_EXPERTS_DATA, else the committed 308-question fixture)")
    ap.add_argument("--out-dir", default="/tmp/flotilla-selection-bench")
    ap.add_argument("--gate-questions", type=int, default=1000)
    ap.add_argument("--skip-scaling", action="store_true")
    args = ap.parse_args()
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    ds = load_mmlu_pro(args.data_dir)
    out: dict = {"machine": f"{platform.node()} {platform.machine()} {platform.processor() or ''}".strip(),
                 "python": platform.python_version(), "date": date.today().isoformat(),
                 "questions": ds.n_questions, "note": "energy and latency are modeled (cluster/perf), not measured"}
    print(f"{ds.n_questions} questions x {len(ds.models)} models", flush=True)
    if not args.skip_scaling:
        scaling(ds, out)

    placements = default_placements(EDGE_MODELS, ["jetson-agx-orin-64", "rtx4090"])
    prof = build_profiles(ds, placements)
    cols = [ds.models.index(p.model) for p in prof]
    energies = sorted(p.energy_j for p in prof)
    e_budgets = [round(x, 1) for x in np.geomspace(energies[0], sum(energies), 14)]
    max_lat = sorted(max(v for _, v in p.latency_ms) + 5.0 for p in prof)
    l_budgets = [round(x) for x in np.geomspace(max_lat[0], max_lat[-1], 12)]
    out["experts"] = [p.to_dict() for p in prof]

    # oracle objective, all questions
    train, test = ds.split(0.3, seed=0)
    f_tr = oracle_objective(train.correct[:, cols])
    f_te = oracle_objective(test.correct[:, cols])
    acc = lambda sel: f_te(mask_of(sel))  # noqa: E731
    out["oracle_energy"] = sweep_rows(lambda b: problem_of(prof, energy_budget=b), e_budgets, f_tr, acc, len(prof))
    print("  oracle sweep done", flush=True)

    # gate objective, on a stratified sample
    gs = ds if args.gate_questions >= ds.n_questions else ds.split(args.gate_questions / ds.n_questions, seed=1)[1]
    t = time.time()
    emb = Embedder().embed(gs.texts)
    out["embed_s"] = time.time() - t
    gtr_rows, gte_rows = [], []
    rng = np.random.default_rng(0)
    cats = np.asarray(gs.categories)
    for c in sorted(set(gs.categories)):
        idx = np.flatnonzero(cats == c)
        rng.shuffle(idx)
        k = int(round(0.3 * len(idx)))
        gte_rows += list(idx[:k])
        gtr_rows += list(idx[k:])
    S_tr, S_te = gs.correct[gtr_rows][:, cols], gs.correct[gte_rows][:, cols]
    t = time.time()
    gate = train_gate(emb[gtr_rows], S_tr, [p.name for p in prof], GateConfig())
    out["gate_train_s"] = time.time() - t
    w_tr, w_te = gate.weights(emb[gtr_rows]), gate.weights(emb[gte_rows])
    fg_tr = gate_objective(S_tr, w_tr, 1)
    fg_te = gate_objective(S_te, w_te, 1)
    gacc = lambda sel: fg_te(mask_of(sel)) if sel else 0.0  # noqa: E731
    mono_rep = monotonicity_violations(fg_tr, len(prof), max_pairs=20_000)
    out["gate_monotonicity"] = {"pairs_checked": mono_rep.pairs_checked, "violations": mono_rep.violations,
                                "violation_rate": mono_rep.violation_rate, "exhaustive": mono_rep.exhaustive}
    out["gate_energy"] = sweep_rows(lambda b: problem_of(prof, energy_budget=b), e_budgets, fg_tr, gacc, len(prof),
                                    exact_method=solve_exhaustive)
    out["gate_latency"] = sweep_rows(lambda b: problem_of(prof, latency_budget={c: float(b) for c, _ in prof[0].latency_ms}),
                                     l_budgets, fg_tr, gacc, len(prof), exact_method=solve_exhaustive)
    # monotonic on the (non-monotone) gate objective: how often it misses the exhaustive optimum
    miss = []
    for b in e_budgets:
        p = problem_of(prof, energy_budget=b)
        miss.append(solve_exhaustive(p, fg_tr).objective_value - solve_monotonic(p, fg_tr, assume_monotone=False).objective_value)
    out["gate_monotonic_shortfall_train"] = miss
    # optimality preservation: gate restricted to S vs gate retrained on S, for the gate-optimal sets
    pres = []
    for r in out["gate_energy"]:
        S = [i for i, p in enumerate(prof) if p.name in r["optimum_set"]]
        if len(S) < 2 or any(tuple(S) == tuple(x["S"]) for x in pres):
            continue
        sub = train_gate(emb[gtr_rows], S_tr[:, S], [prof[i].name for i in S], GateConfig())
        pres.append({"S": S, "restricted": routed_score(w_te, S_te, S),
                     "retrained": routed_score(sub.weights(emb[gte_rows]), S_te[:, S], list(range(len(S))))})
    out["optimality_preservation"] = pres
    print("  gate sweeps done", flush=True)

    plot_sweep(out["gate_energy"], "budget", "energy budget, J per query (modeled)", out_dir / "gate_accuracy_vs_energy.png",
               f"MMLU-Pro, gate top-1 routing, {len(gte_rows)} held-out questions")
    plot_sweep(out["gate_latency"], "budget", "latency budget, ms, every category (modeled)",
               out_dir / "gate_accuracy_vs_latency.png", f"MMLU-Pro, gate top-1 routing, {len(gte_rows)} held-out questions")
    plot_sweep(out["oracle_energy"], "budget", "energy budget, J per query (modeled)", out_dir / "oracle_accuracy_vs_energy.png",
               f"MMLU-Pro, oracle (some expert of S right), {test.n_questions} held-out questions")
    out["total_s"] = time.time() - t0
    (out_dir / "results.json").write_text(json.dumps(out, indent=1))
    print(json.dumps({k: out[k] for k in ("scaling", "gate_monotonicity", "optimality_preservation") if k in out}, indent=1))
    for key in ("gate_energy", "gate_latency", "oracle_energy"):
        print(f"\n{key}: budget | best single | random | greedy | optimum | gain (pts) | gain (rel)")
        for r in out[key]:
            g = r["optimum"] - r["best_single"]
            rel = g / r["best_single"] if r["best_single"] else float("nan")
            print(f"{r['budget']} | {r['best_single']:.3f} | {r['random']:.3f} | {r['greedy']:.3f} | {r['optimum']:.3f} | "
                  f"{100 * g:+.1f} | {100 * rel:+.1f}%")
    print(f"\nwrote {out_dir}/results.json and plots; {out['total_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
