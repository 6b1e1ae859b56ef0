"""The response cache end to end: the real ``openai`` SDK through a running Sluice on the emulator.

Each test uses its own alias, served by its own upstream model name, so ``emu.by_model`` counts exactly
the calls that test caused, and no two tests share an entry. A hit is checked from every side: the
answer and its headers, the emulator not called, the ledger row, ``sluice spend`` and the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import openai
import orjson
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from sluice.app import create_app
from sluice.config_file import parse_config
from sluice.emulator import Emulator
from sluice.providers.anthropic import AnthropicAdapter
from sluice.providers.base import Target
from sluice.providers.openai import OpenAIAdapter
from sluice.wire.requests import validate_chat
from tests.conftest import ADMIN_KEY, ServerThread, admin_call, config_yaml, provider_env
from tests.servers import RedisServer, fresh_database

PRICE = "price: {input: 1, output: 2}"
# alias → (provider, upstream model); every upstream model name is this module's alone
ALIASES: dict[str, tuple[str, str]] = {
    name: ("openai", f"cache-{name}")
    for name in (
        "repeat",
        "stream",
        "tenants",
        "error",
        "error-once",
        "cut",
        "no-usage",
        "no-usage-stream",
        "mid-error",
        "tools",
        "tools-stream",
        "no-temperature",
        "opt-in",
        "mode-off",
        "skip",
        "refresh",
        "ttl",
        "bad-header",
        "key-mode",
        "prompt-cache-key",
    )
}
ALIASES["mid-error-or"] = ("openrouter", "cache-mid-error-or")
ALIASES["openrouter"] = ("openrouter", "cache-openrouter")
ALIASES["claude"] = ("anthropic", "cache-claude")
EMBED_ALIAS, EMBED_MODEL = "embed", "cache-embed"
BUDGET_ALIAS, BUDGET_MODEL = "budget", "cache-budget"
CACHE_CONFIG = """\
routing: {retries: 0}
cache:
  aliases: {mode-off: "off"}
  keys: {eval-runner: always}
"""
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def models_yaml(aliases: dict[str, tuple[str, str]]) -> str:
    lines = [
        f"  - name: {alias}\n    deployments: [{{provider: {provider}, model: {model}, {PRICE}}}]\n"
        for alias, (provider, model) in aliases.items()
    ]
    return "".join(lines)


def gateway_yaml(emu: Emulator, data_dir: Path, extra: str = CACHE_CONFIG) -> str:
    models = models_yaml(ALIASES) + (
        f"  - name: {EMBED_ALIAS}\n    mode: embedding\n"
        f"    deployments: [{{provider: openai, model: {EMBED_MODEL}, price: {{input: 1, output: 0}}}}]\n"
        # output only, $100 per million: a request's worst case (max_tokens) is exactly what it costs
        f"  - name: {BUDGET_ALIAS}\n"
        f"    deployments: [{{provider: openai, model: {BUDGET_MODEL}, price: {{input: 0, output: 100}}}}]\n"
    )
    return config_yaml(emu, data_dir).replace("models:\n", "models:\n" + models, 1) + extra


class Gateway:
    """A running Sluice with helpers: SDK calls with their headers, the ledger, the metrics."""

    def __init__(self, emu: Emulator, server: ServerThread, data_dir: Path, config_path: Path) -> None:
        self.emu = emu
        self.server = server
        self.data_dir = data_dir
        self.config_path = config_path
        self.root = f"http://127.0.0.1:{server.port}"
        self._clients: dict[str, openai.OpenAI] = {}

    def client(self, key: str = ADMIN_KEY) -> openai.OpenAI:
        if key not in self._clients:
            self._clients[key] = openai.OpenAI(
                base_url=self.server.base_url, api_key=key, max_retries=0, timeout=20
            )
        return self._clients[key]

    def close(self) -> None:
        for c in self._clients.values():
            c.close()

    def chat(
        self, alias: str, text: str, *, key: str = ADMIN_KEY, cache: str | None = None, **kw: Any
    ) -> Any:
        """A non-stream chat call's raw response (headers; ``.parse()`` for the completion)."""
        kw.setdefault("max_tokens", 16)
        return self.client(key).chat.completions.with_raw_response.create(
            model=alias,
            messages=kw.pop("messages", None) or [{"role": "user", "content": text}],
            extra_headers={"x-sluice-cache": cache} if cache is not None else None,
            **kw,
        )

    def stream(
        self, alias: str, text: str, *, key: str = ADMIN_KEY, cache: str | None = None, **kw: Any
    ) -> tuple[Any, list[Any]]:
        """A streamed chat call: its raw response (headers) and every chunk."""
        kw.setdefault("max_tokens", 16)
        raw = self.client(key).chat.completions.with_raw_response.create(
            model=alias,
            messages=[{"role": "user", "content": text}],
            stream=True,
            extra_headers={"x-sluice-cache": cache} if cache is not None else None,
            **kw,
        )
        with raw.parse() as stream:
            return raw, list(stream)

    def calls(self, model: str) -> int:
        return self.emu.by_model.get(model, 0)

    def new_key(self, name: str = "k", **settings: Any) -> tuple[str, str]:
        status, body, _ = admin_call(self.root, "POST", "/admin/keys", {"name": name, **settings})
        assert status == 201, body
        return str(body["key"]), str(body["id"])

    def rows(self, *request_ids: str) -> list[dict[str, Any]]:
        """The settled ledger rows of these requests, in the order asked."""
        deadline = time.monotonic() + 5
        while True:
            admin_call(self.root, "GET", "/admin/spend")  # commits what the ledger writer holds
            with contextlib.closing(sqlite3.connect(self.data_dir / "sluice.db")) as db:
                db.row_factory = sqlite3.Row
                marks = ", ".join("?" * len(request_ids))
                found = {
                    r["request_id"]: dict(r)
                    for r in db.execute(f"SELECT * FROM ledger WHERE request_id IN ({marks})", request_ids)  # noqa: S608
                }
            settled = [found[i] for i in request_ids if i in found and found[i]["status"] != "pending"]
            if len(settled) == len(request_ids) or time.monotonic() > deadline:
                assert len(settled) == len(request_ids), (request_ids, found)
                return settled
            time.sleep(0.05)

    def count_rows(self, request_id: str) -> int:
        admin_call(self.root, "GET", "/admin/spend")
        with contextlib.closing(sqlite3.connect(self.data_dir / "sluice.db")) as db:
            (n,) = db.execute("SELECT count(*) FROM ledger WHERE request_id = ?", (request_id,)).fetchone()
        return int(n)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, _, text = admin_call(self.root, "GET", "/metrics")
        assert status == 200
        return metric_values(text)

    def lookups(self, alias: str, result: str) -> float:
        key = ("sluice_cache_lookups_total", (("alias", alias), ("result", result)))
        return self.metrics().get(key, 0.0)

    def wait_stored(self, alias: str, n: int = 1) -> None:
        """Wait until the gateway has stored ``n`` entries for ``alias`` (stores run after the answer)."""
        deadline = time.monotonic() + 5
        while self.lookups(alias, "stored") < n:
            assert time.monotonic() < deadline, f"{alias}: nothing stored"
            time.sleep(0.02)


def metric_values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text page: (name, sorted labels) → value."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def request_id(raw: Any) -> str:
    return str(raw.headers["x-sluice-request-id"])


@pytest.fixture(scope="module")
def gw(emulator: Emulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    data_dir = tmp_path_factory.mktemp("cache")
    text = gateway_yaml(emulator, data_dir)
    config_path = data_dir / "sluice.yaml"
    config_path.write_text(text)
    env = provider_env()
    config = parse_config(text, environ=env).config
    with ServerThread(create_app(config, env)) as server:
        g = Gateway(emulator, server, data_dir, config_path)
        yield g
        g.close()


# --- a hit, from every side -------------------------------------------------------------------------


def test_the_same_request_twice_is_a_free_hit(gw: Gateway) -> None:
    first = gw.chat("repeat", "what is a sluice?", temperature=0)
    gw.wait_stored("repeat")
    second = gw.chat("repeat", "what is a sluice?", temperature=0)
    a, b = first.parse(), second.parse()

    assert first.headers["x-sluice-cache"] == "miss"
    assert second.headers["x-sluice-cache"] == "hit"
    assert (b.id, b.choices[0].message.content) == (a.id, a.choices[0].message.content)
    assert b.model_dump() == a.model_dump()
    cost = first.headers["x-sluice-cost-usd"]
    assert float(cost) > 0
    assert second.headers["x-sluice-cost-usd"] == "0.0"
    assert second.headers["x-sluice-saved-usd"] == cost
    assert "x-sluice-saved-usd" not in first.headers
    assert second.headers["x-sluice-model"] == "cache-repeat"
    assert second.headers["content-type"].startswith("application/json")
    assert gw.calls("cache-repeat") == 1

    miss, hit = gw.rows(request_id(first), request_id(second))
    assert (miss["cache_hit"], miss["saved_nanos"], miss["status"]) == (0, 0, "ok")
    assert miss["cost_nanos"] > 0
    assert (hit["cache_hit"], hit["cost_nanos"], hit["status"], hit["http_status"]) == (1, 0, "ok", 200)
    assert hit["saved_nanos"] == miss["cost_nanos"]
    assert hit["reserved_nanos"] == 0
    assert (hit["alias"], hit["endpoint"], hit["model"]) == ("repeat", "chat", "cache-repeat")
    assert Decimal(cost) * 10**9 == miss["cost_nanos"]  # the header is the row's cost, exactly

    spend = ["spend", "--format", "json", "--by", "alias", "--config", str(gw.config_path)]
    out = subprocess.run(
        [sys.executable, "-m", "sluice.cli", *spend],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, **provider_env()},
    )
    report = orjson.loads(out.stdout)
    group = next(g for g in report["groups"] if g["alias"] == "repeat")
    assert (group["requests"], group["cache_hits"], group["cost_nanos"]) == (2, 1, miss["cost_nanos"])
    assert group["saved_usd"] == cost
    assert report["total"]["cache_hits"] >= 1

    metrics = gw.metrics()
    lookups = "sluice_cache_lookups_total"
    assert metrics[(lookups, (("alias", "repeat"), ("result", "hit")))] == 1
    assert metrics[(lookups, (("alias", "repeat"), ("result", "miss")))] == 1
    assert metrics[(lookups, (("alias", "repeat"), ("result", "stored")))] == 1
    saved = metrics[("sluice_cache_saved_nanodollars_total", (("alias", "repeat"),))]
    assert saved == miss["cost_nanos"]


def test_a_stream_is_replayed_as_a_stream(gw: Gateway) -> None:
    opts = {"temperature": 0, "stream_options": {"include_usage": True}}
    first, chunks1 = gw.stream("stream", "tell me about rivers", **opts)
    gw.wait_stored("stream")
    second, chunks2 = gw.stream("stream", "tell me about rivers", **opts)

    assert first.headers["x-sluice-cache"] == "miss"
    assert second.headers["x-sluice-cache"] == "hit"
    assert second.headers["content-type"].startswith("text/event-stream")
    assert gw.calls("cache-stream") == 1

    def text(chunks: list[Any]) -> str:
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    assert text(chunks2) == text(chunks1)
    assert len(text(chunks1).split()) == 16
    assert len(chunks2) == len(chunks1)
    assert [c.id for c in chunks2] == [c.id for c in chunks1]
    usage1, usage2 = chunks1[-1].usage, chunks2[-1].usage
    assert usage1 is not None and usage2 is not None
    assert (usage2.prompt_tokens, usage2.completion_tokens) == (
        usage1.prompt_tokens,
        usage1.completion_tokens,
    )
    assert float((usage1.model_extra or {})["cost"]) > 0
    assert (usage2.model_extra or {})["cost"] == 0
    # every other chunk is the same
    assert [c.model_dump() for c in chunks2[:-1]] == [c.model_dump() for c in chunks1[:-1]]
    saved = second.headers["x-sluice-saved-usd"]
    assert float(saved) == pytest.approx(float((usage1.model_extra or {})["cost"]))

    # the same messages without streaming: stream is part of the key
    plain = gw.chat("stream", "tell me about rivers", temperature=0)
    assert plain.headers["x-sluice-cache"] == "miss"
    assert plain.parse().object == "chat.completion"
    assert gw.calls("cache-stream") == 2
    # and a stream without usage is another request again
    bare, _ = gw.stream("stream", "tell me about rivers", temperature=0)
    assert bare.headers["x-sluice-cache"] == "miss"
    assert gw.calls("cache-stream") == 3

    miss, hit = gw.rows(request_id(first), request_id(second))
    assert (hit["cache_hit"], hit["cost_nanos"], hit["stream"]) == (1, 0, 1)
    assert hit["saved_nanos"] == miss["cost_nanos"] > 0


def test_a_complete_hit_reports_no_cost_in_its_usage(gw: Gateway) -> None:
    first = gw.chat("openrouter", "billed in credits", temperature=0)
    usage = first.parse().usage
    assert usage is not None and float((usage.model_extra or {})["cost"]) > 0
    gw.wait_stored("openrouter")
    hit = gw.chat("openrouter", "billed in credits", temperature=0)
    assert (hit.headers["x-sluice-cache"], hit.headers["x-sluice-cost-usd"]) == ("hit", "0.0")
    usage = hit.parse().usage
    assert usage is not None
    assert (usage.model_extra or {})["cost"] == 0


# --- tenants ----------------------------------------------------------------------------------------


def test_two_tenants_never_share_an_entry(gw: Gateway) -> None:
    one, _ = gw.new_key("tenant-one")
    two, _ = gw.new_key("tenant-two")
    prompt = "the secret plan of tenant one"
    assert gw.chat("tenants", prompt, key=one, temperature=0).headers["x-sluice-cache"] == "miss"
    gw.wait_stored("tenants")
    other = gw.chat("tenants", prompt, key=two, temperature=0)
    assert other.headers["x-sluice-cache"] == "miss"
    assert gw.calls("cache-tenants") == 2
    gw.wait_stored("tenants", 2)
    # each has its own entry now; the admin key is a tenant too
    assert gw.chat("tenants", prompt, key=one, temperature=0).headers["x-sluice-cache"] == "hit"
    assert gw.chat("tenants", prompt, key=two, temperature=0).headers["x-sluice-cache"] == "hit"
    assert gw.chat("tenants", prompt, temperature=0).headers["x-sluice-cache"] == "miss"
    assert gw.calls("cache-tenants") == 3


def test_team_scope_shares_between_a_teams_keys(emulator: Emulator, tmp_path: Path) -> None:
    aliases = {"team": ("openai", "cache-team-scope")}
    text = config_yaml(emulator, tmp_path).replace("models:\n", "models:\n" + models_yaml(aliases), 1)
    text += "cache: {scope: team}\n"
    env = provider_env()
    with ServerThread(create_app(parse_config(text, environ=env).config, env)) as server:
        g = Gateway(emulator, server, tmp_path, tmp_path / "unused.yaml")
        try:
            a1, _ = g.new_key("a1", team="alpha")
            a2, _ = g.new_key("a2", team="alpha")
            b1, _ = g.new_key("b1", team="beta")
            loner, _ = g.new_key("loner")  # no team: its own entries
            loner2, _ = g.new_key("loner2")
            prompt = "shared within a team"
            assert g.chat("team", prompt, key=a1, temperature=0).headers["x-sluice-cache"] == "miss"
            g.wait_stored("team")
            assert g.chat("team", prompt, key=a2, temperature=0).headers["x-sluice-cache"] == "hit"
            assert g.calls("cache-team-scope") == 1
            assert g.chat("team", prompt, key=b1, temperature=0).headers["x-sluice-cache"] == "miss"
            assert g.chat("team", prompt, key=loner, temperature=0).headers["x-sluice-cache"] == "miss"
            g.wait_stored("team", 3)
            assert g.chat("team", prompt, key=loner2, temperature=0).headers["x-sluice-cache"] == "miss"
            assert g.calls("cache-team-scope") == 4
        finally:
            g.close()


def test_an_answer_larger_than_max_entry_bytes_is_not_stored(emulator: Emulator, tmp_path: Path) -> None:
    aliases = {"sized": ("openai", "cache-sized")}
    text = config_yaml(emulator, tmp_path).replace("models:\n", "models:\n" + models_yaml(aliases), 1)
    text += "cache: {max_entry_bytes: 2048}\n"
    env = provider_env()
    with ServerThread(create_app(parse_config(text, environ=env).config, env)) as server:
        g = Gateway(emulator, server, tmp_path, tmp_path / "unused.yaml")
        try:
            big = "a long answer @emulator(tokens=400)"
            first = g.chat("sized", big, temperature=0, max_tokens=500)
            assert len(first.content) > 2048
            assert g.chat("sized", big, temperature=0, max_tokens=500).headers["x-sluice-cache"] == "miss"
            assert g.calls("cache-sized") == 2
            assert g.lookups("sized", "stored") == 0
            g.chat("sized", "a short one", temperature=0)  # a small answer is kept
            g.wait_stored("sized")
            assert g.chat("sized", "a short one", temperature=0).headers["x-sluice-cache"] == "hit"
            assert g.calls("cache-sized") == 3
        finally:
            g.close()


# --- never cached -----------------------------------------------------------------------------------


def test_an_upstream_error_is_not_cached(gw: Gateway) -> None:
    prompt = "fail please @emulator(status=500)"
    for n in (1, 2):
        with pytest.raises(openai.APIStatusError) as caught:
            gw.chat("error", prompt, temperature=0)
        assert caught.value.status_code >= 500
        assert gw.calls("cache-error") == n  # the retry reached the provider again
    assert gw.lookups("error", "hit") == 0
    assert gw.lookups("error", "stored") == 0

    # the provider fails once, then recovers: the same request is then a miss, answered and stored
    gw.emu.set_model_faults("cache-error-once", "status=500")
    try:
        with pytest.raises(openai.InternalServerError):
            gw.chat("error-once", "a question", temperature=0)
    finally:
        gw.emu.set_model_faults("cache-error-once", None)
    again = gw.chat("error-once", "a question", temperature=0)
    assert again.headers["x-sluice-cache"] == "miss"
    assert gw.calls("cache-error-once") == 2
    gw.wait_stored("error-once")
    assert gw.chat("error-once", "a question", temperature=0).headers["x-sluice-cache"] == "hit"


@pytest.mark.parametrize(
    ("alias", "fault"),
    [("cut", "cut_after=3"), ("mid-error", "mid_error=3"), ("mid-error-or", "mid_error=3")],
)
def test_a_stream_that_failed_is_not_cached(gw: Gateway, alias: str, fault: str) -> None:
    model = ALIASES[alias][1]
    prompt = f"a long story @emulator({fault})"
    opts = {"temperature": 0, "stream_options": {"include_usage": True}}
    for n in (1, 2):
        with pytest.raises(openai.APIError):
            gw.stream(alias, prompt, **opts)
        assert gw.calls(model) == n
    assert gw.lookups(alias, "miss") == 2
    assert (gw.lookups(alias, "hit"), gw.lookups(alias, "stored")) == (0, 0)


def test_an_answer_without_usage_is_not_cached(gw: Gateway) -> None:
    prompt = "how much did this cost? @emulator(no_usage=1)"
    for n in (1, 2):
        raw = gw.chat("no-usage", prompt, temperature=0)
        assert raw.headers["x-sluice-cache"] == "miss"
        assert raw.parse().choices[0].message.content
        assert gw.calls("cache-no-usage") == n
    (row,) = gw.rows(request_id(raw))
    assert (row["usage_estimated"], row["cache_hit"]) == (1, 0)
    for n in (1, 2):
        head, chunks = gw.stream(
            "no-usage-stream", prompt, temperature=0, stream_options={"include_usage": True}
        )
        assert head.headers["x-sluice-cache"] == "miss"
        assert any(c.choices and c.choices[0].delta.content for c in chunks)
        assert gw.calls("cache-no-usage-stream") == n
    assert gw.lookups("no-usage", "stored") == 0
    assert gw.lookups("no-usage-stream", "stored") == 0


def test_a_tool_call_is_cached_only_when_asked(gw: Gateway) -> None:
    prompt = "weather in Paris?"
    tools = {"temperature": 0, "tools": [WEATHER], "tool_choice": "required"}
    for n in (1, 2):
        raw = gw.chat("tools", prompt, **tools)
        assert raw.parse().choices[0].message.tool_calls
        assert raw.headers["x-sluice-cache"] == "miss"
        assert gw.calls("cache-tools") == n
    assert gw.lookups("tools", "stored") == 0
    opted = gw.chat("tools", prompt, cache="use, tools", **tools)
    assert opted.headers["x-sluice-cache"] == "miss"
    gw.wait_stored("tools")
    hit = gw.chat("tools", prompt, cache="use, tools", **tools)
    assert hit.headers["x-sluice-cache"] == "hit"
    assert hit.parse().choices[0].message.tool_calls == opted.parse().choices[0].message.tool_calls
    assert gw.calls("cache-tools") == 3

    # the same for a stream
    opts = {**tools, "stream_options": {"include_usage": True}}
    for n in (1, 2):
        head, chunks = gw.stream("tools-stream", prompt, **opts)
        assert head.headers["x-sluice-cache"] == "miss"
        assert any(c.choices and c.choices[0].delta.tool_calls for c in chunks)
        assert gw.calls("cache-tools-stream") == n
    assert gw.lookups("tools-stream", "stored") == 0
    gw.stream("tools-stream", prompt, cache="use, tools", **opts)
    gw.wait_stored("tools-stream")
    head, chunks = gw.stream("tools-stream", prompt, cache="use, tools", **opts)
    assert head.headers["x-sluice-cache"] == "hit"
    assert any(c.choices and c.choices[0].delta.tool_calls for c in chunks)
    assert gw.calls("cache-tools-stream") == 3


# --- the header -------------------------------------------------------------------------------------


def test_without_temperature_auto_mode_skips(gw: Gateway) -> None:
    for n in (1, 2):
        raw = gw.chat("no-temperature", "hello there")
        assert raw.headers["x-sluice-cache"] == "skip"
        assert gw.calls("cache-no-temperature") == n
    assert gw.lookups("no-temperature", "miss") == 0
    assert gw.lookups("no-temperature", "stored") == 0


def test_use_opts_a_request_in(gw: Gateway) -> None:
    assert gw.chat("opt-in", "be creative", temperature=0.7).headers["x-sluice-cache"] == "skip"
    first = gw.chat("opt-in", "be creative", temperature=0.7, cache="use")
    assert first.headers["x-sluice-cache"] == "miss"
    gw.wait_stored("opt-in")
    second = gw.chat("opt-in", "be creative", temperature=0.7, cache="use")
    assert second.headers["x-sluice-cache"] == "hit"
    assert second.parse().id == first.parse().id
    assert gw.calls("cache-opt-in") == 2


def test_use_opts_in_when_the_mode_is_off(gw: Gateway) -> None:
    assert gw.chat("mode-off", "deterministic", temperature=0).headers["x-sluice-cache"] == "skip"
    assert gw.chat("mode-off", "deterministic", temperature=0).headers["x-sluice-cache"] == "skip"
    assert gw.calls("cache-mode-off") == 2
    assert (
        gw.chat("mode-off", "deterministic", temperature=0.9, cache="use").headers["x-sluice-cache"] == "miss"
    )
    gw.wait_stored("mode-off")
    assert (
        gw.chat("mode-off", "deterministic", temperature=0.9, cache="use").headers["x-sluice-cache"] == "hit"
    )
    assert gw.calls("cache-mode-off") == 3


def test_a_key_configured_always_caches_any_temperature(gw: Gateway) -> None:
    runner, _ = gw.new_key("eval-runner")
    other, _ = gw.new_key("someone")
    assert gw.chat("key-mode", "grade this", key=runner, temperature=1).headers["x-sluice-cache"] == "miss"
    gw.wait_stored("key-mode")
    assert gw.chat("key-mode", "grade this", key=runner, temperature=1).headers["x-sluice-cache"] == "hit"
    assert gw.chat("key-mode", "grade this", key=other, temperature=1).headers["x-sluice-cache"] == "skip"
    assert gw.calls("cache-key-mode") == 2


def test_skip_neither_looks_up_nor_stores(gw: Gateway) -> None:
    gw.chat("skip", "stored answer", temperature=0)
    gw.wait_stored("skip")
    skipped = gw.chat("skip", "stored answer", temperature=0, cache="skip")
    assert skipped.headers["x-sluice-cache"] == "skip"
    assert gw.calls("cache-skip") == 2
    # a skip does not store: the next normal request misses
    assert gw.chat("skip", "never stored", temperature=0, cache="skip").headers["x-sluice-cache"] == "skip"
    assert gw.chat("skip", "never stored", temperature=0).headers["x-sluice-cache"] == "miss"
    assert gw.calls("cache-skip") == 4
    assert (gw.lookups("skip", "hit"), gw.lookups("skip", "miss")) == (0, 2)


def test_refresh_stores_without_looking_up(gw: Gateway) -> None:
    old = gw.chat("refresh", "the news", temperature=0)
    gw.wait_stored("refresh")
    new = gw.chat("refresh", "the news", temperature=0, cache="refresh")
    assert new.headers["x-sluice-cache"] == "miss"  # not looked up: an answer not from the cache
    assert new.parse().id != old.parse().id
    assert gw.calls("cache-refresh") == 2
    gw.wait_stored("refresh", 2)
    third = gw.chat("refresh", "the news", temperature=0)
    assert third.headers["x-sluice-cache"] == "hit"
    assert third.parse().id == new.parse().id  # the refreshed entry
    assert gw.calls("cache-refresh") == 2
    assert gw.lookups("refresh", "miss") == 1  # the refresh was no lookup


def test_ttl_expires(gw: Gateway) -> None:
    first = gw.chat("ttl", "short-lived", temperature=0, cache="use, ttl=1")
    stored_at = time.monotonic()
    assert first.headers["x-sluice-cache"] == "miss"
    gw.wait_stored("ttl")
    assert gw.chat("ttl", "short-lived", temperature=0).headers["x-sluice-cache"] == "hit"
    time.sleep(max(0.0, stored_at + 1.1 - time.monotonic()))
    assert gw.chat("ttl", "short-lived", temperature=0).headers["x-sluice-cache"] == "miss"
    assert gw.calls("cache-ttl") == 2


@pytest.mark.parametrize("value", ["bogus", "use, ttl=0", "ttl=abc", "use, forever", "refresh, ttl=99999999"])
def test_a_bad_header_is_a_400_and_nothing_is_sent(gw: Gateway, value: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        gw.chat("bad-header", "hello", temperature=0, cache=value)
    err = caught.value
    assert err.status_code == 400
    assert isinstance(err.body, dict)
    assert (err.body["type"], err.body["code"]) == ("invalid_request_error", "invalid_header")
    assert "x-sluice-cache" in err.body["message"]
    envelope = err.response.json()
    assert set(envelope) == {"error"}
    assert set(envelope["error"]) >= {"message", "type", "param", "code"}
    assert gw.calls("cache-bad-header") == 0
    assert gw.count_rows(err.response.headers["x-sluice-request-id"]) == 0  # refused before admission
    # also on a stream and on embeddings
    with pytest.raises(openai.BadRequestError):
        gw.stream("bad-header", "hello", temperature=0, cache=value)
    with pytest.raises(openai.BadRequestError):
        gw.client().embeddings.create(model=EMBED_ALIAS, input="x", extra_headers={"x-sluice-cache": value})
    assert gw.calls("cache-bad-header") == 0


# --- embeddings -------------------------------------------------------------------------------------


def test_embeddings_are_cached_in_auto_mode(gw: Gateway) -> None:
    texts = ["a river", "a gate", "naïve 日本"]
    create = gw.client().embeddings.with_raw_response.create
    first = create(model=EMBED_ALIAS, input=texts)
    gw.wait_stored(EMBED_ALIAS)
    second = create(model=EMBED_ALIAS, input=texts)
    assert (first.headers["x-sluice-cache"], second.headers["x-sluice-cache"]) == ("miss", "hit")
    a, b = first.parse(), second.parse()
    assert [d.embedding for d in b.data] == [d.embedding for d in a.data]
    assert len(a.data) == 3 and len(a.data[0].embedding) == 1536
    assert second.headers["x-sluice-saved-usd"] == first.headers["x-sluice-cost-usd"]
    assert gw.calls(EMBED_MODEL) == 1
    # float and base64 are different requests (encoding_format is in the key)
    floats = create(model=EMBED_ALIAS, input=texts, encoding_format="float")
    assert floats.headers["x-sluice-cache"] == "miss"
    for got, want in zip(floats.parse().data, a.data, strict=True):
        assert got.embedding == pytest.approx(want.embedding, abs=1e-6)
    assert gw.calls(EMBED_MODEL) == 2


# --- money ------------------------------------------------------------------------------------------


def test_a_hit_consumes_no_budget(gw: Gateway) -> None:
    # $100 per million output tokens, nothing for input: 16 output tokens reserve and cost $0.0016;
    # a cap of $0.002 lets the first request in, and leaves too little for any other new one
    key, key_id = gw.new_key("capped", limits={"usd": {"total": "0.002"}})
    first = gw.chat(BUDGET_ALIAS, "the only question", key=key, temperature=0, max_tokens=16)
    assert first.headers["x-sluice-cost-usd"] == "0.0016"
    gw.wait_stored(BUDGET_ALIAS)
    with pytest.raises(openai.RateLimitError) as caught:
        gw.chat(BUDGET_ALIAS, "another question", key=key, temperature=0, max_tokens=16)
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "budget_exceeded"

    for _ in range(3):
        hit = gw.chat(BUDGET_ALIAS, "the only question", key=key, temperature=0, max_tokens=16)
        assert hit.headers["x-sluice-cache"] == "hit"
        assert hit.parse().id == first.parse().id
    assert gw.calls(BUDGET_MODEL) == 1

    status, body, _ = admin_call(gw.root, "GET", f"/admin/limits?scope=key:{key_id}")
    assert status == 200
    usd = next(c for c in body["data"] if c["metric"] == "usd")
    assert (usd["spent"], usd["reserved"]) == (1_600_000, 0)
    with pytest.raises(openai.RateLimitError):  # still refused: the hits did not make room either
        gw.chat(BUDGET_ALIAS, "another question", key=key, temperature=0, max_tokens=16)
    assert gw.calls(BUDGET_MODEL) == 1


# --- a backend that fails never fails a request -----------------------------------------------------


def test_redis_going_down_makes_misses_not_errors(emulator: Emulator, tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        aliases = {"down": ("openai", "cache-redis-down")}
        text = config_yaml(emulator, tmp_path).replace("models:\n", "models:\n" + models_yaml(aliases), 1)
        text = text.replace("server:\n", f"server:\n  redis_url: {server.url}\n", 1)
        text += "cache: {backend: redis}\n"
        env = provider_env()
        with ServerThread(create_app(parse_config(text, environ=env).config, env)) as s:
            g = Gateway(emulator, s, tmp_path, tmp_path / "unused.yaml")
            try:
                assert g.chat("down", "q", temperature=0).headers["x-sluice-cache"] == "miss"
                g.wait_stored("down")
                assert g.chat("down", "q", temperature=0).headers["x-sluice-cache"] == "hit"
                server.stop()
                for _ in range(2):  # a lookup that fails is a miss; a store that fails is only logged
                    raw = g.chat("down", "q", temperature=0)
                    assert raw.headers["x-sluice-cache"] == "miss"
                    assert raw.parse().choices[0].message.content
                assert g.calls("cache-redis-down") == 3
            finally:
                g.close()
    finally:
        server.stop()


# --- shared backends --------------------------------------------------------------------------------


def test_three_instances_share_entries_through_redis(
    emulator: Emulator, postgres_dsn: str, redis_url: str, tmp_path: Path
) -> None:
    dsn = fresh_database(postgres_dsn, "cache_cluster")
    env = {**provider_env(), "TEST_PG": dsn, "TEST_REDIS": redis_url, "SLUICE_SECRET": "cache-cluster-secret"}
    aliases = {"shared": ("openai", "cache-cluster")}
    servers: list[ServerThread] = []
    with contextlib.ExitStack() as stack:
        for i in range(3):
            text = config_yaml(emulator, tmp_path / f"node{i}").replace(
                "server:\n",
                "server:\n  store: postgres\n  database_url: env:TEST_PG\n  counters: redis\n"
                "  redis_url: env:TEST_REDIS\n",
                1,
            )
            text = (
                text.replace("models:\n", "models:\n" + models_yaml(aliases), 1) + "cache: {backend: redis}\n"
            )
            servers.append(
                stack.enter_context(ServerThread(create_app(parse_config(text, environ=env).config, env)))
            )
        nodes = [
            Gateway(emulator, s, tmp_path / f"node{i}", tmp_path / "unused.yaml")
            for i, s in enumerate(servers)
        ]
        for n in nodes:
            stack.callback(n.close)
        key, key_id = nodes[0].new_key("everywhere")

        first = nodes[0].chat("shared", "one answer for all", key=key, temperature=0)
        assert first.headers["x-sluice-cache"] == "miss"
        nodes[0].wait_stored("shared")
        with redis.Redis.from_url(redis_url) as raw:
            assert raw.keys("sluice:cache:*")
        answers = [n.chat("shared", "one answer for all", key=key, temperature=0) for n in nodes[1:]]
        assert [a.headers["x-sluice-cache"] for a in answers] == ["hit", "hit"]
        assert {a.parse().id for a in answers} == {first.parse().id}
        assert all(a.headers["x-sluice-saved-usd"] == first.headers["x-sluice-cost-usd"] for a in answers)
        assert (
            nodes[0].chat("shared", "one answer for all", key=key, temperature=0).headers["x-sluice-cache"]
            == "hit"
        )
        assert emulator.by_model["cache-cluster"] == 1

        for n in nodes:
            admin_call(n.root, "GET", "/admin/spend")  # each instance commits its ledger rows

        async def fetch() -> list[dict[str, Any]]:
            conn = await asyncpg.connect(dsn)
            try:
                rows = await conn.fetch(
                    "SELECT cache_hit, cost_nanos, saved_nanos FROM ledger WHERE key_id = $1", key_id
                )
                return [dict(r) for r in rows]
            finally:
                await conn.close()

        rows = asyncio.run(fetch())
        assert sorted((r["cache_hit"], r["cost_nanos"] > 0) for r in rows) == [
            (False, True),
            (True, False),
            (True, False),
            (True, False),
        ]
        miss_cost = next(r["cost_nanos"] for r in rows if not r["cache_hit"])
        assert all(r["saved_nanos"] == miss_cost for r in rows if r["cache_hit"])


def test_sqlite_backend_is_shared_by_a_hosts_workers_and_survives_restarts(
    emulator: Emulator, tmp_path: Path
) -> None:
    aliases = {"local": ("openai", "cache-sqlite")}
    text = config_yaml(emulator, tmp_path).replace("models:\n", "models:\n" + models_yaml(aliases), 1)
    text += "cache: {backend: sqlite}\n"
    env = provider_env()

    def serve() -> ServerThread:
        return ServerThread(create_app(parse_config(text, environ=env).config, env))

    with serve() as one, serve() as two:
        a = Gateway(emulator, one, tmp_path, tmp_path / "unused.yaml")
        b = Gateway(emulator, two, tmp_path, tmp_path / "unused.yaml")
        try:
            key, _ = a.new_key("worker-key")
            first = a.chat("local", "same host", key=key, temperature=0)
            assert first.headers["x-sluice-cache"] == "miss"
            a.wait_stored("local")
            other = b.chat("local", "same host", key=key, temperature=0)
            assert other.headers["x-sluice-cache"] == "hit"
            assert other.parse().id == first.parse().id
        finally:
            a.close()
            b.close()
    assert (tmp_path / "cache.db").is_file()
    with serve() as three:  # a restart keeps the entries
        c = Gateway(emulator, three, tmp_path, tmp_path / "unused.yaml")
        try:
            again = c.chat("local", "same host", key=key, temperature=0)
            assert again.headers["x-sluice-cache"] == "hit"
            assert again.parse().id == first.parse().id
        finally:
            c.close()
    assert emulator.by_model["cache-sqlite"] == 1


# --- provider prompt caching passes through ---------------------------------------------------------

SYSTEM_TEXT = "You are a careful assistant. " * 20
DOCUMENT = "A long document. " * 40
SYSTEM_PARTS: list[dict[str, Any]] = [
    {"type": "text", "text": SYSTEM_TEXT, "cache_control": {"type": "ephemeral"}},
    {"type": "text", "text": "Today is Tuesday."},
]
USER_PARTS: list[dict[str, Any]] = [
    {"type": "text", "text": DOCUMENT, "cache_control": {"type": "ephemeral", "ttl": "1h"}},
    {"type": "text", "text": "Summarise it."},
]
CACHED_SYSTEM: dict[str, Any] = {"role": "system", "content": SYSTEM_PARTS}
CACHED_USER: dict[str, Any] = {"role": "user", "content": USER_PARTS}


def test_anthropic_cache_control_reaches_the_provider(gw: Gateway) -> None:
    raw = gw.chat("claude", "", messages=[CACHED_SYSTEM, CACHED_USER], max_tokens=32)
    answer = raw.parse()
    assert answer.choices[0].message.content
    assert raw.headers["x-sluice-cache"] == "skip"  # no temperature: Sluice's cache stays out of it
    assert gw.calls("cache-claude") == 1
    # the provider's cached-token discount is priced: reads reported by the provider reach the ledger
    fault = {"type": "text", "text": "@emulator(cache_read=100)"}
    user = {"role": "user", "content": [*USER_PARTS, fault]}
    reads = gw.chat("claude", "", messages=[CACHED_SYSTEM, user], max_tokens=32)
    (row,) = gw.rows(request_id(reads))
    assert row["cache_read_tokens"] == 100


def test_anthropic_translation_keeps_cache_control() -> None:
    target = Target("anthropic", "anthropic", "claude-x", 1024)
    req = validate_chat({"model": "claude", "messages": [CACHED_SYSTEM, CACHED_USER]})
    call = AnthropicAdapter().chat_call(req, target)
    body = orjson.loads(call.body)
    assert body["system"] == [
        {"type": "text", "text": SYSTEM_TEXT, "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "Today is Tuesday."},
    ]
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {
                    "type": "text",
                    "text": DOCUMENT,
                    "cache_control": {"type": "ephemeral", "ttl": "1h"},
                },
                {"type": "text", "text": "Summarise it."},
            ],
        }
    ]
    # without any cache_control the system prompt stays a plain string
    plain = validate_chat(
        {"model": "claude", "messages": [{"role": "system", "content": "Be brief."}, CACHED_USER]}
    )
    assert orjson.loads(AnthropicAdapter().chat_call(plain, target).body)["system"] == "Be brief."


def test_prompt_cache_key_reaches_the_openai_upstream_unchanged(gw: Gateway) -> None:
    body = {
        "model": "prompt-cache-key",
        "messages": [{"role": "user", "content": "hi"}],
        "prompt_cache_key": "tenant-42/conversation-7",
        "prompt_cache_retention": "24h",
    }
    call = OpenAIAdapter().chat_call(validate_chat(body), Target("openai", "openai", "gpt-x", 1024))
    sent = orjson.loads(call.body)
    assert sent["prompt_cache_key"] == "tenant-42/conversation-7"
    assert sent["prompt_cache_retention"] == "24h"
    assert sent["model"] == "gpt-x"
    raw = gw.chat("prompt-cache-key", "hi", prompt_cache_key="tenant-42/conversation-7")
    assert raw.parse().choices[0].message.content
    assert gw.calls("cache-prompt-cache-key") == 1
