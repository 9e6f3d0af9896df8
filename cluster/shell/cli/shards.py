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

#: Share of a device's memory the placement may use (as vLLM's gpu_memory_utilization).
MEMORY_UTILIZATION = 0.9
NOTE = ("modeled: roofline prefill time, makespan x power energy and KV + activation memory "
        "from the catalog figures; not measured")


def shard_inputs(model_name: str, kinds: list[str]):
    """(ShardModel, [ShardDevice]) for a registry model and catalog device kinds."""
    from cluster.models import DTYPE_BYTES, get_model
    from cluster.perf import DEFAULT_EFFICIENCY, peak_flops
    from cluster.probe import probed_catalog
    from solvers.shards import ShardDevice, ShardModel

    shape = get_model(model_name)
    model = ShardModel(
        shape.n_layers, shape.n_heads, shape.n_kv_heads, shape.head_dim, shape.hidden_size,
        shape.intermediate_size, float(shape.flops_per_token), float(shape.weight_bytes),
        DTYPE_BYTES[shape.cache_dtype],
    )
    catalog = probed_catalog()
    eff = DEFAULT_EFFICIENCY
    devices = []
    for kind in kinds:
        spec = catalog.get(catalog.resolve(kind))
        devices.append(ShardDevice(
            spec.kind, spec.memory_gib * 2**30 * MEMORY_UTILIZATION, spec.link_gbs,
            peak_flops(spec, shape.compute_dtype) * eff.compute, spec.mem_bw_gbs * eff.memory,
            spec.power_max_w,
        ))
    return shape, model, devices


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
