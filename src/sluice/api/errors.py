"""The one place that renders error bodies: OpenAI's envelope, as JSON and as an SSE frame."""

from __future__ import annotations

from typing import Any

import orjson

from sluice.errors import SluiceError


def envelope(err: SluiceError) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}`` — every key present, nulls included."""
    return {"error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}}


def error_body(err: SluiceError) -> bytes:
    """The JSON body of an error response."""
    return orjson.dumps(envelope(err))


def error_frame(err: SluiceError) -> bytes:
    """An in-stream error event; the OpenAI SDK raises ``APIError`` on it."""
    return b"data: " + orjson.dumps(envelope(err)) + b"\n\n"


def error_headers(err: SluiceError) -> list[tuple[bytes, bytes]]:
    """Headers an error carries (``retry-after`` from a provider's 429, ``allow`` on 405)."""
    return [(k.encode(), v.encode()) for k, v in err.headers.items()]
