"""Feed a device-mix plan to Ray's autoscaler and record it in the state store.

``plan_to_bundles`` is pure: one resource bundle ``{"device:<kind>": 1}`` per planned device, the
custom resource every node of that kind advertises (ray_cluster.yaml, cluster/runtime). Asking
for N such bundles makes the autoscaler keep at least N nodes of the kind, and nothing else: the
request replaces any earlier one (``request_resources`` is not cumulative), so applying a smaller
plan lets idle nodes of dropped kinds scale down after the idle timeout.

``apply_plan`` is the shell: it calls ``ray.autoscaler.sdk.request_resources(bundles=...)`` (Ray
must be initialised; on a cluster without an autoscaler, e.g. a local ``ray.init()``, the request
is stored in the GCS and nothing launches) and stores the plan as a new version in the state store.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from cluster.exceptions import InputError

RESOURCE_PREFIX = "device:"


def _counts(plan: Any) -> Mapping[str, Any]:
    counts = getattr(plan, "counts", None)
    if counts is None and isinstance(plan, Mapping):
        counts = plan.get("allocation")
    if not isinstance(counts, Mapping):
        raise InputError(
            f"plan: expected an AllocationPlan or its to_json() dict (with 'allocation'), got "
            f"{type(plan).__name__}"
        )
    return counts


def plan_to_bundles(plan: Any) -> list[dict[str, int]]:
    """``[{"device:<kind>": 1}, ...]``: one bundle per planned device, kinds in the plan's order.

    Accepts an :class:`~solvers.allocation.AllocationPlan` or its ``to_json()`` dict.
    """
    bundles: list[dict[str, int]] = []
    for kind, n in _counts(plan).items():
        if not isinstance(kind, str) or not kind:
            raise InputError(f"plan: device kind {kind!r} is not a non-empty string")
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise InputError(f"plan: count for {kind!r} = {n!r}; allowed: an integer >= 0")
        bundles.extend({RESOURCE_PREFIX + kind: 1} for _ in range(n))
    return bundles


def apply_plan(plan: Any, store: Any = None, *, name: str = "default") -> dict[str, Any]:
    """Request the plan's devices from Ray's autoscaler and record the plan in ``store``.

    Returns ``{"bundles": [...], "version": int | None, "requested_at": unix seconds}``; version
    is the state store's plan version (None when no store is given).

    Raises:
        InputError: a malformed plan.
        RuntimeError: Ray is not initialised (from Ray).
    """
    from ray.autoscaler.sdk import request_resources

    bundles = plan_to_bundles(plan)
    doc = plan.to_json() if hasattr(plan, "to_json") else dict(plan)
    request_resources(bundles=bundles)
    at = time.time()
    version = None
    if store is not None:
        version = store.put_plan({**doc, "bundles": bundles, "requested_at": at}, name=name)
    return {"bundles": bundles, "version": version, "requested_at": at}


__all__ = ["RESOURCE_PREFIX", "apply_plan", "plan_to_bundles"]
