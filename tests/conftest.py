"""Shared fixtures: one local Ray instance per test session, and the Redis URL.

The Ray instance is started once (never per test) and never joins someone else's cluster: it is a
fresh local instance with the example fleet's device resources, so actor tests can place
``device:<kind>`` actors exactly as production does.
"""

from __future__ import annotations

import os

import pytest

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
