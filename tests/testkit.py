"""Helpers several test modules share (importable as ``testkit``: tests/ is on the path through
tests/conftest.py)."""

from __future__ import annotations

import socket
from collections.abc import Callable

import typer
from typer.testing import CliRunner

from cluster.exceptions import InputError


def run_command(register: Callable[[typer.Typer], None], *args: str) -> tuple[int, str, str]:
    """Invoke the commands ``register`` adds, like ``cluster.shell.cli.main.main`` does:
    InputError -> exit 2 with a one-line reason. ``(exit code, stdout, stderr)``."""
    app = typer.Typer(pretty_exceptions_enable=False)

    @app.callback()
    def _root() -> None:
        """test root"""

    register(app)
    res = CliRunner().invoke(app, list(args))
    if isinstance(res.exception, InputError):
        return 2, res.stdout, f"flotilla: error: {res.exception}"
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.stdout, res.stderr if res.stderr_bytes is not None else ""


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports on 127.0.0.1 that nothing listened on when asked."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
