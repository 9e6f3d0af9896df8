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


class RayStartError(FlotillaError):
    """A local Ray instance could not be started (Ray's first error line and where its logs are)."""


class CapacityError(FlotillaError):
    """A device cannot hold what was asked of it (memory ledger over capacity)."""


class PermissionDeniedError(FlotillaError):
    """The caller's credentials do not allow this action (gRPC PERMISSION_DENIED)."""


class AlreadyExistsError(FlotillaError):
    """Something with this name exists and is not what was asked (gRPC ALREADY_EXISTS)."""


class RequestIdInUseError(AlreadyExistsError):
    """A request id that is pending or completed in the journal.

    ``same`` is True when the stored request has the same fingerprint (a retry of it), and
    ``result`` holds its stored result when it has completed. The message reveals nothing of the
    stored request.
    """

    def __init__(self, request_id: str, *, same: bool, result: dict | None) -> None:
        super().__init__(f"request_id {request_id!r:.80} is already used by another request; "
                         "use a fresh id (e.g. a uuid4)")
        self.request_id = request_id
        self.same = same
        self.result = result


__all__ = ["AlreadyExistsError", "CapacityError", "CatalogError", "FlotillaError", "InputError", "PermissionDeniedError", "RequestIdInUseError", "StoreUnavailableError",
           "UnknownDeviceKindError", "did_you_mean"]
