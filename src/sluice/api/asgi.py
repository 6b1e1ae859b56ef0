"""The raw ASGI app for ``/v1/*``, ``/healthz`` and ``/readyz``: no framework on the hot path.

Each request: route by path and method → authenticate → read the body under the size limit →
validate → hand to the gateway → send JSON or relay SSE. Every error, whatever its origin, leaves
through ``_send_error`` in OpenAI's envelope; a bug is a 500 with a generic message, never a trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import orjson

from sluice.accounting import Accounting
from sluice.alerts.service import AlertService
from sluice.api import admin as admin_api
from sluice.api.errors import envelope, error_body, error_frame, error_headers
from sluice.cache.policy import REFRESH, SKIP, SKIPPED, USE, Decision
from sluice.cache.record import COMPLETE, STREAM, Record, calls_tools, split_events
from sluice.cache.service import ResponseCache
from sluice.errors import (
    BudgetExceeded,
    CountersUnavailable,
    InvalidRequest,
    LimitReached,
    MethodNotAllowed,
    ModelNotFound,
    ModelUnpriced,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    ServiceUnavailable,
    SluiceError,
)
from sluice.gateway import Gateway, Reply, StreamReply
from sluice.keys.policy import attribute
from sluice.keys.provider_keys import ProviderKeys
from sluice.keys.service import KeyService, Principal
from sluice.ledger.entry import (
    CUT,
    DISCONNECTED,
    ERROR,
    INTERRUPTED,
    OK,
    REFUSED,
    Entry,
    usd_text,
    wall_clock_us,
)
from sluice.ledger.sink import Content
from sluice.ledger.spend import spend_report
from sluice.limits.counters import limit_headers
from sluice.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from sluice.metrics import Metrics
from sluice.routing.table import Route
from sluice.smoke.service import SmokeService
from sluice.wire.requests import parse_json_object, validate_chat, validate_embeddings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger("sluice.api")

JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
# Headers that would let a caller choose the upstream: refused, like their body counterparts.
_FORBIDDEN_HEADER_PARTS = (b"api-base", b"base-url", b"api_base", b"base_url", b"upstream-url")


def _names_upstream(name: bytes) -> bool:
    """True for a header name that would choose the upstream. ``bytes.find``, here and before the call, not
    ``in``: ``b"x" in name`` first tries ``b"x"`` as an integer and builds (then drops) a TypeError, on every
    header of every request."""
    return any(name.find(part) >= 0 for part in _FORBIDDEN_HEADER_PARTS)


@dataclass(slots=True)
class Request:
    """What the handlers need from an ASGI scope, read once."""

    scope: Scope
    receive: Receive
    send: Send
    request_id: bytes
    token: str | None
    content_length: int | None
    arrived_ns: int
    feature: str | None = None  # x-sluice-feature
    tags: str | None = None  # x-sluice-tags
    user: str | None = None  # x-sluice-user
    cache: str | None = None  # x-sluice-cache
    started: bool = False


Handler = Callable[["SluiceAPI", Request], Awaitable[None]]
GC_THRESHOLDS = (20_000, 20, 20)
_CACHE_STATE = {
    USE: b"miss",
    REFRESH: b"miss",
    SKIP: b"skip",
}  # x-sluice-cache of an answer not from it  # young, middle, old: see the lifespan startup


class _DisconnectWatch:
    """Cancels the handling task when the client disconnects, so the upstream call stops with it.

    Set ``ending`` before the last send: from then on a disconnect is the normal end of the exchange.
    """

    __slots__ = ("_task", "ending", "gone")

    def __init__(self, receive: Receive) -> None:
        owner = asyncio.current_task()
        assert owner is not None
        self.gone = False
        self.ending = False
        self._task = asyncio.create_task(self._watch(receive, owner))

    async def _watch(self, receive: Receive, owner: asyncio.Task[Any]) -> None:
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    if not self.ending:
                        self.gone = True
                        owner.cancel()
                    return
        except asyncio.CancelledError:
            # stopped: end normally, so no exception (with its traceback and frames, a reference cycle
            # for the collector to find) outlives the request
            return
        except Exception:  # nobody awaits the watcher: its failure is logged here, not lost
            log.warning("disconnect watcher failed", exc_info=True)

    def client_left(self) -> bool:
        """After a ``CancelledError``: True (and the cancel absorbed) if the client caused it."""
        if not self.gone:
            return False
        task = asyncio.current_task()
        assert task is not None
        task.uncancel()
        return True

    def stop(self) -> None:
        """Stop watching, without waiting for the watcher to wind down (it only ends its ``receive``)."""
        self._task.cancel()


class SluiceAPI:
    """The ASGI callable."""

    def __init__(
        self,
        gateway: Gateway,
        keys: KeyService,
        max_body_bytes: int,
        ready: Callable[[], Awaitable[dict[str, bool]]],
        on_shutdown: Callable[[], Awaitable[None]],
        accounting: Accounting,
        *,
        on_startup: Callable[[], Awaitable[None]] | None = None,
        public_metrics: bool = False,
    ) -> None:
        self.gateway = gateway
        self.keys = keys
        self.accounting = accounting
        self.metrics: Metrics = accounting.metrics
        self.public_metrics = public_metrics
        self._on_startup = on_startup
        self.max_body_bytes = max_body_bytes
        self._ready = ready
        self._on_shutdown = on_shutdown
        self._created = int(time.time())
        # stored provider keys (admin API); set by ``create_app``
        self.provider_keys: ProviderKeys | None = None
        self.provider_keys_changed: Callable[[], Awaitable[None]] | None = None
        self.alerts: AlertService | None = None  # the alert log and test sends (admin API)
        self.smoke: SmokeService | None = None  # smoke runs (admin API)
        self.cache: ResponseCache | None = None  # the response cache; set by ``create_app``

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self._on_startup is not None:
                    await self._on_startup()
                # Everything alive now (modules, config, routes) lives as long as the process: move it out
                # of the collector's sight, or every full collection re-scans it on the hot path.
                gc.collect()
                gc.freeze()
                # Collect the young generation every 20,000 net allocations, not Python's 700: a request
                # allocates a few hundred tracked objects, nearly all freed by reference counting, so the
                # default ran a collection every few requests (measured: 9 % of a request's CPU).
                gc.set_threshold(*GC_THRESHOLDS)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._on_shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        arrived = time.perf_counter_ns()
        token: str | None = None
        length: int | None = None
        forbidden: bytes | None = None
        ours: dict[bytes, str] = {}
        for name, value in scope["headers"]:
            if name == b"authorization":
                if value[:7].lower() == b"bearer ":
                    token = value[7:].strip().decode("latin-1")
            elif name == b"x-api-key":
                token = token or value.strip().decode("latin-1")
            elif name == b"content-length":
                length = int(value) if value.isdigit() else None
            elif name.startswith(b"x-sluice-"):
                ours[name] = value.decode("utf-8", "replace")
            elif (name.find(b"base") >= 0 or name.find(b"upstream") >= 0) and _names_upstream(name):
                forbidden = name
        req = Request(
            scope,
            receive,
            send,
            _request_id(),
            token,
            length,
            arrived,
            ours.get(b"x-sluice-feature"),
            ours.get(b"x-sluice-tags"),
            ours.get(b"x-sluice-user"),
            ours.get(b"x-sluice-cache"),
        )
        try:
            if forbidden is not None:
                raise InvalidRequest(
                    f"The header '{forbidden.decode('latin-1')}' is not accepted: the upstream is chosen by "
                    "the gateway's configuration.",
                    code="forbidden_parameter",
                )
            await self._dispatch(req)
        except SluiceError as err:
            await self._send_error(req, err)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            await self._send_error(req, SluiceError("The gateway hit an internal error."))

    async def _dispatch(self, req: Request) -> None:
        path: str = req.scope["path"]
        method: str = req.scope["method"]
        methods = ROUTES.get(path)
        if methods is None:
            if path.startswith("/v1/models/") and len(path) > 11:
                methods = {"GET": SluiceAPI._get_model}
            elif path.startswith("/admin/keys/"):
                await admin_api.key_item(self, req, path[len("/admin/keys/") :])
                return
            elif path.startswith("/admin/alert-rules/"):
                await admin_api.alert_rule_item(self, req)
                return
            elif path.startswith("/admin/provider-keys/"):
                await admin_api.provider_key_item(self, req, path[len("/admin/provider-keys/") :])
                return
            else:
                raise NotFound(f"Unknown path: {method} {path}")
        handler = methods.get(method)
        if handler is None:
            allow = ", ".join(sorted(methods))
            raise MethodNotAllowed(
                f"Method {method} is not allowed on {path}; use {allow}.", headers={"allow": allow}
            )
        await handler(self, req)

    async def _send_error(self, req: Request, err: SluiceError) -> None:
        if req.started:  # a stream is open: the error becomes its last event
            with contextlib.suppress(OSError):
                await req.send({"type": "http.response.body", "body": error_frame(err), "more_body": False})
            return
        headers = [*JSON_HEADERS, (b"x-sluice-request-id", req.request_id), *error_headers(err)]
        if err.status == 429 and "retry-after" not in err.headers:
            headers.append((b"x-should-retry", b"false"))
        await self.respond(req, err.status, error_body(err), headers)

    async def respond(
        self, req: Request, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
    ) -> None:
        req.started = True
        # content-length, not chunked framing: one write per response, and what every client expects
        start = [*headers, (b"content-length", b"%d" % len(body))]
        await req.send({"type": "http.response.start", "status": status, "headers": start})
        await req.send({"type": "http.response.body", "body": body})

    async def read_body(self, req: Request) -> bytes:
        limit = self.max_body_bytes
        if req.content_length is not None and req.content_length > limit:
            raise PayloadTooLarge(f"The request body is larger than the limit of {limit} bytes.")
        parts: list[bytes] = []
        size = 0
        while True:
            message = await req.receive()
            if message["type"] == "http.disconnect":
                raise InvalidRequest("The client disconnected while sending the body.")
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"The request body is larger than the limit of {limit} bytes.")
                parts.append(chunk)
            if not message.get("more_body", False):
                break
        return parts[0] if len(parts) == 1 else b"".join(parts)

    @staticmethod
    def _allowed(principal: Principal, model: str, param: str = "model") -> None:
        if principal.models is not None and model not in principal.models:
            raise PermissionDenied(f"This key may not use the model '{model}'.", param=param)

    def _routes(self, principal: Principal, model: str, models: tuple[str, ...], mode: str) -> list[Route]:
        """The request's aliases as routes: its ``model``, then the fallbacks it listed in ``models``,
        each one the key may use."""
        self._allowed(principal, model)
        routes = [self.gateway.route(model, mode)]
        for name in models:
            self._allowed(principal, name, "models")
            try:
                routes.append(self.gateway.route(name, mode))
            except SluiceError as err:
                err.param = "models"
                raise
        return routes

    @staticmethod
    def _headers(
        req: Request, extra: list[tuple[bytes, bytes]], base: list[tuple[bytes, bytes]]
    ) -> list[tuple[bytes, bytes]]:
        return [*base, (b"x-sluice-request-id", req.request_id), *extra]

    # --- handlers -------------------------------------------------------------------------------

    def _begin(
        self,
        req: Request,
        principal: Principal,
        endpoint: str,
        route: Route,
        stream: bool,
        body: dict[str, Any],
        size: int,
    ) -> Entry:
        """Attribute the request (feature, tags, user; validated per key) and open its ledger entry."""
        who = attribute(principal.policy, body, req.feature, req.tags, req.user)
        return self.accounting.begin(
            req.request_id.decode(), principal, endpoint, route.alias, stream, who, size, req.arrived_ns
        )

    def _failed(self, entry: Entry, err: SluiceError) -> None:
        """Settle a request that failed before any answer reached the client."""
        status = REFUSED if isinstance(err, _REFUSALS) else ERROR
        self.accounting.settle(entry, status, err.status, error=err)

    async def _chat(self, req: Request) -> None:
        principal = await self.keys.authenticate(req.token)
        raw = await self.read_body(req)
        chat = validate_chat(parse_json_object(raw))
        routes = self._routes(principal, chat.model, chat.models, "chat")
        entry = self._begin(req, principal, "chat", routes[0], chat.stream, chat.body, len(raw))
        keep = raw if principal.policy.log_content else None
        cached = self._cached(req, principal, entry, chat.body)
        if cached.mode == USE and await self._hit(req, entry, cached):
            return
        if chat.stream:
            await self._relay(req, entry, keep, lambda: self.gateway.chat_stream(chat, routes, entry), cached)
        else:
            await self._complete(req, entry, keep, lambda: self.gateway.chat(chat, routes, entry), cached)

    def _cached(self, req: Request, principal: Principal, entry: Entry, body: dict[str, Any]) -> Decision:
        """What the response cache does with this request."""
        if self.cache is None:
            return SKIPPED
        return self.cache.decide(
            req.cache,
            endpoint=entry.endpoint,
            alias=entry.alias,
            key_id=principal.key_id,
            key_name=principal.name,
            team=principal.policy.team,
            body=body,
        )

    async def _hit(self, req: Request, entry: Entry, cached: Decision) -> bool:
        """Answer from the cache if it has the answer: nothing sent upstream, nothing charged, the saving
        recorded."""
        assert self.cache is not None
        record = await self.cache.lookup(cached, entry.alias)
        if record is None:
            return False
        entry.cache_hit = True
        entry.saved_nanos = record.cost_nanos
        entry.model = record.model
        self.accounting.settle(entry, OK, 200)
        extra = [
            (b"x-sluice-cache", b"hit"),
            (b"x-sluice-cost-usd", b"0.0"),
            (b"x-sluice-saved-usd", usd_text(record.cost_nanos).encode()),
            (b"x-sluice-model", record.model.encode()),
        ]
        if record.kind == STREAM:
            await self.respond(req, 200, record.replay(), self._headers(req, extra, SSE_HEADERS))
        else:
            await self.respond(req, 200, record.answer(), self._headers(req, extra, JSON_HEADERS))
        return True

    def _keep(
        self, entry: Entry, cached: Decision, kind: str, payload: bytes, events: tuple[bytes, ...]
    ) -> None:
        """Store a miss's answer if it may be reused: complete, with the provider's own usage, and no tool
        call unless asked for."""
        if self.cache is None or entry.usage_estimated or entry.status != OK or not entry.usage.input_tokens:
            return
        if not cached.tools and calls_tools(payload):
            return
        u = entry.usage
        record = Record(
            kind, payload if kind != STREAM else b"", events, entry.cost_nanos, u.input_tokens,
            u.output_tokens, entry.provider, entry.model, wall_clock_us(),
        )  # fmt: skip
        self.cache.keep(cached, record, entry.alias)

    async def _complete(
        self,
        req: Request,
        entry: Entry,
        keep: bytes | None,
        call: Callable[[], Awaitable[Reply]],
        cached: Decision = SKIPPED,
    ) -> None:
        """Send a complete answer; if the client leaves while it is computed, stop the upstream call."""
        watch = _DisconnectWatch(req.receive)
        try:
            reply = await call()
        except asyncio.CancelledError:
            left = watch.client_left()
            entry.client_disconnected = left
            self.accounting.settle(entry, DISCONNECTED if left else INTERRUPTED, 499 if left else 503)
            if not left:
                raise
            log.info("client disconnected before the answer request_id=%s", req.request_id.decode())
            return
        except SluiceError as err:
            self._failed(entry, err)
            raise
        except Exception:
            self.accounting.settle(entry, ERROR, 500, error=SluiceError("internal error"))
            raise
        finally:
            watch.stop()
        content = Content(entry.request_id, keep, reply.body) if keep is not None else None
        # used only if the provider sent no usage: a guess from the answer's size that errs high
        body_tokens = -(-len(reply.body) // 4) if entry.endpoint == "chat" else 0
        self.accounting.settle(entry, OK, 200, tokens=reply.tokens, delivered=body_tokens, content=content)
        extra = [*reply.headers, (b"x-sluice-cost-usd", usd_text(entry.cost_nanos).encode())]
        if cached.mode != SKIP:
            self._keep(entry, cached, COMPLETE, reply.body, ())
        extra.append((b"x-sluice-cache", _CACHE_STATE[cached.mode]))
        if entry.hold is not None:
            extra += limit_headers(entry.hold, entry.ts_us, entry.cost_nanos)
        await self.respond(req, 200, reply.body, self._headers(req, extra, JSON_HEADERS))

    async def _relay(
        self,
        req: Request,
        entry: Entry,
        keep: bytes | None,
        opener: Callable[[], Awaitable[StreamReply]],
        cached: Decision = SKIPPED,
    ) -> None:
        """Open a stream and send it to the client, then settle it, whatever happened.

        The client leaving — while the stream is still being opened, or mid-stream — cancels this
        task, which closes the upstream request. A client too slow to take a chunk
        within the provider's idle deadline is dropped, so it cannot pin an upstream connection.
        """
        watch = _DisconnectWatch(req.receive)
        stream: StreamReply | None = None
        sent: list[bytes] | None = [] if keep is not None or cached.mode != SKIP else None
        failed = False
        try:
            stream = await opener()
            req.started = True
            extra = [*stream.headers, (b"x-sluice-cache", _CACHE_STATE[cached.mode])]
            if entry.hold is not None:
                extra = [*extra, *limit_headers(entry.hold, entry.ts_us)]
            headers = self._headers(req, extra, SSE_HEADERS)
            await req.send({"type": "http.response.start", "status": 200, "headers": headers})
            async for frames in stream.frames():
                async with asyncio.timeout(stream.client_idle):
                    await req.send({"type": "http.response.body", "body": frames, "more_body": True})
                if entry.ttft_us is None:
                    entry.ttft_us = (time.perf_counter_ns() - entry.started_ns) // 1000
                if sent is not None:
                    sent.append(frames)
            watch.ending = True
            await req.send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            failed = True
            left = watch.client_left()
            entry.client_disconnected = left
            self._unfinished(entry, stream, DISCONNECTED if left else INTERRUPTED, 499 if left else 503)
            if not left:
                raise
            log.info("client disconnected mid-stream request_id=%s", req.request_id.decode())
        except TimeoutError:
            failed = True
            entry.client_disconnected = True
            self._unfinished(entry, stream, DISCONNECTED, 408)
            log.warning("client too slow to read the stream request_id=%s", req.request_id.decode())
        except SluiceError as err:
            failed = True
            if not req.started:
                self._failed(entry, err)
                raise  # nothing sent yet: the caller renders a normal error response
            self._unfinished(entry, stream, CUT, 200, err)
            watch.ending = True
            log.warning("stream failed request_id=%s code=%s", req.request_id.decode(), err.code)
            await self._send_error(req, err)
        except Exception:
            failed = True
            self._unfinished(entry, stream, ERROR, 500, SluiceError("internal error"))
            raise
        finally:
            watch.stop()
            if stream is not None:
                await stream.close(error=failed)
        if not failed and stream is not None:
            content = Content(entry.request_id, keep, b"".join(sent)) if keep is not None and sent else None
            self.accounting.settle(
                entry,
                OK,
                200,
                tokens=stream.final_tokens,
                delivered=stream.delivered(),
                charge=stream.charge,
                content=content,
            )
            events = split_events(sent) if cached.mode != SKIP and sent is not None else None
            if events is not None and stream.final_tokens is not None:
                self._keep(entry, cached, STREAM, b"".join(events), events)

    def _unfinished(
        self, entry: Entry, stream: StreamReply | None, status: str, http: int, err: SluiceError | None = None
    ) -> None:
        """Settle a stream that did not finish: priced from what was reported and delivered."""
        tokens = stream.tokens if stream is not None else None
        delivered = stream.delivered() if stream is not None else 0
        self.accounting.settle(entry, status, http, error=err, tokens=tokens, delivered=delivered)

    async def _embeddings(self, req: Request) -> None:
        principal = await self.keys.authenticate(req.token)
        raw = await self.read_body(req)
        emb = validate_embeddings(parse_json_object(raw))
        routes = self._routes(principal, emb.model, emb.models, "embedding")
        entry = self._begin(req, principal, "embeddings", routes[0], False, emb.body, len(raw))
        keep = raw if principal.policy.log_content else None
        cached = self._cached(req, principal, entry, emb.body)
        if cached.mode == USE and await self._hit(req, entry, cached):
            return
        await self._complete(req, entry, keep, lambda: self.gateway.embeddings(emb, routes, entry), cached)

    def _model_card(self, route: Route) -> dict[str, Any]:
        return {"id": route.alias, "object": "model", "created": self._created, "owned_by": route.owned_by}

    async def _list_models(self, req: Request) -> None:
        principal = await self.keys.authenticate(req.token)
        data = [
            self._model_card(r)
            for r in self.gateway.routes.values()
            if principal.models is None or r.alias in principal.models
        ]
        body = orjson.dumps({"object": "list", "data": data})
        await self.respond(req, 200, body, self._headers(req, [], JSON_HEADERS))

    async def _get_model(self, req: Request) -> None:
        principal = await self.keys.authenticate(req.token)
        model_id = req.scope["path"][len("/v1/models/") :]
        route = self.gateway.routes.get(model_id)
        if route is None or (principal.models is not None and model_id not in principal.models):
            raise ModelNotFound(
                f"The model '{model_id}' does not exist or you do not have access to it.", param="model"
            )
        await self.respond(
            req, 200, orjson.dumps(self._model_card(route)), self._headers(req, [], JSON_HEADERS)
        )

    async def admin(self, req: Request) -> Principal:
        principal = await self.keys.authenticate(req.token)
        if not principal.is_admin:
            raise PermissionDenied("This endpoint needs the admin key.")
        return principal

    async def _metrics(self, req: Request) -> None:
        if not self.public_metrics:
            await self.admin(req)
        body = self.metrics.render()
        await self.respond(req, 200, body, [(b"content-type", METRICS_CONTENT_TYPE)])

    async def _spend(self, req: Request) -> None:
        await self.admin(req)
        query = parse_qs(req.scope.get("query_string", b"").decode("latin-1"))
        fmt = query.get("format", ["json"])[0]
        if fmt not in ("json", "csv"):
            raise InvalidRequest("'format' must be json or csv.", param="format")
        report = await spend_report(
            self.accounting.ledger,
            by=query.get("by", ["feature"])[0],
            since=query.get("since", [None])[0],
            until=query.get("until", [None])[0],
            top=_int_param(query.get("top", [None])[0], "top"),
        )
        if fmt == "csv":
            await self.respond(req, 200, report.to_csv().encode(), [(b"content-type", b"text/csv")])
        else:
            await self.respond(req, 200, report.to_json(), self._headers(req, [], JSON_HEADERS))

    async def _healthz(self, req: Request) -> None:
        await self.respond(req, 200, b'{"status":"ok"}', JSON_HEADERS)

    async def _readyz(self, req: Request) -> None:
        checks = await self._ready()
        if not all(checks.values()):
            err = ServiceUnavailable("Not ready: " + ", ".join(k for k, ok in checks.items() if not ok))
            await self.respond(
                req,
                503,
                orjson.dumps({"status": "not_ready", "checks": checks, **envelope(err)}),
                JSON_HEADERS,
            )
            return
        await self.respond(req, 200, orjson.dumps({"status": "ready", "checks": checks}), JSON_HEADERS)


ROUTES: dict[str, dict[str, Handler]] = {
    "/v1/chat/completions": {"POST": SluiceAPI._chat},
    "/v1/embeddings": {"POST": SluiceAPI._embeddings},
    "/v1/models": {"GET": SluiceAPI._list_models},
    "/healthz": {"GET": SluiceAPI._healthz, "HEAD": SluiceAPI._healthz},
    "/readyz": {"GET": SluiceAPI._readyz, "HEAD": SluiceAPI._readyz},
    "/metrics": {"GET": SluiceAPI._metrics},
    "/admin/spend": {"GET": SluiceAPI._spend},
    "/admin/keys": {"GET": admin_api.keys_collection, "POST": admin_api.keys_collection},
    "/admin/limits": {"GET": admin_api.limits},
    "/admin/deployments": {"GET": admin_api.deployments},
    "/admin/provider-keys": {"GET": admin_api.provider_keys, "POST": admin_api.provider_keys},
    "/admin/alerts": {"GET": admin_api.alerts},
    "/admin/alerts/test": {"POST": admin_api.alert_test},
    "/admin/credits": {"GET": admin_api.credit_runways},
    "/admin/smoke": {"GET": admin_api.smoke_runs, "POST": admin_api.smoke},
    "/admin/readiness": {"GET": admin_api.readiness},
    "/admin/alert-rules": {"GET": admin_api.alert_rules},
    "/admin/openapi.json": {"GET": admin_api.openapi},
}
# Refused before any provider was called: recorded as such, never charged.
_REFUSALS = (ModelUnpriced, BudgetExceeded, LimitReached, CountersUnavailable)


_ID_PREFIX = os.urandom(4).hex().encode()  # per process: ids from several workers never collide
_ID_COUNTER = itertools.count()


def _request_id() -> bytes:
    """``req_`` + the time in ns (hex) + this process's random tag + a counter: unique, in time order (the
    ledger's key index grows at its end instead of splitting pages), and no system call per request."""
    return b"req_%016x%s%06x" % (time.time_ns(), _ID_PREFIX, next(_ID_COUNTER) & 0xFFFFFF)


def _int_param(value: str | None, name: str) -> int | None:
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()) or int(value) < 1:
        raise InvalidRequest(f"'{name}' must be a positive integer.", param=name)
    return int(value)
