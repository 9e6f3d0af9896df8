"""plan -> autoscaler bundles (pure), and apply_plan against the session's local Ray."""

from __future__ import annotations

import json

import pytest

from cluster.shell.autoscaler import apply_plan, plan_to_bundles
from cluster.exceptions import InputError
from cluster.state import open_store
from solvers.allocation import AllocationProblem, DeviceType, Workload, solve


def _plan():
    problem = AllocationProblem(
        device_types=(
            DeviceType("a10g", 1.01, ((2, 1), (5, 2))),
            DeviceType("a100-80g-sxm", 3.67, ((20, 20), (40, 20))),
        ),
        workload=Workload(((0.2, 0.1), (0.5, 0.2)), 30.0),
        slice_factor=1,
    )
    return solve(problem)  # Mélange's toy config: 3 x A10G + 1 x A100-80GB


def test_plan_to_bundles_exact():
    plan = _plan()
    assert plan.counts == {"a10g": 3, "a100-80g-sxm": 1}
    want = [{"device:a10g": 1}] * 3 + [{"device:a100-80g-sxm": 1}]
    assert plan_to_bundles(plan) == want
    assert plan_to_bundles(plan.to_json()) == want
    assert plan_to_bundles({"allocation": {"l4": 0, "t4": 2}}) == [{"device:t4": 1}] * 2


def test_plan_to_bundles_rejects_bad_plans():
    with pytest.raises(InputError, match="count for 'l4' = -1"):
        plan_to_bundles({"allocation": {"l4": -1}})
    with pytest.raises(InputError, match="expected an AllocationPlan"):
        plan_to_bundles({"counts": {"l4": 1}})


def test_apply_plan_requests_resources_and_records_the_plan(ray_session):
    ray = ray_session
    store = open_store(None)
    plan = _plan()
    got = apply_plan(plan, store)
    assert got["bundles"] == plan_to_bundles(plan)
    version, stored = store.get_plan()
    assert version == got["version"] == 1
    assert stored["allocation"] == {"a10g": 3, "a100-80g-sxm": 1}
    assert stored["bundles"] == got["bundles"]
    # A local cluster has no autoscaler process; the v1 request is stored in the GCS KV, which is
    # exactly what a cluster's autoscaler reads. Check it landed (v2 goes over a GCS RPC instead).
    from ray.autoscaler.v2.utils import is_autoscaler_v2

    if not is_autoscaler_v2():
        from ray.autoscaler._private.constants import AUTOSCALER_RESOURCE_REQUEST_CHANNEL
        from ray.experimental.internal_kv import _internal_kv_get

        assert json.loads(_internal_kv_get(AUTOSCALER_RESOURCE_REQUEST_CHANNEL)) == got["bundles"]
    # a second, smaller plan replaces the request and becomes version 2
    got2 = apply_plan({"allocation": {"a10g": 1}}, store)
    assert got2["version"] == 2 and store.get_plan()[1]["allocation"] == {"a10g": 1}
    if not is_autoscaler_v2():
        assert json.loads(_internal_kv_get(AUTOSCALER_RESOURCE_REQUEST_CHANNEL)) == [{"device:a10g": 1}]
    assert ray.is_initialized()
