"""Context-parallel decoding speed: ms per token on 2 Ray actors vs one process (MEASURED).

SmolLM2-135M fp32, a prompt of ``--prompt`` tokens prefilled zigzag on 2 ranks
(``ContextParallelGroup(["rtx4090", "rtx4090"])`` on a local Ray with two ``device:rtx4090``
units), then ``--steps`` greedy tree-decoding steps, each timed at the driver (``decode`` of the
group: every rank runs the layers on the token, the attention merged across ranks); beside it the
same greedy steps in this process with the whole KV cache (:class:`LocalAttention`), one torch
thread everywhere. Reports the median and p90 ms/token of both, whether the tokens agree, and the
load average. Run under the bench lock: ``flock /work/bench.lock python bench/bench_cp_decode.py``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompt", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--label", default="")
    ap.add_argument("--note", default="", help="recorded in the result (e.g. how it was run)")
    ap.add_argument("--out", default="bench/results/cp_decode.json")
    args = ap.parse_args()

    import ray
    import torch
    from transformers import AutoTokenizer

    from actors.context_parallel import ContextParallelGroup
    from actors.llm.llama import LocalAttention, load_bundled
    from tests.actors.test_llama import long_text

    torch.set_num_threads(1)
    load0 = os.getloadavg()
    model, path = load_bundled()
    ids = AutoTokenizer.from_pretrained(str(path))(long_text(120))["input_ids"][: args.prompt]
    root = str(Path(__file__).resolve().parents[1])
    os.environ["PYTHONPATH"] = os.pathsep.join(x for x in (root, os.environ.get("PYTHONPATH")) if x)
    ray.init(address="local", num_cpus=4, resources={"device:rtx4090": 2}, include_dashboard=False,
             logging_level="ERROR", log_to_driver=False)
    group = ContextParallelGroup(["rtx4090", "rtx4090"])
    logits, _, _ = group.prefill(ids, strategy="zigzag")
    cp_tokens, cp_ms = [int(torch.argmax(logits))], []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        logits, same = group.decode(cp_tokens[-1])
        cp_ms.append(1e3 * (time.perf_counter() - t0))
        if not same:
            raise SystemExit("ranks disagree on the logits")
        cp_tokens.append(int(torch.argmax(logits)))
    group.shutdown()
    ray.shutdown()

    attn = LocalAttention(model.cfg.num_layers)
    one_ms = []
    with torch.inference_mode():
        h = model.hidden(torch.tensor([ids]), torch.arange(len(ids)), attn)
        one_tokens = [int(model.logits(h[0, -1]).argmax())]
        for i in range(args.steps):
            t0 = time.perf_counter()
            h = model.hidden(torch.tensor([[one_tokens[-1]]]), torch.tensor([len(ids) + i]), attn)
            one_tokens.append(int(model.logits(h[0, -1]).argmax()))
            one_ms.append(1e3 * (time.perf_counter() - t0))

    def stats(xs: list[float]) -> dict:
        xs = sorted(xs)
        return {"median_ms": round(statistics.median(xs), 2),
                "p90_ms": round(xs[int(0.9 * (len(xs) - 1))], 2), "min_ms": round(xs[0], 2)}

    doc = {
        "benchmark": "context-parallel decode ms/token, 2 actors vs 1 process (MEASURED)",
        "label": args.label,
        "note": args.note,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "machine": platform.platform(), "cpus": os.cpu_count(),
        "loadavg_1_5_15_at_start": [round(x, 2) for x in load0],
        "loadavg_1_5_15_at_end": [round(x, 2) for x in os.getloadavg()],
        "model": "smollm2-135m", "dtype": "fp32", "prompt_tokens": len(ids), "steps": args.steps,
        "strategy": "zigzag", "threads_per_process": 1,
        "context_parallel_2": stats(cp_ms), "one_process": stats(one_ms),
        "tokens_equal": cp_tokens == one_tokens,
        "ms_per_token": {"context_parallel_2": [round(x, 2) for x in cp_ms],
                         "one_process": [round(x, 2) for x in one_ms]},
    }
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps({k: doc[k] for k in ("context_parallel_2", "one_process", "tokens_equal")}))


if __name__ == "__main__":
    main()
