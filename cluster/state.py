"""The cluster state store: devices, plans, the request journal and metrics.

One interface, :class:`StateStore`, two back ends with the same semantics:

* :class:`RedisStore` keeps the state in a Redis server (``redis://`` or ``rediss://``), so it
  outlives any process: a restarted gateway reopens the store and finds its unacknowledged requests.
* :class:`MemoryStore` keeps it in this process (the embedded default when no URL is given).
  Each instance is its own store: two ``MemoryStore`` objects never share state, whatever their
  namespace.

The public methods live on :class:`StateStore`: they validate their arguments and encode values as
JSON once, for both back ends, and call the back end's private ``_``-methods. Every value goes
through strict JSON (string keys only, no NaN or infinity), so both back ends hand back the same
fresh objects: a tuple comes back as a list, and mutating a returned dict changes nothing stored.

Redis key layout, all under ``flotilla:{namespace}:`` (a namespace is ``[A-Za-z0-9_.-]+``, so
``clear`` can match its keys with one glob pattern):

=============================  ======  ===================================================
key                            type    content
=============================  ======  ===================================================
``device:{id}``                string  the device's info as JSON, with a TTL (``PX``)
``devices``                    set     index of device ids; dead ids are pruned by ``devices()``
``plan:{name}``                hash    version -> plan JSON
``planseq:{name}``             string  the last version handed out (``INCR``)
``journal``                    hash    request id -> ``{"payload", "appended_at"}`` JSON
``journal:pending``            zset    unacknowledged request ids, scored by append sequence
``journal:seq``                string  the append sequence (``INCR``)
``counters``                   hash    counter name -> value (``%.17g``)
``hist:{name}``                hash    count, sum, min, max of a histogram
``histsamples:{name}``         list    the newest ``histogram_cap`` samples, newest first
=============================  ======  ===================================================

Every multi-key change runs as one Lua script or ``MULTI`` transaction, so it is atomic. The
client makes no automatic command retries: a retried ``INCR`` or journal append could apply twice.
A dropped connection is re-established on the next call; a call that cannot reach the server
raises :class:`~cluster.exceptions.StoreUnavailableError` naming the URL (password removed).
Scripts build per-device key names themselves, so the store needs a single Redis server, not a
Redis Cluster.
"""

from __future__ import annotations

import abc
import collections
import contextlib
import dataclasses
import json
import math
import numbers
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from fractions import Fraction

from cluster.exceptions import InputError, StoreUnavailableError, did_you_mean

__all__ = [
    "DEFAULT_HISTOGRAM_CAP",
    "HistogramSummary",
    "MemoryStore",
    "RedisStore",
    "StateStore",
    "open_store",
    "percentile_nearest_rank",
    "redact_url",
]

DEFAULT_HISTOGRAM_CAP = 10_000
"""How many of its newest samples a histogram keeps for percentiles."""

ALLOWED_SCHEMES = ("memory", "redis", "rediss")
_NAMESPACE_RE = re.compile(r"[A-Za-z0-9_.\-]+")
_CONNECT_TIMEOUT_S = 2.0
_SOCKET_TIMEOUT_S = 10.0


# --------------------------------------------------------------------------------------------
# Value objects and pure helpers
# --------------------------------------------------------------------------------------------


def percentile_nearest_rank(sorted_samples: list[float], p: float) -> float:
    """The nearest-rank ``p``-th percentile of ascending ``sorted_samples``.

    For ``n`` samples ``x_(1) <= ... <= x_(n)`` it is ``x_(k)`` with
    ``k = max(1, ceil(p/100 * n))``: the smallest sample such that at least ``p`` percent of the
    samples are at most it. It is always one of the samples (no interpolation). It is numpy's
    ``percentile(..., method="inverted_cdf")`` except where numpy's float rank ``n * (p/100)``
    rounds just above a whole number (``100 * 0.07``) and numpy takes the next sample.
    """
    if not sorted_samples:
        raise InputError("percentile of no samples: observe at least one value first")
    if not 0 < p <= 100:
        raise InputError(f"percentile p={p!r} is out of range; allowed: 0 < p <= 100")
    n = len(sorted_samples)
    # The rank in exact rationals, p taken as written (99.9 is 999/10, not the double nearest
    # it): float arithmetic can nudge a whole rank up by one (0.07 * 100 == 7.000000000000001).
    exact_p = Fraction(p) if isinstance(p, int) else Fraction(repr(float(p)))
    k = max(1, math.ceil(exact_p * n / 100))
    return sorted_samples[k - 1]


@dataclasses.dataclass(frozen=True, slots=True)
class HistogramSummary:
    """What a histogram has seen.

    ``count``, ``sum``, ``min`` and ``max`` are exact running aggregates over every observation
    (``sum`` is the left-to-right float sum, the same on both back ends); ``mean = sum / count``.
    The percentiles are nearest-rank (:func:`percentile_nearest_rank`) over the newest
    ``histogram_cap`` samples (10,000 by default), so they describe recent behaviour once a
    histogram has seen more than that. With ``count == 0`` every field but ``count`` and ``sum``
    is ``None``.
    """

    count: int
    sum: float
    min: float | None
    max: float | None
    mean: float | None
    p50: float | None
    p90: float | None
    p99: float | None

    def __post_init__(self) -> None:
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 0:
            raise InputError(f"HistogramSummary.count={self.count!r}; allowed: an int >= 0")
        rest = {f: getattr(self, f) for f in ("min", "max", "mean", "p50", "p90", "p99")}
        if self.count == 0:
            if self.sum != 0 or any(v is not None for v in rest.values()):
                raise InputError(
                    f"HistogramSummary with count=0 must have sum=0 and no min/max/mean/"
                    f"percentiles; got sum={self.sum!r}, {rest}"
                )
            return
        missing = [f for f, v in rest.items() if v is None]
        if missing:
            raise InputError(f"HistogramSummary with count={self.count} lacks {missing}")
        order = (self.min, self.p50, self.p90, self.p99, self.max)
        if any(a > b for a, b in zip(order, order[1:])):
            raise InputError(
                "HistogramSummary must have min <= p50 <= p90 <= p99 <= max; got "
                f"min={self.min}, p50={self.p50}, p90={self.p90}, p99={self.p99}, max={self.max}"
            )

    @classmethod
    def from_parts(
        cls, count: int, total: float, lo: float | None, hi: float | None, samples: list[float]
    ) -> HistogramSummary:
        """Build a summary from running aggregates and the retained samples (any order)."""
        if count == 0:
            return cls(0, 0.0, None, None, None, None, None, None)
        ordered = sorted(samples)
        return cls(
            count=count,
            sum=total,
            min=lo,
            max=hi,
            mean=total / count,
            p50=percentile_nearest_rank(ordered, 50),
            p90=percentile_nearest_rank(ordered, 90),
            p99=percentile_nearest_rank(ordered, 99),
        )


def redact_url(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***`` (user name and the rest kept).

    A string that is not a URL but has an ``@`` loses everything before its last ``@``, in case
    that part is a password typed without the ``scheme://``.
    """
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        if "@" in url and not parts.netloc:
            return "***@" + url.rpartition("@")[2]
        return url
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{hostinfo}"))


def _check_name(value: object, field: str) -> str:
    """A non-empty string identifier (device id, request id, plan or metric name)."""
    if not isinstance(value, str) or not value:
        raise InputError(f"{field} must be a non-empty string; got {value!r}")
    return value


def _check_number(value: object, field: str) -> float:
    """A finite real number (bools refused), as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(f"{field} must be a finite number; got {value!r}")
    try:
        out = float(value)
    except OverflowError:
        raise InputError(f"{field}={value!r} is too large for a float") from None
    if not math.isfinite(out):
        raise InputError(f"{field} must be a finite number; got {value!r}")
    return out


def _ttl_ms(ttl_s: object) -> int:
    """A TTL in seconds as whole milliseconds (at least 1), the resolution Redis keeps."""
    ttl = _check_number(ttl_s, "ttl_s")
    if ttl <= 0:
        raise InputError(f"ttl_s must be > 0 seconds; got {ttl_s!r}")
    return max(1, round(ttl * 1000))


def _find_non_json(value: object, path: str, active: set[int]) -> str | None:
    """The first reason ``value`` is not strict JSON, naming its path, or None if it is."""
    if value is None or isinstance(value, (bool, int, str)):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{path} is {value!r}, not a finite number"
    if isinstance(value, (dict, list, tuple)):
        if id(value) in active:
            return f"{path} contains itself (a reference cycle)"
        active.add(id(value))
        try:
            if isinstance(value, dict):
                for key, item in value.items():
                    if not isinstance(key, str):
                        kind = type(key).__name__
                        return f"{path} has key {key!r} of type {kind}; keys must be str"
                    found = _find_non_json(item, f"{path}[{key!r}]", active)
                    if found:
                        return found
            else:
                for i, item in enumerate(value):
                    found = _find_non_json(item, f"{path}[{i}]", active)
                    if found:
                        return found
        finally:
            active.discard(id(value))
        return None
    return f"{path} is a {type(value).__name__} ({value!r:.60})"


def _to_json(value: object, field: str) -> str:
    """``value`` (a dict) as strict JSON; InputError naming the offending field otherwise."""
    if not isinstance(value, dict):
        raise InputError(f"{field} must be a dict (a JSON object); got {type(value).__name__}")
    problem = _find_non_json(value, field, set())
    if problem:
        raise InputError(
            f"{problem}; {field} must be JSON: dicts with str keys, lists, str, int, finite "
            "float, bool, None"
        )
    return json.dumps(value, allow_nan=False, separators=(",", ":"))


# --------------------------------------------------------------------------------------------
# The interface
# --------------------------------------------------------------------------------------------


class StateStore(abc.ABC):
    """The cluster's state: one namespace of devices, plans, the request journal and metrics.

    Use it as a context manager or call :meth:`close`; a closed store raises
    :class:`~cluster.exceptions.StoreUnavailableError` on every call but ``close``.
    Both back ends are safe to share between threads.
    """

    namespace: str
    url: str

    def __init__(self, namespace: str, url: str, histogram_cap: int) -> None:
        if not isinstance(namespace, str) or not _NAMESPACE_RE.fullmatch(namespace):
            raise InputError(
                f"namespace={namespace!r} is not allowed; use letters, digits, '_', '.', '-'"
            )
        if (
            isinstance(histogram_cap, bool)
            or not isinstance(histogram_cap, int)
            or histogram_cap < 1
        ):
            raise InputError(f"histogram_cap={histogram_cap!r}; allowed: an int >= 1")
        self.namespace = namespace
        self.url = url
        self.histogram_cap = histogram_cap
        self._closed = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={redact_url(self.url)!r}, namespace={self.namespace!r})"

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailableError(
                f"state store {redact_url(self.url)} (namespace {self.namespace!r}) is closed; "
                "open a new one with open_store()"
            )

    # ---- device registry --------------------------------------------------------------------

    def register_device(self, device_id: str, info: dict, ttl_s: float = 30.0) -> None:
        """Record a live device with ``info``; it expires ``ttl_s`` seconds from now unless a
        :meth:`heartbeat` extends it. Registering again replaces the info and the deadline."""
        _check_name(device_id, "device_id")
        blob = _to_json(info, "info")
        ms = _ttl_ms(ttl_s)
        self._check_open()
        self._register_device(device_id, blob, ms)

    def heartbeat(self, device_id: str, ttl_s: float = 30.0) -> bool:
        """Push a live device's expiry to ``ttl_s`` seconds from now. False if it is unknown or
        has already expired (it must then register again)."""
        _check_name(device_id, "device_id")
        ms = _ttl_ms(ttl_s)
        self._check_open()
        return self._heartbeat(device_id, ms)

    def devices(self) -> dict[str, dict]:
        """The live devices, ``{device_id: info}``; expired ones are left out (and forgotten)."""
        self._check_open()
        return {k: json.loads(v) for k, v in self._devices().items()}

    def remove_device(self, device_id: str) -> None:
        """Forget a device; removing an unknown one does nothing."""
        _check_name(device_id, "device_id")
        self._check_open()
        self._remove_device(device_id)

    # ---- plans --------------------------------------------------------------------------------

    def put_plan(self, plan: dict, *, name: str = "default") -> int:
        """Store a new version of plan ``name``; returns its version: 1, 2, 3, ... Versions are
        unique and increasing under concurrent writers (atomic increment-and-store)."""
        _check_name(name, "name")
        blob = _to_json(plan, "plan")
        self._check_open()
        return self._put_plan(name, blob)

    def get_plan(
        self, version: int | None = None, *, name: str = "default"
    ) -> tuple[int, dict] | None:
        """``(version, plan)`` for ``version``, or the latest when ``version`` is None;
        None when there is no such version."""
        _check_name(name, "name")
        if version is not None and (
            isinstance(version, bool) or not isinstance(version, int) or version < 1
        ):
            raise InputError(f"version={version!r}; allowed: None (latest) or an int >= 1")
        self._check_open()
        found = self._get_plan(name, version)
        if found is None:
            return None
        return found[0], json.loads(found[1])

    def plan_versions(self, *, name: str = "default") -> list[int]:
        """Every stored version of plan ``name``, ascending."""
        _check_name(name, "name")
        self._check_open()
        return sorted(self._plan_versions(name))

    # ---- request journal ------------------------------------------------------------------------

    def journal_append(self, request_id: str, payload: dict) -> None:
        """Journal a request before it is dispatched. An id already in the journal, acknowledged
        or not, raises InputError and leaves the existing entry untouched."""
        _check_name(request_id, "request_id")
        blob = f'{{"payload":{_to_json(payload, "payload")},"appended_at":{time.time()!r}}}'
        self._check_open()
        if not self._journal_append(request_id, blob):
            raise InputError(
                f"request_id {request_id!r} is already in the journal; request ids must be unique "
                "(use a fresh id, e.g. a uuid4)"
            )

    def journal_ack(self, request_id: str) -> bool:
        """Mark a journaled request done. True for the one call that acknowledges it; False if
        the id is unknown or was already acknowledged (so two racing acks cannot both win)."""
        _check_name(request_id, "request_id")
        self._check_open()
        return self._journal_ack(request_id)

    def journal_unacked(self) -> list[tuple[str, dict]]:
        """The requests appended but not acknowledged, ``[(request_id, payload)]``, in append
        order."""
        self._check_open()
        return [(rid, json.loads(blob)["payload"]) for rid, blob in self._journal_unacked()]

    def journal_get(self, request_id: str) -> dict | None:
        """``{"payload": dict, "acked": bool, "appended_at": float}`` (Unix time), or None."""
        _check_name(request_id, "request_id")
        self._check_open()
        found = self._journal_get(request_id)
        if found is None:
            return None
        blob, acked = found
        entry = json.loads(blob)
        return {"payload": entry["payload"], "acked": acked, "appended_at": entry["appended_at"]}

    # ---- metrics ------------------------------------------------------------------------------

    def incr(self, name: str, by: float = 1) -> float:
        """Add ``by`` to counter ``name`` (created at 0) and return the new value, atomically.
        The addition is one IEEE double addition on both back ends."""
        _check_name(name, "name")
        amount = _check_number(by, "by")
        self._check_open()
        return self._incr(name, amount)

    def counter(self, name: str) -> float:
        """The value of counter ``name``; 0.0 if it was never incremented."""
        _check_name(name, "name")
        self._check_open()
        return self._counters(name).get(name, 0.0)

    def counters(self) -> dict[str, float]:
        """Every counter, ``{name: value}``."""
        self._check_open()
        return self._counters(None)

    def observe(self, name: str, value: float) -> None:
        """Record one observation of histogram ``name`` (see :class:`HistogramSummary`)."""
        _check_name(name, "name")
        amount = _check_number(value, "value")
        self._check_open()
        self._observe(name, amount)

    def histogram(self, name: str) -> HistogramSummary:
        """The summary of histogram ``name``; ``count == 0`` if it has no observations."""
        _check_name(name, "name")
        self._check_open()
        return self._histogram(name)

    # ---- lifecycle ----------------------------------------------------------------------------

    def ping(self) -> None:
        """Raise StoreUnavailableError (naming the URL, password removed) if the store is
        unreachable or closed."""
        self._check_open()
        self._ping()

    def close(self) -> None:
        """Release connections; later calls raise StoreUnavailableError. Idempotent. The data
        stays in Redis; a MemoryStore's data goes with the object."""
        if not self._closed:
            self._closed = True
            self._close()

    def clear(self) -> None:
        """Delete everything in this namespace (other namespaces are untouched)."""
        self._check_open()
        self._clear()

    # ---- what a back end provides (arguments already validated, values already JSON) ---------

    @abc.abstractmethod
    def _register_device(self, device_id: str, blob: str, ttl_ms: int) -> None: ...

    @abc.abstractmethod
    def _heartbeat(self, device_id: str, ttl_ms: int) -> bool: ...

    @abc.abstractmethod
    def _devices(self) -> dict[str, str]: ...

    @abc.abstractmethod
    def _remove_device(self, device_id: str) -> None: ...

    @abc.abstractmethod
    def _put_plan(self, name: str, blob: str) -> int: ...

    @abc.abstractmethod
    def _get_plan(self, name: str, version: int | None) -> tuple[int, str] | None: ...

    @abc.abstractmethod
    def _plan_versions(self, name: str) -> list[int]: ...

    @abc.abstractmethod
    def _journal_append(self, request_id: str, blob: str) -> bool: ...

    @abc.abstractmethod
    def _journal_ack(self, request_id: str) -> bool: ...

    @abc.abstractmethod
    def _journal_unacked(self) -> list[tuple[str, str]]: ...

    @abc.abstractmethod
    def _journal_get(self, request_id: str) -> tuple[str, bool] | None: ...

    @abc.abstractmethod
    def _incr(self, name: str, by: float) -> float: ...

    @abc.abstractmethod
    def _counters(self, name: str | None) -> dict[str, float]: ...

    @abc.abstractmethod
    def _observe(self, name: str, value: float) -> None: ...

    @abc.abstractmethod
    def _histogram(self, name: str) -> HistogramSummary: ...

    @abc.abstractmethod
    def _ping(self) -> None: ...

    @abc.abstractmethod
    def _close(self) -> None: ...

    @abc.abstractmethod
    def _clear(self) -> None: ...


# --------------------------------------------------------------------------------------------
# In-process back end
# --------------------------------------------------------------------------------------------


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
        self._journal: dict[str, str] = {}
        self._pending: dict[str, None] = {}  # an insertion-ordered set
        self._counter_values: dict[str, float] = {}
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

    def _put_plan(self, name: str, blob: str) -> int:
        with self._lock:
            version = self._plan_seq.get(name, 0) + 1
            self._plan_seq[name] = version
            self._plans.setdefault(name, {})[version] = blob
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

    def _journal_append(self, request_id: str, blob: str) -> bool:
        with self._lock:
            if request_id in self._journal:
                return False
            self._journal[request_id] = blob
            self._pending[request_id] = None
            return True

    def _journal_ack(self, request_id: str) -> bool:
        with self._lock:
            if request_id not in self._pending:
                return False
            del self._pending[request_id]
            return True

    def _journal_unacked(self) -> list[tuple[str, str]]:
        with self._lock:
            return [(rid, self._journal[rid]) for rid in self._pending]

    def _journal_get(self, request_id: str) -> tuple[str, bool] | None:
        with self._lock:
            blob = self._journal.get(request_id)
            return None if blob is None else (blob, request_id not in self._pending)

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

_LUA_DEVICES = """
local ids = redis.call('SMEMBERS', KEYS[1])
local out = {}
for _, id in ipairs(ids) do
  local blob = redis.call('GET', ARGV[1] .. id)
  if blob then
    out[#out + 1] = id
    out[#out + 1] = blob
  else
    redis.call('SREM', KEYS[1], id)
  end
end
return out
"""

_LUA_PUT_PLAN = """
local v = redis.call('INCR', KEYS[1])
redis.call('HSET', KEYS[2], tostring(v), ARGV[1])
return v
"""

_LUA_LATEST_PLAN = """
local v = redis.call('GET', KEYS[1])
if not v then return false end
local blob = redis.call('HGET', KEYS[2], v)
if not blob then return false end
return {v, blob}
"""

_LUA_JOURNAL_APPEND = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
local seq = redis.call('INCR', KEYS[3])
redis.call('ZADD', KEYS[2], seq, ARGV[1])
return 1
"""

_LUA_JOURNAL_UNACKED = """
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
local out = {}
for i, id in ipairs(ids) do
  out[2 * i - 1] = id
  out[2 * i] = redis.call('HGET', KEYS[2], id)
end
return out
"""

_LUA_INCR = """
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local new = string.format('%.17g', cur + tonumber(ARGV[2]))
redis.call('HSET', KEYS[1], ARGV[1], new)
return new
"""

_LUA_OBSERVE = """
local s = ARGV[1]
local v = tonumber(s)
local agg = redis.call('HMGET', KEYS[1], 'count', 'sum', 'min', 'max')
local count = tonumber(agg[1] or '0') + 1
local total = tonumber(agg[2] or '0') + v
local lo, hi = s, s
if agg[3] and tonumber(agg[3]) <= v then lo = agg[3] end
if agg[4] and tonumber(agg[4]) >= v then hi = agg[4] end
redis.call('HSET', KEYS[1], 'count', string.format('%d', count),
           'sum', string.format('%.17g', total), 'min', lo, 'max', hi)
redis.call('LPUSH', KEYS[2], s)
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[2]) - 1)
return count
"""


def _parse_redis_url(url: str) -> None:
    """Check a ``redis://`` or ``rediss://`` URL; InputError (password removed) if malformed.

    Form: ``redis[s]://[[user]:password@]host[:port][/db]`` with ``db`` a non-negative integer.
    """
    shown = redact_url(url)
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InputError(f"state store URL {shown} is malformed: {exc}") from None
    if not parts.hostname:
        raise InputError(f"state store URL {shown} has no host; e.g. redis://127.0.0.1:6379/0")
    if port == 0:
        raise InputError(f"state store URL {shown} has port 0; allowed: 1-65535")
    db = parts.path.lstrip("/")
    if db and not db.isdigit():
        raise InputError(f"state store URL {shown} names database {db!r}; allowed: an int >= 0")


class RedisStore(StateStore):
    """The state in a Redis server (>= 5), shared by every process that opens the same URL and
    namespace. Opening pings the server, so an unreachable one fails here, within about 2 s."""

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "default",
        histogram_cap: int = DEFAULT_HISTOGRAM_CAP,
    ) -> None:
        super().__init__(namespace, url, histogram_cap)
        _parse_redis_url(url)
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self._redis_errors = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
        self._client = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=_CONNECT_TIMEOUT_S,
            socket_timeout=_SOCKET_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),
        )
        self._prefix = f"flotilla:{namespace}:"
        reg = self._client.register_script
        self._lua_devices = reg(_LUA_DEVICES)
        self._lua_put_plan = reg(_LUA_PUT_PLAN)
        self._lua_latest_plan = reg(_LUA_LATEST_PLAN)
        self._lua_journal_append = reg(_LUA_JOURNAL_APPEND)
        self._lua_journal_unacked = reg(_LUA_JOURNAL_UNACKED)
        self._lua_incr = reg(_LUA_INCR)
        self._lua_observe = reg(_LUA_OBSERVE)
        try:
            self.ping()
        except StoreUnavailableError:
            self._client.close()
            raise

    def _k(self, *parts: str) -> str:
        return self._prefix + ":".join(parts)

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """Turn a lost or refused connection into StoreUnavailableError naming the URL."""
        try:
            yield
        except self._redis_errors as exc:
            raise StoreUnavailableError(
                f"cannot reach Redis at {redact_url(self.url)} ({exc}); is the server running "
                "and the URL right? (start one with `redis-server`, or leave the URL out to use "
                "the in-memory store)"
            ) from exc

    def _register_device(self, device_id: str, blob: str, ttl_ms: int) -> None:
        with self._guard():
            pipe = self._client.pipeline(transaction=True)
            pipe.set(self._k("device", device_id), blob, px=ttl_ms)
            pipe.sadd(self._k("devices"), device_id)
            pipe.execute()

    def _heartbeat(self, device_id: str, ttl_ms: int) -> bool:
        with self._guard():
            return bool(self._client.pexpire(self._k("device", device_id), ttl_ms))

    def _devices(self) -> dict[str, str]:
        with self._guard():
            flat = self._lua_devices(keys=[self._k("devices")], args=[self._k("device", "")])
        return dict(zip(flat[::2], flat[1::2]))

    def _remove_device(self, device_id: str) -> None:
        with self._guard():
            pipe = self._client.pipeline(transaction=True)
            pipe.delete(self._k("device", device_id))
            pipe.srem(self._k("devices"), device_id)
            pipe.execute()

    def _put_plan(self, name: str, blob: str) -> int:
        with self._guard():
            keys = [self._k("planseq", name), self._k("plan", name)]
            return int(self._lua_put_plan(keys=keys, args=[blob]))

    def _get_plan(self, name: str, version: int | None) -> tuple[int, str] | None:
        with self._guard():
            if version is None:
                keys = [self._k("planseq", name), self._k("plan", name)]
                found = self._lua_latest_plan(keys=keys)
                return None if not found else (int(found[0]), found[1])
            blob = self._client.hget(self._k("plan", name), str(version))
        return None if blob is None else (version, blob)

    def _plan_versions(self, name: str) -> list[int]:
        with self._guard():
            return [int(v) for v in self._client.hkeys(self._k("plan", name))]

    def _journal_append(self, request_id: str, blob: str) -> bool:
        with self._guard():
            keys = [self._k("journal"), self._k("journal", "pending"), self._k("journal", "seq")]
            return bool(self._lua_journal_append(keys=keys, args=[request_id, blob]))

    def _journal_ack(self, request_id: str) -> bool:
        with self._guard():
            return bool(self._client.zrem(self._k("journal", "pending"), request_id))

    def _journal_unacked(self) -> list[tuple[str, str]]:
        with self._guard():
            flat = self._lua_journal_unacked(
                keys=[self._k("journal", "pending"), self._k("journal")]
            )
        return list(zip(flat[::2], flat[1::2]))

    def _journal_get(self, request_id: str) -> tuple[str, bool] | None:
        with self._guard():
            pipe = self._client.pipeline(transaction=True)
            pipe.hget(self._k("journal"), request_id)
            pipe.zscore(self._k("journal", "pending"), request_id)
            blob, score = pipe.execute()
        return None if blob is None else (blob, score is None)

    def _incr(self, name: str, by: float) -> float:
        with self._guard():
            return float(self._lua_incr(keys=[self._k("counters")], args=[name, repr(by)]))

    def _counters(self, name: str | None) -> dict[str, float]:
        with self._guard():
            if name is None:
                return {k: float(v) for k, v in self._client.hgetall(self._k("counters")).items()}
            value = self._client.hget(self._k("counters"), name)
        return {} if value is None else {name: float(value)}

    def _observe(self, name: str, value: float) -> None:
        with self._guard():
            keys = [self._k("hist", name), self._k("histsamples", name)]
            self._lua_observe(keys=keys, args=[repr(value), self.histogram_cap])

    def _histogram(self, name: str) -> HistogramSummary:
        with self._guard():
            pipe = self._client.pipeline(transaction=True)
            pipe.hmget(self._k("hist", name), ["count", "sum", "min", "max"])
            pipe.lrange(self._k("histsamples", name), 0, -1)
            (count, total, lo, hi), samples = pipe.execute()
        if count is None:
            return HistogramSummary.from_parts(0, 0.0, None, None, [])
        return HistogramSummary.from_parts(
            int(count), float(total), float(lo), float(hi), [float(s) for s in samples]
        )

    def _ping(self) -> None:
        with self._guard():
            self._client.ping()

    def _close(self) -> None:
        self._client.close()

    def _clear(self) -> None:
        with self._guard():
            batch: list[str] = []
            for key in self._client.scan_iter(match=self._prefix + "*", count=500):
                batch.append(key)
                if len(batch) >= 500:
                    self._client.delete(*batch)
                    batch.clear()
            if batch:
                self._client.delete(*batch)


# --------------------------------------------------------------------------------------------
# Opening a store
# --------------------------------------------------------------------------------------------


def open_store(url: str | None = None, *, namespace: str = "default") -> StateStore:
    """Open the state store at ``url``.

    ``None`` or ``"memory://"``: a new in-process :class:`MemoryStore`.
    ``redis://[[user]:password@]host[:port][/db]`` or ``rediss://...`` (TLS): a
    :class:`RedisStore`, pinged before it is returned (StoreUnavailableError if unreachable).
    Any other scheme raises InputError naming the allowed ones.
    """
    if url is None:
        return MemoryStore(namespace)
    if not isinstance(url, str):
        raise InputError(f"state store URL must be a string; got {type(url).__name__}")
    scheme, sep, _ = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        head = urllib.parse.urlsplit(url).scheme.lower() if ":" in url else ""
        hint = f" (did you mean {head}://...?)" if head in ALLOWED_SCHEMES else ""
        raise InputError(
            f"state store URL {redact_url(url)!r} is not of the form scheme://...{hint}; allowed: "
            f"{', '.join(f'{s}://' for s in ALLOWED_SCHEMES)} (or no URL for the in-memory store)"
        )
    if scheme == "memory":
        if url.lower() != "memory://":
            raise InputError(
                f"state store URL {url!r}: the memory store takes no address; use 'memory://'"
            )
        return MemoryStore(namespace)
    if scheme in ("redis", "rediss"):
        return RedisStore(url, namespace=namespace)
    allowed = ", ".join(f"{s}://" for s in ALLOWED_SCHEMES)
    hint = did_you_mean(scheme, ALLOWED_SCHEMES)
    raise InputError(
        f"state store URL {redact_url(url)!r} has scheme {scheme!r}{hint}; "
        f"allowed: {allowed} (or no URL for the in-memory store)"
    )
