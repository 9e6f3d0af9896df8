"""Helpers several test modules share (importable as ``testkit``: tests/ is on the path through
tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable

import typer
from typer.testing import CliRunner

from bench.common import free_ports  # noqa: F401 - one helper for the tests and the benchmarks
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


def wait_until_dead(handle: object, timeout_s: float = 60.0) -> None:
    """Block until a ``ray.kill``-ed actor is observably dead. ``ray.kill`` is asynchronous: a call
    sent right after it goes straight to the worker and can still run, so ping until one fails
    with RayActorError; AssertionError if none does within ``timeout_s``."""
    import time

    import ray

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get(handle.ping.remote(), timeout=max(0.1, deadline - time.monotonic()))  # type: ignore[attr-defined]
        except ray.exceptions.RayActorError:
            return
        except ray.exceptions.GetTimeoutError:
            break
        time.sleep(0.1)
    raise AssertionError(f"the actor still answered {timeout_s:g} s after ray.kill")
