"""Alert settings refused with a message naming the problem, channel secrets resolved at start-up, channel
filters, and test alerts through the admin API (a real server) and the ``sluice alerts`` CLI, each to a
real webhook receiver on 127.0.0.1."""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from sluice.alerts.channels import open_channels, wants
from sluice.alerts.payload import SIGNATURE_HEADER, verify
from sluice.alerts.rules import ANOMALY, RUNWAY, THRESHOLD, Finding, threshold_findings
from sluice.app import create_app
from sluice.cli.main import main
from sluice.config_file import parse_config
from sluice.emulator import Emulator
from sluice.errors import ConfigError
from sluice.limits.spec import Limit
from sluice.providers.accounts import plan_of
from sluice.settings import ChannelSettings
from tests.alert_receivers import Post, WebhookReceiver
from tests.conftest import ADMIN_KEY, ServerThread, admin_call, config_yaml, provider_env

HOOK_SECRET = "whsec-test-0123456789abcdef"


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(text, "c.yaml", environ={})
    return exc.value.problems


def channels_yaml(*items: str) -> str:
    return "alerts:\n  channels:\n" + "".join(f"    - {{{item}}}\n" for item in items)


# --- 1. the config file --------------------------------------------------------------------------------

C0, HOOK = "alerts.channels[0]", "name: h, type: webhook, url: 'http://x/h'"
MAIL = "name: m, type: email, sender: a@b.c"
PROVIDER = "providers:\n  - name: ds\n    preset: deepseek\n    api_key: env:DS_KEY\n"
BAD = {
    "webhook without secret": (channels_yaml(HOOK), C0, "a webhook channel needs secret"),
    "literal secret": (channels_yaml(f"{HOOK}, secret: whsec-x"), C0, "secret must be an env:NAME reference"),
    "literal password": (
        channels_yaml(f"{MAIL}, host: h, to: [d@e.f], password: hunter2"),
        C0,
        "password must be an env:NAME reference, not a literal",
    ),
    "slack without url": (channels_yaml("name: s, type: slack"), C0, "a slack channel needs url"),
    "bad url scheme": (
        channels_yaml("name: h, type: webhook, url: 'ftp://x/h', secret: 'env:S'"),
        C0,
        "url must start with http:// or https://",
    ),
    "email without host": (channels_yaml(f"{MAIL}, to: [d]"), C0, "email channel needs host, sender and to"),
    "email without to": (channels_yaml(f"{MAIL}, host: h"), C0, "email channel needs host, sender and to"),
    "duplicate channel names": (
        channels_yaml(f"{HOOK}, secret: 'env:S'", "name: h, type: slack, url: 'env:U'"),
        "alerts",
        "duplicate channel name",
    ),
    "threshold 0": ("alerts:\n  thresholds: [0, 50]\n", "alerts.thresholds", "percentages from 1 to 100"),
    "threshold 101": ("alerts:\n  thresholds: [50, 101]\n", "alerts.thresholds", "percentages from 1 to 100"),
    "unknown rule": ("alerts:\n  rules: [threshold, budget_blown]\n", "alerts.rules[1]", "'credit_runway'"),
    "unknown channel field": (
        channels_yaml(f"{HOOK}, secret: 'env:S', colour: red"),
        f"{C0}.colour",
        "Extra inputs are not permitted",
    ),
    "bad channel name": (channels_yaml("name: 'a b', type: slack, url: 'env:U'"), f"{C0}.name", "pattern"),
    "plan": (PROVIDER + "    plan: gratis\n", "providers[0].plan", "'paid', 'free' or 'trial'"),
    "expires": (PROVIDER + "    expires: next-week\n", "providers[0].expires", "valid date"),
    "daily_requests": (PROVIDER + "    daily_requests: 0\n", "providers[0].daily_requests", "equal to 1"),
    "credits_usd": (PROVIDER + "    credits_usd: -1\n", "providers[0].credits_usd", "equal to 0"),
    "unknown type": (channels_yaml("name: p, type: pager, url: 'env:U'"), f"{C0}.type", "'webhook', 'slack'"),
}


@pytest.mark.parametrize(("text", "where", "what"), list(BAD.values()), ids=list(BAD))
def test_bad_alert_settings_are_refused_naming_the_problem(text: str, where: str, what: str) -> None:
    found = problems(text)
    assert any(f": {where}:" in p and what in p for p in found), found
    assert all(p.startswith("c.yaml:") for p in found), found  # each problem with its line


GOOD = """\
providers:
  - name: trial-ds
    preset: deepseek
    api_key: env:DS_KEY
    plan: free
    credits_usd: "5.50"
    credits_since: 2026-11-01
    daily_requests: 1000
    expires: 2026-12-31
alerts:
  thresholds: [100, 50, 50]
  rules: [threshold, credit_runway, spend_anomaly]
  channels:
    - name: ops.hook
      type: webhook
      url: https://hooks.example.test/sluice
      secret: env:HOOK_SECRET
      scopes: ["key:*", "team:search"]
      min_threshold: 80
    - name: slack-ops
      type: slack
      url: env:SLACK_URL
      rules: [credit_runway]
    - name: mail
      type: email
      host: smtp.example.test
      security: tls
      username: env:SMTP_USER
      password: env:SMTP_PASS
      sender: sluice@example.test
      to: [oncall@example.test, finance@example.test]
"""


def test_a_full_alert_config_loads() -> None:
    config = parse_config(GOOD, "c.yaml", environ={}).config
    provider = config.providers[0]
    assert (provider.plan, provider.credits_usd, provider.daily_requests) == ("free", Decimal("5.50"), 1000)
    assert (provider.credits_since, provider.expires) == (date(2026, 11, 1), date(2026, 12, 31))
    assert config.alerts.thresholds == [50, 100]  # deduplicated and sorted
    hook, slack, mail = config.alerts.channels
    assert (hook.name, hook.type, hook.min_threshold) == ("ops.hook", "webhook", 80)
    assert hook.scopes == ["key:*", "team:search"] and slack.rules == [RUNWAY]
    assert (mail.security, mail.to[1]) == ("tls", "finance@example.test")
    no_plan = GOOD.split("    plan:", maxsplit=1)[0]  # the provider alone: no plan, no alerts section
    paid = parse_config(no_plan, environ={}).config
    assert (plan_of(paid.providers[0]), paid.providers[0].credits_usd, paid.alerts.channels) == (
        "paid",
        None,
        [],
    )


# --- 2. secrets resolved at start-up ---------------------------------------------------------------------


def test_open_channels_resolves_references_and_names_the_channel_missing_one() -> None:
    channels = parse_config(GOOD, environ={}).config.alerts.channels
    env = {"HOOK_SECRET": HOOK_SECRET, "SLACK_URL": "https://hooks.slack.test/T0/B0/xyz", "SMTP_USER": "u"}
    with pytest.raises(ConfigError) as exc:
        open_channels(channels, env)
    message = exc.value.message
    assert "'mail'" in message and "SMTP_PASS" in message, message
    for value in env.values():
        assert value not in message  # names the variable, never a value
    assert "'ops.hook'" not in message
    opened = open_channels(channels, env | {"SMTP_PASS": "pw-0123"})
    assert opened["ops.hook"].secret == HOOK_SECRET
    assert opened["slack-ops"].url == env["SLACK_URL"]
    assert (opened["mail"].username, opened["mail"].password) == ("u", "pw-0123")
    with pytest.raises(ConfigError, match=r"'slack-ops'.*SLACK_URL"):
        open_channels(channels, {"HOOK_SECRET": HOOK_SECRET, "SLACK_URL": ""})  # empty counts as unset


# --- 3. which findings a channel receives -----------------------------------------------------------------


def channel(**fields: Any) -> ChannelSettings:
    return ChannelSettings.model_validate(
        {"name": "c", "type": "webhook", "url": "http://127.0.0.1:9/h", "secret": "env:S", **fields}
    )


def spent_96pct(scope: str) -> list[Finding]:
    """Threshold findings at 50, 80 and 95 % of $10 a day."""
    return threshold_findings(scope, scope, Limit("usd", "day", 10_000_000_000), "d2026-11-25", 9_600_000_000)


def other(rule: str, scope: str) -> Finding:
    return Finding(rule, f"{rule}:{scope}:x", scope, f"{rule} about {scope}")


def test_wants_filters_by_rules() -> None:
    runway_only = channel(rules=[RUNWAY])
    assert not any(wants(runway_only, f) for f in spent_96pct("key:k1"))
    assert wants(runway_only, other(RUNWAY, "provider:ds"))
    assert not wants(runway_only, other(ANOMALY, "key:k1"))
    everything = channel()
    assert all(wants(everything, f) for f in [*spent_96pct("all"), other(ANOMALY, "team:x")])


def test_wants_filters_by_scope_globs() -> None:
    scoped = channel(scopes=["key:*", "team:search"])
    cases = {"key:k1": True, "key:": True, "team:search": True, "team:searchers": False}
    for scope, sent in (cases | {"team:Search": False, "provider:ds": False, "all": False}).items():
        assert wants(scoped, other(ANOMALY, scope)) is sent, scope
        assert all(wants(scoped, f) is sent for f in spent_96pct(scope)), scope


def test_min_threshold_holds_back_lower_thresholds_only() -> None:
    high = channel(min_threshold=80)
    found = spent_96pct("key:k1")
    assert [f.facts["threshold_pct"] for f in found] == [50, 80, 95]
    assert [f.facts["threshold_pct"] for f in found if wants(high, f)] == [80, 95]  # 80 itself is sent
    assert wants(high, other(ANOMALY, "key:k1"))  # other rules are not thresholds
    assert wants(high, other(RUNWAY, "provider:ds"))
    assert all(wants(channel(min_threshold=0), f) for f in found)
    assert not any(wants(channel(min_threshold=100), f) for f in found)
    assert all(f.rule == THRESHOLD for f in found)


# --- 4. the admin API, through a real server ----------------------------------------------------------------


def no_auth_call(root: str, method: str, path: str) -> int:
    request = urllib.request.Request(root + path, method=method)  # noqa: S310 - our own server on 127.0.0.1
    try:
        with urllib.request.urlopen(request, timeout=30) as r:  # noqa: S310
            return int(r.status)
    except urllib.error.HTTPError as e:
        return e.code


def assert_error(answer: Any, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """The answer is OpenAI's error envelope (and names ``param``/``code`` when given)."""
    assert isinstance(answer, dict) and set(answer) == {"error"}, answer
    error: dict[str, Any] = answer["error"]
    assert {"message", "type", "param", "code"} <= set(error), error
    assert isinstance(error["message"], str) and error["message"]
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error


def hook_channel(receiver: WebhookReceiver) -> str:
    """The ``channels`` block of an ``alerts`` section: one webhook, ``hook``, posting to ``receiver``."""
    return (
        "  channels:\n    - name: hook\n      type: webhook\n"
        f"      url: {receiver.url('/hook')}\n      secret: env:ALERT_HOOK_SECRET\n"
    )


def signature(post: Post) -> str:
    return next(v for k, v in post.headers.items() if k.lower() == SIGNATURE_HEADER)


@pytest.fixture(scope="module")
def hooked(
    emulator: Emulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, WebhookReceiver]]:
    """A Sluice server with one webhook channel, ``hook``, and the receiver it posts to."""
    with WebhookReceiver() as receiver:
        extra = "alerts:\n  backoff_base_s: 0.05\n" + hook_channel(receiver)
        env = provider_env() | {"ALERT_HOOK_SECRET": HOOK_SECRET}
        yaml_text = config_yaml(emulator, tmp_path_factory.mktemp("alerts-data"), extra=extra)
        app = create_app(parse_config(yaml_text, environ=env).config, env)
        with ServerThread(app) as server:
            yield f"http://127.0.0.1:{server.port}", receiver


@pytest.mark.parametrize("limit", ["0", "abc", "1001", "-1", "1.5", "%20"])
def test_alert_log_limit_out_of_range_is_400(hooked: tuple[str, WebhookReceiver], limit: str) -> None:
    status, answer, _ = admin_call(hooked[0], "GET", f"/admin/alerts?limit={limit}")
    assert status == 400
    assert_error(answer, param="limit")


def test_alert_log_limit_superscript_digit_is_400(hooked: tuple[str, WebhookReceiver]) -> None:
    status, answer, _ = admin_call(hooked[0], "GET", "/admin/alerts?limit=%C2%B2")
    assert status == 400, (status, answer)


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b"{}", 400, None),
        (b'{"channel": ""}', 400, None),
        (b'{"channel": "nope"}', 404, "channel"),
        (b'{"channel": "hook", "x": 1}', 400, None),
        (b'{"channel": 7}', 400, None),
        (b"[]", 400, None),
        (b'{"channel": ', 400, None),  # not JSON
    ],
)
def test_alert_test_refuses_bad_requests(
    hooked: tuple[str, WebhookReceiver], body: bytes, status: int, param: str | None
) -> None:
    root, receiver = hooked
    before = len(receiver.posts)
    got, answer, _ = admin_call(root, "POST", "/admin/alerts/test", raw=body)
    assert got == status, answer
    error = assert_error(answer, param=param)
    if status == 404:
        assert "'nope'" in error["message"] and "hook" in error["message"]  # names it, lists the known ones
    assert len(receiver.posts) == before  # nothing was sent


def test_alert_routes_need_the_admin_key_and_the_right_method(hooked: tuple[str, WebhookReceiver]) -> None:
    root, receiver = hooked
    status, answer, _ = admin_call(root, "GET", "/admin/alerts/test")
    assert status == 405
    assert_error(answer)
    assert admin_call(root, "DELETE", "/admin/alerts")[0] == 405
    status, made, _ = admin_call(root, "POST", "/admin/keys", {"name": "k"})
    assert status == 201, made
    calls: list[tuple[str, str, object]] = [("GET", "/admin/alerts", None)]
    for method, path, body in [*calls, ("POST", "/admin/alerts/test", {"channel": "hook"})]:
        status, answer, _ = admin_call(root, method, path, body, key=made["key"])
        assert status == 403, answer
        assert_error(answer)
        assert admin_call(root, method, path, body, key="sk-not-a-key-0000000000")[0] == 401
        assert no_auth_call(root, method, path) == 401
    assert receiver.at("/hook") == []


def test_test_alert_is_signed_sent_and_logged(hooked: tuple[str, WebhookReceiver]) -> None:
    root, receiver = hooked
    before = len(receiver.at("/hook"))
    status, sent, text = admin_call(root, "POST", "/admin/alerts/test", {"channel": "hook"})
    assert status == 200, sent
    assert HOOK_SECRET not in text
    assert sent["test"] is True and sent["rule"] == "test"
    assert [(d["channel"], d["status"], d["attempts"]) for d in sent["deliveries"]] == [("hook", "sent", 1)]
    posts = receiver.at("/hook")[before:]
    assert len(posts) == 1
    post = posts[0]
    doc = post.json()
    assert doc["test"] is True and doc["id"] == sent["id"] and doc["type"] == "alert"
    assert HOOK_SECRET.encode() not in post.raw
    assert all(HOOK_SECRET not in v for v in post.headers.values())
    now = int(time.time())
    assert verify(HOOK_SECRET, signature(post), post.raw, now)
    assert not verify("another-secret", signature(post), post.raw, now)
    assert not verify(HOOK_SECRET, signature(post), post.raw + b" ", now)
    assert not verify(HOOK_SECRET, signature(post), post.raw, now + 3600)  # a replay, an hour later

    receiver.fail_status = 500
    try:
        status, answer, text = admin_call(root, "POST", "/admin/alerts/test", {"channel": "hook"})
    finally:
        receiver.fail_status = None
    assert status == 502
    error = assert_error(answer, code="alert_delivery_failed")
    assert "HTTP 500" in error["message"] and "'hook'" in error["message"]
    assert HOOK_SECRET not in text and "down for the test" not in text  # no receiver body either
    failed_id = re.search(r"alrt_[0-9a-f]+", error["message"])
    assert failed_id is not None, error
    assert len(receiver.at("/hook")) == before + 2  # one attempt, no background retries

    status, listing, text = admin_call(root, "GET", "/admin/alerts?limit=2")
    assert status == 200 and listing["object"] == "list"
    assert HOOK_SECRET not in text
    newest, older = listing["data"]
    assert (newest["id"], older["id"]) == (failed_id.group(), sent["id"])
    assert newest["created_us"] >= older["created_us"]
    assert [(d["status"], d["attempts"]) for d in newest["deliveries"]] == [("failed", 1)]
    assert "HTTP 500" in newest["deliveries"][0]["last_error"]
    assert [(d["status"], d["last_error"]) for d in older["deliveries"]] == [("sent", None)]
    assert newest["test"] is older["test"] is True
    assert admin_call(root, "GET", "/admin/alerts?limit=1")[1]["data"][0]["id"] == newest["id"]


# --- 5. the CLI ------------------------------------------------------------------------------------------


@pytest.fixture
def cli_setup(tmp_path: Path) -> Iterator[tuple[WebhookReceiver, list[str], dict[str, str | None]]]:
    """A receiver, the ``--config``/``--data-dir`` options of a config with a ``hook`` channel to it, and the
    environment the CLI runs with."""
    with WebhookReceiver() as receiver:
        config = tmp_path / "sluice.yaml"
        config.write_text("alerts:\n" + hook_channel(receiver))
        options = ["--config", str(config), "--data-dir", str(tmp_path / "data")]
        env: dict[str, str | None] = {"ALERT_HOOK_SECRET": HOOK_SECRET, "SLUICE_ADMIN_KEY": ADMIN_KEY}
        yield receiver, options, env


def test_cli_sends_lists_and_reports_failures(
    cli_setup: tuple[WebhookReceiver, list[str], dict[str, str | None]],
) -> None:
    receiver, options, env = cli_setup
    runner = CliRunner()
    ok = runner.invoke(main, ["alerts", "test", "hook", *options], env=env)
    assert ok.exit_code == 0, ok.output
    assert "hook: sent" in ok.output
    assert len(receiver.at("/hook")) == 1
    post = receiver.at("/hook")[0]
    assert post.json()["test"] is True
    assert verify(HOOK_SECRET, signature(post), post.raw, int(time.time()))

    nope = runner.invoke(main, ["alerts", "test", "nope", *options], env=env)
    assert nope.exit_code == 1
    assert "'nope'" in nope.stderr and "hook" in nope.stderr

    receiver.fail_status = 500
    down = runner.invoke(main, ["alerts", "test", "hook", *options], env=env)
    assert down.exit_code == 1
    assert "hook: failed" in down.stderr and "HTTP 500" in down.stderr
    assert len(receiver.at("/hook")) == 2

    listed = runner.invoke(main, ["alerts", "list", "--json", *options], env=env)
    assert listed.exit_code == 0, listed.output
    rows = [orjson.loads(line) for line in listed.stdout.splitlines()]
    assert [r["deliveries"][0]["status"] for r in rows] == ["failed", "sent"]  # newest first
    assert all(r["test"] and r["rule"] == "test" for r in rows)
    assert HOOK_SECRET not in listed.output
    one = runner.invoke(main, ["alerts", "list", "--json", "--limit", "1", *options], env=env)
    assert [orjson.loads(line)["id"] for line in one.stdout.splitlines()] == [rows[0]["id"]]
    table = runner.invoke(main, ["alerts", "list", *options], env=env)
    assert table.exit_code == 0, table.output
    assert "Alerts" in table.stdout and "hook:" in table.stdout and "failed" in table.stdout
    assert runner.invoke(main, ["alerts", "list", "--limit", "0", *options], env=env).exit_code == 2


def test_cli_names_the_channel_whose_secret_is_missing(
    cli_setup: tuple[WebhookReceiver, list[str], dict[str, str | None]],
) -> None:
    receiver, options, env = cli_setup
    result = CliRunner().invoke(
        main, ["alerts", "test", "hook", *options], env=env | {"ALERT_HOOK_SECRET": None}
    )
    assert result.exit_code == 1
    assert "'hook'" in result.stderr and "ALERT_HOOK_SECRET" in result.stderr
    assert receiver.posts == []
