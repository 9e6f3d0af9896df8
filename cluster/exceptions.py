"""The cluster's error types, on the project's one error tree (rooted in :mod:`solvers.exceptions`).

Every error a user can cause is an :class:`InputError` (a ``ValueError``): the CLI turns it into
exit code 2 with a one-line reason, the gRPC gateway into ``INVALID_ARGUMENT``. Messages say what
failed, the value received and what is allowed ("did you mean ...").
"""

from __future__ import annotations

from solvers.exceptions import FlotillaError, InputError, did_you_mean


class UnknownDeviceKindError(InputError):
    """A device name that no catalog kind or alias matches."""


class CatalogError(InputError):
    """A malformed device catalog or fleet file; the message names the file and the field."""


class StoreUnavailableError(FlotillaError):
    """The state store cannot be reached; the message names the URL (password removed)."""


class CapacityError(FlotillaError):
    """A device cannot hold what was asked of it (memory ledger over capacity)."""


__all__ = ["CapacityError", "CatalogError", "FlotillaError", "InputError", "StoreUnavailableError",
           "UnknownDeviceKindError", "did_you_mean"]
