"""``flotilla experts evaluate``: routers and expert subsets judged on held-out questions.

Thin surface over :func:`edge.evaluate.evaluate_experts` (the protocol is documented there and in
docs/edge-experts.md): parse and validate flags, show a progress bar on stderr, render a table or
one JSON object, optionally write the JSON and a plot. Energy and latency are modeled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cluster.exceptions import InputError
from cluster.shell.console import MODELED_NOTE, emit_json, err, json_option, out


def _csv(flag: str, text: Optional[str]) -> Optional[list[str]]:
    if text is None:
        return None
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise InputError(f"{flag}: expected a comma-separated list, got {text!r}")
    return items


def evaluate(
    data: str = typer.Option(..., "--data", help="llm-experts data directory (e.g. $LLM_EXPERTS_DATA)."),
    models: Optional[str] = typer.Option(None, "--models", help="Model columns, comma-separated (default: the 14 edge-size ones)."),
    devices: str = typer.Option("jetson-agx-orin-64,rtx4090", "--devices",
                                help="Device kinds, comma-separated; model i goes on device i mod len."),
    routers: str = typer.Option("table,logreg,knn,mlp", "--routers", help="Routers to compare (k-fold CV on train + validation, one-SE rule)."),
    no_embeddings: bool = typer.Option(False, "--no-embeddings",
                                       help="Category features only (drops knn and mlp; no sentence encoder)."),
    seed: int = typer.Option(0, "--seed", help="Split, fold and bootstrap seed."),
    folds: int = typer.Option(5, "--folds", help="Cross-validation folds."),
    val_fraction: float = typer.Option(0.2, "--val-fraction", help="Validation share of the questions."),
    test_fraction: float = typer.Option(0.2, "--test-fraction", help="Test share of the questions."),
    bootstrap: int = typer.Option(2000, "--bootstrap", help="Bootstrap resamples for the 95% intervals."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use only the first N questions."),
    cache_dir: Optional[str] = typer.Option(None, "--cache-dir", help="Embedding cache (default ~/.cache/flotilla/embeddings)."),
    out_path: Optional[str] = typer.Option(None, "--out", help="Also write the JSON document here."),
    plot: Optional[str] = typer.Option(None, "--plot", help="Write accuracy (95% CI) against modeled energy here (PNG)."),
    as_json: bool = json_option(),
) -> None:
    """Held-out accuracy (95% CI) of routed expert subsets per energy budget, vs the best single expert."""
    from edge.evaluate import evaluate_experts

    if not Path(data).is_dir():
        raise InputError(f"--data: expected a directory, got {data!r}")
    if limit is not None and limit < 1:
        raise InputError(f"--limit: expected an integer >= 1, got {limit}")
    if folds < 2:
        raise InputError(f"--folds: expected an integer >= 2, got {folds}")
    if bootstrap < 10:
        raise InputError(f"--bootstrap: expected an integer >= 10, got {bootstrap}")
    dev_list = _csv("--devices", devices) or []
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=err,
                  transient=True) as bar:
        task = bar.add_task("evaluating", total=1.0)

        def progress(what: str, frac: float) -> None:
            bar.update(task, completed=frac, description=what[:40])

        doc = evaluate_experts(data, models=_csv("--models", models), devices=dev_list,
                               routers=_csv("--routers", routers) or [], embeddings=not no_embeddings,
                               cache_dir=cache_dir, seed=seed, val_fraction=val_fraction,
                               test_fraction=test_fraction, folds=folds, n_boot=bootstrap, limit=limit,
                               progress=progress)
    if out_path:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        Path(out_path).write_text(json.dumps(doc, indent=1) + "\n")
    if plot:
        from edge.plots import plot_evaluation

        plot_evaluation(doc, plot)
    if as_json:
        emit_json(doc)
        return
    q = doc["questions"]
    table = Table(title=f"router {doc['chosen_router']} (CV, one-SE rule); test: {q['test']} questions",
                  title_justify="left")
    for col in ("budget J", "n", "test acc [95% CI]", "best single", "single", "J"):
        table.add_column(col, justify="left" if col == "best single" else "right")
    for b in doc["budgets"]:
        budget = "none" if b["energy_budget_j"] is None else f"{b['energy_budget_j']:.0f}"
        lo, hi = b["ci95"]
        table.add_row(budget, str(len(b["subset"])), f"{b['test_accuracy']:.3f} [{lo:.3f},{hi:.3f}]",
                      b["best_single"].split("@")[0][:18], f"{b['best_single_accuracy']:.3f}",
                      f"{b['energy_j']:.0f}")
    out.print(table)
    out.print(f"[dim]J = modeled energy per query of the routed expert ({MODELED_NOTE})[/dim]")


def register(experts_app: typer.Typer) -> None:
    """Add ``evaluate`` to the ``flotilla experts`` group."""
    experts_app.command("evaluate")(evaluate)
