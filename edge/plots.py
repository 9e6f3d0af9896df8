"""Accuracy-versus-budget plots (matplotlib, Agg backend, no display). Costs on the x axis are modeled."""

from __future__ import annotations

from pathlib import Path

SERIES = (("optimum", "optimum (selection)", "-o"), ("greedy", "greedy", "-s"),
          ("random", "random subset (mean of seeds)", "--^"), ("best_single", "best single expert", "-x"))


def plot_sweep(rows: list[dict], x_key: str, x_label: str, path: str | Path, title: str) -> Path:
    """One line per method of ``rows`` (dicts with ``x_key`` and the SERIES keys), saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    xs = [r[x_key] for r in rows]
    for key, label, style in SERIES:
        ax.plot(xs, [r[key] for r in rows], style, label=label, markersize=4)
    ax.set_xlabel(x_label)
    ax.set_ylabel("accuracy on held-out questions")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.text(0.01, 0.01, "energy and latency are modeled (cluster/perf roofline), not measured", fontsize=7)
    return _save(fig, path)


def plot_evaluation(doc: dict, path: str | Path) -> Path:
    """Held-out accuracy with bootstrap 95 % intervals against modeled energy, from the JSON of
    ``flotilla experts evaluate``: the routed subset per budget and the best single expert that fits."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    rows = doc["budgets"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))

    def series(e_key, acc_key, ci_key, label, style):
        xs = [r[e_key] for r in rows]
        ys = [r[acc_key] for r in rows]
        err = [[y - r[ci_key][0] for y, r in zip(ys, rows)], [r[ci_key][1] - y for y, r in zip(ys, rows)]]
        ax.errorbar(xs, ys, yerr=err, fmt=style, capsize=3, markersize=4, label=label)

    series("energy_j", "test_accuracy", "ci95", f"chosen subset, router {doc['chosen_router']}", "o")
    series("best_single_energy_j", "best_single_accuracy", "best_single_ci95", "best single expert in budget", "x")
    ax.set_xlabel("energy per query, J (modeled, routed expert)")
    ax.set_ylabel("accuracy on held-out test questions")
    q = doc["questions"]
    ax.set_title(f"{q['test']} held-out test questions; bars: bootstrap 95 % intervals; oracle of all "
                 f"experts {doc['test_oracle_all_experts']:.3f} (off the axis)", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.text(0.01, 0.01, "energy is modeled (cluster/perf roofline), not measured", fontsize=7)
    return _save(fig, path)


def _save(fig, path) -> Path:
    """Lay out (leaving room for the footnote), write the PNG (creating its folder), close."""
    import matplotlib.pyplot as plt

    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
