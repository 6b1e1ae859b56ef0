"""Free tiers: each preset's refusals told apart ("slow down" from "spent until the reset"), and what a
running Sluice does with them, through the real openai SDK (its own retries off) and the emulator playing
each provider's own refusal bodies.

- ``classify`` on the emulator's refusals for every free-tier preset, and on the verbatim bodies of
  shared/free-tiers.md section 4.
- End to end: a spent day holds the deployment out until the reset (the fallback serves, the provider is
  not called again; without a fallback the client gets ``provider_quota_exhausted`` with a retry-after);
  a "slow down" cools it briefly, then it serves again.
- A free account's daily request allowance: 50 served by it, the 51st by the fallback (or refused)
  without the provider being called.

Each test has its own provider account and upstream model names, so one test's holds never touch another.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import openai
import orjson
import pytest

from sluice.api.asgi import SluiceAPI
from sluice.app import create_app
from sluice.config_file import parse_config
from sluice.emulator import Emulator
from sluice.emulator.quotas import quota_plan
from sluice.providers.accounts import account_limits
from sluice.providers.quota import (
    COOLDOWN,
    CREDIT_RECHECK_S,
    DEFAULT_COOLDOWN_S,
    EXHAUSTED,
    Throttle,
    classify,
)
from sluice.routing.health import DeploymentState
from sluice.settings import ProviderSettings
from tests.conftest import ADMIN_KEY, ServerThread

FREE_TIERS = (
    *("groq", "gemini", "mistral", "openrouter_free", "cloudflare", "nvidia_nim"),
    *("sambanova", "cohere", "zai", "siliconflow", "vercel", "cerebras"),
)
NO_DAY_SIGNAL = ("mistral", "nvidia_nim", "siliconflow", "vercel", "cerebras")
# A fixed instant: noon UTC on the day US daylight saving time starts (Los Angeles is UTC-7 from 10:00 UTC)
NOW = datetime(2026, 3, 8, 12, 0, tzinfo=UTC)
TO_UTC_MIDNIGHT = 12 * 3600.0
TO_LA_MIDNIGHT = 19 * 3600.0  # 2026-03-09 00:00 PDT is 07:00 UTC
TO_APRIL = 23.5 * 86400  # 2026-04-01 00:00 UTC

# What each preset's "slow down" means: (seconds, whole account)
MINUTE: dict[str, tuple[float, bool]] = {
    "groq": (7.66, False),  # "Please try again in 7.66s" wins over retry-after: 8
    "gemini": (39.225426742, False),  # "Please retry in 39.225426742s."
    "mistral": (DEFAULT_COOLDOWN_S, False),
    "openrouter_free": (DEFAULT_COOLDOWN_S, True),  # free-models-per-min: every free model together
    "cloudflare": (DEFAULT_COOLDOWN_S, False),  # 3040, capacity
    "nvidia_nim": (DEFAULT_COOLDOWN_S, False),
    "sambanova": (2.0, False),  # retry-after: 2
    "cohere": (DEFAULT_COOLDOWN_S, False),
    "zai": (DEFAULT_COOLDOWN_S, False),  # 1302
    "siliconflow": (2.0, False),
    "vercel": (2.0, False),
    "cerebras": (2.0, False),
}
# What each preset's spent day (or month, or balance) means at NOW: (seconds, whole account)
DAY: dict[str, tuple[float, bool]] = {
    "groq": (578.016, False),  # TPD, "Please try again in 9m38.016s"
    "gemini": (TO_LA_MIDNIGHT, False),  # quotaId ...PerDay...: Pacific midnight
    "cloudflare": (TO_UTC_MIDNIGHT, True),  # 3036, daily free allocation
    "cohere": (TO_APRIL, True),  # trial calls per month
    "zai": (CREDIT_RECHECK_S, True),  # 1113, no balance
    "sambanova": (TO_UTC_MIDNIGHT, False),  # "requests per day"
}


def _headers(pairs: list[tuple[str, str]]) -> dict[str, str]:
    return {k.lower(): v for k, v in pairs}


def _classify_plan(preset: str, kind: str, now: datetime = NOW) -> Throttle | None:
    plan = quota_plan(preset, kind, f"ft-{preset}-model")
    return classify(preset, plan.status, _headers(plan.headers), plan.body, now)


def _until_midnight(now: datetime, zone: str = "UTC") -> float:
    tz = ZoneInfo(zone)
    tomorrow = now.astimezone(tz).date() + timedelta(days=1)
    return (datetime(tomorrow.year, tomorrow.month, tomorrow.day, tzinfo=tz) - now).total_seconds()


def _until_next_month(now: datetime) -> float:
    year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    return (datetime(year, month, 1, tzinfo=UTC) - now).total_seconds()


# --- classify: the emulator's refusals, every free-tier preset ----------------------------------------------


@pytest.mark.parametrize("preset", FREE_TIERS)
def test_a_minute_refusal_is_a_cooldown(preset: str) -> None:
    found = _classify_plan(preset, "minute")
    assert found is not None
    seconds, account = MINUTE[preset]
    assert (found.kind, found.account) == (COOLDOWN, account)
    assert found.seconds == pytest.approx(seconds, abs=1e-6)
    assert found.reason


@pytest.mark.parametrize("preset", sorted(DAY))
def test_a_spent_day_is_exhausted_until_the_reset(preset: str) -> None:
    found = _classify_plan(preset, "day")
    assert found is not None
    seconds, account = DAY[preset]
    assert (found.kind, found.account) == (EXHAUSTED, account)
    assert found.seconds == pytest.approx(seconds, abs=1e-6)
    assert found.reason


def test_openrouter_free_per_day_is_out_until_the_reset_instant_it_names() -> None:
    now = datetime.now(UTC)
    plan = quota_plan("openrouter_free", "day", "meta-llama/llama-3.3-70b-instruct:free")
    reset_ms = int(orjson.loads(plan.body)["error"]["metadata"]["headers"]["X-RateLimit-Reset"])
    reset = datetime.fromtimestamp(reset_ms / 1000, UTC)
    assert (reset.hour, reset.minute, reset.second) == (0, 0, 0)  # the UTC day's end
    found = classify("openrouter_free", plan.status, _headers(plan.headers), plan.body, now)
    assert found is not None
    assert (found.kind, found.account) == (EXHAUSTED, True)  # every :free model of the account
    assert found.seconds == pytest.approx(reset_ms / 1000 - now.timestamp(), abs=1e-3)
    assert 0 < found.seconds <= 86400


@pytest.mark.parametrize("preset", NO_DAY_SIGNAL)
def test_a_tier_without_a_day_signal_only_cools_down(preset: str) -> None:
    """No published "day spent" answer: whatever the provider's 429 says, it is a cooldown, never a hold
    until a reset that nothing announced."""
    for kind in ("minute", "day"):
        found = _classify_plan(preset, kind)
        assert found is not None, kind
        assert found.kind == COOLDOWN, kind


@pytest.mark.parametrize("preset", ["openrouter_free", "zai", "vercel"])
def test_credits_used_up_are_exhausted_until_a_recheck(preset: str) -> None:
    plan = quota_plan(preset, "credits", "m")
    assert plan.status == (429 if preset == "zai" else 402)
    found = classify(preset, plan.status, _headers(plan.headers), plan.body, NOW)
    assert found is not None
    assert (found.kind, found.seconds, found.account) == (EXHAUSTED, CREDIT_RECHECK_S, True)


# --- classify: the verbatim bodies (shared/free-tiers.md section 4) -----------------------------------------

_GROQ_TPD = (
    "Rate limit reached for model `llama-3.3-70b-versatile` in organization `org_01kjh…` service tier "
    "`on_demand` on tokens per day (TPD): Limit 100000, Used 97050, Requested 3619. Please try again in "
    "9m38.016s. Need more tokens? Upgrade to Dev Tier today at https://console.groq.com/settings/billing"
)
_GROQ_TPM = (
    "Rate limit reached for model `llama3-70b-8192` in organization `org_…` on tokens per minute (TPM): "
    "Limit 7000, Used 0, Requested ~12903. Please try again in 50.597142857s. Visit "
    "https://console.groq.com/docs/rate-limits for more information."
)
_GROQ_413 = (
    "Request too large for model llama-3.1-8b-instant in organization org_xxxxxxx service tier on_demand on "
    "tokens per minute (TPM): Limit 6000, Requested 12328, please reduce your message size and try again. "
    "Need more tokens? Upgrade to Dev Tier today at https://console.groq.com/settings/billing"
)
_GEMINI_METRIC = "generativelanguage.googleapis.com/generate_content_free_tier_requests"
_GEMINI_NATIVE = {
    "error": {
        "code": 429,
        "message": "You exceeded your current quota, please check your plan and billing details. For more "
        "information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits. To monitor "
        "your current usage, head to: https://ai.dev/rate-limit. \n* Quota exceeded for metric: "
        "generativelanguage.googleapis.com/generate_content_free_tier_requests, limit: 0, model: "
        "gemini-2.5-pro\nPlease retry in 39.225426742s.",
        "status": "RESOURCE_EXHAUSTED",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.Help",
                "links": [
                    {
                        "description": "Learn more about Gemini API quotas",
                        "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                    }
                ],
            },
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": _GEMINI_METRIC,
                        "quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
                        "quotaDimensions": {"location": "global", "model": "gemini-2.5-pro"},
                    }
                ],
            },
        ],
    }
}
_CF_3036 = (
    "You have used up your daily free allocation of 10,000 neurons. Please upgrade to Cloudflare's Workers "
    "Paid plan if you would like to continue usage."
)
_OR_402 = {
    "error": {
        "message": "Insufficient credits. Add more using https://openrouter.ai/settings/credits",
        "code": 402,
        "metadata": {
            "limit_source": "openrouter_credits",
            "remedy_hint": "Add credits at https://openrouter.ai/settings/credits, or lower max_tokens / "
            "prompt size to fit your remaining balance.",
        },
    }
}
_OR_402_NEVER = {
    "error": {
        "message": "Insufficient credits. This account never purchased credits. Make sure your key is on "
        "the correct account or org, and if so, purchase more at https://openrouter.ai/settings/credits",
        "code": 402,
    }
}
_OR_DAY = (
    b'{"error":{"message":"Rate limit exceeded: free-models-per-day. Add 10 credits to unlock 1000 free '
    b'model requests per day","code":429,"metadata":{"headers":{"X-RateLimit-Limit":"50",'
    b'"X-RateLimit-Remaining":"0","X-RateLimit-Reset":"1788825600000"},'
    b'"limit_source":"openrouter_free_tier_daily"}}}'
)
_OPENAI_429 = {
    "error": {
        "message": "Rate limit reached for gpt-4o-mini in organization org-x on requests per min (RPM): "
        "Limit 3, Used 3, Requested 1. Please try again in 20s.",
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    }
}


def _json(body: Any) -> bytes:
    return body if isinstance(body, bytes) else orjson.dumps(body)


VERBATIM: list[tuple[str, str, int, dict[str, str], Any, tuple[str, float] | None]] = [
    (
        "groq TPD",
        "groq",
        429,
        {},
        {"error": {"message": _GROQ_TPD, "type": "tokens", "code": "rate_limit_exceeded"}},
        (EXHAUSTED, 578.016),
    ),
    (
        "groq TPM",
        "groq",
        429,
        {"retry-after": "51"},
        {"error": {"message": _GROQ_TPM, "type": "tokens", "code": "rate_limit_exceeded"}},
        (COOLDOWN, 50.597142857),
    ),
    (
        "groq 413 (the client's to fix)",
        "groq",
        413,
        {},
        {"error": {"message": _GROQ_413, "type": "tokens", "code": "rate_limit_exceeded"}},
        None,
    ),
    ("gemini PerDay in an array", "gemini", 429, {}, [_GEMINI_NATIVE], (EXHAUSTED, TO_LA_MIDNIGHT)),
    ("gemini PerDay, native", "gemini", 429, {}, _GEMINI_NATIVE, (EXHAUSTED, TO_LA_MIDNIGHT)),
    (
        "gemini array, no detail",
        "gemini",
        429,
        {},
        [
            {
                "error": {
                    "code": 429,
                    "message": "Resource has been exhausted (e.g. check quota).",
                    "status": "RESOURCE_EXHAUSTED",
                }
            }
        ],
        (COOLDOWN, DEFAULT_COOLDOWN_S),
    ),
    (
        "mistral 1300",
        "mistral",
        429,
        {},
        {
            "object": "error",
            "message": "Rate limit exceeded",
            "type": "rate_limited",
            "param": None,
            "code": "1300",
        },
        (COOLDOWN, DEFAULT_COOLDOWN_S),
    ),
    (
        "mistral 1300 with raw_status_code",
        "mistral",
        429,
        {},
        {
            "object": "error",
            "message": "Rate limit exceeded",
            "type": "rate_limited",
            "param": None,
            "code": "1300",
            "raw_status_code": 429,
        },
        (COOLDOWN, DEFAULT_COOLDOWN_S),
    ),
    (
        "cerebras per minute",
        "cerebras",
        429,
        {},
        {
            "message": "Requests per minute limit exceeded - too many requests sent.",
            "type": "too_many_requests_error",
            "param": "quota",
            "code": "request_quota_exceeded",
        },
        (COOLDOWN, DEFAULT_COOLDOWN_S),
    ),
    (
        "openrouter_free per day",
        "openrouter_free",
        429,
        {},
        _OR_DAY,
        None,  # checked against its own instant below
    ),
    ("openrouter paid 402", "openrouter", 402, {}, _OR_402, None),
    ("openrouter paid 402, never purchased", "openrouter", 402, {}, _OR_402_NEVER, None),
    ("openrouter_free 402", "openrouter_free", 402, {}, _OR_402, (EXHAUSTED, CREDIT_RECHECK_S)),
    (
        "cloudflare 3036",
        "cloudflare",
        429,
        {},
        {"result": None, "success": False, "errors": [{"code": 3036, "message": _CF_3036}], "messages": []},
        (EXHAUSTED, TO_UTC_MIDNIGHT),
    ),
    (
        "cloudflare 3040",
        "cloudflare",
        429,
        {},
        {
            "result": None,
            "success": False,
            "errors": [{"code": 3040, "message": "No more data centers to forward the request to"}],
            "messages": [],
        },
        (COOLDOWN, DEFAULT_COOLDOWN_S),
    ),
    (
        "nvidia status/title",
        "nvidia_nim",
        429,
        {},
        {"status": 429, "title": "Too Many Requests"},
        (COOLDOWN, DEFAULT_COOLDOWN_S),
    ),
    (
        "zai 1302",
        "zai",
        429,
        {},
        {"error": {"code": "1302", "message": "您的账户已达到速率限制，请您控制请求频率"}},  # noqa: RUF001
        (COOLDOWN, DEFAULT_COOLDOWN_S),
    ),
    (
        "zai 1113",
        "zai",
        429,
        {},
        {
            "error": {
                "code": "1113",
                "message": "Insufficient balance or no resource package. Please recharge.",
            }
        },
        (EXHAUSTED, CREDIT_RECHECK_S),
    ),
    (
        "cohere trial month",
        "cohere",
        429,
        {},
        {"message": "You are using a Trial key, which is limited to 1000 API calls / month."},
        (EXHAUSTED, TO_APRIL),
    ),
    ("openai plain 429 (paid)", "openai", 429, {"retry-after": "20"}, _OPENAI_429, None),
    ("openai 429, no body", "openai", 429, {}, b"", None),
    (
        "deepseek 402 (paid)",
        "deepseek",
        402,
        {},
        {"error": {"message": "Insufficient Balance", "type": "unknown_error", "param": None, "code": None}},
        None,
    ),
    ("groq 500", "groq", 500, {}, {"error": {"message": "per day"}}, None),
]


@pytest.mark.parametrize(
    ("preset", "status", "headers", "body", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in VERBATIM if case[0] != "openrouter_free per day"],
)
def test_verbatim_refusals(
    preset: str, status: int, headers: dict[str, str], body: Any, expected: tuple[str, float] | None
) -> None:
    found = classify(preset, status, headers, _json(body), NOW)
    if expected is None:
        assert found is None
        return
    assert found is not None
    assert found.kind == expected[0]
    assert found.seconds == pytest.approx(expected[1], abs=1e-6)


def test_verbatim_openrouter_per_day_reset_in_ms() -> None:
    reset = datetime(2026, 9, 8, tzinfo=UTC)  # 1788825600000 ms
    found = classify("openrouter_free", 429, {}, _OR_DAY, reset - timedelta(hours=1))
    assert found is not None
    assert (found.kind, found.account) == (EXHAUSTED, True)
    assert found.seconds == pytest.approx(3600.0)


def test_a_trial_month_rolls_over_the_year() -> None:
    body = orjson.dumps({"message": "You are using a Trial key, which is limited to 1000 API calls / month."})
    found = classify("cohere", 429, {}, body, datetime(2026, 12, 31, 23, 0, tzinfo=UTC))
    assert found is not None
    assert found.kind == EXHAUSTED
    assert found.seconds == pytest.approx(3600.0)


def test_gemini_day_resets_at_pacific_midnight_in_winter_too() -> None:
    winter = datetime(2026, 1, 15, 9, 0, tzinfo=UTC)  # 01:00 PST: midnight is 23 hours away
    found = classify("gemini", 429, {}, orjson.dumps([_GEMINI_NATIVE]), winter)
    assert found is not None
    assert found.kind == EXHAUSTED
    assert found.seconds == pytest.approx(23 * 3600.0)


def test_a_free_account_allowance_becomes_its_daily_request_limit() -> None:
    """The account-wide published daily allowance (OpenRouter :free: 50) is enforced on the account; a
    per-model one (Groq) is not; the config's ``daily_requests`` wins."""
    limits = account_limits(ProviderSettings(name="orf", preset="openrouter_free"))
    assert limits is not None and limits.requests is not None
    assert limits.requests.day == 50
    assert limits.requests_per_minute == 20
    assert account_limits(ProviderSettings(name="g", preset="groq", plan="free")) is None
    mine = account_limits(ProviderSettings(name="m", preset="mistral", plan="free", daily_requests=50))
    assert mine is not None and mine.requests is not None
    assert mine.requests.day == 50


# --- end to end ---------------------------------------------------------------------------------------------

E2E_DAY = ("groq", "gemini", "openrouter_free", "cloudflare", "cohere", "zai", "sambanova")
E2E_MINUTE = ("groq", "gemini", "openrouter_free", "cloudflare", "cohere", "zai", "nvidia_nim", "mistral")
PRICE = "{input: 1, output: 2}"
ENV = {"EMU_FREE_KEY": "sk-emu-free-key", "SLUICE_ADMIN_KEY": ADMIN_KEY}


def _accounts() -> list[tuple[str, str, str]]:
    """Every primary account: (provider name, preset, extra settings)."""
    accounts = [(f"{p}_day", p, "") for p in E2E_DAY]
    accounts += [(f"{p}_solo", p, "") for p in E2E_DAY]
    accounts += [(f"{p}_minute", p, "") for p in E2E_MINUTE]
    accounts += [
        ("nvidia_nim_day", "nvidia_nim", ""),
        ("nvidia_nim_solo", "nvidia_nim", ""),
        ("siliconflow_back", "siliconflow", ""),
        ("allow_fb", "mistral", ", daily_requests: 50"),
        ("allow_solo", "mistral", ", daily_requests: 50"),
    ]
    return accounts


def _config(emu: Emulator, data_dir: Path) -> str:
    """Each account serves the alias of its name (upstream model ``ft-<name>-p``); all but the ``_solo``
    ones fall back to a paid account (``ft-<name>-f``, dearer: ``allow_pricier``)."""
    paid = emu.base_url("openai")
    providers = [f"  - {{name: paid, preset: openai, base_url: '{paid}', api_key: env:EMU_FREE_KEY}}\n"]
    models = []
    for name, preset, extra in _accounts():
        providers.append(
            f"  - {{name: {name}, preset: {preset}, base_url: '{emu.base_url(preset)}', "
            f"api_key: env:EMU_FREE_KEY, plan: free{extra}}}\n"
        )
        deps = f"      - {{provider: {name}, model: ft-{name}-p}}\n"
        if not name.endswith("_solo"):
            deps += f"      - {{provider: paid, model: ft-{name}-f, price: {PRICE}, allow_pricier: true}}\n"
        models.append(f"  - name: {name}\n    deployments:\n{deps}")
    return (
        f"server: {{data_dir: {data_dir}, key_cache_ttl_s: 0.2}}\n"
        "providers:\n"
        + "".join(providers)
        + "models:\n"
        + "".join(models)
        + "routing: {backoff_base_ms: 10, "
        "retry_after_max_s: 1, retry_budget_min: 100}\n"
    )


class Served:
    """The emulator and a Sluice over it."""

    def __init__(self, emu: Emulator, server: ServerThread, app: SluiceAPI) -> None:
        self.emu = emu
        self.server = server
        self.app = app
        self.client = openai.OpenAI(base_url=server.base_url, api_key=ADMIN_KEY, max_retries=0, timeout=20)

    def chat(self, alias: str) -> Any:
        """A non-stream chat call, with the raw response (for its headers)."""
        return self.client.chat.completions.with_raw_response.create(
            model=alias, messages=[{"role": "user", "content": "hello"}], max_tokens=20
        )

    def served_by(self, alias: str) -> tuple[str, str, str]:
        raw = self.chat(alias)
        assert raw.parse().choices[0].message.content
        h = raw.headers
        return h["x-sluice-provider"], h["x-sluice-model"], h["x-sluice-attempts"]

    def refused(self, alias: str) -> openai.APIStatusError:
        with pytest.raises(openai.APIStatusError) as exc:
            self.chat(alias)
        return exc.value

    def calls(self, upstream_model: str) -> int:
        return self.emu.by_model.get(upstream_model, 0)

    def state(self, name: str) -> DeploymentState:
        """The primary deployment's health (the gateway's loop clock is ``time.monotonic``)."""
        return self.app.gateway.health.states[f"{name}/ft-{name}-p"]


@pytest.fixture(scope="module")
def served(emulator: Emulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data_dir = tmp_path_factory.mktemp("free-tiers")
    config = parse_config(_config(emulator, data_dir), environ=ENV).config
    app = create_app(config, ENV)
    with ServerThread(app) as server:
        s = Served(emulator, server, app)
        yield s
        s.client.close()


def _expected_hold(preset: str) -> float:
    """How long a spent day holds a preset's deployment out, from now."""
    now = datetime.now(UTC)
    return {
        "groq": 578.016,
        "gemini": _until_midnight(now, "America/Los_Angeles"),
        "openrouter_free": _until_midnight(now),
        "cloudflare": _until_midnight(now),
        "cohere": _until_next_month(now),
        "zai": CREDIT_RECHECK_S,
        "sambanova": _until_midnight(now),
    }[preset]


@pytest.mark.parametrize("preset", E2E_DAY)
def test_a_spent_day_falls_back_and_keeps_away_until_the_reset(served: Served, preset: str) -> None:
    name = f"{preset}_day"
    primary, fallback = f"ft-{name}-p", f"ft-{name}-f"
    served.emu.set_model_faults(primary, "quota=day")
    try:
        assert served.served_by(name) == ("paid", fallback, "2")
        assert served.calls(primary) == 1
        st = served.state(name)
        assert st.out_until - time.monotonic() == pytest.approx(_expected_hold(preset), abs=5)
        assert st.out_reason
        # out until the reset: the next requests go straight to the fallback, the provider is not called
        for _ in range(2):
            assert served.served_by(name) == ("paid", fallback, "1")
        assert served.calls(primary) == 1
        assert served.calls(fallback) == 3
    finally:
        served.emu.set_model_faults(primary, None)
    assert served.served_by(name) == ("paid", fallback, "1")  # recovered upstream, still held out
    assert served.calls(primary) == 1


@pytest.mark.parametrize("preset", E2E_DAY)
def test_a_spent_day_without_a_fallback_is_refused_without_calling(served: Served, preset: str) -> None:
    name = f"{preset}_solo"
    primary = f"ft-{name}-p"
    served.emu.set_model_faults(primary, "quota=day")
    try:
        first = served.refused(name)
        assert served.calls(primary) == 1
        second = served.refused(name)
        assert served.calls(primary) == 1  # held out: nothing sent
    finally:
        served.emu.set_model_faults(primary, None)
    expected = _expected_hold(preset)
    for err in (first, second):
        assert err.status_code == 429
        assert isinstance(err, openai.RateLimitError)
        assert err.code == "provider_quota_exhausted"
        envelope = err.response.json()["error"]
        assert set(envelope) == {"message", "type", "param", "code"}
        assert envelope["type"] == "rate_limit_error"
        assert int(err.response.headers["retry-after"]) == pytest.approx(expected, abs=5)
    third = served.refused(name)  # the provider would serve again, but its quota is spent until the reset
    assert third.code == "provider_quota_exhausted"
    assert served.calls(primary) == 1


@pytest.mark.parametrize("preset", E2E_MINUTE)
def test_a_slow_down_falls_back_and_cools_the_primary(served: Served, preset: str) -> None:
    name = f"{preset}_minute"
    primary, fallback = f"ft-{name}-p", f"ft-{name}-f"
    served.emu.set_model_faults(primary, "quota=minute")
    try:
        assert served.served_by(name) == ("paid", fallback, "2")
        st = served.state(name)
        assert st.out_until == 0.0  # not held out until a reset: only cooling
        assert st.cool_until - time.monotonic() == pytest.approx(MINUTE[preset][0], abs=1)
        assert served.served_by(name) == ("paid", fallback, "1")  # cooling: others first
        assert served.calls(primary) == 1
    finally:
        served.emu.set_model_faults(primary, None)


def test_a_cooled_primary_serves_again_once_the_cooldown_is_over(served: Served) -> None:
    name = "siliconflow_back"  # its "slow down" carries retry-after: 2
    primary, fallback = f"ft-{name}-p", f"ft-{name}-f"
    served.emu.set_model_faults(primary, "quota=minute")
    try:
        assert served.served_by(name) == ("paid", fallback, "2")
        assert served.served_by(name) == ("paid", fallback, "1")
        assert served.calls(primary) == 1
    finally:
        served.emu.set_model_faults(primary, None)
    left = served.state(name).cool_until - time.monotonic()
    assert left <= 2.0
    time.sleep(max(left, 0.0) + 0.05)
    assert served.served_by(name) == (name, primary, "1")
    assert served.calls(primary) == 2


def test_a_tier_without_a_day_signal_is_never_held_out(served: Served) -> None:
    """NVIDIA's 429 says nothing of a day: even when its day is spent (``quota=day``) the deployment only
    cools down — with a fallback, others serve meanwhile; alone, every request still reaches it, and the
    client gets the provider's rate limit, not ``provider_quota_exhausted``."""
    name, solo = "nvidia_nim_day", "nvidia_nim_solo"
    primary, fallback, alone = f"ft-{name}-p", f"ft-{name}-f", f"ft-{solo}-p"
    served.emu.set_model_faults(primary, "quota=day")
    served.emu.set_model_faults(alone, "quota=day")
    try:
        assert served.served_by(name) == ("paid", fallback, "2")
        assert served.state(name).out_until == 0.0
        assert served.state(name).cool_until > time.monotonic()
        for n in (1, 2):
            err = served.refused(solo)
            assert err.status_code == 429
            assert err.code == "rate_limit_exceeded"
            assert served.calls(alone) == n  # sent each time
        assert served.state(solo).out_until == 0.0
    finally:
        served.emu.set_model_faults(primary, None)
        served.emu.set_model_faults(alone, None)


def test_a_free_daily_allowance_then_the_fallback(served: Served) -> None:
    """Issue acceptance: ``plan: free, daily_requests: 50``: 50 served by the free account, the 51st by
    the fallback without the free account being called."""
    name = "allow_fb"
    primary, fallback = f"ft-{name}-p", f"ft-{name}-f"
    for _ in range(50):
        assert served.served_by(name) == (name, primary, "1")
    assert served.served_by(name) == ("paid", fallback, "1")
    assert served.calls(primary) == 50
    assert served.calls(fallback) == 1


def test_a_free_daily_allowance_without_a_fallback_is_refused(served: Served) -> None:
    name = "allow_solo"
    primary = f"ft-{name}-p"
    for _ in range(50):
        assert served.served_by(name) == (name, primary, "1")
    for _ in range(2):
        err = served.refused(name)
        assert err.status_code == 429
        envelope = err.response.json()["error"]
        assert set(envelope) == {"message", "type", "param", "code"}
        assert err.code == "budget_exceeded"
        assert err.response.headers["x-sluice-limit-scope"] == f"provider:{name}"
    assert served.calls(primary) == 50
