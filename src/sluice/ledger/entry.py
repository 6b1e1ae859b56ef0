"""One ledger row: what a request was, who made it, what it used and what it cost. Pure.

The row is opened at admission (``status='pending'``, written only if the request is still running at
the next group commit) and settled once, whatever happens: success, provider error, a stream cut,
a client gone. A row still pending long after every deadline is marked ``interrupted`` (the process died).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from sluice.pricing.cost import Pricer
from sluice.pricing.usage import TokenUsage

if TYPE_CHECKING:
    from sluice.limits.counters import Hold
    from sluice.limits.spec import Scope

# Statuses a settled row can have.
OK, ERROR, CUT, DISCONNECTED, REFUSED, PENDING, INTERRUPTED = (
    "ok",
    "error",
    "cut",
    "disconnected",
    "refused",
    "pending",
    "interrupted",
)

TOKEN_COLUMNS = (
    "input_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "output_tokens",
    "reasoning_tokens",
    "input_audio_tokens",
    "output_audio_tokens",
    "input_image_tokens",
    "web_searches",
)
# The ledger table's columns, in the order ``Entry.row()`` produces them (both SQL backends use this).
COLUMNS = (
    "request_id",
    "ts_us",
    "key_id",
    "user_id",
    "team",
    "feature",
    "tags",
    "endpoint",
    "alias",
    "provider",
    "model",
    "stream",
    "status",
    "http_status",
    "error_code",
    *TOKEN_COLUMNS,
    "cost_nanos",
    "price_source",
    "at_ceiling",
    "usage_estimated",
    "client_disconnected",
    "latency_us",
    "ttft_us",
    "attempts",
    "reserved_nanos",
    "reserved_input_tokens",
    "reserved_output_tokens",
    "cache_hit",
    "saved_nanos",
)


NO_USAGE = TokenUsage()  # shared: a TokenUsage is never changed once built


@dataclass(slots=True)
class Attempt:
    """An upstream call that failed before another took over (the last call is the entry's own)."""

    provider: str
    model: str
    http_status: int  # the provider's status (0: no answer)
    error_code: str | None
    latency_us: int
    cost_nanos: int = 0  # what the provider may have billed for it (0: it did not)

    def as_dict(self, status: str) -> dict[str, Any]:
        """The attempt as the ledger's ``attempts`` column lists it."""
        return _attempt(
            self.provider,
            self.model,
            status,
            self.http_status,
            self.error_code,
            self.latency_us,
            self.cost_nanos,
        )


def _attempt(
    provider: str, model: str, status: str, http: int, code: str | None, latency_us: int, cost: int
) -> dict[str, Any]:
    return {
        "provider": provider,
        "model": model,
        "status": status,
        "http_status": http,
        "error_code": code,
        "latency_us": latency_us or None,
        "cost_nanos": cost,
    }


@dataclass(slots=True)
class Entry:
    """A request as the ledger records it (mutated by the request's own task only)."""

    request_id: str
    ts_us: int  # when the request arrived, unix microseconds
    endpoint: str  # "chat" or "embeddings"
    alias: str
    stream: bool = False
    key_id: str | None = None
    user: str | None = None
    team: str | None = None
    feature: str | None = None
    tags: dict[str, str] | None = None
    provider: str = ""
    model: str = ""
    status: str = PENDING
    http_status: int = 0
    error_code: str | None = None
    # replaced (never changed) when the request's usage is known: the empty one is shared, not built per row
    usage: TokenUsage = field(default_factory=lambda: NO_USAGE)
    cost_nanos: int = 0
    price_source: str = ""
    at_ceiling: bool = False
    usage_estimated: bool = False
    client_disconnected: bool = False
    latency_us: int | None = None
    ttft_us: int | None = None
    # the worst case reserved on the request's budgets at admission (a row left pending by a crash is
    # settled at these amounts)
    reserved_nanos: int = 0
    reserved_input_tokens: int = 0
    reserved_output_tokens: int = 0
    cache_hit: bool = False  # answered from the response cache: nothing was sent, nothing charged
    saved_nanos: int = 0  # what the cached answer cost when it was made (a hit's saving)
    # --- not stored: what settlement needs to know ---------------------------------------------------
    started_ns: int = 0  # perf_counter_ns() at arrival
    input_estimate: int = 0  # prompt tokens guessed from the body size, for requests that never finish
    pricer: Pricer | None = None  # set when a deployment is chosen: the request may reach a provider
    upstream_status: int = 0  # the provider's HTTP status (0: no answer)
    upstream_us: int = 0  # time spent waiting for the provider's answer (or a stream's first substance)
    body_bytes: int = 0  # the request body's size: its prompt tokens are reserved from it
    scopes: tuple[Scope, ...] = ()  # the budgets it counts in (with limits), known at the edge
    output_cap: int = 0  # the most output tokens the provider may produce (the request's cap or ours)
    hold: Hold | None = None  # the reservation on those budgets, settled with the entry
    provider_hold: Hold | None = None  # the reservation on the serving provider account's limits
    attempts: list[Attempt] | None = None  # upstream calls that failed before this one (fallback)
    prior_nanos: int = 0  # what those may have cost (in ``cost_nanos`` once settled)

    @property
    def settled(self) -> bool:
        """True once the request's final state is recorded (an entry never changes after that)."""
        return self.status != PENDING

    def row(self) -> tuple[Any, ...]:
        """The values for ``COLUMNS`` (a snapshot: later changes to the entry do not alter it)."""
        u = self.usage
        return (
            self.request_id,
            self.ts_us,
            self.key_id,
            self.user,
            self.team,
            self.feature,
            orjson.dumps(self.tags).decode() if self.tags else None,
            self.endpoint,
            self.alias,
            self.provider,
            self.model,
            self.stream,
            self.status,
            self.http_status,
            self.error_code,
            u.input_tokens,
            u.cache_read_tokens,
            u.cache_write_tokens,
            u.cache_write_1h_tokens,
            u.output_tokens,
            u.output_reasoning_tokens,
            u.input_audio_tokens,
            u.output_audio_tokens,
            u.input_image_tokens,
            u.web_searches,
            self.cost_nanos,
            self.price_source,
            self.at_ceiling,
            self.usage_estimated,
            self.client_disconnected,
            self.latency_us,
            self.ttft_us,
            self._attempts_json(),
            self.reserved_nanos,
            self.reserved_input_tokens,
            self.reserved_output_tokens,
            self.cache_hit,
            self.saved_nanos,
        )

    @property
    def attempt_count(self) -> int:
        """Upstream calls made so far (0: none yet)."""
        return (len(self.attempts) if self.attempts else 0) + (1 if self.provider else 0)

    def _attempts_json(self) -> str | None:
        """The upstream calls made, in order, built by the ledger's writer."""
        if not self.provider or not self.settled:
            return None
        last = _attempt(
            self.provider,
            self.model,
            self.status,
            self.upstream_status,
            self.error_code,
            self.upstream_us,
            self.cost_nanos - self.prior_nanos,
        )
        if not self.attempts:  # the common case
            return orjson.dumps((last,)).decode()
        return orjson.dumps([*(a.as_dict("failed") for a in self.attempts), last]).decode()


def wall_clock_us() -> int:
    """Now by this machine's clock, in unix microseconds."""
    return time.time_ns() // 1000


def from_us(us: int) -> datetime:
    """Unix microseconds → an aware UTC datetime (integer arithmetic, exact)."""
    seconds, micros = divmod(us, 1_000_000)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=micros)


def usd_text(nanos: int) -> str:
    """Integer nano-dollars as a plain decimal string of USD, e.g. 150000 → ``0.00015`` (no float)."""
    sign = "-" if nanos < 0 else ""
    whole, frac = divmod(-nanos if sign else nanos, 1_000_000_000)
    if not frac:
        return f"{sign}{whole}.0"
    return f"{sign}{whole}.{frac:09d}".rstrip("0")  # a non-zero fraction: the strip stops inside it


def usd_short(nanos: int) -> str:
    """The same without a trailing ``.0``: ``0``, ``5``, ``0.00015`` (reports, where whole dollars read
    better bare)."""
    text = usd_text(nanos)
    return text[:-2] if text.endswith(".0") else text
