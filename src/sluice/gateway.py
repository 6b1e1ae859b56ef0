"""One request's life after the HTTP edge: route → translate → upstream → relay.

The HTTP surface (``sluice.api``) authenticates and validates; this module turns a validated request
and its route into an upstream call and an answer in OpenAI's shape. Budgets, the ledger and fallback
plug in here in later stages.
"""

from __future__ import annotations

import base64
import logging
from array import array
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from sluice.errors import InvalidRequest, ModelNotFound, SluiceError, UpstreamError
from sluice.routing.table import Deployment, Route
from sluice.upstream import Upstream, UpstreamResponse
from sluice.wire.requests import ChatRequest, EmbeddingRequest

log = logging.getLogger("sluice.gateway")


@dataclass(slots=True)
class Reply:
    """A complete (non-stream) answer."""

    body: bytes
    headers: list[tuple[bytes, bytes]]
    usage: dict[str, Any] | None = None


@dataclass(slots=True)
class StreamReply:
    """An open stream: headers to send first, then ``frames()``; ``close()`` must always run."""

    headers: list[tuple[bytes, bytes]]
    _resp: UpstreamResponse
    _deployment: Deployment
    _translator: Any
    delivered: int = field(default=0)

    @property
    def usage(self) -> dict[str, Any] | None:
        """Usage reported by the provider so far (None if it never said)."""
        usage: dict[str, Any] | None = self._translator.usage
        return usage

    async def frames(self) -> AsyncIterator[bytes]:
        """Client-ready SSE bytes; raises ``SluiceError`` if the upstream fails mid-stream."""
        translator = self._translator
        async for events in self._resp.events():
            out: list[bytes] = []
            for event in events:
                out += translator.feed(event)
            if out:
                self.delivered += len(out)
                yield b"".join(out)
            if translator.done:
                break
        if not translator.done:
            raise UpstreamError(
                f"Provider {self._deployment.target.provider!r} ended the stream before it was complete."
            )
        yield b"".join(translator.finish())

    async def close(self, *, error: bool = False) -> None:
        """Release (or, after an error or disconnect, drop) the upstream connection."""
        await self._resp.__aexit__(RuntimeError if error else None, None, None)


def _meta_headers(dep: Deployment) -> list[tuple[bytes, bytes]]:
    t = dep.target
    return [
        (b"x-sluice-provider", t.provider.encode()),
        (b"x-sluice-model", t.upstream_model.encode()),
        (b"x-sluice-attempts", b"1"),
    ]


class Gateway:
    """The request life for chat completions and embeddings."""

    def __init__(self, routes: dict[str, Route], upstream: Upstream) -> None:
        self.routes = routes
        self._upstream = upstream

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

    async def _failed(self, dep: Deployment, resp: UpstreamResponse) -> SluiceError:
        raw = await self._upstream.error_body(resp)
        err = dep.adapter.error(dep.target.provider, resp.status, resp.headers, raw)
        log.warning(
            "upstream error provider=%s status=%s mapped=%s", dep.target.provider, resp.status, err.code
        )
        return err

    async def chat(self, req: ChatRequest, route: Route) -> Reply:
        """A non-stream chat completion."""
        dep = route.deployments[0]
        call = dep.adapter.chat_call(req, dep.target)
        async with await self._upstream.send(dep.target.provider, call, stream=False) as resp:
            if resp.status != 200:
                raise await self._failed(dep, resp)
            raw = await resp.read()
        out = dep.adapter.chat_response(raw, req, dep.target)
        return Reply(out.body, _meta_headers(dep), out.usage)

    async def chat_stream(self, req: ChatRequest, route: Route) -> StreamReply:
        """Open a stream: returns once the provider has answered with a 200 event stream."""
        dep = route.deployments[0]
        call = dep.adapter.chat_call(req, dep.target)
        resp = await self._upstream.send(dep.target.provider, call, stream=True)
        try:
            if resp.status != 200:
                raise await self._failed(dep, resp)
            if not resp.headers.get("content-type", "").startswith("text/event-stream"):
                raw = await self._upstream.error_body(resp)
                raise dep.adapter.error(dep.target.provider, 502 if b'"error"' not in raw else 400, {}, raw)
        except BaseException:
            await resp.__aexit__(RuntimeError, None, None)
            raise
        return StreamReply(_meta_headers(dep), resp, dep, dep.adapter.chat_stream(req, dep.target))

    async def embeddings(self, req: EmbeddingRequest, route: Route) -> Reply:
        """Embeddings, fetched as floats and encoded as base64 here when the client asked for it."""
        dep = route.deployments[0]
        call = dep.adapter.embeddings_call(req, dep.target)
        async with await self._upstream.send(dep.target.provider, call, stream=False) as resp:
            if resp.status != 200:
                raise await self._failed(dep, resp)
            raw = await resp.read()
        try:
            body = orjson.loads(raw)
            data = body["data"]
            if not isinstance(data, list) or not data:
                raise TypeError("no data")
            if req.encoding_format == "base64":
                for item in data:
                    item["embedding"] = _b64_float32(item["embedding"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise UpstreamError(
                f"Provider {dep.target.provider!r} sent an unusable embeddings response."
            ) from exc
        body.setdefault("object", "list")
        usage = body.get("usage") if isinstance(body.get("usage"), dict) else None
        return Reply(orjson.dumps(body), _meta_headers(dep), usage)


def _b64_float32(vector: list[float]) -> str:
    """Little-endian float32, base64: what the OpenAI SDK decodes by default."""
    arr = array("f", vector)
    if arr.itemsize != 4:  # pragma: no cover - every supported platform has 4-byte floats
        raise ValueError("float32 unavailable")
    import sys  # noqa: PLC0415  (only for the rare big-endian host)

    if sys.byteorder == "big":  # pragma: no cover
        arr.byteswap()
    return base64.b64encode(arr.tobytes()).decode()
