"""GPU check of the attention kernel and the NCCL transport, on one CUDA device.

1. Exactness: blockwise attention (fp32 accumulators) vs torch SDPA, bf16 inputs, atol 2e-2, and
   fp32 inputs vs a float64 reference at a small size.
2. Speed: blockwise vs SDPA at L=8192, H=8, D=64, causal (bf16 and fp32), CUDA-event timed.
3. A world-size-1 NCCL group through ``ray.util.collective`` (needs Ray and CuPy): one actor joins,
   runs an allreduce and a one-rank ring attention on CUDA tensors.

Exits 0 with a message when no CUDA device is present. Prints one JSON summary at the end.
Run: ``python bench/gpu_attention_check.py``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])
sys.path.insert(0, ROOT)


def _time_cuda(fn, repeats: int = 5) -> float:
    import torch

    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = float("inf")
    for _ in range(repeats):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) / 1000.0)
    return best


def check_kernel(summary: dict) -> bool:
    import torch
    import torch.nn.functional as F

    from attention.blockwise import blockwise_attention, naive_attention

    ok = True
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    for causal in (True, False):
        q, k, v = (torch.randn(2, 8, 1031, 64, device=dev, generator=g, dtype=torch.bfloat16) for _ in range(3))
        ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        out, lse = blockwise_attention(q, k, v, causal=causal)
        err = (out.float() - ref.float()).abs().max().item()
        summary[f"bf16_max_abs_err_causal={causal}"] = err
        ok &= err <= 2e-2 and lse.dtype == torch.float32
    q, k, v = (torch.randn(1, 4, 257, 32, device=dev, generator=g) for _ in range(3))
    out, lse = blockwise_attention(q, k, v, causal=True, q_offset=0, k_offset=0)
    ref_out, ref_lse = naive_attention(q.cpu(), k.cpu(), v.cpu(), True)
    err32 = max((out.cpu().double() - ref_out).abs().max().item(), (lse.cpu().double() - ref_lse).abs().max().item())
    summary["fp32_vs_fp64_reference_max_abs_err"] = err32
    ok &= err32 <= 1e-5

    for dtype in (torch.bfloat16, torch.float32):
        q, k, v = (torch.randn(1, 8, 8192, 64, device=dev, generator=g, dtype=dtype) for _ in range(3))
        t_sdpa = _time_cuda(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
        t_blk = _time_cuda(lambda: blockwise_attention(q, k, v, causal=True, block=1024))
        name = str(dtype).removeprefix("torch.")
        summary[f"L8192_{name}_sdpa_s"] = t_sdpa
        summary[f"L8192_{name}_blockwise_s"] = t_blk
        summary[f"L8192_{name}_ratio"] = t_blk / t_sdpa
    return ok


def check_nccl(summary: dict) -> bool:
    try:
        import ray
        import ray.util.collective as col
    except ImportError as e:
        summary["nccl"] = f"skipped: {e}"
        return False
    if not col.nccl_available():
        summary["nccl"] = "skipped: ray.util.collective has no NCCL backend here (CuPy missing?)"
        return False
    os.environ["PYTHONPATH"] = os.pathsep.join(x for x in (ROOT, os.environ.get("PYTHONPATH")) if x)
    ray.init(num_gpus=1, include_dashboard=False, logging_level="ERROR")

    @ray.remote(num_gpus=1)
    class Rank:
        def run(self):
            import torch

            from attention.blockwise import naive_attention
            from attention.comm import Communicator
            from attention.partition import contiguous_plan
            from attention.strategies import ring_attention

            comm = Communicator.join(1, 0, "nccl", "gpu-check")
            x = torch.arange(4.0, device="cuda")
            comm.allreduce(x, "sum")
            q, k, v = (torch.randn(1, 4, 300, 32, device="cuda") for _ in range(3))
            out, lse = ring_attention(comm, q, k, v, contiguous_plan(300, [1.0], causal=True), causal=True)
            ref, _ = naive_attention(q.cpu(), k.cpu(), v.cpu(), True)
            return {
                "allreduce": x.cpu().tolist(),
                "ring_ws1_max_abs_err": (out.cpu().double() - ref).abs().max().item(),
                "device": torch.cuda.get_device_name(0),
            }

    try:
        res = ray.get(Rank.remote().run.remote(), timeout=300)
    finally:
        ray.shutdown()
    summary["nccl"] = res
    return res["allreduce"] == [0.0, 1.0, 2.0, 3.0] and res["ring_ws1_max_abs_err"] <= 1e-5


def main() -> int:
    try:
        import torch
    except ImportError:
        print("torch is not installed: nothing to check")
        return 0
    if not torch.cuda.is_available():
        print("no CUDA device: the GPU attention check is skipped (nothing was tested)")
        return 0
    summary: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    kernel_ok = check_kernel(summary)
    try:
        nccl_ok = check_nccl(summary)
    except Exception as e:  # noqa: BLE001 - report, do not hide
        summary["nccl"] = f"failed: {type(e).__name__}: {e}"
        nccl_ok = False
    summary["kernel_ok"], summary["nccl_ok"] = kernel_ok, nccl_ok
    print(json.dumps(summary, indent=2, default=str))
    return 0 if kernel_ok else 1


if __name__ == "__main__":
    sys.exit(main())
