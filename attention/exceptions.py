"""Errors of the attention package.

User mistakes (bad shapes, unknown strategy, non-finite inputs, bad speeds) are
:class:`cluster.exceptions.InputError` (a ``ValueError``), so the CLI and the gateway map them as
they map every other bad input. A communicator used the wrong way (a second ``wait`` on one handle,
a message whose shape differs from the buffer posted for it, a rank talking to itself) is a
:class:`CommMisuseError`, also a ``ValueError`` because the caller passed the wrong thing.
"""

from __future__ import annotations

from cluster.exceptions import InputError


class AttentionInputError(InputError):
    """Invalid tensors, strategy or speeds given to distributed attention."""


class CommMisuseError(InputError):
    """A communicator call that breaks its contract (the message says which and how)."""
