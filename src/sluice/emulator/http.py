"""A small, fast HTTP/1.1 server for the emulator: asyncio protocol + httptools, keep-alive, chunked SSE.

Fast enough never to be a benchmark's bottleneck: a healthy JSON answer is written synchronously from
the parser callback; only answers with delays, streams with pacing, or hangs spawn a task.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus

import httptools


@dataclass(slots=True)
class Incoming:
    """A parsed request."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass(slots=True)
class Plan:
    """What to send back: a JSON/HTML body, or a list of SSE frames, with timing and faults."""

    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    content_type: str = "application/json"
    frames: list[bytes] | None = None
    latency: float = 0.0
    ttft: float = 0.0
    pace: float = 0.0
    cut_after: int = -1
    hang: bool = False
    close: bool = False  # close the connection once this answer is written
    reset: bool = False  # close the connection at once, answering nothing


Handler = Callable[[Incoming], Plan]


def _head(status: int, content_type: str, headers: list[tuple[str, str]], length: int | None) -> bytes:
    prefix = _head_prefix(status, content_type, tuple(headers))
    if length is None:
        return prefix + b"transfer-encoding: chunked\r\n\r\n"
    return prefix + b"content-length: %d\r\n\r\n" % length


@functools.lru_cache(maxsize=256)
def _head_prefix(status: int, content_type: str, headers: tuple[tuple[str, str], ...]) -> bytes:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Overloaded" if status == 529 else "Error"
    lines = [
        f"HTTP/1.1 {status} {reason}",
        f"content-type: {content_type}",
        *(f"{k}: {v}" for k, v in headers),
    ]
    return ("\r\n".join(lines) + "\r\n").encode("latin-1")


class _Connection(asyncio.Protocol):
    def __init__(self, handler: Handler, tasks: set[asyncio.Task[None]], conns: set[_Connection]) -> None:
        self._handler = handler
        self._tasks = tasks
        self._conns = conns
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._task: asyncio.Task[None] | None = None
        self._queue: collections.deque[Plan] = collections.deque()
        self._hung = False
        self._broken = False  # a request did not parse: ignore the rest of the connection

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it: no isinstance check
        self._transport = transport  # type: ignore[assignment]
        self._conns.add(self)

    def data_received(self, data: bytes) -> None:
        if self._broken:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            # answered in order, after anything still being sent, and then the connection is closed
            self._broken = True
            self._enqueue(
                Plan(
                    status=400,
                    headers=[("connection", "close")],
                    content_type="text/plain",
                    body=b"bad request",
                    close=True,
                )
            )

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._conns.discard(self)
        if self._task is not None:
            self._task.cancel()  # the client left: stop pacing out an answer nobody reads

    def close(self) -> None:
        """Drop the connection (used on shutdown)."""
        if self._transport is not None:
            self._transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._body = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        method = self._parser.get_method().decode()
        path = self._url.split(b"?", 1)[0].decode("latin-1")
        incoming = Incoming(method, path, self._headers, b"".join(self._body))
        self._enqueue(self._handler(incoming))

    def _enqueue(self, plan: Plan) -> None:
        if self._hung or (self._task is not None and not self._task.done()):
            self._queue.append(plan)  # pipelined: answers go out in request order
            return
        self._start(plan)

    def _start(self, plan: Plan) -> None:
        """Send ``plan`` (and any queued after it that need no waiting), or hand it to a task."""
        while True:
            if plan.hang:
                self._hung = True  # never answer, nor anything pipelined behind it
                return
            if plan.reset:
                if self._transport is not None:
                    self._transport.abort()
                return
            if plan.frames is not None or plan.latency > 0:
                break
            self._write(_head(plan.status, plan.content_type, plan.headers, len(plan.body)) + plan.body)
            if plan.close:
                self.close()
                return
            if not self._queue:
                return
            plan = self._queue.popleft()
        # Reading goes on meanwhile (pipelined requests queue up, and a client that leaves is noticed).
        task = asyncio.get_running_loop().create_task(self._send_plan(plan))
        self._task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    async def _send_plan(self, plan: Plan) -> None:
        try:
            if plan.latency > 0:
                await asyncio.sleep(plan.latency)
            if plan.frames is None:
                self._write(_head(plan.status, plan.content_type, plan.headers, len(plan.body)) + plan.body)
                return
            self._write(_head(plan.status, plan.content_type, plan.headers, None))
            if plan.pace <= 0 and plan.ttft <= 0 and plan.cut_after < 0:
                payload = b"".join(plan.frames)
                self._write(b"%x\r\n%b\r\n0\r\n\r\n" % (len(payload), payload))
                return
            for i, frame in enumerate(plan.frames):
                delay = plan.ttft if i == 0 else plan.pace
                if delay > 0:
                    await asyncio.sleep(delay)
                if i == plan.cut_after:
                    if self._transport is not None:
                        self._transport.close()  # no terminating chunk: the stream is cut
                    return
                self._write(b"%x\r\n%b\r\n" % (len(frame), frame))
            self._write(b"0\r\n\r\n")
        finally:
            task = asyncio.current_task()
            cancelled = task is not None and task.cancelling() > 0  # shutting down: start nothing new
            if (
                self._queue
                and not cancelled
                and self._transport is not None
                and not self._transport.is_closing()
            ):
                self._start(self._queue.popleft())


class HTTPServer:
    """Owns the listening socket and the connection tasks."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._conns: set[_Connection] = set()

    @property
    def in_flight(self) -> int:
        """Answers still being sent (delayed or paced)."""
        return len(self._tasks)

    async def start(self, host: str, port: int) -> int:
        """Listen; return the bound port (useful with port 0)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self._handler, self._tasks, self._conns),
            host,
            port,
            reuse_address=True,
            backlog=2048,
        )
        sock = self._server.sockets[0]
        return int(sock.getsockname()[1])

    async def stop(self) -> None:
        """Stop listening, cancel in-flight answers, close connections."""
        if self._server is None:
            return
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for conn in list(self._conns):
            conn.close()
        await self._server.wait_closed()
        self._server = None
