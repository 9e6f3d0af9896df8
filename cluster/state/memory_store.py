"""The in-memory state store: the embedded default, one process, the same contract as Redis."""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Callable

from cluster.state.base import StateStore
from cluster.state.values import DEFAULT_HISTOGRAM_CAP, HistogramSummary


@dataclasses.dataclass(slots=True)
class _Histogram:
    """A MemoryStore histogram: running aggregates plus a bounded window of samples."""

    samples: collections.deque
    count: int = 0
    total: float = 0.0
    lo: float | None = None
    hi: float | None = None


class MemoryStore(StateStore):
    """The state in this process, behind one lock. Expiry uses ``clock`` (monotonic seconds,
    ``time.monotonic`` by default; inject another for tests)."""

    def __init__(
        self,
        namespace: str = "default",
        *,
        clock: Callable[[], float] = time.monotonic,
        histogram_cap: int = DEFAULT_HISTOGRAM_CAP,
    ) -> None:
        super().__init__(namespace, "memory://", histogram_cap)
        self._clock = clock
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._device_info: dict[str, tuple[str, float]] = {}  # id -> (blob, deadline)
        self._plans: dict[str, dict[int, str]] = {}
        self._plan_seq: dict[str, int] = {}
        self._journal: dict[str, str] = {}  # pending entries
        self._pending: dict[str, None] = {}  # an insertion-ordered set
        self._results: dict[str, tuple[str, float]] = {}  # id -> (blob, deadline)
        self._leases: dict[str, float] = {}  # owner -> deadline
        self._counter_values: dict[str, float] = {}
        self._windows: dict[str, tuple[dict[str, float], float]] = {}  # bucket -> (fields, deadline)
        self._next_sweep = 0.0
        self._histograms: dict[str, _Histogram] = {}

    def _register_device(self, device_id: str, blob: str, ttl_ms: int) -> None:
        with self._lock:
            self._device_info[device_id] = (blob, self._clock() + ttl_ms / 1000)

    def _heartbeat(self, device_id: str, ttl_ms: int) -> bool:
        with self._lock:
            now = self._clock()
            found = self._device_info.get(device_id)
            if found is None or found[1] <= now:
                self._device_info.pop(device_id, None)
                return False
            self._device_info[device_id] = (found[0], now + ttl_ms / 1000)
            return True

    def _devices(self) -> dict[str, str]:
        with self._lock:
            now = self._clock()
            dead = [k for k, (_, deadline) in self._device_info.items() if deadline <= now]
            for k in dead:
                del self._device_info[k]
            return {k: blob for k, (blob, _) in self._device_info.items()}

    def _remove_device(self, device_id: str) -> None:
        with self._lock:
            self._device_info.pop(device_id, None)

    def _put_plan(self, name: str, blob: str, keep: int) -> int:
        with self._lock:
            version = self._plan_seq.get(name, 0) + 1
            self._plan_seq[name] = version
            versions = self._plans.setdefault(name, {})
            versions[version] = blob
            for v in [v for v in versions if v <= version - keep]:
                del versions[v]
            return version

    def _get_plan(self, name: str, version: int | None) -> tuple[int, str] | None:
        with self._lock:
            plans = self._plans.get(name, {})
            if version is None:
                version = self._plan_seq.get(name)
            if version is None or version not in plans:
                return None
            return version, plans[version]

    def _plan_versions(self, name: str) -> list[int]:
        with self._lock:
            return list(self._plans.get(name, {}))

    def _result(self, request_id: str) -> str | None:
        found = self._results.get(request_id)
        if found is None:
            return None
        if found[1] <= self._clock():
            del self._results[request_id]
            return None
        return found[0]

    def _journal_append(self, request_id: str, blob: str, count: str | None = None) -> tuple[str, bool] | None:
        with self._lock:
            if request_id in self._journal:
                return self._journal[request_id], False
            done = self._result(request_id)
            if done is not None:
                return done, True
            self._journal[request_id] = blob
            self._pending[request_id] = None
            if count:
                self._counter_values[count] = self._counter_values.get(count, 0.0) + 1
            return None

    def _journal_complete(self, request_id: str, result_json: str, ttl_ms: int,
                          count: tuple[str, str] | None = None) -> bool:
        import json

        with self._lock:
            blob = self._journal.pop(request_id, None)
            if count:
                name = count[0] if blob is not None else count[1]
                self._counter_values[name] = self._counter_values.get(name, 0.0) + 1
            if blob is None:
                return False
            del self._pending[request_id]
            entry = json.loads(blob)
            done = {"fingerprint": entry.get("fingerprint", ""), "owner": entry.get("owner", ""),
                    "appended_at": entry["appended_at"], "result": json.loads(result_json)}
            self._results[request_id] = (json.dumps(done), self._clock() + ttl_ms / 1000)
            return True

    def _journal_ack(self, request_id: str) -> bool:
        with self._lock:
            if request_id not in self._pending:
                return False
            del self._pending[request_id]
            del self._journal[request_id]
            return True

    def _journal_unacked(self) -> list[tuple[str, str]]:
        with self._lock:
            return [(rid, self._journal[rid]) for rid in self._pending]

    def _journal_claim_orphans(self, owner: str) -> list[tuple[str, str]]:
        import json

        with self._lock:
            now = self._clock()
            out = []
            for rid in self._pending:
                entry = json.loads(self._journal[rid])
                holder = entry.get("owner", "")
                if holder != owner and self._leases.get(holder, 0.0) > now:
                    continue
                entry["owner"] = owner
                self._journal[rid] = json.dumps(entry)
                out.append((rid, self._journal[rid]))
            return out

    def _lease(self, owner: str, ttl_ms: int) -> None:
        with self._lock:
            self._leases[owner] = self._clock() + ttl_ms / 1000

    def _release_lease(self, owner: str) -> None:
        with self._lock:
            self._leases.pop(owner, None)

    def _journal_get(self, request_id: str) -> tuple[str, bool] | None:
        with self._lock:
            blob = self._journal.get(request_id)
            if blob is not None:
                return blob, False
            done = self._result(request_id)
            return None if done is None else (done, True)

    def _incr(self, name: str, by: float) -> float:
        with self._lock:
            value = self._counter_values.get(name, 0.0) + by
            self._counter_values[name] = value
            return value

    def _counters(self, name: str | None) -> dict[str, float]:
        with self._lock:
            if name is None:
                return dict(self._counter_values)
            return {name: self._counter_values[name]} if name in self._counter_values else {}

    def _incr_windowed(self, bucket: str, field: str, by: float, ttl_ms: int) -> float:
        with self._lock:
            now = self._clock()
            if now >= self._next_sweep:  # drop expired buckets, at most once a second
                self._windows = {b: e for b, e in self._windows.items() if e[1] > now}
                self._next_sweep = now + 1.0
            fields, deadline = self._windows.get(bucket, ({}, 0.0))
            if deadline <= now:
                fields = {}
            value = fields.get(field, 0.0) + by
            fields[field] = value
            self._windows[bucket] = (fields, now + ttl_ms / 1000)
            return value

    def _windowed(self, buckets: list[str]) -> dict[str, dict[str, float]]:
        with self._lock:
            now = self._clock()
            return {b: dict(e[0]) for b in buckets if (e := self._windows.get(b)) is not None and e[1] > now}

    def _observe(self, name: str, value: float) -> None:
        with self._lock:
            h = self._histograms.get(name)
            if h is None:
                h = self._histograms[name] = _Histogram(
                    collections.deque(maxlen=self.histogram_cap)
                )
            h.samples.append(value)
            h.count += 1
            h.total += value
            if h.lo is None or value < h.lo:
                h.lo = value
            if h.hi is None or value > h.hi:
                h.hi = value

    def _histogram(self, name: str) -> HistogramSummary:
        with self._lock:
            h = self._histograms.get(name)
            if h is None:
                return HistogramSummary.from_parts(0, 0.0, None, None, [])
            return HistogramSummary.from_parts(h.count, h.total, h.lo, h.hi, list(h.samples))

    def _ping(self) -> None:
        return None

    def _close(self) -> None:
        with self._lock:
            self._reset()

    def _clear(self) -> None:
        with self._lock:
            self._reset()


# --------------------------------------------------------------------------------------------
# Redis back end
# --------------------------------------------------------------------------------------------

# Lua scripts: each runs atomically on the server. Floats travel as Python repr() strings and
# are stored with %.17g, both of which round-trip a double exactly, so Lua's double arithmetic
# gives bit-for-bit the results MemoryStore's Python floats give.

