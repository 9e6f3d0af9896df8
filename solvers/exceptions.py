"""flotilla's one error tree, rooted here because ``solvers/`` is the bottom layer.

Every package raises from this tree (``cluster.exceptions`` adds the cluster's own subclasses and
re-exports the root). Every error a user can cause is an :class:`InputError` (a ``ValueError``):
the CLI turns it into exit code 2 with a one-line reason, the gRPC gateway into
``INVALID_ARGUMENT``, the HTTP server into 400. Messages say what failed, the value received and
what is allowed ("did you mean ...").

::

    FlotillaError
    ├── InputError (ValueError)              bad input: a flag, a file, a request field
    │   ├── AllocationInputError             a malformed allocation input
    │   │   └── MelangeFormatError           a Mélange config off its schema (names the JSON path)
    │   ├── SelectionInputError              a malformed expert-selection input
    │   └── SolverUnavailableError           an unknown or missing MILP solver
    └── SolverError
        ├── InfeasibleError (ValueError)     no solution meets the constraints (names the cause)
        └── SolveIncompleteError (RuntimeError)  stopped without proving optimality
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class FlotillaError(Exception):
    """Base class of every error flotilla raises on purpose."""


class InputError(FlotillaError, ValueError):
    """Bad input from a user: a file, a flag, a request field. CLI exit code 2."""


class SolverError(FlotillaError):
    """Base class of the errors ``solvers/`` raises about a solve (not about its input)."""


class AllocationInputError(InputError):
    """A malformed allocation input (device type, workload, problem); names field, value, range."""


class MelangeFormatError(AllocationInputError):
    """A Mélange solver config that does not follow the schema; names the JSON path."""


class SelectionInputError(InputError):
    """A malformed expert-selection input; names the field, the value and the allowed range."""


class SolverUnavailableError(InputError):
    """The requested MILP solver is unknown or not installed; the message lists the available ones."""


class InfeasibleError(SolverError, ValueError):
    """No solution satisfies the problem; the message names the binding cause and instance size."""


class SolveIncompleteError(SolverError, RuntimeError):
    """The solver stopped without proving optimality (time limit, numerical trouble).

    Not a ``ValueError``: the input may be fine; a longer time limit or another solver may succeed.
    """


class SolverAnswerError(SolveIncompleteError):
    """The solver's answer failed flotilla's checks (a non-integral count, slices not placed
    exactly, worse than a known feasible mix): not a time limit; the other solver may succeed."""


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""
