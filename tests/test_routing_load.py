"""Fallback routing under load, through a running Sluice, the real clients and the emulator.

- A failing deployment does not multiply the load: with a healthy fallback it is ejected and its
  requests move on; alone (never ejected) only the retry budget bounds the retries. Either way the
  upstream sees at most 1.2 upstream calls per request (plus the budget's minimum), and every client
  gets an answer or a clean OpenAI error within the request's deadline.
- Clients that leave streams at random moments (before the headers, right after, mid-stream) stop their
  upstream calls at once, and every request is settled: in the ledger, nothing left reserved.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx2
import openai
import orjson
import pytest

from sluice.app import create_app
from sluice.config_file import parse_config
from sluice.emulator import Emulator
from sluice.emulator.http import Incoming, Plan
from tests.conftest import ADMIN_KEY, ServerThread, admin_call, provider_env

TOTAL_S = 8.0  # the providers' total deadline: no answer may take longer (plus a second of slack)
RATE_HZ = 200  # requests started per second, open loop
LOAD_S = 10.0
PRICE = "price: {input: 1, output: 2}"


def _config_text(emu: Emulator, data_dir: Path) -> str:
    timeouts = f"timeouts: {{connect: 2, first_byte: 2, idle: 2, total: {TOTAL_S:g}}}"
    return f"""\
server: {{data_dir: '{data_dir}', key_cache_ttl_s: 0.2}}
providers:
  - {{name: openai, preset: openai, base_url: '{emu.base_url("openai")}', api_key: env:EMU_OPENAI_KEY,
      max_connections: 2000, {timeouts}}}
  - {{name: deepseek, preset: deepseek, base_url: '{emu.base_url("deepseek")}', api_key: env:EMU_DEEPSEEK_KEY,
      max_connections: 2000, {timeouts}}}
models:
  - name: smart
    deployments:
      - {{provider: openai, model: primary-x, {PRICE}}}
      - {{provider: deepseek, model: fallback-y, {PRICE}}}
  - name: solo
    deployments:
      - {{provider: openai, model: solo-z, {PRICE}}}
  - name: streamy
    deployments:
      - {{provider: openai, model: stream-primary, {PRICE}}}
      - {{provider: deepseek, model: stream-fallback, {PRICE}}}
"""


def _server(emu: Emulator, data_dir: Path) -> ServerThread:
    env = provider_env()
    config = parse_config(_config_text(emu, data_dir), environ=env).config
    return ServerThread(create_app(config, env))


def _root(server: ServerThread) -> str:
    return server.base_url.removesuffix("/v1")


# --- a failing deployment under open-loop load ----------------------------------------------------------


@dataclass(slots=True)
class Outcome:
    """What one client saw: the HTTP status (0: no answer), how long it took, and what was wrong."""

    status: int
    seconds: float
    problem: str = ""  # empty: a 200, or an error in the OpenAI envelope


def _envelope_problem(err: openai.APIStatusError) -> str:
    """Empty if the error is a clean OpenAI envelope: {"error": {"message", "type", "code", …}}."""
    try:
        body = err.response.json()
    except ValueError:
        return f"not JSON: {err.response.text[:200]!r}"
    inner = body.get("error") if isinstance(body, dict) else None
    if not isinstance(inner, dict) or not isinstance(inner.get("message"), str) or "type" not in inner:
        return f"not an OpenAI error envelope: {body!r:.200}"
    return ""


async def _ask(client: openai.AsyncOpenAI, alias: str, i: int) -> Outcome:
    t0 = time.perf_counter()
    try:
        await client.chat.completions.create(
            model=alias, messages=[{"role": "user", "content": f"question {i}"}], max_tokens=4
        )
    except openai.APIStatusError as err:
        return Outcome(err.status_code, time.perf_counter() - t0, _envelope_problem(err))
    except Exception as exc:  # noqa: BLE001 - any other failure (connection, timeout…) is the finding
        return Outcome(0, time.perf_counter() - t0, repr(exc))
    return Outcome(200, time.perf_counter() - t0)


async def _open_loop(server: ServerThread, alias: str) -> tuple[list[Outcome], float]:
    """Start a request every 1/RATE_HZ s for LOAD_S s, whatever the answers do; (outcomes, seconds the
    starts took: more than LOAD_S if this process could not keep the schedule)."""
    http = openai.DefaultAsyncHttpx2Client(
        limits=httpx2.Limits(max_connections=2000, max_keepalive_connections=2000), timeout=30
    )
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key=ADMIN_KEY, max_retries=0, http_client=http)
    async with client:
        loop = asyncio.get_running_loop()
        n = int(RATE_HZ * LOAD_S)
        tasks: list[asyncio.Task[Outcome]] = []
        t0 = loop.time()
        for i in range(n):
            wait = t0 + i / RATE_HZ - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            tasks.append(asyncio.create_task(_ask(client, alias, i)))
        spread = loop.time() - t0
        return list(await asyncio.gather(*tasks)), spread


def _metric(root: str, name: str, **labels: str) -> float:
    """A sample's value from /metrics (0 if absent)."""
    status, _json, text = admin_call(root, "GET", "/metrics")
    assert status == 200, text[:300]
    want = [f'{k}="{v}"' for k, v in labels.items()]
    for line in text.splitlines():
        if line.startswith(name + "{") and all(w in line for w in want):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _deployment(root: str, alias: str, model: str) -> dict[str, Any]:
    status, body, text = admin_call(root, "GET", "/admin/deployments")
    assert status == 200, text[:300]
    return next(d for d in body["data"] if d["alias"] == alias and d["model"] == model)


@pytest.mark.slow
@pytest.mark.usefixtures("untraced")
@pytest.mark.parametrize("variant", ["with-fallback", "alone"])
def test_failing_primary_stays_within_the_retry_budget(tmp_path: Path, variant: str) -> None:
    alias, primary, fallback = ("smart", "primary-x", "fallback-y")
    if variant == "alone":  # never ejected (the alias's only deployment): only the retry budget bounds it
        alias, primary, fallback = ("solo", "solo-z", "")
    emu = Emulator()
    emu.start_in_thread()
    try:
        emu.set_model_faults(primary, "status=503")
        with _server(emu, tmp_path) as server:
            outcomes, spread = asyncio.run(_open_loop(server, alias))
            root = _root(server)
            sent = len(outcomes)
            attempts = emu.by_model.get(primary, 0) + (emu.by_model.get(fallback, 0) if fallback else 0)
            statuses: dict[int, int] = {}
            for o in outcomes:
                statuses[o.status] = statuses.get(o.status, 0) + 1
            slowest = max(o.seconds for o in outcomes)
            print(
                f"\n{variant}: {sent} requests started in {spread:.2f} s ({sent / spread:.0f}/s); "
                f"upstream attempts {attempts} (primary {emu.by_model.get(primary, 0)}, "
                f"fallback {emu.by_model.get(fallback, 0) if fallback else 0}); "
                f"ratio {attempts / sent:.3f}; statuses {statuses}; slowest {slowest:.2f} s"
            )
            problems = [o.problem for o in outcomes if o.problem]
            assert not problems, f"{len(problems)} unclean answers, e.g. {problems[:3]}"
            assert set(statuses) <= {200, 502}, statuses
            assert slowest <= TOTAL_S + 1, f"an answer took {slowest:.2f} s"
            if fallback:
                assert statuses.get(200, 0) >= 0.95 * sent, statuses
                assert _metric(root, "sluice_ejections_total", provider="openai", model=primary) >= 1
                assert _deployment(root, alias, primary)["state"] in ("ejected", "probing")
                assert _deployment(root, alias, fallback)["state"] == "healthy"
            else:
                assert statuses == {502: sent}, statuses
                assert _deployment(root, alias, primary)["state"] == "healthy"  # never ejected
            assert attempts <= 1.2 * sent + 3, f"{attempts} upstream calls for {sent} requests"
    finally:
        emu.stop_thread()


# --- clients that leave streams at random moments ---------------------------------------------------------

STREAMS = 200
SSE = "tokens=200 pace_ms=20"  # a 4 s stream: every client leaves long before its end
SLOW_SSE = "latency_ms=1500 tokens=200 pace_ms=20"  # no headers for 1.5 s: room to leave before them


class Witness(Emulator):
    """The emulator, noting which of the test's requests reached it (by the number in their prompt)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[int] = set()

    def handle(self, incoming: Incoming) -> Plan:
        if (found := re.search(rb"stream (\d+) @emulator", incoming.body)) is not None:
            self.seen.add(int(found.group(1)))
        return super().handle(incoming)


@dataclass(slots=True)
class Left:
    """One client that left: when it closed its connection, and the request id if it got the headers."""

    closed_at: float
    request_id: str | None
    how: str


async def _leave(
    session: aiohttp.ClientSession, emu: Witness, url: str, key: str, i: int, how: str, amount: float
) -> Left:
    """One streaming request, abandoned: after ``amount`` SSE chunks (``chunks``), ``amount`` seconds
    after the headers (``after``), or before any header, ``amount`` seconds after the provider got the
    request (``before``: so it surely reached the gateway, which must then account for it)."""
    spec = SLOW_SSE if how == "before" else SSE
    body = {
        "model": "streamy",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": f"stream {i} @emulator({spec})"}],
    }
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    if how == "before":

        async def wait_for_headers() -> None:
            async with session.post(url, data=orjson.dumps(body), headers=headers) as resp:
                raise AssertionError(f"headers came before the client left: {resp.status}")

        waiting = asyncio.create_task(wait_for_headers())
        async with asyncio.timeout(10):
            while i not in emu.seen and not waiting.done():  # noqa: ASYNC110 - the emulator's thread adds it
                await asyncio.sleep(0.002)
        await asyncio.sleep(amount)
        waiting.cancel()  # cancelled while waiting for the headers: aiohttp closes the connection
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        return Left(time.monotonic(), None, how)
    resp = await session.post(url, data=orjson.dumps(body), headers=headers)
    try:
        assert resp.status == 200, await resp.text()
        request_id = resp.headers.get("x-sluice-request-id")
        if how == "chunks":
            seen = 0
            while seen < amount:
                line = await resp.content.readline()
                assert line, "the stream ended before the client left"
                seen += line.startswith(b"data:")
        else:
            await asyncio.sleep(amount)
    finally:
        resp.close()  # drops the connection (not back to the pool): the server sees the client leave
    return Left(time.monotonic(), request_id, how)


async def _leaving_clients(server: ServerThread, emu: Witness, key: str, seed: int) -> list[Left]:
    rng = random.Random(seed)
    plans: list[tuple[str, float]] = []
    for _ in range(STREAMS):
        how = rng.choice(["chunks", "chunks", "after", "before"])
        amount = float(rng.randint(0, 30)) if how == "chunks" else rng.uniform(0, 0.3)
        plans.append((how, amount))
    url = server.base_url + "/chat/completions"
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int) -> Left:
            await asyncio.sleep(i * 0.005)  # 200 streams started over a second
            return await _leave(session, emu, url, key, i, *plans[i])

        return list(await asyncio.gather(*(one(i) for i in range(STREAMS))))


def _rows(data_dir: Path, key_id: str) -> list[sqlite3.Row]:
    with contextlib.closing(sqlite3.connect(data_dir / "sluice.db")) as db:
        db.row_factory = sqlite3.Row
        return db.execute("SELECT * FROM ledger WHERE key_id = ?", (key_id,)).fetchall()


@pytest.mark.slow
@pytest.mark.usefixtures("untraced")
def test_client_disconnects_cancel_upstream_and_settle(tmp_path: Path) -> None:
    emu = Witness()
    emu.start_in_thread()
    try:
        with _server(emu, tmp_path) as server:
            root = _root(server)
            status, made, text = admin_call(
                root, "POST", "/admin/keys", {"name": "leaver", "limits": {"usd": {"day": 100}}}
            )
            assert status == 201, text
            key, key_id = made["key"], made["id"]

            left = asyncio.run(_leaving_clients(server, emu, key, seed=20260717))
            last = max(c.closed_at for c in left)
            while emu.in_flight and time.monotonic() < last + 5:
                time.sleep(0.005)
            settled_in = time.monotonic() - last
            upstream = emu.by_model.get("stream-primary", 0) + emu.by_model.get("stream-fallback", 0)
            kinds = {h: sum(1 for c in left if c.how == h) for h in ("chunks", "after", "before")}
            rows: list[sqlite3.Row] = []
            deadline = time.monotonic() + 5
            time.sleep(0.5)  # the ledger's group commit
            while time.monotonic() < deadline:
                admin_call(root, "GET", "/admin/spend")  # flushes the ledger writer
                rows = _rows(tmp_path, key_id)
                if len(rows) == STREAMS and all(r["status"] != "pending" for r in rows):
                    break
                time.sleep(0.1)
            print(
                f"\n{STREAMS} streams left ({kinds}); upstream calls {upstream}; ledger rows {len(rows)}; "
                f"in_flight 0 {settled_in * 1000:.0f} ms after the last client left"
            )
            assert emu.in_flight == 0, f"{emu.in_flight} upstream answers still being sent"
            assert settled_in <= 1.0, f"the upstream calls stopped {settled_in:.2f} s after the last client"
            assert len(rows) == STREAMS
            assert upstream == STREAMS  # every request reached a provider, once (nothing failed)
            by_id = {r["request_id"]: r for r in rows}
            ids = [c.request_id for c in left if c.request_id is not None]
            assert len(ids) == kinds["chunks"] + kinds["after"]  # every client that got headers has an id
            assert set(ids) <= set(by_id), "a request the client saw is missing from the ledger"
            statuses = {r["status"] for r in rows}
            assert "pending" not in statuses
            assert statuses == {"disconnected"}, statuses
            assert all(r["client_disconnected"] for r in rows)
            assert all(0 <= r["cost_nanos"] <= r["reserved_nanos"] for r in rows)
            # one upstream call each, on the first choice, recorded as the one the client left
            assert {r["model"] for r in rows} == {"stream-primary"}
            for r in rows:
                calls = orjson.loads(r["attempts"])
                assert [(a["model"], a["status"]) for a in calls] == [("stream-primary", "disconnected")]

            counters: list[dict[str, Any]] = []
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                status, answer, text = admin_call(root, "GET", f"/admin/limits?scope=key:{key_id}")
                assert status == 200, text
                counters = answer["data"]
                if counters and all(c["reserved"] == 0 for c in counters):
                    break
                time.sleep(0.05)
            assert counters, "the key's budget has no counter"
            assert all(c["reserved"] == 0 for c in counters), counters
            usd = [c for c in counters if c["metric"] == "usd"]
            assert sum(c["spent"] for c in usd) == sum(r["cost_nanos"] for r in rows)
    finally:
        emu.stop_thread()
