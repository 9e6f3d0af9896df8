"""The Redis state store: Lua scripts make the journal, plan versions and counters atomic."""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import Iterator

from cluster.exceptions import InputError, StoreUnavailableError
from cluster.state.base import _CONNECT_TIMEOUT_S, _SOCKET_TIMEOUT_S, StateStore
from cluster.state.values import DEFAULT_HISTOGRAM_CAP, HistogramSummary, redact_url

#: Connections one store opens at most; callers beyond it wait (up to the socket timeout) for one.
MAX_CONNECTIONS = 256

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
local oldest = v - tonumber(ARGV[2])
if oldest >= 1 and redis.call('HLEN', KEYS[2]) > tonumber(ARGV[2]) then
  for _, k in ipairs(redis.call('HKEYS', KEYS[2])) do
    if tonumber(k) <= oldest then redis.call('HDEL', KEYS[2], k) end
  end
end
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
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then return {cur, 0} end
local done = redis.call('GET', KEYS[4])
if done then return {done, 1} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[5], ARGV[1], ARGV[3])
local seq = redis.call('INCR', KEYS[3])
redis.call('ZADD', KEYS[2], seq, ARGV[1])
if ARGV[4] ~= '' then
  local c = tonumber(redis.call('HGET', KEYS[6], ARGV[4]) or '0')
  redis.call('HSET', KEYS[6], ARGV[4], string.format('%.17g', c + 1))
end
return false
"""

# The stored result is spliced as text (never re-encoded by cjson, whose %.14g would round
# floats and large integers); only the entry's small fields are decoded.
_LUA_JOURNAL_COMPLETE = """
local function count(name)
  if name ~= '' then
    local c = tonumber(redis.call('HGET', KEYS[5], name) or '0')
    redis.call('HSET', KEYS[5], name, string.format('%.17g', c + 1))
  end
end
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then
  count(ARGV[5])
  return 0
end
local e = cjson.decode(cur)
local done = '{"fingerprint":' .. cjson.encode(e.fingerprint or '') ..
  ',"owner":' .. cjson.encode(redis.call('HGET', KEYS[4], ARGV[1]) or '') ..
  ',"appended_at":' .. string.format('%.17g', e.appended_at) .. ',"result":' .. ARGV[2] .. '}'
redis.call('SET', KEYS[3], done, 'PX', ARGV[3])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
count(ARGV[4])
return 1
"""

_LUA_JOURNAL_ACK = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
"""

# Owners live in their own hash, so a claim rewrites one small field, never the payload.
_LUA_JOURNAL_CLAIM = """
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
local out = {}
for _, id in ipairs(ids) do
  local holder = redis.call('HGET', KEYS[3], id) or ''
  if holder == ARGV[1] or holder == '' or redis.call('EXISTS', ARGV[2] .. holder) == 0 then
    redis.call('HSET', KEYS[3], id, ARGV[1])
    out[#out + 1] = id
    out[#out + 1] = redis.call('HGET', KEYS[2], id)
  end
end
return out
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

_LUA_INCR_WINDOWED = """
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local new = string.format('%.17g', cur + tonumber(ARGV[2]))
redis.call('HSET', KEYS[1], ARGV[1], new)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
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
        # A bounded pool that waits for a free connection: redis-py 7+ caps a plain pool at 100
        # connections and fails the 101st call at once, while a gateway runs hundreds of threads.
        pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=_SOCKET_TIMEOUT_S,
            decode_responses=True,
            socket_connect_timeout=_CONNECT_TIMEOUT_S,
            socket_timeout=_SOCKET_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),
        )
        self._client = redis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))
        self._client.auto_close_connection_pool = True
        self._prefix = f"flotilla:{namespace}:"
        reg = self._client.register_script
        self._lua_devices = reg(_LUA_DEVICES)
        self._lua_put_plan = reg(_LUA_PUT_PLAN)
        self._lua_latest_plan = reg(_LUA_LATEST_PLAN)
        self._lua_journal_append = reg(_LUA_JOURNAL_APPEND)
        self._lua_journal_unacked = reg(_LUA_JOURNAL_UNACKED)
        self._lua_journal_complete = reg(_LUA_JOURNAL_COMPLETE)
        self._lua_journal_ack = reg(_LUA_JOURNAL_ACK)
        self._lua_journal_claim = reg(_LUA_JOURNAL_CLAIM)
        self._lua_incr = reg(_LUA_INCR)
        self._lua_observe = reg(_LUA_OBSERVE)
        self._lua_incr_windowed = reg(_LUA_INCR_WINDOWED)
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

    def _put_plan(self, name: str, blob: str, keep: int) -> int:
        with self._guard():
            keys = [self._k("planseq", name), self._k("plan", name)]
            return int(self._lua_put_plan(keys=keys, args=[blob, keep]))

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

    def _journal_keys(self) -> tuple[str, str, str, str]:
        return self._k("journal"), self._k("journal", "pending"), self._k("journal", "seq"), self._k("journal", "owner")

    def _journal_append(self, request_id: str, blob: str, count: str | None = None) -> tuple[str, bool] | None:
        import json

        journal, pending, seq, owners = self._journal_keys()
        owner = json.loads(blob).get("owner", "")
        with self._guard():
            got = self._lua_journal_append(
                keys=[journal, pending, seq, self._k("result", request_id), owners, self._k("counters")],
                args=[request_id, blob, owner, count or ""])
        return None if got is None else (got[0], bool(got[1]))

    def _journal_complete(self, request_id: str, result_json: str, ttl_ms: int,
                          count: tuple[str, str] | None = None) -> bool:
        journal, pending, _, owners = self._journal_keys()
        stored, not_stored = count or ("", "")
        with self._guard():
            return bool(self._lua_journal_complete(
                keys=[journal, pending, self._k("result", request_id), owners, self._k("counters")],
                args=[request_id, result_json, ttl_ms, stored, not_stored]))

    def _journal_ack(self, request_id: str) -> bool:
        journal, pending, _, owners = self._journal_keys()
        with self._guard():
            return bool(self._lua_journal_ack(keys=[pending, journal, owners], args=[request_id]))

    def _journal_unacked(self) -> list[tuple[str, str]]:
        with self._guard():
            flat = self._lua_journal_unacked(
                keys=[self._k("journal", "pending"), self._k("journal")]
            )
        return list(zip(flat[::2], flat[1::2]))

    def _journal_claim_orphans(self, owner: str) -> list[tuple[str, str]]:
        journal, pending, _, owners = self._journal_keys()
        with self._guard():
            flat = self._lua_journal_claim(keys=[pending, journal, owners], args=[owner, self._k("lease", "")])
        return [(rid, self._with_owner(blob, owner)) for rid, blob in zip(flat[::2], flat[1::2])]

    def _lease(self, owner: str, ttl_ms: int) -> None:
        with self._guard():
            self._client.set(self._k("lease", owner), "1", px=ttl_ms)

    def _release_lease(self, owner: str) -> None:
        with self._guard():
            self._client.delete(self._k("lease", owner))

    @staticmethod
    def _with_owner(blob: str, owner: str) -> str:
        import json

        entry = json.loads(blob)
        entry["owner"] = owner
        return json.dumps(entry)

    def _journal_get(self, request_id: str) -> tuple[str, bool] | None:
        journal, _, _, owners = self._journal_keys()
        with self._guard():
            pipe = self._client.pipeline(transaction=True)
            pipe.hget(journal, request_id)
            pipe.hget(owners, request_id)
            pipe.get(self._k("result", request_id))
            blob, owner, done = pipe.execute()
        if blob is not None:
            return self._with_owner(blob, owner or ""), False
        return None if done is None else (done, True)

    def _incr(self, name: str, by: float) -> float:
        with self._guard():
            return float(self._lua_incr(keys=[self._k("counters")], args=[name, repr(by)]))

    def _counters(self, name: str | None) -> dict[str, float]:
        with self._guard():
            if name is None:
                return {k: float(v) for k, v in self._client.hgetall(self._k("counters")).items()}
            value = self._client.hget(self._k("counters"), name)
        return {} if value is None else {name: float(value)}

    def _incr_windowed(self, bucket: str, field: str, by: float, ttl_ms: int) -> float:
        with self._guard():
            return float(self._lua_incr_windowed(keys=[self._k("window", bucket)], args=[field, repr(by), ttl_ms]))

    def _windowed(self, buckets: list[str]) -> dict[str, dict[str, float]]:
        with self._guard():
            pipe = self._client.pipeline(transaction=False)
            for b in buckets:
                pipe.hgetall(self._k("window", b))
            got = pipe.execute()
        return {b: {k: float(v) for k, v in h.items()} for b, h in zip(buckets, got) if h}

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


