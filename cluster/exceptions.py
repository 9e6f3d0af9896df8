"""The project's error types.

Every error a user can cause is an :class:`InputError` (a ``ValueError``): the CLI turns it into
exit code 2 with a one-line reason, the gRPC gateway into ``INVALID_ARGUMENT``. Messages say what
failed, the value received and what is allowed ("did you mean ...").
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class FlotillaError(Exception):
    """Base class of every error flotilla raises on purpose."""


class InputError(FlotillaError, ValueError):
    """Bad input from a user: a file, a flag, a request field. CLI exit code 2."""


class UnknownDeviceKindError(InputError):
    """A device name that no catalog kind or alias matches."""


class CatalogError(InputError):
    """A malformed device catalog or fleet file; the message names the file and the field."""


class StoreUnavailableError(FlotillaError):
    """The state store cannot be reached; the message names the URL (password removed)."""


class CapacityError(FlotillaError):
    """A device cannot hold what was asked of it (memory ledger over capacity)."""


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""
