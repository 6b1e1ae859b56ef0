"""Alert payloads: the webhook body, its signature (verifiable, replay-bounded, secret-free) and
Slack's message."""

from __future__ import annotations

import hashlib
import hmac

import orjson

from sluice.alerts.payload import SIGNATURE_HEADER, body, sign, slack, usd, verify
from sluice.alerts.rules import threshold_findings
from sluice.limits.spec import Limit

SECRET = "whsec-test-0123456789abcdef"  # a test secret
FINDING = threshold_findings(
    "key:k1", "key 'app'", Limit("usd", "day", 10_000_000_000), "d2026-11-25", 8_000_000_000
)[1]
NOW_US = 1_795_612_300_000_000  # 2026-11-25T13:11:40Z


def test_the_body_names_the_alert_and_never_the_secret() -> None:
    raw = body("alrt_1", FINDING, NOW_US)
    doc = orjson.loads(raw)
    assert doc == {
        "id": "alrt_1",
        "type": "alert",
        "rule": "threshold",
        "key": "threshold:key:k1:usd/day:d2026-11-25:80",
        "scope": "key:k1",
        "summary": "key 'app' has used 80 % of its usd/day cap",
        "facts": {
            "metric": "usd",
            "period": "day",
            "window": "d2026-11-25",
            "threshold_pct": 80,
            "spent": 8_000_000_000,
            "cap": 10_000_000_000,
        },
        "created_at": "2026-11-25T13:11:40Z",
        "test": False,
    }
    assert SECRET.encode() not in raw
    assert orjson.loads(body("alrt_2", FINDING, NOW_US, test=True))["test"] is True


def test_the_signature_is_the_documented_hmac() -> None:
    raw = body("alrt_1", FINDING, NOW_US)
    header = sign(SECRET, 1_795_612_300, raw)
    expected = hmac.new(SECRET.encode(), b"1795612300." + raw, hashlib.sha256).hexdigest()
    assert header == f"t=1795612300,v1={expected}"
    assert SIGNATURE_HEADER == "x-sluice-signature"
    assert verify(SECRET, header, raw, now=1_795_612_300)


def test_a_changed_body_an_old_signature_or_the_wrong_secret_fail() -> None:
    raw = body("alrt_1", FINDING, NOW_US)
    header = sign(SECRET, 1_795_612_300, raw)
    assert not verify(SECRET, header, raw + b" ", now=1_795_612_300)
    assert not verify(SECRET, header, raw, now=1_795_612_300 + 301)  # a replay, too late
    assert not verify("another-secret", header, raw, now=1_795_612_300)
    for bad in ("", "t=x,v1=y", "v1=abc", "t=1795612300"):
        assert not verify(SECRET, bad, raw, now=1_795_612_300)


def test_dollars_for_people() -> None:
    assert [
        usd(n) for n in (8_000_000_000, 10_000_000_000, 1_234_567_890, 50_000_000, 1_500, 0, -2_000_000_000)
    ] == [
        "$8.00",
        "$10.00",
        "$1.23",
        "$0.05",
        "$0.0000015",
        "$0.00",
        "-$2.00",
    ]


def test_slack_shows_money_in_dollars() -> None:
    text = orjson.loads(slack(FINDING))["text"]
    assert text.startswith("*Sluice alert:* key 'app' has used 80 % of its usd/day cap")
    assert "• spent: $8.00" in text and "• cap: $10.00" in text and "• threshold_pct: 80" in text
    tokens = threshold_findings("key:k1", "k", Limit("tokens", "day", 1000), "d", 900)[0]
    assert "• spent: 900" in orjson.loads(slack(tokens))["text"]  # tokens stay tokens
