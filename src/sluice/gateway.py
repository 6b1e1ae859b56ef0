"""One request's life after the HTTP edge: route → translate → upstream → relay.

The HTTP surface (``sluice.api``) authenticates and validates; this module turns a validated request
and its route into an upstream call and an answer in OpenAI's shape. Before a provider is called the
request's ledger entry is opened (a pending row: a request that may reach a provider is never missing
from the ledger); ``sluice.accounting`` settles it. Budgets and fallback plug in here in later stages.
"""

from __future__ import annotations

import base64
import functools
import logging
import sys
import time
from array import array
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import orjson

from sluice.errors import InvalidRequest, ModelNotFound, ModelUnpriced, SluiceError, UpstreamError
from sluice.ledger.entry import Entry, usd_text
from sluice.ledger.sink import Ledger
from sluice.limits.limiter import Limiter
from sluice.pricing.cost import Charge
from sluice.pricing.usage import TokenUsage, from_embeddings
from sluice.providers.base import StreamTranslator, Target
from sluice.providers.errors import parse_error_body
from sluice.routing.table import Deployment, Route
from sluice.upstream import Upstream, UpstreamResponse
from sluice.wire.requests import ChatRequest, EmbeddingRequest
from sluice.wire.sse import Event

log = logging.getLogger("sluice.gateway")
T = TypeVar("T")


@dataclass(slots=True)
class Reply:
    """A complete (non-stream) answer."""

    body: bytes
    headers: list[tuple[bytes, bytes]]
    tokens: TokenUsage | None = None  # the provider's usage, normalised for pricing


@dataclass(slots=True)
class StreamReply:
    """An open stream: headers to send first, then ``frames()``; ``close()`` must always run.

    ``open()`` reads until the provider has produced something of substance (content, a tool call,
    reasoning or a finish), so a provider that fails, times out or sends nothing before that still gets
    a proper HTTP error status (which the SDK can retry), not a 200 with an SSE error.
    """

    headers: list[tuple[bytes, bytes]]
    _resp: UpstreamResponse
    _deployment: Deployment
    _translator: StreamTranslator
    _entry: Entry
    _events: AsyncGenerator[list[Event], None] | None = None
    charge: Charge | None = None  # priced when the stream finished with usage
    final_tokens: TokenUsage | None = None  # the usage of a stream that finished, normalised once
    _pending: list[bytes] = field(default_factory=list)
    _error: SluiceError | None = None

    @property
    def client_idle(self) -> float:
        """Seconds a client may take to accept one chunk before it is dropped."""
        return self._resp.idle

    @property
    def tokens(self) -> TokenUsage | None:
        """The usage the provider reported so far, normalised for pricing (None if it never said)."""
        return self._translator.tokens()

    def delivered(self) -> int:
        """Estimated output tokens sent to the client so far."""
        return self._translator.delivered()

    def _translate(self, events: list[Event]) -> list[bytes]:
        """Frames for a batch of events; an error keeps the frames before it (raised after them)."""
        out: list[bytes] = []
        try:
            try:
                for event in events:
                    out += self._translator.feed(event)
            except _MALFORMED as exc:  # provider data is untrusted: garbage is its failure, not ours
                raise _unusable(self._deployment) from exc
        except SluiceError as err:
            if not out:
                raise
            self._error = err
        return out

    def _stopped(self) -> bool:
        return self._translator.done or self._error is not None

    async def open(self) -> None:
        """Read until the stream has substance (the pre-commit window); raise if it fails before."""
        self._events = self._resp.events()
        translator = self._translator
        while not (translator.started or translator.done or self._error is not None):
            try:
                events = await anext(self._events)
            except StopAsyncIteration:
                break
            self._pending += self._translate(events)
        if not (translator.started or translator.done):
            raise self._error or UpstreamError(
                f"Provider {self._deployment.target.provider!r} ended the stream before sending anything."
            )

    async def frames(self) -> AsyncIterator[bytes]:
        """Client-ready SSE bytes; raises ``SluiceError`` if the upstream fails mid-stream."""
        assert self._events is not None, "open() first"
        translator = self._translator
        if self._pending:
            yield b"".join(self._pending)
            self._pending = []
        if not self._stopped():
            async for events in self._events:
                out = self._translate(events)
                if out:
                    yield b"".join(out)
                if self._stopped():
                    break
        if self._error is not None:
            raise self._error
        if not translator.done:
            raise UpstreamError(
                f"Provider {self._deployment.target.provider!r} ended the stream before it was complete."
            )
        tokens = self.final_tokens = translator.tokens()
        if tokens is not None:  # priced now, so the final usage chunk can carry the cost
            self.charge = self._deployment.pricer.charge(tokens, self._entry.ts_us)
        yield b"".join(translator.finish(usd_text(self.charge.nanos) if self.charge else None))

    async def close(self, *, error: bool = False) -> None:
        """Release (or, after an error or disconnect, drop) the upstream connection."""
        try:
            if self._events is not None:
                await self._events.aclose()
            if not error and self._translator.done:
                await self._resp.drain()
        finally:
            self._resp.release(error=error)


# What translating a provider's malformed answer can raise (a shape we did not expect).
_MALFORMED = (TypeError, KeyError, AttributeError, ValueError, IndexError)


def _unusable(dep: Deployment) -> UpstreamError:
    return UpstreamError(f"Provider {dep.target.provider!r} sent an answer Sluice cannot read.")


@functools.cache
def _meta_headers(t: Target) -> list[tuple[bytes, bytes]]:
    """Response headers naming what served the request (built once per deployment)."""
    return [
        (b"x-sluice-provider", t.provider.encode()),
        (b"x-sluice-model", t.upstream_model.encode()),
        (b"x-sluice-attempts", b"1"),
    ]


def _since(t0: int) -> int:
    return (time.perf_counter_ns() - t0) // 1000


async def _timed(entry: Entry, call: Awaitable[T]) -> T:
    """Await an upstream call, recording how long the request waited for the provider."""
    t0 = time.perf_counter_ns()
    try:
        return await call
    finally:
        entry.upstream_us = _since(t0)


class Gateway:
    """The request life for chat completions and embeddings."""

    def __init__(
        self, routes: dict[str, Route], upstream: Upstream, ledger: Ledger, limiter: Limiter
    ) -> None:
        self.routes = routes
        self._upstream = upstream
        self._ledger = ledger
        self._limiter = limiter

    async def _admit(
        self, route: Route, entry: Entry, output_cap: int | None, choices: int = 1
    ) -> Deployment:
        """Choose the deployment, refuse an unpriced one, reserve the worst case on every budget, and open
        the ledger row before calling it. A refusal here reaches no provider and reserves nothing."""
        dep = route.deployments[0]
        if not dep.pricer.chargeable:
            raise ModelUnpriced(
                f"The model '{route.alias}' has no known price; the operator must configure one (or a "
                "ceiling) before it can be used.",
                param="model",
            )
        entry.provider = dep.target.provider
        entry.model = dep.target.upstream_model
        entry.pricer = dep.pricer
        entry.output_cap = (dep.target.max_output_tokens if output_cap is None else output_cap) * choices
        limiter = self._limiter
        if limiter.free(entry):
            limiter.record(entry, entry.body_bytes)
        else:
            try:
                await limiter.admit(entry, entry.scopes, entry.body_bytes)
            except BaseException:  # refused, or the client left while the counters were asked
                entry.pricer = None  # never reached a provider: nothing to charge
                raise
        self._ledger.open(entry)
        return dep

    def route(self, model: str, mode: str) -> Route:
        """The route for a public model name, checked against the endpoint's mode."""
        route = self.routes.get(model)
        if route is None:
            raise ModelNotFound(
                f"The model '{model}' does not exist or you do not have access to it.", param="model"
            )
        if route.mode != mode:
            what = "an embedding model" if route.mode == "embedding" else "a chat model"
            raise InvalidRequest(
                f"'{model}' is {what}; it cannot serve this endpoint.", param="model", code="invalid_model"
            )
        return route

    def _failed(
        self, dep: Deployment, status: int, headers: Mapping[str, str], body: bytes, key_id: str
    ) -> SluiceError:
        """The error for a provider's non-200 answer, logged with the provider's request id. A key the
        provider refused or throttled steps aside for the account's next one."""
        self._upstream.key_failed(dep.target.provider, key_id, status, headers.get("retry-after"))
        raw = self._upstream.redact(dep.target.provider, body)
        err = dep.adapter.error(dep.target.provider, status, headers, raw)
        upstream_id = (
            parse_error_body(raw).request_id or headers.get("x-request-id") or headers.get("request-id")
        )
        log.warning(
            "upstream error provider=%s status=%s mapped=%s upstream_request_id=%s",
            dep.target.provider,
            status,
            err.code,
            upstream_id,
        )
        return err

    async def chat(self, req: ChatRequest, route: Route, entry: Entry) -> Reply:
        """A non-stream chat completion."""
        dep = await self._admit(route, entry, _output_cap(req), req.n)
        call = dep.adapter.chat_call(req, dep.target)
        got = await _timed(entry, self._upstream.fetch(dep.target.provider, call))
        entry.upstream_status = got.status
        if got.status != 200:
            raise self._failed(dep, got.status, got.headers, got.body, got.key_id)
        try:
            out = dep.adapter.chat_response(got.body, req, dep.target)
        except _MALFORMED as exc:
            raise _unusable(dep) from exc
        return Reply(out.body, _meta_headers(dep.target), out.tokens)

    async def chat_stream(self, req: ChatRequest, route: Route, entry: Entry) -> StreamReply:
        """Open a stream: returns once the provider has answered with a 200 event stream."""
        dep = await self._admit(route, entry, _output_cap(req), req.n)
        call = dep.adapter.chat_call(req, dep.target)
        t0 = time.perf_counter_ns()  # the wait for the provider lasts until the stream has substance
        try:
            resp = await self._upstream.open_stream(dep.target.provider, call)
            entry.upstream_status = resp.status
            translator = dep.adapter.chat_stream(req, dep.target)
            reply = StreamReply(_meta_headers(dep.target), resp, dep, translator, entry)
            try:
                if resp.status != 200:
                    raise self._failed(dep, resp.status, resp.headers, await resp.error_body(), resp.key_id)
                if not resp.headers.get("content-type", "").startswith("text/event-stream"):
                    raise UpstreamError(
                        f"Provider {dep.target.provider!r} answered a stream request without a stream."
                    )
                await reply.open()
            except BaseException:
                await reply.close(error=True)
                raise
        finally:
            entry.upstream_us = _since(t0)
        return reply

    async def embeddings(self, req: EmbeddingRequest, route: Route, entry: Entry) -> Reply:
        """Embeddings, fetched as floats and encoded as base64 here when the client asked for it."""
        dep = await self._admit(route, entry, 0)
        call = dep.adapter.embeddings_call(req, dep.target)
        got = await _timed(entry, self._upstream.fetch(dep.target.provider, call))
        entry.upstream_status = got.status
        if got.status != 200:
            raise self._failed(dep, got.status, got.headers, got.body, got.key_id)
        try:
            body = orjson.loads(got.body)
            data = body["data"]
            if not isinstance(data, list) or not data:
                raise TypeError("no data")
            if req.encoding_format == "base64":
                for item in data:
                    item["embedding"] = _b64_float32(item["embedding"])
        except _MALFORMED as exc:  # orjson.JSONDecodeError is a ValueError
            raise _unusable(dep) from exc
        body.setdefault("object", "list")
        usage = body.get("usage") if isinstance(body.get("usage"), dict) else None
        tokens = from_embeddings(usage) if usage is not None else None
        return Reply(orjson.dumps(body), _meta_headers(dep.target), tokens)


def _output_cap(req: ChatRequest) -> int | None:
    """The most completion tokens per choice a request allows, or None for the deployment's cap (which the
    adapters then send upstream, so the bound is real)."""
    body = req.body
    cap = body.get("max_completion_tokens") or body.get("max_tokens")
    return None if cap is None else int(cap)


def _b64_float32(vector: list[float]) -> str:
    """Little-endian float32, base64: what the OpenAI SDK decodes by default."""
    arr = array("f", vector)
    if sys.byteorder == "big":  # pragma: no cover - the wire format is little-endian
        arr.byteswap()
    return base64.b64encode(arr.tobytes()).decode()
