"""``flotilla perf layer``: modeled time of one transformer layer's four projections on a device kind.

Thin surface: parse and validate flags, call :func:`cluster.opmodel.predict_layer`, render. The
learned operator model predicts where the kind has measured operator data (A100 80GB SXM, H100 SXM
at fp16/bf16), the roofline of cluster/perf.py elsewhere; the output names which. Every figure is
modeled. Bad input raises :class:`~cluster.exceptions.InputError` (exit 2, naming the field).
"""

from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from cluster.exceptions import InputError
from cluster.shell.console import emit_json, err, json_option, out

perf_app = typer.Typer(name="perf", help="Modeled operator and layer times (learned where measured, roofline elsewhere).",
                       no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

PREDICTORS = ("auto", "learned", "roofline")


def parse_tokens(text: str) -> list[int]:
    """``"1,16,512"`` -> ``[1, 16, 512]``; InputError naming ``--tokens`` otherwise."""
    parts = [p.strip() for p in text.split(",")]
    try:
        vals = [int(p) for p in parts]
    except ValueError:
        raise InputError(f"--tokens: expected comma-separated integers >= 1 (e.g. 1,16,512), got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise InputError(f"--tokens: expected comma-separated integers >= 1 (e.g. 1,16,512), got {text!r}")
    return vals


@perf_app.command("layer")
def layer(
    device: str = typer.Option(..., "--device", help="Device kind or alias (e.g. a100-80g-sxm, H100, l4)."),
    hidden: int = typer.Option(..., "--hidden", help="Hidden size (n_embd)."),
    heads: int = typer.Option(..., "--heads", help="Query heads."),
    kv_heads: int = typer.Option(..., "--kv-heads", help="Key/value heads (GQA)."),
    ffn: int = typer.Option(..., "--ffn", help="MLP intermediate size."),
    gated: bool = typer.Option(False, "--gated", help="Gated MLP (SwiGLU): gate and up fused, 2 x ffn outputs."),
    tokens: str = typer.Option(..., "--tokens", help="Tokens in the step, comma-separated (decode: the batch)."),
    tp: int = typer.Option(1, "--tp", help="Tensor-parallel degree: times are for one of tp GPUs."),
    dtype: str = typer.Option("fp16", "--dtype", help="Compute dtype (fp16, bf16, fp8, fp32)."),
    predictor: str = typer.Option("auto", "--predictor", help="auto | learned | roofline."),
    calibration: Optional[str] = typer.Option(None, "--calibration", help="Roofline efficiencies from a calibration profile (name or JSON file)."),
    as_json: bool = json_option(),
) -> None:
    """Predict one layer's QKV, O, up/gate and down projection times (ms, modeled) at each token count."""
    from cluster.opmodel import learned_covers, predict_layer
    from cluster.probe import probed_catalog
    from solvers import validate

    validate.choice("--predictor", predictor, PREDICTORS)
    toks = parse_tokens(tokens)
    try:
        spec = probed_catalog().get(device)
    except InputError as exc:
        raise InputError(f"--device: {exc}") from None
    learned = None if predictor == "auto" else predictor == "learned"
    if learned or (learned is None and learned_covers(spec.kind, dtype)):
        err.print("[dim]fitting the learned operator model where it applies (a few seconds)…[/dim]")
    eff_kw = {}
    if calibration is not None:
        from cluster.calibration import load_profile

        eff_kw["eff"] = load_profile(calibration).for_kind(spec.kind)
    pred = predict_layer(spec, hidden, heads, kv_heads, ffn, toks, gated=gated, tp=tp, dtype=dtype, learned=learned,
                         **eff_kw)
    doc = pred.to_dict()
    doc["model"] = {"hidden": hidden, "heads": heads, "kv_heads": kv_heads, "ffn": ffn, "gated": gated, "tp": tp}
    doc["calibration"] = calibration if pred.predictor == "roofline" else None
    doc["note"] = ("modeled: " + ("learned from Vidur's measured A100/H100 times"
                                  if pred.predictor == "learned" else
                                  f"roofline, {'calibration ' + calibration if calibration else 'cluster/perf.py defaults'}")
                   + "; not a measurement")
    if as_json:
        emit_json(doc)
        return
    table = Table(title=f"one layer's projections on {spec.kind} ({dtype}, tp {tp}), ms, {pred.predictor}")
    for col in ("tokens", "qkv", "o", "up", "down", "layer"):
        table.add_column(col, justify="right")
    for i, t in enumerate(pred.tokens):
        table.add_row(str(t), *(f"{pred.ops_ms[p][i]:.4g}" for p in ("qkv", "o", "up", "down")),
                      f"{pred.layer_ms[i]:.4g}")
    out.print(table)
    if pred.extrapolated:
        out.print(f"tokens beyond the measured 1-4096: {', '.join(map(str, pred.extrapolated))} (extrapolated)")
    out.print(f"[dim]{doc['note']}[/dim]")


def register(app: typer.Typer) -> None:
    """Add the ``perf`` group to the ``flotilla`` app."""
    app.add_typer(perf_app, name="perf")
