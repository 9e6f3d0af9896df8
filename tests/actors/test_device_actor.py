"""DeviceActors on the session's local Ray instance: placement, real computation, ledger, telemetry."""

from __future__ import annotations

import pytest
import torch

from cluster import perf
from cluster.catalog import default_catalog
from cluster.exceptions import CapacityError, InputError
from cluster.shell.fleet import bring_up
from cluster.runtime import load_fleet
from cluster.state import open_store

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def running(ray_session):
    store = open_store(None, namespace="test-device-actor")
    fleet = bring_up(load_fleet(ROOT / "examples" / "fleet.yaml"), store)
    yield fleet
    fleet.shutdown()


def test_one_actor_per_device_registered_in_store(running) -> None:
    assert sorted(running.actors) == ["a100-80g-sxm-0", "jetson-agx-orin-64-0", "jetson-agx-orin-64-1", "rtx4090-0", "rtx4090-1"]
    registered = running.store.devices()
    assert set(registered) == set(running.actors)
    assert registered["rtx4090-1"]["kind"] == "rtx4090"
    assert registered["rtx4090-1"]["simulated"] is True


def test_probe_runs_a_real_gemm_on_every_device_and_labels_it_simulated(running) -> None:
    reports = running.probe()
    assert len(reports) == 5
    for r in reports:
        assert r["checked"] is True
        assert r["simulated"] is True
        assert r["label"] == f"simulated {r['kind']} on cpu"
        assert r["flops"] == 2 * 512**3
        assert r["wall_s"] > 0 and r["modeled_s"] > 0 and r["modeled_j"] > 0
    by_kind = {r["kind"]: r for r in reports}
    # the same GEMM is modeled faster on an A100 than on a Jetson
    assert by_kind["a100-80g-sxm"]["modeled_s"] < by_kind["jetson-agx-orin-64"]["modeled_s"]


def test_run_counts_flops_and_models_with_perf(running) -> None:
    import ray

    actor = running.actors["a100-80g-sxm-0"]
    a, b = torch.randn(64, 128), torch.randn(128, 32)
    out = ray.get(actor.run.remote(torch.matmul, a, b))
    torch.testing.assert_close(out["result"], a @ b)
    rep = out["report"]
    assert rep["flops"] == 2 * 64 * 128 * 32
    assert rep["bytes"] == 4 * (64 * 128 + 128 * 32 + 64 * 32)
    spec = default_catalog().get("a100-80g-sxm")
    # fp32 tensors are modeled at the device's fp32 rate, which is slower than its bf16 rate
    assert rep["modeled_s"] == pytest.approx(perf.op_time(rep["flops"], rep["bytes"], spec, "fp32"))
    assert rep["modeled_j"] == pytest.approx(perf.op_energy(rep["flops"], rep["bytes"], spec, "fp32"))
    half = ray.get(actor.run.remote(torch.matmul, a.bfloat16(), b.bfloat16()))["report"]
    assert half["modeled_s"] == pytest.approx(perf.op_time(half["flops"], half["bytes"], spec, "bf16"))


def test_actors_are_placed_by_device_resource(running, ray_session) -> None:
    """Work lands only where the fleet has the device: an H100 actor (no H100 in the fleet) and an
    actor wanting more rtx4090 than the two DeviceActors left free both stay pending."""
    import ray

    from actors.device import DEVICE_ACTOR_SHARE, DeviceActor, spawn

    h100 = spawn(default_catalog().get("h100-sxm"), "h100-sxm-0")
    left = 2 - 2 * DEVICE_ACTOR_SHARE
    greedy = ray.remote(DeviceActor).options(resources={"device:rtx4090": left + 0.25}, num_cpus=0.1).remote(
        default_catalog().get("rtx4090"), "rtx4090-greedy"
    )
    fits = ray.remote(DeviceActor).options(resources={"device:rtx4090": left}, num_cpus=0.1).remote(
        default_catalog().get("rtx4090"), "rtx4090-fits"
    )
    assert ray.get(fits.info.remote(), timeout=60)["kind"] == "rtx4090"
    ray.kill(fits)
    ready, _ = ray.wait([h100.info.remote(), greedy.info.remote()], num_returns=2, timeout=2.0)
    assert ready == []
    ray.kill(h100)
    ray.kill(greedy)


def test_memory_ledger_refuses_over_capacity_and_loses_nothing(running) -> None:
    import ray

    actor = running.actors["jetson-agx-orin-64-0"]
    cap = default_catalog().get("jetson-agx-orin-64").memory_bytes
    rid = ray.get(actor.reserve.remote(cap - 1000, "weights"))
    with pytest.raises(CapacityError, match="cannot reserve 2000 bytes"):
        ray.get(actor.reserve.remote(2000, "kv"))
    ledger = ray.get(actor.ledger.remote())
    assert ledger["reserved_bytes"] == cap - 1000 and ledger["free_bytes"] == 1000
    assert ray.get(actor.release.remote(rid)) == cap - 1000
    assert ray.get(actor.ledger.remote())["reserved_bytes"] == 0
    with pytest.raises(InputError, match="unknown reservation"):
        ray.get(actor.release.remote(rid))
    with pytest.raises(InputError, match="nbytes"):
        ray.get(actor.reserve.remote(-5))


def test_telemetry_accumulates(running) -> None:
    import ray

    actor = running.actors["rtx4090-0"]
    before = ray.get(actor.telemetry.remote())
    reps = [ray.get(actor.probe.remote()) for _ in range(2)]
    after = ray.get(actor.telemetry.remote())
    assert after["ops"] == before["ops"] + 2
    assert after["modeled_s"] == pytest.approx(before["modeled_s"] + sum(r["modeled_s"] for r in reps))
    assert after["modeled_j"] == pytest.approx(before["modeled_j"] + sum(r["modeled_j"] for r in reps))
    assert after["simulated"] is True


def test_heartbeat_reregisters_an_expired_device(running) -> None:
    running.store.remove_device("rtx4090-0")
    assert "rtx4090-0" not in running.store.devices()
    running.heartbeat_once()
    assert "rtx4090-0" in running.store.devices()
