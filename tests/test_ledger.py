"""The ledger through a running Sluice: every request priced, tagged and settled, whatever happens.

Real server, real SDK, the emulator as every provider. Rows are read back from the SQLite file after
``/admin/spend`` (which flushes the ledger writer first).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from sluice.app import create_app, open_services
from sluice.config_file import parse_config
from sluice.emulator import Emulator
from sluice.keys.policy import KeyPolicy
from sluice.ledger.entry import COLUMNS
from tests.conftest import ADMIN_KEY, ServerThread, config_yaml, fault, provider_env

EXTRA = """\
  - name: compat
    preset: openai_compatible
    base_url: {url}
    api_key: env:EMU_OPENAI_KEY
"""
EXTRA_MODELS = """\
  - name: mystery
    deployments: [{provider: compat, model: mystery-model}]
  - name: capped
    deployments: [{provider: compat, model: mystery-model, ceiling: {input: 10, output: 30}}]
  - name: discounted
    deployments: [{provider: openai, model: gpt-4o-mini, price: {input: "0.10", output: "0.40"}}]
"""


class Served:
    """A server with its data directory and some keys."""

    def __init__(self, server: ServerThread, data_dir: Path, keys: dict[str, str]) -> None:
        self.server = server
        self.data_dir = data_dir
        self.keys = keys

    @property
    def root(self) -> str:
        return self.server.base_url.removesuffix("/v1")

    def client(self, key: str = ADMIN_KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.server.base_url, api_key=key, max_retries=0, timeout=20)

    def get(self, path: str, key: str | None = ADMIN_KEY) -> tuple[int, bytes, dict[str, str]]:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        req = urllib.request.Request(self.root + path, headers=headers)  # noqa: S310 - our own test server
        try:
            with urllib.request.urlopen(req, timeout=20) as resp:  # noqa: S310 - our own test server
                return resp.status, resp.read(), dict(resp.headers)
        except urllib.error.HTTPError as err:
            return err.code, err.read(), dict(err.headers)

    def rows(self) -> dict[str, dict[str, Any]]:
        """Every ledger row by request id (after the writer has flushed)."""
        status, _, _ = self.get("/admin/spend")
        assert status == 200
        with sqlite3.connect(self.data_dir / "sluice.db") as db:
            got = db.execute(f"SELECT {', '.join(COLUMNS)} FROM ledger").fetchall()  # noqa: S608
        return {r[0]: dict(zip(COLUMNS, r, strict=True)) for r in got}

    def row(self, request_id: str) -> dict[str, Any]:
        return self.rows()[request_id]


@pytest.fixture(scope="module")
def served(emulator: Emulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data_dir = tmp_path_factory.mktemp("ledger")
    text = config_yaml(emulator, data_dir, "    timeouts: {first_byte: 2, idle: 1, total: 6}\n")
    text = text.replace("server:\n", "server:\n  ledger_flush_ms: 5\n", 1)
    text = text.replace(
        "models:\n", EXTRA.format(url=emulator.base_url("openai")) + "models:\n" + EXTRA_MODELS, 1
    )
    config = parse_config(text, environ=provider_env()).config
    env = provider_env()
    svc = open_services(config, env)

    async def make() -> dict[str, str]:
        strict = KeyPolicy(
            features=frozenset({"search", "chat"}), tags=frozenset({"env", "tier=gold"}), require_feature=True
        )
        return {
            "team": (await svc.keys.create("team-key", policy=KeyPolicy(team="growth")))[0],
            "strict": (await svc.keys.create("strict", policy=strict))[0],
            "logged": (await svc.keys.create("logged", policy=KeyPolicy(log_content=True)))[0],
        }

    keys = svc.run(make)
    with ServerThread(create_app(config, env, svc)) as server:
        yield Served(server, data_dir, keys)


def _hello() -> list[dict[str, str]]:
    return [{"role": "user", "content": "hello"}]


def test_non_stream_cost_header_matches_the_row(served: Served) -> None:
    raw = served.client(served.keys["team"]).chat.completions.with_raw_response.create(
        model="oa-chat",
        messages=_hello(),
        user="end-user-7",
        extra_headers={"x-sluice-feature": "summarise", "x-sluice-tags": "env=prod, run=42"},
    )
    usage = raw.parse().usage
    assert usage is not None
    row = served.row(raw.headers["x-sluice-request-id"])
    # gpt-4o-mini: 0.15 in / 0.60 out per million
    expected = -(-(usage.prompt_tokens * 150 + usage.completion_tokens * 600) // 1)  # nano-dollars
    assert row["cost_nanos"] == expected
    assert Decimal(raw.headers["x-sluice-cost-usd"]) * 10**9 == expected
    assert (row["status"], row["http_status"], row["stream"], row["usage_estimated"]) == ("ok", 200, 0, 0)
    assert (row["feature"], orjson.loads(row["tags"]), row["user_id"], row["team"]) == (
        "summarise",
        {"env": "prod", "run": "42"},
        "end-user-7",
        "growth",
    )
    assert (row["provider"], row["model"], row["price_source"]) == (
        "openai",
        "gpt-4o-mini",
        "genai-prices 0.2.3",
    )
    assert (row["input_tokens"], row["output_tokens"]) == (usage.prompt_tokens, usage.completion_tokens)
    assert row["latency_us"] > 0 and row["ttft_us"] is None
    [attempt] = orjson.loads(row["attempts"])
    assert (attempt["provider"], attempt["http_status"], attempt["status"]) == ("openai", 200, "ok")


def test_stream_usage_chunk_carries_the_rows_cost(served: Served) -> None:
    client = served.client()
    with client.chat.completions.with_streaming_response.create(
        model="claude-chat",
        messages=_hello(),
        stream=True,
        stream_options={"include_usage": True},
        metadata={"feature": "chat", "session": "s1"},
    ) as resp:
        request_id = resp.headers["x-sluice-request-id"]
        chunks = list(resp.parse())
    usage = chunks[-1].usage
    assert usage is not None
    cost = (usage.model_extra or {})["cost"]
    row = served.row(request_id)
    assert Decimal(str(cost)) * 10**9 == row["cost_nanos"] > 0
    # claude-sonnet-5: 2 in / 10 out per million
    assert row["cost_nanos"] == usage.prompt_tokens * 2000 + usage.completion_tokens * 10000
    assert (row["feature"], orjson.loads(row["tags"]), row["stream"]) == ("chat", {"session": "s1"}, 1)
    assert row["ttft_us"] is not None and 0 < row["ttft_us"] <= row["latency_us"]


def test_configured_price_wins_over_bundled(served: Served) -> None:
    raw = served.client().chat.completions.with_raw_response.create(model="discounted", messages=_hello())
    usage = raw.parse().usage
    assert usage is not None
    row = served.row(raw.headers["x-sluice-request-id"])
    assert row["cost_nanos"] == usage.prompt_tokens * 100 + usage.completion_tokens * 400
    assert row["price_source"].startswith("config@")


def test_provider_billed_cost_wins(served: Served) -> None:
    raw = served.client().chat.completions.with_raw_response.create(model="or-chat", messages=_hello())
    usage = raw.parse().usage
    assert usage is not None
    billed = Decimal(str((usage.model_extra or {})["cost"]))
    row = served.row(raw.headers["x-sluice-request-id"])
    assert row["cost_nanos"] == int(billed * 10**9)
    assert row["price_source"] == "provider-billed"


def test_unpriced_model_is_refused_and_recorded(served: Served) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        served.client().chat.completions.create(model="mystery", messages=_hello())
    assert info.value.code == "model_unpriced"
    assert "no known price" in info.value.message
    refused = [r for r in served.rows().values() if r["alias"] == "mystery"]
    assert [(r["status"], r["cost_nanos"], r["error_code"]) for r in refused] == [
        ("refused", 0, "model_unpriced")
    ]


def test_ceiling_is_charged_and_flagged(served: Served) -> None:
    raw = served.client().chat.completions.with_raw_response.create(model="capped", messages=_hello())
    usage = raw.parse().usage
    assert usage is not None
    row = served.row(raw.headers["x-sluice-request-id"])
    assert row["cost_nanos"] == usage.prompt_tokens * 10_000 + usage.completion_tokens * 30_000
    assert (row["at_ceiling"], row["price_source"]) == (1, "ceiling")


def test_free_local_preset_is_zero_by_declaration(served: Served) -> None:
    raw = served.client().chat.completions.with_raw_response.create(model="vllm-chat", messages=_hello())
    row = served.row(raw.headers["x-sluice-request-id"])
    assert (row["cost_nanos"], row["price_source"], raw.headers["x-sluice-cost-usd"]) == (
        0,
        "preset:vllm:free",
        "0.0",
    )


def test_stream_cut_by_provider_is_estimated(served: Served) -> None:
    client = served.client()
    with client.chat.completions.with_streaming_response.create(
        model="ds-chat", messages=[fault("cut_after=4 tokens=30")], stream=True
    ) as resp:
        request_id = resp.headers["x-sluice-request-id"]
        with pytest.raises(openai.APIError):
            list(resp.parse())
    row = served.row(request_id)
    assert (row["status"], row["usage_estimated"], row["http_status"]) == ("cut", 1, 200)
    assert row["output_tokens"] >= 3 and row["input_tokens"] > 0 and row["cost_nanos"] > 0


def test_client_disconnect_mid_stream_is_settled(served: Served) -> None:
    async def run() -> str:
        client = openai.AsyncOpenAI(base_url=served.server.base_url, api_key=ADMIN_KEY, max_retries=0)
        async with client.chat.completions.with_streaming_response.create(
            model="claude-chat", messages=[fault("pace_ms=30 tokens=200")], stream=True
        ) as resp:
            request_id = resp.headers["x-sluice-request-id"]
            seen = 0
            stream = await resp.parse()
            assert isinstance(stream, openai.AsyncStream)
            async for _chunk in stream:
                seen += 1
                if seen == 5:
                    break
        await client.close()
        return request_id

    request_id = asyncio.run(run())
    for _ in range(100):
        row = served.rows().get(request_id)
        if row is not None and row["status"] != "pending":
            break
        asyncio.run(asyncio.sleep(0.05))
    assert row is not None
    assert (row["status"], row["client_disconnected"], row["usage_estimated"]) == ("disconnected", 1, 1)
    assert row["output_tokens"] >= 3 and row["cost_nanos"] > 0


def test_provider_error_is_recorded_unbilled(served: Served) -> None:
    with pytest.raises(openai.InternalServerError):
        served.client().chat.completions.create(model="gem-chat", messages=[fault("status=500")])
    errors = [r for r in served.rows().values() if r["alias"] == "gem-chat" and r["status"] == "error"]
    assert errors and all(r["cost_nanos"] == 0 and r["usage_estimated"] == 0 for r in errors)


def test_embeddings_bill_input_only(served: Served) -> None:
    raw = served.client().embeddings.with_raw_response.create(model="oa-embed", input=["a b c", "d e"])
    usage = raw.parse().usage
    row = served.row(raw.headers["x-sluice-request-id"])
    assert (row["endpoint"], row["output_tokens"]) == ("embeddings", 0)
    assert row["cost_nanos"] == usage.prompt_tokens * 20  # 0.02 per million


@pytest.mark.parametrize(
    ("headers", "code", "status"),
    [
        ({}, "feature_required", 400),
        ({"x-sluice-feature": "billing"}, "permission_denied", 403),
        ({"x-sluice-feature": "search", "x-sluice-tags": "tier=silver"}, "permission_denied", 403),
        ({"x-sluice-feature": "search", "x-sluice-tags": "novalue"}, "invalid_tag", 400),
        ({"x-sluice-feature": "bad feature!"}, "invalid_tag", 400),
    ],
)
def test_key_tag_rules(served: Served, headers: dict[str, str], code: str, status: int) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        served.client(served.keys["strict"]).chat.completions.create(
            model="oa-chat", messages=_hello(), extra_headers=headers
        )
    assert (info.value.status_code, info.value.code) == (status, code)


def test_key_tag_rules_accept_allowed_values(served: Served) -> None:
    raw = served.client(served.keys["strict"]).chat.completions.with_raw_response.create(
        model="oa-chat",
        messages=_hello(),
        extra_headers={"x-sluice-feature": "search", "x-sluice-tags": "env=dev,tier=gold"},
    )
    row = served.row(raw.headers["x-sluice-request-id"])
    assert (row["feature"], orjson.loads(row["tags"])) == ("search", {"env": "dev", "tier": "gold"})


def test_content_is_stored_only_for_keys_that_ask(served: Served) -> None:
    plain = served.client().chat.completions.with_raw_response.create(model="oa-chat", messages=_hello())
    logged = served.client(served.keys["logged"]).chat.completions.with_raw_response.create(
        model="oa-chat", messages=[{"role": "user", "content": "remember this"}]
    )
    served.rows()
    with sqlite3.connect(served.data_dir / "sluice.db") as db:
        stored = dict(db.execute("SELECT request_id, request FROM ledger_content").fetchall())
    assert plain.headers["x-sluice-request-id"] not in stored
    assert b"remember this" in stored[logged.headers["x-sluice-request-id"]]


def test_spend_report_and_its_errors(served: Served) -> None:
    served.client().chat.completions.create(
        model="oa-chat", messages=_hello(), extra_headers={"x-sluice-feature": "report-check"}
    )
    rows = served.rows().values()
    status, body, _ = served.get("/admin/spend?by=feature")
    report = orjson.loads(body)
    assert status == 200 and report["object"] == "spend_report"
    assert report["total"]["cost_nanos"] == sum(r["cost_nanos"] for r in rows)
    assert report["total"]["requests"] == len(rows)
    groups = {g["feature"]: g for g in report["groups"]}
    assert groups["report-check"]["requests"] == 1
    status, body, headers = served.get("/admin/spend?by=alias,day&format=csv")
    assert status == 200 and headers["content-type"] == "text/csv"
    assert body.decode().splitlines()[0].startswith("alias,day,requests,")
    for query, param in [
        ("by=colour", "by"),
        ("since=yesterday", "since"),
        ("top=0", "top"),
        ("format=xml", "format"),
    ]:
        status, body, _ = served.get(f"/admin/spend?{query}")
        assert status == 400, query
        assert orjson.loads(body)["error"]["param"] == param
    status, body, _ = served.get("/admin/spend", key=served.keys["team"])
    assert status == 403


def test_metrics_need_the_admin_key_and_count_requests(served: Served) -> None:
    served.client().chat.completions.create(model="oa-chat", messages=_hello())
    assert served.get("/metrics", key=None)[0] == 401
    assert served.get("/metrics", key=served.keys["team"])[0] == 403
    status, body, headers = served.get("/metrics")
    text = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert 'sluice_requests_total{alias="oa-chat",feature="",provider="openai",status="ok"}' in text
    assert "sluice_gateway_overhead_seconds_bucket" in text
    assert "sluice_cost_nanodollars_total" in text
    assert "sluice_time_to_first_token_seconds_bucket" in text


def test_spend_cli_table_and_errors(served: Served) -> None:
    served.client().chat.completions.create(
        model="oa-chat", messages=_hello(), extra_headers={"x-sluice-feature": "cli-table"}
    )
    served.rows()  # flushed
    base = [sys.executable, "-m", "sluice.cli", "spend", "--data-dir", str(served.data_dir)]
    env = {**os.environ, "COLUMNS": "200"}
    table = subprocess.run(
        [*base, "--top-features", "3"], capture_output=True, text=True, check=True, env=env
    )
    assert "feature" in table.stdout and "TOTAL" in table.stdout and "p95 tok" in table.stdout
    bad = subprocess.run([*base, "--by", "colour"], capture_output=True, text=True, check=False, env=env)
    assert bad.returncode == 2 and "Unknown grouping 'colour'" in bad.stderr
    bad = subprocess.run([*base, "--since", "soon"], capture_output=True, text=True, check=False, env=env)
    assert bad.returncode == 2 and "Invalid time" in bad.stderr
