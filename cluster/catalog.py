"""The device catalog: typed device figures, each with its source, and pure queries over them.

This module is the catalog's one import name; the parts are the specs and queries
(:mod:`cluster.catalog_specs`), reading and validating the file (:mod:`cluster.catalog_file`)
and CUDA device names (:mod:`cluster.cuda_names`).

The figures live in ``cluster/devices.yaml`` (one source of truth, versioned, every figure a
``{value, source, date, basis}`` mapping); the catalog loads and validates that file and answers
"what is this device?" questions. Nothing here probes hardware.

Units (the data file's header says the same):

* ``memory_gib`` GiB, so ``memory_bytes = memory_gib * 2**30``;
* ``mem_bw_gbs`` and ``link_gbs`` GB/s, so ``mem_bw_bytes_s = mem_bw_gbs * 10**9``;
* ``tflops_fp16`` / ``tflops_fp8`` dense tensor TFLOPS, so ``flops_fp16 = tflops_fp16 * 10**12``
  FLOP/s. GeForce cards carry the FP32-accumulate figure (half their FP16-accumulate rate);
* power in W, price in USD per device-hour.

Names: a *kind* (``rtx4090``, ``a100-80g-sxm``) is the canonical name. People and tools may type
aliases ("A100-80GB", "RTX 4090"); :meth:`Catalog.resolve` maps them after normalisation
(lowercase, trimmed, runs of spaces, underscores and dashes become one ``-``).
:func:`kind_from_device_name` maps the names CUDA/NVML report ("NVIDIA A100-SXM4-80GB") to kinds.

The ``cpu`` kind is the local host, whose figures are measured rather than typed in. Probing lives
in :mod:`cluster.probe` and is injected: a catalog answers ``get("cpu")`` only when it was given a
``host_probe`` (:func:`cluster.probe.probed_catalog` gives one that measures once per process);
:func:`load_catalog` and :func:`default_catalog` never measure anything.
"""

from __future__ import annotations

from cluster.catalog_file import DEFAULT_CATALOG_PATH, default_catalog, load_catalog
from cluster.catalog_specs import (
    BASES,
    CATEGORIES,
    HOST_KIND,
    Catalog,
    DeviceSpec,
    Figure,
    HostTemplate,
    normalize_name,
)
from cluster.cuda_names import kind_from_device_name

__all__ = ["BASES", "CATEGORIES", "DEFAULT_CATALOG_PATH", "HOST_KIND", "Catalog", "DeviceSpec", "Figure",
           "HostTemplate", "default_catalog", "kind_from_device_name", "load_catalog", "normalize_name"]
