"""Throughput-under-SLO tables for the allocation solver: modeled from cluster/perf, or measured.

The imperative shell around :mod:`solvers.tables`: it looks up model shapes and device specs,
turns ``cluster/perf`` into the callables of :class:`~solvers.tables.ServerModel`, and reads the
files (the paper's bucket grid, AIBrix rate sweeps). Every table built from the performance model
is *modeled* (``RateTable.source == "modeled"``), never a measurement.

Decode steps at a real batch ``B``: ``perf.decode_step_time`` takes integer batches; between
``floor(B)`` and ``ceil(B)`` it is interpolated linearly, which is exact inside one roofline regime
(both roofline terms are affine in the batch) and a chord of the convex max elsewhere. The context
is rounded to the nearest token.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cluster.exceptions import InputError
from cluster.workload_files import jsonl_objects
from cluster.models import ModelShape
from cluster.perf import (
    DEFAULT_EFFICIENCY,
    Efficiency,
    decode_step_time,
    kv_capacity_tokens,
    prefill_time,
)
from solvers.tables import (
    DEFAULT_MAX_BATCH,
    SWEEP_METRICS,
    SWEEP_PERCENTILES,
    BucketGrid,
    RateTable,
    ServerModel,
    SweepPoint,
    rate_table,
)

if TYPE_CHECKING:
    from cluster.catalog import DeviceSpec

DATA_DIR = Path(__file__).resolve().parent / "data"
PAPER_GRID_FILE = DATA_DIR / "paper_bucket_boundaries.csv"
AIBRIX_SAMPLE_FILE = DATA_DIR / "aibrix_sweep_sample_llama2_7b_a100.jsonl"


def load_bucket_grid(path: str | Path | None = None) -> BucketGrid:
    """A bucket grid from a CSV ``axis,index,boundary_tokens`` ('#' lines are comments).

    Default: the Mélange paper's 10 x 6 grid (``cluster/data/paper_bucket_boundaries.csv``).
    """
    p = Path(path) if path is not None else PAPER_GRID_FILE
    try:
        lines = [ln for ln in p.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    except OSError as e:
        raise InputError(f"bucket grid file {str(p)!r}: cannot read it ({e.strerror})") from None
    edges: dict[str, dict[int, int]] = {"input": {}, "output": {}}
    for n, row in enumerate(csv.DictReader(lines), start=2):
        axis = row.get("axis")
        if axis not in edges:
            raise InputError(f"{p}: row {n}: axis = {axis!r}; allowed: 'input', 'output'")
        try:
            edges[axis][int(row["index"])] = int(row["boundary_tokens"])
        except (TypeError, ValueError, KeyError):
            raise InputError(
                f"{p}: row {n}: index and boundary_tokens must be integers, got {row!r}"
            ) from None
    try:
        return BucketGrid(
            tuple(v for _, v in sorted(edges["input"].items())),
            tuple(v for _, v in sorted(edges["output"].items())),
        )
    except ValueError as e:
        raise InputError(f"{p}: {e}") from None


def paper_grid() -> BucketGrid:
    """The Mélange paper's 10 x 6 grid (inputs 25..16000, outputs 25..2000 tokens)."""
    return load_bucket_grid(None)


# ------------------------------------------------------------------------------------ modeled
@dataclass(frozen=True, slots=True)
class ServingConfig:
    """How the modeled vLLM-like server is set up.

    Attributes:
        gpu_memory_utilization: share of device memory the server may use (vLLM's default 0.9).
        max_batch: most running sequences (vLLM ``max_num_seqs``, default 256).
        efficiency: the roofline efficiency factors of cluster/perf (assumptions until calibrated).
    """

    gpu_memory_utilization: float = 0.9
    max_batch: int = DEFAULT_MAX_BATCH
    efficiency: Efficiency = DEFAULT_EFFICIENCY

    def __post_init__(self) -> None:
        u = self.gpu_memory_utilization
        if not isinstance(u, (int, float)) or isinstance(u, bool) or not 0 < u <= 1:
            raise InputError(f"ServingConfig.gpu_memory_utilization = {u!r}; allowed: (0, 1]")
        if not isinstance(self.max_batch, int) or isinstance(self.max_batch, bool) or self.max_batch < 1:
            raise InputError(f"ServingConfig.max_batch = {self.max_batch!r}; allowed: an integer >= 1")
        if not isinstance(self.efficiency, Efficiency):
            raise InputError(f"ServingConfig.efficiency = {self.efficiency!r}: expected an Efficiency")


def server_model(model: ModelShape, device: DeviceSpec, config: ServingConfig = ServingConfig()) -> ServerModel:
    """The :class:`ServerModel` of ``model`` on ``device``, from cluster/perf (modeled)."""
    eff = config.efficiency
    step_cache: dict[tuple[int, int], float] = {}

    def step(b: int, c: int) -> float:
        key = (b, c)
        if key not in step_cache:
            step_cache[key] = decode_step_time(model, device, b, c, eff)
        return step_cache[key]

    def decode_step_s(batch: float, context: float) -> float:
        c = max(0, round(context))
        lo = max(1, math.floor(batch))
        frac = batch - lo
        t_lo = step(lo, c)
        return t_lo if frac <= 0 else t_lo + frac * (step(lo + 1, c) - t_lo)

    def prefill_s(prompt_len: int) -> float:
        return prefill_time(model, device, 1, prompt_len, eff)

    kv = kv_capacity_tokens(model, device, config.gpu_memory_utilization)
    return ServerModel(decode_step_s, prefill_s, kv, config.max_batch)


def modeled_rate_table(
    model: ModelShape,
    device: DeviceSpec,
    grid: BucketGrid,
    tpot_slo_s: float,
    ttft_slo_s: float | None = None,
    config: ServingConfig = ServingConfig(),
) -> RateTable:
    """The max-rate table of ``model`` on ``device`` over ``grid`` under the SLOs (modeled).

    Raises:
        InputError: an SLO that is not a finite number > 0.
    """
    try:
        return rate_table(device.kind, server_model(model, device, config), grid, tpot_slo_s, ttft_slo_s)
    except ValueError as e:
        raise InputError(str(e)) from None


# ----------------------------------------------------------------------------------- measured
def load_rate_sweep(path: str | Path) -> list[SweepPoint]:
    """Read an AIBrix-format rate sweep (JSONL: one metric of one offered rate per line).

    Each line has ``input_tokens``, ``output_tokens``, ``request_rate``, ``metric`` (TPUT, TT,
    E2E, TTFT or TPOT) and ``mean`` (plus ``P50``/``P90``/``P99`` for latencies, in seconds).
    Lines of one (input_tokens, output_tokens, request_rate) are merged into one point; a point
    without a TPUT line is an error (its throughput decides whether the rate was sustained).
    """
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise InputError(f"rate sweep file {str(p)!r}: cannot read it ({e.strerror})") from None
    merged: dict[tuple[int, int, float], dict[str, Any]] = {}
    for n, rec in jsonl_objects(text, str(p)):
        for key in ("input_tokens", "output_tokens", "request_rate", "metric", "mean"):
            if key not in rec:
                raise InputError(f"{p}:{n}: missing field {key!r}")
        for key in ("input_tokens", "output_tokens"):
            if not isinstance(rec[key], int) or isinstance(rec[key], bool) or rec[key] < 1:
                raise InputError(f"{p}:{n}: field {key!r} = {rec[key]!r}; allowed: an integer >= 1")
        for key in ("request_rate", "mean", "P50", "P90", "P99"):
            v = rec.get(key)
            if key in rec and (not isinstance(v, (int, float)) or isinstance(v, bool)
                               or not math.isfinite(v) or v < 0):
                raise InputError(f"{p}:{n}: field {key!r} = {v!r}; allowed: a finite number >= 0")
        point = merged.setdefault(
            (rec["input_tokens"], rec["output_tokens"], float(rec["request_rate"])),
            {"latency": {}, "line": n},
        )
        metric = rec["metric"]
        if metric == "TPUT":
            point["throughput"] = float(rec["mean"])
        elif metric in SWEEP_METRICS:
            point["latency"][metric] = {
                k: float(rec[k]) for k in SWEEP_PERCENTILES if k in rec
            }
    points = []
    for (i, o, r), pt in merged.items():
        if "throughput" not in pt:
            raise InputError(
                f"{p}:{pt['line']}: input_tokens={i}, output_tokens={o}, request_rate={r} has no "
                f"TPUT line (the measured throughput)"
            )
        points.append(SweepPoint(i, o, r, pt["throughput"], pt["latency"]))
    return points


__all__ = [
    "AIBRIX_SAMPLE_FILE",
    "PAPER_GRID_FILE",
    "ServingConfig",
    "load_bucket_grid",
    "load_rate_sweep",
    "modeled_rate_table",
    "paper_grid",
    "server_model",
]
