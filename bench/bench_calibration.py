"""Calibration before/after (issue 11, part 2): the shipped profiles against their sources and a held-out check.

    python bench/bench_calibration.py --out bench/results/calibration.json [--melange DIR]

1. ``melange-2024`` refitted at TPOT SLO 40 and 120 ms: modeled capacity of Llama-2-7B at
   [1000 in, 250 out] on the A100 and the A10G against the Mélange paper's published 2.0 and
   0.36 req/s, with the default efficiencies (before) and the fitted ones (after). One parameter per
   kind is fitted to one point, so "after" matches by construction; the checks that can fail are 4 and
   bench/bench_calibration_holdout.py.
2. ``vidur-2024``: layer-time error (median, p90) of the roofline on Vidur's A100/H100 data before
   and after fitting (e_c, e_m, o_k); in-sample (bench/bench_opmodel.py has the held-out errors).
3. ``engines-2026`` (today's engines): the vidur-2024 fits plus the H200 run (e_c measured; e_m and
   the step overhead fitted to CUDA-graph decode steps; eager prefill as a check) and the cpu fit
   (step overhead of flotilla's engine against its measured profile; reported, not shipped: it
   rests on the host probe of the moment, recorded in the file).
4. Held out: the better GPU (tokens per dollar, Mélange prices A10G $1.01/h, A100 $3.67/h) per
   bucket of the paper's Fig. 3b (36 [input, output] points, read from the figure's colours;
   ../shared/data/melange), modeled with default and with melange-2024 efficiencies.

All rates are modeled. Writes one JSON file and prints a summary.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cluster import calibration as C  # noqa: E402
from cluster import perf  # noqa: E402
from cluster.catalog import default_catalog  # noqa: E402
from cluster.models import get_model  # noqa: E402

PRICES = {"a10g": 1.01, "a100-80g-sxm": 3.67}  # Mélange Table 1


def _shared() -> Path:
    for up in ROOT.parents:
        if (up / "shared" / "data").is_dir():
            return up / "shared" / "data"
    return ROOT.parent / "shared" / "data"


def fig3b(path: Path, slo_s: float, profile: C.Profile) -> dict:
    cat, model = default_catalog(), get_model("llama-2-7b")
    rows = list(csv.DictReader(path.open()))
    out = {}
    for label, eff in (("default", lambda k: perf.DEFAULT_EFFICIENCY), ("melange-2024", profile.for_kind)):
        agree = agree_hi = n_hi = 0
        for r in rows:
            p, o = int(r["input_tokens"]), int(r["output_tokens"])
            tpd = {k: C.modeled_capacity(model, cat.get(k), p, o, slo_s, eff(k)) / PRICES[k] for k in PRICES}
            better = "A100" if tpd["a100-80g-sxm"] > tpd["a10g"] else "A10G"
            agree += better == r["better_gpu"]
            if r["color_read_confidence"] == "high":
                n_hi += 1
                agree_hi += better == r["better_gpu"]
        out[label] = {"agree": agree, "n": len(rows), "agree_high_confidence": agree_hi, "n_high_confidence": n_hi}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Calibration before/after.")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "calibration.json")
    ap.add_argument("--melange", type=Path, default=_shared() / "melange")
    args = ap.parse_args(argv)
    res: dict = {"benchmark": "bench/bench_calibration.py",
                 "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"), "host": platform.node(),
                 "load_average_start": os.getloadavg()[0], "note": "all rates and times are modeled",
                 "melange_capacity_rps": C.MELANGE_CAPACITY, "melange": {}, "fig3b": {}}
    for slo in (0.040, 0.120):
        prof = C.melange_profile(slo)
        res["melange"][f"tpot_{slo * 1e3:g}ms"] = prof.fits
        f3 = args.melange / "fig3b_a10g_vs_a100_tdollar_llama2_7b.csv"
        if f3.is_file():
            res["fig3b"][f"tpot_{slo * 1e3:g}ms"] = fig3b(f3, slo, prof)
    res["vidur"] = C.vidur_profile().fits
    # engines-2026 (today's engines) = the vidur fits above + the H200 run; the cpu fit is reported only
    h200 = C.h200_fit()[1]
    cpu = C.cpu_fit()[1]
    res["engines"] = {"profile": "engines-2026", "h200-sxm": h200, "cpu_not_shipped": cpu}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    for key, fits in res["melange"].items():
        for kind, f in fits.items():
            print(f"melange {key} {kind}: {f['rate_before_rps']:.2f} -> {f['rate_after_rps']:.2f} req/s "
                  f"(scale {f['params']['scale']:.3f})")
    for key, f in res["fig3b"].items():
        print(f"fig3b {key}: " + ", ".join(f"{k} {v['agree']}/{v['n']}" for k, v in f.items()))
    for kind, f in res["vidur"].items():
        b, a = f["error_before"], f["error_after"]
        print(f"vidur {kind}: median {b['median']:.1%} -> {a['median']:.1%}, p90 {b['p90']:.1%} -> {a['p90']:.1%}")
    for kind, f in (("h200-sxm", res["engines"]["h200-sxm"]), ("cpu (not shipped)", res["engines"]["cpu_not_shipped"])):
        b, a = f["error_before"], f["error_after"]
        print(f"engines {kind}: median {b['median']:.1%} -> {a['median']:.1%}, p90 {b['p90']:.1%} -> {a['p90']:.1%}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
