"""Budget periods through a running Sluice whose clock the test moves: a day cap across UTC midnight
under concurrent load, and counters rebuilt from the ledger when the server restarts.

The server dates every request and decides its periods by the injected clock; the test reads the
ledger file and ``GET /admin/limits`` and checks them against each other.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import openai
import pytest

from sluice.app import create_app
from sluice.config_file import parse_config
from sluice.emulator import Emulator
from sluice.ledger.entry import usd_text
from sluice.settings import Config
from tests.conftest import ServerThread, config_yaml, provider_env
from tests.test_budgets import MODELS, Gateway

US = 1_000_000
CAP = 10_000_000  # $0.01 a day, in nano-dollars
MIDNIGHT = datetime(2027, 3, 1, tzinfo=UTC)  # a Monday: the day, the ISO week and the month turn over
BEFORE, AFTER = date(2027, 2, 28), date(2027, 3, 1)


def _us(dt: datetime) -> int:
    return int(dt.timestamp()) * US


class Clock:
    """This machine's time shifted by an offset the test sets: one attribute, read by the server."""

    def __init__(self, at: datetime) -> None:
        self.offset_us = 0
        self.set(at)

    def set(self, at: datetime) -> None:
        offset = _us(at) + at.microsecond - time.time_ns() // 1000
        assert offset >= self.offset_us, "the clock only moves forward"
        self.offset_us = offset

    def __call__(self) -> int:
        return time.time_ns() // 1000 + self.offset_us


def _config(emulator: Emulator, data_dir: Path) -> Config:
    text = config_yaml(emulator, data_dir).replace("models:\n", "models:\n" + MODELS, 1)
    return parse_config(text, environ=provider_env()).config


@pytest.fixture
def serve(emulator: Emulator, tmp_path: Path) -> Iterator[Any]:
    """Start servers over one data directory with a given clock (each stopped at the end)."""
    stack: list[ServerThread] = []

    def start(clock: Clock) -> Gateway:
        server = ServerThread(create_app(_config(emulator, tmp_path), provider_env(), clock=clock))
        stack.append(server.__enter__())
        return Gateway(server, tmp_path)

    yield start
    for server in stack:
        server.__exit__(None, None, None)


def _day(ts_us: int) -> date:
    return datetime.fromtimestamp(ts_us // US, UTC).date()


def _reset(day: date) -> str:
    """The ``x-sluice-limit-reset`` of a day window: the next midnight."""
    return f"{day + timedelta(days=1):%Y-%m-%d}T00:00:00Z"


@dataclass(slots=True)
class Outcome:
    """One request as the client saw it."""

    request_id: str
    result: str  # "ok" or the refusal's code
    reset: str | None  # the refusal's x-sluice-limit-reset
    message: str
    done_after_switch: bool


async def _ask(
    client: openai.AsyncOpenAI,
    i: int,
    *,
    stream: bool,
    fault: str = "",
    user: str | None = None,
    switched: asyncio.Event | None = None,
) -> Outcome:
    """One chat request with a fixed-size prompt (so every one needs the same worst case)."""
    content = f"question {i:04d}" + (f" @emulator({fault})" if fault else "")
    kwargs: dict[str, Any] = {
        "model": "pricey",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 4,
    }
    if user is not None:
        kwargs["user"] = user

    def after() -> bool:
        return switched is not None and switched.is_set()

    try:
        if stream:
            chunks = await client.chat.completions.create(
                **kwargs, stream=True, stream_options={"include_usage": True}
            )
            async with chunks:
                async for _chunk in chunks:
                    pass
            request_id = chunks.response.headers["x-sluice-request-id"]
        else:
            raw = await client.chat.completions.with_raw_response.create(**kwargs)
            raw.parse()
            request_id = raw.headers["x-sluice-request-id"]
    except openai.RateLimitError as err:
        body = err.body if isinstance(err.body, dict) else {}
        headers = err.response.headers
        return Outcome(
            headers["x-sluice-request-id"],
            str(body.get("code")),
            headers.get("x-sluice-limit-reset"),
            str(body.get("message")),
            after(),
        )
    return Outcome(request_id, "ok", None, "", after())


def _client(gw: Gateway, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.server.base_url, api_key=key, max_retries=0, timeout=30)


def _day_counters(gw: Gateway, key_id: str) -> dict[str, tuple[int, int]]:
    """The key's usd/day counters: window → (spent, reserved)."""
    return {
        c["window"]: (c["spent"], c["reserved"])
        for c in gw.counters(f"key:{key_id}")
        if c["scope"] == f"key:{key_id}" and c["metric"] == "usd" and c["window"].startswith("d")
    }


def _quiet(gw: Gateway, scope: str) -> list[dict[str, Any]]:
    """The scope's counters once nothing is reserved (a stream settles after its last byte is sent)."""
    for _ in range(50):
        counters = gw.counters(scope)
        if all(c["reserved"] == 0 for c in counters):
            return counters
        time.sleep(0.05)
    raise AssertionError(f"still reserved: {counters}")


def test_a_day_cap_across_utc_midnight_under_load(serve: Any) -> None:
    """Key A fills its day before the load; key B has requests in flight across midnight. Then: each
    row is dated in one of the two days, no day passes the cap, the day counters equal the ledger's
    days, and every refusal was by the limit of the request's own day."""
    clock = Clock(MIDNIGHT - timedelta(minutes=1))
    gw = serve(clock)
    limits = {"usd": {"day": "0.01"}}
    (key_a, a_id), (key_b, b_id) = gw.new_key(limits=limits), gw.new_key(limits=limits)
    switched = asyncio.Event()

    async def fill() -> list[Outcome]:
        async with _client(gw, key_a) as client:
            outcomes: list[Outcome] = []
            while not outcomes or outcomes[-1].result == "ok":
                outcomes.append(await _ask(client, len(outcomes), stream=False))
                assert len(outcomes) < 100
            return outcomes

    async def load() -> list[tuple[str, Outcome]]:
        async with _client(gw, key_a) as a, _client(gw, key_b) as b:

            async def advance() -> None:
                await asyncio.sleep(0.3)  # mid-load, while B's slow requests of the old day run
                clock.set(MIDNIGHT + timedelta(milliseconds=1))
                switched.set()

            async def one(i: int) -> tuple[str, Outcome]:
                await asyncio.sleep(0.01 * i)
                if i % 2:
                    return "a", await _ask(a, 1000 + i, stream=i % 4 == 1, switched=switched)
                slow = "latency_ms=700" if not switched.is_set() else ""
                return "b", await _ask(b, 1000 + i, stream=i % 4 == 0, fault=slow, switched=switched)

            mover = asyncio.create_task(advance())
            done = await asyncio.gather(*(one(i) for i in range(70)))
            await mover
            return done

    filled = asyncio.run(fill())
    assert filled[-1].result == "budget_exceeded" and len(filled) > 1
    clock.set(MIDNIGHT - timedelta(seconds=1))
    outcomes = asyncio.run(load())

    made = {"a": [o for k, o in outcomes if k == "a"] + filled, "b": [o for k, o in outcomes if k == "b"]}
    _quiet(gw, "key:")
    for name, key_id in (("a", a_id), ("b", b_id)):
        rows = {r["request_id"]: r for r in gw.rows("key_id = ?", (key_id,))}
        assert set(rows) == {o.request_id for o in made[name]}  # one row per request
        spent: dict[date, int] = defaultdict(int)
        for row in rows.values():
            assert row["status"] in ("ok", "refused"), dict(row)
            day = _day(row["ts_us"])
            assert day in (BEFORE, AFTER)
            spent[day] += row["cost_nanos"]
        assert all(total <= CAP for total in spent.values()), spent
        for o in made[name]:  # each refusal names the window of the request's own day
            row = rows[o.request_id]
            assert (o.result == "ok") == (row["status"] == "ok"), (o, dict(row))
            if o.result != "ok":
                assert o.result == row["error_code"] == "budget_exceeded"
                assert o.reset == _reset(_day(row["ts_us"])), (o, row["ts_us"])
        counters = _day_counters(gw, key_id)
        assert counters[f"d{AFTER}"] == (spent[AFTER], 0)
        if name == "b":  # its old day still held reservations at midnight: not swept
            assert counters[f"d{BEFORE}"] == (spent[BEFORE], 0)
        assert counters.get(f"d{BEFORE}", (spent[BEFORE], 0)) == (spent[BEFORE], 0)
        after = [rows[o.request_id] for o in made[name] if _day(rows[o.request_id]["ts_us"]) == AFTER]
        assert any(r["status"] == "ok" for r in after)  # the new day admitted requests again
        if name == "a":  # full before the load: none of its old-day requests got through
            old_day = [rows[o.request_id] for k, o in outcomes if k == "a"]
            old_day = [r for r in old_day if _day(r["ts_us"]) == BEFORE]
            assert old_day and all(r["status"] == "refused" for r in old_day)
        else:  # reserved before midnight, settled after it, counted in the old day
            late = [
                o
                for o in made["b"]
                if o.result == "ok" and o.done_after_switch and _day(rows[o.request_id]["ts_us"]) == BEFORE
            ]
            assert late


def _spent_in_message(message: str) -> str:
    found = re.search(r"; \$([0-9.]+) is spent or reserved", message)
    assert found, message
    return found.group(1)


def _counter_map(counters: list[dict[str, Any]]) -> dict[tuple[str, str, str], tuple[int, int]]:
    return {(c["scope"], c["metric"], c["window"]): (c["spent"], c["reserved"]) for c in counters}


def test_counters_are_rebuilt_from_the_ledger_on_restart(serve: Any) -> None:
    """Fill a key's day cap and an end user's quota (on another key), stop, start a new server on the
    same data: the counters come back equal, requests that did not fit still do not (by the rebuilt
    amounts), a fresh user still fits, and the next day starts afresh."""
    clock = Clock(datetime(2027, 3, 10, 12, tzinfo=UTC))
    gw = serve(clock)
    capped, capped_id = gw.new_key(
        limits={
            "usd": {"day": "0.01", "total": "0.05"},
            "tokens": {"month": 100_000},
            "requests": {"day": 40},
        }
    )
    quota, quota_id = gw.new_key(user_limits={"usd": {"day": "0.006"}})
    day, user_day = (f"key:{capped_id}", "usd", "d2027-03-10"), (f"user:{quota_id}:u1", "usd", "d2027-03-10")
    made: list[Outcome] = []

    async def ask(key: str, i: int, user: str | None = None) -> Outcome:
        async with _client(gw, key) as client:
            outcome = await _ask(client, i, stream=i % 2 == 1, user=user)
        made.append(outcome)
        return outcome

    def until_refused(key: str, user: str | None) -> int:
        """Requests 0, 1, … until one is refused; its number (the same request is refused again)."""
        for i in range(100):
            if asyncio.run(ask(key, i, user)).result != "ok":
                return i
        raise AssertionError("never refused")

    last_by_key = until_refused(capped, None)
    last_by_user = until_refused(quota, "u1")
    assert [o.result for o in made if o.result != "ok"] == ["budget_exceeded", "user_quota_exceeded"]
    before = _counter_map(_quiet(gw, ""))
    assert before[day][0] > 0 and before[user_day][0] > 0
    gw.server.__exit__(None, None, None)

    gw = serve(clock)  # a new process on the same data directory
    after = _counter_map(gw.counters(""))
    for counter, value in before.items():
        assert after.get(counter) == value, (counter, value, after.get(counter))

    refused = asyncio.run(ask(capped, last_by_key))
    assert refused.result == "budget_exceeded"
    assert _spent_in_message(refused.message) == usd_text(after[day][0])
    refused = asyncio.run(ask(quota, last_by_user, "u1"))
    assert refused.result == "user_quota_exceeded"
    assert _spent_in_message(refused.message) == usd_text(after[user_day][0])
    assert asyncio.run(ask(quota, last_by_user, "u2")).result == "ok"  # another user starts at zero

    clock.set(datetime(2027, 3, 11, 0, 0, 1, tzinfo=UTC))  # the next day: room again
    admitted = asyncio.run(ask(capped, last_by_key))
    assert admitted.result == "ok"
    rows = {r["request_id"]: r for r in gw.rows("key_id IN (?, ?)", (capped_id, quota_id))}
    assert set(rows) == {o.request_id for o in made}
    new_cost = rows[admitted.request_id]["cost_nanos"]
    final = _counter_map(_quiet(gw, f"key:{capped_id}"))
    assert final[(f"key:{capped_id}", "usd", "d2027-03-11")] == (new_cost, 0)
    total = sum(r["cost_nanos"] for r in rows.values() if r["key_id"] == capped_id)
    assert final[(f"key:{capped_id}", "usd", "all")] == (
        before[(f"key:{capped_id}", "usd", "all")][0] + new_cost,
        0,
    )
    assert final[(f"key:{capped_id}", "usd", "all")] == (total, 0)
