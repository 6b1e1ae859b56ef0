"""The only module that opens sockets to providers: pools, deadlines, and transport error mapping.

One aiohttp session per provider, each with an explicit connection limit (aiohttp's default of 100
silently queues the 101st stream) and no ``total`` timeout (its default of 300 s kills long streams).
Deadlines are ours: connect (socket), first byte (headers and first data event of a stream), idle (time
between *data* events: keep-alive comments do not count as progress), and total.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field

import aiohttp
from aiohttp.typedefs import LooseHeaders
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from sluice.errors import UpstreamError, UpstreamTimeout
from sluice.providers.base import UpstreamCall
from sluice.settings import Timeouts
from sluice.wire.sse import Event, SSEDecoder

MAX_RESPONSE_BYTES = 64 * 1024 * 1024
ERROR_BODY_BYTES = 256 * 1024
_SSE_HEADERS = {"accept": "text/event-stream"}


@dataclass(frozen=True, slots=True)
class ProviderEndpoint:
    """A provider as the transport sees it; its keys never leave this module."""

    name: str
    base_url: str
    api_key: str | None = field(default=None, repr=False)  # from the config (`env:NAME`)
    auth_style: str = "bearer"  # or "x-api-key" (Anthropic)
    headers: dict[str, str] = field(default_factory=dict)
    timeouts: Timeouts = field(default_factory=Timeouts)
    max_connections: int = 1024


@dataclass(slots=True)
class RingKey:
    """One key of a provider account, with the headers that present it."""

    id: str  # "config", or a stored key's id
    secret: str = field(repr=False)
    headers: dict[str, str] = field(repr=False)
    resting_until: float = 0.0  # monotonic seconds; 0: in use
    # the headers of a call that adds none of its own, built once (aiohttp takes a multidict as it is)
    plain: CIMultiDictProxy[str] = field(init=False, repr=False)
    streaming: CIMultiDictProxy[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.plain = CIMultiDictProxy(CIMultiDict(self.headers))
        self.streaming = CIMultiDictProxy(CIMultiDict({**_SSE_HEADERS, **self.headers}))


# How long a key steps aside: refused (revoked, out of credit) or throttled (without a retry-after).
REFUSED_REST_S = 300.0
THROTTLED_REST_S = 30.0
MAX_REST_S = 3600.0


class KeyRing:
    """A provider account's keys: the first one not resting serves every request, so a key the provider
    refuses (401, 402) or throttles (429) steps aside and the next takes over; when all rest, the one
    that comes back first is used."""

    __slots__ = ("keys",)

    def __init__(self, keys: list[RingKey]) -> None:
        self.keys = keys

    def pick(self) -> RingKey | None:
        """The key for the next request (None: the account has no key)."""
        keys = self.keys
        if not keys:
            return None
        if keys[0].resting_until == 0.0:
            return keys[0]
        now = time.monotonic()
        for key in keys:
            if key.resting_until <= now:
                key.resting_until = 0.0
                return key
        return min(keys, key=lambda k: k.resting_until)

    def spare(self, key_id: str) -> bool:
        """True if a key other than ``key_id`` is not resting (a retry can present it)."""
        now = time.monotonic()
        return any(k.id != key_id and k.resting_until <= now for k in self.keys)

    def failed(self, key_id: str, status: int, retry_after: str | None) -> None:
        """The provider refused (401, 402, 403) or throttled (429) the request made with ``key_id``."""
        if len(self.keys) < 2:
            return  # nowhere to go: the next request tries the same key
        rest = REFUSED_REST_S if status in (401, 402, 403) else _retry_after(retry_after)
        for key in self.keys:
            if key.id == key_id:
                key.resting_until = time.monotonic() + rest


def _retry_after(value: str | None) -> float:
    try:
        seconds = float(value) if value else THROTTLED_REST_S
    except ValueError:
        seconds = THROTTLED_REST_S
    return min(max(seconds, 1.0), MAX_REST_S)


def _presented(style: str, secret: str) -> dict[str, str]:
    return {"x-api-key": secret} if style == "x-api-key" else {"authorization": f"Bearer {secret}"}


@dataclass(slots=True)
class Fetched:
    """A complete upstream answer (non-stream): status, case-insensitive headers, body, and which of the
    account's keys was used."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    key_id: str = ""


async def _read_all(resp: aiohttp.ClientResponse, limit: int, provider: str) -> bytes:
    parts: list[bytes] = []
    size = 0
    content = resp.content
    while chunk := await content.readany():
        size += len(chunk)
        if size > limit:
            raise UpstreamError(f"Provider {provider!r} sent an oversized response.")
        parts.append(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


class UpstreamResponse:
    """An open upstream (stream) response; ``release()`` must always be called."""

    def __init__(
        self,
        endpoint: ProviderEndpoint,
        resp: aiohttp.ClientResponse,
        started: float,
        key_id: str = "",
        deadline: float | None = None,
    ) -> None:
        self._endpoint = endpoint
        self._resp = resp
        self._started = started
        self._total_at = started + endpoint.timeouts.total
        if deadline is not None:
            self._total_at = min(self._total_at, deadline)
        self.key_id = key_id
        self.status = resp.status
        self.headers: Mapping[str, str] = resp.headers  # case-insensitive

    def release(self, *, error: bool = False) -> None:
        """Return the connection to the pool, or drop it after an error (its state is unknown)."""
        if error:
            self._resp.close()
        else:
            self._resp.release()

    @property
    def idle(self) -> float:
        """The provider's idle deadline, in seconds (also how long a slow client may stall a stream)."""
        return self._endpoint.timeouts.idle

    def _deadline(self) -> float:
        return self._total_at

    async def error_body(self) -> bytes:
        """An error answer's body, bounded in size and by the first-byte deadline; unreadable: empty."""
        loop = asyncio.get_running_loop()
        deadline = min(self._deadline(), loop.time() + self._endpoint.timeouts.first_byte)
        with contextlib.suppress(TimeoutError, aiohttp.ClientError, UpstreamError):
            async with asyncio.timeout_at(deadline):
                return await _read_all(self._resp, ERROR_BODY_BYTES, self._endpoint.name)
        return b""

    async def events(self, commit_at: float | None = None) -> AsyncGenerator[list[Event], None]:
        """SSE events as they arrive, batched per read, under the first-byte, idle and total deadlines.

        The deadline wraps each read only, so time the consumer spends sending to a slow client never
        counts against the provider. If nothing has come by ``commit_at`` (loop time), an empty batch is
        yielded then, once: the consumer's pre-commit window is over.
        """
        t = self._endpoint.timeouts
        loop = asyncio.get_running_loop()
        total_at = self._deadline()
        deadline = min(self._started + t.first_byte, total_at)
        decoder = SSEDecoder()
        content = self._resp.content
        while True:
            try:
                if commit_at is not None and commit_at < deadline:
                    try:
                        async with asyncio.timeout_at(commit_at):
                            chunk = await content.readany()
                    except TimeoutError:
                        commit_at = None
                        yield []
                        continue
                else:
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
            try:
                events = decoder.feed(chunk)
            except ValueError as exc:
                raise UpstreamError(
                    f"Provider {self._endpoint.name!r} sent an oversized stream event."
                ) from exc
            if not events:
                continue
            if any(e.data is not None and e.event != "ping" for e in events):  # comments, pings: no progress
                deadline = min(loop.time() + t.idle, total_at)
            yield events
        if decoder.pending().strip():
            raise UpstreamError(f"Provider {self._endpoint.name!r} cut the stream mid-event.")

    async def drain(self) -> None:
        """After the last event, read the few bytes left (chunk terminator) so the connection is reused."""
        content = self._resp.content
        if content.at_eof():
            return
        with contextlib.suppress(TimeoutError, aiohttp.ClientError):
            async with asyncio.timeout(0.05):
                while await content.readany():
                    pass


# What the client library raises while calling a provider (mapped to ours by ``_transport_error``).
_TRANSPORT = (TimeoutError, aiohttp.ClientError)


def _transport_error(provider: str, exc: BaseException) -> UpstreamError | UpstreamTimeout:
    """The client library's failure while calling a provider, as ours (mapped here, once). A plain
    ``except`` at each call: a generator-based context manager costs a microsecond per call."""
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout(f"Provider {provider!r} did not answer in time.")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamError(f"Cannot connect to provider {provider!r}.", code="upstream_unreachable")
    return UpstreamError(f"Provider {provider!r} broke the connection.")


_SESSION_HEADERS = {"user-agent": "sluice", "content-type": "application/json", "accept-encoding": "identity"}


class Upstream:
    """Connection pools for every provider; created inside the serving event loop."""

    def __init__(self, endpoints: dict[str, ProviderEndpoint]) -> None:
        self._endpoints = endpoints
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._urls: dict[tuple[str, str], URL] = {}
        self._rings = {name: KeyRing(self._config_key(e)) for name, e in endpoints.items()}

    @staticmethod
    def _config_key(endpoint: ProviderEndpoint) -> list[RingKey]:
        if not endpoint.api_key:
            return []
        return [RingKey("config", endpoint.api_key, _presented(endpoint.auth_style, endpoint.api_key))]

    def set_stored_keys(self, provider: str, stored: list[tuple[str, str]]) -> None:
        """The account's keys: the config's first, then the stored ones ``(id, secret)`` in order."""
        endpoint = self._endpoints.get(provider)
        if endpoint is None:
            return
        old = {k.id: k.resting_until for k in self._rings[provider].keys}
        keys = self._config_key(endpoint) + [
            RingKey(key_id, secret, _presented(endpoint.auth_style, secret)) for key_id, secret in stored
        ]
        for key in keys:
            key.resting_until = old.get(key.id, 0.0)
        self._rings[provider] = KeyRing(keys)

    def key_failed(self, provider: str, key_id: str, status: int, retry_after: str | None) -> bool:
        """A provider refused or throttled a key: the account's next key serves for a while. Returns
        True if another of the account's keys can serve now (a retry should present it)."""
        ring = self._rings.get(provider)
        if ring is None or status not in (401, 402, 403, 429):
            return False
        ring.failed(key_id, status, retry_after)
        return ring.spare(key_id)

    def total_s(self, provider: str) -> float:
        """The provider's total deadline, in seconds."""
        return self._endpoints[provider].timeouts.total

    def _auth(self, provider: str) -> RingKey | None:
        return self._rings[provider].pick()

    def _url(self, endpoint: ProviderEndpoint, path: str) -> URL:
        url = self._urls.get((endpoint.name, path))
        if url is None:  # parsed once per provider and path, not per request
            url = self._urls[(endpoint.name, path)] = URL(endpoint.base_url + path)
        return url

    @staticmethod
    def _headers(call: UpstreamCall, key: RingKey | None, *, stream: bool) -> LooseHeaders | None:
        if key is not None:
            if not call.headers:  # the common case: the key's headers, built once
                return key.streaming if stream else key.plain
            return (
                {**_SSE_HEADERS, **call.headers, **key.headers} if stream else {**call.headers, **key.headers}
            )
        if stream:
            return {**_SSE_HEADERS, **call.headers}
        return call.headers or None

    async def fetch(self, provider: str, call: UpstreamCall, deadline: float | None = None) -> Fetched:
        """POST a non-stream call and read the whole answer under the ``first_byte`` deadline (a complete
        answer is generated before its headers are sent: the two are one wait), within ``total`` and the
        request's own ``deadline`` (loop time) when it has one."""
        endpoint = self._endpoints[provider]
        session = self._session(endpoint)
        key = self._auth(provider)
        t = endpoint.timeouts
        until = asyncio.get_running_loop().time() + min(t.first_byte, t.total)
        try:
            async with (
                asyncio.timeout_at(until if deadline is None or until < deadline else deadline),
                session.post(
                    self._url(endpoint, call.path),
                    data=call.body,
                    headers=self._headers(call, key, stream=False),
                    allow_redirects=False,  # a redirect would carry the key and the prompt to another host
                ) as resp,
            ):
                body = await _read_all(resp, MAX_RESPONSE_BYTES, provider)
                return Fetched(resp.status, resp.headers, body, key.id if key is not None else "")
        except _TRANSPORT as exc:
            raise _transport_error(provider, exc) from exc

    async def get(self, provider: str, path: str, timeout_s: float = 10.0) -> Fetched:
        """GET an account endpoint (a balance), with the account's key, under ``timeout_s``."""
        endpoint = self._endpoints[provider]
        key = self._auth(provider)
        try:
            async with (
                asyncio.timeout(timeout_s),
                self._session(endpoint).get(
                    self._url(endpoint, path),
                    headers=key.headers if key is not None else None,
                    allow_redirects=False,
                ) as resp,
            ):
                body = await _read_all(resp, MAX_RESPONSE_BYTES, provider)
                return Fetched(resp.status, resp.headers, body, key.id if key is not None else "")
        except _TRANSPORT as exc:
            raise _transport_error(provider, exc) from exc

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
                # We parse every answer, so ask for identity encoding rather than inflate on the hot path.
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),  # providers' cookies must not leak between tenants
                # Fixed headers live on the session: nothing to merge per request.
                headers={**_SESSION_HEADERS, **endpoint.headers},
            )
            self._sessions[endpoint.name] = session
        return session

    async def open_stream(
        self, provider: str, call: UpstreamCall, deadline: float | None = None
    ) -> UpstreamResponse:
        """POST a stream call; return once response headers are in (status may be an error). The
        request's own ``deadline`` (loop time), when it has one, bounds the whole stream too."""
        endpoint = self._endpoints[provider]
        session = self._session(endpoint)
        started = asyncio.get_running_loop().time()
        t = endpoint.timeouts
        key = self._auth(provider)
        until = started + min(t.first_byte, t.total)
        try:
            async with asyncio.timeout_at(until if deadline is None or until < deadline else deadline):
                resp = await session.post(
                    self._url(endpoint, call.path),
                    data=call.body,
                    headers=self._headers(call, key, stream=True),
                    allow_redirects=False,
                )
        except _TRANSPORT as exc:
            raise _transport_error(provider, exc) from exc
        return UpstreamResponse(endpoint, resp, started, key.id if key is not None else "", deadline)

    def redact(self, provider: str, raw: bytes) -> bytes:
        """Remove this provider's credentials from a body (a provider may echo the key it was sent)."""
        endpoint = self._endpoints[provider]
        keys = [k.secret for k in self._rings[provider].keys]
        for value in (*keys, *endpoint.headers.values()):
            secret = value[7:] if value.startswith("Bearer ") else value
            if len(secret) >= 8:
                raw = raw.replace(secret.encode(), b"[redacted]")
        return raw

    async def close(self) -> None:
        """Close every pool."""
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()
