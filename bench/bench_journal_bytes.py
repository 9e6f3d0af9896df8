"""Redis bytes per request that the serving journal keeps, through the real Router.

One echo ExpertActor on a simulated rtx4090 (a real Ray actor), a Router over a real Redis store
in a fresh namespace. It sends N requests of each prompt size, then sums Redis's own
``MEMORY USAGE`` over every key of the namespace (journal, results, counters, leases) and
divides by N. Completed requests keep only their fingerprint and result (with a TTL), so the
figure depends on the reply, not on the prompt.

    .venv/bin/python bench/bench_journal_bytes.py [--requests 200] [--out bench/results/journal_bytes.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KIND = "rtx4090"
PROMPTS = {"100 chars": "w " * 50, "32k chars of emoji": "\U0001F600 " * 16_384}


def namespace_bytes(store) -> int:
    client = store._client  # noqa: SLF001 - measuring the store's own keys
    return sum(client.memory_usage(k) or 0 for k in client.scan_iter(match=f"flotilla:{store.namespace}:*"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--redis", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    ap.add_argument("--out", default="bench/results/journal_bytes.json")
    args = ap.parse_args(argv)

    import ray

    from actors.device import spawn
    from actors.expert import ExpertConfig, spawn_expert
    from actors.router import Router
    from actors.routing import Replica
    from cluster.catalog import default_catalog
    from cluster.state import open_store

    ray.init(address="local", num_cpus=2, resources={f"device:{KIND}": 1}, include_dashboard=False,
             logging_level="ERROR", log_to_driver=False)
    dev = spawn(default_catalog().get(KIND), f"{KIND}-0")
    expert = spawn_expert(dev, KIND, f"{KIND}-0", ExpertConfig(model="echo", max_concurrency=4), start=False)
    ray.get(expert.start.remote())
    rows = []
    for label, prompt in PROMPTS.items():
        store = open_store(args.redis, namespace=f"bench-journal-{uuid.uuid4().hex[:8]}")
        router = Router(store, [Replica(f"{KIND}-0", KIND, expert, 4)])
        router.start()
        empty = namespace_bytes(store)
        for _ in range(args.requests):
            router.generate({"prompt": prompt, "max_tokens": 8})
        total = namespace_bytes(store)
        rows.append({"prompt": label, "prompt_bytes": len(prompt.encode()), "requests": args.requests,
                     "redis_bytes": total, "bytes_per_request": round((total - empty) / args.requests, 1)})
        print(f"{label:>14}: {rows[-1]['bytes_per_request']:.0f} bytes per completed request "
              f"(prompt {rows[-1]['prompt_bytes']} bytes)")
        router.close()
        store.clear()
        store.close()
    ray.shutdown()
    doc = {"benchmark": "journal_bytes", "date": dt.date.today().isoformat(), "machine": platform.node(),
           "cpu": platform.processor() or platform.machine(), "command": "make bench",
           "note": "Redis MEMORY USAGE summed over the namespace after N completed requests (echo model, max_tokens 8)",
           "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
