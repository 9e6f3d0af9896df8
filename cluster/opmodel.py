"""A learned operator-time model: GEMM time from roofline features and a gradient-boosted learner.

The roofline (:mod:`cluster.perf`) says how fast a GEMM *could* run; measured kernels run slower by
a factor that depends on the shape: a decode GEMM with few tokens is launch and latency bound, a
partial last wave leaves SMs idle, a padded tile wastes FLOPs. This module learns that factor::

    y      = log(t_measured / t_roof)          t_roof = max(F / P, Q / B)  (peak, no efficiency)
    y_hat  = f(x)                              x = cluster.opfeatures.gemm_features(m, n, k, s, dev)
    t_hat  = t_roof * exp(y_hat)

``f`` is scikit-learn's :class:`~sklearn.ensemble.HistGradientBoostingRegressor` (or an
:class:`~sklearn.ensemble.ExtraTreesRegressor`, ``learner="extra-trees"``). Predicting the
log-ratio rather than the time keeps the target within a factor of a few for shapes spanning six
orders of magnitude of time, so a tree learner that has never seen a shape still lands near the
roofline scaled by what similar shapes measured (trees do not extrapolate a raw time).

Data (what the device has measurements for):

* :func:`load_vidur`: Vidur's per-layer times of the four projections on an A100 80GB SXM and an
  H100 SXM, fp16, for four model shapes, 1-4096 tokens, tensor parallel 1-8 (shipped, compact, in
  ``cluster/data/opdata/``; ``scripts/extract_opdata.py`` regenerates it). :func:`default_model`
  is fitted on all of it and covers ``(a100-80g-sxm | h100-sxm, fp16 | bf16)``.
* The RTX 4070 CUTLASS SGEMM sweep (GPPerf) is used only by ``bench/bench_opmodel.py`` from
  ``../shared/data``: that data has no licence, so nothing derived from it ships.

:func:`predict_layer` gives one layer's projection times: learned where :func:`default_model`
covers the (kind, dtype), :func:`cluster.perf.linear_layer_time`'s roofline otherwise, and says
which. Every figure is *modeled* (a prediction), never a measurement.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cluster import perf
from cluster.exceptions import InputError
from cluster.models import DTYPE_BYTES, check_dtype
from cluster.opfeatures import FEATURE_NAMES, SM_COUNT, GemmDevice, gemm_features, roofline_seconds
from solvers import validate

#: The shipped operator data (see the README there).
OPDATA_DIR = Path(__file__).with_name("data") / "opdata"

#: Learners :class:`OpTimeModel` knows.
LEARNERS: tuple[str, ...] = ("hgb", "extra-trees")

#: Dtypes that run at the fp16 tensor rate; measurements in one stand for the others.
_HALF = ("fp16", "bf16")


def gemm_device(spec: Any, dtype: str) -> GemmDevice:
    """The :class:`GemmDevice` of a catalog ``DeviceSpec`` for GEMMs in ``dtype``.

    Peak FLOP/s is :func:`cluster.perf.peak_flops` (fp32: half the fp16 figure); the SM count
    comes from :data:`cluster.opfeatures.SM_COUNT` (InputError for a kind without one).
    """
    if spec.kind not in SM_COUNT:
        raise InputError(f"device: no SM count for kind {spec.kind!r}; known: {', '.join(sorted(SM_COUNT))}")
    return GemmDevice(spec.kind, perf.peak_flops(spec, dtype), spec.mem_bw_bytes_s, SM_COUNT[spec.kind])


@dataclass(frozen=True, slots=True)
class GemmSamples:
    """Measured GEMMs: ``m``, ``n``, ``k``, time in seconds, and the device/dtype of each row.

    ``extra`` holds optional extra feature columns (e.g. the operand layout), one row per sample;
    ``groups`` labels rows for held-out splits (a model shape, an (m, n, k) shape).
    """

    devices: tuple[GemmDevice, ...]
    elem_bytes: np.ndarray
    m: np.ndarray
    n: np.ndarray
    k: np.ndarray
    seconds: np.ndarray
    groups: np.ndarray
    extra: np.ndarray | None = None

    def __post_init__(self) -> None:
        size = len(self.seconds)
        for name in ("devices", "elem_bytes", "m", "n", "k", "groups"):
            if len(getattr(self, name)) != size:
                raise InputError(f"GemmSamples.{name}: expected {size} rows, got {len(getattr(self, name))}")
        if self.extra is not None and len(self.extra) != size:
            raise InputError(f"GemmSamples.extra: expected {size} rows, got {len(self.extra)}")
        if size == 0:
            raise InputError("GemmSamples: expected at least one sample, got none")
        if not np.all(np.isfinite(self.seconds)) or np.any(np.asarray(self.seconds) <= 0):
            raise InputError("GemmSamples.seconds: expected finite times > 0")

    def subset(self, mask: np.ndarray) -> GemmSamples:
        """The rows where ``mask`` is true."""
        idx = np.flatnonzero(mask)
        return GemmSamples(tuple(self.devices[i] for i in idx), self.elem_bytes[idx], self.m[idx], self.n[idx],
                           self.k[idx], self.seconds[idx], self.groups[idx],
                           None if self.extra is None else self.extra[idx])


def design(devices: Sequence[GemmDevice], elem_bytes: np.ndarray, m: np.ndarray, n: np.ndarray,
           k: np.ndarray, extra: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(feature matrix, peak roofline seconds) of GEMM rows on possibly different devices."""
    x = np.empty((len(m), len(FEATURE_NAMES)))
    roof = np.empty(len(m))
    keys = [(d, float(s)) for d, s in zip(devices, elem_bytes)]
    for key in set(keys):
        rows = np.array([kk == key for kk in keys])
        dev, s = key
        x[rows] = gemm_features(m[rows], n[rows], k[rows], s, dev)
        roof[rows] = roofline_seconds(m[rows], n[rows], k[rows], s, dev)
    if extra is not None:
        x = np.hstack([x, np.asarray(extra, dtype=np.float64).reshape(len(m), -1)])
    return x, roof


def _learner(name: str, seed: int) -> Any:
    from sklearn.ensemble import ExtraTreesRegressor, HistGradientBoostingRegressor

    if name == "hgb":
        return HistGradientBoostingRegressor(max_iter=300, learning_rate=0.08, max_leaf_nodes=31,
                                             min_samples_leaf=10, random_state=seed)
    return ExtraTreesRegressor(n_estimators=150, min_samples_leaf=2, random_state=seed, n_jobs=1)


@dataclass(slots=True)
class OpTimeModel:
    """``t_hat = t_roof exp(f(x))`` (module docstring), fitted with :meth:`fit`.

    ``covers`` is the set of ``(kind, elem_bytes)`` the training data held; :meth:`predict` refuses
    other devices only through :func:`predict_layer`'s choice (the model itself predicts anywhere).
    """

    learner: str = "hgb"
    seed: int = 0
    covers: frozenset[tuple[str, float]] = frozenset()
    _est: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        validate.choice("learner", self.learner, LEARNERS)

    def fit(self, data: GemmSamples) -> OpTimeModel:
        """Fit ``f`` on ``log(seconds / t_roof)``; returns self."""
        from threadpoolctl import threadpool_limits

        x, roof = design(data.devices, data.elem_bytes, data.m, data.n, data.k, data.extra)
        est = _learner(self.learner, self.seed)  # imports sklearn (and its OpenMP) before the limit
        with threadpool_limits(1):  # no oversubscription on shared cores
            self._est = est.fit(x, np.log(data.seconds / roof))
        self.covers = frozenset((d.kind, float(s)) for d, s in zip(data.devices, data.elem_bytes))
        return self

    def predict(self, devices: Sequence[GemmDevice], elem_bytes: np.ndarray, m: np.ndarray, n: np.ndarray,
                k: np.ndarray, extra: np.ndarray | None = None) -> np.ndarray:
        """Predicted seconds of each GEMM row."""
        if self._est is None:
            raise InputError("OpTimeModel: call fit() before predict()")
        from threadpoolctl import threadpool_limits

        x, roof = design(devices, np.asarray(elem_bytes, float), np.asarray(m), np.asarray(n), np.asarray(k), extra)
        with threadpool_limits(1):
            return roof * np.exp(self._est.predict(x))

    def predict_data(self, data: GemmSamples) -> np.ndarray:
        """Predicted seconds of the rows of ``data``."""
        return self.predict(data.devices, data.elem_bytes, data.m, data.n, data.k, data.extra)


# ------------------------------------------------------------------------------------ Vidur data


@dataclass(frozen=True, slots=True)
class LayerRows:
    """Vidur's layer rows: device kind, model, tp, tokens and the four projection times (s)."""

    device: np.ndarray
    model: np.ndarray
    tp: np.ndarray
    tokens: np.ndarray
    seconds: dict[str, np.ndarray]
    shapes: dict[str, dict[str, Any]]

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def layer_seconds(self) -> np.ndarray:
        """Sum of the four projections per row."""
        return sum(self.seconds[p] for p in perf.PROJECTIONS)

    def gemms(self, catalog: Any) -> tuple[GemmSamples, np.ndarray]:
        """One GEMM sample per (row, projection), grouped by model; and the row index of each."""
        devs, eb, m, n, k, t, g, row = [], [], [], [], [], [], [], []
        gd = {kind: gemm_device(catalog.get(kind), "fp16") for kind in set(self.device.tolist())}
        for i in range(len(self)):
            sh = self.shapes[self.model[i]]
            ops = perf.projection_gemms(sh["hidden"], sh["heads"], sh["kv_heads"], sh["ffn"], sh["gated"],
                                        int(self.tp[i]))
            for p in perf.PROJECTIONS:
                devs.append(gd[self.device[i]]); eb.append(2.0); m.append(int(self.tokens[i]))
                n.append(ops[p][0]); k.append(ops[p][1]); t.append(self.seconds[p][i]); g.append(self.model[i])
                row.append(i)
        return (GemmSamples(tuple(devs), np.array(eb), np.array(m), np.array(n), np.array(k), np.array(t),
                            np.array(g)), np.array(row))


def load_vidur(directory: Path | str = OPDATA_DIR) -> LayerRows:
    """Read ``vidur_models.csv`` and ``vidur_linear.csv`` (written by scripts/extract_opdata.py)."""
    directory = Path(directory)
    shapes: dict[str, dict[str, Any]] = {}
    with (directory / "vidur_models.csv").open(newline="") as fh:
        for r in csv.DictReader(fh):
            shapes[r["model"]] = {"hidden": int(r["n_embd"]), "heads": int(r["n_head"]),
                                  "kv_heads": int(r["n_kv_head"]), "ffn": int(r["n_expanded_embd"]),
                                  "gated": r["use_gated_mlp"] == "True"}
    cols: dict[str, list[Any]] = {c: [] for c in ("device", "model", "tp", "tokens", "qkv", "o", "up", "down")}
    with (directory / "vidur_linear.csv").open(newline="") as fh:
        for r in csv.DictReader(fh):
            cols["device"].append(r["device"]); cols["model"].append(r["model"])
            cols["tp"].append(int(r["tp"])); cols["tokens"].append(int(r["tokens"]))
            for p in perf.PROJECTIONS:
                cols[p].append(float(r[f"{p}_ms"]) * 1e-3)
    unknown = set(cols["model"]) - set(shapes)
    if unknown:
        raise InputError(f"vidur_linear.csv: models without a shape row: {sorted(unknown)}")
    return LayerRows(np.array(cols["device"]), np.array(cols["model"]), np.array(cols["tp"]),
                     np.array(cols["tokens"]), {p: np.array(cols[p]) for p in perf.PROJECTIONS}, shapes)


#: Bump when the features or the learner's settings change (invalidates cached fits).
MODEL_VERSION = 1


def cache_dir() -> Path:
    """Where fitted models are cached: ``$FLOTILLA_CACHE_DIR``, else ``$XDG_CACHE_HOME/flotilla``."""
    env = os.environ.get("FLOTILLA_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "flotilla"


def _data_key() -> str:
    import sklearn

    params = sorted(_learner("hgb", 0).get_params().items())
    h = hashlib.sha256(f"v{MODEL_VERSION} sklearn {sklearn.__version__} features {FEATURE_NAMES} {params}".encode())
    for name in ("vidur_models.csv", "vidur_linear.csv"):
        h.update((OPDATA_DIR / name).read_bytes())
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def default_model() -> OpTimeModel:
    """The learned model fitted on all shipped Vidur data (A100 80GB SXM, H100 SXM; fp16).

    Fitting takes a few seconds on one core; the fit is cached on disk (:func:`cache_dir`, keyed by
    the data, the features and the scikit-learn version) and in the process.
    """
    path = cache_dir() / f"opmodel-{_data_key()}.pkl"
    if path.is_file():
        try:
            with path.open("rb") as fh:
                model = pickle.load(fh)
            if isinstance(model, OpTimeModel):
                return model
        except Exception:  # a stale or truncated cache file: refit below
            pass
    from cluster.catalog import default_catalog

    samples, _ = load_vidur().gemms(default_catalog())
    model = OpTimeModel("hgb").fit(samples)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with tmp.open("wb") as fh:
            pickle.dump(model, fh)
        os.replace(tmp, path)
    except OSError:  # a read-only home: keep the in-process fit only
        pass
    return model


def learned_covers(kind: str, dtype: str) -> bool:
    """Whether the shipped data has measurements for ``kind`` at ``dtype``'s tensor rate."""
    return dtype in _HALF and kind in _shipped_kinds()


@functools.lru_cache(maxsize=1)
def _shipped_kinds() -> frozenset[str]:
    with (OPDATA_DIR / "vidur_linear.csv").open(newline="") as fh:
        return frozenset(r["device"] for r in csv.DictReader(fh))


# ------------------------------------------------------------------------------ layer prediction


#: The largest token count in the shipped measurements.
MAX_TOKENS = 4096


@dataclass(frozen=True, slots=True)
class LayerPrediction:
    """One layer's projection times (ms, modeled) per token count, and which model predicted them.

    ``predictor`` is ``"learned"`` (:func:`default_model`) or ``"roofline"``
    (:func:`cluster.perf.linear_layer_time`); ``ops_ms`` maps each projection to its times.
    ``extrapolated`` lists the token counts outside the measured range (1 to :data:`MAX_TOKENS`)
    where the learned model answers by extrapolation.
    """

    device: str
    dtype: str
    tokens: tuple[int, ...]
    layer_ms: tuple[float, ...]
    ops_ms: dict[str, tuple[float, ...]]
    predictor: str
    gemms: dict[str, tuple[int, int]]
    extrapolated: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with ``modeled: true``."""
        return {"device": self.device, "dtype": self.dtype, "tokens": list(self.tokens),
                "layer_ms": list(self.layer_ms), "ops_ms": {p: list(v) for p, v in self.ops_ms.items()},
                "gemms_nk": {p: list(v) for p, v in self.gemms.items()}, "predictor": self.predictor,
                "extrapolated_tokens": list(self.extrapolated), "modeled": True}


def predict_layer(spec: Any, hidden: int, heads: int, kv_heads: int, ffn: int, tokens: Sequence[int],
                  gated: bool = False, tp: int = 1, dtype: str = "fp16", learned: bool | None = None,
                  eff: perf.Efficiency = perf.DEFAULT_EFFICIENCY) -> LayerPrediction:
    """Times of one layer's four projections on ``spec`` (a catalog DeviceSpec) at each token count.

    ``learned=None`` picks the learned model where :func:`learned_covers` the (kind, dtype), the
    roofline (:func:`cluster.perf.linear_layer_time` with ``eff``) otherwise; True/False force one
    (True on an uncovered kind is an InputError).
    """
    check_dtype("dtype", dtype)
    if isinstance(tokens, (str, bytes)) or not isinstance(tokens, Sequence) or not tokens:
        raise InputError(f"tokens: expected a non-empty list of integers >= 1, got {tokens!r}")
    toks = tuple(validate.integer("tokens", t, minimum=1) for t in tokens)
    gemms = perf.projection_gemms(hidden, heads, kv_heads, ffn, gated, tp)
    covered = learned_covers(spec.kind, dtype)
    if learned is None:
        learned = covered
    elif learned and not covered:
        raise InputError(f"device: no measured operator data for {spec.kind!r} at {dtype}; learned model "
                         f"covers {', '.join(sorted(_shipped_kinds()))} at fp16/bf16")
    ops: dict[str, tuple[float, ...]] = {}
    if learned:
        model, dev = default_model(), gemm_device(spec, "fp16")
        size, names = len(toks), list(gemms)
        n = np.repeat([gemms[p][0] for p in names], size)
        k = np.repeat([gemms[p][1] for p in names], size)
        m = np.tile(np.array(toks), len(names))
        sec = model.predict([dev] * len(m), np.full(len(m), DTYPE_BYTES[dtype]), m, n, k)
        for j, p in enumerate(names):
            ops[p] = tuple(float(s) * 1e3 for s in sec[j * size:(j + 1) * size])
    else:
        for p, (n, k) in gemms.items():
            ops[p] = tuple(perf.gemm_time(t, n, k, spec, dtype, eff) * 1e3 for t in toks)
    layer = tuple(sum(ops[p][i] for p in perf.PROJECTIONS) for i in range(len(toks)))
    outside = tuple(t for t in toks if t > MAX_TOKENS) if learned else ()
    return LayerPrediction(spec.kind, dtype, toks, layer, ops, "learned" if learned else "roofline", gemms, outside)
