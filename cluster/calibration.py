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

* :func:`engines_profile` (``engines-2026``, today's engines) joins the Vidur fit of the A100/H100
  and the H200 run (:func:`h200_fit`: ``e_c`` measured, ``(e_m, o_s)`` fitted to CUDA-graph decode
  steps). :func:`cpu_fit` fits the per-step overhead of flotilla's own engine on the cpu to its
  measured profile; it is reported, not shipped (the cpu's roofline rests on a noisy start-up probe).

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
        listed = "; ".join(f"{n} ({PROFILE_SUMMARIES[n]})" if n in PROFILE_SUMMARIES else n for n in have)
        raise InputError(f"calibration: no profile {name_or_path!r}; shipped: {listed or 'none'}")
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


# --------------------------------------------------------------- held-out check of melange-2024

#: The Mélange paper's prices (Table 1, $/h; the H100's normalised as in the paper).
MELANGE_PRICES: dict[str, float] = {"l4": 0.70, "a10g": 1.01, "a100-80g-sxm": 3.67, "h100-sxm": 7.516}
#: The paper's GPU labels -> catalog kinds.
MELANGE_LABELS: dict[str, str] = {"L4": "l4", "A10G": "a10g", "A100": "a100-80g-sxm", "H100": "h100-sxm"}


def capacity_loo(tpot_slo_s: float = 0.120, catalog: Any = None) -> dict[str, dict[str, Any]]:
    """Leave one out over the published capacities: one efficiency scale shared by all kinds,
    fitted on every capacity but the held-out kind's, predicts the held-out one.

    With two published points this is: fit ``s`` on the A100 and predict the A10G, and the reverse.
    A per-kind fit (the ``melange-2024`` profile) has no held-out capacity at all: its agreement with
    Fig. 9 is by construction.
    """
    from cluster.catalog import default_catalog
    from cluster.models import get_model

    cat, model = catalog or default_catalog(), get_model("llama-2-7b")
    out: dict[str, dict[str, Any]] = {}
    for held, target in MELANGE_CAPACITY.items():
        fitted = [k for k in MELANGE_CAPACITY if k != held]
        scales = [fit_capacity_scale(model, cat.get(k), MELANGE_CAPACITY[k], *MELANGE_SHAPE, tpot_slo_s)[1]
                  ["params"]["scale"] for k in fitted]
        s = math.exp(sum(math.log(v) for v in scales) / len(scales))
        pred = modeled_capacity(model, cat.get(held), *MELANGE_SHAPE, tpot_slo_s, _scaled(s))
        out[held] = {"fitted_on": fitted, "scale": s, "predicted_rps": pred, "published_rps": target,
                     "error": pred / target - 1}
    return out


def transfer_efficiency(profile: Profile, kind: str) -> perf.Efficiency:
    """The profile's efficiency for ``kind``; for a kind it lacks, the geometric mean of its fitted
    capacity scales applied to the defaults (a transfer, stated as such)."""
    if kind in profile.efficiency:
        return profile.efficiency[kind]
    scales = [f["params"]["scale"] for f in profile.fits.values() if "scale" in f.get("params", {})]
    if not scales:
        return perf.DEFAULT_EFFICIENCY
    return _scaled(math.exp(sum(math.log(v) for v in scales) / len(scales)))


def preferred_gpu(input_len: int, output_len: int, tpot_slo_s: float, labels: tuple[str, ...],
                  eff_of: Any, catalog: Any = None, cache: dict | None = None) -> str | None:
    """The label (of :data:`MELANGE_LABELS`) with the most requests per dollar at Mélange's prices
    for Llama-2-7B at one request shape and TPOT SLO; None when none of them can serve it."""
    from cluster.catalog import default_catalog
    from cluster.models import get_model

    cat, model = catalog or default_catalog(), get_model("llama-2-7b")
    cache = {} if cache is None else cache
    best, best_value = None, 0.0
    for label in labels:
        kind = MELANGE_LABELS[label]
        eff = eff_of(kind)
        key = (kind, input_len, output_len, tpot_slo_s, eff)
        if key not in cache:
            cache[key] = modeled_capacity(model, cat.get(kind), input_len, output_len, tpot_slo_s, eff)
        value = cache[key] / MELANGE_PRICES[kind]
        if value > best_value:
            best, best_value = label, value
    return best


# ------------------------------------------------------------------- today's engines (measured)

#: Measurements of today's engines in this repository (bench/results; present in a checkout).
RESULTS_DIR = Path(__file__).resolve().parents[1] / "bench" / "results"
H200_CHECK_FILE = RESULTS_DIR / "gpu_device_check_h200.json"
CPU_SWEEP_FILE = RESULTS_DIR / "profile_cpu_smollm2.jsonl"


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except OSError as exc:
        raise InputError(f"{what}: cannot read {str(path)!r} ({exc.strerror}); it is in bench/results of a "
                         "flotilla checkout") from None


def fit_decode_steps(model: ModelShape, spec: Any, rows: list[tuple[int, int, float]], compute: float,
                     ) -> tuple[perf.Efficiency, dict[str, Any]]:
    """Fit ``(e_m, o_s)`` to measured decode steps ``(batch, context, seconds)``, ``e_c`` given.

    Minimises ``sum log(decode_step_time / measured)^2`` (scipy's bounded ``least_squares``;
    ``e_m`` in [0.05, 1], ``o_s`` in [0, 50 ms]); ``e_c`` is the measured GEMM fraction of peak.
    """
    from scipy.optimize import least_squares

    d = perf.DEFAULT_EFFICIENCY
    meas = np.array([t for _, _, t in rows])

    def pred(eff: perf.Efficiency) -> np.ndarray:
        return np.array([perf.decode_step_time(model, spec, b, c, eff) for b, c, _ in rows])

    def eff_of(x: np.ndarray) -> perf.Efficiency:
        return dataclasses.replace(d, compute=compute, memory=float(x[0]), step_overhead_s=float(x[1]) * 1e-3)

    sol = least_squares(lambda x: np.log(pred(eff_of(x)) / meas), x0=[d.memory, d.step_overhead_s * 1e3],
                        bounds=([0.05, 0.0], [1.0, 50.0]))
    eff = eff_of(sol.x)
    return eff, {"params": {"compute": compute, "memory": eff.memory, "step_overhead_s": eff.step_overhead_s},
                 "error_before": _errors(pred(d), meas), "error_after": _errors(pred(eff), meas)}


def h200_fit(path: Path = H200_CHECK_FILE, catalog: Any = None) -> tuple[perf.Efficiency, dict[str, Any]]:
    """The H200 of ``bench/gpu_device_check.py``: ``e_c`` = measured bf16 GEMM / peak; ``(e_m, o_s)``
    fitted to the CUDA-graph decode steps of Llama-2-7B's shape (batch 1, 16, 64 at context 1000).
    The eager prefill times of the same file are reported before/after as a check, not fitted."""
    from cluster.catalog import default_catalog
    from cluster.models import get_model

    doc = _read_json(path, "h200")
    spec = (catalog or default_catalog()).get("h200-sxm")
    model = get_model("llama-2-7b")
    compute = float(doc["roofline"]["compute_fraction_of_peak"])
    rows = [(int(r["batch"]), int(r["context"]), float(r["decode_step_graph_s"])) for r in doc["decode_cuda_graph"]["rows"]]
    eff, fit = fit_decode_steps(model, spec, rows, compute)
    pre = [(int(r["batch"]), int(r["context"]), float(r["prefill_measured_s"])) for r in doc["llama_vs_model"]["rows"]]
    meas = np.array([t for _, _, t in pre])
    check = {label: _errors(np.array([perf.prefill_time(model, spec, b, c, e) for b, c, _ in pre]), meas)
             for label, e in (("before", perf.DEFAULT_EFFICIENCY), ("after", eff))}
    fit.update(target=f"H200 decode steps with CUDA graphs, Llama-2-7B shape, batch 1/16/64 at context 1000 "
                      f"(measured, {doc.get('date', '?')}); e_c = measured bf16 GEMM {compute:.3f} of peak",
               rows=len(rows), source=str(path.name),
               check_prefill_eager={"rows": len(pre), "error_before": check["before"], "error_after": check["after"]})
    return eff, fit


def cpu_fit(path: Path = CPU_SWEEP_FILE, catalog: Any = None) -> tuple[perf.Efficiency, dict[str, Any]]:
    """The ``cpu`` kind from ``flotilla profile``'s measured sweep of flotilla's own engine.

    The TPOT p50 at each shape's lowest offered rate is close to a batch-1 decode step; ``o_s`` is
    set so that the modeled batch-1 step at the mean context equals their mean (closed form:
    ``o_s = mean(measured - roofline)``, at least 0). The roofline terms use the host's figures as
    probed when fitting (recorded in ``host``): the cpu kind is measured, so a later probe on a busier
    or idler host moves them.
    """
    from cluster.models import get_model
    from cluster.probe import probed_catalog
    from cluster.tables import load_rate_sweep

    points = load_rate_sweep(path)
    if not points:
        raise InputError(f"cpu: {str(path)!r} holds no sweep points")
    spec = (catalog or probed_catalog()).get("cpu")
    lowest: dict[tuple[int, int], Any] = {}
    for pt in points:
        key = (pt.input_len, pt.output_len)
        if key not in lowest or pt.offered_rate < lowest[key].offered_rate:
            lowest[key] = pt
    first = json.loads(Path(path).read_text().splitlines()[0])
    model = get_model(first.get("model") or "smollm2-135m")
    rows = [(1, i + o // 2, float(pt.latency["TPOT"]["P50"])) for (i, o), pt in sorted(lowest.items())]
    meas = np.array([t for _, _, t in rows])
    d = perf.DEFAULT_EFFICIENCY
    roof = np.array([perf.decode_step_time(model, spec, b, c, d) - d.step_overhead_s for b, c, _ in rows])
    o_s = max(0.0, float(np.mean(meas - roof)))
    eff = dataclasses.replace(d, step_overhead_s=o_s)
    after = np.array([perf.decode_step_time(model, spec, b, c, eff) for b, c, _ in rows])
    return eff, {"target": f"TPOT p50 at the lowest offered rate of each profiled shape, flotilla's engine, "
                           f"{model.name} on this host (measured, {path.name})",
                 "rows": len(rows), "source": path.name,
                 "params": {"step_overhead_s": o_s},
                 "host": {"tflops_fp16": spec.tflops_fp16, "mem_bw_gbs": spec.mem_bw_gbs, "name": spec.name},
                 "error_before": _errors(roof + d.step_overhead_s, meas), "error_after": _errors(after, meas)}


def engines_profile(catalog: Any = None) -> Profile:
    """The ``engines-2026`` profile (today's engines): Vidur's A100/H100 operators and the H200 run,
    each kind fitted to measurements of a current kernel library or engine."""
    from cluster.catalog import default_catalog

    cat = catalog or default_catalog()
    effs, fits = {}, {}
    for kind in ("a100-80g-sxm", "h100-sxm"):
        effs[kind], fits[kind] = fit_operator_efficiency(kind, cat)
    effs["h200-sxm"], fits["h200-sxm"] = h200_fit(catalog=cat)
    # No cpu entry: its roofline rests on the start-up probe, which on a shared host varies by an
    # order of magnitude between runs, so an overhead fitted against one probe does not transfer
    # (cpu_fit reports it; plan the cpu from its measured table, --tables).
    return Profile("engines-2026", PROFILE_SUMMARIES["engines-2026"], effs, fits)


#: One line per shipped profile (``flotilla plan --help``, ``flotilla calibrate --help``, errors).
PROFILE_SUMMARIES = {
    "engines-2026": "today's engines: A100/H100 from Vidur's measured operator times (microsoft/vidur @ 7d47513), "
                    "H200 from its measured GEMM and CUDA-graph decode steps",
    "melange-2024": "the Mélange paper's setting (vLLM 0.2.7): A100/A10G fitted only to its published Fig. 9 capacities",
    "vidur-2024": "A100/H100 linear-layer efficiencies from Vidur's measured operator times only",
}

#: Named profiles :func:`build_profile` can fit.
BUILDERS = {"engines-2026": engines_profile, "melange-2024": melange_profile, "vidur-2024": vidur_profile}


def profiles_help() -> str:
    """``name (summary); ...`` of the shipped profiles, for help texts and errors."""
    return "; ".join(f"{name}: {text}" for name, text in sorted(PROFILE_SUMMARIES.items()))


def build_profile(name: str, tpot_slo_s: float = 0.120) -> Profile:
    """Fit the named profile from its sources."""
    validate.choice("--profile", name, tuple(BUILDERS))
    return melange_profile(tpot_slo_s) if name == "melange-2024" else BUILDERS[name]()


__all__ = ["BUILDERS", "MELANGE_CAPACITY", "MELANGE_LABELS", "MELANGE_PRICES", "PROFILE_SUMMARIES", "Profile", "build_profile", "cpu_fit",
           "engines_profile", "fit_capacity_scale", "fit_decode_steps", "fit_operator_efficiency", "h200_fit",
           "capacity_loo", "load_profile", "melange_profile", "modeled_capacity", "preferred_gpu", "profiles_help",
           "save_profile", "transfer_efficiency", "vidur_profile"]
