"""Acceptance of ``sluice smoke``: every check on every configured deployment, against the emulator.

The command runs in-process through click's ``CliRunner`` (and once as a real process, for the HTML
report), with a config whose providers point at an emulator running in a thread of this process. Faults
are set per upstream model, so each test uses model names of its own. The ledger is read back through
``sluice spend`` grouped by the run's ``smoke_run`` tag.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner, Result

from sluice.cli.main import main
from sluice.emulator import Emulator, openai_dialect, running_emulator
from sluice.emulator.faults import Faults
from sluice.emulator.http import Incoming, Plan
from sluice.smoke.report import Check, DeploymentReport, RunReport, compare

ENV = {"EMU_SMOKE_KEY": "sk-emu-smoke-0001", "EMU_REVOKED_KEY": "sk-revoked-smoke-0002"}
FEATURE = "sluice-smoke"
CHAT_CHECKS = [
    "models",
    "complete",
    "stream",
    "stream_usage",
    "json_mode",
    "tool_call",
    "error_shape",
    "rate_limit_headers",
    "pricing",
]
EMBED_CHECKS = ["models", "embed", "error_shape", "pricing"]
# The checks that make a paid call (stream_usage reads the stream's; pricing the answers').
CALL_CHECKS = frozenset({"complete", "stream", "json_mode", "tool_call", "error_shape", "embed"})
REGRESSIONS = frozenset({"stopped_working", "slower", "shape_changed"})
PRICE = "{input: 0.15, output: 0.6}"  # for the emulator-only model names (USD per million)
CHROMIUM = "/usr/bin/chromium"


@dataclass(frozen=True)
class Dep:
    """One alias with one deployment."""

    alias: str
    provider: str  # a preset name, also the provider's name
    model: str
    mode: str = "chat"
    price: str | None = None


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    """An emulator of this module's own: its faults and extra models touch no other test."""
    with running_emulator() as emulator:
        yield emulator


def write_config(
    tmp_path: Path, emu: Emulator, deps: Sequence[Dep], *, smoke: str = "", key_env: str = "EMU_SMOKE_KEY"
) -> Path:
    """A config file with a provider per preset used (pointed at the emulator) and an alias per dep."""
    lines = ["server:", f"  data_dir: {tmp_path / 'data'}", "providers:"]
    lines.extend(
        f"  - {{name: {provider}, preset: {provider}, base_url: '{emu.base_url(provider)}', "
        f"api_key: 'env:{key_env}'}}"
        for provider in dict.fromkeys(d.provider for d in deps)
    )
    lines.append("models:")
    for d in deps:
        price = f", price: {d.price}" if d.price else ""
        lines.append(
            f"  - {{name: {d.alias}, mode: {d.mode}, "
            f"deployments: [{{provider: {d.provider}, model: '{d.model}'{price}}}]}}"
        )
    if smoke:
        lines.append(f"smoke: {smoke}")
    path = tmp_path / "sluice.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def cli(config: Path, *args: str) -> Result:
    """``sluice smoke --config CONFIG ARGS…`` in-process; an exception other than exit is a failure."""
    result = CliRunner().invoke(main, ["smoke", "--config", str(config), *args], env=ENV)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"sluice smoke crashed: {result.exception!r}") from result.exception
    return result


def run_json(config: Path, *args: str, code: int) -> dict[str, Any]:
    """``sluice smoke --json`` with the exit status expected; the run as JSON."""
    result = cli(config, "--json", *args)
    assert result.exit_code == code, (result.exit_code, result.stdout[-3000:], result.stderr[-3000:])
    out: dict[str, Any] = orjson.loads(result.stdout)
    assert out["object"] == "smoke.run"
    return out


def deployment(run: dict[str, Any], dep_id: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [d for d in run["deployments"] if d["id"] == dep_id]
    assert len(found) == 1, [d["id"] for d in run["deployments"]]
    return found[0]


def checks_of(dep: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in dep["checks"]}


def statuses(dep: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["status"] for c in dep["checks"]}


def failed(dep: dict[str, Any]) -> set[str]:
    return {c["name"] for c in dep["checks"] if c["status"] == "fail"}


def nanos(usd: str) -> int:
    return int(Decimal(usd).scaleb(9))


def ledger_groups(config: Path, run_id: str) -> list[dict[str, Any]]:
    """The run's ledger rows (tag ``smoke_run``), grouped by feature and status, via ``sluice spend``."""
    result = CliRunner().invoke(
        main,
        ["spend", "--by", "feature,status,tag:smoke_run", "--format", "json", "--config", str(config)],
        env=ENV,
    )
    assert result.exit_code == 0, result.output
    groups: list[dict[str, Any]] = orjson.loads(result.stdout)["groups"]
    return [g for g in groups if g["tag:smoke_run"] == run_id]


# --- 1. every check on every dialect ----------------------------------------------------------------

PROVIDERS = [
    Dep("oa-chat", "openai", "gpt-4o-mini"),
    Dep("ds-chat", "deepseek", "deepseek-flash"),
    Dep("claude-chat", "anthropic", "claude-sonnet-5"),
    Dep("or-chat", "openrouter", "qwen/qwen-plus"),
    Dep("gem-chat", "gemini", "gemini-2.5-flash"),
    Dep("groq-chat", "groq", "llama-3.3-70b-versatile"),
    Dep("oa-embed", "openai", "text-embedding-3-small", mode="embedding"),
]
ERROR_SHAPE = {"anthropic": "anthropic", "gemini": "array"}  # the others: OpenAI's envelope


def test_every_check_runs_on_every_dialect_and_the_ledger_holds_the_run(
    emu: Emulator, tmp_path: Path
) -> None:
    config = write_config(tmp_path, emu, PROVIDERS)
    run = run_json(config, code=0)
    assert run["ok"] is True
    assert [d["id"] for d in run["deployments"]] == [f"{d.provider}/{d.model}" for d in PROVIDERS]
    for spec in PROVIDERS:
        dep = deployment(run, f"{spec.provider}/{spec.model}")
        assert dep["alias"] == spec.alias and dep["mode"] == spec.mode
        expected = EMBED_CHECKS if spec.mode == "embedding" else CHAT_CHECKS
        assert [c["name"] for c in dep["checks"]] == expected, dep["id"]
        assert set(statuses(dep).values()) <= {"pass", "warn"}, (dep["id"], dep["checks"])
        assert dep["status"] in ("pass", "warn")
        assert dep["cost_nanos"] > 0 and dep["input_tokens"] > 0, dep["id"]
        found = checks_of(dep)
        assert found["models"]["status"] == "pass", found["models"]  # key valid, model listed
        shape = found["error_shape"]["data"]
        assert shape["status_code"] == 400, (dep["id"], found["error_shape"])
        assert shape["shape"] == ERROR_SHAPE.get(spec.provider, "openai"), (dep["id"], shape)
        assert found["pricing"]["status"] in ("pass", "warn")
        if spec.mode == "embedding":
            assert found["embed"]["status"] == "pass"
            continue
        assert dep["output_tokens"] > 0
        for name in ("complete", "stream", "stream_usage", "json_mode", "tool_call"):
            assert found[name]["status"] == "pass", (dep["id"], found[name])
        stream = found["stream"]["data"]
        assert stream["ttft_ms"] >= 0 and stream["tokens_per_s"] > 0, (dep["id"], stream)
        assert found["stream_usage"]["data"] == {"reported": True}
        assert found["tool_call"]["data"] == {"round_trip": True}
        headers = found["rate_limit_headers"]
        if spec.provider == "groq":  # the emulator's Groq sends x-ratelimit-*
            assert headers["status"] == "pass", headers
            assert any(h.startswith("x-ratelimit-") for h in headers["data"]["headers"])
        else:
            assert headers["status"] == "warn", (dep["id"], headers)

    cap = nanos(run["cap_usd"])
    assert cap == 50_000_000  # smoke.max_usd's default, $0.05
    assert 0 < run["cost_nanos"] <= cap
    assert run["cost_nanos"] == sum(d["cost_nanos"] for d in run["deployments"])
    assert Decimal(run["cost_usd"]) == Decimal(run["cost_nanos"]).scaleb(-9)

    rows = ledger_groups(config, run["id"])
    assert rows, "no ledger row carries the run's smoke_run tag"
    assert {g["feature"] for g in rows} == {FEATURE}
    assert {g["status"] for g in rows} <= {"ok", "error"}  # every row settled (error: the bad requests)
    assert sum(g["cost_nanos"] for g in rows) == run["cost_nanos"]
    # a row per call: complete, stream, JSON mode, tool call and result, bad request; embed, bad request
    chats = sum(d.mode == "chat" for d in PROVIDERS)
    assert sum(g["requests"] for g in rows) == 6 * chats + 2 * (len(PROVIDERS) - chats)
    by_status = {g["status"]: g["requests"] for g in rows}
    assert by_status.get("error") == len(PROVIDERS)  # exactly the deliberately bad requests


# --- 2. faults ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "smoke", "args", "broken", "says"),
    [
        ("no_usage=1", "", (), {"stream_usage"}, "no usage in the stream"),
        ("bad_json=1", "", (), {"json_mode"}, "not JSON"),
        ("raw_error=1", "", (), {"error_shape"}, "not OpenAI's error envelope"),
        (
            "latency_ms=600",
            "{max_latency_ms: 300, max_ttft_ms: 300}",
            ("--light",),
            {"complete", "stream"},
            "(limit 300)",
        ),
        ("ttft_ms=600", "{max_latency_ms: 300, max_ttft_ms: 300}", ("--light",), {"stream"}, "(limit 300)"),
    ],
    ids=["no-usage", "bad-json", "raw-error", "slow-answer", "slow-first-token"],
)
def test_a_provider_fault_fails_its_check(
    emu: Emulator,
    tmp_path: Path,
    fault: str,
    smoke: str,
    args: tuple[str, ...],
    broken: set[str],
    says: str,
) -> None:
    name = fault.partition("=")[0].replace("_", "-")
    sick, well = f"smoke-fault-{name}", f"smoke-fault-{name}-healthy"
    emu.extra_models.extend([sick, well])
    emu.set_model_faults(sick, fault)
    deps = [Dep("sick", "openai", sick, price=PRICE), Dep("well", "openai", well, price=PRICE)]
    config = write_config(tmp_path, emu, deps, smoke=smoke)
    try:
        run = run_json(config, "--no-store", *args, code=1)
    finally:
        emu.set_model_faults(sick, None)
    assert run["ok"] is False
    dep = deployment(run, f"openai/{sick}")
    assert failed(dep) == broken, dep["checks"]
    assert dep["status"] == "fail"
    for check in broken:
        assert says in checks_of(dep)[check]["detail"], checks_of(dep)[check]
    healthy = deployment(run, f"openai/{well}")  # faults are per model: the other deployment is fine
    assert failed(healthy) == set(), healthy["checks"]
    if "--light" in args:
        assert run["light"] is True
        assert [c["name"] for c in dep["checks"]] == ["complete", "stream", "stream_usage"]
    if fault == "raw_error=1":
        assert checks_of(dep)["error_shape"]["data"] == {"status_code": 400, "shape": "other"}


# --- 3. --compare -------------------------------------------------------------------------------------


def test_compare_reports_what_stopped_working_and_what_got_slower(emu: Emulator, tmp_path: Path) -> None:
    broken, slow = "smoke-cmp-broken", "smoke-cmp-slow"
    emu.extra_models.extend([broken, slow])
    deps = [Dep("cmp-a", "openai", broken, price=PRICE), Dep("cmp-b", "openai", slow, price=PRICE)]
    config = write_config(tmp_path, emu, deps)

    first = cli(config)  # the table, stored in the history
    assert first.exit_code == 0, first.output
    title = re.search(r"Smoke run (smoke_[0-9a-f]+)", first.stdout)
    assert title is not None, first.stdout
    assert "pass · spent $" in first.stdout and "models" in first.stdout

    same = run_json(config, "--compare", code=0)  # nothing changed
    assert same["compared_with"] == title.group(1)
    assert not [d for d in same["drift"] if d["kind"] in REGRESSIONS], same["drift"]

    emu.set_model_faults(slow, "latency_ms=250")
    try:
        slower = run_json(config, "--compare", "--no-store", code=1)  # a regression alone fails
    finally:
        emu.set_model_faults(slow, None)
    assert slower["ok"] is True  # every check still passes within the limits
    assert slower["compared_with"] == same["id"]
    kinds = {(d["deployment"], d["check"], d["kind"]) for d in slower["drift"]}
    assert (f"openai/{slow}", "complete", "slower") in kinds, slower["drift"]
    assert {k for _dep, _check, k in kinds} == {"slower"}, slower["drift"]
    assert all(d["deployment"] == f"openai/{slow}" for d in slower["drift"])

    emu.set_model_faults(broken, "no_usage=1 bad_json=1 raw_error=1")
    emu.set_model_faults(slow, "latency_ms=250")
    report = tmp_path / "drift.html"
    try:
        worse = run_json(config, "--compare", "--html", str(report), code=1)
    finally:
        emu.set_model_faults(broken, None)
        emu.set_model_faults(slow, None)
    assert worse["compared_with"] == same["id"]  # the --no-store run is not in the history
    drift = {(d["deployment"], d["check"], d["kind"]) for d in worse["drift"]}
    for check in ("stream_usage", "json_mode", "error_shape"):
        assert (f"openai/{broken}", check, "stopped_working") in drift, worse["drift"]
    assert (f"openai/{broken}", "error_shape", "shape_changed") in drift  # openai → other
    assert (f"openai/{slow}", "complete", "slower") in drift
    assert (f"openai/{slow}", "stream", "slower") in drift
    assert not any(d["kind"] in ("new", "gone", "recovered") for d in worse["drift"])
    page = report.read_text()
    assert 'id="drift"' in page and "stopped_working" in page and "slower" in page

    table = cli(config, "--compare", "--no-store")  # healthy again: recovered, as a table
    assert "Drift from the previous run" in table.stdout and "recovered" in table.stdout
    assert "pass · spent $" in table.stdout
    # (its exit status is 1, not 0: see test_a_recovered_error_shape_is_not_a_regression)


def test_a_recovered_error_shape_is_not_a_regression() -> None:
    def run(status: str, shape: str) -> RunReport:
        out = RunReport("smoke_x", 1)
        dep = DeploymentReport("openai/m", "a", "openai", "openai", "m", "chat")
        dep.checks.append(Check("error_shape", status, "", {"status_code": 400, "shape": shape}))
        out.deployments.append(dep)
        return out

    drift = compare(run("fail", "other"), run("pass", "openai"))
    assert [d.kind for d in drift] == ["recovered"], drift


# --- 4. the cap ----------------------------------------------------------------------------------------


def test_a_run_never_spends_past_its_cap(emu: Emulator, tmp_path: Path) -> None:
    chat, embed = "smoke-capped", "text-embedding-3-small"
    emu.extra_models.append(chat)
    deps = [
        Dep("capped", "openai", chat, price=PRICE),
        Dep("capped-embed", "openai", embed, mode="embedding"),
    ]
    config = write_config(tmp_path, emu, deps)

    full = run_json(config, "capped", "--no-store", code=0)
    cap = 50_000  # $0.00005
    assert full["cost_nanos"] > cap  # all its calls cost more than the cap allows

    run = run_json(config, "capped", "--max-usd", "0.00005", "--no-store", code=0)
    assert nanos(run["cap_usd"]) == cap
    assert 0 < run["cost_nanos"] <= cap
    dep = deployment(run, f"openai/{chat}")
    found = checks_of(dep)
    assert found["complete"]["status"] == "pass"  # what fits is run
    skipped = [n for n in CALL_CHECKS if n in found and found[n]["status"] == "skip"]
    assert skipped, dep["checks"]
    for name in skipped:
        detail = found[name]["detail"]
        assert detail.startswith("not run:") and "cap has no room" in detail and "$0.00005" in detail, detail
    assert not failed(dep)
    rows = ledger_groups(config, run["id"])
    assert {g["feature"] for g in rows} == {FEATURE}
    assert sum(g["cost_nanos"] for g in rows) == run["cost_nanos"] <= cap

    before = dict(emu.by_model)
    nothing = run_json(config, "--max-usd", "0", "--no-store", code=0)
    assert nothing["cost_nanos"] == 0 and nanos(nothing["cap_usd"]) == 0
    assert emu.by_model == before  # not one chat or embeddings request reached the provider
    for dep in nothing["deployments"]:
        found = checks_of(dep)
        for name in CALL_CHECKS & found.keys():
            assert found[name]["status"] == "skip" and found[name]["detail"].startswith("not run:"), found
        assert found["pricing"]["status"] == "skip"
        assert found["models"]["status"] == "pass"  # listing the models is free
        assert dep["cost_nanos"] == 0 and dep["input_tokens"] == 0
    assert checks_of(deployment(nothing, f"openai/{chat}"))["stream_usage"]["status"] == "skip"
    assert ledger_groups(config, nothing["id"]) == []


# --- 5. the HTML report ----------------------------------------------------------------------------------


class _Results(HTMLParser):
    """The header cells and the row headers of ``table#results``, and every external reference."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0  # inside table#results
        self.section = ""
        self.cell: list[str] | None = None
        self.columns: list[str] = []
        self.rows: list[str] = []
        self.cells: list[tuple[str, str]] = []  # (data-check, class) of each check cell
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = dict(attrs)
        for name in ("src", "href"):
            value = attr.get(name) or ""
            if re.match(r"\s*(https?:)?//", value):
                self.external.append(value)
        if tag == "table" and (self.depth or attr.get("id") == "results"):
            self.depth += 1
        elif self.depth and tag in ("thead", "tbody"):
            self.section = tag
        elif self.depth and tag == "th":
            self.cell = []
        elif self.depth and tag == "td" and attr.get("data-check"):
            self.cells.append((attr["data-check"] or "", attr.get("class") or ""))
        elif self.cell is not None and tag == "small":  # a row header's alias line is not its name
            self.cell.append("\0")

    def handle_endtag(self, tag: str) -> None:
        if tag == "table" and self.depth:
            self.depth -= 1
        elif tag == "th" and self.cell is not None:
            text = "".join(self.cell).split("\0")[0].strip()
            (self.columns if self.section == "thead" else self.rows).append(text)
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / f"chromium-{len(list(tmp_path.glob('chromium-*')))}"
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_html_report_is_self_contained_and_renders(
    emu: Emulator, tmp_path: Path, record_property: Any
) -> None:
    deps = [PROVIDERS[0], PROVIDERS[2], PROVIDERS[4], PROVIDERS[5], PROVIDERS[6]]
    config = write_config(tmp_path, emu, deps)
    report = tmp_path / "report.html"
    sluice = Path(sys.executable).with_name("sluice")
    done = subprocess.run(
        [str(sluice), "smoke", "--config", str(config), "--json", "--html", str(report)],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ | ENV,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    run = orjson.loads(done.stdout)
    page = report.read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>") and run["id"] in page
    static = _Results()
    static.feed(page)
    assert static.external == []
    assert not re.search(r"<script|<link|@import|url\(", page, re.IGNORECASE)  # nothing fetched
    assert not re.search(r"https?://", page)

    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed")
    dom = _chromium(tmp_path, "--dump-dom", report.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'id="results"' in dom.stdout
    rendered = _Results()
    rendered.feed(dom.stdout)
    ids = [f"{d.provider}/{d.model}" for d in deps]
    assert rendered.rows == ids  # a row per deployment, in order
    for name in (*CHAT_CHECKS, "embed"):
        assert name in rendered.columns, rendered.columns
    expected = {
        (c["name"], c["status"]) for d in run["deployments"] for c in d["checks"]
    }  # each check's cell carries its verdict
    assert set(rendered.cells) == expected
    assert len(rendered.cells) == sum(len(d["checks"]) for d in run["deployments"])

    shot = tmp_path / "smoke-report.png"
    taken = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1600,1000", report.as_uri())
    assert taken.returncode == 0, taken.stderr[-2000:]
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 10_000, len(data)
    artifacts = os.environ.get("SLUICE_TEST_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shot = Path(shutil.copy(shot, Path(artifacts) / shot.name))
    record_property("screenshot", str(shot))
    print(f"smoke report screenshot: {shot}")


# --- 6. bad paths ------------------------------------------------------------------------------------------


def test_bad_invocations_exit_2_with_an_error(emu: Emulator, tmp_path: Path) -> None:
    config = write_config(tmp_path, emu, [PROVIDERS[0]])
    before = emu.requests
    for args, says in [
        (("nothing-like-this*",), "error: no deployment matches nothing-like-this*"),
        (("--max-usd", "-1"), "Invalid value for '--max-usd': '-1' must be an amount from 0"),
    ]:
        result = cli(config, "--json", *args)
        assert result.exit_code == 2, (args, result.output)
        assert says in result.stderr, result.stderr
        assert result.stdout == ""
    assert emu.requests == before  # nothing was called

    unset = CliRunner().invoke(main, ["smoke", "--config", str(config)], env={"EMU_SMOKE_KEY": None})
    assert unset.exit_code == 2 and "EMU_SMOKE_KEY" in unset.stderr, unset.output


@pytest.mark.parametrize("amount", ["abc", "nan", "inf"])
def test_a_max_usd_that_is_not_an_amount_exits_2(emu: Emulator, tmp_path: Path, amount: str) -> None:
    config = write_config(tmp_path, emu, [PROVIDERS[0]])
    result = cli(config, "--json", "--max-usd", amount)
    assert result.exit_code == 2, result.output


class _GetChecksKeys(Emulator):
    """The emulator, refusing a revoked key on ``GET /models`` too (as a real provider does)."""

    def handle(self, incoming: Incoming) -> Plan:
        presented = incoming.headers.get("authorization", "") + incoming.headers.get("x-api-key", "")
        if incoming.method == "GET" and "sk-revoked" in presented:
            return openai_dialect.error_plan("openai", 401, Faults())
        return super().handle(incoming)


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param(Emulator, id="emulator-bad_key"),
        pytest.param(_GetChecksKeys, id="models-refuses-the-key"),
    ],
)
def test_a_key_the_provider_refuses_fails_the_models_check(tmp_path: Path, kind: type[Emulator]) -> None:
    emu = kind(faults="bad_key=sk-revoked")
    emu.start_in_thread()
    try:
        config = write_config(tmp_path, emu, [PROVIDERS[0]], key_env="EMU_REVOKED_KEY")
        calls = cli(config, "--json", "--no-store")
    finally:
        emu.stop_thread()
    assert calls.exit_code == 1, calls.output
    dep = deployment(orjson.loads(calls.stdout), "openai/gpt-4o-mini")
    found = checks_of(dep)
    for name in ("complete", "stream", "json_mode", "tool_call"):  # every call: 401
        assert found[name]["status"] == "fail", found[name]
        assert found[name]["data"]["status_code"] == 401
        assert "refused the gateway's credentials" in found[name]["detail"]
    assert dep["cost_nanos"] == 0
    assert found["models"]["status"] == "fail", found["models"]
    assert "refused the key" in found["models"]["detail"]
    assert found["models"]["data"] == {"status_code": 401}


def test_a_garbled_answer_fails_its_check_without_ending_the_run(emu: Emulator, tmp_path: Path) -> None:
    model = "smoke-garbled"
    emu.extra_models.append(model)
    emu.set_model_faults(model, "garbled=1")
    config = write_config(tmp_path, emu, [Dep("garbled", "anthropic", model, price=PRICE)])
    try:
        result = cli(config, "--json", "--no-store")
    finally:
        emu.set_model_faults(model, None)
    assert result.exit_code == 1
    dep = deployment(orjson.loads(result.stdout), f"anthropic/{model}")
    assert checks_of(dep)["complete"]["status"] == "fail"
