"""``flotilla calibrate``: fit the performance model's efficiencies per kind; report error before/after.

Thin surface over :mod:`cluster.calibration`. ``--profile melange-2024`` fits one efficiency scale
per kind to the Mélange paper's published capacities; ``--profile vidur-2024`` fits compute and
memory efficiency and kernel overhead to Vidur's measured A100/H100 operator times;
``--profile engines-2026`` (today's engines) adds the H200's measured GEMM and decode steps. ``--write``
saves the profile as JSON (the shipped ones are in cluster/data/calibration/). Every figure computed
from a profile is modeled (calibrated), not measured.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from cluster.shell.console import emit_json, err, json_option, out


def calibrate(
    profile: str = typer.Option("melange-2024", "--profile", help="engines-2026 (today's engines: Vidur A100/H100 operators, H200 measurements) | melange-2024 (the Mélange paper's published capacities, vLLM 0.2.7) | vidur-2024 (A100/H100 operators only)."),
    tpot_slo_ms: float = typer.Option(120.0, "--tpot-slo-ms", help="melange-2024: the TPOT SLO the capacities are read at."),
    write: Optional[Path] = typer.Option(None, "--write", help="Save the fitted profile to this JSON file."),
    as_json: bool = json_option(),
) -> None:
    """Fit per-kind efficiencies to published or measured points and report the error before/after."""
    from cluster.calibration import BUILDERS, build_profile, save_profile
    from solvers import validate

    validate.choice("--profile", profile, tuple(BUILDERS))
    validate.real("--tpot-slo-ms", tpot_slo_ms, lo=0.0, lo_open=True)
    with err.status(f"fitting {profile}…", spinner="dots"):
        prof = build_profile(profile, tpot_slo_ms / 1e3)
    doc = prof.to_dict()
    if write is not None:
        doc["written"] = str(save_profile(prof, write))
    doc["note"] = "modeled: calibrated efficiencies of cluster/perf, not measurements"
    if as_json:
        emit_json(doc)
        return
    table = Table(title=f"calibration profile {prof.name}")
    for col in ("kind", "compute", "memory", "attn", "before", "after"):
        table.add_column(col, justify="left" if col == "kind" else "right")
    for kind, fit in prof.fits.items():
        e = prof.efficiency[kind]
        b, a = fit["error_before"], fit["error_after"]
        fmt = (lambda x: f"{x:.1%}") if isinstance(b, float) else (lambda x: f"{x['median']:.1%} / {x['p90']:.1%}")
        table.add_row(kind, f"{e.compute:.3f}", f"{e.memory:.3f}", f"{e.attention:.3f}", fmt(b), fmt(a))
    out.print(table)
    first = next(iter(prof.fits.values()))
    what = ("|rate / target - 1|" if isinstance(first["error_before"], float)
            else "time error median / p90 against each kind's measurements")
    out.print(f"before/after: {what}")
    for kind, fit in prof.fits.items():
        out.print(f"{kind}: {fit['target']}")
    if write is not None:
        out.print(f"wrote {doc['written']}")
    out.print(f"[dim]{doc['note']}[/dim]")


def register(app: typer.Typer) -> None:
    """Add ``calibrate`` to the ``flotilla`` app."""
    app.command("calibrate")(calibrate)
