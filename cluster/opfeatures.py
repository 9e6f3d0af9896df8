"""Roofline-derived features of a GEMM on a GPU, for the learned operator-time model.

Pure functions of the problem ``(m x k) @ (k x n)``, the element size ``s`` (bytes) and three device
figures: peak FLOP/s ``P``, memory bandwidth ``B`` (bytes/s) and the number of streaming
multiprocessors ``S``. No I/O; vectorised over numpy arrays (one row per GEMM).

Features (column names in :data:`FEATURE_NAMES`)::

    F      = 2 m n k                      FLOPs
    Q      = s (m k + k n + m n)          bytes of A, B and C, each moved once
    I      = F / Q                        arithmetic intensity, FLOP/byte
    R      = P / B                        the device's ridge point, FLOP/byte
    t_c    = F / P,  t_m = Q / B          roofline compute and memory times at peak
    t_roof = max(t_c, t_m)

and, for each output tile ``(T_m, T_n)`` in :data:`TILES` (the CTA tiles cuBLAS/CUTLASS kernels
use)::

    tiles  = ceil(m / T_m) ceil(n / T_n)                     thread blocks of the output
    waves  = tiles / S                                       waves per SM
    wave_q = waves / ceil(waves)                             wave quantisation: the busy share
                                                             of the last wave's SMs
    tile_q = m n / (ceil(m / T_m) T_m ceil(n / T_n) T_n)     tile quantisation: the useful
                                                             share of the padded output

plus ``k_q = k / (ceil(k / 64) 64)`` (the K loop's padding), the alignment of ``m`` (log2 of its
largest power-of-two divisor, capped at 7) and the device figures themselves. Sizes and times enter
as logarithms, so a tree learner splits on ratios.

The learner (:mod:`cluster.opmodel`) predicts ``log(t / t_roof)``: how far the measured time sits
above the peak roofline, which the features above explain (small ``m`` is launch bound, a partial
last wave wastes SMs, a padded tile wastes FLOPs).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from cluster.exceptions import InputError
from solvers import validate

#: CTA output tiles (rows x cols) whose quantisation enters as features.
TILES: tuple[tuple[int, int], ...] = ((64, 64), (128, 128), (128, 256), (256, 128))

#: K-loop step used for ``k_q``.
K_STEP = 64

#: Streaming multiprocessors per kind, from NVIDIA's architecture whitepapers (A100: 108 SMs,
#: "NVIDIA A100 Tensor Core GPU Architecture", 2020; H100 SXM5: 132 SMs, H100 PCIe: 114 SMs,
#: "NVIDIA H100 Tensor Core GPU Architecture", 2022; H200 is the same GH100 part as H100 SXM5;
#: RTX 4070: 46 SMs, "NVIDIA Ada GPU Architecture" whitepaper, AD104 as shipped in the 4070;
#: RTX 4090: 128 SMs, same whitepaper). Only kinds listed here can use the learned model.
SM_COUNT: Mapping[str, int] = MappingProxyType({
    "a100-40g-sxm": 108,
    "a100-80g-sxm": 108,
    "a100-80g-pcie": 108,
    "h100-sxm": 132,
    "h100-pcie": 114,
    "h200-sxm": 132,
    "rtx4070": 46,
    "rtx4090": 128,
})


@dataclass(frozen=True, slots=True)
class GemmDevice:
    """The device figures the features use: peak FLOP/s, bandwidth in bytes/s, SM count."""

    kind: str
    peak_flops: float
    mem_bw_bytes_s: float
    n_sm: int

    def __post_init__(self) -> None:
        validate.real("GemmDevice.peak_flops", self.peak_flops, lo=0.0, lo_open=True)
        validate.real("GemmDevice.mem_bw_bytes_s", self.mem_bw_bytes_s, lo=0.0, lo_open=True)
        validate.integer("GemmDevice.n_sm", self.n_sm, minimum=1)


def _tile_names() -> tuple[str, ...]:
    names: list[str] = []
    for tm, tn in TILES:
        names += [f"log2_waves_{tm}x{tn}", f"wave_q_{tm}x{tn}", f"tile_q_{tm}x{tn}"]
    return tuple(names)


#: Column names of :func:`gemm_features`' matrix, in order.
FEATURE_NAMES: tuple[str, ...] = (
    "log2_m", "log2_n", "log2_k", "log10_flops", "log10_bytes", "log2_intensity",
    "log2_intensity_over_ridge", "log10_t_comp", "log10_t_mem", "log10_t_roof", "mem_bound",
    *_tile_names(), "k_q", "m_align", "log10_peak", "log10_bw", "n_sm",
)


def _as_sizes(name: str, values: object) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if arr.ndim != 1 or not np.all(np.isfinite(arr)) or np.any(arr < 1) or np.any(arr != np.floor(arr)):
        raise InputError(f"{name}: expected integers >= 1, got {values!r}")
    return arr


def _broadcast(m: object, n: object, k: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mm, nn, kk = _as_sizes("m", m), _as_sizes("n", n), _as_sizes("k", k)
    try:
        mm, nn, kk = np.broadcast_arrays(mm, nn, kk)
    except ValueError:
        raise InputError(f"m, n, k: expected equal lengths (or single values), got {mm.size}, {nn.size}, "
                         f"{kk.size}") from None
    return mm, nn, kk


def roofline_seconds(m: object, n: object, k: object, elem_bytes: float, device: GemmDevice) -> np.ndarray:
    """``t_roof = max(2 m n k / P, s (m k + k n + m n) / B)`` seconds, elementwise (broadcast)."""
    mm, nn, kk = _broadcast(m, n, k)
    flops = 2.0 * mm * nn * kk
    nbytes = elem_bytes * (mm * kk + kk * nn + mm * nn)
    return np.maximum(flops / device.peak_flops, nbytes / device.mem_bw_bytes_s)


def gemm_features(m: object, n: object, k: object, elem_bytes: float, device: GemmDevice) -> np.ndarray:
    """Feature matrix (rows x :data:`FEATURE_NAMES`) of GEMMs ``(m x k) @ (k x n)`` on ``device``.

    ``m``, ``n``, ``k`` are integers or equal-length sequences of them (single values broadcast); ``elem_bytes`` is the
    element size (2 for fp16/bf16, 4 for fp32).
    """
    mm, nn, kk = _broadcast(m, n, k)
    s = validate.real("elem_bytes", elem_bytes, lo=0.0, lo_open=True)
    flops = 2.0 * mm * nn * kk
    nbytes = s * (mm * kk + kk * nn + mm * nn)
    intensity = flops / nbytes
    ridge = device.peak_flops / device.mem_bw_bytes_s
    t_c = flops / device.peak_flops
    t_m = nbytes / device.mem_bw_bytes_s
    t_roof = np.maximum(t_c, t_m)
    cols = [np.log2(mm), np.log2(nn), np.log2(kk), np.log10(flops), np.log10(nbytes), np.log2(intensity),
            np.log2(intensity / ridge), np.log10(t_c), np.log10(t_m), np.log10(t_roof),
            (t_m >= t_c).astype(np.float64)]
    for tm, tn in TILES:
        bm, bn = np.ceil(mm / tm), np.ceil(nn / tn)
        waves = bm * bn / device.n_sm
        cols += [np.log2(waves), waves / np.ceil(waves), mm * nn / (bm * tm * bn * tn)]
    cols.append(kk / (np.ceil(kk / K_STEP) * K_STEP))
    align = np.zeros_like(mm)
    for p in range(1, 8):
        align += (np.mod(mm, 2**p) == 0)
    cols.append(align)
    ones = np.ones_like(mm)
    cols += [np.log10(device.peak_flops) * ones, np.log10(device.mem_bw_bytes_s) * ones, device.n_sm * ones]
    return np.column_stack(cols)
