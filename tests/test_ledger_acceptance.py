"""Acceptance: 1,000 mixed requests through a running Sluice settle as exactly 1,000 correctly priced rows.

Real server, real ``openai`` SDK (async, bounded concurrency, no SDK retries), the emulator as every
provider. The mix is deterministic (``random.Random(SEED)``): non-stream chat, streams with and without
``include_usage`` and embeddings across every dialect (Anthropic, DeepSeek, OpenRouter, Ollama, vLLM, …);
five features given by header or ``metadata``; streams the provider cuts; clients that leave mid-stream
or abandon a call; provider errors. Then every row is checked against the usage the client saw and a
cost computed here, independently of ``sluice.pricing``, from hand-written published rates (checked once
against genai-prices' data so a data change fails loudly), and ``sluice spend`` is checked against SQL.

Every request carries the tag ``seq=<n>`` (header or ``metadata``): rows are matched to requests by it,
also for the abandoned calls whose request id the client never receives.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import math
import random
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any, NamedTuple

import openai
import orjson
import pytest
import yaml

from sluice.app import create_app
from sluice.config_file import parse_config
from sluice.emulator import Emulator
from sluice.ledger.entry import COLUMNS, TOKEN_COLUMNS
from sluice.pricing.extract import sheet_for
from tests.conftest import ADMIN_KEY, CONFIG_PRICES, DIALECTS, ServerThread, config_yaml, provider_env

SEED = 20261124
TOTAL = 1000
CONCURRENCY = 32
FEATURES = ("search", "chat", "summarise", "agent", "indexing")
USERS = (None, "alice", "bob", "carol")
# How many requests of each kind (sums to TOTAL).
MIX = {
    "chat": 420,  # non-stream chat completion
    "stream_usage": 220,  # stream with stream_options.include_usage
    "stream_plain": 130,  # stream without usage
    "embed": 100,  # embeddings
    "cut": 50,  # the provider closes the stream mid-way (5 %)
    "drop_stream": 35,  # the client closes the stream after a few chunks
    "drop_call": 15,  # the client abandons a non-stream call (cancelled task); 5 % client disconnects
    "error": 30,  # the provider answers 500 or 429 (3 %)
}
CHAT_ALIAS = {alias: (preset, model) for alias, preset, model, _emb in DIALECTS}
EMBED_ALIAS = {
    alias.replace("-chat", "-embed"): (preset, "text-embedding-3-small")
    for alias, preset, _model, emb in DIALECTS
    if emb
}
FREE = frozenset({"ollama", "vllm"})
STREAM_KINDS = frozenset({"stream_usage", "stream_plain", "cut", "drop_stream"})
# Ledger columns the spend report sums per group (cost first).
SUMMED = ("cost_nanos", *TOKEN_COLUMNS, "usage_estimated")
VOCAB = ("ledger", "river", "gate", "price", "token", "stream", "cache", "übung", "naïve", "日本", "value")


# --- the golden prices, by hand ---------------------------------------------------------------------


class Rate(NamedTuple):
    """USD per million tokens; a cache rate of None is charged at the input rate."""

    input: Decimal
    output: Decimal
    cache_read: Decimal | None = None
    cache_write: Decimal | None = None
    cache_write_1h: Decimal | None = None


def _rate(
    inp: str, out: str, read: str | None = None, write: str | None = None, w1h: str | None = None
) -> Rate:
    def d(v: str | None) -> Decimal | None:
        return None if v is None else Decimal(v)

    return Rate(Decimal(inp), Decimal(out), d(read), d(write), d(w1h))


EMBEDDING = _rate("0.02", "0")
# Published prices (genai-prices 0.2.3, and the config prices in tests/conftest.py for what it lacks).
FLAT: dict[tuple[str, str], Rate] = {
    ("openai", "gpt-4o-mini"): _rate("0.15", "0.6", "0.075"),
    ("dashscope", "qwen-plus"): _rate("0.40", "1.20", "0.16"),  # configured; cached input at 40 %
    ("anthropic", "claude-sonnet-5"): _rate("2", "10", "0.2", "2.5", "4"),
    ("gemini", "gemini-2.5-flash"): _rate("0.3", "2.5", "0.03"),
    ("groq", "llama-3.3-70b-versatile"): _rate("0.59", "0.79"),
    ("openai", "text-embedding-3-small"): EMBEDDING,
    ("dashscope", "text-embedding-3-small"): EMBEDDING,  # configured
    ("openrouter", "text-embedding-3-small"): EMBEDDING,  # configured
    ("gemini", "text-embedding-3-small"): EMBEDDING,  # configured
}
# DeepSeek: the standard rate, doubled on weekdays 01:00-04:00 and 06:00-10:00 UTC (all day off-peak on
# weekends: genai-prices' time-of-day rule has no weekdays, Sluice adds them).
DEEPSEEK_STANDARD = _rate("0.15", "0.6", "0.003")
DEEPSEEK_PEAK = _rate("0.3", "1.2", "0.006")
DEEPSEEK_PEAK_HOURS = ((1, 4), (6, 10))
# OpenRouter bills through usage.cost; genai-prices' rate prices a request whose usage never arrived.
OPENROUTER_QWEN_UNTIL = _rate("0.4", "1.2", "0.16")
OPENROUTER_QWEN_SINCE = (date(2026, 10, 19), _rate("0.26", "0.78", "0.052", "0.325"))
OPENROUTER_QWEN_LARGE_ABOVE = 256_000  # a higher band past this many input tokens (never reached here)


def golden_rate(preset: str, model: str, at: datetime) -> Rate:
    """The published rate for a request to ``model`` on ``preset`` made at ``at`` (UTC)."""
    if (preset, model) == ("deepseek", "deepseek-flash"):
        peak = at.weekday() < 5 and any(lo <= at.hour < hi for lo, hi in DEEPSEEK_PEAK_HOURS)
        return DEEPSEEK_PEAK if peak else DEEPSEEK_STANDARD
    if (preset, model) == ("openrouter", "qwen/qwen-plus"):
        since, rate = OPENROUTER_QWEN_SINCE
        return rate if at.date() >= since else OPENROUTER_QWEN_UNTIL
    return FLAT[(preset, model)]


def emulator_billed(prompt: int, completion: int) -> Decimal:
    """What the emulator's OpenRouter reports as ``usage.cost``: $0.10 / $0.40 per million, 12 places."""
    return Decimal(str(round((prompt * 0.1 + completion * 0.4) / 1_000_000, 12)))


def nanos_up(usd: Fraction | Decimal) -> int:
    """USD → integer nano-dollars, rounded up."""
    return math.ceil(Fraction(usd) * 10**9)


def golden_nanos(row: dict[str, Any], billed: Decimal | None) -> int:
    """The row's cost computed here from its token columns (exact fractions, not ``sluice.pricing``)."""
    if row["provider"] in FREE:
        return 0
    if billed is not None:
        return nanos_up(billed)
    at = datetime.fromtimestamp(row["ts_us"] // 1_000_000, UTC)
    rate = golden_rate(row["provider"], row["model"], at)
    if row["provider"] == "openrouter":
        assert row["input_tokens"] <= OPENROUTER_QWEN_LARGE_ABOVE
    unpriced = ("input_audio_tokens", "output_audio_tokens", "input_image_tokens", "web_searches")
    assert not any(row[c] for c in unpriced), row  # the emulator reports none of these here
    read, write, write_1h = row["cache_read_tokens"], row["cache_write_tokens"], row["cache_write_1h_tokens"]
    plain = row["input_tokens"] - read - write
    assert plain >= 0, row
    write_rate = rate.input if rate.cache_write is None else rate.cache_write
    per_million = (
        plain * Fraction(rate.input)
        + read * Fraction(rate.input if rate.cache_read is None else rate.cache_read)
        + (write - write_1h) * Fraction(write_rate)
        + write_1h * Fraction(write_rate if rate.cache_write_1h is None else rate.cache_write_1h)
        + row["output_tokens"] * Fraction(rate.output)
    )
    return nanos_up(per_million / 10**6)


def test_golden_rates_are_the_published_ones() -> None:
    """The hand-written table above agrees with genai-prices' data and the test config's prices."""
    instants = [
        datetime(2026, 11, 24, 2, 30, tzinfo=UTC),  # Tuesday, DeepSeek peak
        datetime(2026, 11, 24, 8, 0, tzinfo=UTC),  # Tuesday, DeepSeek peak
        datetime(2026, 11, 24, 5, 0, tzinfo=UTC),  # Tuesday, between the windows
        datetime(2026, 11, 24, 20, 0, tzinfo=UTC),  # Tuesday evening
        datetime(2026, 11, 28, 2, 30, tzinfo=UTC),  # Saturday, inside a window: off-peak all day
        datetime(2026, 10, 18, 12, 0, tzinfo=UTC),  # before OpenRouter's Qwen price change
        datetime(2026, 10, 19, 0, 0, tzinfo=UTC),  # the day it changed
    ]
    pairs = {
        *((p, m) for p, m in CHAT_ALIAS.values() if p not in FREE),
        *((p, m) for p, m in EMBED_ALIAS.values() if p not in FREE),
    }
    for preset, model in sorted(pairs):
        configured = CONFIG_PRICES.get((preset, model))
        for at in instants:
            mine = golden_rate(preset, model, at)
            if configured is not None:
                price = {k: Decimal(str(v)) for k, v in yaml.safe_load(configured).items()}
                assert (mine.input, mine.output) == (price["input"], price["output"]), (preset, model)
                continue
            sheet = sheet_for(preset, model)
            assert sheet is not None, f"genai-prices no longer prices {preset}/{model}"
            theirs = sheet.rates(at, 1000)
            got = Rate(
                theirs.input, theirs.output, theirs.cache_read, theirs.cache_write, theirs.cache_write_1h
            )
            assert got == mine, (preset, model, at)
            if (preset, model) == ("openrouter", "qwen/qwen-plus"):
                assert sheet.rates(at, OPENROUTER_QWEN_LARGE_ABOVE) == theirs


# --- the requests -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Planned:
    """One request of the run, decided before it is sent."""

    seq: int
    kind: str
    alias: str
    feature: str | None
    via_metadata: bool  # feature and seq tag in ``metadata`` rather than headers
    user: str | None
    inputs: list[str]  # chat: one user message; embeddings: the inputs
    directive: str  # the emulator fault spec
    stream: bool = False
    include_usage: bool = False
    close_after: int = 0  # drop_stream: chunks read before closing

    @property
    def embedding(self) -> bool:
        return self.alias in EMBED_ALIAS

    @property
    def target(self) -> tuple[str, str]:
        return EMBED_ALIAS[self.alias] if self.embedding else CHAT_ALIAS[self.alias]

    def prompt_tokens(self) -> int:
        """The emulator's documented count: four UTF-8 bytes a token, plus 3 per chat message."""
        count = sum(-(-len(text.encode()) // 4) for text in self.inputs)
        return count if self.embedding else count + 3


@dataclass(slots=True)
class Seen:
    """What the client observed."""

    request_id: str | None = None
    usage: dict[str, Any] | None = None  # the usage object as the SDK parsed it (extras included)
    cost: Decimal | None = None  # x-sluice-cost-usd, or the streamed usage.cost
    deltas: int = 0  # content and reasoning deltas received
    status: int | None = None  # an error's HTTP status
    raised: str | None = None  # the exception the SDK raised, by class name
    problems: list[str] = field(default_factory=list)  # anything unexpected, reported at the end


def plan_requests(rng: random.Random) -> list[Planned]:
    """The deterministic mix: ``MIX`` kinds shuffled, each with its alias, feature, prompt and faults."""
    kinds = [kind for kind, count in MIX.items() for _ in range(count)]
    rng.shuffle(kinds)
    chat_aliases, embed_aliases = sorted(CHAT_ALIAS), sorted(EMBED_ALIAS)
    plans = []
    for seq, kind in enumerate(kinds):
        if kind == "embed":
            alias = rng.choice(embed_aliases)
        elif kind in ("drop_call", "error"):
            alias = rng.choice(chat_aliases + embed_aliases)
        else:
            alias = rng.choice(chat_aliases)
        embedding = alias in EMBED_ALIAS
        faults: list[str] = []
        if kind in ("chat", "stream_usage", "stream_plain"):
            faults.append(f"tokens={rng.randint(1, 60)}")
            cache = rng.random()
            if cache < 0.15:
                faults.append(f"cache_read={rng.randint(1, 40)}")
            elif cache < 0.25:
                faults.append(f"cache_write={rng.randint(1, 40)}")
        elif kind == "cut":
            faults.append(f"cut_after={rng.randint(5, 10)} tokens=30")
        elif kind == "drop_stream":
            faults.append("pace_ms=20 tokens=200")  # a 4 s stream, left after a few chunks
        elif kind == "drop_call":
            faults.append("latency_ms=3000")  # abandoned as soon as the gateway has it in flight
        elif kind == "error":
            faults.append(f"status={rng.choice([500, 429])}")
        directive = " ".join(faults)
        words = " ".join(rng.choice(VOCAB) for _ in range(rng.randint(1, 80)))
        inputs = [f"{words} @emulator({directive})"]
        if embedding and rng.random() < 0.3:
            inputs.append(" ".join(rng.choice(VOCAB) for _ in range(rng.randint(1, 20))))
        stream = kind in STREAM_KINDS or (kind == "error" and not embedding and rng.random() < 0.5)
        plans.append(
            Planned(
                seq=seq,
                kind=kind,
                alias=alias,
                feature=rng.choice([*FEATURES, None]),
                via_metadata=not embedding and rng.random() < 0.5,
                user=rng.choice(USERS),
                inputs=inputs,
                directive=directive,
                stream=stream,
                include_usage=kind == "stream_usage"
                or (stream and kind != "stream_plain" and rng.random() < 0.5),
                close_after=rng.randint(2, 6),
            )
        )
    return plans


def _kwargs(p: Planned) -> dict[str, Any]:
    """The SDK call's arguments for a request (feature and ``seq`` tag by header or metadata)."""
    headers: dict[str, str] = {}
    kwargs: dict[str, Any] = {"model": p.alias}
    if p.via_metadata:
        kwargs["metadata"] = {"seq": str(p.seq), "kind": p.kind} | (
            {"feature": p.feature} if p.feature else {}
        )
    else:
        headers["x-sluice-tags"] = f"seq={p.seq},kind={p.kind}"
        if p.feature:
            headers["x-sluice-feature"] = p.feature
    kwargs["extra_headers"] = headers
    if p.user is not None:
        kwargs["user"] = p.user
    if p.embedding:
        kwargs["input"] = p.inputs if len(p.inputs) > 1 else p.inputs[0]
        return kwargs
    kwargs["messages"] = [{"role": "user", "content": p.inputs[0]}]
    if p.stream:
        kwargs["stream"] = True
        if p.include_usage:
            kwargs["stream_options"] = {"include_usage": True}
    return kwargs


def _usage_dict(usage: Any) -> dict[str, Any]:
    assert usage is not None
    return dict(usage.model_dump())


async def _complete(client: openai.AsyncOpenAI, p: Planned, seen: Seen) -> None:
    if p.embedding:
        emb = await client.embeddings.with_raw_response.create(**_kwargs(p))
        seen.request_id = emb.headers["x-sluice-request-id"]
        seen.cost = Decimal(emb.headers["x-sluice-cost-usd"])
        seen.usage = _usage_dict(emb.parse().usage)
        return
    raw = await client.chat.completions.with_raw_response.create(**_kwargs(p))
    seen.request_id = raw.headers["x-sluice-request-id"]
    seen.cost = Decimal(raw.headers["x-sluice-cost-usd"])
    seen.usage = _usage_dict(raw.parse().usage)


def _count_deltas(chunk: Any) -> int:
    n = 0
    for choice in chunk.choices:
        if choice.delta.content:
            n += 1
        if (choice.delta.model_extra or {}).get("reasoning_content"):
            n += 1
    return n


async def _stream(client: openai.AsyncOpenAI, p: Planned, seen: Seen) -> None:
    stream = await client.chat.completions.create(**_kwargs(p))
    seen.request_id = stream.response.headers["x-sluice-request-id"]
    chunks = 0
    try:
        async for chunk in stream:
            seen.deltas += _count_deltas(chunk)
            chunks += 1
            if chunk.usage is not None:
                seen.usage = _usage_dict(chunk.usage)
                seen.cost = Decimal(str((chunk.usage.model_extra or {})["cost"]))
            if p.kind == "drop_stream" and chunks >= p.close_after:
                break  # the client leaves: close the response, which closes the connection
    except openai.APIError as err:
        seen.raised = type(err).__name__
    finally:
        await stream.close()


async def _wait_in_flight(db_path: Path, seq: int) -> bool:
    """Wait until the gateway has the request in flight: its pending row is in the ledger."""
    sql = "SELECT status FROM ledger WHERE json_extract(tags, '$.seq') = ?"

    def status() -> str | None:
        with contextlib.closing(sqlite3.connect(db_path, timeout=10)) as db:
            got = db.execute(sql, (str(seq),)).fetchone()
        return None if got is None else str(got[0])

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if await asyncio.to_thread(status) == "pending":
            return True
        await asyncio.sleep(0.02)
    return False


async def _abandon(client: openai.AsyncOpenAI, p: Planned, seen: Seen, db_path: Path) -> None:
    call: Awaitable[Any] = (
        client.embeddings.create(**_kwargs(p))
        if p.embedding
        else client.chat.completions.create(**_kwargs(p))
    )
    task = asyncio.ensure_future(call)
    if not await _wait_in_flight(db_path, p.seq):
        seen.problems.append("never saw the request in flight")
    if task.done():
        seen.problems.append(f"finished before it was abandoned: {task.exception()!r}")
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _error(client: openai.AsyncOpenAI, p: Planned, seen: Seen) -> None:
    try:
        if p.embedding:
            await client.embeddings.create(**_kwargs(p))
        elif p.stream:
            stream = await client.chat.completions.create(**_kwargs(p))
            async with stream:
                async for _chunk in stream:
                    pass
        else:
            await client.chat.completions.create(**_kwargs(p))
    except openai.APIStatusError as err:
        seen.request_id = err.response.headers.get("x-sluice-request-id")
        seen.status = err.status_code
        seen.raised = type(err).__name__
    else:
        seen.problems.append("a provider error reached the client as a success")


async def drive(base_url: str, plans: list[Planned], db_path: Path) -> list[Seen]:
    """Send every planned request, at most ``CONCURRENCY`` at a time."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key=ADMIN_KEY, max_retries=0, timeout=30)
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(p: Planned) -> Seen:
        seen = Seen()
        async with gate:
            try:
                if p.kind in ("chat", "embed"):
                    await _complete(client, p, seen)
                elif p.kind == "drop_call":
                    await _abandon(client, p, seen, db_path)
                elif p.kind == "error":
                    await _error(client, p, seen)
                else:
                    await _stream(client, p, seen)
            except openai.APIError as err:  # recorded, and reported by the checks with the request
                seen.problems.append(f"unexpected {type(err).__name__}: {err}")
        return seen

    try:
        return list(await asyncio.gather(*(one(p) for p in plans)))
    finally:
        await client.close()


# --- the run ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class Run:
    """The outcome of the run: plans, what the client saw, the settled rows, the data directory."""

    plans: list[Planned]
    seen: list[Seen]
    rows: list[dict[str, Any]]  # read after the server stopped
    rows_live: list[dict[str, Any]]  # read while it ran, once every request had settled
    data_dir: Path
    seconds: float

    @property
    def db(self) -> Path:
        return self.data_dir / "sluice.db"

    def by_seq(self) -> dict[int, dict[str, Any]]:
        return {int(orjson.loads(r["tags"])["seq"]): r for r in self.rows}


def _flush(root: str) -> None:
    """``/admin/spend`` commits everything the ledger writer holds before it reads."""
    headers = {"authorization": f"Bearer {ADMIN_KEY}"}
    req = urllib.request.Request(root + "/admin/spend", headers=headers)  # noqa: S310 - our own test server
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - our own test server
        assert resp.status == 200


def _read_rows(db: Path) -> list[dict[str, Any]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        got = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM ledger").fetchall()  # noqa: S608
    return [dict(zip(COLUMNS, r, strict=True)) for r in got]


def _settled_rows(root: str, db: Path, expected: int) -> list[dict[str, Any]]:
    """The rows once every request has settled (a client that left is settled as the gateway notices)."""
    deadline = time.monotonic() + 15
    while True:
        _flush(root)
        rows = _read_rows(db)
        if (len(rows) >= expected and all(r["status"] != "pending" for r in rows)) or (
            time.monotonic() > deadline
        ):
            return rows
        time.sleep(0.05)


@pytest.fixture(scope="module")
def run(emulator: Emulator, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Start a Sluice with a fresh data directory, send the 1,000 requests, stop it, read the ledger."""
    data_dir = tmp_path_factory.mktemp("acceptance")
    text = config_yaml(emulator, data_dir).replace("server:\n", "server:\n  ledger_flush_ms: 5\n", 1)
    config = parse_config(text, environ=provider_env()).config
    plans = plan_requests(random.Random(SEED))
    with ServerThread(create_app(config, provider_env())) as server:
        started = time.monotonic()
        seen = asyncio.run(drive(server.base_url, plans, data_dir / "sluice.db"))
        seconds = time.monotonic() - started
        live = _settled_rows(server.base_url.removesuffix("/v1"), data_dir / "sluice.db", TOTAL)
    rows = _read_rows(data_dir / "sluice.db")
    print(f"\n{TOTAL} requests in {seconds:.1f} s; statuses {Counter(r['status'] for r in rows)}")
    return Run(plans, seen, rows, live, data_dir, seconds)


# --- the checks -------------------------------------------------------------------------------------


def test_every_request_has_exactly_one_settled_row(run: Run) -> None:
    problems = {
        p.seq: (p.kind, p.alias, s.problems) for p, s in zip(run.plans, run.seen, strict=True) if s.problems
    }
    assert not problems
    assert len(run.rows) == TOTAL
    key = "request_id"
    assert sorted(run.rows, key=lambda r: r[key]) == sorted(run.rows_live, key=lambda r: r[key])
    assert not [r for r in run.rows if r["status"] in ("pending", "interrupted")]
    assert len({r["request_id"] for r in run.rows}) == TOTAL
    assert sorted(run.by_seq()) == list(range(TOTAL))
    ids = Counter(r["request_id"] for r in run.rows)
    captured = [s.request_id for s in run.seen if s.request_id is not None]
    assert len(captured) == TOTAL - MIX["drop_call"]  # an abandoned call never sees its id
    assert all(ids[rid] == 1 for rid in captured)
    rows = run.by_seq()
    for p, s in zip(run.plans, run.seen, strict=True):
        if s.request_id is not None:
            assert rows[p.seq]["request_id"] == s.request_id, p


def test_rows_record_who_what_and_how(run: Run) -> None:
    rows = run.by_seq()
    for p in run.plans:
        row = rows[p.seq]
        preset, model = p.target
        assert (row["alias"], row["provider"], row["model"]) == (p.alias, preset, model), p
        assert (row["endpoint"], row["stream"]) == ("embeddings" if p.embedding else "chat", int(p.stream)), p
        assert (row["feature"], row["user_id"]) == (p.feature, p.user), p
        assert orjson.loads(row["tags"]) == {"seq": str(p.seq), "kind": p.kind}, p
        assert row["latency_us"] > 0, p
        if p.stream and p.kind != "error":  # something was sent before the stream ended
            assert row["ttft_us"] is not None and 0 < row["ttft_us"] <= row["latency_us"], p
        else:
            assert row["ttft_us"] is None, p
        source = row["price_source"]
        source = "config@" if source.startswith("config@") else source
        assert source == expected_price_source(p, row["status"]), p


def expected_price_source(p: Planned, status: str) -> str:
    """Where the row's price should come from (empty: nothing was charged)."""
    preset, model = p.target
    if status == "error":
        return ""
    if preset in FREE:
        return f"preset:{preset}:free"
    if (preset, model) in CONFIG_PRICES:
        return "config@"  # followed by the configured price's digest
    if preset == "openrouter" and status == "ok":
        return "provider-billed"
    return "genai-prices 0.2.3"


def test_completed_requests_cost_the_golden_price_of_the_usage_reported(run: Run) -> None:
    rows = run.by_seq()
    checked = 0
    for p, s in zip(run.plans, run.seen, strict=True):
        if p.kind not in ("chat", "embed", "stream_usage", "stream_plain"):
            continue
        row = rows[p.seq]
        assert (row["status"], row["http_status"], row["usage_estimated"]) == ("ok", 200, 0), p
        assert (row["client_disconnected"], row["error_code"]) == (0, None), p
        preset, _model = p.target
        # the emulator's deterministic usage, as documented
        assert row["input_tokens"] == p.prompt_tokens(), p
        if p.embedding:
            assert row["output_tokens"] == 0, p
        else:
            reasoning = 8 if preset == "deepseek" else 0
            wanted = int(p.directive.split("tokens=")[1].split()[0])
            assert (row["output_tokens"], row["reasoning_tokens"]) == (wanted + reasoning, reasoning), p
        # the row's tokens are the usage the client saw
        if s.usage is not None:
            prompt_details = s.usage.get("prompt_tokens_details") or {}
            completion_details = s.usage.get("completion_tokens_details") or {}
            assert row["input_tokens"] == s.usage["prompt_tokens"], p
            assert row["output_tokens"] == (s.usage.get("completion_tokens") or 0), p
            assert row["cache_read_tokens"] == (prompt_details.get("cached_tokens") or 0), p
            assert row["cache_write_tokens"] == (prompt_details.get("cache_write_tokens") or 0), p
            assert row["reasoning_tokens"] == (completion_details.get("reasoning_tokens") or 0), p
        else:
            assert p.kind == "stream_plain"
            assert row["output_tokens"] == s.deltas, p  # one token per delta in the emulator
        assert (row["cache_read_tokens"] > 0) == ("cache_read=" in p.directive), p
        assert (row["cache_write_tokens"] > 0) == ("cache_write=" in p.directive), p
        # the golden cost
        billed = None
        if preset == "openrouter" and not p.embedding:
            billed = emulator_billed(row["input_tokens"], row["output_tokens"])
            if p.kind == "chat":  # the emulator's usage.cost reaches the client unchanged
                assert s.usage is not None and Decimal(str(s.usage["cost"])) == billed, p
            assert row["price_source"] == "provider-billed", p
        expected = golden_nanos(row, billed)
        assert row["cost_nanos"] == expected, (p, row)
        assert (expected > 0) == (preset not in FREE), p
        # and the client was told the row's cost
        if s.cost is not None:
            assert s.cost * 10**9 == row["cost_nanos"], p
        else:
            assert p.kind == "stream_plain", p
        checked += 1
    assert checked == MIX["chat"] + MIX["embed"] + MIX["stream_usage"] + MIX["stream_plain"]


def test_cut_streams_are_estimated_and_charged(run: Run) -> None:
    rows = run.by_seq()
    for p, s in zip(run.plans, run.seen, strict=True):
        if p.kind != "cut":
            continue
        row = rows[p.seq]
        preset, _model = p.target
        assert s.raised == "APIError", p
        assert (row["status"], row["http_status"], row["usage_estimated"]) == ("cut", 200, 1), p
        assert row["client_disconnected"] == 0, p
        assert row["input_tokens"] > 0 and row["output_tokens"] >= 1, p
        assert (row["cost_nanos"] > 0) == (preset not in FREE), p
        assert row["cost_nanos"] == golden_nanos(row, None), (p, row)


def test_client_disconnects_are_settled_as_disconnected(run: Run) -> None:
    rows = run.by_seq()
    for p in run.plans:
        if p.kind not in ("drop_stream", "drop_call"):
            continue
        row = rows[p.seq]
        preset, _model = p.target
        assert (row["status"], row["client_disconnected"], row["usage_estimated"]) == (
            "disconnected",
            1,
            1,
        ), p
        assert row["http_status"] == 499, p
        assert (row["cost_nanos"] > 0) == (preset not in FREE), p
        assert row["cost_nanos"] == golden_nanos(row, None), (p, row)


def test_provider_errors_are_recorded_unbilled(run: Run) -> None:
    rows = run.by_seq()
    for p, s in zip(run.plans, run.seen, strict=True):
        if p.kind != "error":
            continue
        row = rows[p.seq]
        sent = int(p.directive.removeprefix("status="))
        assert s.status is not None and s.status >= 400, p
        assert (row["status"], row["cost_nanos"], row["usage_estimated"]) == ("error", 0, 0), p
        assert row["http_status"] == s.status, p
        assert row["error_code"], p
        assert (s.status == 429) == (sent == 429), p


def _spend(data_dir: Path, fmt: str) -> str:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "sluice.cli",
            "spend",
            "--data-dir",
            str(data_dir),
            "--by",
            "feature",
            "--format",
            fmt,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout


def test_spend_by_feature_equals_the_sum_of_the_rows(run: Run) -> None:
    sums = ", ".join(f"sum({c})" for c in SUMMED)
    with contextlib.closing(sqlite3.connect(run.db)) as db:
        grouped = db.execute(
            f"SELECT coalesce(feature, ''), count(*), {sums} FROM ledger GROUP BY feature"  # noqa: S608
        ).fetchall()
        total = db.execute(f"SELECT count(*), {sums} FROM ledger").fetchone()  # noqa: S608
    by_sql = {feature: tuple(values) for feature, *values in grouped}
    assert set(by_sql) == {*FEATURES, ""}  # "" groups the requests without a feature
    assert total[0] == TOTAL
    assert total[1] == sum(r["cost_nanos"] for r in run.rows) > 0
    assert sum(v[1] for v in by_sql.values()) == total[1]

    report = orjson.loads(_spend(run.data_dir, "json"))
    by_cli = {g["feature"]: (g["requests"], *(g[c] for c in SUMMED)) for g in report["groups"]}
    assert by_cli == by_sql
    assert (report["total"]["requests"], *(report["total"][c] for c in SUMMED)) == tuple(total)
    assert Decimal(report["total"]["cost_usd"]) * 10**9 == total[1]

    records = list(csv.DictReader(io.StringIO(_spend(run.data_dir, "csv"))))
    by_csv = {r["feature"]: (int(r["requests"]), *(int(r[c]) for c in SUMMED)) for r in records}
    assert by_csv == by_sql
    assert sum(v[1] for v in by_csv.values()) == total[1]


def test_the_mix_was_what_was_asked(run: Run) -> None:
    kinds = Counter(p.kind for p in run.plans)
    assert kinds == Counter(MIX)
    presets = {p.target[0] for p in run.plans if p.kind in ("chat", "stream_usage", "stream_plain")}
    assert {"anthropic", "deepseek", "openrouter", "ollama", "vllm"} <= presets
    assert {p.via_metadata for p in run.plans if p.feature} == {True, False}
    assert Counter(p.stream for p in run.plans if p.kind == "error").keys() == {True, False}
