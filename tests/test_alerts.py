"""Alerts through a running Sluice: traffic crosses a key's cap, outruns its day, bursts, ejects a
deployment; a free account nears its end. A real webhook receiver (also playing Slack) and a real SMTP
server (aiosmtpd, STARTTLS + AUTH) on 127.0.0.1 check what arrives, once per threshold and channel; then
three instances on one PostgreSQL and Redis, channels that are down, and request latency beside it all.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import openai
import pytest
import redis

from sluice.alerts.payload import SIGNATURE_HEADER, verify
from sluice.app import create_app
from sluice.config_file import parse_config
from sluice.emulator import Emulator
from sluice.store.alerts import AlertRow
from sluice.store.sqlite import SQLiteStore
from tests.alert_receivers import SMTP_PASSWORD, Post, SMTPReceiver, WebhookReceiver
from tests.conftest import ADMIN_KEY, ServerThread, admin_call, free_port, provider_env
from tests.servers import fresh_database
from tests.test_budget_periods import Clock

SECRET = "whsec-alerts-test-5f1d0c"  # a test signing secret
ENV = provider_env() | {
    "ALERT_HOOK_SECRET": SECRET,
    "ALERT_SMTP_PASSWORD": SMTP_PASSWORD,
    "SLUICE_SECRET": "alerts-test-secret",
}
PRICE = "{input: 50, output: 50}"  # $0.0004 per request below (7 prompt + 1 output tokens)
CAP = 100_000_000  # $0.10 a day, in nano-dollars: a request's worst case is 2.25 % of it


def _today() -> date:
    return datetime.now(UTC).date()


def _config(emu: Emulator, data_dir: Path, alerts: str, *, server: str = "", routing: str = "") -> Any:
    expires = _today() + timedelta(days=3)
    text = (
        f"server: {{data_dir: {data_dir}, key_cache_ttl_s: 0.2{server}}}\n"
        "providers:\n"
        f"  - {{name: openai, preset: openai, base_url: '{emu.base_url('openai')}', "
        "api_key: env:EMU_OPENAI_KEY}\n"
        f"  - {{name: deepseek, preset: deepseek, base_url: '{emu.base_url('deepseek')}', "
        "api_key: env:EMU_DEEPSEEK_KEY}\n"
        f"  - {{name: trial, preset: openai, base_url: '{emu.base_url('openai')}', "
        f"api_key: env:EMU_OPENAI_KEY, plan: free, expires: {expires.isoformat()}}}\n"
        "models:\n"
        f"  - {{name: pricey, deployments: [{{provider: openai, model: gpt-4o-mini, price: {PRICE}}}]}}\n"
        "  - name: flaky\n    deployments:\n"
        f"      - {{provider: openai, model: alert-flaky-p, price: {PRICE}}}\n"
        f"      - {{provider: deepseek, model: alert-flaky-f, price: {PRICE}}}\n"
        f"routing: {{retries: 1, eject_after: 2, eject_base_s: 30{routing}}}\n"
        "alerts:\n"
        "  settle_delay_s: 0.05\n  evaluate_every_s: 0.3\n  backoff_base_s: 0.05\n  backoff_max_s: 0.2\n"
        "  fallback_min_requests: 10\n" + alerts
    )
    return parse_config(text, environ=ENV).config


def _channels(hook: WebhookReceiver, smtp: SMTPReceiver | None, hook_url: str | None = None) -> str:
    text = (
        "  channels:\n"
        f"    - {{name: hook, type: webhook, url: '{hook_url or hook.url('/hook')}', "
        "secret: env:ALERT_HOOK_SECRET}\n"
        f"    - {{name: slack, type: slack, url: '{hook.url('/slack')}'}}\n"
    )
    return text + (smtp.channel_yaml() if smtp is not None else "")


def _wait(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _rule(posts: list[Post], rule: str) -> list[dict[str, Any]]:
    return [doc for doc in (p.json() for p in posts) if doc["rule"] == rule]


class Node:
    """A running Sluice and an SDK client on it."""

    def __init__(self, server: ServerThread) -> None:
        self.server = server
        self.root = server.base_url.removesuffix("/v1")

    def client(self, key: str = ADMIN_KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.server.base_url, api_key=key, max_retries=0, timeout=20)

    def new_key(self, **settings: Any) -> tuple[str, str]:
        status, body, _ = admin_call(self.root, "POST", "/admin/keys", {"name": "alerts", **settings})
        assert status == 201, body
        return body["key"], body["id"]

    def alerts(self) -> list[dict[str, Any]]:
        status, body, _ = admin_call(self.root, "GET", "/admin/alerts?limit=1000")
        assert status == 200, body
        return list(body["data"])


@pytest.fixture
def hook() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as receiver:
        yield receiver


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[SMTPReceiver]:
    with SMTPReceiver(tmp_path) as receiver:
        yield receiver


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    servers: list[ServerThread] = []

    def run(config: Any, clock: Callable[[], int] | None = None) -> Node:
        server = ServerThread(create_app(config, ENV, clock=clock)).__enter__()
        servers.append(server)
        return Node(server)

    yield run
    for server in servers:
        server.__exit__(None, None, None)


def _ask(client: openai.OpenAI, i: int, model: str = "pricey") -> bool:
    """One small request; False when a budget refused it."""
    try:
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": f"question {i:04d}"}], max_tokens=1
        )
    except openai.RateLimitError as exc:
        refusal = exc.code
    else:
        return True
    assert refusal == "budget_exceeded", refusal
    return False


def _spend_to_the_cap(node: Node, key: str, limit: int = 600) -> int:
    client = node.client(key)
    for i in range(limit):
        if not _ask(client, i):
            return i
    raise AssertionError("the cap never refused a request")


def test_thresholds_fire_once_each_on_every_channel(
    emulator: Emulator, tmp_path: Path, hook: WebhookReceiver, smtp: SMTPReceiver, start: Callable[..., Node]
) -> None:
    node = start(_config(emulator, tmp_path, _channels(hook, smtp)))
    key, key_id = node.new_key(limits={"usd": {"day": "0.10"}})
    served = _spend_to_the_cap(node, key)
    assert served > 200  # $0.0004 each: the cap refused at over 97 % spent

    def four_each() -> bool:
        hooks = _rule(hook.at("/hook"), "threshold")
        slacks = [p for p in hook.at("/slack") if "% of its usd/day cap" in p.json()["text"]]
        mails = [m for m in smtp.messages if "% of its usd/day cap" in str(m["Subject"])]
        return len(hooks) >= 4 and len(slacks) >= 4 and len(mails) >= 4

    _wait(four_each, "four threshold alerts on each channel")
    for i in range(5):  # more refusals and more evaluation passes: nothing new
        _ask(node.client(key), 1000 + i)
    time.sleep(1.0)

    posts = [p for p in hook.at("/hook") if p.json()["rule"] == "threshold"]
    docs = [p.json() for p in posts]
    assert sorted(d["facts"]["threshold_pct"] for d in docs) == [50, 80, 95, 100]
    for post, doc in zip(posts, docs, strict=True):
        facts = doc["facts"]
        assert doc["scope"] == f"key:{key_id}"
        assert facts["cap"] == CAP
        assert facts["period"] == "day"
        assert facts["window"] == f"d{_today().isoformat()}"
        assert facts["metric"] == "usd"
        pct = facts["threshold_pct"]
        assert facts["spent"] * 100 >= min(pct, 97) * CAP  # at 100 %: the cap refused past 97 %
        assert facts["spent"] <= CAP
        assert doc["test"] is False
        assert verify(SECRET, post.headers[SIGNATURE_HEADER], post.raw, int(time.time()))
        assert not verify("another-secret", post.headers[SIGNATURE_HEADER], post.raw, int(time.time()))
        assert SECRET.encode() not in post.raw
        assert post.headers["x-sluice-alert-id"] == doc["id"]
    slack = [p.json()["text"] for p in hook.at("/slack") if "% of its usd/day cap" in p.json()["text"]]
    assert len(slack) == 4
    assert sorted(int(t.split(" % ")[0].rsplit(" ", 1)[1]) for t in slack) == [50, 80, 95, 100]
    assert all("$0.10" in t and f"key:{key_id}" in t for t in slack)  # money shown in dollars
    mails = [m for m in smtp.messages if "% of its usd/day cap" in str(m["Subject"])]
    assert len(mails) == 4
    assert all(m["To"] == "oncall@example.test" and f"scope: key:{key_id}" in m.get_content() for m in mails)
    assert SMTP_PASSWORD not in "".join(m.as_string() for m in mails)

    logged = [a for a in node.alerts() if a["rule"] == "threshold"]
    assert len(logged) == 4
    for alert in logged:
        assert [(d["channel"], d["status"], d["attempts"]) for d in alert["deliveries"]] == [
            ("hook", "sent", 1),
            ("mail", "sent", 1),
            ("slack", "sent", 1),
        ]


def test_projected_overspend_fires_before_the_cap_is_reached(
    emulator: Emulator, tmp_path: Path, hook: WebhookReceiver, start: Callable[..., Node]
) -> None:
    """A quarter of the day gone and a quarter of the cap spent already: on course to overspend."""
    morning = datetime.combine(_today() + timedelta(days=1), datetime.min.time(), UTC) + timedelta(hours=6)
    node = start(_config(emulator, tmp_path, _channels(hook, None)), Clock(morning))
    key, key_id = node.new_key(limits={"usd": {"day": "0.10"}})
    client = node.client(key)
    for i in range(240):
        assert _ask(client, i)
        if _rule(hook.at("/hook"), "projected_overspend"):
            break
    _wait(lambda: bool(_rule(hook.at("/hook"), "projected_overspend")), "a projected-overspend alert")
    found = _rule(hook.at("/hook"), "projected_overspend")[0]
    facts = found["facts"]
    assert found["scope"] == f"key:{key_id}"
    assert "before the period ends" in found["summary"]
    assert facts["spent"] < CAP // 2 < facts["projected"]  # said early: a quarter of the way into the day
    end_of_day = datetime.combine(morning.date() + timedelta(days=1), datetime.min.time(), UTC)
    assert facts["cap_reached_at_us"] < int(end_of_day.timestamp()) * 1_000_000
    assert not [d for d in _rule(hook.at("/hook"), "threshold") if d["facts"]["threshold_pct"] == 100]


def test_a_runaway_burst_fires_a_spend_anomaly(
    emulator: Emulator, tmp_path: Path, hook: WebhookReceiver, start: Callable[..., Node]
) -> None:
    """Two-second windows stand in for hours: a steady trickle, then a burst twenty times its rate."""
    settings = (
        "  anomaly_window_s: 2\n  anomaly_baseline_windows: 3\n  anomaly_factor: 5\n"
        '  anomaly_min_usd: "0.005"\n  rules: [spend_anomaly]\n'
    )
    node = start(_config(emulator, tmp_path, settings + _channels(hook, None)))
    key, key_id = node.new_key()
    client = node.client(key)
    for i in range(12):  # $0.0016 a window: under the floor, so no alert yet
        assert _ask(client, i)
        time.sleep(0.5)
    assert not _rule(hook.at("/hook"), "spend_anomaly")
    for i in range(70):  # $0.028 within a window
        assert _ask(client, 100 + i)

    def keyed() -> list[dict[str, Any]]:
        return [d for d in _rule(hook.at("/hook"), "spend_anomaly") if d["scope"] == f"key:{key_id}"]

    _wait(lambda: bool(keyed()), "a spend-anomaly alert for the key")
    facts = keyed()[0]["facts"]
    assert facts["last_window"] > facts["factor"] * facts["baseline_per_window"]
    assert facts["baseline_per_window"] > 0  # a real baseline from the trickle, not an empty history
    assert facts["window_s"] == 2


def test_a_free_plan_three_days_from_its_end_fires_a_runway_alert(
    emulator: Emulator, tmp_path: Path, hook: WebhookReceiver, start: Callable[..., Node]
) -> None:
    node = start(_config(emulator, tmp_path, _channels(hook, None)))
    _wait(lambda: bool(_rule(hook.at("/hook"), "credit_runway")), "a credit-runway alert")
    time.sleep(1.0)  # more periodic passes: still one (once a day)
    found = _rule(hook.at("/hook"), "credit_runway")
    assert len(found) == 1
    assert found[0]["scope"] == "provider:trial"
    assert found[0]["facts"]["days_to_expiry"] == 3
    assert "expires in 3 day(s)" in found[0]["summary"]
    assert [a["rule"] for a in node.alerts()] == ["credit_runway"]


def test_ejecting_a_deployment_fires_health_alerts(
    emulator: Emulator, tmp_path: Path, hook: WebhookReceiver, start: Callable[..., Node]
) -> None:
    node = start(_config(emulator, tmp_path, _channels(hook, None)))
    emulator.set_model_faults("alert-flaky-p", "status=503")
    try:
        client = node.client()
        for i in range(15):
            assert _ask(client, i, model="flaky")  # each served by the fallback
    finally:
        emulator.set_model_faults("alert-flaky-p", None)

    def events() -> dict[str, dict[str, Any]]:
        return {d["facts"]["event"]: d for d in _rule(hook.at("/hook"), "provider_health")}

    _wait(lambda: len(events()) == 3, "ejected, last-deployment and fallback-share alerts")
    found = events()
    assert found["ejected"]["scope"] == "deployment:openai/alert-flaky-p"
    assert found["ejected"]["facts"]["aliases"] == "flaky"
    assert found["last_deployment"]["scope"] == "alias:flaky"
    assert found["last_deployment"]["facts"]["deployment"] == "deepseek/alert-flaky-f"
    share = found["fallback_share"]["facts"]
    assert share["primary"] == "openai/alert-flaky-p"
    assert share["fallback"] * 2 > share["requests"] >= 10


def test_three_instances_on_redis_deliver_each_alert_once(
    emulator: Emulator,
    tmp_path: Path,
    hook: WebhookReceiver,
    start: Callable[..., Node],
    postgres_dsn: str,
    redis_url: str,
) -> None:
    redis.Redis.from_url(redis_url).flushall()
    dsn = fresh_database(postgres_dsn, "alerts_cluster")
    env_server = ", store: postgres, database_url: env:TEST_PG, counters: redis, redis_url: env:TEST_REDIS"
    ENV.update({"TEST_PG": dsn, "TEST_REDIS": redis_url})
    try:
        nodes = [
            start(_config(emulator, tmp_path / f"node{i}", _channels(hook, None), server=env_server))
            for i in range(3)
        ]
        key, key_id = nodes[0].new_key(limits={"usd": {"day": "0.10"}})
        clients = [n.client(key) for n in nodes]
        for i in range(600):
            if not _ask(clients[i % 3], i):
                break
        for i in range(6):  # every instance sees a refusal
            _ask(clients[i % 3], 1000 + i)
        _wait(lambda: len(_rule(hook.at("/hook"), "threshold")) >= 4, "four threshold alerts")
        time.sleep(1.5)  # every instance's periodic passes have run several times since
    finally:
        del ENV["TEST_PG"], ENV["TEST_REDIS"]
    thresholds = _rule(hook.at("/hook"), "threshold")
    assert sorted(d["facts"]["threshold_pct"] for d in thresholds) == [50, 80, 95, 100]
    assert {d["scope"] for d in thresholds} == {f"key:{key_id}"}
    assert len(_rule(hook.at("/hook"), "credit_runway")) == 1  # each instance found it; one sent it
    keys = [p.json()["key"] for p in hook.at("/hook")]
    assert len(keys) == len(set(keys))
    assert len(hook.at("/slack")) == len(hook.at("/hook"))
    logged = nodes[2].alerts()  # one log, shared
    assert sorted(a["key"] for a in logged) == sorted(keys)


def test_channels_that_are_down_are_retried_then_recorded_failed(
    emulator: Emulator, tmp_path: Path, hook: WebhookReceiver, smtp: SMTPReceiver, start: Callable[..., Node]
) -> None:
    hook.fail_status = 500  # plays Slack failing
    smtp.handler.reject = True
    closed = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens: connection refused
    settings = "  attempts: 3\n  rules: [credit_runway]\n"
    node = start(_config(emulator, tmp_path, settings + _channels(hook, smtp, hook_url=closed)))

    def done() -> bool:
        alerts = node.alerts()
        return bool(alerts) and all(d["status"] == "failed" for d in alerts[0]["deliveries"])

    _wait(done, "every delivery recorded failed")
    [alert] = node.alerts()
    deliveries = {d["channel"]: d for d in alert["deliveries"]}
    assert {c: (d["status"], d["attempts"]) for c, d in deliveries.items()} == {
        "hook": ("failed", 3),
        "mail": ("failed", 3),
        "slack": ("failed", 3),
    }
    assert "cannot connect" in deliveries["hook"]["last_error"]
    assert "HTTP 500" in deliveries["slack"]["last_error"]
    assert "550" in deliveries["mail"]["last_error"]
    assert len(hook.at("/slack")) == 3  # tried three times
    assert smtp.handler.tries == 3
    assert SECRET not in str(alert) and SMTP_PASSWORD not in str(alert)


@pytest.mark.usefixtures("untraced")
def test_failing_channels_leave_request_latency_alone(
    emulator: Emulator, tmp_path: Path, hook: WebhookReceiver, smtp: SMTPReceiver, start: Callable[..., Node]
) -> None:
    """Requests alternate between a Sluice whose alerts (a key crossing its four thresholds, a runway, a
    projection) go to three dead channels, retried all along, and one with alerts off; their median
    latencies are compared as a ratio."""
    hook.fail_status = 500
    smtp.handler.reject = True
    closed = f"http://127.0.0.1:{free_port()}/hook"
    retrying = "  attempts: 8\n"  # 0.05 s, 0.1 s, then 0.2 s apart: retries run through the whole test
    on = start(_config(emulator, tmp_path / "on", retrying + _channels(hook, smtp, hook_url=closed)))
    off = start(_config(emulator, tmp_path / "off", "  rules: []\n"))
    keys = {"on": on.new_key(limits={"usd": {"day": "0.10"}})[0], "off": off.new_key()[0]}
    clients = {name: node.client(keys[name]) for name, node in (("on", on), ("off", off))}
    timings: dict[str, list[float]] = {"on": [], "off": []}
    for i in range(220):  # the key on "on" crosses 50, 80 and 95 % of its cap along the way
        for name in ("on", "off") if i % 2 else ("off", "on"):
            began = time.perf_counter()
            assert _ask(clients[name], i)
            if i >= 20:  # warmed up
                timings[name].append(time.perf_counter() - began)
    ratio = statistics.median(timings["on"]) / statistics.median(timings["off"])
    print(f"median latency, alerts failing into dead channels / alerts off: {ratio:.3f}")
    logged = on.alerts()
    assert {a["rule"] for a in logged} >= {"threshold", "credit_runway"}
    retried = [d for a in logged for d in a["deliveries"] if d["attempts"] > 1]
    assert len(retried) >= 3 * 3  # the deliveries were failing and retrying while requests ran
    assert ratio < 1.3
    assert off.alerts() == []


def test_a_keys_own_thresholds_and_channels_through_the_admin_api(
    emulator: Emulator, tmp_path: Path, hook: WebhookReceiver, start: Callable[..., Node]
) -> None:
    node = start(_config(emulator, tmp_path, "  rules: [threshold]\n" + _channels(hook, None)))
    key, key_id = node.new_key(limits={"usd": {"day": "0.10"}})
    path = f"/admin/alert-rules/key%3A{key_id}"
    bad = [
        ({"thresholds": [0]}, 400, "thresholds"),
        ({"channels": ["pager"]}, 400, "channels"),
        ({"rules": ["nope"]}, 400, "rules.0"),
        ({"thresholds": [25], "extra": 1}, 400, "extra"),
    ]
    for body, status, param in bad:
        got, answer, _ = admin_call(node.root, "PUT", path, body)
        assert (got, answer["error"]["param"]) == (status, param), answer
    status, answer, _ = admin_call(node.root, "PUT", path, {"thresholds": [25], "channels": ["hook"]})
    assert status == 200, answer
    assert answer == {
        "scope": f"key:{key_id}",
        "source": "api",
        "thresholds": [25],
        "rules": None,
        "channels": ["hook"],
    }
    status, listed, _ = admin_call(node.root, "GET", "/admin/alert-rules")
    assert status == 200 and [r["scope"] for r in listed["data"]] == [f"key:{key_id}"]

    client = node.client(key)
    for i in range(80):  # $0.032: past 25 %, short of 50 %
        assert _ask(client, i)
    _wait(lambda: bool(_rule(hook.at("/hook"), "threshold")), "the key's own 25 % alert")
    time.sleep(0.5)
    [found] = _rule(hook.at("/hook"), "threshold")
    assert found["facts"]["threshold_pct"] == 25 and found["scope"] == f"key:{key_id}"
    assert hook.at("/slack") == []  # the override sends this key's alerts to the webhook only

    assert admin_call(node.root, "DELETE", path)[0] == 200
    assert admin_call(node.root, "DELETE", path)[0] == 404
    assert admin_call(node.root, "GET", path)[0] == 405
    assert admin_call(node.root, "PUT", "/admin/alert-rules/", {"thresholds": [5]})[0] == 404
    slashed = "/admin/alert-rules/deployment%3Aopenai%2Falert-flaky-p"  # an encoded slash stays in the scope
    status, answer, _ = admin_call(node.root, "PUT", slashed, {"rules": []})
    assert (status, answer["scope"]) == (200, "deployment:openai/alert-flaky-p")
    assert admin_call(node.root, "DELETE", slashed)[0] == 200
    for i in range(60):  # $0.056 in all: the global 50 % now applies, to every channel
        assert _ask(client, 100 + i)
    _wait(lambda: len(hook.at("/slack")) == 1, "the global 50 % alert on Slack too")
    assert sorted(d["facts"]["threshold_pct"] for d in _rule(hook.at("/hook"), "threshold")) == [25, 50]


def test_an_override_in_the_config_silences_a_rule_for_matching_scopes(
    emulator: Emulator, tmp_path: Path, hook: WebhookReceiver, start: Callable[..., Node]
) -> None:
    scopes = '  scopes:\n    "provider:*": {rules: [threshold]}\n'
    node = start(_config(emulator, tmp_path, scopes + _channels(hook, None)))
    time.sleep(1.5)  # several periodic passes: the trial account's runway would have fired by now
    assert _rule(hook.at("/hook"), "credit_runway") == []
    status, listed, _ = admin_call(node.root, "GET", "/admin/alert-rules")
    assert status == 200
    assert listed["data"] == [
        {
            "scope": "provider:*",
            "source": "config",
            "thresholds": None,
            "rules": ["threshold"],
            "channels": None,
        }
    ]


def test_a_delivery_left_pending_by_a_stopped_instance_is_finished(
    emulator: Emulator, tmp_path: Path, hook: WebhookReceiver, start: Callable[..., Node]
) -> None:
    """An instance claimed an alert, tried the webhook twice and stopped: the next one to run finishes it
    (and gives up on a channel that is no longer configured)."""
    an_hour_ago = (time.time_ns() // 1000) - 3_600_000_000
    store = SQLiteStore(tmp_path / "sluice.db")
    row = AlertRow(
        "alrt_left_behind",
        "threshold:key:k1:usd/day:d2026-11-25:80",
        "threshold",
        "key:k1",
        "key 'k1' has used 80 % of its usd/day cap",
        {"threshold_pct": 80, "spent": 80, "cap": 100},
        an_hour_ago,
    )

    async def leave_pending() -> None:
        assert await store.claim_alert(row, ["hook", "retired"])
        await store.record_delivery(
            row.id, "hook", "pending", 2, "the receiver answered HTTP 503", an_hour_ago
        )

    asyncio.run(leave_pending())
    store.shut()
    node = start(_config(emulator, tmp_path, "  rules: []\n  resume_after_s: 60\n" + _channels(hook, None)))
    _wait(lambda: bool(hook.at("/hook")), "the left-behind alert delivered")
    [post] = hook.at("/hook")
    assert post.json()["id"] == row.id and post.json()["key"] == row.dedup_key
    assert verify(SECRET, post.headers[SIGNATURE_HEADER], post.raw, int(time.time()))

    def settled() -> dict[str, tuple[str, int, str | None]]:
        [alert] = node.alerts()
        return {d["channel"]: (d["status"], d["attempts"], d["last_error"]) for d in alert["deliveries"]}

    _wait(lambda: all(s != "pending" for s, _, _ in settled().values()), "both deliveries settled")
    assert settled() == {
        "hook": ("sent", 3, None),
        "retired": ("failed", 0, "the channel is no longer configured"),
    }
    time.sleep(0.5)
    assert len(hook.at("/hook")) == 1  # taken over once, not at every pass
