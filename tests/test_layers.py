"""Every module sits in a layer the import-linter contracts check: a module added to cluster/ or
cluster/shell/ without being listed would otherwise escape the layering silently."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11 (the contracts are checked by lint-imports anyway)

ROOT = Path(__file__).resolve().parents[1]


def _contracts() -> dict[str, list[str]]:
    doc = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {c["name"]: c["source_modules"] for c in doc["tool"]["importlinter"]["contracts"]}


def _modules(folder: Path, prefix: str) -> set[str]:
    names = set()
    for p in folder.iterdir():
        if p.name.startswith(("_", ".")) or p.name in ("data", "shell", "cli"):
            continue
        if p.is_dir() and (p / "__init__.py").is_file():
            names.add(f"{prefix}.{p.name}")
        elif p.suffix == ".py":
            names.add(f"{prefix}.{p.stem}")
    return names


def test_every_foundation_module_is_in_the_foundation_contract():
    listed = set(next(v for k, v in _contracts().items() if k.startswith("the cluster foundation")))
    assert _modules(ROOT / "cluster", "cluster") - listed == set()


def test_every_service_module_is_in_the_services_contract():
    listed = set(next(v for k, v in _contracts().items() if k.startswith("services never import the CLI")))
    assert _modules(ROOT / "cluster" / "shell", "cluster.shell") - listed == set()
