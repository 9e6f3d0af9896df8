"""Regenerate ``cluster/data/opdata/`` from ``../shared/data/vidur`` (Vidur's measured operator times).

    python scripts/extract_opdata.py [--vidur DIR] [--out DIR]

Reads ``{a100,h100}__<model>__mlp.csv`` (Vidur @ 7d47513, MIT; see the data folder's README) and
writes two compact tables:

* ``vidur_models.csv``: one row per model shape (``model, n_head, n_kv_head, n_embd,
  n_expanded_embd, use_gated_mlp``);
* ``vidur_linear.csv``: one row per (device kind, model, tp, tokens) with the four projections'
  times in ms (``qkv_ms, o_ms, up_ms, down_ms``). Vidur's ``a100`` is an A100 80GB SXM
  (``a100-80g-sxm``), its ``h100`` an H100 SXM (``h100-sxm``). Where Vidur profiled a point twice,
  the median of the two (i.e. their mean) is kept.

Only these columns are kept: the layer norms, rotary, activation and embedding times are not linear
layers. The output is deterministic (sorted rows, fixed float format), so rerunning it on the same
input gives the same bytes.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def shared_data() -> Path:
    """``../shared/data`` of the checkout (a git worktree sits one level deeper, so look upward)."""
    for up in ROOT.parents:
        if (up / "shared" / "data").is_dir():
            return up / "shared" / "data"
    return ROOT.parent / "shared" / "data"

DEVICE_KIND = {"a100": "a100-80g-sxm", "h100": "h100-sxm"}
OPS = (("qkv_ms", "attn_pre_proj_ms"), ("o_ms", "attn_post_proj_ms"), ("up_ms", "mlp_up_proj_ms"),
       ("down_ms", "mlp_down_proj_ms"))
SHAPE_COLS = ("n_head", "n_kv_head", "n_embd", "n_expanded_embd", "use_gated_mlp")


def extract(vidur: Path, out: Path) -> tuple[int, int]:
    files = sorted(vidur.glob("*__*__mlp.csv"))
    if not files:
        raise SystemExit(f"--vidur: no '<device>__<model>__mlp.csv' files in {vidur}")
    shapes: dict[str, tuple[str, ...]] = {}
    times: dict[tuple[str, str, int, int], list[list[float]]] = defaultdict(list)
    for f in files:
        dev, model, _ = f.name.split("__")
        kind = DEVICE_KIND[dev]
        with f.open(newline="") as fh:
            for row in csv.DictReader(fh):
                shape = tuple(row[c] for c in SHAPE_COLS)
                if shapes.setdefault(model, shape) != shape:
                    raise SystemExit(f"{f.name}: model {model} has two shapes {shapes[model]} / {shape}")
                key = (kind, model, int(row["num_tensor_parallel_workers"]), int(row["num_tokens"]))
                times[key].append([float(row[src]) for _, src in OPS])
    out.mkdir(parents=True, exist_ok=True)
    with (out / "vidur_models.csv").open("w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(("model",) + SHAPE_COLS)
        for model in sorted(shapes):
            w.writerow((model,) + shapes[model])
    with (out / "vidur_linear.csv").open("w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(("device", "model", "tp", "tokens") + tuple(n for n, _ in OPS))
        for key in sorted(times):
            reps = times[key]
            med = [statistics.median(r[i] for r in reps) for i in range(len(OPS))]
            w.writerow(key + tuple(f"{v:.6g}" for v in med))
    return len(shapes), len(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vidur", type=Path, default=shared_data() / "vidur")
    ap.add_argument("--out", type=Path, default=ROOT / "cluster" / "data" / "opdata")
    args = ap.parse_args(argv)
    n_models, n_rows = extract(args.vidur, args.out)
    print(f"wrote {n_models} model shapes and {n_rows} rows to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
