"""``flotilla profile``: measure a running server's rate sweep and reduce it to a rate table."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from cluster.exceptions import InputError
from cluster.shell.console import emit_json, json_option, out, progress


def _ints(flag: str, text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"{flag}: {text!r}; expected comma-separated integers, e.g. 128,512") from None
    if not values or any(v < 1 or v > 100_000 for v in values):
        raise InputError(f"{flag}: {text!r}; allowed: integers 1..100000")
    return values


def _rates(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"--rates: {text!r}; expected comma-separated req/s, e.g. 0.5,1,2") from None
    if not values or any(not math.isfinite(v) or v <= 0 or v > 10_000 for v in values):
        raise InputError(f"--rates: {text!r}; allowed: numbers in (0, 10000]")
    return values


def profile(
    target: str = typer.Option("grpc://127.0.0.1:50051", "--target", help="grpc://HOST:PORT (flotilla) or http://HOST:PORT/v1 (OpenAI-compatible)."),
    kind: str = typer.Option(..., "--kind", help="The device kind the server runs on (catalog kind, e.g. cpu, l4, h100-sxm)."),
    model: str = typer.Option("smollm2-135m", "--model", help="Model name (sent to OpenAI servers; recorded)."),
    engine: str = typer.Option("flotilla", "--engine", help="Serving engine, recorded in the table (flotilla, vllm, sglang, ...)."),
    inputs: str = typer.Option("64,256", "--inputs", help="Prompt lengths (words), comma-separated."),
    outputs: str = typer.Option("16,64", "--outputs", help="Output lengths (tokens), comma-separated."),
    rates: str = typer.Option("0.5,1,2", "--rates", help="Offered rates (req/s), comma-separated."),
    requests: int = typer.Option(20, "--requests", help="Requests per (shape, rate) point."),
    out_file: str = typer.Option("profile.jsonl", "--out", help="Sweep file (AIBrix JSONL); appended, resumable."),
    table: Optional[str] = typer.Option(None, "--table", help="Also write the reduced rate table (JSON) here."),
    tpot_slo_ms: Optional[float] = typer.Option(None, "--tpot-slo-ms", help="TPOT SLO for the table, ms."),
    ttft_slo_ms: Optional[float] = typer.Option(None, "--ttft-slo-ms", help="TTFT SLO for the table, ms."),
    token: Optional[str] = typer.Option(None, "--token", envvar="FLOTILLA_TOKEN", help="Bearer token / API key."),
    as_json: bool = json_option(),
) -> None:
    """Sweep request rates against a running server; write the sweep and (with --table) a measured rate table."""
    from cluster.catalog import default_catalog
    from cluster.shell.profiler import open_target, provenance, reduce_to_table, run_sweep

    kind = default_catalog().resolve(kind)
    ins, outs, rs = _ints("--inputs", inputs), _ints("--outputs", outputs), _rates(rates)
    if not 1 <= requests <= 100_000:
        raise InputError(f"--requests: {requests}; allowed: 1..100000")
    for flag, v in (("--tpot-slo-ms", tpot_slo_ms), ("--ttft-slo-ms", ttft_slo_ms)):
        if v is not None and not (math.isfinite(v) and v > 0):
            raise InputError(f"{flag}: {v!r}; allowed: a number > 0")
    if table is not None and tpot_slo_ms is None and ttft_slo_ms is None:
        raise InputError("--table: needs --tpot-slo-ms or --ttft-slo-ms (the SLO the table is reduced under)")
    meta = provenance(kind=kind, engine=engine, model=model, target=target)
    sweep = Path(out_file)
    conn = open_target(target, model=model, token=token)
    total = len(ins) * len(outs) * len(rs)
    try:
        with progress(total, f"profiling {target}") as advance:
            points = list(run_sweep(conn, inputs=ins, outputs=outs, rates=rs, requests=requests, out=sweep, meta=meta,
                                    on_point=lambda n, _t, s: advance(n, f"{s['input_tokens']}/{s['output_tokens']} "
                                                                        f"@ {s['request_rate']:g} req/s")))
    finally:
        conn.close()
    doc: dict[str, Any] = {"sweep": str(sweep), "points": points, **meta, "measured": True}
    if table is not None:
        tab = reduce_to_table(sweep, kind=kind, tpot_slo_ms=tpot_slo_ms, ttft_slo_ms=ttft_slo_ms, meta=meta)
        Path(table).write_text(__import__("json").dumps(tab, indent=1) + "\n")
        doc["table"] = table
    if as_json:
        emit_json(doc)
        return
    t = Table(title=f"{engine} {model} on {kind} ({target}): measured")
    for col in ("in", "out", "req/s", "tput", "TTFT p99 ms", "TPOT p99 ms", "failed"):
        t.add_column(col, justify="right")
    for p in points:
        if p["skipped"]:
            t.add_row(str(p["input_tokens"]), str(p["output_tokens"]), f"{p['request_rate']:g}", "(in file)", "", "", "")
            continue
        t.add_row(str(p["input_tokens"]), str(p["output_tokens"]), f"{p['request_rate']:g}", f"{p['throughput']:.2f}",
                  f"{1e3 * p.get('ttft_p99_s', math.nan):.0f}", f"{1e3 * p.get('tpot_p99_s', math.nan):.1f}", str(p["failed"]))
    out.print(t)
    out.print(f"sweep: {sweep}" + (f"; table: {table}" if table else ""))


def register(app: typer.Typer) -> None:
    app.command("profile")(profile)
