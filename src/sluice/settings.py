"""Typed settings: every setting declared once, with its default, its environment variable and its help.

``docs/config.md`` is generated from these models (``sluice config docs``) and a test keeps it in sync.
Environment variables (where a field names one) override the file.
"""

from __future__ import annotations

import os
from datetime import date
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sluice.providers.presets import PRESET_NAMES

MIB = 1024 * 1024
DEFAULT_MAX_BODY_BYTES = 16 * MIB
MAX_BODY_BYTES_CEILING = 32 * MIB


def setting(default: Any, help_text: str, env: str | None = None, **kw: Any) -> Any:
    """Declare a setting: default, help, and the environment variable that overrides it (if any)."""
    extra: dict[str, Any] | None = {"env": env} if env else None
    return Field(default, description=help_text, json_schema_extra=extra, **kw)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Strict):
    """How the gateway listens and where it keeps its state."""

    host: str = setting("127.0.0.1", "Interface to listen on.", "SLUICE_HOST")
    port: int = setting(4000, "TCP port to listen on.", "SLUICE_PORT", ge=0, le=65535)
    workers: int = setting(1, "Worker processes (each a full gateway).", "SLUICE_WORKERS", ge=1, le=64)
    data_dir: str = setting(
        ".sluice",
        "Directory for the SQLite store and the server secret, relative to the working directory.",
        "SLUICE_DATA_DIR",
    )
    max_body_bytes: int = setting(
        DEFAULT_MAX_BODY_BYTES,
        "Largest request body accepted, in bytes; larger bodies get 413. At most 32 MiB.",
        "SLUICE_MAX_BODY_BYTES",
        ge=1024,
        le=MAX_BODY_BYTES_CEILING,
    )
    key_cache_ttl_s: float = setting(
        5.0,
        "Seconds a virtual key lookup is cached in memory; bounds how long a revoked key keeps working.",
        "SLUICE_KEY_CACHE_TTL_S",
        ge=0,
        le=300,
    )
    log_level: Literal["debug", "info", "warning", "error"] = setting(
        "info", "Log level.", "SLUICE_LOG_LEVEL"
    )
    access_log: bool = setting(False, "Log one line per request (costs throughput).", "SLUICE_ACCESS_LOG")
    store: Literal["sqlite", "postgres"] = setting(
        "sqlite",
        "Where the ledger lives: the embedded SQLite file in data_dir, or PostgreSQL (`database_url`).",
        "SLUICE_STORE",
    )
    database_url: str | None = setting(
        None,
        "PostgreSQL URL for `store: postgres`, as a secret reference (`env:NAME`) or a literal URL.",
        "SLUICE_DATABASE_URL",
    )
    ledger_flush_ms: int = setting(
        50,
        "Group commit window for ledger rows, in milliseconds: rows that arrive within it share one write.",
        "SLUICE_LEDGER_FLUSH_MS",
        ge=1,
        le=5000,
    )
    public_metrics: bool = setting(
        False,
        "Serve /metrics without the admin key (for a scraper on a private network).",
        "SLUICE_PUBLIC_METRICS",
    )
    counters: Literal["memory", "redis"] = setting(
        "memory",
        "Where budget and rate-limit counters live: in this process (one worker), or Redis (`redis_url`), "
        "shared by every worker and instance.",
        "SLUICE_COUNTERS",
    )
    redis_url: str | None = setting(
        None,
        "Redis URL for `counters: redis`, as a secret reference (`env:NAME`) or a literal URL.",
        "SLUICE_REDIS_URL",
    )
    bytes_per_token: int = setting(
        2,
        "Prompt tokens are reserved as the request body's size divided by this (a bound: almost every "
        "tokenizer makes at most one token per two bytes of JSON-encoded text).",
        "SLUICE_BYTES_PER_TOKEN",
        ge=1,
        le=8,
    )

    @model_validator(mode="after")
    def _postgres_needs_url(self) -> ServerSettings:
        if self.store == "postgres" and not self.database_url:
            raise ValueError("store: postgres needs database_url (e.g. env:SLUICE_DATABASE_URL)")
        if self.counters == "redis" and not self.redis_url:
            raise ValueError("counters: redis needs redis_url (e.g. env:SLUICE_REDIS_URL)")
        return self


def _cap(help_text: str) -> Any:
    return setting(None, help_text, ge=0, allow_inf_nan=False, max_digits=24)


class PeriodAmounts(_Strict):
    """An amount per period: ever (``total``) and per calendar day, week (from Monday) and month, in UTC."""

    total: Decimal | None = _cap("For all time.")
    month: Decimal | None = _cap("Per calendar month (UTC).")
    week: Decimal | None = _cap("Per ISO week, Monday 00:00 UTC to the next.")
    day: Decimal | None = _cap("Per calendar day (UTC).")


class LimitSettings(_Strict):
    """What one scope may spend and use. Every limit is optional; a request must fit all of them."""

    usd: PeriodAmounts | None = setting(None, "Spend caps in USD (worst case reserved before the call).")
    tokens: PeriodAmounts | None = setting(None, "Token caps (prompt + completion).")
    requests: PeriodAmounts | None = setting(None, "Request count caps.")
    concurrent: int | None = setting(None, "Requests in flight at once.", ge=1)
    requests_per_minute: int | None = setting(
        None, "Requests per minute (window aligned to the minute).", ge=1
    )
    tokens_per_minute: int | None = setting(
        None, "Tokens per minute (worst case reserved, then settled).", ge=1
    )

    @field_validator("tokens", "requests")
    @classmethod
    def _whole(cls, v: PeriodAmounts | None) -> PeriodAmounts | None:
        for amount in (v.total, v.month, v.week, v.day) if v is not None else ():
            if amount is not None and amount != amount.to_integral_value():
                raise ValueError("token and request caps are whole numbers")
        return v


class BudgetSettings(_Strict):
    """Limits on scopes that are not keys: everything, teams, features, and each end user."""

    all: LimitSettings | None = setting(None, "Limits on everything this gateway serves (the global scope).")
    teams: dict[str, LimitSettings] = setting({}, "Limits per team (a key's `team`), shared by its keys.")
    features: dict[str, LimitSettings] = setting({}, "Limits per feature tag.")
    users: LimitSettings | None = setting(
        None,
        "Default quota for each end user of a key that sets no `user_limits` of its own (a user seen for "
        "the first time starts at zero).",
    )


class Timeouts(_Strict):
    """Deadlines for one upstream call, in seconds. Streams are bounded by ``idle`` and ``total``."""

    connect: float = setting(10.0, "Seconds to open a TCP/TLS connection to the provider.", gt=0)
    first_byte: float = setting(
        120.0,
        "Seconds from sending the request to the response headers and a stream's first event (a complete "
        "answer: to its end); past it, the attempt has failed and the request may fall back.",
        gt=0,
    )
    idle: float = setting(
        120.0,
        "Seconds without a data event in a stream; keep-alive comments do not reset it.",
        gt=0,
    )
    total: float = setting(900.0, "Seconds for the whole call, stream included.", gt=0)


class ProviderSettings(_Strict):
    """One provider account: a preset (or ``openai_compatible``), where it lives and how to authenticate."""

    name: str = setting(..., "Unique name, referenced by model deployments.", min_length=1)
    preset: str = setting(..., f"One of: {', '.join(PRESET_NAMES)}.")
    base_url: str | None = setting(None, "Override the preset's base URL (required for openai_compatible).")
    api_key: str | None = setting(
        None, "Secret reference, `env:NAME`. A literal key is refused unless `allow_literal_keys` is true."
    )
    headers: dict[str, str] = setting(
        {}, "Extra headers sent upstream on every request; values may be `env:NAME` references (secrets)."
    )
    max_connections: int = setting(
        1024, "Connection pool size for this provider (concurrent upstream requests).", ge=1, le=100_000
    )
    timeouts: Timeouts = setting(Timeouts(), "Upstream deadlines (see Timeouts).")
    limits: LimitSettings | None = setting(
        None, "Limits on this provider account (e.g. the free credit left, or its requests per minute)."
    )
    anthropic_version: str = setting(
        "2026-10-21",
        "anthropic-version header for the anthropic preset. On 2026-10-21 temperature/top_p are dropped.",
    )
    plan: Literal["paid", "free", "trial"] | None = setting(
        None,
        "The account's plan (default: the preset's, `paid` for most). A `free` account's requests cost $0 "
        "(unless a deployment sets a price) and its published allowances are enforced; `free` and `trial` "
        "accounts are watched by the credit-runway alert and `sluice credits`.",
    )
    credits_usd: Decimal | None = _cap(
        "Credit granted on this account, in USD (the runway alert counts it down; a trial preset's "
        "published credit by default)."
    )
    credits_since: date | None = setting(
        None, "When the credit was granted (spend is counted from this UTC day; default: all recorded spend)."
    )
    daily_requests: int | None = setting(
        None,
        "The plan's daily request allowance (UTC days), enforced: past it the account is passed over "
        "for the next deployment (default: a free preset's published account-wide allowance).",
        ge=1,
    )
    expires: date | None = setting(None, "The day the free or trial plan ends (UTC).")
    key_created: date | None = setting(
        None,
        "When the key in `api_key` was issued: `sluice doctor` flags keys older than "
        "`readiness.max_key_age_days`.",
    )

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, v: str) -> str:
        if v not in PRESET_NAMES:
            raise ValueError(f"unknown preset {v!r}; expected one of {', '.join(PRESET_NAMES)}")
        return v

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https://")
        return v.rstrip("/") if v else v

    @model_validator(mode="after")
    def _compatible_needs_url(self) -> ProviderSettings:
        if self.preset == "openai_compatible" and not self.base_url:
            raise ValueError("preset openai_compatible needs a base_url")
        return self


def _usd(help_text: str, default: Any = None) -> Any:
    return setting(default, help_text, ge=0, allow_inf_nan=False, max_digits=24)


class PriceSettings(_Strict):
    """A price in USD per million tokens (web searches: per thousand calls). Unset cache rates default to
    the input rate (DashScope/Qwen: cached input at 40 % of it)."""

    input: Decimal = _usd("USD per million input tokens.", ...)
    output: Decimal = _usd("USD per million output tokens (0 for embeddings).", ...)
    cache_read: Decimal | None = _usd("USD per million cached input tokens read.")
    cache_write: Decimal | None = _usd("USD per million tokens written to the prompt cache (5-minute).")
    cache_write_1h: Decimal | None = _usd("USD per million tokens written to the 1-hour prompt cache.")
    web_search: Decimal | None = _usd("USD per thousand web-search calls.")


class DeploymentSettings(_Strict):
    """Where an alias is served: a provider and the model name that provider uses."""

    provider: str = setting(..., "Name of a provider declared under `providers`.")
    model: str = setting(..., "Model name as the provider knows it.", min_length=1)
    max_output_tokens: int = setting(
        4096,
        "Output cap injected when a request sets none (so the worst case is bounded); also Anthropic's "
        "required max_tokens.",
        ge=1,
    )
    price: PriceSettings | Literal[0] | None = setting(
        None,
        "Price for this deployment, overriding genai-prices' bundled data. `price: 0` means free, "
        "explicitly; a model with no price at all is refused unless it has a ceiling.",
    )
    ceiling: PriceSettings | None = setting(
        None,
        "Charged (and flagged in the ledger) when no price is known for the model, instead of refusing it.",
    )
    weight: int = setting(
        1, "Share of traffic under the `weighted` strategy (0: only as a fallback).", ge=0, le=1_000_000
    )
    allow_pricier: bool = setting(
        False,
        "Let this deployment serve as a fallback even when it costs more than `max_price_ratio` times the "
        "request's first choice.",
    )


class ModelSettings(_Strict):
    """A public model name (alias) and the deployments that serve it, in order."""

    name: str = setting(..., "Public model name clients send as `model`.", min_length=1)
    mode: Literal["chat", "embedding"] = setting("chat", "What the model does: chat or embedding.")
    deployments: list[DeploymentSettings] = setting(
        ...,
        "Deployments that serve the alias; the strategy orders them per request, later ones are fallbacks.",
        min_length=1,
    )
    strategy: Literal["priority", "weighted", "lowest-latency", "lowest-cost"] = setting(
        "priority",
        "Which deployment a request tries first: `priority` (the listed order), `weighted` (drawn by "
        "`weight`), `lowest-latency` (measured), or `lowest-cost` (this request's worst case).",
    )
    max_price_ratio: Decimal | None = setting(
        None,
        "Skip a fallback whose worst case for the request costs more than this times the first choice's "
        "(unless the deployment sets `allow_pricier`); unset: `routing.max_price_ratio`.",
        ge=1,
        allow_inf_nan=False,
    )


class RoutingSettings(_Strict):
    """Retries, fallback, ejection of failing deployments, and the streaming commit window."""

    retries: int = setting(
        2, "Extra upstream attempts one request may make (fallbacks, key rotation, retries).", ge=0, le=10
    )
    retry_budget_ratio: float = setting(
        0.2,
        "Retries (fallbacks and key rotations included) at most this share of the requests: of those in "
        "flight, and of those in the last 10 to 20 seconds.",
        ge=0,
        le=1,
    )
    retry_budget_min: int = setting(
        3, "Retries always allowed on top of the ratio (in flight, and per 10-second window).", ge=0
    )
    backoff_base_ms: float = setting(
        50, "First backoff before retrying a deployment already tried (doubles, full jitter).", ge=0
    )
    backoff_max_ms: float = setting(2000, "Longest backoff between two attempts.", ge=0)
    retry_after_max_s: float = setting(
        10,
        "A provider's retry-after is honoured up to this many seconds before retrying it; longer: the "
        "deployment is not retried by this request.",
        ge=0,
    )
    eject_after: int = setting(
        5,
        "Consecutive failures (timeouts, connect errors, 5xx, 429) that eject a deployment.",
        ge=1,
    )
    eject_base_s: float = setting(5, "First ejection's length; each failed half-open probe doubles it.", gt=0)
    eject_max_s: float = setting(300, "Longest ejection.", gt=0)
    max_ejected_share: float = setting(
        0.5,
        "At most this share of an alias's deployments ejected at once (at least one of two or more; an "
        "alias with one deployment is never ejected).",
        ge=0,
        le=1,
    )
    max_price_ratio: Decimal = setting(
        Decimal(2),
        "Default for every alias: a fallback costing more than this times the first choice is skipped.",
        ge=1,
        allow_inf_nan=False,
    )
    stream_commit_s: float = setting(
        10,
        "A stream that fails before its first content within this many seconds falls back invisibly; "
        "after it (or after the first content) the answer is committed and a failure is an SSE error.",
        ge=0,
    )


ALERT_RULES = ("threshold", "projected_overspend", "spend_anomaly", "credit_runway", "provider_health")
AlertRule = Literal["threshold", "projected_overspend", "spend_anomaly", "credit_runway", "provider_health"]


class ChannelSettings(_Strict):
    """Where alerts are sent: a generic webhook (JSON, HMAC-signed), a Slack incoming webhook, or email over
    SMTP. Secrets (`secret`, `password`, and a Slack `url`, which is one) are `env:NAME` references."""

    name: str = setting(..., "Unique name (`sluice alerts test NAME`).", min_length=1, pattern=r"^[\w.-]+$")
    type: Literal["webhook", "slack", "email"] = setting(..., "webhook, slack or email.")
    url: str | None = setting(None, "webhook and slack: where to POST (may be an `env:NAME` reference).")
    secret: str | None = setting(None, "webhook: the HMAC-SHA256 signing secret, `env:NAME`.")
    rules: list[AlertRule] | None = setting(None, "Which rules this channel receives (default: all).")
    scopes: list[str] = setting(
        [], "Only alerts about these scopes (glob patterns on the scope id, e.g. `key:*`, `team:search`)."
    )
    min_threshold: int = setting(0, "Threshold alerts below this percent are not sent here.", ge=0, le=100)
    host: str | None = setting(None, "email: SMTP server host.")
    port: int | None = setting(None, "email: SMTP port (default 587 for starttls, 465 for tls, 25).")
    security: Literal["starttls", "tls", "none"] = setting(
        "starttls", "email: STARTTLS upgrade, implicit TLS, or none (a trusted local relay only)."
    )
    username: str | None = setting(None, "email: SMTP login (`env:NAME` or literal).")
    password: str | None = setting(None, "email: SMTP password, `env:NAME`.")
    ca_file: str | None = setting(
        None, "email: a CA bundle to trust for the server's certificate (a private relay)."
    )
    sender: str | None = setting(None, "email: the From address.")
    to: list[str] = setting([], "email: recipients.")
    timeout_s: float = setting(10.0, "Seconds one delivery attempt may take.", gt=0, le=120)

    @model_validator(mode="after")
    def _complete(self) -> ChannelSettings:
        if self.type in ("webhook", "slack"):
            if not self.url:
                raise ValueError(f"a {self.type} channel needs url")
            if not self.url.startswith(("http://", "https://", "env:")):
                raise ValueError("url must start with http:// or https:// (or be an env:NAME reference)")
        if self.type == "webhook" and not self.secret:
            raise ValueError("a webhook channel needs secret (env:NAME): receivers verify the signature")
        if self.type == "email" and not (self.host and self.sender and self.to):
            raise ValueError("an email channel needs host, sender and to")
        for name in ("secret", "password"):
            value = getattr(self, name)
            if value is not None and not value.startswith("env:"):
                raise ValueError(f"{name} must be an env:NAME reference, not a literal")
        for name in ("url", "secret", "username", "password"):
            if getattr(self, name) == "env:":
                raise ValueError(f"{name}: env: reference names no variable")
        return self


def _percentages(v: list[int] | None) -> list[int] | None:
    if v is not None and any(not 1 <= t <= 100 for t in v):
        raise ValueError("thresholds are percentages from 1 to 100")
    return sorted(set(v)) if v is not None else None


class AlertRuleSettings(_Strict):
    """Alerts for one scope (or scopes matching a pattern), overriding the gateway-wide ones: set in
    `alerts.scopes` or, per key, team or any scope, through `PUT /admin/alert-rules/{scope}`."""

    thresholds: list[int] | None = setting(
        None, "Threshold percentages for this scope (default: the global ones)."
    )
    rules: list[AlertRule] | None = setting(None, "Which rules apply to this scope (default: all that run).")
    channels: list[str] | None = setting(
        None, "Send this scope's alerts to exactly these channels (default: every channel that wants them)."
    )

    _check_thresholds = field_validator("thresholds")(_percentages)


class AlertSettings(_Strict):
    """Alerts before the bill (see docs/alerts.md): rules over the budgets' counters and the ledger, sent
    to channels, deduplicated, logged and retried."""

    rules: list[AlertRule] = setting(list(ALERT_RULES), "Which rules run.")
    thresholds: list[int] = setting(
        [50, 80, 95, 100], "Percent of a cap at which the threshold alert fires (once per period)."
    )
    projected_min_elapsed_pct: int = setting(
        5, "Projected overspend waits until this share of the period has passed.", ge=0, le=100
    )
    anomaly_factor: int = setting(
        5, "Spend anomaly: the last window above this many times the baseline.", ge=2
    )
    anomaly_min_usd: Decimal = setting(
        Decimal(1), "Spend anomaly: ignore a window that spent less than this (USD).", ge=0, max_digits=24
    )
    anomaly_window_s: int = setting(3600, "Spend anomaly: the window compared (an hour).", ge=1)
    anomaly_baseline_windows: int = setting(
        24, "Spend anomaly: how many windows before it make the baseline.", ge=1
    )
    runway_warn_days: int = setting(
        7, "Credit runway: warn when credit or plan ends within this many days.", ge=0
    )
    runway_requests_pct: int = setting(
        80, "Credit runway: warn when this share of the daily request allowance is used.", ge=1, le=100
    )
    fallback_share_pct: int = setting(
        50,
        "Provider health: warn when fallbacks serve more than this share of an alias's requests.",
        ge=1,
        le=100,
    )
    fallback_min_requests: int = setting(
        20, "Provider health: requests in the window before the share counts.", ge=1
    )
    health_window_s: int = setting(
        300,
        "Provider health: the window of the fallback share, and the bucket that deduplicates health alerts.",
        ge=1,
    )
    evaluate_every_s: float = setting(
        60.0, "How often the ledger rules (anomaly, runway, fallback share) run.", gt=0
    )
    settle_delay_s: float = setting(
        0.2,
        "Counter rules (thresholds, projection) run this long after a settlement, in batches.",
        ge=0,
        le=60,
    )
    attempts: int = setting(
        5, "Delivery attempts per alert and channel before it is recorded failed.", ge=1, le=20
    )
    backoff_base_s: float = setting(
        1.0, "Wait before the second attempt; doubled each time (jittered).", gt=0
    )
    backoff_max_s: float = setting(60.0, "Longest wait between attempts.", gt=0)
    balance_poll_s: float = setting(
        600.0,
        "How often the providers' balance endpoints (OpenRouter's key, DeepSeek's balance) are asked, for "
        "the credit-runway alert.",
        ge=10,
    )
    resume_after_s: float = setting(
        600.0,
        "A delivery left pending this long (its instance stopped mid-retry) is taken over and finished by "
        "another instance, or by this one after a restart.",
        gt=0,
    )
    channels: list[ChannelSettings] = setting([], "Channels (see ChannelSettings).")
    scopes: dict[str, AlertRuleSettings] = setting(
        {},
        "Overrides per scope id (`key:ID`, `team:NAME`, `feature:NAME`, `provider:NAME`, `all`, …) or glob "
        "pattern (`team:*`); an exact id wins over a pattern, and the admin API's over the file's.",
    )

    _check_thresholds = field_validator("thresholds")(_percentages)

    @model_validator(mode="after")
    def _unique_channels(self) -> AlertSettings:
        seen: set[str] = set()
        for channel in self.channels:
            if channel.name in seen:
                raise ValueError(f"duplicate channel name {channel.name!r}")
            seen.add(channel.name)
        for scope, rule in self.scopes.items():
            unknown = sorted(set(rule.channels or ()) - seen)
            if unknown:
                raise ValueError(f"alerts.scopes[{scope!r}] names unknown channel(s): {', '.join(unknown)}")
        return self


class EmulatorSettings(_Strict):
    """The built-in provider emulator (used by the demo, `sluice emulate` and tests)."""

    host: str = setting("127.0.0.1", "Interface for `sluice emulate`.", "SLUICE_EMULATOR_HOST")
    port: int = setting(4010, "Port for `sluice emulate`.", "SLUICE_EMULATOR_PORT", ge=0, le=65535)
    faults: str = setting(
        "", "Fault spec applied to every request, e.g. `latency_ms=50 status=429` (see docs/emulator.md)."
    )
    model_faults: dict[str, str] = setting({}, "Fault spec per upstream model name.")


class CanarySettings(_Strict):
    """A light smoke run (a completion and a stream per deployment) inside the server, on a schedule; a
    failure or a drift from the previous canary raises the provider-health alert."""

    every_s: float | None = setting(None, "Seconds between canaries (off unless set).", ge=60)
    deployments: list[str] = setting(
        [], "Which deployments: aliases, providers or `provider/model`, globs allowed (default: all)."
    )
    max_usd: Decimal = setting(Decimal("0.01"), "Spend cap of each canary run, in USD.", ge=0, max_digits=24)


class SmokeSettings(_Strict):
    """``sluice smoke`` and ``POST /admin/smoke``: what a deployment must do to pass."""

    max_usd: Decimal = setting(
        Decimal("0.05"),
        "Spend cap of a whole run, in USD (reserved like any request's).",
        ge=0,
        max_digits=24,
    )
    max_latency_ms: float = setting(10_000.0, "A complete answer slower than this fails.", gt=0)
    max_ttft_ms: float = setting(5_000.0, "A stream whose first token comes later than this fails.", gt=0)
    timeout_s: float = setting(60.0, "Deadline of each call.", gt=0)
    slower_factor: float = setting(
        1.5, "`--compare` reports a latency more than this many times the previous run's.", gt=1
    )
    keep_runs: int = setting(200, "Runs kept in the store (older ones are deleted).", ge=1)
    canary: CanarySettings = setting(CanarySettings(), "Scheduled light runs (see CanarySettings).")


CacheMode = Literal["auto", "always", "off"]


class CacheSettings(_Strict):
    """The response cache: exact-match, per tenant. A request opts in or out with the `x-sluice-cache`
    header (`use`, `skip`, `refresh`, and `ttl=SECONDS`)."""

    mode: CacheMode = setting(
        "auto",
        "`auto`: chat requests with `temperature: 0`, and embeddings, are cached; `always`: every chat "
        "request too; `off`: only requests that send `x-sluice-cache: use`.",
    )
    backend: Literal["memory", "sqlite", "redis"] = setting(
        "memory",
        "`memory` (this process, bounded by `max_bytes`), `sqlite` (the data directory's cache.db) or "
        "`redis` (`server.redis_url`, shared by every instance).",
    )
    scope: Literal["key", "team", "global"] = setting(
        "key",
        "Who shares entries: each virtual key (default), each team (keys without a team keep their own), or "
        "everyone (`global`: only for a gateway serving one tenant).",
    )
    ttl_s: int = setting(3600, "How long an entry is served, in seconds (a request may ask for less).", ge=1)
    max_bytes: int = setting(64 * 1024 * 1024, "The memory backend's size, in bytes (LRU).", ge=1024)
    max_entry_bytes: int = setting(4 * 1024 * 1024, "Larger answers are not cached.", ge=1024)
    tool_calls: bool = setting(
        False, "Cache answers that call tools (else only with `x-sluice-cache: use, tools`)."
    )
    aliases: dict[str, CacheMode] = setting({}, "The mode per model alias (overrides `mode`).")
    keys: dict[str, CacheMode] = setting({}, "The mode per virtual key name (overrides the alias's).")


class ReadinessSettings(_Strict):
    """What `sluice doctor` and `GET /admin/readiness` accept."""

    max_key_age_days: int = setting(90, "Provider keys older than this must be rotated.", ge=1)
    max_smoke_age_days: int = setting(7, "A green smoke run older than this is a warning.", ge=1)


class Config(_Strict):
    """The whole configuration file."""

    server: ServerSettings = setting(ServerSettings(), "Listening and state (see ServerSettings).")
    providers: list[ProviderSettings] = setting([], "Provider accounts.")
    models: list[ModelSettings] = setting([], "Public model aliases.")
    budgets: BudgetSettings = setting(BudgetSettings(), "Budgets and quotas (see BudgetSettings).")
    routing: RoutingSettings = setting(RoutingSettings(), "Retries and fallback (see RoutingSettings).")
    allow_literal_keys: bool = setting(
        False, "Allow provider keys written literally in the file (a warning is logged)."
    )
    alerts: AlertSettings = setting(AlertSettings(), "Alerts (see AlertSettings).")
    smoke: SmokeSettings = setting(SmokeSettings(), "Smoke tests and canaries (see SmokeSettings).")
    cache: CacheSettings = setting(CacheSettings(), "The response cache (see CacheSettings).")
    readiness: ReadinessSettings = setting(
        ReadinessSettings(), "The readiness checklist (see ReadinessSettings)."
    )
    emulator: EmulatorSettings = setting(EmulatorSettings(), "Emulator settings (see EmulatorSettings).")


SECTIONS: tuple[type[BaseModel], ...] = (
    Config,
    ServerSettings,
    ProviderSettings,
    Timeouts,
    ModelSettings,
    DeploymentSettings,
    PriceSettings,
    BudgetSettings,
    LimitSettings,
    PeriodAmounts,
    RoutingSettings,
    AlertSettings,
    AlertRuleSettings,
    ChannelSettings,
    EmulatorSettings,
)


def env_overrides(model: type[BaseModel], environ: dict[str, str] | None = None) -> dict[str, str]:
    """Values for ``model``'s fields taken from their environment variables."""
    env = os.environ if environ is None else environ
    out: dict[str, str] = {}
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra
        var = extra.get("env") if isinstance(extra, dict) else None
        if isinstance(var, str) and var in env:
            out[name] = env[var]
    return out
