"""Overload on the gRPC gateway: the router's queue bound is reachable (more RPC threads than it
admits), requests past it get RESOURCE_EXHAUSTED at once, and health checks still answer."""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from cluster.shell.proto import flotilla_pb2 as pb
from cluster.shell.proto import flotilla_pb2_grpc as pb_grpc

KIND = "jetson-agx-orin-64"
N = 100


@pytest.fixture(scope="module")
def served(ray_session, redis_url):
    import ray

    from actors.device import spawn
    from actors.expert import ExpertConfig, spawn_expert
    from actors.router import Router
    from actors.routing import Replica
    from cluster.catalog import default_catalog
    from cluster.shell.gateway import Gateway, GatewayConfig
    from cluster.state import open_store

    spec = default_catalog().get(KIND)
    devs = [spawn(spec, f"{KIND}-{i}") for i in range(2)]
    exps = [spawn_expert(d, KIND, f"{KIND}-{i}", ExpertConfig(model="echo", echo_delay_s=0.05)) for i, d in enumerate(devs)]
    store = open_store(redis_url, namespace=f"test-overload-{uuid.uuid4().hex[:8]}")
    router = Router(store, [Replica(f"{KIND}-{i}", KIND, e, 2) for i, e in enumerate(exps)])  # max_queue 64
    router.start()
    gw = Gateway(router, store, GatewayConfig(port=0), "echo").start()
    yield gw, router
    gw.stop(0.5)
    router.close()
    store.clear()
    store.close()
    for a in exps + devs:
        ray.kill(a)


def test_queue_bound_is_reachable_and_health_answers_under_load(served):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    gw, router = served
    assert gw.max_workers == router.config.max_queue + 32
    channel = grpc.insecure_channel(gw.address)
    stub = pb_grpc.FlotillaStub(channel)
    go = threading.Barrier(N)

    def call(i: int) -> str:
        go.wait()
        try:
            list(stub.Generate(pb.GenerateRequest(prompt="a b c d", max_tokens=4), timeout=60))
            return "OK"
        except grpc.RpcError as exc:
            return exc.code().name

    with ThreadPoolExecutor(N) as pool:
        futures = [pool.submit(call, i) for i in range(N)]
        deadline = time.monotonic() + 30
        while router.status()["admitted"] <= 40 and time.monotonic() < deadline:
            time.sleep(0.01)
        admitted = router.status()["admitted"]
        t0 = time.monotonic()
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(gw.address))
        reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
        health_s = time.monotonic() - t0
        codes = [f.result() for f in futures]
    assert admitted > 40  # more requests admitted than the old 32 RPC threads could ever hold
    assert reply.status == health_pb2.HealthCheckResponse.SERVING and health_s < 2
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}
    assert codes.count("RESOURCE_EXHAUSTED") >= 1 and codes.count("OK") >= router.config.max_queue
    assert router.status()["admitted"] == 0
    channel.close()
