"""Profiling a running server: rate sweeps per request shape, reduced to a measured rate table.

Mélange's and AIBrix's procedure, automated. For each (input, output) shape of the grid and each
offered rate, send ``requests`` requests with Poisson arrivals (open loop: a slow server does not
slow the arrivals), measure each request's TTFT (first streamed text), TPOT (the rest of the
time over the remaining tokens) and end-to-end time, and write one AIBrix-format line per metric
(``TPUT`` = completed requests over the time from the first arrival to the last completion;
``TTFT``/``TPOT``/``E2E`` with mean, P50, P90, P99 in seconds) to a JSONL file. The file is
appended point by point, so an interrupted sweep resumes where it stopped (points already in it
are skipped). :func:`reduce_to_table` turns the file into a max-rate table with
:func:`solvers.tables.reduce_sweep` (the largest offered rate whose latency percentile meets the
SLOs and whose throughput kept up), written with its provenance: device kind, engine, model,
target, host, date. ``flotilla plan --tables FILE`` uses such tables.

Targets: flotilla's own gRPC gateway (``grpc://HOST:PORT``), or any OpenAI-compatible HTTP server
(``http://HOST:PORT/v1``: vLLM, SGLang, flotilla's own) through streaming ``/v1/completions``.
Prompts are ``input`` words (``"w0 w1 ..."``), so their token count is about ``input``; each
request asks for ``output`` tokens (``ignore_eos`` is sent to OpenAI servers that honour it).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import platform
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.exceptions import InputError

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True, slots=True)
class Measurement:
    """One request: seconds to the first text, per later token, end to end; tokens generated."""

    ttft_s: float
    tpot_s: float
    e2e_s: float
    tokens: int


def prompt_of(n_words: int, salt: int) -> str:
    return " ".join(f"w{(salt + i) % 997}" for i in range(n_words))


class GrpcTarget:
    """flotilla's gateway (``grpc://HOST:PORT``)."""

    def __init__(self, address: str, token: str | None = None, tls_ca: str | None = None) -> None:
        from cluster.shell.client import Client

        self.address = address
        self._client = Client(address, token=token, tls_ca=tls_ca, timeout_s=600)

    def request(self, prompt: str, max_tokens: int) -> Measurement:
        from cluster.shell.client import GenerateResult

        t0 = time.perf_counter()
        first = None
        result = None
        for item in self._client.stream(prompt, max_tokens=max_tokens):
            if isinstance(item, GenerateResult):
                result = item
            elif first is None and item:
                first = time.perf_counter() - t0
        e2e = time.perf_counter() - t0
        tokens = result.completion_tokens if result is not None else 0
        ttft = e2e if first is None else first
        return Measurement(ttft, (e2e - ttft) / (tokens - 1) if tokens > 1 else 0.0, e2e, tokens)

    def close(self) -> None:
        self._client.close()


class OpenAITarget:
    """An OpenAI-compatible server (``http://HOST:PORT/v1``), streaming ``/v1/completions``."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None) -> None:
        import requests

        self.base_url = base_url.rstrip("/")
        self.model = model
        self._session = requests.Session()
        if api_key:
            self._session.headers["Authorization"] = f"Bearer {api_key}"

    def request(self, prompt: str, max_tokens: int) -> Measurement:
        body = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens, "stream": True, "temperature": 0,
                "ignore_eos": True, "stream_options": {"include_usage": True}}
        t0 = time.perf_counter()
        first = None
        pieces = 0
        usage = None
        with self._session.post(f"{self.base_url}/completions", json=body, stream=True, timeout=600) as resp:
            if resp.status_code != 200:
                raise InputError(f"target: {self.base_url} answered HTTP {resp.status_code}: {resp.text[:200]}")
            for line in resp.iter_lines():
                if not line.startswith(b"data: "):
                    continue
                data = line[6:]
                if data == b"[DONE]":
                    break
                event = json.loads(data)
                if event.get("usage"):
                    usage = event["usage"]
                text = "".join(c.get("text", "") for c in event.get("choices", []))
                if text:
                    pieces += 1
                    if first is None:
                        first = time.perf_counter() - t0
        e2e = time.perf_counter() - t0
        tokens = int(usage["completion_tokens"]) if usage else pieces
        ttft = e2e if first is None else first
        return Measurement(ttft, (e2e - ttft) / (tokens - 1) if tokens > 1 else 0.0, e2e, tokens)

    def close(self) -> None:
        self._session.close()


def open_target(target: str, *, model: str, token: str | None = None) -> Any:
    """A target from its URL: ``grpc://HOST:PORT`` or ``http(s)://HOST:PORT/v1``."""
    if target.startswith("grpc://"):
        address = target.removeprefix("grpc://")
        if ":" not in address:
            raise InputError(f"--target: {target!r}; expected grpc://HOST:PORT")
        return GrpcTarget(address, token=token)
    if target.startswith(("http://", "https://")):
        return OpenAITarget(target, model, api_key=token)
    raise InputError(f"--target: {target!r}; allowed: grpc://HOST:PORT (flotilla) or http://HOST:PORT/v1 "
                     "(an OpenAI-compatible server)")


def _percentile(sorted_values: list[float], p: int) -> float:
    k = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[k - 1]


def measure_point(target: Any, input_len: int, output_len: int, rate: float, requests: int, seed: int) -> dict[str, Any]:
    """Offer ``requests`` requests at ``rate`` req/s (Poisson) and summarise what came back."""
    rng = random.Random(seed)
    results: list[Measurement | None] = [None] * requests
    errors: list[str] = []
    threads = []
    start = time.perf_counter()
    due = 0.0

    def one(i: int) -> None:
        try:
            results[i] = target.request(prompt_of(input_len, seed * 7919 + i), output_len)
        except Exception as exc:  # noqa: BLE001 - counted; the point reports how many failed
            errors.append(f"{type(exc).__name__}: {exc}")

    for i in range(requests):
        wait = start + due - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        t = threading.Thread(target=one, args=(i,), daemon=True)
        t.start()
        threads.append(t)
        due += rng.expovariate(rate)
    for t in threads:
        t.join()
    span = time.perf_counter() - start
    done = [m for m in results if m is not None]
    return {"done": done, "errors": errors, "span_s": span}


def sweep_lines(input_len: int, output_len: int, rate: float, point: dict[str, Any], meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The AIBrix-format lines of one measured point."""
    base = {"input_tokens": input_len, "output_tokens": output_len, "request_rate": rate, **meta,
            "samples": len(point["done"]), "failed": len(point["errors"])}
    lines = [{**base, "metric": "TPUT", "mean": len(point["done"]) / point["span_s"] if point["span_s"] > 0 else 0.0}]
    for metric, attr in (("TTFT", "ttft_s"), ("TPOT", "tpot_s"), ("E2E", "e2e_s")):
        values = sorted(getattr(m, attr) for m in point["done"])
        if not values:
            continue
        lines.append({**base, "metric": metric, "mean": sum(values) / len(values),
                      **{f"P{p}": _percentile(values, p) for p in PERCENTILES}})
    return lines


def done_points(path: Path) -> set[tuple[int, int, float]]:
    """The (input, output, rate) points a sweep file already holds (to resume)."""
    if not path.is_file():
        return set()
    have = set()
    for line in path.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            if rec.get("metric") == "TPUT":
                have.add((int(rec["input_tokens"]), int(rec["output_tokens"]), float(rec["request_rate"])))
    return have


def run_sweep(target: Any, *, inputs: list[int], outputs: list[int], rates: list[float], requests: int,
              out: Path, meta: dict[str, Any], seed: int = 0,
              on_point: Callable[[int, int, dict[str, Any] | None], None] | None = None) -> Iterator[dict[str, Any]]:
    """Measure every (input, output, rate) not yet in ``out``, appending its lines as it goes;
    yields one summary per point (``skipped`` for points already there)."""
    have = done_points(out)
    points = [(i, o, r) for i in inputs for o in outputs for r in sorted(rates)]
    for n, (i, o, r) in enumerate(points, 1):
        if (i, o, float(r)) in have:
            summary = {"input_tokens": i, "output_tokens": o, "request_rate": r, "skipped": True}
        else:
            point = measure_point(target, i, o, r, requests, seed + n)
            lines = sweep_lines(i, o, float(r), point, meta)
            with out.open("a") as f:
                for line in lines:
                    f.write(json.dumps(line) + "\n")
            summary = {"input_tokens": i, "output_tokens": o, "request_rate": r, "skipped": False,
                       "throughput": lines[0]["mean"], "failed": len(point["errors"]),
                       **{f"{ln['metric'].lower()}_p99_s": ln["P99"] for ln in lines[1:]}}
        if on_point is not None:
            on_point(n, len(points), summary)
        yield summary


def reduce_to_table(sweep: Path, *, kind: str, tpot_slo_ms: float | None, ttft_slo_ms: float | None,
                    percentile: str = "P99", meta: dict[str, Any]) -> dict[str, Any]:
    """The sweep file as a measured rate table over the paper's grid, with its provenance."""
    from cluster.tables import load_rate_sweep, paper_grid
    from solvers.tables import reduce_sweep

    slos = {k: v / 1e3 for k, v in (("TPOT", tpot_slo_ms), ("TTFT", ttft_slo_ms)) if v is not None}
    if not slos:
        raise InputError("--tpot-slo-ms: give a TPOT or a TTFT SLO to reduce the sweep to a table")
    grid = paper_grid()
    try:
        table = reduce_sweep(load_rate_sweep(sweep), grid, slos, percentile, name=kind)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    return {
        "kind": kind, "source": "measured", "sweep": str(sweep), **meta,
        "slo_ms": {k.lower(): v * 1e3 for k, v in slos.items()}, "percentile": percentile,
        "grid": {"input_edges": list(grid.in_edges), "output_edges": list(grid.out_edges)},
        "rates": [list(r) for r in table.rates], "limits": [list(r) for r in table.limits],
    }


def provenance(*, kind: str, engine: str, model: str, target: str) -> dict[str, Any]:
    return {"device_kind": kind, "engine": engine, "model": model, "target": target, "host": platform.node(),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def load_table(path: str) -> dict[str, Any]:
    """A measured table file (``flotilla profile --table``); InputError naming the file."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"--tables: cannot read {path!r} ({exc})") from None
    for key in ("kind", "rates", "grid", "source"):
        if key not in doc:
            raise InputError(f"--tables: {path!r} has no {key!r}; is it a `flotilla profile --table` file?")
    return doc
