"""The supervisor on real Ray actors: a killed ExpertActor is noticed by its ping, marked dead and
replaced; requests then run on the replacement; failed replacements back off exponentially."""

from __future__ import annotations

import uuid

import pytest
from testkit import wait_until_dead

from actors.router import Router, RouterConfig
from actors.routing import Replica
from actors.supervisor import Supervisor, SupervisorConfig
from cluster.exceptions import CapacityError, InputError

KIND = "jetson-agx-orin-64"


@pytest.fixture()
def fleet(ray_session, redis_url):
    import ray

    from actors.device import spawn
    from actors.expert import ExpertConfig, spawn_expert
    from cluster.catalog import default_catalog
    from cluster.state import open_store

    spec = default_catalog().get(KIND)
    devs = {f"{KIND}-{i}": spawn(spec, f"{KIND}-{i}") for i in range(2)}
    conf = ExpertConfig(model="echo")
    exps = {d: spawn_expert(dev, KIND, d, conf) for d, dev in devs.items()}
    store = open_store(redis_url, namespace=f"test-supervisor-{uuid.uuid4().hex[:8]}")
    router = Router(store, [Replica(d, KIND, h, 2) for d, h in exps.items()], RouterConfig())
    router.start(replay=False)
    spawned: list = []

    def respawn(device_id: str):
        handle = spawn_expert(devs[device_id], KIND, device_id, conf)
        spawned.append(handle)
        return handle

    yield {"router": router, "store": store, "experts": exps, "respawn": respawn, "spawned": spawned}
    router.close()
    store.clear()
    store.close()
    for a in [*exps.values(), *spawned, *devs.values()]:
        ray.kill(a)


def test_a_killed_expert_is_replaced_and_serves_again(fleet):
    import ray

    router, store = fleet["router"], fleet["store"]
    sup = Supervisor(router, fleet["respawn"], SupervisorConfig(check_interval_s=60))
    assert sup.check_once() == []  # all alive: nothing to do
    victim = f"{KIND}-0"
    ray.kill(fleet["experts"][victim])
    # ray.kill is asynchronous: a ping right after it can still be answered, or be pending (the
    # supervisor counts a ping timeout as busy, not dead). Wait until the death is observable.
    wait_until_dead(fleet["experts"][victim])
    assert sup.check_once() == [victim]
    assert [r["alive"] for r in router.replicas()] == [True, True]
    assert router.handle(victim) is fleet["spawned"][0]
    assert store.counter("supervisor.replaced") == 1
    texts = {router.generate({"prompt": f"p{i} q"})["device_id"] for i in range(6)}
    assert texts == {f"{KIND}-0", f"{KIND}-1"}  # the replacement takes its share


def test_failed_replacements_back_off_exponentially(fleet):
    import ray

    router, store = fleet["router"], fleet["store"]
    now = [0.0]
    attempts: list[float] = []

    def failing(device_id: str):
        attempts.append(now[0])
        raise CapacityError("no room on the device")

    sup = Supervisor(router, failing, SupervisorConfig(backoff_initial_s=1.0, backoff_max_s=4.0), clock=lambda: now[0])
    ray.kill(fleet["experts"][f"{KIND}-1"])
    wait_until_dead(fleet["experts"][f"{KIND}-1"])  # the death observable (see above)
    for t in (0.0, 0.5, 1.0, 2.0, 2.9, 3.0, 6.0, 7.0, 11.0):
        now[0] = t
        sup.check_once()
    # waits of 1, 2, 4, then capped at 4
    assert attempts == [0.0, 1.0, 3.0, 7.0, 11.0]
    assert store.counter("supervisor.respawn_failed") == 5
    assert [r["alive"] for r in router.replicas()] == [True, False]


def test_config_errors_name_the_field():
    with pytest.raises(InputError, match="check_interval_s"):
        SupervisorConfig(check_interval_s=0)
    with pytest.raises(InputError, match="backoff_max_s"):
        SupervisorConfig(backoff_initial_s=5, backoff_max_s=1)
