"""Money is Decimal or integer nano-dollars: no float may appear in the money path's code."""

from __future__ import annotations

import re
from pathlib import Path

MONEY_PACKAGES = ("pricing", "ledger", "limits")
FLOAT_USE = re.compile(r"\bfloat\(|:\s*float\b|->\s*float\b|\bfloat\s*\|")


def test_no_float_in_the_money_path() -> None:
    root = Path(__file__).resolve().parents[2] / "src" / "sluice"
    offenders = [
        f"{path.relative_to(root)}:{n}: {line.strip()}"
        for package in MONEY_PACKAGES
        for path in sorted((root / package).rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), start=1)
        if FLOAT_USE.search(line.split("#", 1)[0])
    ]
    assert not offenders, "float in the money path:\n" + "\n".join(offenders)
