"""Secrets and certificates from files or the environment, never from the command line.

Arguments are visible to every user in ``ps``; a token or password belongs in an environment
variable or a file readable only by its owner. :func:`read_secret` reads ``--token-file``-style
files (the first line, stripped); :func:`read_pem` reads certificate and key files for TLS.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cluster.exceptions import InputError


def read_secret(path: str, field: str) -> str:
    """The secret in file ``path`` (its first line, stripped). InputError naming ``field`` when
    the file is missing, empty, or readable by other users."""
    p = Path(path).expanduser()
    try:
        mode = p.stat().st_mode
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{field}: cannot read {path!r} ({exc.strerror or exc})") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InputError(f"{field}: {path!r} is readable by other users (mode {stat.S_IMODE(mode):o}); "
                         "chmod 600 it")
    secret = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not secret or not secret.isprintable():
        raise InputError(f"{field}: {path!r} holds no secret on its first line")
    return secret


def read_pem(path: str, field: str) -> bytes:
    """The bytes of a PEM file (certificate or key). InputError naming ``field`` when it is
    missing or not PEM."""
    try:
        data = Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise InputError(f"{field}: cannot read {path!r} ({exc.strerror or exc})") from None
    if b"-----BEGIN " not in data:
        raise InputError(f"{field}: {path!r} is not a PEM file (no '-----BEGIN' line)")
    return data


def env_secret(name: str) -> str | None:
    """``$name``, stripped, or None when unset or empty."""
    value = os.environ.get(name, "").strip()
    return value or None
