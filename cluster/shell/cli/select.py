"""``flotilla select`` and ``flotilla experts ...``: choose which edge LLM experts to deploy (MoE²).

Thin surface: parse and validate flags, call edge/ and solvers/selection, render. Bad input raises
:class:`~cluster.exceptions.InputError` (exit 2). Energy and latency figures from ``experts build``
are modeled (cluster/perf), and every output says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from cluster.shell.console import MODELED_NOTE, emit_json, err, json_option, out
from cluster.exceptions import InputError

experts_app = typer.Typer(name="experts", help="Edge LLM experts: build selection instances from real per-query data.",
                          no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def _latency_budgets(items: list[str]) -> dict[str, float]:
    out_: dict[str, float] = {}
    for item in items:
        cat, sep, val = item.partition("=")
        if not sep or not cat:
            raise InputError(f"--latency-budget: expected CATEGORY=MS, got {item!r}")
        try:
            out_[cat.strip()] = float(val)
        except ValueError:
            raise InputError(f"--latency-budget: {val!r} is not a number of milliseconds (in {item!r})") from None
        if out_[cat.strip()] < 0:
            raise InputError(f"--latency-budget: negative budget {val} ms for {cat!r}")
    return out_


def select(
    instance: str = typer.Option(..., "--instance", help="Instance JSON file (format: docs/edge-experts.md)."),
    method: str = typer.Option("monotonic", "--method", help="monotonic | exhaustive | greedy."),
    as_json: bool = json_option(),
) -> None:
    """Choose the subset of experts that maximises quality under the energy and latency budgets."""
    from edge.instance import load_instance, solve_instance

    doc = solve_instance(load_instance(instance), method)
    doc["note"] = (doc.get("note", "") + "; " if doc.get("note") else "") + (
        "energy_j and latency_ms are the instance's figures (modeled when made by `flotilla experts build`)")
    if as_json:
        emit_json(doc)
        return
    table = Table(title=f"selected experts ({doc['method']}, objective {doc['objective']})")
    table.add_column("expert")
    for name in doc["selected"]:
        table.add_row(name)
    out.print(table)
    if doc["empty"]:
        out.print("[bold]no non-empty subset meets the budgets: the empty set is the answer[/bold]")
    out.print(f"objective value: {doc['objective_value']:.4f}   energy: {doc['energy_j']:.2f} J/query   "
              f"f evaluations: {doc['evaluations']} of {doc['subsets']} subsets   exact: {doc['exact']}")
    out.print("latency (ms): " + ", ".join(f"{c}={v:.0f}" for c, v in doc["latency_ms"].items()))
    if "monotonicity" in doc:
        m = doc["monotonicity"]
        out.print(f"gate objective monotonicity: {m['violations']} violations in {m['pairs_checked']} pairs checked")
    out.print(f"[dim]{doc['note']}[/dim]")


@experts_app.command("build")
def build(
    data: str = typer.Option(..., "--data", help="llm-experts data directory (e.g. $LLM_EXPERTS_DATA)."),
    devices: str = typer.Option("jetson-agx-orin-64,rtx4090", "--devices",
                                help="Device kinds, comma-separated; model i goes on device i mod len."),
    models: Optional[str] = typer.Option(None, "--models", help="Model columns, comma-separated (default: the 14 edge-size ones)."),
    experts: Optional[str] = typer.Option(None, "--experts", help="Explicit MODEL@DEVICE[:DTYPE] list, comma-separated (overrides --models/--devices)."),
    energy_budget: Optional[float] = typer.Option(None, "--energy-budget", help="Energy budget, J per query."),
    latency_budget: list[str] = typer.Option([], "--latency-budget", help="CATEGORY=MS, repeatable."),
    objective: str = typer.Option("oracle", "--objective", help="oracle | gate (trains the gate on a split)."),
    top_k: int = typer.Option(1, "--top-k", help="Experts the gate routes each query to."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use only the first N questions."),
    test_fraction: float = typer.Option(0.3, "--test-fraction", help="With --objective gate: held-out share, left out of the instance."),
    cache_dir: Optional[str] = typer.Option(None, "--cache-dir", help="Embedding cache (default ~/.cache/flotilla/embeddings)."),
    out_path: str = typer.Option(..., "--out", help="Where to write the instance JSON."),
    as_json: bool = json_option(),
) -> None:
    """Make a selection instance from real per-question results and the perf model (modeled costs)."""
    import json

    import numpy as np

    from edge.dataset import load_mmlu_pro
    from edge.instance import build_instance
    from edge.profiles import Placement, ProfileConfig, build_profiles, default_placements

    if objective not in ("oracle", "gate"):
        raise InputError(f"--objective: unknown objective {objective!r}; allowed: oracle, gate")
    if limit is not None and limit < 1:
        raise InputError(f"--limit: expected an integer >= 1, got {limit}")
    if experts:
        placements = [Placement.parse(x.strip()) for x in experts.split(",") if x.strip()]
        model_cols = tuple(dict.fromkeys(p.model for p in placements))
    else:
        model_cols = tuple(m.strip() for m in models.split(",")) if models else None
        placements = None
    ds = load_mmlu_pro(data, model_cols, limit)
    if placements is None:
        placements = default_placements(ds.models, [d.strip() for d in devices.split(",") if d.strip()])
    cfg = ProfileConfig()
    profiles = build_profiles(ds, placements, config=cfg)
    gate_w = None
    target = ds
    if objective == "gate":
        from edge.gating import Embedder
        from edge.routers import MLPRouter, Features, out_of_fold

        # Selection must not score subsets on the questions it reports on, nor on questions the gate
        # was trained on: the instance holds the TRAINING split with out-of-fold gate weights (each
        # question's weights come from a gate trained on the other folds, epochs by 5-fold CV); the
        # test split stays out of the instance (held-out figures: `flotilla experts evaluate`).
        train, _test = ds.split(test_fraction, seed=0)
        err.print(f"embedding {ds.n_questions} questions (cached); out-of-fold gate on {train.n_questions}…")
        emb_all = Embedder(cache_dir).embed(ds.texts)
        pos = {q: i for i, q in enumerate(ds.question_ids)}
        cols = [ds.models.index(p.model) for p in profiles]
        tr_rows = np.asarray([pos[q] for q in train.question_ids])
        x = Features(ds.categories, emb_all)
        s_cols = ds.correct[:, cols]
        router = MLPRouter().fit(x.rows(tr_rows), s_cols[tr_rows])
        gate_w = out_of_fold(router, x, s_cols, tr_rows)
        target = train
    inst = build_instance(target, profiles, energy_budget=energy_budget, latency_budget=_latency_budgets(latency_budget),
                          objective=objective, gate=gate_w, top_k=top_k, aggregation_ms=cfg.aggregation_ms)
    doc = inst.to_dict()
    doc["note"] = f"energy_j and latency_ms are modeled ({MODELED_NOTE}); scores are real MMLU-Pro results"
    if objective == "gate":
        doc["note"] += ("; gate weights are out-of-fold on the training split (the test split is not in the "
                        "instance: held-out figures come from `flotilla experts evaluate`)")
    Path(out_path).write_text(json.dumps(doc))
    summary = {"out": out_path, "experts": [p.to_dict() for p in profiles], "n_queries": len(inst.query_categories),
               "objective": objective, "note": doc["note"]}
    if as_json:
        emit_json(summary)
        return
    table = Table(title=f"{len(profiles)} experts, {len(inst.query_categories)} queries -> {out_path}")
    for col in ("expert", "modeled J/query", "modeled ms (min-max over categories)", "accuracy"):
        table.add_column(col, justify="left" if col == "expert" else "right")
    for p in profiles:
        lat = [v for _, v in p.latency_ms]
        acc = float(target.correct[:, target.models.index(p.model)].mean())
        table.add_row(p.name, f"{p.energy_j:.1f}", f"{min(lat):.0f}-{max(lat):.0f}", f"{acc:.3f}")
    out.print(table)
    out.print(f"[dim]{MODELED_NOTE}[/dim]")


def register(app: typer.Typer) -> None:
    """Add ``select`` and the ``experts`` group to the ``flotilla`` app."""
    app.command("select")(select)
    app.add_typer(experts_app, name="experts")


def _add_evaluate() -> None:
    from cluster.shell.cli.experts import register as register_evaluate

    register_evaluate(experts_app)


_add_evaluate()
