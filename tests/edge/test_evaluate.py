"""`flotilla experts evaluate`: JSON keys, budgets, exit 2 on bad input, and the test questions
never influence a choice (flipping every test answer changes the reported accuracy, not the choices)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from cluster.exceptions import InputError
from edge.dataset import CORRECT_FILE, FIXTURE_DIR, load_mmlu_pro
from edge.evaluate import evaluate_experts
from edge.protocol import dedupe, split_protocol, text_groups

FAST = dict(routers=("table", "logreg"), embeddings=False, folds=3, n_boot=100)
KEYS = {"energy_budget_j", "subset", "router", "test_accuracy", "ci95", "best_single", "best_single_accuracy",
        "oracle_accuracy", "energy_j"}


@pytest.fixture(scope="module")
def doc() -> dict:
    return evaluate_experts(FIXTURE_DIR, **FAST)


def test_document_has_the_budget_keys_and_no_limit_last(doc) -> None:
    b = doc["budgets"]
    assert len(b) >= 2
    for row in b:
        assert KEYS <= set(row)
        lo, hi = row["ci95"]
        assert lo <= row["test_accuracy"] <= hi
        assert row["test_accuracy"] <= row["oracle_accuracy"] <= 1
        assert row["energy_budget_j"] is None or row["dev_energy_j"] <= row["energy_budget_j"] + 1e-9
    assert b[-1]["energy_budget_j"] is None
    limits = [r["energy_budget_j"] for r in b[:-1]]
    assert limits == sorted(limits)
    assert doc["chosen_router"] in ("table", "logreg")
    q = doc["questions"]
    assert q["train"] + q["val"] + q["test"] == q["loaded"] - q["duplicates_dropped"]
    assert "modeled" in doc["energy_note"]


def test_single_expert_subset_reports_that_experts_own_figures(doc) -> None:
    first = doc["budgets"][0]  # the cheapest expert's energy: only single experts can fit
    assert len(first["subset"]) == 1
    assert first["router"].startswith("single expert")


def test_flipping_every_test_answer_changes_no_choice(tmp_path: Path, doc) -> None:
    data = load_mmlu_pro(FIXTURE_DIR)
    keep, _ = dedupe(data.texts)
    texts = [data.texts[i] for i in keep]
    sp = split_protocol([data.categories[i] for i in keep], text_groups(texts), seed=0)
    test_ids = {str(data.question_ids[keep[i]]) for i in sp.test}
    d = tmp_path / "poisoned"
    shutil.copytree(FIXTURE_DIR, d)
    with open(FIXTURE_DIR / CORRECT_FILE, newline="") as fh:
        rows = list(csv.reader(fh))
    head = rows[0]
    first_model = head.index("question_id") + 3
    for r in rows[1:]:
        if r[0] in test_ids:
            r[first_model:] = ["1" if v == "0" else "0" for v in r[first_model:]]
    with open(d / CORRECT_FILE, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    bad = evaluate_experts(d, **FAST)
    assert bad["chosen_router"] == doc["chosen_router"]
    assert [r["params"] for r in bad["routers"]] == [r["params"] for r in doc["routers"]]
    assert [r["subset"] for r in bad["budgets"]] == [r["subset"] for r in doc["budgets"]]
    assert [r["best_single"] for r in bad["budgets"]] == [r["best_single"] for r in doc["budgets"]]
    # ... while the test figures do change: every answer flipped
    for a, b in zip(doc["budgets"], bad["budgets"]):
        assert b["test_accuracy"] == pytest.approx(1 - a["test_accuracy"], abs=1e-3)


def _app() -> typer.Typer:
    from cluster.shell.cli.experts import register

    app = typer.Typer(pretty_exceptions_enable=False)
    register(app)

    @app.callback()
    def _root() -> None:
        """test root"""

    return app


def run(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(_app(), list(args))
    if isinstance(res.exception, InputError):
        return 2, str(res.exception)
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.stdout


def test_cli_json_is_one_object_with_budgets(tmp_path: Path) -> None:
    code, stdout = run("evaluate", "--data", str(FIXTURE_DIR), "--no-embeddings", "--routers", "table",
                       "--folds", "3", "--bootstrap", "50", "--json", "--out", str(tmp_path / "e.json"))
    assert code == 0
    doc = json.loads(stdout)
    assert KEYS <= set(doc["budgets"][0])
    assert json.loads((tmp_path / "e.json").read_text())["budgets"] == doc["budgets"]


@pytest.mark.parametrize(("args", "field"), [
    (["--data", "/no/such/dir"], "--data"),
    (["--routers", "tabel"], "did you mean 'table'"),
    (["--routers", "knn", "--no-embeddings"], "need embeddings"),
    (["--folds", "1"], "--folds"),
    (["--limit", "0"], "--limit"),
    (["--limit", "20"], "too few"),
    (["--test-fraction", "0.9"], "val_fraction \\+ test_fraction"),
    (["--models", "gpt-9"], "models"),
])
def test_cli_bad_input_exits_2_naming_the_field(args, field) -> None:
    base = {"--data": str(FIXTURE_DIR)}
    argv = ["evaluate"]
    if "--data" not in args:
        argv += ["--data", base["--data"]]
    argv += args
    if "--no-embeddings" not in args and "--routers" not in args:
        argv += ["--no-embeddings", "--routers", "table"]
    code, msg = run(*argv)
    assert code == 2
    import re
    assert re.search(field, msg), msg


def test_main_entry_point_exits_2(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    p = subprocess.run([sys.executable, "-m", "cluster.shell.cli.main", "experts", "evaluate", "--data",
                        str(tmp_path / "missing"), "--json"], cwd=root, capture_output=True, text=True)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip().splitlines()[-1].startswith("flotilla: error: --data")


def test_one_se_rule_takes_the_simplest_router_within_one_standard_error() -> None:
    from edge.evaluate import one_se_choice

    # best is index 2 (0.47 +- 0.005): index 1 (0.466) is within, index 0 (0.46) is not
    assert one_se_choice([(0.46, 0.005), (0.466, 0.005), (0.47, 0.005), (0.45, 0.005)]) == 1
    # the simplest wins when it is itself the best
    assert one_se_choice([(0.47, 0.001), (0.47, 0.001)]) == 0
    # a large standard error of the best admits every candidate above best - se
    assert one_se_choice([(0.30, 0.01), (0.41, 0.01), (0.40, 0.2)]) == 1
    assert one_se_choice([(0.5, 0.0)]) == 0
    with pytest.raises(InputError, match="routers"):
        one_se_choice([])


def test_cv_score_is_mean_and_standard_error_of_the_hits() -> None:
    import numpy as np

    from edge.evaluate import cv_score

    h = np.array([1, 0, 1, 1, 0, 0, 1, 1], dtype=float)
    mean, se = cv_score(h)
    assert mean == pytest.approx(5 / 8)
    assert se == pytest.approx(np.std(h, ddof=1) / np.sqrt(8))
    with pytest.raises(InputError, match="hits"):
        cv_score(np.array([1.0]))


def test_the_choice_follows_the_one_se_rule_on_the_documents_cv_scores(doc) -> None:
    from edge.evaluate import one_se_choice

    rs = doc["routers"]
    assert [r["router"] for r in rs] == sorted((r["router"] for r in rs), key=("table", "logreg", "knn", "mlp").index)
    pick = one_se_choice([(r["dev_cv_accuracy"], r["dev_cv_se"]) for r in rs])
    assert doc["chosen_router"] == rs[pick]["router"]
    ch = doc["router_choice"]
    assert ch["threshold"] == pytest.approx(ch["best_cv_accuracy"] - ch["best_cv_se"], abs=2e-4)
    for r in rs:
        assert 0 < r["dev_cv_se"] < 0.1 and 0 <= r["dev_cv_accuracy"] <= 1


def test_every_router_reports_its_test_accuracy_among_all_experts(doc) -> None:
    top = doc["budgets"][-1]
    for r in doc["routers"]:
        lo, hi = r["test_ci95_all_experts"]
        assert 0 <= lo <= r["test_accuracy_all_experts"] <= hi <= 1
    # the chosen router among all experts is at most the oracle of all experts
    chosen = next(r for r in doc["routers"] if r["router"] == doc["chosen_router"])
    assert chosen["test_accuracy_all_experts"] <= doc["test_oracle_all_experts"]
    assert top["energy_budget_j"] is None
