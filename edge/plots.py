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
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
