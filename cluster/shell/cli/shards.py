"""``flotilla plan-shards``: where to prefill a long prompt context-parallel (modeled).

Thin surface: the device kinds come from the catalog, the model shape from
:mod:`cluster.models`; :func:`solvers.shards.solve` chooses the devices, the strategy and the
shares. Every latency, energy and memory figure is MODELED (roofline at the catalog's figures
and :data:`cluster.perf.DEFAULT_EFFICIENCY`), never measured.
"""

from __future__ import annotations

import time
from typing import Optional

import typer
from rich.table import Table

from cluster.exceptions import InputError
from cluster.shell.console import emit_json, json_option, out

NOTE = ("modeled: roofline prefill time, makespan x power energy and KV + activation memory "
        "from the catalog figures; not measured")


def shard_inputs(model_name: str, kinds: list[str]):
    """(ModelShape, ShardModel, [ShardDevice]) for a registry model and catalog device kinds (the
    same conversion the serving path uses, :mod:`actors.cp_adapter`)."""
    from actors.cp_adapter import shard_device, shard_model
    from cluster.models import get_model

    shape = get_model(model_name)
    return shape, shard_model(shape), [shard_device(shape, kind) for kind in kinds]


def plan_shards(
    tokens: int = typer.Option(..., "--tokens", help="Prompt length in tokens."),
    model: str = typer.Option("llama-3-8b", "--model", help="Model shape from the registry."),
    devices: str = typer.Option(..., "--devices", help="Candidate kinds, comma-separated; repeat a kind for several."),
    latency_budget_s: Optional[float] = typer.Option(None, "--latency-budget-s", help="Most modeled prefill seconds."),
    energy_budget_j: Optional[float] = typer.Option(None, "--energy-budget-j", help="Most modeled prefill joules."),
    objective: str = typer.Option("latency", "--objective", help="latency | energy (under --latency-budget-s)."),
    as_json: bool = json_option(),
) -> None:
    """Choose devices, strategy and shares for a context-parallel prefill (MODELED)."""
    from solvers.shards import solve

    if tokens < 1:
        raise InputError(f"--tokens: expected an integer >= 1, got {tokens}")
    kinds = [k.strip() for k in devices.split(",")]
    if not all(kinds):
        raise InputError(f"--devices: expected KIND[,KIND...], got {devices!r}")
    shape, smodel, devs = shard_inputs(model, kinds)
    t0 = time.perf_counter()
    try:
        placement = solve(tokens, smodel, devs, latency_budget_s=latency_budget_s,
                          energy_budget_j=energy_budget_j, objective=objective)
    except InputError as e:  # name the flag, not the solver's field
        msg = str(e)
        for field, flag in (("latency_budget_s", "--latency-budget-s"), ("energy_budget_j", "--energy-budget-j"),
                            ("objective", "--objective"), ("tokens", "--tokens")):
            msg = msg.replace(field, flag)
        raise type(e)(msg) from None
    solve_ms = (time.perf_counter() - t0) * 1e3
    doc = {"modeled": True, "note": NOTE, "tokens": tokens, "model": shape.name, "objective": objective,
           "candidates": kinds, **placement.to_dict(), "solve_ms": solve_ms}
    if as_json:
        emit_json(doc)
        return
    table = Table(title=f"{shape.name}, {tokens} tokens: {placement.strategy} (MODELED)")
    for col in ("#", "kind", "share", "modeled GiB"):
        table.add_column(col, justify="left" if col == "kind" else "right")
    for i, kind, n, mem in zip(placement.devices, placement.kinds, placement.shares, placement.memory_bytes):
        table.add_row(str(i), kind, str(n), f"{mem / 2**30:.2f}")
    out.print(table)
    out.print(f"modeled prefill {placement.latency_s * 1e3:.3g} ms, "
              f"{placement.energy_j:.3g} J; solved in {solve_ms:.0f} ms")
    out.print(f"[dim]{NOTE}[/dim]")


def register(app: typer.Typer) -> None:
    """Add ``plan-shards`` to the ``flotilla`` app."""
    app.command("plan-shards")(plan_shards)
