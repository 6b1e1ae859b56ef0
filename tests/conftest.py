"""Shared fixtures: a real emulator and a real Sluice server on 127.0.0.1, and real openai clients."""

from __future__ import annotations

import asyncio
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import coverage
import openai
import orjson
import pytest
import uvicorn
from hypothesis import HealthCheck, settings

from sluice.api.asgi import SluiceAPI
from sluice.app import create_app
from sluice.config_file import parse_config
from sluice.emulator import Emulator
from sluice.settings import Config
from tests.servers import postgres_dsn, redis_url  # noqa: F401  (session fixtures, registered here)

# CI has 2 cores shared with real servers: judge properties, not how fast examples are generated.
settings.register_profile("sluice", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("sluice")

ADMIN_KEY = "sk-test-admin-key-0123456789"
# Every dialect the gateway speaks, as (alias, preset, upstream model, has embeddings)
DIALECTS: list[tuple[str, str, str, bool]] = [
    ("oa-chat", "openai", "gpt-4o-mini", True),
    ("ds-chat", "deepseek", "deepseek-flash", False),
    ("qwen-chat", "dashscope", "qwen-plus", True),
    ("or-chat", "openrouter", "qwen/qwen-plus", True),
    ("claude-chat", "anthropic", "claude-sonnet-5", False),
    ("gem-chat", "gemini", "gemini-2.5-flash", True),
    ("groq-chat", "groq", "llama-3.3-70b-versatile", False),
    ("ollama-chat", "ollama", "llama3.2", True),
    ("vllm-chat", "vllm", "Qwen/Qwen3-8B", True),
]
# Configured prices (USD per million) where genai-prices has none: Qwen on DashScope (published
# international rates), and the emulator's embedding model on presets that do not sell it.
CONFIG_PRICES = {
    ("dashscope", "qwen-plus"): "{input: 0.40, output: 1.20}",
    ("dashscope", "text-embedding-3-small"): "{input: 0.02, output: 0}",
    ("openrouter", "text-embedding-3-small"): "{input: 0.02, output: 0}",
    ("gemini", "text-embedding-3-small"): "{input: 0.02, output: 0}",
}
CHAT_ALIASES = [d[0] for d in DIALECTS]
EMBEDDING_ALIASES = [d[0].replace("-chat", "-embed") for d in DIALECTS if d[3]]


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _deployment(preset: str, model: str) -> str:
    price = CONFIG_PRICES.get((preset, model))
    return f"{{provider: {preset}, model: '{model}'" + (f", price: {price}}}" if price else "}")


def config_yaml(emu: Emulator, data_dir: Path, timeouts: str = "", extra: str = "") -> str:
    """A config with every preset pointed at the emulator (also exercises the YAML loader); ``extra``
    is appended (more top-level sections)."""
    lines = ["server:", f"  data_dir: {data_dir}", "  key_cache_ttl_s: 0.2", "providers:"]
    for _alias, preset, _model, _emb in DIALECTS:
        key = "" if preset in ("ollama", "vllm") else f"    api_key: env:EMU_{preset.upper()}_KEY\n"
        lines.append(
            f"  - name: {preset}\n    preset: {preset}\n    base_url: {emu.base_url(preset)}\n{key}{timeouts}"
        )
    lines.append("models:")
    for alias, preset, model, emb in DIALECTS:
        lines.append(f"  - name: {alias}\n    deployments: [{_deployment(preset, model)}]")
        if emb:
            emb_alias = alias.replace("-chat", "-embed")
            lines.append(
                f"  - name: {emb_alias}\n    mode: embedding\n"
                f"    deployments: [{_deployment(preset, 'text-embedding-3-small')}]"
            )
    return "\n".join(line.rstrip("\n") for line in lines) + "\n" + extra


def provider_env() -> dict[str, str]:
    """Environment holding the (emulator) provider keys the test config references."""
    return {f"EMU_{p.upper()}_KEY": f"sk-emu-{p}-key" for _a, p, _m, _e in DIALECTS} | {
        "SLUICE_ADMIN_KEY": ADMIN_KEY
    }


class ServerThread:
    """A real uvicorn server running a Sluice app in a background thread."""

    def __init__(self, app: SluiceAPI) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            loop="asyncio",
            http="httptools",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.run(self.server.serve())

    def __enter__(self) -> ServerThread:
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("server failed to start")
            threading.Event().wait(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    @property
    def base_url(self) -> str:
        """The OpenAI base URL of this server."""
        return f"http://127.0.0.1:{self.port}/v1"


@pytest.fixture(scope="session")
def emulator() -> Iterator[Emulator]:
    """One emulator for the session."""
    emu = Emulator()
    emu.start_in_thread()
    yield emu
    emu.stop_thread()


def make_config(emu: Emulator, data_dir: Path, timeouts: str = "", extra: str = "") -> Config:
    """Parse the test config (through the real loader)."""
    return parse_config(config_yaml(emu, data_dir, timeouts, extra), environ=provider_env()).config


@pytest.fixture(scope="session")
def gateway(emulator: Emulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """A Sluice server over the emulator, with short upstream deadlines so fault tests stay fast, and no
    retries: each fault test sees how one upstream failure is mapped (test_routing retries)."""
    data_dir = tmp_path_factory.mktemp("sluice-data")
    timeouts = "    timeouts: {connect: 2, first_byte: 1.5, idle: 1.0, total: 6}\n"
    config = make_config(emulator, data_dir, timeouts, "routing: {retries: 0}\n")
    app = create_app(config, provider_env())
    with ServerThread(app) as server:
        yield server


@pytest.fixture(scope="session")
def client(gateway: ServerThread) -> Iterator[openai.OpenAI]:
    """The real openai SDK, pointed at Sluice, with SDK retries off so each call is one request."""
    with openai.OpenAI(base_url=gateway.base_url, api_key=ADMIN_KEY, max_retries=0, timeout=20) as c:
        yield c


@pytest.fixture
def aclient(gateway: ServerThread) -> openai.AsyncOpenAI:
    """The async SDK (one per test: it binds to the test's event loop)."""
    return openai.AsyncOpenAI(base_url=gateway.base_url, api_key=ADMIN_KEY, max_retries=0, timeout=20)


@pytest.fixture
def untraced() -> Iterator[None]:
    """Pause coverage measurement for a load test: traced, the in-process gateway, emulator and client
    run several times slower, and a test of behaviour under load would measure the tracer instead."""
    cov = coverage.Coverage.current()
    if cov is not None:
        cov.stop()
    try:
        yield
    finally:
        if cov is not None:
            cov.start()


def fault(spec: str) -> dict[str, Any]:
    """A user message carrying an emulator fault directive through the gateway."""
    return {"role": "user", "content": f"hello @emulator({spec})"}


def admin_call(
    root: str, method: str, path: str, body: object = None, *, key: str = ADMIN_KEY, raw: bytes | None = None
) -> tuple[int, Any, str]:
    """One admin API call on a server at ``root``: (status, the JSON answer or None, the answer's text)."""
    data = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
    request = urllib.request.Request(  # noqa: S310 - our own server on 127.0.0.1
        root + path, data=data, method=method, headers={"authorization": f"Bearer {key}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as r:  # noqa: S310
            status, answer = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, answer = e.code, e.read()
    text = answer.decode()
    return status, orjson.loads(answer) if answer[:1] in (b"{", b"[") else None, text
