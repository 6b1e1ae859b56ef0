"""The response cache as the request path uses it: decide, look up, keep.

A backend that fails never fails a request: a lookup that errs is a miss, a store that errs is logged.
Stores run off the request path (a task per entry, at most ``_MAX_PENDING`` at once).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sluice.cache import policy
from sluice.cache.backends import CacheBackend
from sluice.cache.policy import HIT, MISS, SKIP, SKIPPED, Decision
from sluice.cache.record import Record
from sluice.metrics import Metrics
from sluice.settings import CacheSettings

log = logging.getLogger("sluice.cache")
_MAX_PENDING = 256


class ResponseCache:
    """Decides per request, looks up, and keeps answers."""

    def __init__(self, settings: CacheSettings, backend: CacheBackend, metrics: Metrics) -> None:
        self.settings = settings
        self.backend = backend
        self._metrics = metrics
        self._pending: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self.backend.start()

    async def close(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        await self.backend.close()

    def decide(
        self,
        header: str | None,
        *,
        endpoint: str,
        alias: str,
        key_id: str,
        key_name: str,
        team: str | None,
        body: dict[str, Any],
    ) -> Decision:
        """What to do with this request (a bad ``x-sluice-cache`` header raises a 400)."""
        s = self.settings
        mode, ttl, tools = policy.decide(
            s, header, endpoint=endpoint, alias=alias, key_name=key_name, body=body
        )
        if mode == SKIP:
            return SKIPPED
        # an answer that may call tools is kept apart: only requests that accept one are served it
        kind = f"{endpoint}+tools" if tools else endpoint
        key = policy.cache_key(policy.scope_of(s, key_id, team), kind, body)
        return Decision(mode, min(ttl, s.ttl_s) if ttl else s.ttl_s, tools, key)

    async def lookup(self, decision: Decision, alias: str) -> Record | None:
        """The entry for a ``use`` decision, if there is one (a backend error is a miss)."""
        if decision.mode != policy.USE:
            return None
        try:
            raw = await self.backend.get(decision.key)
        except Exception:  # a cache that fails is a cache that misses
            log.warning("cache lookup failed", exc_info=True)
            raw = None
        record = Record.decode(raw) if raw is not None else None
        self._metrics.count("cache", alias, HIT if record is not None else MISS)
        if record is not None:
            self._metrics.count("cache_saved", alias, n=record.cost_nanos)
        return record

    def keep(self, decision: Decision, record: Record, alias: str) -> None:
        """Store an answer, off the request path."""
        value = record.encode()
        if len(value) > self.settings.max_entry_bytes or len(self._pending) >= _MAX_PENDING:
            return
        task = asyncio.ensure_future(self._store(decision, value, alias))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _store(self, decision: Decision, value: bytes, alias: str) -> None:
        try:
            await self.backend.set(decision.key, value, decision.ttl_s)
            self._metrics.count("cache", alias, "stored")
        except Exception:  # the answer was served; only the saving is lost
            log.warning("cache store failed", exc_info=True)
