"""Derive the committed test fixture from the MMLU-Pro files (run once; see edge/data/PROVENANCE.md).

``python -m edge.fixture SRC_DIR [OUT_DIR] [--per-category 22] [--seed 0]`` keeps a seeded,
category-stratified sample of questions, the 14 edge-size model columns, and writes the three files
in the same layout (so :func:`edge.data.load_mmlu_pro` reads both). Only Apache-2.0 MMLU-Pro data.
"""

from __future__ import annotations

import csv
import gzip
import json
import random
import sys
from pathlib import Path

from edge.dataset import CORRECT_FILE, FIXTURE_DIR, GEN_FILE, QUESTIONS_FILE
from cluster.models import EDGE_MODELS


def build_fixture(src: Path, out: Path, per_category: int = 22, seed: int = 0) -> list[int]:
    with open(src / CORRECT_FILE, newline="") as fh:
        rows = list(csv.DictReader(fh))
    rows = [r for r in rows if all(r[m] not in ("", "NA") for m in EDGE_MODELS)]
    by_cat: dict[str, list[dict]] = {}
    for r in rows:
        by_cat.setdefault(r["category"], []).append(r)
    rng = random.Random(seed)
    keep: list[int] = []
    for cat in sorted(by_cat):
        keep.extend(int(r["question_id"]) for r in rng.sample(by_cat[cat], min(per_category, len(by_cat[cat]))))
    keep_set = set(keep)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / CORRECT_FILE, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["question_id", "category", "src", *EDGE_MODELS])
        for r in rows:
            if int(r["question_id"]) in keep_set:
                w.writerow([r["question_id"], r["category"], r["src"], *(r[m] for m in EDGE_MODELS)])
    with open(src / GEN_FILE, newline="") as fh, open(out / GEN_FILE, "w", newline="") as fo:
        w = csv.writer(fo)
        w.writerow(["question_id", "category", *EDGE_MODELS])
        for r in csv.DictReader(fh):
            if int(r["question_id"]) in keep_set:
                w.writerow([r["question_id"], r["category"], *(r[m] for m in EDGE_MODELS)])
    with gzip.open(src / QUESTIONS_FILE, "rt", encoding="utf-8") as fh, \
            gzip.open(out / QUESTIONS_FILE, "wt", encoding="utf-8", compresslevel=9) as fo:
        for line in fh:
            if line.strip() and int(json.loads(line)["question_id"]) in keep_set:
                fo.write(line if line.endswith("\n") else line + "\n")
    return sorted(keep)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    src = Path(argv[0])
    out = Path(argv[1]) if len(argv) > 1 and not argv[1].startswith("--") else FIXTURE_DIR
    per = int(argv[argv.index("--per-category") + 1]) if "--per-category" in argv else 22
    seed = int(argv[argv.index("--seed") + 1]) if "--seed" in argv else 0
    keep = build_fixture(src, out, per, seed)
    print(f"wrote {len(keep)} questions to {out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
