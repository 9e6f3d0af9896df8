"""CUDA/NVML device names -> catalog kinds (what a probe of a real GPU reports)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from solvers.validate import is_real
from cluster.exceptions import InputError

#: CUDA/NVML device names (lowercased, whitespace collapsed, leading "nvidia " removed) -> kind.
#: Exact matches only: "GeForce RTX 4070 Ti", "4070 SUPER", "RTX 4090 D", "3090 Ti", "H200 NVL",
#: "A100-PCIE-40GB" are other products with other figures, so they are unknown (None), not guessed.
_CUDA_NAMES: Mapping[str, str] = MappingProxyType(
    {
        "geforce rtx 4090": "rtx4090",
        "geforce rtx 4070": "rtx4070",
        "geforce rtx 3090": "rtx3090",
        "a100-sxm4-80gb": "a100-80g-sxm",
        "a100-sxm4-40gb": "a100-40g-sxm",
        "a100 80gb pcie": "a100-80g-pcie",
        "h100 80gb hbm3": "h100-sxm",
        "h100 pcie": "h100-pcie",
        "h200": "h200-sxm",
        "l4": "l4",
        "a10g": "a10g",
        "tesla t4": "t4",
        "l40s": "l40s",
        "a40": "a40",
        "a10": "a10",
        "l40": "l40",
        "rtx a6000": "rtx-a6000",
        "rtx 6000 ada generation": "rtx6000-ada",
        "b200": "b200",
        "gh200 480gb": "gh200",
    }
)


def kind_from_device_name(cuda_name: str, memory_gib: float | None = None) -> str | None:
    """The catalog kind of a device as CUDA/NVML names it, or None for a GPU the catalog lacks.

    Matching is exact after lowercasing, collapsing whitespace and dropping a leading "NVIDIA ",
    so variants with other figures (4070 Ti / SUPER, 3090 Ti, H200 NVL, A100 PCIe 40GB) give None.

    Jetson boards all report "Orin"; ``memory_gib`` (total device memory, which CUDA reports a
    little below the nominal size) tells them apart: > 40 -> jetson-agx-orin-64,
    (20, 40] -> jetson-agx-orin-32, (12, 20] -> jetson-orin-nx-16,
    (6, 12] -> jetson-orin-nano-8 (an Orin NX 8GB looks the same), <= 6 -> None (Orin Nano 4GB).
    Without ``memory_gib``, "Orin" means jetson-agx-orin-64, as the alias "Orin" does.
    """
    if not isinstance(cuda_name, str):
        raise InputError(f"cuda_name: expected a text such as 'NVIDIA GeForce RTX 4090', got {cuda_name!r}")
    if memory_gib is not None and not (is_real(memory_gib) and memory_gib > 0):
        raise InputError(f"memory_gib: expected a positive number of GiB or None, got {memory_gib!r}")
    key = " ".join(cuda_name.lower().split())
    if key.startswith("nvidia "):
        key = key[len("nvidia "):]
    if key == "orin":
        if memory_gib is None or memory_gib > 40:
            return "jetson-agx-orin-64"
        if memory_gib > 20:
            return "jetson-agx-orin-32"
        if memory_gib > 12:
            return "jetson-orin-nx-16"
        if 6 < memory_gib <= 12:
            return "jetson-orin-nano-8"
        return None
    return _CUDA_NAMES.get(key)
