"""Bring a fleet up: Ray runtime -> one DeviceActor per device -> registered in the state store.

This is the imperative shell around :mod:`cluster.runtime` (where devices come from),
:mod:`actors.device` (what runs on them) and :mod:`cluster.state` (where the cluster's state
lives). The CLI and the gateway call it; nothing here draws tables.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cluster.catalog import Catalog, DeviceSpec
from cluster.probe import probed_catalog
from cluster.runtime import Fleet, Runtime, start
from cluster.state import StateStore

log = logging.getLogger(__name__)

HEARTBEAT_TTL_S = 15.0


@dataclass
class RunningFleet:
    """A started fleet: its runtime, one actor handle per device, and the store it reports to."""

    runtime: Runtime
    store: StateStore
    actors: dict[str, Any] = field(default_factory=dict)  # device_id -> ActorHandle
    specs: dict[str, DeviceSpec] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _beat: threading.Thread | None = None
    #: Heartbeat rounds that failed (the store unreachable); the thread keeps going.
    heartbeat_failures: int = 0

    # ---------------------------------------------------------------- queries
    def infos(self) -> list[dict[str, Any]]:
        import ray

        return ray.get([a.info.remote() for a in self.actors.values()])

    def probe(self) -> list[dict[str, Any]]:
        """One real torch operation on every device actor, in parallel; their reports."""
        import ray

        return ray.get([a.probe.remote() for a in self.actors.values()])

    def telemetry(self) -> list[dict[str, Any]]:
        import ray

        return ray.get([a.telemetry.remote() for a in self.actors.values()])

    # ---------------------------------------------------------------- liveness
    def heartbeat_once(self) -> None:
        for device_id in self.actors:
            if not self.store.heartbeat(device_id, ttl_s=HEARTBEAT_TTL_S):
                self._register(device_id)

    def start_heartbeats(self, interval_s: float = HEARTBEAT_TTL_S / 3) -> None:
        """Refresh every device's registration in a background thread until :meth:`shutdown`."""

        def loop() -> None:
            failing = False
            while not self._stop.wait(interval_s):
                try:
                    self.heartbeat_once()
                    failing = False
                except Exception as exc:  # noqa: BLE001 - a store outage must not end the heartbeats
                    self.heartbeat_failures += 1
                    if not failing:  # once per outage
                        log.warning("device heartbeats failed (%s); retrying every %.1f s", exc, interval_s)
                    failing = True

        self._beat = threading.Thread(target=loop, name="flotilla-heartbeat", daemon=True)
        self._beat.start()

    def register_all(self) -> None:
        """Wait for every DeviceActor to answer and register it in the store (what
        :func:`bring_up` does unless told ``wait=False``)."""
        for info in self.infos():
            self._register(info["device_id"], info)

    def _register(self, device_id: str, info: dict[str, Any] | None = None) -> None:
        spec = self.specs[device_id]
        record = {
            "device_id": device_id,
            "kind": spec.kind,
            "host": socket.gethostname(),
            "fleet": self.runtime.fleet_name,
            "registered_at": time.time(),
        }
        if info:
            record.update({k: info[k] for k in ("simulated", "label", "torch_device") if k in info})
        self.store.register_device(device_id, record, ttl_s=HEARTBEAT_TTL_S)

    def shutdown(self) -> None:
        """Stop heartbeats, deregister the devices, kill the actors, stop Ray if we started it."""
        import ray

        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        for device_id, actor in self.actors.items():
            self.store.remove_device(device_id)
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001 - the actor may be dead already; nothing to undo
                pass
        self.actors.clear()
        self.runtime.shutdown()


def bring_up(
    fleet: Fleet | None,
    store: StateStore,
    *,
    address: str | None = None,
    catalog: Catalog | None = None,
    num_cpus: int | None = None,
    progress: Callable[[str], None] | None = None,
    wait: bool = True,
) -> RunningFleet:
    """Start or join Ray, spawn one DeviceActor per device slot and register each in ``store``;
    ``progress`` gets a line when Ray is up. With ``wait=False`` the actors are only spawned: the
    caller starts more work next to them while they come up, then calls
    :meth:`RunningFleet.register_all`."""
    from actors.device import spawn

    catalog = catalog or probed_catalog()
    runtime = start(fleet, address=address, num_cpus=num_cpus)
    if progress is not None:
        progress(f"Ray is up; starting {len(runtime.slots)} device actors…")
    running = RunningFleet(runtime=runtime, store=store)
    try:
        for slot in runtime.slots:
            spec = catalog.get(slot.kind)
            running.specs[slot.device_id] = spec
            running.actors[slot.device_id] = spawn(spec, slot.device_id, real_cuda=not slot.simulated, node_id=slot.node_id)
        if wait:
            running.register_all()
    except BaseException:
        running.shutdown()
        raise
    return running
