"""GPU check of the attention kernels and the NCCL transport, on the CUDA devices of one machine.

1. Dispatch: on CUDA, ``kernel="auto"`` must pick the fused kernel (torch's memory-efficient
   attention with its log-sum-exp) for bf16, fp16 and fp32, and the tiled loop for float64.
2. Exactness of the fused CUDA path (``kernel="fused"``) against a float64 reference, with
   query/key offsets (the shard pairs of ring attention), causal and not, GQA: bf16 inputs within
   2e-2 (out) and 5e-2 (lse), fp32 within 1e-4; and the tiled loop on CUDA against the same.
3. Speed at L=8192, H=8, D=64, causal, bf16 and fp32: torch SDPA vs the fused path vs the tiled
   loop, CUDA-event timed (best of 5).
4. NCCL through ``ray.util.collective`` (needs Ray and CuPy): with one GPU a world-size-1 group
   (allreduce, one-rank ring attention); with two or more GPUs a world-size-2 group (allreduce,
   a send/recv exchange whose payload is checked, and 2-rank ring attention against the
   reference). Skipped, and said so, when CuPy is not importable.

Exits 0 with a message when no CUDA device is present (nothing is tested then). Prints one JSON
summary; ``--out FILE`` also writes it (commit it with the device named). Exit 1 if a check fails.
Run: ``python bench/gpu_attention_check.py [--out bench/results/gpu_attention_check_<gpu>.json]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
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


def check_dispatch(summary: dict) -> bool:
    import torch

    from attention.blockwise import kernel_for

    got = {str(d).removeprefix("torch."): kernel_for("cuda", d)
           for d in (torch.bfloat16, torch.float16, torch.float32, torch.float64)}
    summary["dispatch"] = got
    return got == {"bfloat16": "fused_cuda", "float16": "fused_cuda", "float32": "fused_cuda",
                   "float64": "tiled"}


def check_exactness(summary: dict) -> bool:
    import torch

    from attention.blockwise import blockwise_attention, naive_attention

    ok = True
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    cases = [  # (lq, lk, q_offset, k_offset): diagonal, after, partly before, straddling
        (257, 257, 0, 0), (130, 300, 300, 0), (200, 180, 100, 150), (96, 160, 64, 0),
    ]
    errs: dict[str, float] = {}
    for kernel in ("fused", "tiled"):
        for dtype, tol_out, tol_lse in ((torch.bfloat16, 2e-2, 5e-2), (torch.float32, 1e-4, 1e-4)):
            worst_out = worst_lse = 0.0
            for causal in (True, False):
                for lq, lk, qo, ko in cases:
                    q = torch.randn(2, 8, lq, 64, device=dev, generator=g).to(dtype)
                    k = torch.randn(2, 2, lk, 64, device=dev, generator=g).to(dtype)
                    v = torch.randn(2, 2, lk, 64, device=dev, generator=g).to(dtype)
                    out, lse = blockwise_attention(q, k, v, causal=causal, q_offset=qo,
                                                   k_offset=ko, kernel=kernel)
                    ref_out, ref_lse = naive_attention(q.cpu(), k.cpu(), v.cpu(), causal, qo, ko)
                    seen = torch.isfinite(ref_lse)
                    worst_out = max(worst_out, (out.cpu().double() - ref_out).abs().max().item())
                    same_inf = bool((torch.isneginf(lse.cpu()) == ~seen).all())
                    d_lse = (lse.cpu().double()[seen] - ref_lse[seen]).abs().max().item()
                    worst_lse = max(worst_lse, d_lse if same_inf else float("inf"))
                    ok &= lse.dtype == torch.float32
            name = f"{kernel}_{str(dtype).removeprefix('torch.')}"
            errs[f"{name}_max_abs_err_out"] = worst_out
            errs[f"{name}_max_abs_err_lse"] = worst_lse
            ok &= worst_out <= tol_out and worst_lse <= tol_lse
    summary["exactness_vs_float64"] = errs
    return ok


def time_kernels(summary: dict) -> None:
    import torch
    import torch.nn.functional as F

    from attention.blockwise import blockwise_attention

    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(1)
    times = {}
    for dtype in (torch.bfloat16, torch.float32):
        q, k, v = (torch.randn(1, 8, 8192, 64, device=dev, generator=g, dtype=dtype) for _ in range(3))
        name = str(dtype).removeprefix("torch.")
        t_sdpa = _time_cuda(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
        t_fused = _time_cuda(lambda: blockwise_attention(q, k, v, causal=True, kernel="fused"))
        t_tiled = _time_cuda(lambda: blockwise_attention(q, k, v, causal=True, kernel="tiled",
                                                         block=1024))
        times[name] = {"sdpa_s": t_sdpa, "fused_s": t_fused, "tiled_s": t_tiled,
                       "fused_vs_sdpa": t_fused / t_sdpa, "tiled_vs_sdpa": t_tiled / t_sdpa}
    summary["time_L8192_H8_D64_causal"] = times


def check_nccl(summary: dict) -> bool:
    try:
        import cupy  # noqa: F401
    except ImportError as e:
        summary["nccl"] = f"skipped: CuPy is not importable ({e})"
        return True  # not a failure of flotilla: nothing to check without CuPy
    import ray
    import ray.util.collective as col
    import torch

    if not col.nccl_available():
        summary["nccl"] = "skipped: ray.util.collective reports no NCCL backend"
        return True
    world = min(2, torch.cuda.device_count())
    os.environ["PYTHONPATH"] = os.pathsep.join(x for x in (ROOT, os.environ.get("PYTHONPATH")) if x)
    ray.init(num_gpus=world, include_dashboard=False, logging_level="ERROR")

    @ray.remote(num_gpus=1)
    class Rank:
        def __init__(self, world: int, rank: int) -> None:
            self.world, self.rank = world, rank

        def run(self) -> dict:
            import torch

            from attention.blockwise import naive_attention
            from attention.comm import Communicator
            from attention.partition import zigzag_plan
            from attention.strategies import ring_attention

            comm = Communicator.join(self.world, self.rank, "nccl", "gpu-attention-check")
            x = torch.arange(4.0, device="cuda") + self.rank
            comm.allreduce(x, "sum")
            res = {"allreduce": x.cpu().tolist(), "device": torch.cuda.get_device_name(0)}
            if self.world > 1:
                peer = 1 - self.rank
                send = torch.full((1000,), float(self.rank + 1), device="cuda")
                recv = torch.empty(1000, device="cuda")
                got = comm.exchange(send, peer, recv, peer).wait()
                res["sendrecv_ok"] = bool((got == float(peer + 1)).all())
            g = torch.Generator().manual_seed(3)
            length = 600
            q, k, v = (torch.randn(1, 4, length, 32, generator=g) for _ in range(3))
            plan = zigzag_plan(length, [1.0] * self.world)
            out, _ = ring_attention(comm, plan.shard(q, self.rank).cuda(), plan.shard(k, self.rank).cuda(),
                                    plan.shard(v, self.rank).cuda(), plan, causal=True)
            ref, _ = naive_attention(q, k, v, True)
            res["ring_max_abs_err"] = (out.cpu().double() - plan.shard(ref, self.rank)).abs().max().item()
            return res

    try:
        ranks = [Rank.remote(world, r) for r in range(world)]
        results = ray.get([a.run.remote() for a in ranks], timeout=300)
    finally:
        ray.shutdown()
    expect = [float(sum(i + r for r in range(world))) for i in range(4)]
    summary["nccl"] = {"world_size": world, "ranks": results}
    return all(r["allreduce"] == expect and r["ring_max_abs_err"] <= 1e-5
               and r.get("sendrecv_ok", True) for r in results)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="also write the JSON summary here")
    args = ap.parse_args()
    try:
        import torch
    except ImportError:
        print("torch is not installed: nothing to check")
        return 0
    if not torch.cuda.is_available():
        print("no CUDA device: the GPU attention check is skipped (nothing was tested)")
        return 0
    summary: dict = {
        "device": torch.cuda.get_device_name(0), "device_count": torch.cuda.device_count(),
        "torch": torch.__version__,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
    }
    dispatch_ok = check_dispatch(summary)
    exact_ok = check_exactness(summary)
    time_kernels(summary)
    try:
        nccl_ok = check_nccl(summary)
    except Exception as e:  # noqa: BLE001 - report, do not hide
        summary["nccl"] = f"failed: {type(e).__name__}: {e}"
        nccl_ok = False
    summary.update(dispatch_ok=dispatch_ok, exact_ok=exact_ok, nccl_ok=nccl_ok)
    text = json.dumps(summary, indent=2, default=str)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0 if dispatch_ok and exact_ok and nccl_ok else 1


if __name__ == "__main__":
    sys.exit(main())
