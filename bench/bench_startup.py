"""Time to ready of ``flotilla serve`` on the example fleet, before and after, side by side.

Each run starts ``python -m cluster.shell.cli.main serve --port P --http-port Q`` (the packaged
example fleet: 2 rtx4090, 1 a100, 2 Jetson AGX Orin, all simulated on this CPU; the default model,
SmolLM2-135M, whose dequantised cache is built once before timing) from a source tree, reads its
stderr line by line with arrival times, and stops it (SIGTERM) when it says it is ready (the
"flotilla gateway on" line), after one OpenAI chat completion through the HTTP port proves it
answers. ``ready_s`` is from the process start to that line; the lines in between are the phases
(the current tree prints one per phase: Ray, device actors, weights, experts, gateways).

``--after DIR`` times another checkout than this one (e.g. a clone frozen at a commit while this
one changes). With ``--before DIR`` (a checkout of an earlier commit) or ``--before COMMIT``
(cloned from this repository into a temporary directory) the two trees are run alternately,
``--reps`` times each, so both see the same machine load; the result file holds every run, the median per tree, ``os.getloadavg()`` around each run, the machine and
the date. Run it under the shared lock::

    flock /work/bench.lock python bench/bench_startup.py --before 6cc927b --out bench/results/startup.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import free_ports  # noqa: E402 - after the path set-up

READY = "flotilla gateway on"
GOAL_S = 20.0


def commit(tree: Path) -> str:
    out = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def chat(port: int, model: str, timeout_s: float) -> str:
    """One non-streaming chat completion through the OpenAI-compatible API; its text."""
    body = json.dumps({"model": model, "max_tokens": 8, "temperature": 0,
                       "messages": [{"role": "user", "content": "What is the capital of France?"}]}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        return json.loads(resp.read())["choices"][0]["message"]["content"]


def run_once(tree: Path, model: str, timeout_s: float) -> dict:
    """Start serve from ``tree``, time it to ready, check one answer, stop it."""
    port, http_port = free_ports(2)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(PYTHONPATH=str(tree), RAY_USAGE_STATS_ENABLED="0", FLOTILLA_CONFIG=str(tree / ".no-config.yaml"))
    cmd = [sys.executable, "-m", "cluster.shell.cli.main", "serve", "--port", str(port), "--http-port", str(http_port),
           "--model", model]
    load_before = os.getloadavg()
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    lines: list[tuple[float, str]] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            lines.append((round(time.monotonic() - t0, 2), raw.rstrip()))
            if READY in raw:
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    ok = ready.wait(timeout_s)
    ready_s = lines[-1][0] if ok else None
    answer = None
    try:
        if ok:
            answer = chat(http_port, model, 120)
    finally:
        load_after = os.getloadavg()
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass
        reader.join(5)
    if not ok:
        tail = "\n".join(t for _, t in lines[-5:])
        raise SystemExit(f"bench_startup: {tree} was not ready within {timeout_s:g} s:\n{tail}")
    return {"ready_s": ready_s, "answer": answer, "stderr": lines, "loadavg_before": load_before, "loadavg_after": load_after}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default=None,
                    help="the tree to compare against: a checkout, or a commit of this repository (cloned to a temporary directory)")
    ap.add_argument("--after", type=Path, default=ROOT, help="the checkout to time (default: this one)")
    ap.add_argument("--model", default="smollm2-135m", help="the served model (default: %(default)s)")
    ap.add_argument("--reps", type=int, default=3, help="runs per tree (alternating), 1..10")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds a run may take to be ready")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "startup.json")
    args = ap.parse_args(argv)
    if not 1 <= args.reps <= 10:
        ap.error(f"--reps: {args.reps}; allowed: 1..10")
    tmp = None
    if args.before is not None and not Path(args.before).is_dir():
        import tempfile

        tmp = tempfile.TemporaryDirectory(prefix="flotilla-before-")
        clone = subprocess.run(["git", "clone", "-q", str(ROOT), tmp.name], capture_output=True, text=True)
        checkout = subprocess.run(["git", "-C", tmp.name, "checkout", "-q", args.before], capture_output=True, text=True)
        if clone.returncode or checkout.returncode:
            ap.error(f"--before: {args.before!r} is neither a directory nor a commit of {ROOT}")
        args.before = tmp.name
    if args.before is not None:
        args.before = Path(args.before)
    for flag, tree in (("--before", args.before), ("--after", args.after)):
        if tree is not None and not (tree / "cluster" / "shell" / "cli" / "main.py").is_file():
            ap.error(f"{flag}: {tree} is not a flotilla checkout")
    trees = {"after": args.after.resolve()}
    if args.before is not None:
        trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    from actors.llm.loader import ensure_cached, resolve_source

    ensure_cached(resolve_source(None))  # "once the cache exists": building it is not timed
    runs: dict[str, list[dict]] = {k: [] for k in trees}
    for rep in range(args.reps):
        for label, tree in trees.items():
            r = run_once(tree, args.model, args.timeout)
            runs[label].append(r)
            print(f"{label} run {rep + 1}: ready in {r['ready_s']:.1f} s (load {r['loadavg_before'][0]:.1f})",
                  file=sys.stderr, flush=True)
    result = {
        "benchmark": "startup",
        "command": "flock /work/bench.lock python bench/bench_startup.py"
                   + (f" --before {commit(args.before)}" if args.before else "")
                   + (" --after DIR" if args.after.resolve() != ROOT else "")
                   + (f" --model {args.model}" if args.model != "smollm2-135m" else "")
                   + f" --reps {args.reps} --out {args.out.relative_to(ROOT) if args.out.is_absolute() and args.out.is_relative_to(ROOT) else args.out}",
        "measured": "time from starting `flotilla serve` (example fleet, cache built) to its ready line",
        "model": args.model,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)},
        "goal_s": GOAL_S,
        "trees": {k: {"commit": commit(t)} for k, t in trees.items()},
        "median_ready_s": {k: statistics.median(r["ready_s"] for r in rs) for k, rs in runs.items()},
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["median_ready_s"]))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
