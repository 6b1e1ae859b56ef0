"""Server-sent events: an incremental decoder for upstream bytes and encoders for our own frames."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

DONE_FRAME = b"data: [DONE]\n\n"
MAX_EVENT_BYTES = 8 * 1024 * 1024  # one event larger than this is a broken or hostile stream


@dataclass(slots=True)
class Event:
    """One SSE event. ``data`` is None for a comment-only frame; ``comment`` holds its text."""

    data: bytes | None
    event: str | None = None
    comment: bytes | None = None


class SSEDecoder:
    """Splits a byte stream into events; tolerant of CRLF and of frames split across reads."""

    __slots__ = ("_buf", "_limit", "_skip_lf")

    def __init__(self, limit: int = MAX_EVENT_BYTES) -> None:
        self._buf = b""
        self._limit = limit
        self._skip_lf = False  # the last read ended in CR: a LF starting the next one belongs to it

    def feed(self, chunk: bytes) -> list[Event]:
        """Add bytes; return every event completed by them."""
        if self._skip_lf and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._skip_lf = chunk.endswith(b"\r")
        if chunk.find(b"\r") >= 0:  # not ``in``: it builds and drops a TypeError first (see api.asgi)
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        held = len(self._buf)
        buf = self._buf + chunk if held else chunk
        events: list[Event] = []
        start = 0
        scan = max(held - 1, 0)  # the held bytes hold no "\n\n": search only where a new one can be
        while True:
            end = buf.find(b"\n\n", scan)
            if end < 0:
                break
            frame = buf[start:end]
            start = scan = end + 2
            if frame:
                events.append(_parse_frame(frame))
        self._buf = buf[start:]
        if len(self._buf) > self._limit:
            raise ValueError(f"an SSE event is larger than {self._limit} bytes")
        return events

    def pending(self) -> bytes:
        """Bytes received but not yet completing an event (a stream cut mid-frame leaves some)."""
        return self._buf


def _parse_frame(frame: bytes) -> Event:
    if frame.startswith(b"data: ") and b"\n" not in frame:
        return Event(data=frame[6:])  # the common case: one data line
    data_lines: list[bytes] = []
    event: str | None = None
    comment: bytes | None = None
    for line in frame.split(b"\n"):
        if line.startswith(b":"):
            comment = line[1:].strip()
            continue
        field, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if field == b"data":
            data_lines.append(value)
        elif field == b"event":
            event = value.decode("utf-8", "replace")
    data = b"\n".join(data_lines) if data_lines else None
    return Event(data=data, event=event, comment=comment if data is None else None)


def data_frame(payload: Any) -> bytes:
    """Encode one JSON payload as an SSE ``data:`` frame."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def raw_frame(payload: bytes) -> bytes:
    """Frame already-serialised JSON bytes."""
    return b"data: " + payload + b"\n\n"


def named_frame(event: str, payload: Any) -> bytes:
    """Encode a frame with an ``event:`` line (Anthropic's stream uses these)."""
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"
