"""Shared pieces of the ``flotilla`` command line (consoles, ``--json`` output, formatting).

Each area's commands live in their own module (``cluster/cli_*.py``) exposing ``register(app)``;
``cluster/cli.py`` wires them. Commands validate and forward; they raise
:class:`~cluster.exceptions.InputError` for bad input (exit 2) and never print tracebacks.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import typer
from rich.console import Console

MODELED_NOTE = "modeled = the device kind's roofline time/energy from cluster/perf, not a measurement"

#: Human output (tables) on stdout; progress and notices on stderr, so ``--json`` stdout stays clean.
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def json_option() -> Any:
    return typer.Option(False, "--json", help="Print one JSON object on stdout and nothing else.")


def emit_json(obj: Any) -> None:
    """Print exactly one JSON object on stdout."""
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def fmt(v: float | None, spec: str = ".1f") -> str:
    return "—" if v is None else format(v, spec)
