"""Shared fixtures: one local Ray instance per test session, and the Redis URL.

The Ray instance is started once (never per test) and never joins someone else's cluster: it is a
fresh local instance with the example fleet's device resources, so actor tests can place
``device:<kind>`` actors exactly as production does.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

import pytest
from testkit import free_ports

# Logical CPUs for the session's Ray instance. Actors in tests ask for fractions of a CPU, so this
# is a scheduling budget, not a claim about the 2-core machine.
RAY_TEST_CPUS = 8


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray instance for the whole session, with the example fleet's devices."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=RAY_TEST_CPUS,
            resources={
                "device:rtx4090": 2,
                "device:a100-80g-sxm": 1,
                "device:jetson-agx-orin-64": 2,
            },
            include_dashboard=False,
            logging_level="ERROR",
            log_to_driver=False,
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The Redis server the suite talks to: $REDIS_URL, else the local default.

    `make test` makes sure one is reachable (starting a throw-away server when needed).
    """
    return os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def free_port() -> int:
    return free_ports(1)[0]


class ThrowawayRedis:
    """A private redis-server on a free port, for fault injection: ``stop()`` stops it,
    ``start()`` starts it again on the same port: empty, or (``persistent``, an fsync'd
    append-only file) with everything it held."""

    def __init__(self, directory: str, *, persistent: bool = False) -> None:
        self.port = free_port()
        durability = ["--appendonly", "yes", "--appendfsync", "always"] if persistent else ["--appendonly", "no"]
        self.cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                    *durability, "--dir", directory]
        self.proc: subprocess.Popen | None = None

    def url(self, userinfo: str = "") -> str:
        return f"redis://{userinfo}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.proc.kill()
        raise AssertionError("throw-away redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture()
def unused_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (at the time of asking)."""
    return free_port()


@pytest.fixture()
def throwaway_redis(tmp_path):
    """A started :class:`ThrowawayRedis`; stopped afterwards."""
    if shutil.which("redis-server") is None:
        pytest.skip("needs the redis-server binary")
    server = ThrowawayRedis(str(tmp_path))
    server.start()
    yield server
    server.stop()


@pytest.fixture()
def make_redis_server(tmp_path):
    """A factory of :class:`ThrowawayRedis` servers (``persistent=True`` for an fsync'd
    append-only file), all stopped afterwards. Not started: call ``start()``."""
    if shutil.which("redis-server") is None:
        pytest.skip("needs the redis-server binary")
    made: list[ThrowawayRedis] = []

    def make(*, persistent: bool = False) -> ThrowawayRedis:
        server = ThrowawayRedis(str(tmp_path / f"redis-{len(made)}"), persistent=persistent)
        (tmp_path / f"redis-{len(made)}").mkdir()
        made.append(server)
        return server

    yield make
    for server in made:
        server.stop()
