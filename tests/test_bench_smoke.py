"""The benchmark harness cannot rot: a tiny run of each comparison script (seconds, not minutes).

The real runs (``./scripts/bench``) are not part of the suite; these only check that the scripts still
start their servers, measure, and write the table, the JSON lines and the chart. LiteLLM is not installed
here: ``vs_litellm.py --against bare`` puts the bare proxy in its place.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(180)


def _run(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, f"bench/{script}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert done.returncode == 0, f"{script} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_vs_litellm_smoke_writes_table_json_and_chart(tmp_path: Path) -> None:
    out = _run("vs_litellm.py", "--smoke", "--against", "bare", "--out", str(tmp_path))
    [jsonl] = tmp_path.glob("litellm-*.jsonl")
    summary = json.loads(jsonl.read_text().splitlines()[-1])
    assert summary["rival"] == "bare"
    for name in ("direct", "sluice", "sluice_open", "bare"):
        assert summary["medians"][name]["c64_rps"] > 0, name
    assert summary["medians"]["sluice"]["c64_cpu_us"] > 0
    assert {t["key"] for t in summary["targets"]} == {
        "c64_rps",
        "added_p50_us",
        "stream_cpu_us",
        "rss_mb",
        "start_s",
    }
    assert jsonl.with_suffix(".png").stat().st_size > 10_000
    table = jsonl.with_suffix(".md").read_text()
    assert "| c=64 req/s |" in table and "Sluice (budgets + ledger)" in table
    assert "| c=64 req/s |" in out
    # a second run compared with the first: each ratio gets a verdict
    again = _run(
        "vs_litellm.py", "--smoke", "--against", "bare", "--out", str(tmp_path / "2"), "--compare", str(jsonl)
    )
    assert "Reproduction against" in again and "| non-stream req/s at c=64" in again


def test_budget_accuracy_smoke_holds_the_cap(tmp_path: Path) -> None:
    out = _run(
        "budget_accuracy.py", "--sluice-only", "--requests", "40", "--cap", "0.03", "--out", str(tmp_path)
    )
    [path] = tmp_path.glob("budget-accuracy-*.json")
    sluice = json.loads(path.read_text())["results"]["sluice"]
    assert sluice["overshoot"] == "0.000000"
    assert sluice["missing"] == "0"
    assert 0 < sluice["served"] < 40
    assert "| sluice |" in out


def test_scaling_smoke_measures_and_checks_the_books(tmp_path: Path) -> None:
    out = _run("scaling.py", "--smoke", "--out", str(tmp_path))
    [jsonl] = tmp_path.glob("scaling-*.jsonl")
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert lines[-1]["kind"] == "summary"
    assert "OK" in out
