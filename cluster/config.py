"""flotilla's own settings, with one precedence: config file < environment < command line.

The file is YAML at ``$FLOTILLA_CONFIG`` or ``~/.config/flotilla/config.yaml`` (absent is fine);
the environment variables are ``FLOTILLA_<FIELD>`` in capitals; command-line flags win.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from cluster.exceptions import InputError


@dataclass(frozen=True, slots=True)
class FlotillaConfig:
    """Settings shared by the CLI, the runtime and the servers."""

    #: State store URL: ``redis://[:password@]host:port/db``; None or ``memory://`` keeps state
    #: in the process (the embedded default).
    redis_url: str | None = None
    #: Namespace of this cluster's keys in the store (several clusters can share one Redis).
    namespace: str = "default"
    #: Ray address to join; None starts a local Ray instance (``RAY_ADDRESS`` is honoured too).
    ray_address: str | None = None
    #: Fleet file for the embedded cluster.
    fleet: str | None = None

    def __post_init__(self) -> None:
        if not self.namespace or any(c in self.namespace for c in " :{}"):
            raise InputError(f"namespace: expected a non-empty name without spaces, ':' or braces, got {self.namespace!r}")


def config_path() -> Path:
    return Path(os.environ.get("FLOTILLA_CONFIG") or Path.home() / ".config" / "flotilla" / "config.yaml")


def load_config(**overrides: Any) -> FlotillaConfig:
    """File, then ``FLOTILLA_*`` environment variables, then ``overrides`` that are not None."""
    names = {f.name for f in fields(FlotillaConfig)}
    values: dict[str, Any] = {}
    path = config_path()
    if path.exists():
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise InputError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise InputError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
        unknown = set(data) - names
        if unknown:
            raise InputError(f"{path}: unknown setting {sorted(unknown)[0]!r}; allowed: {', '.join(sorted(names))}")
        values.update(data)
    for name in names:
        env = os.environ.get(f"FLOTILLA_{name.upper()}")
        if env:
            values[name] = env
    values.update({k: v for k, v in overrides.items() if v is not None})
    return dataclasses.replace(FlotillaConfig(), **values)
