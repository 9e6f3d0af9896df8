"""Benchmark of the learned operator-time model (issue 11, part 3) on shape-held-out splits.

    python bench/bench_opmodel.py --out bench/results/opmodel.json [--gpperf DIR] [--quick]

Part 1, Vidur (A100 80GB SXM and H100 SXM, fp16; cluster/data/opdata): one transformer layer's four
projections (QKV, O, up/gate, down) measured at 1-4096 tokens and tp 1-8 for four model shapes.
Leave one MODEL SHAPE out: fit on the other three models (both devices), predict every GEMM of the
held-out model, sum the four into the layer time, and score |pred / measured - 1| per row. Reported
by device: median and 90th percentile over all four folds. Variants:

* ``hgb`` (the product's learner) and ``extra-trees``;
* ``hgb-strict``: also drops from training every GEMM whose (n, k) equals one of the held-out
  model's (CodeLlama-34B and Llama-2-70B share their attention projections), so no held-out
  GEMM shape is ever seen;
* ``roofline``: cluster/perf.py's ``linear_layer_time`` with the default efficiencies (the model
  before this work) and ``roofline-fitted``: the same with one constant factor per device fitted on
  the training models (the best a calibrated roofline can do).

Part 2, GPPerf (RTX 4070, CUTLASS SIMT SGEMM fp32, 16,128 runs; ../shared/data/gpperf, not
shipped: no licence). The 28 repeats of each of the 576 real settings (36 (m, n, k) shapes x 4
operand layouts x 4 (alpha, beta)) are reduced to their median. Held out by (m, n, k) shape:
leave-one-shape-out (36 folds, R^2 over the pooled predictions) and 20 random 80/20 group splits
(R^2 per split). Features: cluster/opfeatures plus the operand layout (one-hot) and beta != 0.
Baselines: the peak roofline times a constant fitted on the training shapes, and the paper's
recipe (RandomForest, max_depth 6, on m, n, k, intensity, bytes, FLOPs) under the same splits.

Every predicted figure is modeled. Writes one JSON file and prints a summary.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # the dev VM has 2 shared cores

import numpy as np
from rich.progress import Progress

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cluster import perf  # noqa: E402
from cluster.catalog import default_catalog  # noqa: E402
from cluster.opfeatures import GemmDevice, SM_COUNT  # noqa: E402
from cluster.opmodel import GemmSamples, OpTimeModel, design, load_vidur  # noqa: E402


def _shared_data() -> Path:
    for up in ROOT.parents:
        if (up / "shared" / "data").is_dir():
            return up / "shared" / "data"
    return ROOT.parent / "shared" / "data"


def _stats(err: np.ndarray) -> dict[str, float]:
    return {"n": int(err.size), "median": float(np.median(err)), "p90": float(np.percentile(err, 90)),
            "mean": float(np.mean(err)), "max": float(np.max(err))}


# ----------------------------------------------------------------------------------------- Vidur


def bench_vidur(progress: Progress, quick: bool) -> dict:
    cat = default_catalog()
    rows = load_vidur()
    samples, row_of = rows.gemms(cat)
    measured = rows.layer_seconds
    models = sorted(rows.shapes)
    variants = ["hgb", "hgb-strict", "extra-trees"] if not quick else ["hgb"]
    out: dict = {"rows": len(rows), "gemms": int(len(samples.seconds)), "models": models,
                 "devices": sorted(set(rows.device.tolist())), "variants": {}}
    # roofline baselines need no fitting
    roof = np.array([perf.linear_layer_time(int(rows.tokens[i]), **_shape(rows, i), device=cat.get(rows.device[i]),
                                            tp=int(rows.tp[i]), dtype="fp16") for i in range(len(rows))])
    pred: dict[str, np.ndarray] = {v: np.zeros(len(rows)) for v in variants + ["roofline-fitted"]}
    pred["roofline"] = roof
    task = progress.add_task("vidur: leave one model out", total=len(models) * len(variants))
    fit_s: dict[str, list[float]] = defaultdict(list)
    for held in models:
        test_rows = rows.model == held
        test_g = samples.groups == held
        for dev in out["devices"]:  # roofline-fitted: one factor per device from the training models
            tr = ~test_rows & (rows.device == dev)
            factor = np.median(measured[tr] / roof[tr])
            sel = test_rows & (rows.device == dev)
            pred["roofline-fitted"][sel] = roof[sel] * factor
        held_nk = set(zip(samples.n[test_g].tolist(), samples.k[test_g].tolist()))
        seen_nk = np.array([(n, k) in held_nk for n, k in zip(samples.n.tolist(), samples.k.tolist())])
        for v in variants:
            train = ~test_g & ~seen_nk if v == "hgb-strict" else ~test_g
            t0 = time.perf_counter()
            model = OpTimeModel("extra-trees" if v == "extra-trees" else "hgb").fit(samples.subset(train))
            fit_s[v].append(time.perf_counter() - t0)
            p = model.predict_data(samples.subset(test_g))
            pred[v][test_rows] = np.bincount(row_of[test_g], weights=p, minlength=len(rows))[test_rows]
            progress.advance(task)
    for v, p in pred.items():
        err = np.abs(p / measured - 1)
        res: dict = {"by_device": {d: _stats(err[rows.device == d]) for d in out["devices"]},
                     "by_device_model": {f"{d}/{m}": _stats(err[(rows.device == d) & (rows.model == m)])
                                         for d in out["devices"] for m in models}}
        if v in fit_s:
            res["fit_s_mean"] = float(np.mean(fit_s[v]))
        out["variants"][v] = res
    # a few held-out points, for the docs
    pts = []
    for d in out["devices"]:
        for tok in (1, 64, 512, 4096):
            i = int(np.flatnonzero((rows.device == d) & (rows.model == "Llama-2-7b-hf") & (rows.tp == 1)
                                   & (rows.tokens == tok))[0])
            pts.append({"device": d, "model": "Llama-2-7b-hf", "tp": 1, "tokens": tok,
                        "measured_ms": float(measured[i] * 1e3),
                        **{f"{v}_ms": float(pred[v][i] * 1e3) for v in ("roofline", "hgb")}})
    out["examples_held_out"] = pts
    return out


def _shape(rows, i: int) -> dict:
    return dict(rows.shapes[rows.model[i]])


# ---------------------------------------------------------------------------------------- GPPerf


def load_gpperf(path: Path) -> dict:
    """The 576 settings (median runtime of their repeats) of the flattened CUTLASS sweep."""
    runs: dict[tuple, list[float]] = defaultdict(list)
    with path.open(newline="") as fh:
        for r in csv.DictReader(fh):
            layout = r["kernel"].split("_")[-2]  # the real operand layout (README caveat 2)
            runs[(int(r["m"]), int(r["n"]), int(r["k"]), layout, float(r["alpha"]), float(r["beta"]))].append(
                float(r["runtime_ms"]))
    keys = sorted(runs)
    return {"n_runs": sum(len(v) for v in runs.values()), "keys": keys,
            "m": np.array([k[0] for k in keys]), "n": np.array([k[1] for k in keys]),
            "k": np.array([k[2] for k in keys]),
            "extra": np.array([[k[3] == lay for lay in ("nn", "nt", "tn", "tt")] + [k[5] != 0] for k in keys], float),
            "seconds": np.array([np.median(runs[k]) for k in keys]) * 1e-3}


def _r2(y: np.ndarray, p: np.ndarray) -> float:
    return float(1.0 - np.sum((y - p) ** 2) / np.sum((y - y.mean()) ** 2))


def bench_gpperf(path: Path, progress: Progress, quick: bool) -> dict:
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.model_selection import GroupShuffleSplit

    spec = default_catalog().get("rtx4070")
    dev = GemmDevice("rtx4070", perf.peak_flops(spec, "fp32"), spec.mem_bw_bytes_s, SM_COUNT["rtx4070"])
    d = load_gpperf(path)
    size = len(d["seconds"])
    groups = np.array([f"{a}x{b}x{c}" for a, b, c in zip(d["m"], d["n"], d["k"])])
    data = GemmSamples((dev,) * size, np.full(size, 4.0), d["m"], d["n"], d["k"], d["seconds"], groups, d["extra"])
    _, roof = design(data.devices, data.elem_bytes, data.m, data.n, data.k)
    y = data.seconds
    flops = 2.0 * d["m"] * d["n"] * d["k"]
    nbytes = 4.0 * (d["m"] * d["k"] + d["k"] * d["n"] + d["m"] * d["n"])
    paper_x = np.column_stack([d["m"], d["n"], d["k"], flops / nbytes, nbytes, flops])

    def fit_predict(method: str, tr: np.ndarray, te: np.ndarray) -> np.ndarray:
        if method in ("hgb", "extra-trees"):
            return OpTimeModel(method).fit(data.subset(tr)).predict_data(data.subset(te))
        if method == "roofline-fitted":
            return roof[te] * np.median(y[tr] / roof[tr])
        rf = RandomForestRegressor(n_estimators=100, max_depth=6, random_state=0, n_jobs=1)
        return rf.fit(paper_x[tr], y[tr]).predict(paper_x[te])

    methods = ["hgb", "extra-trees", "roofline-fitted", "paper-rf"]
    shapes = sorted(set(groups.tolist()))
    n_splits = 5 if quick else 20
    task = progress.add_task("gpperf: shape-held-out splits", total=len(methods) * (len(shapes) + n_splits))
    out: dict = {"runs": d["n_runs"], "settings": size, "shapes": len(shapes), "methods": {}}
    for method in methods:
        loso = np.zeros(size)
        for s in shapes:
            te = groups == s
            loso[te] = fit_predict(method, ~te, te)
            progress.advance(task)
        splits = []
        for seed in range(n_splits):
            tr, te = next(GroupShuffleSplit(n_splits=1, test_size=0.2, random_state=seed).split(y, y, groups))
            trm = np.zeros(size, bool); trm[tr] = True
            p = fit_predict(method, trm, ~trm)
            splits.append(_r2(y[~trm], p))
            progress.advance(task)
        ape = np.abs(loso / y - 1)
        out["methods"][method] = {
            "loso_r2_runtime": _r2(y, loso), "loso_r2_log_runtime": _r2(np.log(y), np.log(np.maximum(loso, 1e-12))),
            "loso_ape": _stats(ape),
            "group_split_r2": {"n": n_splits, "mean": float(np.mean(splits)), "median": float(np.median(splits)),
                               "min": float(np.min(splits)), "max": float(np.max(splits)),
                               "below_0.9": int(np.sum(np.array(splits) < 0.9)), "values": splits},
            "worst_shapes": sorted(((float(np.median(ape[groups == s])), s) for s in shapes), reverse=True)[:3],
        }
    return out


# ------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Learned operator-time model on shape-held-out splits.")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "opmodel.json")
    ap.add_argument("--gpperf", type=Path, default=_shared_data() / "gpperf" / "cutlass" / "cutlass_sgemm_runs_flat.csv")
    ap.add_argument("--quick", action="store_true", help="hgb only on Vidur, 5 group splits on GPPerf")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    result: dict = {
        "benchmark": "bench/bench_opmodel.py", "command": "python bench/bench_opmodel.py " + " ".join(argv or sys.argv[1:]),
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"), "host": platform.node(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "load_average_start": os.getloadavg()[0], "note": "all predicted figures are modeled",
        "targets": {"vidur_median": 0.05, "vidur_p90": 0.12, "gemm_r2": 0.9},
    }
    import sklearn

    result["sklearn"] = sklearn.__version__
    with Progress(transient=True) as progress:
        result["vidur"] = bench_vidur(progress, args.quick)
        if args.gpperf.is_file():
            result["gpperf"] = bench_gpperf(args.gpperf, progress, args.quick)
        else:
            result["gpperf"] = {"skipped": f"{args.gpperf} not found"}
    result["wall_s"] = time.perf_counter() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print("Vidur, model shape held out: |pred/measured - 1| of the layer's projections (modeled)")
    for v, res in result["vidur"]["variants"].items():
        cells = ", ".join(f"{d} med {s['median']:.1%} p90 {s['p90']:.1%}" for d, s in res["by_device"].items())
        print(f"  {v:16s} {cells}")
    if "methods" in result["gpperf"]:
        print("RTX 4070 SGEMM, (m, n, k) held out: R^2 of runtime")
        for mth, res in result["gpperf"]["methods"].items():
            g = res["group_split_r2"]
            print(f"  {mth:16s} leave-one-shape-out {res['loso_r2_runtime']:.3f}; 80/20 splits "
                  f"median {g['median']:.3f} mean {g['mean']:.3f} min {g['min']:.3f}")
    print(f"wrote {args.out} in {result['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
