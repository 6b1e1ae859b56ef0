"""A model's price list as plain values: periods (start dates, daily windows) and input-size bands.

Built once at startup (from genai-prices' bundled data or from the config) and evaluated on the hot path
without the library: choosing the period and band is a few comparisons, the charge is ``Rates.usd``.
Pure: no I/O. The JSON form (``to_json``/``from_json``) carries every amount as a decimal string.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from decimal import ROUND_CEILING, Decimal
from typing import Any

from sluice.pricing.usage import TokenUsage

RATE_FIELDS = (
    "input",
    "output",
    "cache_read",
    "cache_write",
    "cache_write_1h",
    "web_search",
    "input_audio",
    "output_audio",
    "input_image",
)


@dataclass(frozen=True, slots=True)
class Rates:
    """USD per million tokens (``web_search``: USD per thousand calls).

    A cache rate left unset is charged at the input rate (or the preset's rule, e.g. Qwen's 40 %). Audio
    and image tokens are parts of the input/output totals: with their own rate they are charged at it and
    taken out of the text count; without one they are charged as text (as genai-prices does).
    """

    input: Decimal
    output: Decimal
    cache_read: Decimal | None = None
    cache_write: Decimal | None = None
    cache_write_1h: Decimal | None = None
    web_search: Decimal | None = None
    input_audio: Decimal | None = None
    output_audio: Decimal | None = None
    input_image: Decimal | None = None
    # The same rates as whole pico-dollars (1e-12 USD) per token, when every one is: then a charge is
    # exact integer arithmetic (most published prices have at most six decimals per million tokens).
    _pico: tuple[int | None, ...] | None = field(default=None, init=False, repr=False, compare=False)
    # The dearest input and output rates (pico-dollars per token when whole, and per million as Decimal).
    _dearest: tuple[int | None, int | None, Decimal, Decimal] = field(
        default=(None, None, Decimal(0), Decimal(0)), init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "_pico", _whole_picos(self))
        ins = (
            self.input,
            self.cache_read,
            self.cache_write,
            self.cache_write_1h,
            self.input_audio,
            self.input_image,
        )
        dearest_in = max(r for r in ins if r is not None)
        dearest_out = max(r for r in (self.output, self.output_audio) if r is not None)
        pico_in, pico_out = dearest_in.scaleb(6), dearest_out.scaleb(6)
        object.__setattr__(
            self,
            "_dearest",
            (
                int(pico_in) if pico_in == pico_in.to_integral_value() else None,
                int(pico_out) if pico_out == pico_out.to_integral_value() else None,
                dearest_in,
                dearest_out,
            ),
        )

    def pico(self, usage: TokenUsage) -> int | None:
        """The exact charge in pico-dollars, or None when a rate is finer than a pico-dollar per token."""
        p = self._pico
        if p is None:
            return None
        rate_in, rate_out, read, write, write_1h, search, audio_in, audio_out, image_in = p
        assert rate_in is not None  # required
        assert rate_out is not None  # required
        text_in = usage.uncached_input_tokens
        text_out = usage.output_tokens
        write_5m = rate_in if write is None else write
        total = (
            usage.cache_read_tokens * (rate_in if read is None else read)
            + (usage.cache_write_tokens - usage.cache_write_1h_tokens) * write_5m
        )
        if usage.cache_write_1h_tokens:
            total += usage.cache_write_1h_tokens * (write_5m if write_1h is None else write_1h)
        if usage.web_searches and search is not None:
            total += usage.web_searches * search
        if audio_in is not None and usage.input_audio_tokens:
            text_in -= usage.input_audio_tokens
            total += usage.input_audio_tokens * audio_in
        if image_in is not None and usage.input_image_tokens:
            text_in -= usage.input_image_tokens
            total += usage.input_image_tokens * image_in
        if audio_out is not None and usage.output_audio_tokens:
            text_out -= usage.output_audio_tokens
            total += usage.output_audio_tokens * audio_out
        return total + max(text_in, 0) * rate_in + max(text_out, 0) * rate_out

    def worst_nanos(self, input_tokens: int, output_tokens: int) -> int:
        """An upper bound, in nano-dollars rounded up, on what ``input_tokens`` in and ``output_tokens`` out
        can cost: every input token at the dearest input class (a cache write costs more than plain
        input; any class may be set dearest in a config), every output token at the dearest output
        class. Web-search fees are not bounded here."""
        pico_in, pico_out, dearest_in, dearest_out = self._dearest
        if pico_in is not None and pico_out is not None:
            return -(-(input_tokens * pico_in + output_tokens * pico_out) // 1000)
        usd = (input_tokens * dearest_in + output_tokens * dearest_out).scaleb(-6)
        return int(usd.scaleb(9).to_integral_value(rounding=ROUND_CEILING))

    def usd(self, usage: TokenUsage) -> Decimal:
        """The exact charge for ``usage`` (embeddings: output is simply 0)."""
        read_rate = self.input if self.cache_read is None else self.cache_read
        write_rate = self.input if self.cache_write is None else self.cache_write
        write_1h_rate = write_rate if self.cache_write_1h is None else self.cache_write_1h
        text_in = usage.uncached_input_tokens
        text_out = usage.output_tokens
        total = (
            usage.cache_read_tokens * read_rate
            + (usage.cache_write_tokens - usage.cache_write_1h_tokens) * write_rate
            + usage.cache_write_1h_tokens * write_1h_rate
        )
        if self.input_audio is not None and usage.input_audio_tokens:
            text_in -= usage.input_audio_tokens
            total += usage.input_audio_tokens * self.input_audio
        if self.input_image is not None and usage.input_image_tokens:
            text_in -= usage.input_image_tokens
            total += usage.input_image_tokens * self.input_image
        if self.output_audio is not None and usage.output_audio_tokens:
            text_out -= usage.output_audio_tokens
            total += usage.output_audio_tokens * self.output_audio
        total += max(text_in, 0) * self.input + max(text_out, 0) * self.output
        if self.web_search is not None and usage.web_searches:
            total += (usage.web_searches * self.web_search).scaleb(3)  # per thousand = 1000 per million
        return total.scaleb(-6)  # per million: an exact exponent shift, whatever the context precision

    def to_json(self) -> dict[str, str]:
        """The set rates as decimal strings."""
        return {n: str(v) for n in RATE_FIELDS if (v := getattr(self, n)) is not None}

    @classmethod
    def from_json(cls, data: dict[str, str]) -> Rates:
        """Inverse of ``to_json``."""
        return cls(**{n: Decimal(v) for n, v in data.items()})


def _whole_picos(rates: Rates) -> tuple[int | None, ...] | None:
    """Each rate in pico-dollars per token (per call for web searches), if all are whole numbers."""
    out: list[int | None] = []
    for name in RATE_FIELDS:
        value: Decimal | None = getattr(rates, name)
        if value is None:
            out.append(None)
            continue
        # USD per million tokens → pico-dollars per token: times 1e6; per thousand calls → per call: 1e9
        scaled = value.scaleb(9 if name == "web_search" else 6)
        if scaled != scaled.to_integral_value():
            return None
        out.append(int(scaled))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Band:
    """Rates that apply to the whole request once its total input exceeds ``above`` tokens."""

    above: int  # -1 for the base band
    rates: Rates


@dataclass(frozen=True, slots=True)
class Period:
    """Prices valid from a date and/or during a daily UTC window; no constraint means always."""

    bands: tuple[Band, ...]  # ascending by ``above``; the first is the base band
    since: date | None = None
    window: tuple[time, time] | None = None  # [start, end) in UTC; end < start wraps midnight

    def active(self, at: datetime, weekday_windows: bool, days_off: frozenset[date]) -> bool:
        """Whether this period's constraint holds at ``at`` (UTC)."""
        if self.since is not None:
            return at.date() >= self.since
        if self.window is not None:
            if weekday_windows and (at.weekday() >= 5 or at.date() in days_off):
                return False
            start, end = self.window
            now = at.time()
            return (now >= start or now < end) if end < start else start <= now < end
        return True

    def rates(self, input_tokens: int) -> Rates:
        """The band for a request of ``input_tokens`` total input."""
        chosen = self.bands[0].rates
        for band in self.bands[1:]:
            if input_tokens > band.above:
                chosen = band.rates
        return chosen


@dataclass(frozen=True, slots=True)
class PriceSheet:
    """One model's prices from one source, e.g. ``genai-prices 0.2.3``."""

    source: str
    periods: tuple[Period, ...]
    # DeepSeek bills its daily windows on working days only (not weekends, not Chinese public holidays);
    # genai-prices' time-of-day rule knows neither.
    weekday_windows: bool = False
    unmodelled: tuple[str, ...] = ()  # price keys in the source this sheet does not apply (pages, hours…)
    days_off: frozenset[date] = frozenset()  # public holidays on which the daily windows do not apply

    def rates(self, at: datetime | int, input_tokens: int) -> Rates:
        """The rates for a request made at ``at`` (a datetime, or unix microseconds) with ``input_tokens``
        total input. As genai-prices does: the last period whose constraint holds wins, else the first.
        """
        if len(self.periods) == 1 and self.periods[0].since is None and self.periods[0].window is None:
            return self.periods[0].rates(input_tokens)  # no time rule: no clock work on the hot path
        if isinstance(at, int):
            at = datetime.fromtimestamp(at // 1_000_000, UTC)
        at = at.astimezone(UTC)
        chosen = self.periods[0]
        for period in reversed(self.periods):
            if period.active(at, self.weekday_windows, self.days_off):
                chosen = period
                break
        return chosen.rates(input_tokens)

    def usd(self, usage: TokenUsage, at: datetime | int) -> Decimal:
        """The exact charge for ``usage`` at ``at``."""
        return self.rates(at, usage.input_tokens).usd(usage)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready form (decimal strings, ISO dates and times)."""
        return {
            "source": self.source,
            "weekday_windows": self.weekday_windows,
            "unmodelled": list(self.unmodelled),
            "days_off": sorted(d.isoformat() for d in self.days_off),
            "periods": [
                {
                    "since": p.since.isoformat() if p.since else None,
                    "window": [p.window[0].isoformat(), p.window[1].isoformat()] if p.window else None,
                    "bands": [{"above": b.above, "rates": b.rates.to_json()} for b in p.bands],
                }
                for p in self.periods
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PriceSheet:
        """Inverse of ``to_json``."""
        periods = tuple(
            Period(
                bands=tuple(Band(int(b["above"]), Rates.from_json(b["rates"])) for b in p["bands"]),
                since=date.fromisoformat(p["since"]) if p["since"] else None,
                window=(time.fromisoformat(p["window"][0]), time.fromisoformat(p["window"][1]))
                if p["window"]
                else None,
            )
            for p in data["periods"]
        )
        return cls(
            source=str(data["source"]),
            periods=periods,
            weekday_windows=bool(data["weekday_windows"]),
            unmodelled=tuple(data["unmodelled"]),
            days_off=frozenset(date.fromisoformat(d) for d in data.get("days_off", ())),
        )
