"""Resolve the bundled prices for the configured deployments, once, outside the serving process.

genai-prices and its data cost a worker ~12–23 MB of memory for the whole of its life; the sheets for the
handful of configured models are a few kilobytes. So they are extracted by a short-lived subprocess
(``python -m sluice.pricing.extract``) and cached in the data directory, keyed by the genai-prices
version and the set of models: a restart with the same config reads one small JSON file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
from collections.abc import Iterable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import orjson

from sluice.errors import ConfigError
from sluice.pricing.cost import GENAI_PROVIDER
from sluice.pricing.sheet import PriceSheet

log = logging.getLogger("sluice.prices")
Sheets = dict[tuple[str, str], PriceSheet | None]
EXTRACT_TIMEOUT_S = 120


def load_sheets(pairs: Iterable[tuple[str, str]], cache_dir: Path | None) -> Sheets:
    """Sheets for ``(preset, model)`` pairs (None where genai-prices has no price)."""
    wanted = sorted({(p, m) for p, m in pairs if p in GENAI_PROVIDER})
    if not wanted:
        return {}
    raw: dict[str, Any]
    if cache_dir is None:
        raw = _extract(wanted)
    else:
        tag = hashlib.sha256(orjson.dumps([version("genai-prices"), wanted])).hexdigest()[:16]
        path = cache_dir / "prices" / f"sheets-{tag}.json"
        try:
            raw = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            raw = _extract(wanted)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(orjson.dumps(raw))
            tmp.replace(path)  # atomic: a concurrent worker reads the old file or the new one
    sheets = raw["sheets"]
    return {
        (p, m): PriceSheet.from_json(sheets[f"{p}/{m}"]) if sheets.get(f"{p}/{m}") else None
        for p, m in wanted
    }


def _extract(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    try:
        done = subprocess.run(
            [sys.executable, "-m", "sluice.pricing.extract"],
            input=orjson.dumps(pairs),
            capture_output=True,
            timeout=EXTRACT_TIMEOUT_S,
            check=True,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        raise ConfigError(
            f"could not read genai-prices' bundled prices: {exc} {detail.decode()[-500:]}"
        ) from exc
    result: dict[str, Any] = orjson.loads(done.stdout)
    return result
