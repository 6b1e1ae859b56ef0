"""The only module that opens sockets to providers: pools, deadlines, and transport error mapping.

One aiohttp session per provider, each with an explicit connection limit (aiohttp's default of 100
silently queues the 101st stream) and no ``total`` timeout (its default of 300 s kills long streams).
Deadlines are ours: connect (socket), first byte (headers and first data event of a stream), idle (time
between *data* events: keep-alive comments do not count as progress), and total.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from types import TracebackType

import aiohttp

from sluice.errors import SluiceError, UpstreamError, UpstreamTimeout
from sluice.providers.base import UpstreamCall
from sluice.settings import Timeouts
from sluice.wire.sse import Event, SSEDecoder

_READ_SIZE = 65536


@dataclass(frozen=True, slots=True)
class ProviderEndpoint:
    """A provider as the transport sees it; ``auth_headers`` hold the secret and never leave here."""

    name: str
    base_url: str
    auth_headers: dict[str, str] = field(repr=False)
    headers: dict[str, str] = field(default_factory=dict)
    timeouts: Timeouts = field(default_factory=Timeouts)
    max_connections: int = 1024


class UpstreamResponse:
    """An open upstream response; use as an async context manager so the connection is released."""

    def __init__(self, endpoint: ProviderEndpoint, resp: aiohttp.ClientResponse, started: float) -> None:
        self._endpoint = endpoint
        self._resp = resp
        self._started = started
        self.status = resp.status
        self.headers = {k.lower(): v for k, v in resp.headers.items()}

    async def __aenter__(self) -> UpstreamResponse:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._resp.release() if et is None else self._resp.close()

    def _deadline(self) -> float:
        return self._started + self._endpoint.timeouts.total

    async def read(self, limit: int = 64 * 1024 * 1024) -> bytes:
        """The whole body, within the total deadline."""
        try:
            async with asyncio.timeout_at(self._deadline()):
                body = await self._resp.content.read(limit + 1)
        except TimeoutError as exc:
            raise UpstreamTimeout(f"Provider {self._endpoint.name!r} exceeded the total deadline.") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"Provider {self._endpoint.name!r} broke the connection.") from exc
        if len(body) > limit:
            raise UpstreamError(f"Provider {self._endpoint.name!r} sent an oversized response.")
        return body

    async def events(self) -> AsyncGenerator[list[Event], None]:
        """SSE events as they arrive, batched per read, under the first-byte, idle and total deadlines.

        The deadline wraps each read only, so time the consumer spends sending to a slow client never
        counts against the provider.
        """
        t = self._endpoint.timeouts
        loop = asyncio.get_running_loop()
        total_at = self._deadline()
        deadline = min(self._started + t.first_byte, total_at)
        decoder = SSEDecoder()
        content = self._resp.content
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    chunk = await content.readany()
            except TimeoutError as exc:
                which = "total" if deadline >= total_at else "first-byte or idle"
                raise UpstreamTimeout(
                    f"Provider {self._endpoint.name!r} exceeded the {which} deadline."
                ) from exc
            except aiohttp.ClientError as exc:
                raise UpstreamError(f"Provider {self._endpoint.name!r} cut the stream.") from exc
            if not chunk:
                break
            events = decoder.feed(chunk)
            if not events:
                continue
            if any(e.data is not None for e in events):  # comments are not progress
                deadline = min(loop.time() + t.idle, total_at)
            yield events
        if decoder.pending().strip():
            raise UpstreamError(f"Provider {self._endpoint.name!r} cut the stream mid-event.")


class Upstream:
    """Connection pools for every provider; created inside the serving event loop."""

    def __init__(self, endpoints: dict[str, ProviderEndpoint]) -> None:
        self._endpoints = endpoints
        self._sessions: dict[str, aiohttp.ClientSession] = {}

    def _session(self, endpoint: ProviderEndpoint) -> aiohttp.ClientSession:
        session = self._sessions.get(endpoint.name)
        if session is None:
            connector = aiohttp.TCPConnector(
                limit=endpoint.max_connections,
                limit_per_host=endpoint.max_connections,
                keepalive_timeout=30,
                enable_cleanup_closed=True,
            )
            timeout = aiohttp.ClientTimeout(total=None, connect=None, sock_connect=endpoint.timeouts.connect)
            session = aiohttp.ClientSession(
                connector=connector,
                timeout=timeout,
                auto_decompress=False,
                skip_auto_headers=("User-Agent",),
                headers={"user-agent": "sluice", **endpoint.headers, **endpoint.auth_headers},
            )
            self._sessions[endpoint.name] = session
        return session

    async def send(self, provider: str, call: UpstreamCall, *, stream: bool) -> UpstreamResponse:
        """POST a call; return once response headers are in (status may be an error)."""
        endpoint = self._endpoints[provider]
        session = self._session(endpoint)
        loop = asyncio.get_running_loop()
        started = loop.time()
        t = endpoint.timeouts
        headers = {"content-type": "application/json", **call.headers}
        if stream:
            headers["accept"] = "text/event-stream"
        limit = t.first_byte if stream else t.total
        try:
            async with asyncio.timeout(min(limit, t.total)):
                resp = await session.post(endpoint.base_url + call.path, data=call.body, headers=headers)
        except TimeoutError as exc:
            raise UpstreamTimeout(f"Provider {provider!r} did not answer in time.") from exc
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamError(f"Cannot connect to provider {provider!r}.") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"Provider {provider!r} broke the connection.") from exc
        return UpstreamResponse(endpoint, resp, started)

    def redact(self, provider: str, raw: bytes) -> bytes:
        """Remove this provider's credentials from a body (a provider may echo the key it was sent)."""
        for value in self._endpoints[provider].auth_headers.values():
            secret = value[7:] if value.startswith("Bearer ") else value
            if len(secret) >= 4:
                raw = raw.replace(secret.encode(), b"[redacted]")
        return raw

    async def error_body(self, resp: UpstreamResponse) -> bytes:
        """Read an error body, bounded, never failing (an unreadable body is an empty one)."""
        with contextlib.suppress(SluiceError):
            return await resp.read(limit=256 * 1024)
        return b""

    async def close(self) -> None:
        """Close every pool."""
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()
