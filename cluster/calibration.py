"""Calibration: fit cluster/perf's efficiency factors per device kind to measurements.

Two fits, each reporting the error before (the default :class:`~cluster.perf.Efficiency`) and after:

* :func:`fit_operator_efficiency` fits ``(e_c, e_m, o_k)`` of one kind to measured per-layer
  projection times (Vidur, :func:`cluster.opmodel.load_vidur`): with each projection's roofline
  ``t = max(F / (P e_c), Q / (B e_m)) + o_k``, it minimises ``sum_rows log(pred / measured)^2``
  over the layer sums (scipy's bounded ``least_squares``; ``e_c, e_m`` in [0.05, 1], ``o_k`` in
  [0, 50 µs]).
* :func:`fit_capacity_scale` fits one scale ``s`` per kind so that the modeled max request rate
  (:func:`solvers.tables.max_rate` over :func:`cluster.tables.server_model`) at one request shape
  and TPOT SLO equals a published capacity. ``s`` multiplies ``e_c``, ``e_m`` and ``e_a`` (the
  other factors stay at their defaults); the rate grows with ``s``, so ``s`` is found by bisection
  on ``log s`` in [1e-3, s_max], where ``s_max`` keeps every efficiency <= 1. One point per kind
  gives one free parameter, no more.

A :class:`Profile` is a named set of per-kind efficiencies with its provenance and errors; the
shipped ones live in ``cluster/data/calibration/<name>.json`` (:func:`load_profile`). The
``melange-2024`` profile is fitted only to the Mélange paper's published capacities (Fig. 9:
A100 about 2.0 req/s, A10G about 0.36 req/s per GPU at [1000 in, 250 out], Llama-2-7B, vLLM 0.2.7).
Figures computed from a profile are still *modeled*: calibrated, not measured.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cluster import perf
from cluster.exceptions import InputError
from cluster.models import ModelShape
from solvers import validate

PROFILE_DIR = Path(__file__).with_name("data") / "calibration"

#: The Mélange paper's per-GPU capacities (Fig. 9), Llama-2-7B, requests of [1000 in, 250 out].
MELANGE_CAPACITY: dict[str, float] = {"a100-80g-sxm": 2.0, "a10g": 0.36}
MELANGE_SHAPE = (1000, 250)


@dataclass(frozen=True, slots=True)
class Profile:
    """A named calibration: per-kind :class:`~cluster.perf.Efficiency` plus where it came from.

    ``fits`` holds, per kind, what was fitted to (``target``), the error before and after, and the
    fitted parameters, JSON-ready.
    """

    name: str
    description: str
    efficiency: dict[str, perf.Efficiency]
    fits: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate.name("Profile.name", self.name)
        for kind, eff in self.efficiency.items():
            if not isinstance(eff, perf.Efficiency):
                raise InputError(f"Profile.efficiency[{kind!r}]: expected an Efficiency, got {eff!r}")

    def for_kind(self, kind: str) -> perf.Efficiency:
        """The kind's calibrated efficiency, or the defaults for a kind the profile lacks."""
        return self.efficiency.get(kind, perf.DEFAULT_EFFICIENCY)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "modeled": True,
                "efficiency": {k: dataclasses.asdict(e) for k, e in sorted(self.efficiency.items())},
                "fits": self.fits}

    @classmethod
    def from_dict(cls, doc: dict[str, Any], where: str = "profile") -> Profile:
        try:
            effs = {k: perf.Efficiency(**v) for k, v in doc["efficiency"].items()}
            return cls(doc["name"], doc.get("description", ""), effs, doc.get("fits", {}))
        except (KeyError, TypeError, AttributeError) as exc:
            raise InputError(f"{where}: not a calibration profile ({exc})") from None


def load_profile(name_or_path: str) -> Profile:
    """A shipped profile by name (``melange-2024``) or a profile JSON file by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILE_DIR / f"{name_or_path}.json"
    if not path.is_file():
        have = sorted(p.stem for p in PROFILE_DIR.glob("*.json"))
        raise InputError(f"calibration: no profile {name_or_path!r}; shipped: {', '.join(have) or 'none'}")
    return Profile.from_dict(json.loads(path.read_text()), str(path))


def save_profile(profile: Profile, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(profile.to_dict(), indent=1, sort_keys=False) + "\n")
    return p


# ------------------------------------------------------------------------- operator-time fit


def _layer_roofline(gemms: tuple[np.ndarray, np.ndarray, np.ndarray], row: np.ndarray, n_rows: int, spec: Any,
                    e_c: float, e_m: float, o_k: float, elem_bytes: float = 2.0) -> np.ndarray:
    m, n, k = gemms
    flops = 2.0 * m * n * k
    nbytes = elem_bytes * (m * k + k * n + m * n)
    t = np.maximum(flops / (spec.flops_fp16 * e_c), nbytes / (spec.mem_bw_bytes_s * e_m)) + o_k
    return np.bincount(row, weights=t, minlength=n_rows)


def _errors(pred: np.ndarray, meas: np.ndarray) -> dict[str, float]:
    err = np.abs(pred / meas - 1)
    return {"median": float(np.median(err)), "p90": float(np.percentile(err, 90)), "n": int(err.size)}


def fit_operator_efficiency(kind: str, catalog: Any) -> tuple[perf.Efficiency, dict[str, Any]]:
    """Fit ``(e_c, e_m, o_k)`` of ``kind`` to Vidur's layer times (module docstring)."""
    from scipy.optimize import least_squares

    from cluster.opmodel import load_vidur

    rows = load_vidur()
    sel = rows.device == kind
    if not sel.any():
        raise InputError(f"device: no measured operator data for {kind!r}; have {sorted(set(rows.device.tolist()))}")
    spec = catalog.get(kind)
    ms, ns, ks, rr = [], [], [], []
    idx = np.flatnonzero(sel)
    for j, i in enumerate(idx):
        sh = rows.shapes[rows.model[i]]
        for n, k in perf.projection_gemms(sh["hidden"], sh["heads"], sh["kv_heads"], sh["ffn"], sh["gated"],
                                          int(rows.tp[i])).values():
            ms.append(rows.tokens[i]); ns.append(n); ks.append(k); rr.append(j)
    gemms = (np.array(ms, float), np.array(ns, float), np.array(ks, float))
    row = np.array(rr)
    meas = rows.layer_seconds[idx]
    d = perf.DEFAULT_EFFICIENCY

    def resid(x: np.ndarray) -> np.ndarray:
        return np.log(_layer_roofline(gemms, row, len(idx), spec, x[0], x[1], x[2] * 1e-6) / meas)

    sol = least_squares(resid, x0=[d.compute, d.memory, d.kernel_overhead_s * 1e6],
                        bounds=([0.05, 0.05, 0.0], [1.0, 1.0, 50.0]))
    e_c, e_m, o_us = (float(v) for v in sol.x)
    eff = dataclasses.replace(d, compute=e_c, memory=e_m, kernel_overhead_s=o_us * 1e-6)
    before = _layer_roofline(gemms, row, len(idx), spec, d.compute, d.memory, d.kernel_overhead_s)
    after = _layer_roofline(gemms, row, len(idx), spec, e_c, e_m, o_us * 1e-6)
    return eff, {"target": "Vidur per-layer projection times (measured, fp16)", "rows": int(len(idx)),
                 "params": {"compute": e_c, "memory": e_m, "kernel_overhead_s": o_us * 1e-6},
                 "error_before": _errors(before, meas), "error_after": _errors(after, meas)}


# ------------------------------------------------------------------------------ capacity fit


def modeled_capacity(model: ModelShape, spec: Any, input_len: int, output_len: int, tpot_slo_s: float,
                     eff: perf.Efficiency = perf.DEFAULT_EFFICIENCY) -> float:
    """Modeled max request rate (req/s) of one ``spec`` device at one request shape and TPOT SLO."""
    from cluster.tables import ServingConfig, server_model
    from solvers.tables import max_rate

    return max_rate(server_model(model, spec, ServingConfig(efficiency=eff)), input_len, output_len, tpot_slo_s).rate


def _scaled(s: float) -> perf.Efficiency:
    d = perf.DEFAULT_EFFICIENCY
    return dataclasses.replace(d, compute=d.compute * s, memory=d.memory * s, attention=d.attention * s)


def fit_capacity_scale(model: ModelShape, spec: Any, target_rps: float, input_len: int, output_len: int,
                       tpot_slo_s: float) -> tuple[perf.Efficiency, dict[str, Any]]:
    """The efficiency scale ``s`` whose modeled capacity equals ``target_rps`` (module docstring)."""
    target = validate.real("target_rps", target_rps, lo=0.0, lo_open=True)
    d = perf.DEFAULT_EFFICIENCY
    s_max = 1.0 / max(d.compute, d.memory, d.attention)
    rate = lambda s: modeled_capacity(model, spec, input_len, output_len, tpot_slo_s, _scaled(s))  # noqa: E731
    before = rate(1.0)
    lo, hi = 1e-3, s_max
    if rate(hi) < target:
        raise InputError(f"target_rps: {target} req/s is above what {spec.kind} reaches even at efficiency 1 "
                         f"({rate(hi):.3g} req/s)")
    if rate(lo) > target:
        raise InputError(f"target_rps: {target} req/s is below what {spec.kind} reaches at 0.1 % efficiency")
    for _ in range(60):  # bisection on log s; the rate is non-decreasing in s
        mid = math.sqrt(lo * hi)
        if rate(mid) < target:
            lo = mid
        else:
            hi = mid
        if hi / lo < 1 + 1e-6:
            break
    s = math.sqrt(lo * hi)
    after = rate(s)
    return _scaled(s), {
        "target": f"{target} req/s at [{input_len} in, {output_len} out], TPOT SLO {tpot_slo_s * 1e3:g} ms, "
                  f"{model.name}",
        "params": {"scale": s, "compute": d.compute * s, "memory": d.memory * s, "attention": d.attention * s},
        "rate_before_rps": before, "rate_after_rps": after,
        "error_before": abs(before / target - 1), "error_after": abs(after / target - 1),
    }


def melange_profile(tpot_slo_s: float = 0.120, catalog: Any = None) -> Profile:
    """The ``melange-2024`` profile: :data:`MELANGE_CAPACITY` fitted with :func:`fit_capacity_scale`."""
    from cluster.catalog import default_catalog
    from cluster.models import get_model

    cat = catalog or default_catalog()
    model = get_model("llama-2-7b")
    effs, fits = {}, {}
    for kind, rps in MELANGE_CAPACITY.items():
        effs[kind], fits[kind] = fit_capacity_scale(model, cat.get(kind), rps, *MELANGE_SHAPE, tpot_slo_s)
    return Profile("melange-2024", "fitted only to the Mélange paper's published per-GPU capacities (arXiv "
                   "2404.14527 Fig. 9: A100 ~2.0, A10G ~0.36 req/s at [1000 in, 250 out], Llama-2-7B, vLLM 0.2.7); "
                   f"TPOT SLO {tpot_slo_s * 1e3:g} ms assumed", effs, fits)


def vidur_profile(catalog: Any = None) -> Profile:
    """The ``vidur-2024`` profile: operator efficiencies of the kinds with Vidur data."""
    from cluster.catalog import default_catalog

    cat = catalog or default_catalog()
    effs, fits = {}, {}
    for kind in ("a100-80g-sxm", "h100-sxm"):
        effs[kind], fits[kind] = fit_operator_efficiency(kind, cat)
    return Profile("vidur-2024", "compute/memory efficiency and kernel overhead fitted to Vidur's measured "
                   "A100/H100 linear-layer times (microsoft/vidur @ 7d47513)", effs, fits)


#: Named profiles :func:`build_profile` can fit.
BUILDERS = {"melange-2024": melange_profile, "vidur-2024": vidur_profile}


def build_profile(name: str, tpot_slo_s: float = 0.120) -> Profile:
    """Fit the named profile from its sources."""
    validate.choice("--profile", name, tuple(BUILDERS))
    return melange_profile(tpot_slo_s) if name == "melange-2024" else vidur_profile()


__all__ = ["BUILDERS", "MELANGE_CAPACITY", "Profile", "build_profile", "fit_capacity_scale",
           "fit_operator_efficiency", "load_profile", "melange_profile", "modeled_capacity", "save_profile",
           "vidur_profile"]
