"""Per-question correctness of LLM experts on MMLU-Pro, read from the llm-experts data layout.

A data directory holds (the layout of ``$LLM_EXPERTS_DATA`` and of the committed
fixture ``edge/data/mmlu_pro_fixture``):

``mmlu_pro_correct_wide.csv``     question_id, category, src, then one 0/1 column per model
                                  (empty: the question is absent from that model's file)
``mmlu_pro_gen_chars_wide.csv``   question_id, category, then characters generated per model
``mmlu_pro_questions.jsonl.gz``   question_id, category, question, options, ...

Questions where a requested model has no result are dropped. Only the Apache-2.0 MMLU-Pro files
are read here; see the data README for the licences of the others.
"""

from __future__ import annotations

import csv
import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cluster.exceptions import InputError, did_you_mean

#: The committed fixture: 300 MMLU-Pro questions (see edge/data/PROVENANCE.md).
FIXTURE_DIR = Path(__file__).resolve().parent / "data" / "mmlu_pro_fixture"

CORRECT_FILE = "mmlu_pro_correct_wide.csv"
GEN_FILE = "mmlu_pro_gen_chars_wide.csv"
QUESTIONS_FILE = "mmlu_pro_questions.jsonl.gz"


@dataclass(frozen=True, slots=True)
class ExpertData:
    """Questions (rows) x models (columns). ``correct`` is 0/1 float, ``gen_chars`` characters of each
    model's answer, ``prompt_chars`` the length of question plus options, ``texts`` what the gate reads."""

    question_ids: tuple[int, ...]
    categories: tuple[str, ...]
    texts: tuple[str, ...]
    models: tuple[str, ...]
    correct: np.ndarray
    gen_chars: np.ndarray
    prompt_chars: np.ndarray

    def __post_init__(self) -> None:
        q, m = len(self.question_ids), len(self.models)
        if self.correct.shape != (q, m) or self.gen_chars.shape != (q, m) or self.prompt_chars.shape != (q,):
            raise InputError(f"ExpertData: shapes disagree with {q} questions x {m} models")
        if len(self.categories) != q or len(self.texts) != q:
            raise InputError(f"ExpertData: expected {q} categories and texts")

    @property
    def n_questions(self) -> int:
        return len(self.question_ids)

    def subset(self, rows: np.ndarray | list[int]) -> ExpertData:
        r = np.asarray(rows, dtype=int)
        return ExpertData(
            question_ids=tuple(self.question_ids[i] for i in r), categories=tuple(self.categories[i] for i in r),
            texts=tuple(self.texts[i] for i in r), models=self.models, correct=self.correct[r],
            gen_chars=self.gen_chars[r], prompt_chars=self.prompt_chars[r],
        )

    def split(self, test_fraction: float = 0.3, seed: int = 0) -> tuple[ExpertData, ExpertData]:
        """A seeded random (train, test) split of the questions, stratified by category."""
        if not 0 < test_fraction < 1:
            raise InputError(f"test_fraction: expected a number in (0, 1), got {test_fraction!r}")
        rng = np.random.default_rng(seed)
        train, test = [], []
        cats = np.asarray(self.categories)
        for c in sorted(set(self.categories)):
            idx = np.flatnonzero(cats == c)
            rng.shuffle(idx)
            k = int(round(len(idx) * test_fraction))
            test.extend(idx[:k])
            train.extend(idx[k:])
        return self.subset(sorted(train)), self.subset(sorted(test))


def question_text(q: dict) -> str:
    """What the gate embeds: the question and its lettered options."""
    letters = "ABCDEFGHIJ"
    opts = "\n".join(f"{letters[i]}. {o}" for i, o in enumerate(q.get("options") or []))
    return f"{q['question']}\n{opts}" if opts else q["question"]


def _require(path: Path) -> Path:
    if not path.is_file():
        raise InputError(f"data: {path} not found; --data must be a directory holding {CORRECT_FILE}, "
                         f"{GEN_FILE} and {QUESTIONS_FILE} (e.g. $LLM_EXPERTS_DATA)")
    return path


def load_mmlu_pro(data_dir: str | Path, models: tuple[str, ...] | list[str] | None = None,
                  limit: int | None = None) -> ExpertData:
    """Read the MMLU-Pro files of ``data_dir`` for ``models`` (default: every edge-size model)."""
    from cluster.models import EDGE_MODELS

    d = Path(data_dir)
    if not d.is_dir():
        raise InputError(f"data: {str(d)!r} is not a directory")
    want = tuple(models) if models else EDGE_MODELS
    with open(_require(d / CORRECT_FILE), newline="") as fh:
        rows = list(csv.DictReader(fh))
    have = tuple(rows[0].keys()) if rows else ()
    for m in want:
        if m not in have:
            raise InputError(f"models: {m!r} is not a column of {CORRECT_FILE}{did_you_mean(m, have)}")
    with open(_require(d / GEN_FILE), newline="") as fh:
        gen = {int(r["question_id"]): r for r in csv.DictReader(fh)}
    questions: dict[int, dict] = {}
    with gzip.open(_require(d / QUESTIONS_FILE), "rt", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                q = json.loads(line)
                questions[int(q["question_id"])] = q
    qids, cats, texts, corr, gens, pchars = [], [], [], [], [], []
    for r in rows:
        qid = int(r["question_id"])
        if qid not in questions or qid not in gen:
            continue
        vals = [r[m] for m in want]
        g = [gen[qid].get(m, "") for m in want]
        if any(v in ("", "NA") for v in vals) or any(x in ("", "NA", None) for x in g):
            continue
        text = question_text(questions[qid])
        qids.append(qid)
        cats.append(r["category"])
        texts.append(text)
        corr.append([float(v) for v in vals])
        gens.append([float(x) for x in g])
        pchars.append(len(text))
        if limit is not None and len(qids) >= limit:
            break
    if not qids:
        raise InputError(f"data: no question in {d} has results for all of {list(want)}")
    return ExpertData(tuple(qids), tuple(cats), tuple(texts), want, np.asarray(corr), np.asarray(gens),
                      np.asarray(pchars, dtype=float))
