"""Fallback routing through a running Sluice, with the real openai SDK (its own retries off) and the
emulator playing providers that fail: 503s, timeouts, resets, cut and stalled streams.

Each test has its own alias, whose deployments have their own upstream model names, so one test's
failures (and the ejections they cause) never touch another's.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from sluice.app import create_app
from sluice.config_file import parse_config
from sluice.emulator import Emulator
from tests.conftest import ADMIN_KEY, ServerThread, admin_call, provider_env

# Cheap everywhere except the "dear" deployments, ten times the price.
CHEAP = "{input: 1, output: 2}"
DEAR = "{input: 10, output: 20}"
ALIASES = (
    *("fb", "timeout", "reset", "eject", "client", "notfound", "budget", "ledger", "cut"),
    *("s-503", "s-reset", "s-cut", "s-error", "s-slow", "s-late", "s-cutter"),
)
TIMEOUTS = "{connect: 1, first_byte: 1, idle: 1, total: 6}"


def _config(emu: Emulator, data_dir: Path) -> str:
    """Every alias in ALIASES as openai ``<alias>-p`` then deepseek ``<alias>-f``, and a few special ones.
    The retry budget is generous: these tests check what is retried (test_routing_load checks how much)."""
    models = [
        f"  - name: {alias}\n    deployments:\n"
        f"      - {{provider: openai, model: {alias}-p, price: {CHEAP}}}\n"
        f"      - {{provider: deepseek, model: {alias}-f, price: {CHEAP}}}\n"
        for alias in ALIASES
    ]
    models.append(
        "  - name: pricey\n    deployments:\n"
        f"      - {{provider: openai, model: pricey-p, price: {CHEAP}}}\n"
        f"      - {{provider: deepseek, model: pricey-f, price: {DEAR}}}\n"
        "  - name: pricey-ok\n    deployments:\n"
        f"      - {{provider: openai, model: pricey-ok-p, price: {CHEAP}}}\n"
        f"      - {{provider: deepseek, model: pricey-ok-f, price: {DEAR}, allow_pricier: true}}\n"
        "  - name: solo\n    deployments:\n"
        f"      - {{provider: openai, model: solo-p, price: {CHEAP}}}\n"
        "  - name: other\n    deployments:\n"
        f"      - {{provider: anthropic, model: other-a, price: {CHEAP}}}\n"
        "  - name: stall\n    deployments:\n"
        f"      - {{provider: slow, model: stall-p, price: {CHEAP}}}\n"
        "  - name: tier\n    deployments:\n"  # a free tier's daily allowance, then the paid account
        f"      - {{provider: free, model: tier-p, price: 0}}\n"
        f"      - {{provider: deepseek, model: tier-f, price: {CHEAP}, allow_pricier: true}}\n"
        "  - name: tier2\n    deployments:\n"  # a fallback whose account has nothing left
        f"      - {{provider: openai, model: tier2-p, price: {CHEAP}}}\n"
        f"      - {{provider: spent, model: tier2-f, price: {CHEAP}}}\n"
    )
    return (
        f"server: {{data_dir: {data_dir}, key_cache_ttl_s: 0.2}}\n"
        "providers:\n"
        f"  - {{name: openai, preset: openai, base_url: '{emu.base_url('openai')}', "
        f"api_key: env:EMU_OPENAI_KEY, timeouts: {TIMEOUTS}}}\n"
        f"  - {{name: deepseek, preset: deepseek, base_url: '{emu.base_url('deepseek')}', "
        f"api_key: env:EMU_DEEPSEEK_KEY, timeouts: {TIMEOUTS}}}\n"
        f"  - {{name: anthropic, preset: anthropic, base_url: '{emu.base_url('anthropic')}', "
        f"api_key: env:EMU_ANTHROPIC_KEY, timeouts: {TIMEOUTS}}}\n"
        f"  - {{name: slow, preset: openai, base_url: '{emu.base_url('openai')}', "
        "api_key: env:EMU_OPENAI_KEY, timeouts: {connect: 1, first_byte: 30, idle: 30, total: 2}}\n"
        f"  - {{name: free, preset: openai, base_url: '{emu.base_url('openai')}', "
        f"api_key: env:EMU_OPENAI_KEY, timeouts: {TIMEOUTS}, limits: {{requests: {{day: 2}}}}}}\n"
        f"  - {{name: spent, preset: openai, base_url: '{emu.base_url('openai')}', "
        f"api_key: env:EMU_OPENAI_KEY, timeouts: {TIMEOUTS}, limits: {{requests: {{day: 0}}}}}}\n"
        "models:\n" + "".join(models) + "routing: {eject_after: 3, eject_base_s: 1, backoff_base_ms: 10, "
        "stream_commit_s: 0.5, retry_after_max_s: 2, retry_budget_min: 100}\n"
    )


class Served:
    """The emulator and a Sluice over it, with helpers to call and inspect them."""

    def __init__(self, emu: Emulator, server: ServerThread, data_dir: Path) -> None:
        self.emu = emu
        self.server = server
        self.data_dir = data_dir
        self.root = f"http://127.0.0.1:{server.port}"
        self.client = openai.OpenAI(base_url=server.base_url, api_key=ADMIN_KEY, max_retries=0, timeout=20)

    def chat(self, model: str, text: str = "hello", **kw: Any) -> Any:
        """A non-stream chat call, with the raw response (for its headers)."""
        return self.client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": text}], max_tokens=20, **kw
        )

    def calls(self, upstream_model: str) -> int:
        return self.emu.by_model.get(upstream_model, 0)

    def deployment(self, dep_id: str) -> dict[str, Any]:
        status, body, _ = admin_call(self.root, "GET", "/admin/deployments")
        assert status == 200
        found: list[dict[str, Any]] = [d for d in body["data"] if d["id"] == dep_id]
        assert found, dep_id
        return found[0]

    def ledger_row(self, request_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + 5
        while True:
            with sqlite3.connect(self.data_dir / "sluice.db") as db:
                db.row_factory = sqlite3.Row
                row = db.execute("SELECT * FROM ledger WHERE request_id = ?", (request_id,)).fetchone()
            if (row is not None and row["status"] != "pending") or time.monotonic() > deadline:
                assert row is not None, request_id
                found: dict[str, Any] = dict(row)
                return found
            time.sleep(0.05)

    def metrics(self) -> str:
        return admin_call(self.root, "GET", "/metrics")[2]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    emu = Emulator()
    emu.start_in_thread()
    data_dir = tmp_path_factory.mktemp("routing")
    try:
        env = provider_env()
        config = parse_config(_config(emu, data_dir), environ=env).config
        with ServerThread(create_app(config, env)) as server:
            s = Served(emu, server, data_dir)
            yield s
            s.client.close()
    finally:
        emu.stop_thread()


def _served_by(raw: Any) -> tuple[str, str, str]:
    h = raw.headers
    return h["x-sluice-provider"], h["x-sluice-model"], h["x-sluice-attempts"]


@pytest.mark.parametrize(
    ("alias", "fault"),
    [("fb", "status=503"), ("timeout", "latency_ms=3000"), ("reset", "reset=1")],
)
def test_a_failing_primary_is_served_by_the_fallback(served: Served, alias: str, fault: str) -> None:
    served.emu.set_model_faults(f"{alias}-p", fault)
    try:
        raw = served.chat(alias)
        assert raw.parse().choices[0].message.content
        assert _served_by(raw) == ("deepseek", f"{alias}-f", "2")
        assert served.calls(f"{alias}-p") == 1 and served.calls(f"{alias}-f") == 1
    finally:
        served.emu.set_model_faults(f"{alias}-p", None)


def test_the_ledger_shows_every_attempt(served: Served) -> None:
    served.emu.set_model_faults("ledger-p", "status=503")
    try:
        raw = served.chat("ledger")
    finally:
        served.emu.set_model_faults("ledger-p", None)
    row = served.ledger_row(raw.headers["x-sluice-request-id"])
    assert (row["status"], row["provider"], row["model"]) == ("ok", "deepseek", "ledger-f")
    attempts = orjson.loads(row["attempts"])
    assert [(a["provider"], a["model"], a["status"], a["http_status"]) for a in attempts] == [
        ("openai", "ledger-p", "failed", 503),
        ("deepseek", "ledger-f", "ok", 200),
    ]
    assert attempts[0]["cost_nanos"] == 0  # a 503 is not billed
    assert attempts[1]["cost_nanos"] == row["cost_nanos"] > 0
    assert raw.headers["x-sluice-cost-usd"] != "0.0"


def test_a_primary_is_ejected_after_failures_and_readmitted_after_recovery(served: Served) -> None:
    served.emu.set_model_faults("eject-p", "status=503")
    try:
        for _ in range(3):  # eject_after: 3
            assert _served_by(served.chat("eject"))[2] == "2"
        state = served.deployment("openai/eject-p")
        assert state["state"] == "ejected" and state["ejected_until"] and state["consecutive_failures"] == 3
        before = served.calls("eject-p")
        assert _served_by(served.chat("eject")) == ("deepseek", "eject-f", "1")  # straight to the fallback
        assert served.calls("eject-p") == before
        assert 'sluice_ejections_total{model="eject-p",provider="openai"} 1.0' in served.metrics()
    finally:
        served.emu.set_model_faults("eject-p", None)  # it recovers
    time.sleep(1.1)  # eject_base_s: 1; the next request is the half-open probe
    assert _served_by(served.chat("eject")) == ("openai", "eject-p", "1")
    assert served.deployment("openai/eject-p")["state"] == "healthy"


def test_a_client_error_is_not_retried_and_ejects_nothing(served: Served) -> None:
    for _ in range(5):
        with pytest.raises(openai.BadRequestError):
            served.chat("client", "bad @emulator(status=400)")
    assert served.calls("client-p") == 5 and served.calls("client-f") == 0
    state = served.deployment("openai/client-p")
    assert (state["state"], state["consecutive_failures"]) == ("healthy", 0)


def test_a_thousand_client_404s_do_not_stop_the_model(served: Served) -> None:
    async def burst() -> list[int]:
        async with openai.AsyncOpenAI(
            base_url=served.server.base_url, api_key=ADMIN_KEY, max_retries=0, timeout=20
        ) as c:
            sem = asyncio.Semaphore(32)

            async def one() -> int:
                async with sem:
                    try:
                        await c.chat.completions.create(
                            model="notfound",
                            messages=[{"role": "user", "content": "x @emulator(status=404)"}],
                        )
                    except openai.APIStatusError as e:
                        return e.status_code
                    return 200

            return await asyncio.gather(*(one() for _ in range(1000)))

    statuses = asyncio.run(burst())
    assert set(statuses) == {502}  # the provider's 404 (upstream_not_found): passed on, never retried
    assert served.calls("notfound-f") == 0  # never retried elsewhere
    assert served.deployment("openai/notfound-p")["state"] == "healthy"
    assert _served_by(served.chat("notfound")) == ("openai", "notfound-p", "1")


def test_a_budget_refusal_is_not_retried(served: Served) -> None:
    status, made, _ = admin_call(
        served.root, "POST", "/admin/keys", {"name": "tiny", "limits": {"usd": {"day": "0.000001"}}}
    )
    assert status == 201
    with (
        openai.OpenAI(base_url=served.server.base_url, api_key=made["key"], max_retries=0) as c,
        pytest.raises(openai.RateLimitError) as exc,
    ):
        c.chat.completions.create(model="budget", messages=[{"role": "user", "content": "hi"}])
    assert exc.value.code == "budget_exceeded"
    assert exc.value.response.headers["x-should-retry"] == "false"
    assert served.calls("budget-p") == served.calls("budget-f") == 0


def test_retry_after_is_honoured_up_to_its_cap(served: Served) -> None:
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError):
        served.chat("solo", "x @emulator(status=429 retry_after=1)")
    waited = time.monotonic() - started
    assert served.calls("solo-p") == 3  # retries: 2, each after the provider's retry-after
    assert waited >= 2.0
    before = served.calls("solo-p")
    with pytest.raises(openai.RateLimitError) as exc:
        served.chat("solo", "x @emulator(status=429 retry_after=30)")  # beyond retry_after_max_s: 2
    assert served.calls("solo-p") == before + 1
    assert exc.value.response.headers["retry-after"] == "30"


def test_a_fallback_above_the_price_ratio_is_skipped(served: Served) -> None:
    served.emu.set_model_faults("pricey-p", "status=503")
    served.emu.set_model_faults("pricey-ok-p", "status=503")
    try:
        with pytest.raises(openai.InternalServerError) as exc:
            served.chat("pricey")
        assert exc.value.status_code == 502
        assert served.calls("pricey-f") == 0
        assert 'sluice_fallbacks_skipped_total{alias="pricey",provider="deepseek",reason="price"}' in (
            served.metrics()
        )
        raw = served.chat("pricey-ok")  # this one allows it
        assert _served_by(raw) == ("deepseek", "pricey-ok-f", "2")
        row = served.ledger_row(raw.headers["x-sluice-request-id"])
    finally:
        served.emu.set_model_faults("pricey-p", None)
        served.emu.set_model_faults("pricey-ok-p", None)
    # the reservation covered the dearest deployment that could serve: the fallback, at ten times
    assert row["reserved_nanos"] > 0
    cheap = served.ledger_row(served.chat("fb").headers["x-sluice-request-id"])
    assert row["reserved_nanos"] >= 9 * cheap["reserved_nanos"]


def test_a_provider_account_with_nothing_left_is_passed_over(served: Served) -> None:
    """The free tier's daily allowance (2 requests) serves first; then the paid account, at once."""
    assert [_served_by(served.chat("tier"))[:2] for _ in range(3)] == [
        ("free", "tier-p"),
        ("free", "tier-p"),
        ("deepseek", "tier-f"),
    ]
    assert served.calls("tier-p") == 2
    raw = served.chat("tier")  # the paid account serves, with the worst case reserved like any request
    row = served.ledger_row(raw.headers["x-sluice-request-id"])
    assert (row["provider"], row["status"]) == ("deepseek", "ok")
    assert row["reserved_nanos"] > 0 and row["reserved_output_tokens"] == 20
    status, body, _ = admin_call(served.root, "GET", "/admin/limits?scope=provider:free")
    assert status == 200
    assert [(c["metric"], c["spent"], c["reserved"]) for c in body["data"]] == [("requests", 2, 0)]
    skipped = 'sluice_fallbacks_skipped_total{alias="tier",provider="free",reason="provider_limit"} 2.0'
    assert skipped in served.metrics()


def test_a_fallback_whose_account_is_full_is_skipped(served: Served) -> None:
    served.emu.set_model_faults("tier2-p", "status=503")
    try:
        with pytest.raises(openai.InternalServerError) as exc:
            served.chat("tier2")
    finally:
        served.emu.set_model_faults("tier2-p", None)
    assert exc.value.status_code == 502  # the primary's failure, not the full account's refusal
    assert served.calls("tier2-f") == 0
    status, body, _ = admin_call(served.root, "GET", "/admin/limits?scope=provider:spent")
    assert status == 200
    assert all(c["reserved"] == 0 for c in body["data"])


def test_a_models_list_falls_back_within_what_the_key_allows(served: Served) -> None:
    served.emu.set_model_faults("solo-p", "status=503")
    try:
        raw = served.chat("solo", extra_body={"models": ["other"]})
        assert _served_by(raw) == ("anthropic", "other-a", "2")
        status, made, _ = admin_call(
            served.root, "POST", "/admin/keys", {"name": "narrow", "models": ["solo"]}
        )
        assert status == 201
        with (
            openai.OpenAI(base_url=served.server.base_url, api_key=made["key"], max_retries=0) as c,
            pytest.raises(openai.PermissionDeniedError) as denied,
        ):
            c.chat.completions.create(
                model="solo", messages=[{"role": "user", "content": "hi"}], extra_body={"models": ["other"]}
            )
        assert denied.value.status_code == 403
        body = denied.value.body
        assert isinstance(body, dict) and body["param"] == "models"
        with pytest.raises(openai.NotFoundError) as missing:
            served.chat("solo", extra_body={"models": ["no-such-alias"]})
        missing_body = missing.value.body
        assert isinstance(missing_body, dict) and missing_body["param"] == "models"
    finally:
        served.emu.set_model_faults("solo-p", None)


@pytest.mark.parametrize(
    ("alias", "fault"),
    [
        ("s-503", "status=503"),
        ("s-reset", "reset=1"),
        ("s-cut", "cut_after=1"),  # the role chunk, then the connection drops
        ("s-error", "mid_error=1"),  # the role chunk, then an in-stream error
        ("s-slow", "latency_ms=3000"),  # no response headers within first_byte (1 s)
    ],
)
def test_a_stream_that_fails_before_content_falls_back_invisibly(
    served: Served, alias: str, fault: str
) -> None:
    served.emu.set_model_faults(f"{alias}-p", fault)
    try:
        with served.client.chat.completions.with_streaming_response.create(
            model=alias,
            messages=[{"role": "user", "content": "hello"}],
            stream=True,
            stream_options={"include_usage": True},
        ) as response:
            assert _served_by(response) == ("deepseek", f"{alias}-f", "2")
            request_id = response.headers["x-sluice-request-id"]
            chunks = list(response.parse())
    finally:
        served.emu.set_model_faults(f"{alias}-p", None)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage is not None
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.role) == 1  # one answer, not two
    row = served.ledger_row(request_id)
    first, second = orjson.loads(row["attempts"])
    assert (first["model"], first["status"], second["model"], second["status"]) == (
        f"{alias}-p",
        "failed",
        f"{alias}-f",
        "ok",
    )
    # an error status is not billed; a reset, a timeout or a broken stream may be: its prompt, estimated
    assert (first["cost_nanos"] == 0) == (fault == "status=503")


def test_a_stream_silent_past_the_commit_window_is_committed(served: Served) -> None:
    """Headers at once, then no first event: after stream_commit_s (0.5 s) the stream is committed to
    (the client has its 200), so its failure at first_byte (1 s) is an SSE error, not a fallback."""
    served.emu.set_model_faults("s-late-p", "ttft_ms=3000")
    try:
        with served.client.chat.completions.with_streaming_response.create(
            model="s-late", messages=[{"role": "user", "content": "hello"}], stream=True
        ) as response:
            assert _served_by(response) == ("openai", "s-late-p", "1")
            text = response.read().decode()
    finally:
        served.emu.set_model_faults("s-late-p", None)
    assert "[DONE]" not in text
    error = orjson.loads(text.strip().split("\n\n")[-1].removeprefix("data: "))
    assert error["error"]["code"] == "upstream_timeout"
    assert served.calls("s-late-f") == 0


def test_a_stream_cut_after_five_chunks_ends_with_an_error_and_no_done(served: Served) -> None:
    served.emu.set_model_faults("cut-p", "cut_after=5 pace_ms=20")
    try:
        with served.client.chat.completions.with_streaming_response.create(
            model="cut", messages=[{"role": "user", "content": "hello"}], stream=True
        ) as response:
            request_id = response.headers["x-sluice-request-id"]
            text = response.read().decode()
    finally:
        served.emu.set_model_faults("cut-p", None)
    events = [e for e in text.split("\n\n") if e.strip()]
    assert "[DONE]" not in text
    error = orjson.loads(events[-1].removeprefix("data: "))
    assert set(error["error"]) == {"message", "type", "param", "code"}
    chunks = [orjson.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert len(chunks) == 5 and all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert served.calls("cut-f") == 0  # committed: never retried once content was sent
    row = served.ledger_row(request_id)
    assert (row["status"], row["usage_estimated"]) == ("cut", 1)
    assert row["output_tokens"] >= 4 and row["cost_nanos"] > 0  # priced on what was delivered


def test_a_provider_that_keeps_cutting_streams_is_ejected(served: Served) -> None:
    """Each cut is after the commit (not retried), yet it is the provider's failure: three in a row
    (eject_after: 3) eject it, and the next stream goes straight to the fallback."""
    served.emu.set_model_faults("s-cutter-p", "cut_after=5")
    try:
        for _ in range(3):
            with served.client.chat.completions.with_streaming_response.create(
                model="s-cutter", messages=[{"role": "user", "content": "hello"}], stream=True
            ) as response:
                assert _served_by(response) == ("openai", "s-cutter-p", "1")
                assert "[DONE]" not in response.read().decode()
        assert served.deployment("openai/s-cutter-p")["state"] == "ejected"
        with served.client.chat.completions.with_streaming_response.create(
            model="s-cutter", messages=[{"role": "user", "content": "hello"}], stream=True
        ) as response:
            assert _served_by(response) == ("deepseek", "s-cutter-f", "1")
            assert "[DONE]" in response.read().decode()
    finally:
        served.emu.set_model_faults("s-cutter-p", None)


def test_a_stream_of_keep_alives_ends_at_the_total_deadline(served: Served) -> None:
    started = time.monotonic()
    with served.client.chat.completions.with_streaming_response.create(
        model="stall",
        messages=[{"role": "user", "content": "x @emulator(keepalive=1000 pace_ms=100)"}],
        stream=True,
    ) as response:
        assert response.status_code == 200  # committed after the 0.5 s window: headers were sent
        text = response.read().decode()
    elapsed = time.monotonic() - started
    assert 1.9 <= elapsed < 4  # total: 2 s for this provider, whatever the keep-alives
    assert "[DONE]" not in text
    error = orjson.loads(text.strip().split("\n\n")[-1].removeprefix("data: "))
    assert error["error"]["code"] == "upstream_timeout"


def test_an_ejection_is_shared_through_redis(redis_url: str, tmp_path: Path) -> None:
    emu = Emulator()
    emu.start_in_thread()
    env = {**provider_env(), "TEST_REDIS": redis_url}
    try:
        apps = []
        for name in ("a", "b"):
            text = _config(emu, tmp_path / name).replace(
                "key_cache_ttl_s: 0.2}", "key_cache_ttl_s: 0.2, counters: redis, redis_url: env:TEST_REDIS}"
            )
            apps.append(create_app(parse_config(text, environ=env).config, env))
        with ServerThread(apps[0]) as one, ServerThread(apps[1]) as two:
            first = Served(emu, one, tmp_path / "a")
            second = Served(emu, two, tmp_path / "b")
            emu.set_model_faults("fb-p", "status=503")
            for _ in range(3):
                first.chat("fb")
            assert first.deployment("openai/fb-p")["state"] == "ejected"
            deadline = time.monotonic() + 3
            while second.deployment("openai/fb-p")["state"] != "ejected" and time.monotonic() < deadline:
                time.sleep(0.05)
            assert second.deployment("openai/fb-p")["state"] == "ejected"
            before = emu.by_model.get("fb-p", 0)
            assert _served_by(second.chat("fb")) == ("deepseek", "fb-f", "1")  # told, not re-learnt
            assert emu.by_model.get("fb-p", 0) == before
            emu.set_model_faults("fb-p", None)
            time.sleep(1.1)
            assert _served_by(first.chat("fb"))[0] == "openai"  # the probe re-admits it…
            deadline = time.monotonic() + 3
            while second.deployment("openai/fb-p")["state"] != "healthy" and time.monotonic() < deadline:
                time.sleep(0.05)
            assert second.deployment("openai/fb-p")["state"] == "healthy"  # …everywhere
            first.client.close()
            second.client.close()
    finally:
        emu.stop_thread()
