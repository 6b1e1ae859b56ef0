"""The provider emulator: every dialect Sluice speaks, with its quirks and injectable faults.

One server plays every provider; the first path segment picks which (``/deepseek/v1/chat/completions``,
``/anthropic/v1/messages``, ``/gemini/v1beta/openai/chat/completions``, …). ``Emulator.base_url(name)``
gives the base URL a preset should use. Usable from users' own tests through ``sluice.testing``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import replace
from typing import Any

import orjson

from sluice.emulator import anthropic_dialect, openai_dialect, quotas
from sluice.emulator.faults import Faults, from_body, parse_spec
from sluice.emulator.http import HTTPServer, Incoming, Plan
from sluice.providers.presets import PRESETS

_HTML_502 = b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"
_NO_AUTH = frozenset({"ollama", "vllm", "openai_compatible"})
# Base path under each flavor's prefix, mirroring the real provider's URL layout.
_BASE_PATHS = {
    "dashscope": "/compatible-mode/v1",
    "openrouter": "/api/v1",
    "gemini": "/v1beta/openai",
    "groq": "/openai/v1",
    "deepseek": "",
    "openrouter_free": "/api/v1",
    "cloudflare": "/client/v4/accounts/emu/ai/v1",
    "cohere": "/compatibility/v1",
    "zai": "/api/paas/v4",
}
_DIALECT = {"openrouter_free": "openrouter"}  # a flavor that answers as another does


def flavor_url(root: str, flavor: str) -> str:
    """The base URL for ``flavor`` on an emulator listening at ``root``."""
    if flavor == "anthropic":
        return f"{root}/anthropic/v1"
    return f"{root}/{flavor}{_BASE_PATHS.get(flavor, '/v1')}"


class Emulator:
    """Plays every provider; runs in the current loop (``start``) or its own thread (``start_in_thread``)."""

    def __init__(self, faults: str = "", model_faults: dict[str, str] | None = None) -> None:
        self._defaults = parse_spec(faults)
        self._model_faults = {m: parse_spec(s, self._defaults) for m, s in (model_faults or {}).items()}
        self._server = HTTPServer(self.handle)
        self.host = "127.0.0.1"
        self.port = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.requests = 0
        self.by_model: dict[str, int] = {}  # requests per upstream model name
        self.by_flavor: dict[str, int] = {}  # completions served per flavor (Groq's headers count them)
        self.balance = "10.00"  # DeepSeek's balance, in USD
        self.extra_models: list[str] = []  # listed by every flavor's /models besides its demo models

    def set_model_faults(self, model: str, spec: str | None) -> None:
        """Change (or, with None, clear) the faults of one upstream model while running: a provider that
        goes down, then recovers."""
        if spec is None:
            self._model_faults.pop(model, None)
        else:
            self._model_faults[model] = parse_spec(spec, self._defaults)

    @property
    def url(self) -> str:
        """The emulator's root URL."""
        return f"http://{self.host}:{self.port}"

    def base_url(self, flavor: str) -> str:
        """The base URL a provider preset should use to reach this emulator's ``flavor``."""
        return flavor_url(self.url, flavor)

    @property
    def in_flight(self) -> int:
        """Answers still being sent (delayed or paced): 0 once every client has been answered or left."""
        return self._server.in_flight

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen in the running event loop."""
        self.host = host
        self.port = await self._server.start(host, port)

    async def stop(self) -> None:
        """Stop listening and drop connections."""
        await self._server.stop()

    def start_in_thread(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Run in a daemon thread with its own event loop; returns once listening."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self.start(host, port))
            except BaseException as exc:  # noqa: BLE001  (surfaced to the caller below)
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        self._thread = threading.Thread(target=run, name="sluice-emulator", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]

    def stop_thread(self) -> None:
        """Stop a thread started by ``start_in_thread``."""
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            self._thread = None

    # --- request handling -----------------------------------------------------------------------

    def _faults(self, incoming: Incoming, model: Any) -> Faults:
        base = self._model_faults.get(model, self._defaults) if isinstance(model, str) else self._defaults
        header = incoming.headers.get("x-emulator-fault")
        if header:
            base = parse_spec(header, base)
        if b"@emulator(" in incoming.body:
            base = from_body(incoming.body, base)
        return base

    def handle(self, incoming: Incoming) -> Plan:
        """Answer one request (synchronously; delays are in the returned plan)."""
        self.requests += 1
        parts = incoming.path.split("/", 2)
        flavor = parts[1] if len(parts) > 1 else ""
        if flavor not in PRESETS:
            return openai_dialect.error_plan(
                "openai", 404, Faults(), f"unknown emulator path {incoming.path}"
            )
        path = incoming.path
        if incoming.method == "GET":
            if flavor not in _NO_AUTH and not _has_auth(incoming.headers):
                return _error(flavor, 401, Faults())
            presented = incoming.headers.get("x-api-key") or incoming.headers.get("authorization", "")
            try:
                f = self._faults(incoming, None)
            except ValueError as exc:
                return _error(flavor, 400, Faults(), str(exc))
            if f.bad_key and f.bad_key in presented:  # a revoked key lists nothing either
                return _error(flavor, 401, f)
            balance = quotas.balance_plan(flavor, path, self.by_flavor.get(flavor, 0), self.balance)
            if balance is not None:
                return balance
        if incoming.method == "GET" and path.endswith("/models"):
            names = [m.upstream for m in PRESETS[flavor].demo_models] + self.extra_models
            return openai_dialect.models(flavor, names)
        if incoming.method != "POST":
            return _error(flavor, 405, Faults(), "method not allowed")
        try:
            body = orjson.loads(incoming.body)
            if not isinstance(body, dict):
                raise TypeError("not an object")
        except (orjson.JSONDecodeError, TypeError):
            return _error(flavor, 400, Faults(), "We could not parse the JSON body of your request.")
        model = body.get("model")
        if isinstance(model, str):
            self.by_model[model] = self.by_model.get(model, 0) + 1
        try:
            f = self._faults(incoming, model)
        except ValueError as exc:
            return _error(flavor, 400, Faults(), str(exc))
        if f.hang:
            return Plan(hang=True)
        if f.reset:
            return Plan(reset=True)
        if f.html:
            return Plan(status=502, body=_HTML_502, content_type="text/html", latency=f.latency_ms / 1000)
        if flavor not in _NO_AUTH and not _has_auth(incoming.headers):
            return _error(flavor, 401, f)
        presented = incoming.headers.get("x-api-key") or incoming.headers.get("authorization", "")
        if f.bad_key and f.bad_key in presented:
            return _error(flavor, 401, f)
        if f.busy_key and f.busy_key in presented:
            return _error(flavor, 429, replace(f, retry_after=f.retry_after or "30"))
        if f.quota:
            return quotas.quota_plan(flavor, f.quota, model if isinstance(model, str) else "")
        if f.status:
            echo = incoming.headers.get("x-api-key") or incoming.headers.get("authorization", "")
            plan = _error(
                flavor,
                f.status,
                f,
                f"Invalid request for key {echo[7:] if echo.startswith('Bearer') else echo}"
                if f.echo_key
                else None,
            )
            plan.latency = f.latency_ms / 1000
            return plan
        try:
            if flavor == "anthropic":
                if path.endswith("/messages"):
                    return anthropic_dialect.messages(incoming.headers, body, f)
            elif path.endswith("/chat/completions"):
                bad = _bad_messages(body.get("messages"))
                if bad is not None:
                    return _error(flavor, 400, f, bad)
                plan = openai_dialect.chat(_DIALECT.get(flavor, flavor), body, f)
                served = self.by_flavor[flavor] = self.by_flavor.get(flavor, 0) + 1
                plan.headers += quotas.rate_headers(flavor, served)
                return plan
            elif path.endswith("/embeddings") and PRESETS[flavor].embeddings:
                return openai_dialect.embeddings(flavor, body, f)
        except (TypeError, KeyError, AttributeError, ValueError, IndexError) as exc:
            # a body the emulator cannot play (the real provider would say 400 too)
            return _error(flavor, 400, f, f"The emulator cannot answer this request: {exc!r}")
        return _error(flavor, 404, f, f"unknown path {path}")


_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


def _bad_messages(messages: Any) -> str | None:
    """Why a chat request's messages are invalid (a real provider answers 400), or None."""
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty array."
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in _ROLES:
            return f"Invalid value for 'messages[{i}].role'."
    return None


def _has_auth(headers: dict[str, str]) -> bool:
    auth = headers.get("authorization", "")
    return (auth.lower().startswith("bearer ") and len(auth) > 7) or bool(headers.get("x-api-key"))


def _error(flavor: str, status: int, f: Faults, message: str | None = None) -> Plan:
    if f.raw_error:  # a provider (or a proxy in front of it) that does not speak OpenAI's error shape
        return Plan(status=status, body=orjson.dumps({"detail": message or "error"}))
    if flavor == "anthropic":
        return anthropic_dialect.error_plan(status, f, message)
    return openai_dialect.error_plan(_DIALECT.get(flavor, flavor), status, f, message)


@contextlib.contextmanager
def running_emulator(**kwargs: Any) -> Any:
    """Context manager: an emulator in a background thread for the duration of the block."""
    emu = Emulator(**kwargs)
    emu.start_in_thread()
    try:
        yield emu
    finally:
        emu.stop_thread()
