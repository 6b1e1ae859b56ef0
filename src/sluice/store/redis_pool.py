"""The one way Sluice opens a Redis client for work on the request path (budget counters, the response
cache): a bounded pool that waits, up to ``timeout_s``, for a free connection under load instead of
failing, with socket timeouts so a Redis that stops answering fails fast, and one retry on a fresh
connection when Redis dropped the old one (a restart). The commands sent through it are idempotent."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError


def bounded_client(url: str, max_connections: int, timeout_s: float) -> aioredis.Redis:
    """A client over its own bounded, waiting pool (close it with ``aclose()`` and the pool's
    ``disconnect()``: ``client.connection_pool``)."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_s,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        health_check_interval=10,
        retry=Retry(NoBackoff(), 1, (RedisConnectionError,)),
    )
    return aioredis.Redis(connection_pool=pool)
