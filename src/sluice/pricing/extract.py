"""genai-prices' bundled data → ``PriceSheet`` values. The only module that imports genai-prices.

The serving process does not import this module: the library and its data cost ~12–23 MB per worker.
``sluice.pricebook`` runs it once in a short-lived subprocess (``python -m sluice.pricing.extract``,
JSON in and out) and caches the result per genai-prices version; tests import it directly.
Pure apart from that ``__main__``: the library's data is bundled, nothing is fetched.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from datetime import UTC, date, datetime, time
from decimal import Decimal
from importlib.metadata import version
from typing import Any

import holidays
import orjson
from genai_prices import data_snapshot
from genai_prices.types import ModelPrice, StartDateConstraint, TieredPrices, TimeOfDateConstraint

from sluice.pricing.cost import GENAI_PROVIDER
from sluice.pricing.sheet import Band, Period, PriceSheet, Rates

SOURCE = f"genai-prices {version('genai-prices')}"
# genai-prices price key → our rate field.
_KEYS = {
    "input_mtok": "input",
    "output_mtok": "output",
    "cache_read_mtok": "cache_read",
    "cache_write_mtok": "cache_write",
    "cache_write_1h_mtok": "cache_write_1h",
    "web_searches_kcount": "web_search",
    "input_audio_mtok": "input_audio",
    "output_audio_mtok": "output_audio",
    "input_image_mtok": "input_image",
}
HOLIDAY_YEARS = 3  # public holidays known from last year to the year after next (resolved at startup)


def _utc(t: time) -> time:
    """A time of day as naive UTC (genai-prices' naive times are UTC)."""
    if t.tzinfo is None:
        return t
    return datetime.combine(datetime(1970, 1, 1, tzinfo=UTC).date(), t).astimezone(UTC).time()


def _bands(price: ModelPrice) -> tuple[tuple[Band, ...], tuple[str, ...]]:
    values = {k: v for k, v in vars(price).items() if not k.startswith("_") and v is not None}
    unmodelled = tuple(sorted(k for k in values if k not in _KEYS))
    starts = sorted({t.start for v in values.values() if isinstance(v, TieredPrices) for t in v.tiers})
    bands: list[Band] = []
    for above in (-1, *starts):
        rates: dict[str, Decimal] = {}
        for key, field in _KEYS.items():
            value = values.get(key)
            if isinstance(value, TieredPrices):
                chosen = value.base
                for tier in value.tiers:
                    if above >= tier.start:  # a request with more than `above` input is past this tier
                        chosen = tier.price
                rates[field] = chosen
            elif isinstance(value, Decimal):
                rates[field] = value
        rates.setdefault("input", Decimal(0))
        rates.setdefault("output", Decimal(0))
        bands.append(Band(above, Rates(**rates)))
    return tuple(bands), unmodelled


def sheet_for(preset: str, model: str) -> PriceSheet | None:
    """The bundled prices for ``model`` on ``preset``, or None when genai-prices does not know it."""
    provider_id = GENAI_PROVIDER.get(preset)
    if provider_id is None:
        return None
    try:
        _, info = data_snapshot.get_snapshot().find_provider_model(model, None, provider_id, None)
    except LookupError:
        return None
    raw = info.prices
    conditional = [(None, raw)] if isinstance(raw, ModelPrice) else [(c.constraint, c.prices) for c in raw]
    periods: list[Period] = []
    unmodelled: set[str] = set()
    for constraint, price in conditional:
        bands, extra = _bands(price)
        unmodelled.update(extra)
        if isinstance(constraint, StartDateConstraint):
            periods.append(Period(bands, since=constraint.start_date))
        elif isinstance(constraint, TimeOfDateConstraint):
            window = (_utc(constraint.start_time), _utc(constraint.end_time))
            periods.append(Period(bands, window=window))
        else:
            periods.append(Period(bands))
    deepseek = preset == "deepseek"
    return PriceSheet(
        SOURCE,
        tuple(periods),
        deepseek,
        tuple(sorted(unmodelled)),
        _china_holidays() if deepseek else frozenset(),
    )


def _china_holidays() -> frozenset[date]:
    """Chinese public holidays (the ``holidays`` package), on which DeepSeek bills off-peak all day."""
    this_year = datetime.now(UTC).year
    return frozenset(holidays.country_holidays("CN", years=range(this_year - 1, this_year + HOLIDAY_YEARS)))


def sheets_for(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """JSON-ready sheets keyed ``preset/model`` (null where genai-prices has no price)."""
    out: dict[str, Any] = {}
    for preset, model in pairs:
        sheet = sheet_for(preset, model)
        out[f"{preset}/{model}"] = sheet.to_json() if sheet is not None else None
    return out


def main() -> None:
    """stdin: a JSON list of ``[preset, model]`` pairs; stdout: ``{"source": …, "sheets": {…}}``."""
    pairs = [(str(p), str(m)) for p, m in orjson.loads(sys.stdin.buffer.read())]
    sys.stdout.buffer.write(orjson.dumps({"source": SOURCE, "sheets": sheets_for(pairs)}))


if __name__ == "__main__":
    main()
