"""The request journal's half of the state store interface: its states and their semantics.

A request id moves through: appended (pending, owned by one router) -> completed (its result
stored with a TTL; the payload, prompt included, is dropped) or acknowledged without a result
(failed or abandoned: the entry is removed and the id is free again). The entry keeps a
fingerprint of the request (a hash of prompt, parameters and caller), so a retry with the same id
is told apart from a different request that reuses it. A router holds a lease while it lives;
the pending entries of a router without one are orphans, which another router claims.

:class:`JournalStore` validates and encodes, then calls the back end's ``_``-methods;
:class:`~cluster.state.base.StateStore` is a JournalStore with the rest of the store.
"""

from __future__ import annotations

import abc
import json
import time

from cluster.exceptions import InputError, RequestIdInUseError
from cluster.state.values import _check_name, _to_json, _ttl_ms


class JournalStore(abc.ABC):
    """The request journal and the routers' leases (see the module docstring)."""

    @abc.abstractmethod
    def _check_open(self) -> None:
        """Raise StoreUnavailableError when the store is closed."""

    def journal_append(self, request_id: str, payload: dict, *, fingerprint: str = "", owner: str = "",
                       count: str | None = None) -> None:
        """Journal a request before it is dispatched, owned by router ``owner``. An id that is
        pending or has a stored result raises :class:`~cluster.exceptions.RequestIdInUseError`
        (with ``same`` telling whether its fingerprint matches and ``result`` the stored result,
        if any) and leaves the existing entry untouched. ``count``: a counter incremented by one
        in the same atomic step when the entry is appended (never when the id is in use)."""
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

    # ---- what a back end provides (arguments already validated, values already JSON) ---------

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
