"""The state store's interface: devices, plans, metrics and the store's life; the request
journal's half is :mod:`cluster.state.journal`, the value objects and pure helpers
:mod:`cluster.state.values`.

See :mod:`cluster.state` for the contract; back ends are in ``memory_store`` and ``redis_store``.
"""

from __future__ import annotations

import abc
import json
import re

from cluster.exceptions import InputError, StoreUnavailableError
from cluster.state.journal import JournalStore
from cluster.state.values import HistogramSummary, _check_name, _check_number, _to_json, _ttl_ms, redact_url

PLAN_VERSIONS_KEPT = 50
"""How many versions of each plan :meth:`StateStore.put_plan` keeps."""

ALLOWED_SCHEMES = ("memory", "redis", "rediss")
_NAMESPACE_RE = re.compile(r"[A-Za-z0-9_.\-]+")
_CONNECT_TIMEOUT_S = 2.0
_SOCKET_TIMEOUT_S = 10.0


# --------------------------------------------------------------------------------------------
# The interface
# --------------------------------------------------------------------------------------------


class StateStore(JournalStore):
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

    def incr_windowed(self, bucket: str, field: str, by: float = 1, *, ttl_s: float) -> float:
        """Add ``by`` to ``field`` of the expiring counter group ``bucket`` (a time window's
        counters, created at 0) and return the new value, atomically. The whole bucket expires
        ``ttl_s`` seconds after its last increment, so buckets of past windows leave the store by
        themselves. Windowed buckets are apart from :meth:`counters`."""
        _check_name(bucket, "bucket")
        _check_name(field, "field")
        amount = _check_number(by, "by")
        ttl_ms = _ttl_ms(ttl_s)
        self._check_open()
        return self._incr_windowed(bucket, field, amount, ttl_ms)

    def windowed(self, buckets: list[str]) -> dict[str, dict[str, float]]:
        """``{bucket: {field: value}}`` of the named windowed buckets that still exist (an expired
        or never-written bucket is left out)."""
        names = [_check_name(b, "buckets[]") for b in buckets]
        self._check_open()
        return self._windowed(names) if names else {}

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
    def _incr(self, name: str, by: float) -> float: ...

    @abc.abstractmethod
    def _counters(self, name: str | None) -> dict[str, float]: ...

    @abc.abstractmethod
    def _incr_windowed(self, bucket: str, field: str, by: float, ttl_ms: int) -> float: ...

    @abc.abstractmethod
    def _windowed(self, buckets: list[str]) -> dict[str, dict[str, float]]: ...

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
