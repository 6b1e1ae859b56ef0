"""Money is Decimal or integer nano-dollars: no float may appear in the money path's code.

Checked on the syntax tree of every module in the money packages: no float literal, no true division
(``/`` makes a float of two ints; use ``//`` or ``Decimal.scaleb``), no ``float(...)``, no ``float`` in
an annotation.
"""

from __future__ import annotations

import ast
from pathlib import Path

MONEY_PACKAGES = ("pricing", "ledger", "limits")
ROOT = Path(__file__).resolve().parents[2] / "src" / "sluice"


def _offences(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, float):
            found.append(f"{node.lineno}: float literal {node.value!r}")
        elif isinstance(node, ast.BinOp | ast.AugAssign) and isinstance(node.op, ast.Div):
            found.append(f"{node.lineno}: true division")
        elif isinstance(node, ast.Name) and node.id == "float":
            found.append(f"{node.lineno}: float")
    return found


def test_no_float_in_the_money_path() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{offence}"
        for package in MONEY_PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        for offence in _offences(path)
    ]
    assert not offenders, "float in the money path:\n" + "\n".join(offenders)


def test_the_scan_sees_floats(tmp_path: Path) -> None:
    sample = tmp_path / "m.py"
    sample.write_text("x: float = 1.5\ny = 3 / 2\nz = float('1')\n")
    assert len(_offences(sample)) == 4
