"""Mélange's solver input format, parsed into an :class:`~solvers.allocation.AllocationProblem`.

The schema (tyler-griggs/melange-release, ``melange/config/example.json`` @ d46ab43)::

    {
      "gpu_info": {NAME: {"cost": $/h, "tputs": [[req/s, ...], ...]}, ...},
      "workload_distribution": [[fraction, ...], ...],     # [input bucket][output bucket]
      "total_request_rate": req/s,
      "slice_factor": int
    }

``tputs[i][j]`` is the highest request rate one GPU sustains under the SLO on bucket (i, j);
0 (or null) means it cannot serve that bucket. The object is already loaded (the CLI reads the
file); errors name the JSON path, e.g. ``gpu_info.A10G.tputs[1]: expected 2 numbers, got 3``.
Names are kept as given; a caller maps them to catalog kinds.
"""

from __future__ import annotations

from typing import Any

from solvers.allocation import AllocationProblem, DeviceType, Workload
from solvers import validate
from solvers.exceptions import AllocationInputError, MelangeFormatError, did_you_mean

TOP_KEYS = ("gpu_info", "workload_distribution", "total_request_rate", "slice_factor")
GPU_KEYS = ("cost", "tputs")


def _keys(obj: dict, allowed: tuple[str, ...], path: str) -> None:
    for key in obj:
        if key not in allowed:
            raise MelangeFormatError(
                f"{path}: unknown key {key!r}; allowed: {list(allowed)}"
                + did_you_mean(str(key), allowed)
            )
    for key in allowed:
        if key not in obj:
            raise MelangeFormatError(f"{path}: missing key {key!r} (required: {list(allowed)})")


def _matrix(
    value: Any, path: str, shape: tuple[int, int] | None, *, allow_null: bool, what: str
) -> tuple[tuple[float | None, ...], ...]:
    """A [rows][cols] list of numbers; with ``shape`` its rows and columns must match."""
    if not isinstance(value, list) or not value:
        raise MelangeFormatError(f"{path}: expected a non-empty list of rows, got {value!r}")
    if shape is not None and len(value) != shape[0]:
        raise MelangeFormatError(
            f"{path}: expected {shape[0]} rows (one per input-length bucket of "
            f"workload_distribution), got {len(value)}"
        )
    width = shape[1] if shape is not None else None
    rows = []
    for i, row in enumerate(value):
        if not isinstance(row, list) or not row:
            raise MelangeFormatError(f"{path}[{i}]: expected a non-empty list of {what}, got {row!r}")
        if width is None:
            width = len(row)
        if len(row) != width:
            raise MelangeFormatError(f"{path}[{i}]: expected {width} {what}, got {len(row)}")
        rows.append(
            tuple(validate.real(f"{path}[{i}][{j}]", v, lo=0.0, allow_none=allow_null, error=MelangeFormatError) for j, v in enumerate(row))
        )
    return tuple(rows)


def parse_melange_config(obj: dict) -> AllocationProblem:
    """Validate a loaded Mélange config and return the equivalent :class:`AllocationProblem`.

    Raises:
        MelangeFormatError: a missing or unknown key, a wrong type, a negative number, or a
            ``tputs`` table whose shape differs from ``workload_distribution``; the message names
            the JSON path.
    """
    if not isinstance(obj, dict):
        raise MelangeFormatError(f"(root): expected a JSON object, got {type(obj).__name__}")
    _keys(obj, TOP_KEYS, "(root)")

    hist = _matrix(
        obj["workload_distribution"], "workload_distribution", None, allow_null=False,
        what="numbers",
    )
    shape = (len(hist), len(hist[0]))
    rate = validate.real("total_request_rate", obj["total_request_rate"], lo=0.0, error=MelangeFormatError)
    factor = obj["slice_factor"]
    if not isinstance(factor, int) or isinstance(factor, bool) or factor < 1:
        raise MelangeFormatError(f"slice_factor: expected an integer >= 1, got {factor!r}")

    gpu_info = obj["gpu_info"]
    if not isinstance(gpu_info, dict) or not gpu_info:
        raise MelangeFormatError(
            f"gpu_info: expected a non-empty object {{name: {{cost, tputs}}}}, got {gpu_info!r}"
        )
    types = []
    for name, info in gpu_info.items():
        path = f"gpu_info.{name}"
        if not isinstance(info, dict):
            raise MelangeFormatError(f"{path}: expected an object {{cost, tputs}}, got {info!r}")
        _keys(info, GPU_KEYS, path)
        cost = validate.real(f"{path}.cost", info["cost"], lo=0.0, error=MelangeFormatError)
        tputs = _matrix(info["tputs"], f"{path}.tputs", shape, allow_null=True, what="numbers")
        try:
            types.append(DeviceType(name=name, price_per_hour=cost, max_rate=tputs))
        except AllocationInputError as e:  # e.g. an empty name
            raise MelangeFormatError(f"{path}: {e}") from e

    try:
        workload = Workload(histogram=hist, total_rate=rate)
    except AllocationInputError as e:  # the sum; entries were checked above
        raise MelangeFormatError(f"workload_distribution: {e}") from e
    return AllocationProblem(device_types=tuple(types), workload=workload, slice_factor=factor)
