"""The response cache's pure parts and its backends' contract.

One contract, three backends (memory, SQLite, Redis): a missing key is None, ``set`` stores the exact
bytes and replaces, a TTL expires, keys are independent, values are binary-safe, concurrent use does
not corrupt, and the persistent backends keep entries across instances. Then the memory backend's LRU,
the policy (header, mode, key) and the record (encoding, replay of streams, tool-call detection).
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from sluice.cache import backends, policy
from sluice.cache.backends import CacheBackend, MemoryCache, RedisCache, SQLiteCache
from sluice.cache.policy import MAX_TTL_S, REFRESH, SKIP, USE, cache_key, decide, parse_header, scope_of
from sluice.cache.record import COMPLETE, DONE, STREAM, Record, calls_tools, split_events
from sluice.cache.service import ResponseCache
from sluice.errors import InvalidRequest
from sluice.metrics import Metrics
from sluice.settings import CacheSettings

# --- the backends' contract -------------------------------------------------------------------------

BINARY = bytes(range(256)) + b"\x00\x00\xff\xfe\xc3\x28" + "naïve 日本".encode() + b"\x00"


def _opener(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Callable[[], CacheBackend]:
    """A factory of fresh instances of one backend over the same storage."""
    if kind == "memory":
        return lambda: MemoryCache(1 << 20)
    if kind == "sqlite":
        path = tmp_path / "cache" / "cache.db"  # a directory that does not exist yet: start makes it
        return lambda: SQLiteCache(path)
    url = str(request.getfixturevalue("redis_url"))
    return lambda: RedisCache(url)


async def _contract(kind: str, make: Callable[[], CacheBackend], ns: str) -> None:
    def k(name: str) -> str:
        return f"{ns}:{name}"

    cache = make()
    await cache.start()
    try:
        # a TTL of 1 s expires: set first, checked at the end (one wait for the whole body)
        await cache.set(k("short"), b"short-lived", 1)
        await cache.set(k("renewed"), b"first", 1)
        await cache.set(k("renewed"), b"second", 3600)  # replacing also replaces the TTL
        ttl_set = time.monotonic()
        assert await cache.get(k("short")) == b"short-lived"

        # missing, set/get, replace
        assert await cache.get(k("missing")) is None
        await cache.set(k("a"), b'{"v":1}', 60)
        assert await cache.get(k("a")) == b'{"v":1}'
        await cache.set(k("a"), b'{"v":2,"longer":true}', 60)
        assert await cache.get(k("a")) == b'{"v":2,"longer":true}'
        await cache.set(k("a"), b"x", 60)  # shorter than before: nothing of the old value left over
        assert await cache.get(k("a")) == b"x"

        # keys are independent (also of a key that is a prefix of another)
        await cache.set(k("b"), b"bee", 60)
        await cache.set(k("bb"), b"bee-bee", 60)
        assert (await cache.get(k("a")), await cache.get(k("b")), await cache.get(k("bb"))) == (
            b"x",
            b"bee",
            b"bee-bee",
        )
        assert await cache.get(k("b").upper()) is None

        # binary-safe and byte-exact: NULs, bytes that are not UTF-8, the empty value, a large value
        big = BINARY * 1024  # about 270 KB
        for name, value in (("bin", BINARY), ("empty", b""), ("big", big)):
            await cache.set(k(name), value, 60)
        for name, value in (("bin", BINARY), ("empty", b""), ("big", big)):
            got = await cache.get(k(name))
            assert isinstance(got, bytes)
            assert got == value, name

        # concurrent sets and gets do not corrupt: distinct keys, then one key raced by many writers (fewer
        # than 100 at once: see test_lookups_under_load for more)
        values = {k(f"c{i}"): f"value {i} ".encode() * (i + 1) + BINARY[: i * 3] for i in range(80)}
        await asyncio.gather(*(cache.set(key, v, 60) for key, v in values.items()))
        got_all = await asyncio.gather(*(cache.get(key) for key in values))
        assert dict(zip(values, got_all, strict=True)) == values
        racers = [bytes([i]) * (1000 + i) for i in range(40)]
        await cache.set(k("raced"), racers[0], 60)
        ops = [op for v in racers for op in (cache.set(k("raced"), v, 60), cache.get(k("raced")))]
        seen = [r for r in await asyncio.gather(*ops) if r is not None]  # the gets (sets return None)
        assert len(seen) == len(racers)
        assert all(r in racers for r in seen)  # each read is one whole value, never a mix
        assert await cache.get(k("raced")) in racers

        # the TTL: the short entry is gone, the renewed one is not
        await asyncio.sleep(max(0.0, ttl_set + 1.1 - time.monotonic()))
        assert await cache.get(k("short")) is None
        assert await cache.get(k("renewed")) == b"second"
    finally:
        await cache.close()

    # close and reopen: SQLite keeps entries in its file, Redis on its server; memory is this object's
    again = make()
    await again.start()
    try:
        if kind == "memory":
            assert await again.get(k("a")) is None
        else:
            assert await again.get(k("a")) == b"x"
            assert await again.get(k("bin")) == BINARY
            assert await again.get(k("short")) is None
            await again.set(k("a"), b"from the second instance", 60)
            assert await again.get(k("a")) == b"from the second instance"
    finally:
        await again.close()


@pytest.mark.parametrize("kind", ["memory", "sqlite", "redis"])
def test_backend_contract(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    make = _opener(kind, tmp_path, request)
    asyncio.run(_contract(kind, make, f"contract-{uuid.uuid4().hex}"))


_POOL_REASON = (
    "RedisCache (backends.py) uses redis-py's default pool (at most 100 connections, no waiting): past 100 "
    "concurrent lookups/stores it raises MaxConnectionsError, so under load hits become misses and "
    "stores are lost (RedisCounters uses a BlockingConnectionPool)"
)


@pytest.mark.parametrize(
    "kind",
    ["memory", "sqlite", "redis"],
)
def test_lookups_under_load_are_hits(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """A busy gateway looks up many requests at once: every lookup of a stored entry is a hit."""
    make = _opener(kind, tmp_path, request)
    settings = CacheSettings()

    async def main() -> None:
        service = ResponseCache(settings, make(), Metrics())
        await service.start()
        try:
            body = {
                "model": "m",
                "temperature": 0,
                "messages": [{"role": "user", "content": uuid.uuid4().hex}],
            }
            decision = service.decide(
                None, endpoint="chat", alias="m", key_id="k", key_name="n", team=None, body=body
            )
            await service.backend.set(decision.key, _record(COMPLETE).encode(), 60)
            found = await asyncio.gather(*(service.lookup(decision, "m") for _ in range(300)))
            assert sum(r is not None for r in found) == 300
        finally:
            await service.close()

    asyncio.run(main())


def test_a_lookup_on_an_unresponsive_redis_is_a_miss_soon() -> None:
    async def main() -> None:
        with socket.socket() as silent:  # accepts connections (the kernel does), never answers
            silent.bind(("127.0.0.1", 0))
            silent.listen(16)
            url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
            service = ResponseCache(CacheSettings(), RedisCache(url), Metrics())
            decision = service.decide(
                None,
                endpoint="embeddings",
                alias="m",
                key_id="k",
                key_name="n",
                team=None,
                body={"input": "x"},
            )
            try:
                assert await asyncio.wait_for(service.lookup(decision, "m"), 2.5) is None
            finally:
                await service.close()

    asyncio.run(main())


def test_memory_cache_is_gone_after_close() -> None:
    async def main() -> None:
        cache = MemoryCache(1 << 20)
        await cache.start()
        await cache.set("k", b"v", 60)
        await cache.close()
        assert (await cache.get("k"), cache.bytes) == (None, 0)

    asyncio.run(main())


def test_redis_keys_are_prefixed_and_expire_with_px(redis_url: str) -> None:
    key = f"px-{uuid.uuid4().hex}"

    async def main() -> None:
        cache = RedisCache(redis_url)
        await cache.start()
        try:
            await cache.set(key, b"value", 90)
        finally:
            await cache.close()

    asyncio.run(main())
    with redis.Redis.from_url(redis_url) as raw:
        assert raw.get("sluice:cache:" + key) == b"value"
        assert raw.get(key) is None
        assert 80_000 < int(raw.pttl("sluice:cache:" + key)) <= 90_000


def test_sqlite_sweeps_expired_rows_now_and_then(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "cache.db"
    clock = [time.time_ns() // 1000]
    monkeypatch.setattr(backends, "wall_clock_us", lambda: clock[0])

    async def main() -> None:
        cache = SQLiteCache(path)
        await cache.start()
        try:
            await cache.set("old", b"old", 1)
            clock[0] += 10_000_000  # ten seconds later: "old" has expired
            assert await cache.get("old") is None
            for i in range(998):  # the 1000th write sweeps
                await cache.set(f"k{i}", b"v", 3600)
            with sqlite3.connect(path) as db:
                assert db.execute("SELECT count(*) FROM cache WHERE key = 'old'").fetchone() == (1,)
            await cache.set("last", b"v", 3600)
            with sqlite3.connect(path) as db:
                assert db.execute("SELECT count(*) FROM cache WHERE key = 'old'").fetchone() == (0,)
                assert db.execute("SELECT count(*) FROM cache").fetchone() == (999,)
        finally:
            await cache.close()

    asyncio.run(main())


# --- the memory backend: an LRU bounded by bytes ----------------------------------------------------


def test_memory_lru_evicts_the_least_recently_used_by_bytes() -> None:
    async def main() -> None:
        cache = MemoryCache(max_bytes=100)
        await cache.set("a", b"a" * 40, 60)
        await cache.set("b", b"b" * 40, 60)
        assert cache.bytes == 80
        assert await cache.get("a") == b"a" * 40  # a is now the most recently used
        await cache.set("c", b"c" * 40, 60)  # 120 > 100: the least recently used (b) goes
        assert await cache.get("b") is None
        assert await cache.get("a") == b"a" * 40
        assert await cache.get("c") == b"c" * 40
        assert cache.bytes == 80
        await cache.set("d", b"d" * 100, 60)  # exactly the bound: everything else goes
        assert (await cache.get("a"), await cache.get("c"), await cache.get("d")) == (None, None, b"d" * 100)
        assert cache.bytes == 100
        await cache.set("d", b"D" * 10, 60)  # replacing frees the old value's bytes
        assert cache.bytes == 10
        await cache.set("e", b"e" * 90, 60)
        assert (await cache.get("d"), await cache.get("e")) == (b"D" * 10, b"e" * 90)

    asyncio.run(main())


def test_memory_does_not_store_a_value_larger_than_its_bound() -> None:
    async def main() -> None:
        cache = MemoryCache(max_bytes=100)
        await cache.set("small", b"s" * 30, 60)
        await cache.set("huge", b"h" * 101, 60)
        assert await cache.get("huge") is None
        assert await cache.get("small") == b"s" * 30  # nothing was evicted for it
        assert cache.bytes == 30

    asyncio.run(main())


def test_memory_set_too_large_does_not_leave_the_old_value() -> None:
    async def main() -> None:
        cache = MemoryCache(max_bytes=100)
        await cache.set("k", b"old answer", 60)
        await cache.set("k", b"n" * 101, 60)  # e.g. a refresh whose new answer is too large to keep
        assert await cache.get("k") in (None, b"n" * 101)

    asyncio.run(main())


def test_memory_entries_expire() -> None:
    async def main() -> None:
        cache = MemoryCache(max_bytes=1000)
        await cache.set("k", b"v" * 10, 1)
        cache._items["k"] = (time.monotonic() - 0.001, b"v" * 10)  # as if its second had passed
        assert await cache.get("k") is None
        assert cache.bytes == 0  # an expired entry found by a get is dropped

    asyncio.run(main())


# --- policy: the header --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, (None, None, False)),
        ("", (None, None, False)),
        ("use", (USE, None, False)),
        ("skip", (SKIP, None, False)),
        ("refresh", (REFRESH, None, False)),
        ("USE", (USE, None, False)),
        (" use , ttl=600 ", (USE, 600, False)),
        ("use, ttl=600", (USE, 600, False)),
        ("refresh; ttl=5; tools", (REFRESH, 5, True)),
        ("use, tools", (USE, None, True)),
        ("tools, use", (USE, None, True)),
        ("ttl=60", (None, 60, False)),
        ("use,", (USE, None, False)),
        (f"use, ttl={MAX_TTL_S}", (USE, MAX_TTL_S, False)),
        ("use, ttl=1", (USE, 1, False)),
    ],
)
def test_parse_header(header: str | None, expected: tuple[str | None, int | None, bool]) -> None:
    assert parse_header(header) == expected


@pytest.mark.parametrize(
    "header",
    [
        "bogus",
        "use, maybe",
        "hit",
        "ttl=0",
        "ttl=-5",
        "ttl=abc",
        "ttl=",
        "ttl=1.5",
        "ttl=+5",
        f"ttl={MAX_TTL_S + 1}",
        "use, ttl=10s",
        "tools=1",
        "use tools",
    ],
)
def test_parse_header_refuses_bad_values(header: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_header(header)
    assert caught.value.status == 400
    assert caught.value.type == "invalid_request_error"
    assert caught.value.code == "invalid_header"
    assert "x-sluice-cache" in caught.value.message


# --- policy: the decision ------------------------------------------------------------------------


def _decide(
    settings: CacheSettings,
    header: str | None = None,
    *,
    endpoint: str = "chat",
    alias: str = "fast",
    key_name: str = "app",
    body: dict[str, Any] | None = None,
) -> tuple[str, int | None, bool]:
    return decide(settings, header, endpoint=endpoint, alias=alias, key_name=key_name, body=body or {})


T0: dict[str, Any] = {"temperature": 0}
T07: dict[str, Any] = {"temperature": 0.7}


def test_decide_auto_caches_temperature_zero_and_embeddings() -> None:
    auto = CacheSettings()
    assert auto.mode == "auto"
    assert _decide(auto, body=T0) == (USE, None, False)
    assert _decide(auto, body={"temperature": 0.0}) == (USE, None, False)
    assert _decide(auto, body=T07)[0] == SKIP
    assert _decide(auto, body={"messages": []})[0] == SKIP  # temperature absent: the provider's default
    assert _decide(auto, body={"temperature": None})[0] == SKIP
    assert _decide(auto, endpoint="embeddings", body={"input": "x"})[0] == USE


def test_decide_always_and_off() -> None:
    always = CacheSettings(mode="always")
    assert _decide(always, body=T07)[0] == USE
    assert _decide(always, body={})[0] == USE
    assert _decide(always, endpoint="embeddings")[0] == USE
    off = CacheSettings(mode="off")
    assert _decide(off, body=T0)[0] == SKIP
    assert _decide(off, endpoint="embeddings")[0] == SKIP


def test_decide_per_alias_and_per_key_and_the_key_wins() -> None:
    s = CacheSettings(
        mode="off", aliases={"fast": "always", "slow": "off"}, keys={"eval": "always", "ci": "off"}
    )
    assert _decide(s, alias="fast", body=T07)[0] == USE
    assert _decide(s, alias="other", body=T0)[0] == SKIP  # the global mode
    assert _decide(s, alias="slow", key_name="eval", body=T07)[0] == USE  # the key's mode wins
    assert _decide(s, alias="fast", key_name="ci", body=T0)[0] == SKIP  # …both ways
    auto_alias = CacheSettings(mode="always", aliases={"fast": "auto"})
    assert _decide(auto_alias, alias="fast", body=T07)[0] == SKIP
    assert _decide(auto_alias, alias="fast", body=T0)[0] == USE


def test_decide_the_header_wins() -> None:
    off = CacheSettings(mode="off", keys={"app": "off"}, aliases={"fast": "off"})
    assert _decide(off, "use", body=T07) == (USE, None, False)
    assert _decide(off, "refresh, ttl=30", body=T07) == (REFRESH, 30, False)
    assert _decide(off, "use, tools", endpoint="embeddings") == (USE, None, True)
    always = CacheSettings(mode="always")
    assert _decide(always, "skip", body=T0)[0] == SKIP
    auto = CacheSettings()
    assert _decide(auto, "ttl=60", body=T0) == (USE, 60, False)  # no mode asked: the config decides
    assert _decide(auto, "ttl=60", body=T07)[0] == SKIP
    assert _decide(off, "ttl=60", body=T0)[0] == SKIP


def test_decide_tool_calls_setting() -> None:
    tools = CacheSettings(tool_calls=True)
    assert _decide(tools, body=T0) == (USE, None, True)
    assert _decide(tools, "use", body=T07) == (USE, None, True)
    assert _decide(CacheSettings(), body=T0) == (USE, None, False)


def test_service_decision_caps_the_ttl_and_keys_by_scope() -> None:
    s = CacheSettings(ttl_s=100)
    service = ResponseCache(s, MemoryCache(1 << 20), Metrics())

    def one(header: str | None, key_id: str = "k1", team: str | None = "t") -> policy.Decision:
        return service.decide(
            header, endpoint="chat", alias="fast", key_id=key_id, key_name="app", team=team, body=T0
        )

    assert (one(None).mode, one(None).ttl_s) == (USE, 100)
    assert one("use, ttl=10").ttl_s == 10
    assert one("use, ttl=1000").ttl_s == 100  # never longer than cache.ttl_s
    assert one("skip") == policy.SKIPPED
    assert one(None).key == cache_key("key:k1", "chat", T0)
    assert one(None).key != one(None, key_id="k2").key
    team = ResponseCache(CacheSettings(scope="team"), MemoryCache(1 << 20), Metrics())
    d1 = team.decide(None, endpoint="chat", alias="a", key_id="k1", key_name="n", team="t", body=T0)
    d2 = team.decide(None, endpoint="chat", alias="a", key_id="k2", key_name="n", team="t", body=T0)
    assert d1.key == d2.key


def test_scope_of() -> None:
    assert scope_of(CacheSettings(), "k1", "team-a") == "key:k1"
    assert scope_of(CacheSettings(scope="team"), "k1", "team-a") == "team:team-a"
    assert scope_of(CacheSettings(scope="team"), "k1", None) == "key:k1"  # no team: its own entries
    assert scope_of(CacheSettings(scope="global"), "k1", "team-a") == "global"


# --- policy: the key -----------------------------------------------------------------------------

BODY: dict[str, Any] = {
    "model": "fast",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "hello", "cache_control": {"type": "ephemeral"}}],
        },
    ],
    "temperature": 0,
    "max_tokens": 64,
    "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
}


def _reordered(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _reordered(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_reordered(v) for v in value]
    return value


def test_cache_key_ignores_key_order() -> None:
    reordered = _reordered(BODY)
    assert list(reordered) != list(BODY)
    assert cache_key("key:k", "chat", reordered) == cache_key("key:k", "chat", BODY)
    assert len(cache_key("key:k", "chat", BODY)) == 64


def test_cache_key_depends_on_scope_and_endpoint() -> None:
    keys = {
        cache_key("key:k1", "chat", BODY),
        cache_key("key:k2", "chat", BODY),
        cache_key("team:k1", "chat", BODY),
        cache_key("global", "chat", BODY),
        cache_key("key:k1", "embeddings", BODY),
    }
    assert len(keys) == 5


@pytest.mark.parametrize(
    "change",
    [
        {"model": "slow"},
        {"messages": [{"role": "user", "content": "hello"}]},
        {"messages": [*BODY["messages"], {"role": "user", "content": "and?"}]},
        {"temperature": 0.0001},
        {"max_tokens": 65},
        {"top_p": 0.5},
        {"n": 2},
        {"seed": 7},
        {"stop": ["\n"]},
        {"response_format": {"type": "json_object"}},
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]},
        {"tool_choice": "required"},
        {"stream": True},
        {"stream": True, "stream_options": {"include_usage": True}},
        {"prompt_cache_key": "tenant-1"},
        {"reasoning_effort": "low"},
        {"logprobs": True},
    ],
)
def test_cache_key_changes_with_any_field(change: dict[str, Any]) -> None:
    assert cache_key("key:k", "chat", {**BODY, **change}) != cache_key("key:k", "chat", BODY)


def test_cache_key_separates_streams_with_and_without_usage() -> None:
    plain = cache_key("key:k", "chat", {**BODY, "stream": True})
    usage = cache_key("key:k", "chat", {**BODY, "stream": True, "stream_options": {"include_usage": True}})
    assert plain != usage


@pytest.mark.parametrize(
    "neutral",
    [
        {"user": "alice"},
        {"safety_identifier": "hash-of-alice"},
        {"metadata": {"feature": "search", "seq": "17"}},
        {"store": True},
        {"user": "bob", "metadata": {"a": "b"}, "store": False, "safety_identifier": "s"},
    ],
)
def test_cache_key_ignores_fields_that_do_not_change_the_answer(neutral: dict[str, Any]) -> None:
    assert cache_key("key:k", "chat", {**BODY, **neutral}) == cache_key("key:k", "chat", BODY)
    other = {**BODY, "user": "someone-else", "metadata": {"x": "y"}}
    assert cache_key("key:k", "chat", {**BODY, **neutral}) == cache_key("key:k", "chat", other)


# --- record ---------------------------------------------------------------------------------------


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def _frame(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


USAGE_CHUNK = {
    "id": "chatcmpl-1",
    "object": "chat.completion.chunk",
    "created": 1,
    "model": "m",
    "choices": [],
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5, "cost": 0.0000102},
}
EVENTS = (
    _frame(_chunk({"role": "assistant", "content": ""})),
    _frame(_chunk({"content": "the cost "})),  # "cost" inside content, not usage: left as is
    _frame(_chunk({"content": "of naïve 日本"})),
    _frame(_chunk({}, "stop")),
    _frame(USAGE_CHUNK),
)


def _record(kind: str = STREAM, **over: Any) -> Record:
    fields: dict[str, Any] = {
        "kind": kind,
        "body": b"" if kind == STREAM else orjson.dumps({"id": "x", "choices": [{"text": "naïve 日本"}]}),
        "events": EVENTS if kind == STREAM else (),
        "cost_nanos": 10_200,
        "input_tokens": 3,
        "output_tokens": 2,
        "provider": "openai",
        "model": "gpt-4o-mini",
        "stored_us": 1_700_000_000_000_000,
    }
    return Record(**(fields | over))


@pytest.mark.parametrize("kind", [COMPLETE, STREAM])
def test_record_round_trip(kind: str) -> None:
    record = _record(kind)
    raw = record.encode()
    assert isinstance(raw, bytes)
    assert Record.decode(raw) == record
    assert (record.usage.input_tokens, record.usage.output_tokens) == (3, 2)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"garbage",
        b"\xff\xfe\x00",
        b"null",
        b"[]",
        b'"a string"',
        b"{}",
        b'{"v": 2, "kind": "complete"}',
        orjson.dumps({**orjson.loads(_record().encode()), "v": 2}),
        orjson.dumps({k: v for k, v in orjson.loads(_record().encode()).items() if k != "usage"}),
        orjson.dumps({**orjson.loads(_record().encode()), "usage": [1]}),
        orjson.dumps({**orjson.loads(_record().encode()), "usage": None}),
        orjson.dumps({**orjson.loads(_record().encode()), "cost_nanos": "lots"}),
        orjson.dumps({**orjson.loads(_record().encode()), "events": 5}),
        _record().encode()[:-10],  # truncated
    ],
)
def test_record_decode_garbage_is_none(raw: bytes) -> None:
    assert Record.decode(raw) is None


def test_replay_sets_the_usage_cost_to_zero_and_ends_with_done() -> None:
    replay = _record().replay()
    assert replay.endswith(DONE)
    assert replay.count(DONE) == 1
    events = split_events([replay])
    assert events is not None and len(events) == len(EVENTS)
    assert events[:-1] == EVENTS[:-1]  # every other event byte for byte
    usage = orjson.loads(events[-1][len(b"data: ") :])
    assert usage["usage"]["cost"] == 0
    assert usage["usage"]["prompt_tokens"] == 3
    assert {k: v for k, v in usage.items() if k != "usage"} == {
        k: v for k, v in USAGE_CHUNK.items() if k != "usage"
    }


def test_replay_leaves_a_stream_without_cost_alone() -> None:
    no_cost = {**USAGE_CHUNK, "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}
    events = (*EVENTS[:-1], _frame(no_cost), b": keep-alive\n\n")
    assert _record(events=events).replay() == b"".join(events) + DONE


def test_split_events() -> None:
    stream = b"".join(EVENTS) + DONE
    assert split_events([stream]) == EVENTS
    # frames as sent (several events in one, one event over two) give the same events
    frames = [stream[:7], stream[7:150], stream[150:151], stream[151:]]
    assert split_events(frames) == EVENTS
    assert split_events([DONE]) == ()
    assert split_events([b"".join(EVENTS)]) is None  # no [DONE]: the stream did not finish
    assert split_events([]) is None
    assert split_events([b"".join(EVENTS), DONE[:-2]]) is None


TOOL_MESSAGE = {
    "role": "assistant",
    "content": None,
    "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
}


def test_calls_tools() -> None:
    calls = orjson.dumps({"choices": [{"index": 0, "message": TOOL_MESSAGE, "finish_reason": "tool_calls"}]})
    plain = orjson.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}]})
    null = b'{"choices": [{"message": {"role": "assistant", "content": "hi", "tool_calls": null}}]}'
    assert calls_tools(calls)
    assert not calls_tools(plain)
    assert not calls_tools(null)
    assert not calls_tools(null.replace(b" ", b""))
    delta = _frame(
        _chunk({"tool_calls": [{"index": 0, "id": "c", "type": "function", "function": {"name": "f"}}]})
    )
    assert calls_tools(b"".join((*EVENTS[:1], delta, *EVENTS[3:])))
    assert not calls_tools(b"".join(EVENTS))
    # a prompt that mentions tool calls in text is not a tool call
    assert not calls_tools(orjson.dumps({"choices": [{"message": {"content": 'say "tool_calls"'}}]}))


@pytest.mark.parametrize("shape", ["stream", "choices"])
def test_calls_tools_with_a_null_elsewhere(shape: str) -> None:
    if shape == "stream":  # a role chunk with an explicit null (as several OpenAI-compatible servers send)
        payload = b"".join(
            (
                _frame(_chunk({"role": "assistant", "content": None, "tool_calls": None})),
                _frame(_chunk({"tool_calls": [{"index": 0, "id": "c", "type": "function", "function": {}}]})),
                _frame(_chunk({}, "tool_calls")),
            )
        )
    else:  # n=2: one choice answers in text (null tool_calls), the other calls a tool
        payload = orjson.dumps(
            {
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "hi", "tool_calls": None}},
                    {"index": 1, "message": TOOL_MESSAGE, "finish_reason": "tool_calls"},
                ]
            }
        )
    assert calls_tools(payload)
