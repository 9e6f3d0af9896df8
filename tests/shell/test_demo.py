"""The demo's whole path on the session's Ray: fleet file -> DeviceActors -> echo experts ->
router -> gateway -> mixed requests through the gRPC client -> per-kind rows -> clean shutdown."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_demo_serves_every_request_and_shuts_down(ray_session, capsys):
    import ray

    from cluster.shell.console import reserve_stdout_for_json
    from cluster.shell.job import DEMO_PROMPTS, run_demo

    with reserve_stdout_for_json():  # as `flotilla demo --json` runs it: Ray's own notices go to stderr
        summary = run_demo(fleet=str(REPO / "examples" / "fleet.yaml"), n_requests=6, model="echo", as_json=True)
    rows = summary["by_kind"]
    assert sum(r["requests"] for r in rows) == 6
    assert {r["device_kind"] for r in rows} <= {"rtx4090", "a100-80g-sxm", "jetson-agx-orin-64"}
    assert all(r["label"].startswith("simulated ") and r["modeled_time_ms"] is None for r in rows)  # echo: nothing modeled
    for s in summary["samples"]:
        assert s["answer"] == s["prompt"]  # the echo model answers with the prompt
    assert [s["prompt"] for s in summary["samples"]] == [p for p, _ in DEMO_PROMPTS[:3]]
    assert capsys.readouterr().out.count("\n") == 1  # --json: one object on stdout
    # every device unit is free again once Ray has processed the kills of the demo's actors
    deadline = time.monotonic() + 20
    while ray.available_resources().get("device:a100-80g-sxm", 0) < 1.0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("device:a100-80g-sxm", 0) == pytest.approx(1.0)


def test_demo_rows_math():
    from cluster.shell.client import GenerateResult
    from cluster.shell.job import demo_rows

    def res(kind, ttft, tpot, e2e, joules):
        return GenerateResult("x", "stop", 1, 4, ttft, tpot, 1.0, f"{kind}-0", kind, f"simulated {kind} on cpu", True, 1, "r",
                              "m", False, 0.1, 0.01, e2e, joules)

    rows = demo_rows([res("a", 10, 2, 3.6e6, 1.0), res("a", 20, 4, 3.6e6, 2.0), res("b", 5, 1, 1.0, 0.5)], {"a": 2.0, "b": None})
    a, b = rows
    assert (a["device_kind"], a["requests"], a["tokens"]) == ("a", 2, 8)
    assert a["measured_ttft_ms"] == 15 and a["measured_tpot_ms"] == 3
    assert a["modeled_time_ms"] == 7.2e6 and a["modeled_energy_j"] == 3.0
    assert a["modeled_cost_usd"] == pytest.approx(2.0 * 2)  # $2/h for 2 modeled hours
    assert b["modeled_cost_usd"] is None
