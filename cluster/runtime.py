"""The embedded runtime: start (or join) Ray, turn a fleet into device resources and DeviceActors.

* No address given (and no ``RAY_ADDRESS``): a local Ray instance is started, and every device the
  fleet file lists becomes the custom resource ``device:<kind>`` on this node. Real CUDA devices
  found on this host are added under their detected kinds.
* An address given: the runtime joins that cluster and takes the devices from the cluster's
  ``device:<kind>`` resources, as each node advertised them with ``ray start --resources``
  (``python -m cluster.runtime resources`` prints that JSON for the host it runs on).

A listed device with no real CUDA device behind it is *simulated*: its DeviceActor computes on the
CPU and reports the modeled time and energy of its kind, labelled as modeled.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cluster.catalog import Catalog, kind_from_device_name
from cluster.probe import probed_catalog
from cluster.exceptions import CatalogError, InputError, RayStartError, UnknownDeviceKindError

RESOURCE_PREFIX = "device:"


def device_resource(kind: str) -> str:
    """The Ray custom resource that places work on a device of ``kind``."""
    return f"{RESOURCE_PREFIX}{kind}"


# --------------------------------------------------------------------------------------- fleets


@dataclass(frozen=True, slots=True)
class FleetEntry:
    """``count`` devices of one catalog ``kind``."""

    kind: str
    count: int

    def __post_init__(self) -> None:
        if not isinstance(self.count, int) or isinstance(self.count, bool) or self.count < 1:
            raise InputError(f"count for {self.kind!r}: expected an integer >= 1, got {self.count!r}")


@dataclass(frozen=True, slots=True)
class Fleet:
    """A named list of device kinds and counts (the content of a fleet file)."""

    name: str
    entries: tuple[FleetEntry, ...]
    #: Edge experts the fleet hosts, ``MODEL@KIND`` (the model served on every device of that
    #: kind); SelectExperts and ``routing: experts`` choose among them (docs/edge-experts.md).
    experts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        kinds = [e.kind for e in self.entries]
        dup = [k for k, n in Counter(kinds).items() if n > 1]
        if dup:
            raise InputError(f"fleet {self.name!r}: kind {dup[0]!r} is listed more than once; give one entry with its count")

    def resources(self) -> dict[str, float]:
        """Ray custom resources for these devices: ``{"device:<kind>": count}``."""
        return {device_resource(e.kind): float(e.count) for e in self.entries}

    def slots(self) -> list[DeviceSlot]:
        """One slot per device, numbered per kind (``rtx4090-0``, ``rtx4090-1``, ...)."""
        return [DeviceSlot(f"{e.kind}-{i}", e.kind, i) for e in self.entries for i in range(e.count)]

    @property
    def size(self) -> int:
        return sum(e.count for e in self.entries)


@dataclass(frozen=True, slots=True)
class DeviceSlot:
    """One device of the running fleet. ``cuda_index`` is set for a real CUDA device (its index
    among the GPUs of its node); ``node_id`` is the Ray node that advertises it (joined clusters)."""

    device_id: str
    kind: str
    index: int
    cuda_index: int | None = None
    node_id: str | None = None

    @property
    def simulated(self) -> bool:
        return self.cuda_index is None


def parse_fleet(obj: Any, *, source: str = "<fleet>", catalog: Catalog | None = None) -> Fleet:
    """Validate a loaded fleet document. Errors name ``source`` and the field."""
    catalog = catalog or probed_catalog()
    if not isinstance(obj, dict):
        raise CatalogError(f"{source}: expected a mapping with 'devices', got {type(obj).__name__}")
    unknown = set(obj) - {"name", "devices", "experts"}
    if unknown:
        raise CatalogError(f"{source}: unknown field {sorted(unknown)[0]!r}; allowed: name, devices, experts")
    name = obj.get("name", Path(source).stem)
    if not isinstance(name, str) or not name:
        raise CatalogError(f"{source}: name: expected a non-empty string, got {name!r}")
    devices = obj.get("devices")
    if not isinstance(devices, list) or not devices:
        raise CatalogError(f"{source}: devices: expected a non-empty list of {{kind, count}}, got {devices!r}")
    entries = []
    for i, item in enumerate(devices):
        where = f"{source}: devices[{i}]"
        if not isinstance(item, dict) or "kind" not in item:
            raise CatalogError(f"{where}: expected a mapping with 'kind' (and optional 'count'), got {item!r}")
        extra = set(item) - {"kind", "count"}
        if extra:
            raise CatalogError(f"{where}: unknown field {sorted(extra)[0]!r}; allowed: kind, count")
        try:
            kind = catalog.resolve(str(item["kind"]))
        except UnknownDeviceKindError as exc:
            raise CatalogError(f"{where}.kind: {exc}") from None
        count = item.get("count", 1)
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise CatalogError(f"{where}.count: expected an integer >= 1, got {count!r}")
        entries.append(FleetEntry(kind, count))
    experts = _fleet_experts(obj.get("experts", []), {e.kind for e in entries}, source, catalog)
    try:
        return Fleet(name, tuple(entries), experts)
    except InputError as exc:
        raise CatalogError(f"{source}: {exc}") from None


def _fleet_experts(items: Any, kinds: set[str], source: str, catalog: Catalog) -> tuple[str, ...]:
    """The fleet's ``experts``: a list of ``MODEL@KIND``, KIND one of the fleet's kinds (canonical
    name), each once."""
    if not isinstance(items, list):
        raise CatalogError(f"{source}: experts: expected a list of MODEL@KIND, got {items!r}")
    out: list[str] = []
    for i, item in enumerate(items):
        where = f"{source}: experts[{i}]"
        model, at, kind = str(item).partition("@") if isinstance(item, str) else ("", "", "")
        if not at or not model.strip() or not kind.strip():
            raise CatalogError(f"{where}: expected MODEL@KIND (e.g. smollm2-135m@jetson-agx-orin-64), got {item!r}")
        try:
            kind = catalog.resolve(kind.strip())
        except UnknownDeviceKindError as exc:
            raise CatalogError(f"{where}: {exc}") from None
        if kind not in kinds:
            raise CatalogError(f"{where}: kind {kind!r} is not in this fleet's devices; allowed: {', '.join(sorted(kinds))}")
        name = f"{model.strip()}@{kind}"
        if name in out:
            raise CatalogError(f"{where}: {name!r} is listed more than once")
        out.append(name)
    return tuple(out)


def load_fleet(path: str | os.PathLike[str], *, catalog: Catalog | None = None) -> Fleet:
    """Read a fleet YAML file (see ``examples/fleet.yaml``)."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise CatalogError(f"{p}: fleet file not found") from None
    except OSError as exc:
        raise CatalogError(f"{p}: cannot read fleet file: {exc.strerror}") from None
    try:
        obj = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CatalogError(f"{p}: not valid YAML: {str(exc).splitlines()[0]}") from None
    return parse_fleet(obj, source=str(p), catalog=catalog)


# ------------------------------------------------------------------------------ real devices


@dataclass(frozen=True, slots=True)
class DetectedDevice:
    """A CUDA device found on this host. ``kind`` is None when the name matches no catalog kind."""

    cuda_index: int
    name: str
    memory_gib: float
    kind: str | None


def detect_cuda_devices() -> list[DetectedDevice]:
    """CUDA devices on this host, named as the driver names them and mapped to catalog kinds.

    Uses torch when it sees CUDA; Ray's own accelerator detection is not used because it labels
    every GeForce card alike and finds no GPU on a Jetson. A host with neither a CUDA driver
    library nor an NVIDIA device node answers at once, without importing torch (seconds).
    """
    if not _may_have_cuda():
        return []
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return []
    if not torch.cuda.is_available():
        return []
    found = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        mem = props.total_memory / 2**30
        found.append(DetectedDevice(i, props.name, mem, kind_from_device_name(props.name, memory_gib=mem)))
    return found


def _may_have_cuda() -> bool:
    """False only when CUDA cannot be there: no ``libcuda`` the loader knows and no NVIDIA device
    node (``/dev/nvidia*``; ``/dev/nvhost-*`` and ``/dev/nvgpu`` on a Jetson; ``/dev/dxg`` under WSL)."""
    import ctypes.util
    import sys

    if "torch" in sys.modules:
        return True
    dev = Path("/dev")
    if any(dev.glob("nvidia*")) or any(dev.glob("nvhost-*")) or (dev / "nvgpu").exists() or (dev / "dxg").exists():
        return True
    return ctypes.util.find_library("cuda") is not None


def host_resources() -> dict[str, float]:
    """The ``device:<kind>`` resources this host should advertise to ``ray start --resources``."""
    counts = Counter(d.kind for d in detect_cuda_devices() if d.kind is not None)
    return {device_resource(k): float(n) for k, n in sorted(counts.items())}


# -------------------------------------------------------------------------------------- Ray


@dataclass
class Runtime:
    """A started (or joined) Ray runtime and the device slots it offers."""

    embedded: bool
    address: str | None
    slots: list[DeviceSlot] = field(default_factory=list)
    fleet_name: str = "cluster"
    #: True when :func:`start` connected this process to Ray (and so disconnects it on shutdown);
    #: False when Ray was already initialised by the caller, who keeps ownership.
    owns_ray: bool = True

    def shutdown(self) -> None:
        """Disconnect from Ray (stopping the local instance when embedded), if this runtime connected."""
        import ray

        if self.owns_ray and ray.is_initialized():
            ray.shutdown()


def resolve_address(address: str | None) -> str | None:
    """The Ray address to join: ``address``, else ``$RAY_ADDRESS``, else None (start locally)."""
    if address:
        return address
    env = os.environ.get("RAY_ADDRESS", "").strip()
    return env or None


def start(
    fleet: Fleet | None = None,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    namespace: str = "flotilla",
) -> Runtime:
    """Start a local Ray instance for ``fleet`` or join the cluster at ``address``.

    Locally, each fleet device becomes one unit of ``device:<kind>``; real CUDA devices on the
    host are matched to fleet slots of their kind first, so a fleet that lists the host's real GPU
    runs it for real and simulates the rest. An empty fleet on a host without GPUs is refused.
    """
    import ray

    join = resolve_address(address)
    detected = [d for d in detect_cuda_devices() if d.kind is not None]
    if join is None:
        if fleet is None and not detected:
            raise InputError("no fleet given and no CUDA device found: pass --fleet FILE (e.g. examples/fleet.yaml)")
        if fleet is None:
            counts = Counter(d.kind for d in detected)
            fleet = Fleet("host", tuple(FleetEntry(k, n) for k, n in sorted(counts.items())))
        resources = fleet.resources()
        owns = not ray.is_initialized()
        if owns:
            try:
                ray.init(
                    address="local",
                    num_cpus=num_cpus if num_cpus is not None else max(os.cpu_count() or 1, fleet.size + 2),
                    resources=resources,
                    namespace=namespace,
                    include_dashboard=False,
                    logging_level="ERROR",
                    log_to_driver=False,
                )
            except Exception as exc:  # noqa: BLE001 - Ray raises many kinds here; each becomes one line
                with contextlib.suppress(Exception):
                    ray.shutdown()  # whatever part of it did start
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise RayStartError(f"could not start a local Ray instance: {first} ({type(exc).__name__}); "
                                    "Ray's logs are under /tmp/ray/session_latest/logs") from None
        slots = _assign_cuda(fleet.slots(), detected)
        return Runtime(embedded=True, address=None, slots=slots, fleet_name=fleet.name, owns_ray=owns)

    owns = not ray.is_initialized()
    if owns:
        ray.init(address=join, namespace=namespace, logging_level="ERROR", log_to_driver=False)
    return Runtime(embedded=False, address=join, slots=slots_from_nodes(ray.nodes()), fleet_name="cluster", owns_ray=owns)


def slots_from_nodes(nodes: list[dict[str, Any]]) -> list[DeviceSlot]:
    """Device slots of a joined cluster, from ``ray.nodes()`` records.

    Each alive node advertises ``device:<kind>`` units (``ray start --resources``). A node that
    also has Ray ``GPU`` resources runs its devices for real, one GPU per unit in order, as far as
    its GPUs go; the rest of its units, and every unit of a node without GPUs, are simulated.
    (Ray finds no GPU on a Jetson, so a Jetson node's devices are simulated unless it is started
    with ``--num-gpus``.) Slots are numbered per kind across the cluster, node by node.
    """
    per_kind: Counter[str] = Counter()
    slots: list[DeviceSlot] = []
    for node in sorted(nodes, key=lambda n: str(n.get("NodeID", ""))):
        if not node.get("Alive", node.get("alive", False)):
            continue
        res = node.get("Resources", {}) or {}
        gpus = int(res.get("GPU", 0))
        next_gpu = 0
        for name, count in sorted(res.items()):
            if not name.startswith(RESOURCE_PREFIX):
                continue
            kind = name[len(RESOURCE_PREFIX):]
            for _ in range(int(count)):
                real = next_gpu < gpus
                slots.append(DeviceSlot(f"{kind}-{per_kind[kind]}", kind, per_kind[kind],
                                        next_gpu if real else None, node.get("NodeID")))
                next_gpu += int(real)
                per_kind[kind] += 1
    return slots


def _assign_cuda(slots: list[DeviceSlot], detected: list[DetectedDevice]) -> list[DeviceSlot]:
    """Give real CUDA devices to the first fleet slots of the same kind."""
    free: dict[str, list[int]] = {}
    for d in detected:
        free.setdefault(d.kind or "", []).append(d.cuda_index)
    out = []
    for s in slots:
        pool = free.get(s.kind)
        out.append(DeviceSlot(s.device_id, s.kind, s.index, pool.pop(0)) if pool else s)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m cluster.runtime resources``: print this host's device resources as JSON."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if args != ["resources"]:
        print("usage: python -m cluster.runtime resources", file=sys.stderr)
        return 2
    print(json.dumps(host_resources()))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
