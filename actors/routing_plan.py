"""The routing plan as one router sees it: the plan named ``routing`` in the state store, re-read
every ``refresh_s``, validated (:func:`actors.routing.validate_plan`; a bad plan is counted as
``router.bad_plan`` and the last good one kept), and the weighted turns of its version.

Until a plan is stored the round-robin plan over the replicas' kinds serves
(:func:`actors.routing.default_plan`). A new plan version starts its weighted turns afresh.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from actors.routing import WeightedTurns, default_plan, validate_plan
from cluster.exceptions import InputError

PLAN_NAME = "routing"


class RoutingPlanView:
    """The current routing plan, its version and its weighted turns, refreshed from ``store``."""

    def __init__(self, store: Any, kinds: list[str], refresh_s: float) -> None:
        self._store = store
        self._refresh_s = refresh_s
        self._lock = threading.Lock()
        self._plan: dict[str, Any] = default_plan(kinds)
        self._version: int | None = None
        self._turns = WeightedTurns()
        self._read = 0.0

    @property
    def version(self) -> int | None:
        """The stored plan's version; None while the round-robin plan serves."""
        return self._version

    def current(self, *, force: bool = False) -> tuple[int | None, dict[str, Any], WeightedTurns]:
        """``(version, plan, turns)`` after a refresh when ``refresh_s`` has passed (or ``force``)."""
        self.refresh(force=force)
        with self._lock:
            return self._version, self._plan, self._turns

    def refresh(self, *, force: bool = False) -> None:
        """Re-read the stored plan (at most every ``refresh_s`` unless ``force``)."""
        now = time.monotonic()
        if not force and now - self._read < self._refresh_s:
            return
        self._read = now
        got = self._store.get_plan(name=PLAN_NAME)
        if got is None:
            return
        try:
            plan = validate_plan(got[1])
        except InputError:
            self._store.incr("router.bad_plan")
            return
        with self._lock:
            if got[0] != self._version:
                self._turns = WeightedTurns()  # a fresh object: a pick in progress keeps the old one
            self._plan, self._version = plan, got[0]
