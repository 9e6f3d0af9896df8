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
``journal``                    hash    pending request id -> ``{"payload", "fingerprint",
                                       "owner", "appended_at"}`` JSON
``journal:pending``            zset    pending request ids, scored by append sequence
``journal:seq``                string  the append sequence (``INCR``)
``journal:owner``              hash    pending request id -> the router that owns it
``result:{id}``                string  a completed request: ``{"fingerprint", "owner",
                                       "appended_at", "result"}`` JSON, with a TTL (``PX``)
``lease:{owner}``              string  a router's lease, with a TTL (``PX``)
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

import urllib.parse

from cluster.exceptions import InputError, did_you_mean
from cluster.state.base import ALLOWED_SCHEMES, StateStore
from cluster.state.values import DEFAULT_HISTOGRAM_CAP, HistogramSummary, percentile_nearest_rank, redact_url
from cluster.state.memory_store import MemoryStore
from cluster.state.redis_store import RedisStore

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
