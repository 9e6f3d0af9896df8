"""Probing the local host: the measured figures of the ``cpu`` kind, injected into a catalog.

:func:`measure_host_cpu` measures now; :func:`probed_catalog` is the packaged catalog with a probe
that measures once per process (well under a second after torch is imported) and reuses it.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.catalog import (
    DEFAULT_CATALOG_PATH,
    HOST_KIND,
    Catalog,
    DeviceSpec,
    Figure,
    HostTemplate,
    default_catalog,
)
from cluster.exceptions import CatalogError, InputError
from solvers.validate import is_real

_HOST_COPY_BYTES = 64 * 2**20  # per tensor; source + destination = 128 MiB, beyond most L3 caches
_HOST_GEMM_SIZES = (256, 512, 1024, 2048)


@dataclass(frozen=True, slots=True)
class HostMeasurement:
    """Raw figures measured on this host (see :func:`measure_host_cpu` for the method)."""

    gemm_tflops: float
    copy_gbs: float
    memory_gib: float
    gemm_n: int
    cpu_model: str
    date: str


def measure_host_cpu(seconds_budget: float = 0.5, *, template: HostTemplate | None = None) -> DeviceSpec:
    """Measure the local host and return its :class:`DeviceSpec` (kind ``cpu``), now, uncached.

    * ``tflops_fp16``: fp32 GEMM rate (the CPU path computes in fp32), ``2 n^3 / t`` for the best
      of several ``n x n`` ``torch.mm`` calls; ``n`` grows (256 .. 2048) until one call takes at
      least 1/16 of the budget. ``torch.set_num_threads`` is left as it is.
    * ``mem_bw_gbs``: ``2 * B / t`` for the best of several copies of a ``B`` = 64 MiB fp32 tensor
      (bytes read + written). ``link_gbs`` is the same figure: data reaches the host by a copy.
    * ``memory_gib``: physical memory (``os.sysconf``, else /proc/meminfo), or the cgroup limit
      where that is lower.

    Roughly ``seconds_budget`` seconds (plus torch's import the first time). Figures get basis
    "measured", today's date and a source starting "measured on this host at start-up".
    ``template`` supplies name, aliases and the power estimates; default: the packaged catalog's.
    :func:`probed_catalog` caches one measurement per process; call this to measure again.
    """
    if not is_real(seconds_budget) or seconds_budget <= 0:
        raise InputError(f"seconds_budget: expected a positive number of seconds, got {seconds_budget!r}")
    if template is None:
        template = default_catalog().host
        if template is None:
            raise CatalogError(f"{DEFAULT_CATALOG_PATH}: devices.{HOST_KIND}: missing (the host template)")
    return _host_spec(template, _measure_host(float(seconds_budget)))


@functools.lru_cache(maxsize=1)
def _cached_host_measurement() -> HostMeasurement:
    return _measure_host(0.5)


def _measure_host(seconds_budget: float) -> HostMeasurement:
    import torch  # heavy; only the host measurement needs it

    gemm_s = 0.6 * seconds_budget
    with torch.no_grad():
        # GEMM: grow n until one call is long enough to time, then best of the remaining budget.
        n, best = _HOST_GEMM_SIZES[0], math.inf
        for n in _HOST_GEMM_SIZES:
            a = torch.randn(n, n, dtype=torch.float32)
            b = torch.randn(n, n, dtype=torch.float32)
            best = _best_time(lambda: torch.mm(a, b), min_runs=2, max_runs=2, budget_s=math.inf)
            if best >= gemm_s / 16:
                break
        best = min(best, _best_time(lambda: torch.mm(a, b), min_runs=1, max_runs=8, budget_s=gemm_s / 2))
        gemm_tflops = 2.0 * n**3 / best / 1e12
        # Memory bandwidth: tensor copy, bytes read + written.
        src = torch.ones(_HOST_COPY_BYTES // 4, dtype=torch.float32)
        dst = torch.empty_like(src)
        dst.copy_(src)  # touch the destination's pages before timing
        t_copy = _best_time(lambda: dst.copy_(src), min_runs=3, max_runs=10, budget_s=0.35 * seconds_budget)
        copy_gbs = 2.0 * _HOST_COPY_BYTES / t_copy / 1e9
    return HostMeasurement(
        gemm_tflops=gemm_tflops,
        copy_gbs=copy_gbs,
        memory_gib=_host_memory_bytes() / 2**30,
        gemm_n=n,
        cpu_model=_cpu_model(),
        date=_dt.date.today().isoformat(),
    )


def _best_time(fn: Any, *, min_runs: int, max_runs: int, budget_s: float) -> float:
    """Shortest wall time of ``fn()`` over at least ``min_runs`` runs, stopping at ``max_runs`` or the budget."""
    best, start = math.inf, time.perf_counter()
    for i in range(max_runs):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        if i + 1 >= min_runs and time.perf_counter() - start >= budget_s:
            break
    return max(best, 1e-9)


def _host_memory_bytes() -> int:
    total = 0
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        try:
            with open("/proc/meminfo", encoding="ascii") as fh:
                for line in fh:
                    if line.startswith("MemTotal:"):
                        total = int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text(encoding="ascii").strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < (total or math.inf):
            total = int(text)
    if total <= 0:
        raise OSError("cannot read the host's memory size (os.sysconf, /proc/meminfo)")
    return total


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith(("model name", "hardware")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "unknown CPU"


def _host_spec(template: HostTemplate, m: HostMeasurement) -> DeviceSpec:
    """Join the typed host template with a measurement into the ``cpu`` DeviceSpec."""
    head = "measured on this host at start-up"
    cpus = os.cpu_count() or 1

    def measured(value: float, how: str) -> Figure:
        return Figure(value=value, source=f"{head}: {how}", date=m.date, basis="measured")

    def derived(value: float | str | None, why: str) -> Figure:
        return Figure(value=value, source=why, date=m.date, basis="derived")

    power = dict(template.figures)
    vcpu_price = power["price_per_vcpu_hour"]
    figures = (
        ("memory_gib", measured(m.memory_gib, "physical memory (os.sysconf / /proc/meminfo, cgroup limit if lower)")),
        ("mem_bw_gbs", measured(m.copy_gbs, "best torch copy of a 64 MiB fp32 tensor, bytes read + written / time")),
        ("tflops_fp16", measured(m.gemm_tflops, f"fp32 GEMM (the CPU path runs fp32), best n={m.gemm_n} torch.mm, 2n^3/t")),
        ("tflops_fp8", derived(None, "no FP8 GEMM path on the CPU")),
        ("power_idle_w", power["power_idle_w"]),
        ("power_max_w", power["power_max_w"]),
        ("interconnect", derived("host memory", "the local host: data reaches it by a memory copy")),
        ("link_gbs", measured(m.copy_gbs, "the memory copy bandwidth (data reaches the host by a copy)")),
        ("price_per_hour", derived(vcpu_price.value * cpus,
                                   f"{cpus} logical CPUs x ${vcpu_price.value:g} per vCPU-hour "
                                   f"(price_per_vcpu_hour: {vcpu_price.source}, {vcpu_price.date})")),
    )
    values = {name: fig.value for name, fig in figures}
    return DeviceSpec(
        kind=template.kind,
        name=f"{template.name} ({m.cpu_model}, {cpus} logical CPUs)",
        category="host",
        aliases=template.aliases,
        figures=figures,
        **values,
    )


def _probe(template: HostTemplate) -> DeviceSpec:
    return _host_spec(template, _cached_host_measurement())


@functools.lru_cache(maxsize=1)
def probed_catalog() -> Catalog:
    """The packaged catalog whose ``get("cpu")`` measures this host once per process."""
    return dataclasses.replace(default_catalog(), host_probe=_probe)
