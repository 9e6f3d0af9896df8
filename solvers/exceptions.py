"""Error types of the pure solvers.

``solvers/`` must not import ``cluster/``, so it has its own small hierarchy. Every error a caller
can cause is a ``ValueError`` (the CLI turns it into exit code 2, the gateway into
``INVALID_ARGUMENT``); messages say what failed, the value received and what is allowed.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SolverError(Exception):
    """Base class of every error ``solvers/`` raises on purpose."""


class AllocationInputError(SolverError, ValueError):
    """A malformed allocation input (device type, workload, problem); names field, value, range."""


class MelangeFormatError(AllocationInputError):
    """A Mélange solver config that does not follow the schema; names the JSON path."""


class InfeasibleError(SolverError, ValueError):
    """No device mix satisfies the problem; the message names the binding cause and instance size."""


class SolverUnavailableError(SolverError, ValueError):
    """The requested MILP solver is unknown or not installed; the message lists the available ones."""


class SolveIncompleteError(SolverError, RuntimeError):
    """The solver stopped without proving optimality (time limit, numerical trouble).

    Not a ``ValueError``: the input may be fine; a longer time limit or another solver may succeed.
    """


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""
