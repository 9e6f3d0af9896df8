"""GPU check of the device path and a calibration of the performance model, on one CUDA device.

What it runs (each step reports, none stops the others):

1. Detection: the CUDA device's name -> catalog kind (cluster.runtime.detect_cuda_devices).
2. DeviceActor on real CUDA (the class itself, no Ray needed): a probe GEMM checked against the
   CPU, measured wall time next to the kind's modeled time.
3. Roofline inputs: measured bf16 GEMM TFLOPS (8192^3) and device-to-device copy bandwidth,
   against the catalog's datasheet figures -> achieved fraction of peak.
4. The model vs the hardware: a Llama-2-7B-shaped transformer (random bf16 weights: timing does not
   depend on the values) run by transformers on the GPU: prefill of 1000 tokens and decode steps
   at context 1000 for batch 1, 16 and 64, MEASURED with CUDA events, next to cluster.perf's
   MODELED prefill_time / decode_step_time for the detected kind.
   Then the same decode steps replayed as a CUDA graph over a static KV cache (how a vLLM-like
   server runs decode), which is what cluster.perf's decode model describes.
5. The generation loop (actors/llm/generate.py) on CUDA with a tiny random Llama and the SmolLM2
   tokenizer (when ``--tokenizer DIR`` is given): greedy, streamed, finishes.

Exits 0 with a message when no CUDA device is present. Writes one JSON summary to ``--out``.
Run: ``python bench/gpu_device_check.py --out results.json [--tokenizer DIR]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import traceback
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _cuda_time(fn, repeats: int = 10) -> list[float]:
    import torch

    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return times


def step(summary: dict, name: str, fn) -> None:
    t0 = time.perf_counter()
    try:
        summary[name] = fn()
        summary[name]["ok"] = True
    except Exception as exc:  # noqa: BLE001 - a failed step is reported, the others still run
        summary[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-2000:]}
    summary[name]["seconds"] = time.perf_counter() - t0
    print(f"[{name}] {json.dumps(summary[name], default=str)[:600]}", flush=True)


def detect() -> dict:
    from cluster.runtime import detect_cuda_devices

    found = detect_cuda_devices()
    return {"devices": [{"cuda_index": d.cuda_index, "name": d.name, "memory_gib": d.memory_gib, "kind": d.kind} for d in found]}


def device_actor(kind: str) -> dict:
    from actors.device import DeviceActor
    from cluster.catalog import default_catalog

    actor = DeviceActor(default_catalog().get(kind), f"{kind}-0", real_cuda=True)
    rep = actor.probe(4096)
    return {"info": actor.info(), "probe": rep}


def roofline(kind: str) -> dict:
    import torch

    from cluster import perf
    from cluster.catalog import default_catalog

    spec = default_catalog().get(kind)
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    t_gemm = statistics.median(_cuda_time(lambda: a @ b))
    src = torch.empty(2 * 2**30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    t_copy = statistics.median(_cuda_time(lambda: dst.copy_(src)))
    tflops = 2 * n**3 / t_gemm / 1e12
    copy_gbs = 2 * src.numel() / t_copy / 1e9  # bytes read + written
    return {
        "gemm_bf16_tflops_measured": tflops,
        "gemm_bf16_tflops_catalog": spec.tflops_fp16,
        "compute_fraction_of_peak": tflops / spec.tflops_fp16,
        "gemm_time_modeled_s": perf.gemm_time(n, n, n, spec, "bf16"),
        "gemm_time_measured_s": t_gemm,
        "copy_gbs_measured": copy_gbs,
        "mem_bw_gbs_catalog": spec.mem_bw_gbs,
        "memory_fraction_of_peak": copy_gbs / spec.mem_bw_gbs,
        "model_efficiency_assumed": {"compute": perf.DEFAULT_EFFICIENCY.compute, "memory": perf.DEFAULT_EFFICIENCY.memory},
    }


def llama_vs_model(kind: str) -> dict:
    import torch
    from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

    from cluster import models, perf
    from cluster.catalog import default_catalog

    spec = default_catalog().get(kind)
    shape = models.get_model("llama-2-7b")
    cfg = LlamaConfig(
        vocab_size=shape.vocab_size, hidden_size=shape.hidden_size, intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.n_layers, num_attention_heads=shape.n_heads, num_key_value_heads=shape.n_kv_heads,
        max_position_embeddings=4096,
    )
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).eval()
    torch.set_default_dtype(torch.float32)
    n_params = sum(p.numel() for p in model.parameters())
    ctx = 1000
    rows = []
    with torch.inference_mode():
        for batch in (1, 16, 64):
            ids = torch.randint(0, cfg.vocab_size, (batch, ctx), device="cuda")
            cache = DynamicCache()

            def prefill():
                model(ids, past_key_values=DynamicCache(), use_cache=True, logits_to_keep=1)

            t_prefill = statistics.median(_cuda_time(prefill, repeats=3))
            out = model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
            nxt = out.logits[:, -1:].argmax(-1)
            steps = []
            for _ in range(12):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                out = model(nxt, past_key_values=cache, use_cache=True)
                end.record()
                torch.cuda.synchronize()
                steps.append(start.elapsed_time(end) / 1e3)
                nxt = out.logits[:, -1:].argmax(-1)
            t_step = statistics.median(steps[2:])
            rows.append({
                "batch": batch, "context": ctx,
                "prefill_measured_s": t_prefill, "prefill_modeled_s": perf.prefill_time(shape, spec, batch, ctx),
                "decode_step_measured_s": t_step, "decode_step_modeled_s": perf.decode_step_time(shape, spec, batch, ctx),
            })
            del cache, out
            torch.cuda.empty_cache()
    for r in rows:
        r["prefill_modeled_over_measured"] = r["prefill_modeled_s"] / r["prefill_measured_s"]
        r["decode_modeled_over_measured"] = r["decode_step_modeled_s"] / r["decode_step_measured_s"]
    return {"model": "llama-2-7b shape, random bf16 weights, transformers eager", "n_params": n_params, "rows": rows}


def _decode_layers(shape, batch: int, ctx: int, device: str, dtype):
    """Weights and a filled KV cache of ``shape`` (random values) and a one-token decode step over
    them in plain torch: per layer QKV, RoPE-free attention over the cache (SDPA), output
    projection, gated MLP. The bytes read and FLOPs are those of a real decode step."""
    import torch

    h, d, hkv, ff = shape.hidden_size, shape.head_dim, shape.n_kv_heads, shape.intermediate_size
    g = torch.Generator(device=device).manual_seed(0)

    def w(*size):
        return (torch.randn(*size, generator=g, device=device, dtype=dtype) * 0.02)

    layers = [dict(qkv=w(h, (shape.n_heads + 2 * hkv) * d), o=w(shape.n_heads * d, h), up=w(h, 2 * ff), down=w(ff, h),
                   k=w(batch, hkv, ctx, d), v=w(batch, hkv, ctx, d)) for _ in range(shape.n_layers)]
    x = w(batch, h)

    def step():
        y = x
        for L in layers:
            qkv = y @ L["qkv"]
            q = qkv[:, : shape.n_heads * d].view(batch, shape.n_heads, 1, d)
            att = torch.nn.functional.scaled_dot_product_attention(q, L["k"], L["v"], enable_gqa=hkv != shape.n_heads)
            y = y + att.reshape(batch, -1) @ L["o"]
            gate, up = (y @ L["up"]).chunk(2, dim=-1)
            y = y + (torch.nn.functional.silu(gate) * up) @ L["down"]
        return y

    return step


def decode_cuda_graph(kind: str) -> dict:
    """Decode steps of the Llama-2-7B shape (plain torch, random bf16 weights, KV cache of 1000
    tokens) replayed as a CUDA graph, the way a vLLM-like server runs decode: no per-kernel launch
    cost from Python, so the step is bounded by the bytes it reads -- what cluster.perf models."""
    import torch

    from cluster import models, perf
    from cluster.catalog import default_catalog

    spec = default_catalog().get(kind)
    shape = models.get_model("llama-2-7b")
    ctx, rows = 1000, []
    with torch.inference_mode():
        for batch in (1, 16, 64):
            stepfn = _decode_layers(shape, batch, ctx, "cuda", torch.bfloat16)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    stepfn()
            torch.cuda.current_stream().wait_stream(side)
            eager = statistics.median(_cuda_time(stepfn, repeats=5))
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                stepfn()
            t = statistics.median(_cuda_time(graph.replay, repeats=20))
            modeled = perf.decode_step_time(shape, spec, batch, ctx)
            bytes_read = shape.weight_bytes + batch * ctx * shape.kv_bytes_per_token
            rows.append({"batch": batch, "context": ctx, "decode_step_graph_s": t, "decode_step_eager_s": eager,
                         "decode_step_modeled_s": modeled, "decode_modeled_over_measured": modeled / t,
                         "achieved_gbs": bytes_read / t / 1e9})
            del graph, stepfn
            torch.cuda.empty_cache()
    return {"model": "llama-2-7b shape, plain torch layers, random bf16 weights, KV cache 1000 tokens, CUDA graph replay",
            "rows": rows}


def generation_loop(tokenizer_dir: str) -> dict:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from actors.llm.generate import Completion, SamplingParams, encode_prompt, stream_generate

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to("cuda", torch.bfloat16).eval()
    ids = encode_prompt(tok, "What is the capital of France?")
    pieces, final = [], None
    for item in stream_generate(model, tok, ids, SamplingParams(max_tokens=24)):
        if isinstance(item, Completion):
            final = item
        else:
            pieces.append(item)
    again = [i for i in stream_generate(model, tok, ids, SamplingParams(max_tokens=24)) if isinstance(i, Completion)][0]
    return {
        "chunks": len(pieces),
        "completion": {k: getattr(final, k) for k in ("finish_reason", "completion_tokens") if hasattr(final, k)},
        "greedy_repeatable": getattr(final, "text", None) == getattr(again, "text", None),
        "note": "random weights: the text is meaningless; this checks the CUDA path of the loop",
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results/gpu_device_check.json")
    ap.add_argument("--tokenizer", default=None, help="a directory with tokenizer.json (e.g. the SmolLM2 cache)")
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("gpu_device_check: no CUDA device here; nothing to check (this is expected on a CPU-only machine)")
        return 0
    summary: dict = {"date": date.today().isoformat(), "python": platform.python_version(), "torch": torch.__version__,
                     "gpu": torch.cuda.get_device_name(0)}
    step(summary, "detect", detect)
    kinds = [d["kind"] for d in summary.get("detect", {}).get("devices", []) if d.get("kind")]
    if kinds:
        kind = kinds[0]
        step(summary, "device_actor", lambda: device_actor(kind))
        step(summary, "roofline", lambda: roofline(kind))
        step(summary, "llama_vs_model", lambda: llama_vs_model(kind))
        step(summary, "decode_cuda_graph", lambda: decode_cuda_graph(kind))
    if args.tokenizer:
        step(summary, "generation_loop", lambda: generation_loop(args.tokenizer))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2, default=str))
    print(json.dumps({k: (v.get("ok") if isinstance(v, dict) else v) for k, v in summary.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
