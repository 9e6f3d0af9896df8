"""Held-out check of ``melange-2024``: what agrees with the Mélange paper by construction, and what is held out.

    python bench/bench_calibration_holdout.py --out bench/results/calibration_holdout.json [--melange DIR]

``melange-2024`` is fitted only to the paper's Fig. 9 capacities (A100 2.0, A10G 0.36 req/s at
[1000 in, 250 out]), one scale per kind: its agreement with Fig. 9 is by construction. Held out:

1. Leave one out over the published capacities: one scale shared by both kinds, fitted on one kind's
   capacity, predicts the other's (``cluster.calibration.capacity_loo``), at TPOT 40 and 120 ms.
2. The paper's relative preferences, never fitted: the GPU with the most requests per dollar at the
   paper's prices per bucket of Fig. 3b (A10G vs A100, 36 points), per (size, SLO) point of Fig. 7
   (A10G vs A100, TPOT 40-160 ms) and per bucket of Fig. 5a (best of L4, A10G, A100, H100; A100 vs
   H100 only where the figure boxes it). Modeled with the default efficiencies and with
   melange-2024 (TPOT 120 ms profile); L4 and H100, which Fig. 9 does not cover, get the geometric
   mean of the fitted scales (``transfer_efficiency``). The majority label is the baseline a
   constant guess reaches.

All rates are modeled. Writes one JSON file and prints a summary.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cluster import calibration as C  # noqa: E402
from cluster import perf  # noqa: E402
from cluster.catalog import default_catalog  # noqa: E402

FIGURES = {
    "fig3b": "fig3b_a10g_vs_a100_tdollar_llama2_7b.csv",
    "fig7": "fig7_slo_x_size_a10g_vs_a100_tdollar_llama2_7b.csv",
    "fig5a": "fig5a_best_gpu_tdollar_llama2_7b.csv",
}


def _shared() -> Path:
    for up in ROOT.parents:
        if (up / "shared" / "data").is_dir():
            return up / "shared" / "data"
    return ROOT.parent / "shared" / "data"


def _labels(fig: str, row: dict) -> tuple[str, ...]:
    if fig != "fig5a":
        return ("A10G", "A100")
    return ("A100", "H100") if row["only_a100_h100_compared"] == "yes" else ("L4", "A10G", "A100", "H100")


def agreement(fig: str, rows: list[dict], profile: C.Profile, cache: dict) -> dict:
    truth = [r["better_gpu"] if "better_gpu" in r else r["best_gpu"] for r in rows]
    out: dict = {"n": len(rows), "majority_label": Counter(truth).most_common(1)[0][0],
                 "majority_agree": Counter(truth).most_common(1)[0][1]}
    cat = default_catalog()
    for label, eff_of in (("default", lambda k: perf.DEFAULT_EFFICIENCY),
                          ("melange-2024", lambda k: C.transfer_efficiency(profile, k))):
        agree = agree_hi = n_hi = 0
        picks = []
        for r, want in zip(rows, truth):
            slo = float(r.get("tpot_slo_ms") or 120.0) / 1e3
            got = C.preferred_gpu(int(r["input_tokens"]), int(r["output_tokens"]), slo, _labels(fig, r), eff_of,
                                  cat, cache)
            picks.append(got)
            agree += got == want
            if r.get("color_read_confidence", "high") == "high":
                n_hi += 1
                agree_hi += got == want
        out[label] = {"agree": agree, "agree_high_confidence": agree_hi, "n_high_confidence": n_hi,
                      "picks": dict(Counter(str(p) for p in picks))}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Held-out check of the melange-2024 calibration profile.")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "calibration_holdout.json")
    ap.add_argument("--melange", type=Path, default=_shared() / "melange")
    args = ap.parse_args(argv)
    res: dict = {"benchmark": "bench/bench_calibration_holdout.py",
                 "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"), "host": platform.node(),
                 "load_average_start": os.getloadavg()[0], "note": "all rates are modeled",
                 "by_construction": {"what": "Fig. 9 capacities, one scale per kind fitted to one point each",
                                     "capacity_error_after": {k: f["error_after"] for k, f in
                                                              C.load_profile("melange-2024").fits.items()}},
                 "capacity_loo": {f"tpot_{s * 1e3:g}ms": C.capacity_loo(s) for s in (0.040, 0.120)},
                 "preferences": {}}
    profile = C.load_profile("melange-2024")
    cache: dict = {}
    for fig, name in FIGURES.items():
        rows = list(csv.DictReader((args.melange / name).open()))
        res["preferences"][fig] = agreement(fig, rows, profile, cache)
    res["load_average_end"] = os.getloadavg()[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    for key, loo in res["capacity_loo"].items():
        for kind, f in loo.items():
            print(f"LOO {key}: {kind} predicted {f['predicted_rps']:.3f} vs {f['published_rps']} req/s "
                  f"({f['error']:+.0%}) from a scale fitted on {f['fitted_on']}")
    for fig, p in res["preferences"].items():
        print(f"{fig}: default {p['default']['agree']}/{p['n']}, melange-2024 {p['melange-2024']['agree']}/{p['n']}, "
              f"majority ({p['majority_label']}) {p['majority_agree']}/{p['n']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
