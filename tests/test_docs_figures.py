"""Figures in the docs follow from committed output files.

The tables of docs/benchmarks.md between `generated` markers must be exactly what
`bench/render_docs.py` renders from `bench/results/` now, and every result file any doc names must
be committed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_generated_tables_match_their_result_files():
    proc = subprocess.run([sys.executable, "bench/render_docs.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_every_block_names_the_files_it_reads():
    sys.path.insert(0, str(ROOT / "bench"))
    import render_docs

    text = (ROOT / "docs" / "benchmarks.md").read_text()
    names = render_docs.blocks(text)
    assert {n for n, _ in names} == set(render_docs.RENDERERS)  # every renderer is used, once
    for _, files in names:
        for f in files:
            assert (ROOT / f).is_file(), f


def test_every_result_file_a_doc_names_is_committed():
    tracked = set(subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split())
    docs = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
    missing = []
    for doc in docs:
        for path in set(re.findall(r"bench/results/[A-Za-z0-9_./-]+\.(?:jsonl|json|csv|png)\b", doc.read_text())):
            if path not in tracked and not (ROOT / path).is_file():
                missing.append(f"{doc.name}: {path}")
    assert missing == []
