"""Supervisor: notices dead ExpertActors and replaces them, as Ray Serve's controller does.

A daemon thread checks every ``check_interval_s``: each live replica is pinged (a replica whose
process is gone raises an actor-death error and is marked dead in the router; one that is only
slow to answer is left alone), and each dead replica is replaced through ``respawn(device_id)``
(which returns a started ExpertActor handle) with exponential backoff per device between failed
attempts. The router then dispatches to the new handle. Counters in the state store:
``supervisor.replaced``, ``supervisor.respawn_failed``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cluster.exceptions import InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class SupervisorConfig:
    """How often to check and how to back off. Errors name the field."""

    #: Seconds between checks of every replica.
    check_interval_s: float = 2.0
    #: A ping that takes longer than this is "busy", not dead.
    ping_timeout_s: float = 5.0
    #: Wait after a failed replacement, doubled after each further failure, up to ``backoff_max_s``.
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0

    def __post_init__(self) -> None:
        for name in ("check_interval_s", "ping_timeout_s", "backoff_initial_s", "backoff_max_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
                raise InputError(f"{name}: {v!r}; allowed: a number of seconds > 0")
        if self.backoff_max_s < self.backoff_initial_s:
            raise InputError(f"backoff_max_s: {self.backoff_max_s!r}; allowed: >= backoff_initial_s ({self.backoff_initial_s!r})")


class Supervisor:
    """Keeps a router's replicas alive; see the module docstring."""

    def __init__(self, router: Any, respawn: Callable[[str], Any], config: SupervisorConfig | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.router = router
        self.respawn = respawn
        self.config = config or SupervisorConfig()
        self._clock = clock
        self._next_try: dict[str, float] = {}
        self._backoff: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Supervisor:
        self._thread = threading.Thread(target=self._loop, name="flotilla-supervisor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.config.ping_timeout_s + 5)

    def _loop(self) -> None:
        while not self._stop.wait(self.config.check_interval_s):
            try:
                self.check_once()
            except Exception:  # noqa: BLE001 - the supervisor must outlive any one failure
                log.warning("supervisor check failed; retrying", exc_info=True)

    def check_once(self) -> list[str]:
        """One round: detect deaths, replace dead replicas whose backoff has passed. Returns the
        device ids replaced in this round."""
        import ray
        from ray.exceptions import GetTimeoutError

        from actors.dispatch import is_actor_death

        replicas = self.router.replicas()
        live = [r for r in replicas if r["alive"]]
        handles = {r["device_id"]: self.router.handle(r["device_id"]) for r in live}
        refs = {d: h.ping.remote() for d, h in handles.items()}
        for device_id, ref in refs.items():
            try:
                ray.get(ref, timeout=self.config.ping_timeout_s)
            except GetTimeoutError:
                continue  # busy, not dead
            except Exception as exc:  # noqa: BLE001 - sorted below
                if is_actor_death(exc):
                    self.router.mark_dead(device_id)
        replaced = []
        now = self._clock()
        for r in self.router.replicas():
            device_id = r["device_id"]
            if r["alive"] or now < self._next_try.get(device_id, 0.0):
                continue
            try:
                handle = self.respawn(device_id)
            except Exception as exc:  # noqa: BLE001 - retried after the backoff
                wait = min(self._backoff.get(device_id, self.config.backoff_initial_s / 2) * 2, self.config.backoff_max_s)
                self._backoff[device_id] = wait
                self._next_try[device_id] = now + wait
                self.router.store.incr("supervisor.respawn_failed")
                log.warning("supervisor: replacing %s failed (%s); next try in %.1f s", device_id, exc, wait)
                continue
            self.router.replace(device_id, handle)
            self._backoff.pop(device_id, None)
            self._next_try.pop(device_id, None)
            self.router.store.incr("supervisor.replaced")
            replaced.append(device_id)
        return replaced
