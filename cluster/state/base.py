"""The state store's interface and its pure helpers (validation, histogram summaries, URLs).

See :mod:`cluster.state` for the contract; back ends are in ``memory_store`` and ``redis_store``.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import math
import re
import time
import urllib.parse
from fractions import Fraction

from cluster.exceptions import InputError, RequestIdInUseError, StoreUnavailableError
from solvers import validate

DEFAULT_HISTOGRAM_CAP = 10_000
"""How many of its newest samples a histogram keeps for percentiles."""

PLAN_VERSIONS_KEPT = 50
"""How many versions of each plan :meth:`StateStore.put_plan` keeps."""

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
    return validate.name(field, value)


def _check_number(value: object, field: str) -> float:
    """A finite real number (bools refused), as a float."""
    return validate.real(field, value)


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
    return json.dumps(value, allow_nan=False, separators=(",", ":"), ensure_ascii=False)


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

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

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

    def put_plan(self, plan: dict, *, name: str = "default", keep: int = PLAN_VERSIONS_KEPT) -> int:
        """Store a new version of plan ``name``; returns its version: 1, 2, 3, ... Versions are
        unique and increasing under concurrent writers (atomic increment-and-store). Only the
        newest ``keep`` versions are kept (older ones are deleted in the same atomic step);
        version numbers are never reused."""
        _check_name(name, "name")
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise InputError(f"keep: {keep!r}; allowed: an integer >= 1")
        blob = _to_json(plan, "plan")
        self._check_open()
        return self._put_plan(name, blob, keep)

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
    #
    # A request id moves through: appended (pending, owned by one router) -> completed (its
    # result stored with a TTL; the payload, prompt included, is dropped) or acknowledged
    # without a result (failed or abandoned: the entry is removed and the id is free again).
    # The entry keeps a fingerprint of the request (a hash of prompt, parameters and caller), so
    # a retry with the same id is told apart from a different request that reuses it.

    def journal_append(self, request_id: str, payload: dict, *, fingerprint: str = "", owner: str = "",
                       count: str | None = None) -> None:
        """Journal a request before it is dispatched, owned by router ``owner``. An id that is
        pending or has a stored result raises :class:`~cluster.exceptions.RequestIdInUseError`
        (with ``same`` telling whether its fingerprint matches and ``result`` the stored result,
        if any) and leaves the existing entry untouched. ``count``: a counter incremented by one
        in the same atomic step when the entry is appended (never when the id is in use), so a
        router records its load window in the same round trip."""
        _check_name(request_id, "request_id")
        if count is not None:
            _check_name(count, "count")
        entry = {"fingerprint": str(fingerprint), "owner": str(owner), "appended_at": time.time()}
        blob = f'{{"payload":{_to_json(payload, "payload")},{json.dumps(entry)[1:]}'
        self._check_open()
        existing = self._journal_append(request_id, blob, count)
        if existing is not None:
            old = json.loads(existing[0])
            same = old.get("fingerprint", "") == str(fingerprint)
            raise RequestIdInUseError(request_id, same=same, result=old.get("result") if same and existing[1] else None)

    def journal_complete(self, request_id: str, result: dict, *, ttl_s: float = 86_400.0,
                         count: tuple[str, str] | None = None) -> bool:
        """Store a request's final ``result`` for ``ttl_s`` seconds and drop its payload, as one
        atomic step; from then on it is not pending (never replayed) and a retry with the same id
        and fingerprint gets ``result``. True for the call that completed it; False if the id was
        not pending (unknown, already completed or acknowledged: nothing is stored then).
        ``count``: ``(if_stored, if_not)``, counters of which the one matching the outcome is
        incremented by one in the same atomic step."""
        _check_name(request_id, "request_id")
        if count is not None:
            if not isinstance(count, tuple) or len(count) != 2:
                raise InputError(f"count: expected (if_stored, if_not) counter names, got {count!r:.80}")
            _check_name(count[0], "count")
            _check_name(count[1], "count")
        ttl_ms = _ttl_ms(ttl_s)
        result_json = _to_json(result, "result")
        self._check_open()
        return self._journal_complete(request_id, result_json, ttl_ms, count)

    def journal_ack(self, request_id: str) -> bool:
        """Remove a pending request without a result (it failed or was abandoned); its id is
        free again. True for the one call that removes it; False if the id is not pending (so
        two racing acks cannot both win)."""
        _check_name(request_id, "request_id")
        self._check_open()
        return self._journal_ack(request_id)

    def journal_unacked(self) -> list[tuple[str, dict]]:
        """The pending requests, ``[(request_id, payload)]``, in append order."""
        self._check_open()
        return [(rid, json.loads(blob)["payload"]) for rid, blob in self._journal_unacked()]

    def journal_claim_orphans(self, owner: str) -> list[tuple[str, dict]]:
        """Take over, atomically, every pending request whose owner holds no live lease (see
        :meth:`lease`): each becomes ``owner``'s and is returned, ``[(request_id, payload)]`` in
        append order. Requests of a live router are left alone, so two routers on one store never
        run the same entry."""
        _check_name(owner, "owner")
        self._check_open()
        return [(rid, json.loads(blob)["payload"]) for rid, blob in self._journal_claim_orphans(owner)]

    def lease(self, owner: str, ttl_s: float) -> None:
        """Hold (or renew) router ``owner``'s lease for ``ttl_s`` seconds."""
        _check_name(owner, "owner")
        ttl_ms = _ttl_ms(ttl_s)
        self._check_open()
        self._lease(owner, ttl_ms)

    def release_lease(self, owner: str) -> None:
        """Drop ``owner``'s lease now (its pending requests become orphans at once)."""
        _check_name(owner, "owner")
        self._check_open()
        self._release_lease(owner)

    def journal_get(self, request_id: str) -> dict | None:
        """``{"payload": dict | None, "acked": bool, "appended_at": float, "fingerprint": str,
        "owner": str, "result": dict | None}``, or None when the id is unknown (never appended,
        acknowledged without a result, or its result expired). A completed entry has
        ``acked: True``, its ``result`` and no payload."""
        _check_name(request_id, "request_id")
        self._check_open()
        found = self._journal_get(request_id)
        if found is None:
            return None
        blob, acked = found
        entry = json.loads(blob)
        return {"payload": entry.get("payload"), "acked": acked, "appended_at": entry["appended_at"],
                "fingerprint": entry.get("fingerprint", ""), "owner": entry.get("owner", ""),
                "result": entry.get("result")}

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
    def _put_plan(self, name: str, blob: str, keep: int) -> int: ...

    @abc.abstractmethod
    def _get_plan(self, name: str, version: int | None) -> tuple[int, str] | None: ...

    @abc.abstractmethod
    def _plan_versions(self, name: str) -> list[int]: ...

    @abc.abstractmethod
    def _journal_append(self, request_id: str, blob: str, count: str | None = None) -> tuple[str, bool] | None:
        """None when appended; else the existing entry's ``(blob, completed)``."""

    @abc.abstractmethod
    def _journal_complete(self, request_id: str, result_json: str, ttl_ms: int,
                          count: tuple[str, str] | None = None) -> bool: ...

    @abc.abstractmethod
    def _journal_claim_orphans(self, owner: str) -> list[tuple[str, str]]: ...

    @abc.abstractmethod
    def _lease(self, owner: str, ttl_ms: int) -> None: ...

    @abc.abstractmethod
    def _release_lease(self, owner: str) -> None: ...

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
