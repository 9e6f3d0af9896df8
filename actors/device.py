"""DeviceActor: one Ray actor per device of the fleet.

It owns a torch device (``cuda:0`` inside the actor when Ray gave it a real GPU, ``cpu`` otherwise),
the device's :class:`~cluster.catalog.DeviceSpec`, a memory ledger and telemetry. ``run(fn, ...)``
executes a real torch callable there and reports

* ``wall_s``: measured wall time of the call on the hardware it actually ran on;
* ``modeled_s`` / ``modeled_j``: the time and energy the device *kind* would take for the same
  work (FLOPs counted by torch's FlopCounterMode, bytes from the tensors touched), from
  :mod:`cluster.perf`. For a simulated device these are the only device figures, and every report
  says ``simulated <kind> on cpu``.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from cluster import perf
from cluster.catalog import DeviceSpec
from cluster.exceptions import CapacityError, InputError

DEVICE_ACTOR_CPUS = 0.5  # scheduling share per DeviceActor; the device resource does the placing
#: Share of its ``device:<kind>`` unit (and of its GPU, when real) that a DeviceActor holds. The rest
#: is for the workload hosted on the same device (an ExpertActor asks for ``1 - DEVICE_ACTOR_SHARE``
#: with node affinity to its DeviceActor), so a device never hosts more than it was given.
DEVICE_ACTOR_SHARE = 0.5
#: Share of a ``device:<kind>`` unit kept free for one context-parallel rank
#: (:mod:`actors.context_parallel`), so a served fleet can still form a group over its devices.
CONTEXT_PARALLEL_SHARE = 0.1


@dataclass(frozen=True, slots=True)
class OpReport:
    """Figures for one ``run``: measured wall time and the device kind's modeled time and energy."""

    device_id: str
    kind: str
    label: str
    simulated: bool
    wall_s: float
    modeled_s: float
    modeled_j: float
    flops: float
    bytes: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _tensor_bytes(obj: Any) -> int:
    """Bytes held by the tensors in ``obj`` (nested tuples / lists / dicts)."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(o) for o in obj)
    if isinstance(obj, dict):
        return sum(_tensor_bytes(o) for o in obj.values())
    return 0


def _to_device(obj: Any, device: Any) -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_to_device(o, device) for o in obj)
    if isinstance(obj, list):
        return [_to_device(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    return obj


def _perf_dtype(obj: Any) -> str:
    """The perf-model dtype of the first floating tensor in ``obj`` (fp32 when none is found)."""
    import torch

    names = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp32"}
    if isinstance(obj, torch.Tensor):
        return names.get(obj.dtype, "fp32")
    items = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else ()
    for o in items:
        if isinstance(o, (torch.Tensor, list, tuple, dict)):
            return _perf_dtype(o)
    return "fp32"


def _to_cpu(obj: Any) -> Any:
    return _to_device(obj, "cpu")


class DeviceActor:
    """The state and operations of one device. Wrapped with ``ray.remote`` by :func:`spawn`."""

    def __init__(self, spec: DeviceSpec, device_id: str, *, real_cuda: bool = False) -> None:
        if real_cuda:  # torch is imported here only for a real device: a simulated one starts without it
            import torch

            if not torch.cuda.is_available():
                raise InputError(f"device {device_id}: real_cuda=True but this worker sees no CUDA device")
        self.spec = spec
        self.device_id = device_id
        #: "cuda:0" or "cpu" (a string, which every torch call accepts).
        self.torch_device = "cuda:0" if real_cuda else "cpu"
        # The host CPU is itself a real device: its figures are measured, nothing is simulated.
        self.simulated = not real_cuda and spec.kind != "cpu"
        self._lock = threading.Lock()
        self._reservations: dict[str, tuple[int, str]] = {}
        self._ids = itertools.count(1)
        self._ops = 0
        self._wall_s = 0.0
        self._modeled_s = 0.0
        self._modeled_j = 0.0

    # ------------------------------------------------------------------ identity
    @property
    def label(self) -> str:
        if self.simulated:
            return f"simulated {self.spec.kind} on cpu"
        return f"{self.spec.kind} on {self.torch_device}"

    def info(self) -> dict[str, Any]:
        """What this device is and where it computes."""
        return {
            "device_id": self.device_id,
            "kind": self.spec.kind,
            "name": self.spec.name,
            "category": self.spec.category,
            "simulated": self.simulated,
            "torch_device": str(self.torch_device),
            "label": self.label,
            "memory_bytes": self.spec.memory_bytes,
        }

    # ------------------------------------------------------------------ memory ledger
    def reserve(self, nbytes: int, tag: str = "") -> str:
        """Reserve ``nbytes`` of device memory; returns a reservation id for :meth:`release`.

        Refused with :class:`CapacityError` (nothing reserved) when it would exceed capacity.
        """
        if not isinstance(nbytes, int) or isinstance(nbytes, bool) or nbytes < 0:
            raise InputError(f"nbytes: expected a non-negative integer, got {nbytes!r}")
        with self._lock:
            used = sum(n for n, _ in self._reservations.values())
            free = self.spec.memory_bytes - used
            if nbytes > free:
                raise CapacityError(
                    f"{self.label} ({self.device_id}): cannot reserve {nbytes} bytes for {tag or 'untagged'}: "
                    f"{free} of {self.spec.memory_bytes} bytes free; release a reservation or use a larger device"
                )
            rid = f"{self.device_id}/r{next(self._ids)}"
            self._reservations[rid] = (nbytes, tag)
            return rid

    def release(self, reservation_id: str) -> int:
        """Release a reservation; returns the bytes freed. An unknown id is an InputError."""
        with self._lock:
            if reservation_id not in self._reservations:
                raise InputError(f"reservation_id: unknown reservation {reservation_id!r} on {self.device_id}")
            return self._reservations.pop(reservation_id)[0]

    def ledger(self) -> dict[str, Any]:
        with self._lock:
            used = sum(n for n, _ in self._reservations.values())
            return {
                "capacity_bytes": self.spec.memory_bytes,
                "reserved_bytes": used,
                "free_bytes": self.spec.memory_bytes - used,
                "reservations": {rid: {"bytes": n, "tag": t} for rid, (n, t) in self._reservations.items()},
            }

    # ------------------------------------------------------------------ computation
    def run(
        self,
        fn: Callable[..., Any],
        *args: Any,
        flops: float | None = None,
        bytes_moved: float | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Run ``fn(*args, **kwargs)`` here with tensors moved to this device.

        Returns ``{"result": <fn's result on cpu>, "report": OpReport.to_dict()}``. ``flops`` and
        ``bytes_moved`` override the counted FLOPs and the tensor bytes used for the model.
        """
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        args = _to_device(args, self.torch_device)
        kwargs = _to_device(kwargs, self.torch_device)
        counter = FlopCounterMode(display=False)
        sync = torch.cuda.synchronize if self.torch_device.startswith("cuda") else (lambda: None)
        sync()
        t0 = time.perf_counter()
        with counter:
            result = fn(*args, **kwargs)
        sync()
        wall = time.perf_counter() - t0
        n_flops = float(counter.get_total_flops()) if flops is None else float(flops)
        n_bytes = float(_tensor_bytes(args) + _tensor_bytes(kwargs) + _tensor_bytes(result)) if bytes_moved is None else float(bytes_moved)
        dtype = _perf_dtype(result if result is not None else args)
        modeled_s = perf.op_time(n_flops, n_bytes, self.spec, dtype)
        modeled_j = perf.op_energy(n_flops, n_bytes, self.spec, dtype)
        report = OpReport(self.device_id, self.spec.kind, self.label, self.simulated, wall, modeled_s, modeled_j, n_flops, n_bytes)
        with self._lock:
            self._ops += 1
            self._wall_s += wall
            self._modeled_s += modeled_s
            self._modeled_j += modeled_j
        return {"result": _to_cpu(result), "report": report.to_dict()}

    def probe(self, n: int = 512) -> dict[str, Any]:
        """Run one real n x n fp32 matmul here and return its report (the fleet's health check)."""
        import torch

        g = torch.Generator().manual_seed(0)
        a = torch.randn(n, n, generator=g)
        b = torch.randn(n, n, generator=g)
        from torch.utils.flop_counter import FlopCounterMode

        # Warm-up, under a FLOP counter too: the counter's first use in a process sets up its
        # tables (seconds), which must not land inside the timed region of the op it reports.
        with FlopCounterMode(display=False):
            torch.matmul(a.to(self.torch_device), b.to(self.torch_device))
        out = self.run(torch.matmul, a, b)
        ref = a @ b
        out["report"]["checked"] = bool(torch.allclose(out["result"], ref, rtol=1e-4, atol=1e-3))
        return out["report"]

    def telemetry(self) -> dict[str, Any]:
        """Totals since start: operations, measured wall time, modeled device time and energy."""
        with self._lock:
            return {
                "device_id": self.device_id,
                "kind": self.spec.kind,
                "label": self.label,
                "simulated": self.simulated,
                "ops": self._ops,
                "wall_s": self._wall_s,
                "modeled_s": self._modeled_s,
                "modeled_j": self._modeled_j,
            }


def placement_options(kind: str, share: float, *, cpus: float, real_cuda: bool = False, node_id: str | None = None,
                      name: str | None = None, namespace: str | None = None) -> dict[str, Any]:
    """Ray actor options that place an actor on ``share`` of a ``device:<kind>`` unit (and of a GPU
    when the device is real), pinned to ``node_id`` when given, optionally named."""
    from cluster.runtime import device_resource

    options: dict[str, Any] = {"resources": {device_resource(kind): share}, "num_cpus": cpus}
    if real_cuda:
        options["num_gpus"] = share
    if node_id:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id, soft=False)
    if name:
        options["name"] = name
        if namespace:
            options["namespace"] = namespace
    return options


def spawn(spec: DeviceSpec, device_id: str, *, real_cuda: bool = False, node_id: str | None = None,
          name: str | None = None, namespace: str | None = None):
    """Start a DeviceActor placed with its share of a ``device:<kind>`` unit (and of a GPU when real),
    on node ``node_id`` when given (a joined cluster: the node that advertises the device)."""
    import ray

    options = placement_options(spec.kind, DEVICE_ACTOR_SHARE, cpus=DEVICE_ACTOR_CPUS, real_cuda=real_cuda,
                                node_id=node_id, name=name, namespace=namespace)
    return ray.remote(DeviceActor).options(max_concurrency=4, **options).remote(spec, device_id, real_cuda=real_cuda)
