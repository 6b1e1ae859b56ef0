"""Budget counters in Redis, shared by every worker and instance (the ``Counters`` of ``sluice.limits``).

- **One Lua script reserves every scope** of a request: it checks each counter's ``spent + reserved +
  amount <= limit`` and only then adds the amounts, all inside Redis, so no two instances interleave.
  It also records the reservation (``sluice:h:<id>``, listed in ``sluice:holds`` by deadline).
- **Settlement** runs a second script, pipelined from a background task: the reservation record says
  which counters to release, the actual cost and tokens are added to ``spent``, the record is deleted.
- **A reservation whose request died** with its instance is settled by the reaper (any instance, every
  few seconds) at its reserved amount once its deadline passed — the same rule, at the same time, as
  the ledger's reconciler, so counter and ledger agree. Never dropped.
- **Lost counters** (Redis restarted, it keeps nothing on disk): the scripts see ``sluice:epoch`` gone and
  refuse; one instance (under a lock) rebuilds every counter from the ledger in PostgreSQL, then sets a
  new epoch. Requests in flight then count at their reservation (they may come in a little high until
  the next rebuild; never low).
- **Unreachable Redis**: a capped request gets 503 ``counters_unavailable`` with ``retry-after``; it is
  never admitted unchecked. Requests with no limit do not touch Redis.
- **One clock**: periods are decided by Redis's clock (``TIME``), read every few seconds; each instance
  dates requests by it, so a request belongs to the same day on every instance and in the ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
from redis.exceptions import RedisError

from sluice.aio import cancel_and_wait
from sluice.errors import CountersUnavailable
from sluice.limits.counters import CounterKey, Hold, Loaded, Need, Room, refusal
from sluice.limits.spec import CONCURRENT, MINUTE, REQUESTS, TOKENS, USD, Calendar, Scope, windows_at
from sluice.store.redis_pool import bounded_client

log = logging.getLogger("sluice.limits")

PREFIX = "sluice:c:"
EPOCH = "sluice:epoch"
HOLDS = "sluice:holds"
LOCK = "sluice:rebuild"
_DAY_MS = 86_400_000

# KEYS: the counters. ARGV: hold id, hold deadline (ms), record ttl (ms), record (JSON), then per counter
# its limit, amount and expiry (unix ms, 0 = none). Returns {0, used...} when reserved (each counter's
# use before this request), {i, used} when counter i is full, {-1} when the counters were lost, {-2}
# when this reservation was already made (a retried call).
_RESERVE = """
if redis.call('EXISTS', 'sluice:epoch') == 0 then return {-1, 0} end
if redis.call('EXISTS', 'sluice:h:' .. ARGV[1]) == 1 then return {-2, 0} end
local n = #KEYS
local out = {0}
for i = 1, n do
  local v = redis.call('HMGET', KEYS[i], 's', 'r')
  local used = (tonumber(v[1]) or 0) + (tonumber(v[2]) or 0)
  if used + tonumber(ARGV[3 + 3 * i]) > tonumber(ARGV[2 + 3 * i]) then return {i, used} end
  out[i + 1] = used
end
for i = 1, n do
  redis.call('HINCRBY', KEYS[i], 'r', ARGV[3 + 3 * i])
  local expiry = tonumber(ARGV[4 + 3 * i])
  if expiry > 0 then redis.call('PEXPIREAT', KEYS[i], expiry) end
end
redis.call('SET', 'sluice:h:' .. ARGV[1], ARGV[4], 'PX', ARGV[3])
redis.call('ZADD', 'sluice:holds', ARGV[2], ARGV[1])
return out
"""

# Release a reservation record's counters, adding what was spent: ARGV = id, nanos, tokens; with
# ARGV[4] == '1' (the reaper), each counter is charged its reserved amount instead.
_RELEASE = """
local function release(id, nanos, tokens, at_reserved)
  local record = redis.call('GET', 'sluice:h:' .. id)
  redis.call('ZREM', 'sluice:holds', id)
  if not record then return 0 end
  redis.call('DEL', 'sluice:h:' .. id)
  for _, part in ipairs(cjson.decode(record)) do
    local key, metric, amount = part[1], part[2], part[3]
    if redis.call('EXISTS', key) == 1 then
      -- never below 0: a counter reloaded meanwhile (its key's limits changed) no longer holds it
      if redis.call('HINCRBY', key, 'r', -amount) < 0 then redis.call('HSET', key, 'r', 0) end
      local spent = 0
      if at_reserved then
        if metric ~= 'concurrent' then spent = amount end
      elseif metric == 'usd' then spent = nanos
      elseif metric == 'tokens' then spent = tokens
      elseif metric == 'requests' then spent = 1 end
      if spent ~= 0 then redis.call('HINCRBY', key, 's', spent) end
    end
  end
  return 1
end
"""
_SETTLE = _RELEASE + "return release(ARGV[1], ARGV[2], ARGV[3], false)"
_REAP = (
    _RELEASE
    + """
local ids = redis.call('ZRANGEBYSCORE', 'sluice:holds', '-inf', ARGV[1], 'LIMIT', 0, 500)
local n = 0
for _, id in ipairs(ids) do n = n + release(id, 0, 0, true) end
return n
"""
)


def counter_name(key: CounterKey) -> str:
    """The Redis key of a counter."""
    scope, metric, window = key
    return f"{PREFIX}{scope}|{metric}|{window}"


def _expiry_ms(end_us: int) -> int:
    """Keep a counter a day past its window (0: a total or concurrency counter never expires)."""
    return end_us // 1000 + _DAY_MS if end_us else 0


class RedisCounters:
    """``Counters`` over Redis (see the module docstring for the guarantees)."""

    remote = True

    def __init__(
        self,
        url: str,
        *,
        hold_deadline_s: float = 1000.0,
        timeout_s: float = 1.0,
        settle_batch: int = 512,
        sync_every_s: float = 5.0,
        max_connections: int = 64,
    ) -> None:
        # bounded and waiting; a retry never reserves twice (a reservation is keyed by its id)
        self._redis = bounded_client(url, max_connections, timeout_s)
        self._reserve = self._redis.register_script(_RESERVE)
        self._settle = self._redis.register_script(_SETTLE)
        self._reap = self._redis.register_script(_REAP)
        self._hold_deadline_ms = int(hold_deadline_s * 1000)
        self._settle_batch = settle_batch
        self._sync_every_s = sync_every_s
        self._calendar = Calendar()
        self._offset_us = 0  # Redis's clock minus ours
        self._queue: list[tuple[str, int, int]] = []  # (hold id, nanos, tokens) to settle
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._source: Callable[[], Awaitable[Loaded]] | None = None
        self._rebuilding: asyncio.Task[None] | None = None

    # --- lifecycle ---------------------------------------------------------------------------------

    async def start(self, source: Callable[[], Awaitable[Loaded]]) -> None:
        """Sync the clock, make sure the counters exist (rebuilding them if not), start the background
        work. An unreachable Redis does not stop the start: capped requests fail closed until it is back."""
        self._source = source
        try:
            await self._sync_clock()
            if not await self._redis.exists(EPOCH):
                await self._rebuild()
        except RedisError:
            log.warning("budgets: Redis unreachable at start; capped requests fail closed", exc_info=True)
        self._tasks = [
            asyncio.create_task(self._settler(), name="sluice-settler"),
            asyncio.create_task(self._housekeeping(), name="sluice-counters"),
        ]

    async def close(self) -> None:
        """Send what is queued (briefly), stop, disconnect."""
        with contextlib.suppress(RedisError, TimeoutError):
            async with asyncio.timeout(3):
                while self._queue:
                    await self._send(self._take())
        for task in (*self._tasks, *([self._rebuilding] if self._rebuilding else [])):
            await cancel_and_wait(task)
        self._tasks = []
        await self._redis.aclose(close_connection_pool=True)  # a pool passed in is not closed otherwise

    def clock(self) -> int:
        """Now by Redis's clock, in unix µs (this machine's clock plus the last measured offset)."""
        return time.time_ns() // 1000 + self._offset_us

    # --- the hot path ------------------------------------------------------------------------------

    async def reserve(self, scopes: Sequence[Scope], need: Need, ts_us: int) -> Hold:
        """One script call: every limit of every scope, all or nothing."""
        windows = self._calendar.windows(ts_us)
        names: list[str] = []
        args: list[Any] = []
        parts: list[tuple[Any, str, int]] = []
        rooms: list[tuple[Scope, Any, Any]] = []
        for scope in scopes:
            for limit in scope.limits:
                window = windows[limit.period]
                name = counter_name((scope.id, limit.metric, window.key))
                amount = need.of(limit.metric)
                names.append(name)
                args += (limit.amount, amount, _expiry_ms(window.end_us))
                parts.append((name, limit.metric, amount))
                rooms.append((scope, limit, window))
        hold_id = secrets.token_hex(12)
        deadline = ts_us // 1000 + self._hold_deadline_ms
        record = orjson.dumps(parts)
        try:
            status, *used = await self._reserve(
                keys=names, args=[hold_id, deadline, self._hold_deadline_ms + 3_600_000, record, *args]
            )
        except RedisError as exc:  # counted in sluice_refusals_total{code="counters_unavailable"}
            log.warning("budgets: Redis unreachable; refusing a capped request (%s)", type(exc).__name__)
            raise _unavailable("cannot be reached") from exc
        if status == -1:
            self._start_rebuild()
            raise _unavailable("are being rebuilt")
        if status == -2:  # the first try went through; its answer was lost
            return Hold(need, parts, [], token=hold_id)
        if status > 0:
            scope, limit, window = rooms[status - 1]
            amount, before = parts[status - 1][2], int(used[0])
            raise refusal(Room(scope, limit, limit.amount - before - amount, window), before, amount, ts_us)
        room = [
            Room(scope, limit, limit.amount - int(before) - part[2], window)
            for (scope, limit, window), part, before in zip(rooms, parts, used, strict=True)
        ]
        return Hold(need, parts, room, token=hold_id)

    def settle(self, hold: Hold, nanos: int, tokens: int) -> None:
        """Queue the settlement (sent in batches by a background task; retried while Redis is away)."""
        if hold.settled:
            return
        hold.settled = True
        self._queue.append((hold.token, nanos, tokens))
        self._wake.set()

    # --- background work ---------------------------------------------------------------------------

    def _take(self) -> list[tuple[str, int, int]]:
        batch, self._queue = self._queue[: self._settle_batch], self._queue[self._settle_batch :]
        return batch

    async def _send(self, batch: list[tuple[str, int, int]]) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for hold_id, nanos, tokens in batch:
                    await self._settle(keys=[], args=[hold_id, nanos, tokens], client=pipe)
                await pipe.execute()
        except BaseException:
            self._queue[:0] = batch  # kept, in order, for the next try
            raise

    async def _settler(self) -> None:
        backoff = 0.05
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
            try:
                await self._send(self._take())
                backoff = 0.05
            except RedisError:
                log.warning("budgets: settlements wait for Redis (%d queued)", len(self._queue))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def _housekeeping(self) -> None:
        """Keep the clock in step, reap reservations of dead requests, notice lost counters."""
        while True:
            await asyncio.sleep(self._sync_every_s)
            try:
                await self._sync_clock()
                reaped = await self._reap(keys=[], args=[self.clock() // 1000])
                if reaped:
                    log.warning(
                        "budgets: %d reservation(s) of dead requests settled at their reserve", reaped
                    )
                if not await self._redis.exists(EPOCH):
                    self._start_rebuild()
            except RedisError:
                log.warning("budgets: Redis unreachable", exc_info=True)

    async def _sync_clock(self) -> None:
        before = time.time_ns() // 1000
        seconds, micros = await self._redis.time()
        after = time.time_ns() // 1000
        self._offset_us = seconds * 1_000_000 + micros - (before + after) // 2

    def _start_rebuild(self) -> None:
        if self._rebuilding is None or self._rebuilding.done():
            self._rebuilding = asyncio.create_task(self._rebuild_quietly(), name="sluice-rebuild")

    async def _rebuild_quietly(self) -> None:
        try:
            await self._rebuild()
        except Exception:  # retried at the next refusal or housekeeping pass
            log.exception("budgets: rebuilding the counters failed")

    async def _rebuild(self) -> None:
        """Rebuild every counter from the ledger, under a lock so one instance does it."""
        assert self._source is not None
        token = secrets.token_hex(8)
        if not await self._redis.set(LOCK, token, nx=True, px=120_000):
            return  # another instance is at it
        try:
            await asyncio.sleep(1.0)  # let rows of requests still running reach the ledger as pending
            loaded = await self._source()
            async with self._redis.pipeline(transaction=False) as pipe:
                for key, spent, end_us in loaded:
                    name = counter_name(key)
                    pipe.delete(name)
                    pipe.hset(name, mapping={"s": spent, "r": 0})
                    if end_us:
                        pipe.pexpireat(name, _expiry_ms(end_us))
                pipe.set(EPOCH, secrets.token_hex(8))
                await pipe.execute()
            log.warning("budgets: %d counters rebuilt from the ledger", len(loaded))
        finally:
            if await self._redis.get(LOCK) == token.encode():
                await self._redis.delete(LOCK)

    # --- administration ----------------------------------------------------------------------------

    async def replace(self, scopes: set[str], prefix: str, loaded: Loaded, now_us: int) -> None:
        """Drop the scopes' counters for the current windows and those of scopes under ``prefix``, then
        set ``loaded``."""
        windows = windows_at(now_us)
        names = [
            counter_name((scope, metric, windows[period].key))
            for scope in scopes
            for metric, period in _METRIC_PERIODS
        ]
        names += [
            n.decode() async for n in self._redis.scan_iter(match=_glob(PREFIX + prefix) + "*", count=1000)
        ]
        async with self._redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.delete(name)
            for key, spent, end_us in loaded:
                pipe.hset(counter_name(key), mapping={"s": spent, "r": 0})
                if end_us:
                    pipe.pexpireat(counter_name(key), _expiry_ms(end_us))
            await pipe.execute()

    async def claim_once(self, name: str, ttl_s: int) -> bool:
        """True for the first instance to claim ``name`` (an alert's key) within ``ttl_s``; if Redis cannot
        answer, True: the caller's own log decides (it is unique too)."""
        digest = hashlib.sha256(name.encode()).hexdigest()[:32]
        try:
            return bool(await self._redis.set(f"sluice:once:{digest}", "1", nx=True, ex=ttl_s))
        except RedisError:
            log.warning("alerts: Redis unreachable; the alert log alone deduplicates")
            return True

    async def claim_reload(self, key_id: str, fingerprint: str) -> bool:
        """The first instance to see a key's new limits reloads its counters; the others would only wipe
        spend settled meanwhile."""
        before = await self._redis.set(f"sluice:kl:{key_id}", fingerprint, get=True)
        return bool(before != fingerprint.encode())

    async def spent(self, keys: Sequence[CounterKey]) -> list[int]:
        """The settled amount of each counter, in one round trip."""
        if not keys:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hget(counter_name(key), "s")
            values = await pipe.execute()
        return [int(v or 0) for v in values]

    async def read(self, prefix: str) -> list[tuple[CounterKey, int, int]]:
        """The counters of matching scopes (admin only: a scan)."""
        out: list[tuple[CounterKey, int, int]] = []
        async for raw in self._redis.scan_iter(match=_glob(PREFIX + prefix) + "*", count=1000):
            name = raw.decode()
            scope, metric, window = name[len(PREFIX) :].rsplit("|", 2)
            spent, reserved = await self._redis.hmget(name, ["s", "r"])
            out.append(((scope, metric, window), int(spent or 0), int(reserved or 0)))
        return sorted(out)


_METRIC_PERIODS = [
    (metric, period)
    for metric in (USD, TOKENS, REQUESTS)
    for period in ("total", "month", "week", "day", MINUTE)
] + [(CONCURRENT, "now")]


def _glob(text: str) -> str:
    """``text`` with Redis glob characters escaped."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _unavailable(what: str) -> CountersUnavailable:
    return CountersUnavailable(
        f"This request has a budget or rate limit, and its counters {what}; it was not sent. Retry shortly.",
        headers={"retry-after": "2"},
    )
