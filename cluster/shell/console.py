"""Shared pieces of the ``flotilla`` command line (consoles, ``--json`` output, formatting).

Each area's commands live in their own module (``cluster/shell/cli/*.py``) exposing ``register(app)``;
``cluster/shell/cli/main.py`` wires them. Commands validate and forward; they raise
:class:`~cluster.exceptions.InputError` for bad input (exit 2) and never print tracebacks.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from typing import Any, TextIO

import typer
from rich.console import Console

MODELED_NOTE = "modeled = the device kind's roofline time/energy from cluster/perf, not a measurement"

#: Column headers whose cells are identifiers a user types back (device ids, kinds): kept whole.
IDENTIFIER_HEADERS = frozenset({"device", "kind", "device id", "device_id", "id", "expert", "replica", "node", "fleet"})


def _plain(cell: Any) -> str:
    from rich.text import Text

    if isinstance(cell, Text):
        return cell.plain
    return cell if isinstance(cell, str) else ""


def fit_table(table: Any) -> Any:
    """Make a rich Table fit the console without cutting identifiers: identifier columns
    (:data:`IDENTIFIER_HEADERS`, and the first column when its cells have no spaces) never wrap
    and are as wide as their longest cell, so a device id or kind prints whole on one line; every
    other column wraps at spaces and folds onto the next line instead of ending in an ellipsis.
    Returns ``table``."""
    for i, col in enumerate(table.columns):
        col.overflow = "fold"
        cells = [_plain(c) for c in col._cells]
        header = " ".join(_plain(col.header).split()).lower()
        if (i == 0 or header in IDENTIFIER_HEADERS) and cells and all(" " not in c.strip() for c in cells):
            col.no_wrap = True
            col.min_width = max(col.min_width or 0, max(len(c.strip()) for c in cells))
    return table


class _FittingConsole(Console):
    """A Console whose ``print`` passes every Table through :func:`fit_table` first."""

    def print(self, *objects: Any, **kwargs: Any) -> None:  # type: ignore[override]
        from rich.table import Table

        for o in objects:
            if isinstance(o, Table):
                fit_table(o)
        super().print(*objects, **kwargs)


#: Human output (tables) on stdout; progress and notices on stderr, so ``--json`` stdout stays clean.
out = _FittingConsole(highlight=False)
err = _FittingConsole(stderr=True, highlight=False)


def json_option() -> Any:
    return typer.Option(False, "--json", help="Print one JSON object on stdout and nothing else.")


#: Where :func:`emit_json` writes while stdout is reserved for the JSON object (see below).
_json_stream: TextIO | None = None


@contextlib.contextmanager
def reserve_stdout_for_json() -> Iterator[None]:
    """Keep stdout for the one JSON object: anything else printed meanwhile goes to stderr.

    Libraries print on stdout too (Ray relays its workers' warnings there; HiGHS's C library
    prints its banner on file descriptor 1); under ``--json`` those lines would break "one JSON
    object on stdout and nothing else", so they are sent to stderr: ``sys.stdout`` and, when
    stdout is a real file, descriptor 1 itself.
    """
    global _json_stream
    real, previous = sys.stdout, _json_stream
    try:
        fd = real.fileno()
    except (AttributeError, OSError, ValueError):
        fd = None
    saved = None
    if fd is not None:
        real.flush()
        saved = os.dup(fd)
        os.dup2(sys.stderr.fileno(), fd)
        _json_stream = os.fdopen(os.dup(saved), "w", encoding="utf-8")
    else:
        _json_stream = real
    sys.stdout = sys.stderr
    try:
        yield
    finally:
        sys.stdout = real
        if saved is not None:
            _json_stream.close()
            os.dup2(saved, fd)
            os.close(saved)
        _json_stream = previous


def emit_json(obj: Any) -> None:
    """Print exactly one JSON object on stdout."""
    stream = _json_stream or sys.stdout
    stream.write(json.dumps(obj, default=str) + "\n")
    stream.flush()


def fmt(v: float | None, spec: str = ".1f") -> str:
    return "—" if v is None else format(v, spec)


def exit_code_for(exc: BaseException) -> int:
    """Print a flotilla error's one line on stderr; its exit code: 2 bad input, 1 anything else."""
    from cluster.exceptions import InputError

    if isinstance(exc, InputError):
        print(f"flotilla: error: {exc}", file=sys.stderr)
        return 2
    print(f"flotilla: failed: {exc}", file=sys.stderr)
    return 1


def line(message: str) -> None:
    """One progress line on stderr, flushed at once: in a terminal as outside one (a job log, a
    pipe), where a spinner would show nothing."""
    if err.is_terminal:
        err.print(message, markup=False)
    else:
        print(message, file=sys.stderr, flush=True)


def _foreground_terminal() -> bool:
    """stderr is a terminal and this process is its foreground job (a spinner from a job sent to
    the background with ``&`` would keep redrawing over the shell's prompt)."""
    if not err.is_terminal:
        return False
    try:
        return os.getpgrp() == os.tcgetpgrp(sys.stderr.fileno())
    except (OSError, ValueError):  # no controlling terminal (rich was told it is one)
        return True


@contextlib.contextmanager
def status(message: str) -> Iterator[None]:
    """A spinner with ``message`` in a terminal, when in the foreground; otherwise ``message``
    as one line."""
    if _foreground_terminal():
        with err.status(message, spinner="dots"):
            yield
        return
    line(message)
    yield


@contextlib.contextmanager
def progress(total: int, label: str) -> Iterator[Any]:
    """Progress on stderr: a rich bar in a terminal, else one line per step (so a log shows it).
    Yields ``advance(done, note="")``."""
    import time

    if err.is_terminal:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TextColumn("{task.fields[note]}"), console=err, transient=True) as bar:
            task = bar.add_task(label, total=total, note="")
            yield lambda done, note="": bar.update(task, completed=done, note=note)
        return
    start = time.monotonic()

    def line(done: int, note: str = "") -> None:
        print(f"{label}: {done}/{total} ({time.monotonic() - start:.0f} s){' ' + note if note else ''}",
              file=sys.stderr, flush=True)

    yield line


def save_figure(fig: Any, path: str, flag: str = "--plot") -> None:
    """Write a matplotlib figure (tight layout, 110 dpi) and close it; InputError naming ``flag``
    when the file cannot be written."""
    import matplotlib.pyplot as plt

    from cluster.exceptions import InputError

    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except OSError as e:
        raise InputError(f"{flag} {path!r}: cannot write it ({e.strerror})") from None
    finally:
        plt.close(fig)
