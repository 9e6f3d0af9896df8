"""Long prompts served context-parallel on a real served fleet (SmolLM2-135M, rtx4090 + A100,
``start_serving`` with ``context_parallel_above``), driven through ``flotilla generate --file``.

The same long prompt is sent with ``--context-parallel auto`` (prefilled and decoded across the
devices the shard solver chooses) and ``off`` (one ExpertActor): the greedy text must be the
same, the reply must name the devices, strategy and shares (the solver's), and both requests are
journaled and acknowledged like any other."""

from __future__ import annotations

import json

import pytest

from tests.actors.test_llama import long_text
from tests.shell.test_cli import flotilla

KINDS = ("rtx4090", "a100-80g-sxm")
ABOVE = 512
NEW_TOKENS = 6


@pytest.fixture(scope="module")
def served(ray_session, tmp_path_factory):
    from cluster.shell.gateway import GatewayConfig
    from cluster.shell.serving import ServeConfig, start_serving

    d = tmp_path_factory.mktemp("cp")
    fleet = d / "fleet.yaml"
    fleet.write_text("name: cp-test\ndevices:\n" + "".join(f"  - kind: {k}\n    count: 1\n" for k in KINDS))
    s = start_serving(ServeConfig(fleet=str(fleet), gateway=GatewayConfig(port=0), max_concurrency=1,
                                  max_context=4096, context_parallel_above=ABOVE))
    long = d / "LONG.txt"
    long.write_text(long_text(38) + "\n\nWhich animal met the owl in line 3?")
    yield s, long
    s.shutdown()


def generate(served, *args: str) -> dict:
    s, long = served
    res = flotilla("generate", "--file", str(long), "--max-tokens", str(NEW_TOKENS), "--json",
                   "--server", s.gateway.address, *args, timeout=300)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_long_prompt_is_served_context_parallel_with_the_single_device_answer(served):
    import concurrent.futures
    import time

    import ray

    from actors.cp_adapter import Candidate, model_shape_of, placement

    s, _ = served
    done0 = s.store.counters().get("router.completed", 0)

    def ledgers():
        return [ray.get(a.ledger.remote())["reserved_bytes"] for a in s.running.actors.values()]

    before = ledgers()
    peak = list(before)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # watch the ledgers while it runs
        running = pool.submit(generate, served)
        while not running.done():
            peak = [max(a, b) for a, b in zip(peak, ledgers())]
            time.sleep(0.2)
        cp = running.result()
    one = generate(served, "--context-parallel", "off")
    # off: one expert of the fleet, no context_parallel object
    assert one["context_parallel"] is None and one["device_id"] in {f"{k}-0" for k in KINDS}
    assert one["prompt_tokens"] > ABOVE
    # auto: across the devices, strategy and shares the shard solver chooses for this prompt
    c = cp["context_parallel"]
    assert cp["prompt_tokens"] == one["prompt_tokens"] and sum(c["shares"]) == cp["prompt_tokens"]
    assert len(c["devices"]) >= 2 and sorted(c["devices"]) == sorted(KINDS)
    cands = [Candidate(d, s.running.specs[d].kind, s.running.actors[d]) for d in s.running.actors]
    want = placement(cp["prompt_tokens"], model_shape_of(None), cands)
    assert (c["devices"], c["strategy"], c["shares"]) == (list(want.kinds), want.strategy, list(want.shares))
    assert c["modeled_prefill_ms"] == pytest.approx(want.latency_s * 1e3) and "modeled" in c["note"]
    # the placement's modeled memory was reserved in the chosen devices' ledgers, and released after
    assert c["modeled_memory_bytes"] == pytest.approx(list(want.memory_bytes))
    grew = [p - b for p, b in zip(peak, before)]
    assert [grew[i] for i in want.devices] == [int(m) for m in want.memory_bytes]
    assert all(g == 0 for i, g in enumerate(grew) if i not in want.devices)
    end = time.monotonic() + 10
    while ledgers() != before and time.monotonic() < end:
        time.sleep(0.2)
    assert ledgers() == before
    # the greedy answer is the single device's, token for token
    assert cp["text"] == one["text"] and cp["completion_tokens"] == one["completion_tokens"] > 0
    assert cp["device_id"] == "context-parallel" and cp["finish_reason"] == one["finish_reason"]
    # journaled and acknowledged like any other request
    assert s.store.journal_unacked() == []
    assert s.store.counters().get("router.completed", 0) - done0 == 2


def test_short_prompt_and_bad_input(served):
    s, long = served
    res = flotilla("generate", "What is the capital of France?", "--max-tokens", "3", "--json",
                   "--server", s.gateway.address)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["context_parallel"] is None
    bad = flotilla("generate", "--file", str(long), "--context-parallel", "maybe", "--server", s.gateway.address)
    assert bad.returncode == 2 and "--context-parallel: expected auto or off, got 'maybe'" in bad.stderr
    missing = flotilla("generate", "--file", str(long) + ".nope", "--server", s.gateway.address)
    assert missing.returncode == 2 and "--file: cannot read" in missing.stderr
    both = flotilla("generate", "hi", "--file", str(long), "--server", s.gateway.address)
    assert both.returncode == 2 and "prompt: expected the prompt as an argument or --file FILE (exactly one)" in both.stderr


def test_request_field_is_validated(served):
    from cluster.exceptions import InputError

    with pytest.raises(InputError, match="^context_parallel: expected one of auto, off, got 'sometimes'"):
        served[0].router.generate({"prompt": "hi", "max_tokens": 1, "context_parallel": "sometimes"})


def test_serve_flag_parses_tokens_or_off():
    from cluster.exceptions import InputError
    from cluster.shell.cli.serve import parse_above
    from cluster.shell.serving import ServeConfig

    assert parse_above("off") is None and parse_above("2000") == 2000
    with pytest.raises(InputError, match="^--context-parallel-above: expected TOKENS"):
        parse_above("0")
    with pytest.raises(InputError, match="^context_parallel_above: expected an integer >= 1"):
        ServeConfig(context_parallel_above=0)


def test_plan_rpc_shards_query_is_the_solvers_answer(served):
    from cluster.shell.cli.shards import shard_inputs
    from cluster.shell.client import Client, RpcError
    from solvers.shards import solve

    kinds = ["rtx4090", "rtx4090", "a100-80g-sxm", "jetson-agx-orin-64"]
    with Client(served[0].gateway.address) as c:
        got = c.plan(shards={"tokens": 32768, "model": "llama-3-8b", "devices": kinds}).shards
        fleet = c.plan(shards={"tokens": 3000}).shards  # the served model over this fleet's devices
        with pytest.raises(RpcError, match="INVALID_ARGUMENT: tokens: expected an integer >= 1, got 0"):
            c.plan(shards={"tokens": 0})
        with pytest.raises(RpcError, match="FAILED_PRECONDITION: latency_budget_s/energy_budget_j: no placement"):
            c.plan(shards={"tokens": 4096, "latency_budget_s": 1e-9})
    _, model, devs = shard_inputs("llama-3-8b", kinds)
    want = solve(32768, model, devs)
    assert (list(got.devices), got.strategy, list(got.shares)) == (list(want.devices), want.strategy, list(want.shares))
    assert got.modeled_latency_s == pytest.approx(want.latency_s) and "modeled" in got.note
    assert sorted(fleet.candidates) == sorted(KINDS) and fleet.model == "smollm2-135m" and sum(fleet.shares) == 3000


def test_dispatch_hook_keeps_the_journal_and_falls_back_when_its_replica_dies(ray_session):
    """The router's hook on echo experts: hooked requests go to the hook's replica, journaled and
    acknowledged; killed mid-stream, the request completes once on the plan's replica; ``off``
    and short prompts never reach the hook's replica."""
    import uuid

    import ray

    from actors.device import spawn
    from actors.expert import ExpertConfig, spawn_expert
    from actors.router import Router
    from actors.routing import Replica
    from cluster.catalog import default_catalog
    from cluster.state import open_store

    made = []
    for kind in ("jetson-agx-orin-64", "rtx4090"):
        dev = spawn(default_catalog().get(kind), f"{kind}-hook")
        made += [dev, spawn_expert(dev, kind, f"{kind}-hook", ExpertConfig(model="echo", echo_delay_s=0.05))]
    plan_replica = Replica("jetson-agx-orin-64-hook", "jetson-agx-orin-64", made[1], 2)
    special = Replica("rtx4090-hook", "rtx4090", made[3], 1)  # outside the plan
    seen = []

    def hook(req):
        seen.append(req.get("context_parallel"))
        return special if req["prompt"].startswith("LONG") and req.get("context_parallel") != "off" else None

    store = open_store(None, namespace=f"test-hook-{uuid.uuid4().hex[:8]}")
    router = Router(store, [plan_replica], dispatch_hook=hook)
    router.start()
    words = "LONG " + " ".join(f"w{i}" for i in range(20))
    try:
        assert router.generate({"prompt": words, "max_tokens": 64})["device_id"] == special.device_id
        assert router.generate({"prompt": words, "max_tokens": 64, "context_parallel": "off"})["device_id"] == plan_replica.device_id
        assert router.generate({"prompt": "short one", "max_tokens": 8})["device_id"] == plan_replica.device_id
        assert seen == [None, "off", None]
        stream = router.stream({"prompt": words, "max_tokens": 64, "request_id": "hooked-victim"})
        assert next(stream)["type"] == "accepted"
        first = next(stream)
        assert special.active == 1
        ray.kill(special.handle)
        rest = list(stream)
        assert first["text"] + "".join(e["text"] for e in rest[:-1]) == words  # every word once
        assert rest[-1]["attempts"] == 2 and rest[-1]["device_id"] == plan_replica.device_id
        assert not special.alive and store.journal_unacked() == []
        assert store.journal_get("hooked-victim")["result"]["text"] == words
        assert store.counters().get("router.completed") == 4
    finally:
        router.close()
        for a in made:
            ray.kill(a)
        store.close()


def test_group_that_cannot_be_placed_is_a_capacity_error(ray_session):
    from actors.context_parallel import ContextParallelGroup
    from cluster.exceptions import CapacityError

    with pytest.raises(CapacityError, match=r"^devices: the context-parallel ranks on h100-sxm, rtx4090 were not placed"):
        ContextParallelGroup(["h100-sxm", "rtx4090"], timeout_s=2)  # no h100 in this Ray instance
