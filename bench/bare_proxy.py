"""A bare proxy: the stack Sluice is built on, with no gateway logic (the benchmark's middle baseline).

    python bench/bare_proxy.py --port P --upstream http://127.0.0.1:EMUPORT/openai/v1

uvicorn (uvloop, httptools, no access log, no proxy/server/date headers) serving a raw ASGI app that
POSTs every request body unchanged to ``{upstream}/chat/completions`` through one shared aiohttp
session and relays the answer: a JSON body in one send, a stream chunk by chunk as it arrives.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp
import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class BareProxy:
    def __init__(self, upstream: str, api_key: str) -> None:
        self.url = upstream.rstrip("/") + "/chat/completions"
        self.headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await receive()  # lifespan.startup
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=1024),
                auto_decompress=False,
                timeout=aiohttp.ClientTimeout(total=None),
                headers=self.headers,
            )
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown
            await self.session.close()
            await send({"type": "lifespan.shutdown.complete"})
            return
        assert self.session is not None  # created at lifespan startup
        chunks = []
        while True:
            msg = await receive()
            chunks.append(msg.get("body", b""))
            if not msg.get("more_body"):
                break
        start: Message = {"type": "http.response.start", "status": 502}
        try:
            async with self.session.post(self.url, data=b"".join(chunks)) as resp:
                start["status"] = resp.status
                ctype = resp.headers.get("Content-Type", "application/json").encode()
                if ctype.startswith(b"text/event-stream"):
                    await send({**start, "headers": [(b"content-type", ctype)]})
                    with contextlib.suppress(aiohttp.ClientError):  # cut mid-stream: end ours too
                        async for chunk in resp.content.iter_any():
                            await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    await send({"type": "http.response.body", "body": b""})
                    return
                body = await resp.read()
        except aiohttp.ClientError:
            start["status"], ctype, body = 502, b"text/plain", b"upstream failed"
        length = str(len(body)).encode()
        await send({**start, "headers": [(b"content-type", ctype), (b"content-length", length)]})
        await send({"type": "http.response.body", "body": body})


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--upstream", required=True, help="an OpenAI-compatible base URL, ending in /v1")
    parser.add_argument("--api-key", default="bench-emulator-key", help="bearer key sent upstream")
    args = parser.parse_args()
    config = uvicorn.Config(
        BareProxy(args.upstream, args.api_key),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        proxy_headers=False,
        server_header=False,
        date_header=False,
        log_level="warning",
        backlog=2048,
        timeout_keep_alive=30,
        lifespan="on",
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
