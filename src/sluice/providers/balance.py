"""Provider balance endpoints: where to ask, and what the answer says. Pure.

- OpenRouter ``GET /key`` (under the ``/api/v1`` base): the key's credit limit and usage, and for a free
  tier ``free_model_daily_requests {used, limit, remaining}`` (the UTC day).
- DeepSeek ``GET /user/balance``: ``balance_infos[] {currency, total_balance, granted_balance,
  topped_up_balance}`` as strings; ``is_available`` false when nothing is left.
Amounts become ``Decimal`` from their text, never through a float.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

PATHS = {"openrouter": "/key", "deepseek": "/user/balance"}


@dataclass(frozen=True, slots=True)
class Balance:
    """What the provider says is left (each part None when it does not say)."""

    remaining_usd: Decimal | None = None
    currency: str = "USD"
    requests_used: int | None = None  # today's free-model requests (OpenRouter)
    requests_limit: int | None = None
    available: bool = True


def _decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return Decimal(str(value)) if isinstance(value, (int, float, str)) else None
    except InvalidOperation:
        return None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse(kind: str, raw: bytes) -> Balance | None:
    """The balance in a provider's answer (None: not an answer we understand)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict):
        return None
    if kind == "openrouter":
        data = body.get("data")
        if not isinstance(data, dict):
            return None
        daily = data.get("free_model_daily_requests")
        daily = daily if isinstance(daily, dict) else {}
        return Balance(
            remaining_usd=_decimal(data.get("limit_remaining")),
            requests_used=_int(daily.get("used")),
            requests_limit=_int(daily.get("limit")),
        )
    if kind == "deepseek":
        infos = body.get("balance_infos")
        if not isinstance(infos, list) or not infos or not isinstance(infos[0], dict):
            return None
        usd = [i for i in infos if isinstance(i, dict) and i.get("currency") == "USD"]
        info = usd[0] if usd else infos[0]
        return Balance(
            remaining_usd=_decimal(info.get("total_balance")),
            currency=str(info.get("currency") or "USD"),
            available=body.get("is_available") is not False,
        )
    return None
