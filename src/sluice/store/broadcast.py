"""Key changes told to every instance at once, over Redis pub/sub.

When an instance changes a key (rotate, block, revoke, new limits) it publishes the key's old digest;
every instance drops that digest from its cache, so the change takes effect everywhere within a round
trip instead of within ``server.key_cache_ttl_s``. The TTL still bounds it if a message is missed
(Redis away, a subscriber reconnecting). A stored provider key added or removed is announced the same
way, and every instance reloads the provider keys. A deployment one instance ejects (or re-admits) is
told to the others the same way, so they stop sending it traffic too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from sluice.aio import cancel_and_wait
from sluice.store.notices import HEALTH_PREFIX, PROVIDER_KEYS_CHANGED

__all__ = ["CHANNEL", "HEALTH_PREFIX", "PROVIDER_KEYS_CHANGED", "KeyBroadcast"]

log = logging.getLogger("sluice.keys")
CHANNEL = "sluice:keys"


class KeyBroadcast:
    """Publish and receive key-change notices."""

    def __init__(self, url: str) -> None:
        self._redis = aioredis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=1.0)
        self._task: asyncio.Task[None] | None = None

    async def start(self, on_change: Callable[[str], None]) -> None:
        """Listen in the background (reconnecting when Redis comes back)."""
        self._task = asyncio.create_task(self._listen(on_change), name="sluice-key-broadcast")

    async def publish(self, digest: str) -> None:
        """Tell every instance that the key with this digest changed."""
        await self._redis.publish(CHANNEL, digest)

    async def close(self) -> None:
        """Stop listening and disconnect."""
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        await self._redis.aclose()

    async def _listen(self, on_change: Callable[[str], None]) -> None:
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    while True:
                        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=30)
                        if message is not None and isinstance(message.get("data"), bytes):
                            on_change(message["data"].decode())
            except (RedisError, OSError):
                log.warning("key broadcast: Redis unreachable; caches fall back to their TTL")
                await asyncio.sleep(1.0)
