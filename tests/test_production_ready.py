"""From prototype to production, checked end to end: ``sluice doctor`` on the demo setup (not ready, with
the fixes) and on examples/production.yaml (all green, and ``GET /admin/readiness`` agrees); ``sluice burn``
pricing a real workload's token mix on every deployment exactly as the pricing engine does; ``sluice
credits`` and ``GET /admin/credits`` counting a free account's day, a trial's credit and a DeepSeek
balance; ``POST /admin/smoke``; and scheduled canaries raising the provider-health alert.

Everything runs against real servers on 127.0.0.1: the provider emulator, a Sluice gateway (uvicorn in a
thread), a webhook receiver, and the real openai SDK.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import orjson
import yaml
from click.testing import CliRunner, Result

from sluice.app import create_app, priced_routes
from sluice.cli.main import main
from sluice.config_file import load_config, parse_config
from sluice.emulator import Emulator
from sluice.ledger.entry import TOKEN_COLUMNS
from sluice.pricing.usage import TokenUsage
from sluice.settings import Config
from sluice.testing import running_emulator
from tests.alert_receivers import WebhookReceiver
from tests.conftest import ADMIN_KEY, ServerThread, admin_call

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "production.yaml"
NANO = Decimal(1_000_000_000)
SMOKE_FEATURE = "sluice-smoke"  # the feature tag of a smoke run's ledger rows


# --- helpers ----------------------------------------------------------------------------------------


def _cli(args: list[str], env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, args, env=env or {})


def _json_lines(result: Result) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in result.stdout.splitlines() if line.strip()]


def _today() -> date:
    return datetime.now(UTC).date()


def _next_utc_midnight() -> str:
    return (_today() + timedelta(days=1)).isoformat() + "T00:00:00Z"


def _nanos(text: str | None) -> int:
    assert text is not None
    value = Decimal(text) * NANO
    assert value == value.to_integral_value(), text  # money in the JSON is exact to the nano-dollar
    return int(value)


def _root(server: ServerThread) -> str:
    return server.base_url.removesuffix("/v1")


def _flush(root: str) -> None:
    """``/admin/spend`` commits what the gateway's ledger writer holds before it reads."""
    status, body, _ = admin_call(root, "GET", "/admin/spend")
    assert status == 200, body


def _ledger(data_dir: Path) -> list[dict[str, Any]]:
    """Every ledger row, read with sqlite3 (not through Sluice)."""
    columns = ("feature", "endpoint", "status", "provider", "ts_us", "cost_nanos", *TOKEN_COLUMNS)
    with contextlib.closing(sqlite3.connect(data_dir / "sluice.db")) as conn:
        got = conn.execute(f"SELECT {', '.join(columns)} FROM ledger").fetchall()  # noqa: S608
    return [dict(zip(columns, r, strict=True)) for r in got]


def _settled(root: str, data_dir: Path, expected: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 15
    while True:
        _flush(root)
        rows = _ledger(data_dir)
        if len(rows) >= expected and all(r["status"] != "pending" for r in rows):
            return rows
        assert time.monotonic() < deadline, f"{len(rows)} rows of {expected}, or some still pending"
        time.sleep(0.05)


def _usage(row: dict[str, Any]) -> TokenUsage:
    """A row's token mix, from the columns by name."""
    t = {c: int(row[c] or 0) for c in TOKEN_COLUMNS}
    return TokenUsage(
        input_tokens=t["input_tokens"],
        cache_read_tokens=t["cache_read_tokens"],
        cache_write_tokens=t["cache_write_tokens"],
        cache_write_1h_tokens=t["cache_write_1h_tokens"],
        output_tokens=t["output_tokens"],
        output_reasoning_tokens=t["reasoning_tokens"],
        input_audio_tokens=t["input_audio_tokens"],
        output_audio_tokens=t["output_audio_tokens"],
        input_image_tokens=t["input_image_tokens"],
        web_searches=t["web_searches"],
    )


def _wait(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _unauthenticated(root: str, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(root + path, data=body, method=method)  # noqa: S310 - 127.0.0.1
    try:
        with urllib.request.urlopen(request, timeout=30) as r:  # noqa: S310
            return r.status, orjson.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, orjson.loads(e.read())


@contextlib.contextmanager
def _gateway(config: Config, env: dict[str, str]) -> Iterator[ServerThread]:
    with ServerThread(create_app(config, env)) as server:
        yield server


def _assert_openai_error(body: Any, param: str) -> None:
    """OpenAI's error envelope: ``{"error": {"message", "type", "param", "code"}}``."""
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert {"message", "type", "param", "code"} <= set(error), error
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert isinstance(error["message"], str) and error["message"]


# --- 1. doctor on the demo setup ---------------------------------------------------------------------


def test_doctor_on_the_demo_setup_lists_what_fails_with_the_fix(tmp_path: Path) -> None:
    result = _cli(["doctor", "--json", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1, result.output
    report = orjson.loads(result.stdout)
    assert report["ready"] is False
    items = {i["name"]: i for i in report["items"]}
    assert list(items) == [
        "provider_keys_server_side",
        "fallbacks",
        "paid_primary",
        "global_cap",
        "key_caps",
        "user_quotas",
        "alerts",
        "cost_logging",
        "key_age",
        "smoke",
    ]
    for name in ("fallbacks", "global_cap", "alerts", "smoke"):
        assert items[name]["status"] == "fail", items[name]
    for item in report["items"]:
        assert item["status"] in ("pass", "warn", "fail")
        assert item["found"]
        if item["status"] != "pass":
            assert item["fix"].strip(), item  # every failure and warning says how to fix it
    assert "budgets.all.usd" in items["global_cap"]["fix"]
    assert "sluice smoke" in items["smoke"]["fix"]
    assert "alerts.channels" in items["alerts"]["fix"]

    table = _cli(["doctor", "--data-dir", str(tmp_path)])
    assert table.exit_code == 1
    assert "not ready" in table.stdout and "global_cap" in table.stdout

    bad = tmp_path / "bad.yaml"
    bad.write_text("providers: [{name: x, preset: nope}]\n")
    broken = _cli(["doctor", "--config", str(bad), "--data-dir", str(tmp_path)])
    assert broken.exit_code == 2, broken.output


# --- 2. doctor on examples/production.yaml ------------------------------------------------------------


def test_the_production_example_is_all_green(tmp_path: Path) -> None:
    with running_emulator() as emu, WebhookReceiver() as hook:
        emu.extra_models = ["gpt-4.1", "text-embedding-v4"]  # the emulator serves any name; now it lists them
        doc = yaml.safe_load(EXAMPLE.read_text())
        doc["server"]["data_dir"] = str(tmp_path / "data")
        env = {
            "SLUICE_ALERT_WEBHOOK_URL": hook.url("/ops"),
            "SLUICE_ALERT_SECRET": "whsec-production-example-7c1e",
            "SLUICE_ADMIN_KEY": ADMIN_KEY,
        }
        for p in doc["providers"]:
            p["base_url"] = emu.base_url(p["preset"])
            p["key_created"] = _today()  # the operator sets it when rotating the key
            env[p["api_key"].removeprefix("env:")] = f"sk-emu-{p['name']}-key"
        config_file = tmp_path / "production.yaml"
        config_file.write_text(yaml.safe_dump(doc, sort_keys=False))
        opts = ["--config", str(config_file)]

        sent = _cli(["alerts", "test", "ops", *opts], env)
        assert sent.exit_code == 0, sent.output
        assert "ops: sent" in sent.stdout
        [post] = hook.at("/ops")
        assert post.json()["test"] is True

        smoke = _cli(["smoke", "--json", *opts], env)
        assert smoke.exit_code == 0, smoke.output
        run = orjson.loads(smoke.stdout)
        assert run["ok"] is True
        assert {d["id"] for d in run["deployments"]} == {
            "deepseek/deepseek-flash",
            "openai/gpt-4o-mini",
            "claude/claude-sonnet-5",
            "openai/gpt-4.1",
            "openai/text-embedding-3-small",
            "qwen/text-embedding-v4",
        }
        for dep in run["deployments"]:
            assert all(c["status"] != "fail" for c in dep["checks"]), dep
            models = next(c for c in dep["checks"] if c["name"] == "models")
            assert models["status"] == "pass", models

        doctor = _cli(["doctor", "--json", *opts], env)
        assert doctor.exit_code == 0, doctor.output
        report = orjson.loads(doctor.stdout)
        not_green = [i for i in report["items"] if i["status"] != "pass"]
        assert not_green == []
        assert report["ready"] is True
        assert len(report["items"]) == 10
        smoke_item = next(i for i in report["items"] if i["name"] == "smoke")
        assert run["id"] in smoke_item["found"]

        # the running gateway, on the same config and state, says the same
        config = load_config(str(config_file)).config
        with _gateway(config, env) as server:
            status, live, _ = admin_call(_root(server), "GET", "/admin/readiness")
        assert status == 200, live
        assert live["object"] == "readiness"
        assert live["ready"] is True
        assert [(i["name"], i["status"]) for i in live["items"]] == [
            (i["name"], i["status"]) for i in report["items"]
        ]
        assert live["items"] == report["items"]


# --- 3. burn ----------------------------------------------------------------------------------------

BURN_KEYS = {"EMU_OA_KEY": "sk-emu-oa", "EMU_DS_KEY": "sk-emu-ds", "EMU_AN_KEY": "sk-emu-an"}
BURN_ENV = BURN_KEYS | {"EMU_FREE_KEY": "sk-or-emu-free", "SLUICE_ADMIN_KEY": ADMIN_KEY}


def _burn_config(emu: Emulator, data_dir: Path) -> str:
    return (
        f"server: {{data_dir: '{data_dir}', ledger_flush_ms: 5}}\n"
        "providers:\n"
        f"  - {{name: openai, preset: openai, base_url: '{emu.base_url('openai')}', "
        "api_key: env:EMU_OA_KEY}\n"
        f"  - {{name: deepseek, preset: deepseek, base_url: '{emu.base_url('deepseek')}', "
        "api_key: env:EMU_DS_KEY}\n"
        f"  - {{name: anthropic, preset: anthropic, base_url: '{emu.base_url('anthropic')}', "
        "api_key: env:EMU_AN_KEY}\n"
        # a free plan (its requests cost $0); not openrouter_free: the emulator bills its :free models
        f"  - {{name: free, preset: openai, plan: free, base_url: '{emu.base_url('openai')}', "
        "api_key: env:EMU_FREE_KEY}\n"
        "models:\n"
        "  - name: smart\n    deployments:\n"
        "      - {provider: anthropic, model: claude-sonnet-5}\n"
        "      - {provider: openai, model: gpt-4o-mini}\n"
        "  - name: fast\n    deployments:\n"
        "      - {provider: deepseek, model: deepseek-flash}\n"
        "      - {provider: openai, model: gpt-4o-mini}\n"
        "  - name: mini\n    deployments: [{provider: openai, model: gpt-4o-mini}]\n"
        "  - name: gratis\n    deployments: [{provider: free, model: gpt-oss-free}]\n"
    )


# (feature, alias, requests, prompt words, max_tokens, every n-th is a stream with include_usage)
WORKLOAD = [
    ("support-bot", "smart", 14, 400, 120, 2),
    ("summarize", "fast", 22, 250, 60, 1),
    ("classify", "mini", 30, 12, 3, 3),
    ("playground", "gratis", 8, 30, 20, 2),
]


# each feature's alias is served by its primary: (provider, deployment)
SERVED_BY = {
    "support-bot": ("anthropic", "anthropic/claude-sonnet-5"),
    "summarize": ("deepseek", "deepseek/deepseek-flash"),
    "classify": ("openai", "openai/gpt-4o-mini"),
    "playground": ("free", "free/gpt-oss-free"),
}


def _send_workload(client: openai.OpenAI) -> int:
    sent = 0
    for feature, alias, n, words, max_tokens, stream_every in WORKLOAD:
        headers = {"x-sluice-feature": feature}
        for i in range(n):
            prompt = f"{feature} {i}: " + " ".join(f"w{(i * 7 + j) % 97}" for j in range(words))
            messages = [{"role": "user", "content": prompt}]
            if i % stream_every == 0:
                stream = client.chat.completions.create(
                    model=alias,
                    messages=messages,
                    max_tokens=max_tokens,
                    stream=True,
                    stream_options={"include_usage": True},
                    extra_headers=headers,
                )
                chunks = list(stream)
                assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens > 0
            else:
                done = client.chat.completions.create(
                    model=alias, messages=messages, max_tokens=max_tokens, extra_headers=headers
                )
                assert done.usage is not None and done.usage.prompt_tokens > 0
            sent += 1
    return sent


def test_burn_prices_the_top_workflows_on_every_deployment_as_the_pricing_engine_does(
    emulator: Emulator, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    config_file = tmp_path / "sluice.yaml"
    config_file.write_text(_burn_config(emulator, data_dir))
    config = parse_config(config_file.read_text(), environ=BURN_ENV).config
    with (
        _gateway(config, BURN_ENV) as server,
        openai.OpenAI(base_url=server.base_url, api_key=ADMIN_KEY, max_retries=0, timeout=20) as client,
    ):
        sent = _send_workload(client)
        # a smoke run through the gateway: its requests are in the ledger, tagged sluice-smoke
        status, run, _ = admin_call(
            _root(server), "POST", "/admin/smoke", {"deployments": ["deepseek/deepseek-flash"]}
        )
        assert status == 200 and run["ok"], run
        rows = _settled(_root(server), data_dir, sent + 1)

    assert sum(r["feature"] == SMOKE_FEATURE for r in rows) > 0
    assert all(r["status"] == "ok" for r in rows if r["feature"] != SMOKE_FEATURE)
    work = [r for r in rows if r["feature"] != SMOKE_FEATURE and (r["input_tokens"] or r["output_tokens"])]
    assert len(work) == sent
    actual: dict[str, int] = {}
    for r in work:
        actual[r["feature"]] = actual.get(r["feature"], 0) + int(r["cost_nanos"])
    assert actual["playground"] == 0  # the free plan's requests cost nothing
    ranked = sorted(actual, key=lambda f: -actual[f])
    assert len(set(actual.values())) == len(actual)  # no ties: the top 3 are well defined

    result = _cli(["burn", "--top", "3", "--json", "--config", str(config_file)], BURN_ENV)
    assert result.exit_code == 0, result.output
    flows = _json_lines(result)
    assert [f["feature"] for f in flows] == ranked[:3]
    assert "playground" not in ranked[:3]
    print(f"\nburn: actual cost per feature (n$): {actual}")

    routes = priced_routes(config)
    deployments = {dep.id: dep for route in routes.values() for dep in route.deployments}
    assert len(deployments) == 4
    for flow in flows:
        mine = [r for r in work if r["feature"] == flow["feature"]]
        n = len(mine)
        assert flow["mode"] == "chat"
        assert flow["requests"] == n
        assert _nanos(flow["actual_usd"]) == actual[flow["feature"]]
        assert flow["input_tokens_per_request"] == round(sum(r["input_tokens"] for r in mine) / n, 1)
        assert flow["output_tokens_per_request"] == round(sum(r["output_tokens"] for r in mine) / n, 1)
        assert flow["smoke_run"] == run["id"]
        options = {o["deployment"]: o for o in flow["options"]}
        assert set(options) == set(deployments)
        totals = [_nanos(o["total_usd"]) for o in flow["options"]]
        assert totals == sorted(totals)  # cheapest first
        for dep_id, dep in deployments.items():
            expected = sum(dep.pricer.charge(_usage(r), int(r["ts_us"])).nanos for r in mine)
            option = options[dep_id]
            assert Decimal(option["total_usd"]) == Decimal(expected) / NANO, (flow["feature"], dep_id)
            assert _nanos(option["per_request_usd"]) == -(-expected // n)
            assert _nanos(option["per_1000_usd"]) == -(-expected * 1000 // n)
            assert option["smoke"] == (
                run["deployments"][0]["status"] if dep_id == "deepseek/deepseek-flash" else None
            )
        assert options["free/gpt-oss-free"]["total_usd"] == "0"
        # on the deployment that served the workflow, the what-if total is exactly what it cost
        [provider] = {r["provider"] for r in mine}
        assert provider == SERVED_BY[flow["feature"]][0]
        assert _nanos(options[SERVED_BY[flow["feature"]][1]]["total_usd"]) == actual[flow["feature"]]

    everything = _json_lines(_cli(["burn", "--top", "10", "--json", "--config", str(config_file)], BURN_ENV))
    assert [f["feature"] for f in everything] == ranked  # all four, and never the smoke run's requests


# --- 4. credits ---------------------------------------------------------------------------------------

CREDIT_ENV = {
    "EMU_FREE_KEY": "sk-or-emu-free",
    "EMU_PAID_KEY": "sk-emu-paid",
    "EMU_TRIAL_KEY": "sk-emu-trial",
    "EMU_DS_KEY": "sk-emu-ds",
    "SLUICE_ADMIN_KEY": ADMIN_KEY,
}
TRIAL_DAYS = 12
FREE_MODEL = "meta-llama/llama-3.3-70b-instruct:free"


def _credits_config(emu: Emulator, data_dir: Path) -> str:
    expires = _today() + timedelta(days=TRIAL_DAYS)
    # the published 20 requests a minute would make 50 requests take three minutes: raised for the test
    return (
        f"server: {{data_dir: '{data_dir}', ledger_flush_ms: 5}}\n"
        "providers:\n"
        f"  - {{name: free, preset: openrouter_free, base_url: '{emu.base_url('openrouter_free')}', "
        "api_key: env:EMU_FREE_KEY, limits: {requests_per_minute: 1000}}\n"
        f"  - {{name: paid, preset: openai, base_url: '{emu.base_url('openai')}', "
        "api_key: env:EMU_PAID_KEY}\n"
        f"  - {{name: trial, preset: vercel, base_url: '{emu.base_url('vercel')}', "
        f"api_key: env:EMU_TRIAL_KEY, expires: {expires.isoformat()}}}\n"
        f"  - {{name: ds, preset: deepseek, base_url: '{emu.base_url('deepseek')}', api_key: env:EMU_DS_KEY, "
        "credits_usd: 20}\n"
        "models:\n"
        "  - name: chat\n    deployments:\n"
        f"      - {{provider: free, model: '{FREE_MODEL}'}}\n"
        # dearer than the free primary: a fallback that costs more must be allowed to serve
        "      - {provider: paid, model: gpt-4o-mini, allow_pricier: true}\n"
        "  - name: trial-chat\n"
        "    deployments: [{provider: trial, model: openai/gpt-4o-mini, price: {input: 40, output: 80}}]\n"
        "  - name: ds-chat\n    deployments: [{provider: ds, model: deepseek-flash}]\n"
    )


def _served_by(client: openai.OpenAI, alias: str, i: int) -> str:
    raw = client.chat.completions.with_raw_response.create(
        model=alias, messages=[{"role": "user", "content": f"credit question {i}"}], max_tokens=8
    )
    raw.parse()
    return raw.headers["x-sluice-provider"]


def _openrouter_key(emu: Emulator) -> dict[str, Any]:
    request = urllib.request.Request(  # noqa: S310 - the emulator on 127.0.0.1
        emu.base_url("openrouter_free") + "/key", headers={"authorization": "Bearer sk-or-emu-free"}
    )
    with urllib.request.urlopen(request, timeout=10) as r:  # noqa: S310
        data: dict[str, Any] = orjson.loads(r.read())["data"]
    return data


def _credits(config_file: Path, *extra: str) -> dict[str, dict[str, Any]]:
    result = _cli(["credits", "--json", "--config", str(config_file), *extra], CREDIT_ENV)
    assert result.exit_code == 0, result.output
    return {row["provider"]: row for row in _json_lines(result)}


def test_credits_count_a_free_day_a_trial_and_a_provider_balance(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    config_file = tmp_path / "sluice.yaml"
    with running_emulator() as emu:  # its own: the free flavor's count is this test's alone
        emu.balance = "3.50"
        config_file.write_text(_credits_config(emu, data_dir))
        config = parse_config(config_file.read_text(), environ=CREDIT_ENV).config
        with (
            _gateway(config, CREDIT_ENV) as server,
            openai.OpenAI(base_url=server.base_url, api_key=ADMIN_KEY, max_retries=0, timeout=20) as client,
        ):
            assert [_served_by(client, "chat", i) for i in range(50)] == ["free"] * 50
            assert _served_by(client, "chat", 50) == "paid"  # request 51: the day's allowance is spent
            assert emu.by_flavor["openrouter_free"] == 50  # the free account was not called for it
            assert emu.by_model["gpt-4o-mini"] == 1
            assert _openrouter_key(emu)["free_model_daily_requests"]["used"] == 50
            assert [_served_by(client, "trial-chat", i) for i in range(6)] == ["trial"] * 6
            assert [_served_by(client, "ds-chat", i) for i in range(4)] == ["ds"] * 4
            rows = _settled(_root(server), data_dir, 61)
            spent = {
                p: sum(int(r["cost_nanos"]) for r in rows if r["provider"] == p) for p in ("trial", "ds")
            }
            assert spent["trial"] > 0 and spent["ds"] > 0

            polled = _credits(config_file)
            assert set(polled) == {"free", "trial", "ds"}  # the paid account without credit is not watched
            free = polled["free"]
            assert free["plan"] == "free"
            assert free["daily_requests"] == 50
            assert free["requests_today"] == 50
            assert free["requests_left_today"] == 0
            assert free["next_reset"] == _next_utc_midnight()
            assert (free["credits_usd"], free["spent_usd"], free["remaining_usd"]) == (None, "0", None)

            trial = polled["trial"]
            assert trial["plan"] == "trial"
            assert Decimal(trial["credits_usd"]) == 5  # the vercel preset's published trial credit
            assert _nanos(trial["spent_usd"]) == spent["trial"]
            assert _nanos(trial["remaining_usd"]) == 5 * 1_000_000_000 - spent["trial"]
            assert trial["remaining_from"] == "ledger"
            assert trial["expires"] == (_today() + timedelta(days=TRIAL_DAYS)).isoformat()
            assert trial["days_to_expiry"] == TRIAL_DAYS

            ds = polled["ds"]
            assert Decimal(ds["credits_usd"]) == 20
            assert (ds["remaining_usd"], ds["remaining_from"]) == ("3.5", "provider")
            assert _nanos(ds["spent_usd"]) == spent["ds"]

            # the running gateway's view (its balances as last polled, a second after it started)
            def live() -> dict[str, dict[str, Any]]:
                status, body, _ = admin_call(_root(server), "GET", "/admin/credits")
                assert status == 200, body
                return {row["provider"]: row for row in body["data"]}

            _wait(lambda: live()["ds"]["remaining_from"] == "provider", "the gateway's balance poll")
            assert live() == polled

        unpolled = _credits(config_file, "--no-poll")
        assert unpolled["ds"]["remaining_from"] == "ledger"
        assert _nanos(unpolled["ds"]["remaining_usd"]) == 20 * 1_000_000_000 - spent["ds"]
        assert unpolled["free"]["requests_today"] == 50
        assert unpolled["trial"] == polled["trial"]

        # the provider's own count is read when polled: one more free request made around Sluice
        request = urllib.request.Request(  # noqa: S310 - the emulator on 127.0.0.1
            emu.base_url("openrouter_free") + "/chat/completions",
            data=orjson.dumps({"model": FREE_MODEL, "messages": [{"role": "user", "content": "hi"}]}),
            headers={"authorization": "Bearer sk-or-emu-free", "content-type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as r:  # noqa: S310
            assert r.status == 200
        assert _credits(config_file)["free"]["requests_today"] == 51
        assert _credits(config_file)["free"]["requests_left_today"] == 0
        assert _credits(config_file, "--no-poll")["free"]["requests_today"] == 50


# --- 5. POST /admin/smoke -----------------------------------------------------------------------------

SMOKE_ENV = {
    "EMU_OA_KEY": "sk-emu-oa",
    "EMU_DS_KEY": "sk-emu-ds",
    "SLUICE_ADMIN_KEY": ADMIN_KEY,
    "OPS_HOOK_SECRET": "whsec-canary-test-91ab",
}


def _smoke_config(emu: Emulator, data_dir: Path, extra: str = "") -> Config:
    text = (
        f"server: {{data_dir: '{data_dir}'}}\n"
        "providers:\n"
        f"  - {{name: openai, preset: openai, base_url: '{emu.base_url('openai')}', "
        "api_key: env:EMU_OA_KEY}\n"
        f"  - {{name: deepseek, preset: deepseek, base_url: '{emu.base_url('deepseek')}', "
        "api_key: env:EMU_DS_KEY}\n"
        "models:\n"
        "  - name: fast\n    deployments:\n"
        "      - {provider: deepseek, model: deepseek-flash}\n"
        "      - {provider: openai, model: gpt-4o-mini}\n"
        "  - name: canary\n"
        "    deployments: [{provider: openai, model: canary-model-7, price: {input: 1, output: 1}}]\n" + extra
    )
    return parse_config(text, environ=SMOKE_ENV).config


def test_admin_smoke_runs_lists_and_refuses_bad_asks(emulator: Emulator, tmp_path: Path) -> None:
    with _gateway(_smoke_config(emulator, tmp_path), SMOKE_ENV) as server:
        root = _root(server)
        status, run, _ = admin_call(
            root, "POST", "/admin/smoke", {"deployments": ["fast"], "max_usd": "0.01"}
        )
        assert status == 200, run
        assert run["object"] == "smoke.run" and run["ok"] is True
        assert run["light"] is False and run["cap_usd"] == "0.01"
        assert Decimal(run["cost_usd"]) <= Decimal("0.01")
        assert [d["id"] for d in run["deployments"]] == ["deepseek/deepseek-flash", "openai/gpt-4o-mini"]
        for dep in run["deployments"]:
            assert dep["alias"] == "fast"
            names = [c["name"] for c in dep["checks"]]
            assert names[:3] == ["models", "complete", "stream"] and "pricing" in names
        assert run["drift"] == []  # the first run: nothing to compare with

        status, again, _ = admin_call(
            root, "POST", "/admin/smoke", {"deployments": ["deepseek"], "light": True}
        )
        assert status == 200, again
        assert again["light"] is True
        assert [d["id"] for d in again["deployments"]] == ["deepseek/deepseek-flash"]
        assert [c["name"] for c in again["deployments"][0]["checks"]] == [
            "complete",
            "stream",
            "stream_usage",
        ]
        assert isinstance(again["drift"], list)

        status, listed, _ = admin_call(root, "GET", "/admin/smoke")
        assert status == 200, listed
        assert listed["object"] == "list"
        assert [r["id"] for r in listed["data"]] == [again["id"], run["id"]]  # newest first
        status, one, _ = admin_call(root, "GET", "/admin/smoke?limit=1")
        assert status == 200 and [r["id"] for r in one["data"]] == [again["id"]]

        for body, param in (
            ({"max_usd": -1}, "max_usd"),
            ({"bogus": 1}, "bogus"),
            ({"deployments": "fast"}, "deployments"),
        ):
            status, answer, _ = admin_call(root, "POST", "/admin/smoke", body)
            assert status == 400, (body, answer)
            _assert_openai_error(answer, param)
        status, answer, _ = admin_call(root, "POST", "/admin/smoke", raw=b"{not json")
        assert status == 400, answer
        assert "error" in answer
        status, answer, _ = admin_call(root, "GET", "/admin/smoke?limit=0")
        assert status == 400
        _assert_openai_error(answer, "limit")

        for method, path in (("POST", "/admin/smoke"), ("GET", "/admin/smoke"), ("GET", "/admin/readiness")):
            status, answer = _unauthenticated(root, method, path, b"{}" if method == "POST" else None)
            assert status == 401, answer
            assert set(answer) == {"error"} and answer["error"]["message"]
        status, answer, _ = admin_call(root, "POST", "/admin/smoke", {}, key="sk-not-the-admin-key")
        assert status == 401, answer

        status, listed, _ = admin_call(root, "GET", "/admin/smoke")
        assert len(listed["data"]) == 2  # refused asks ran nothing


# --- 6. canaries --------------------------------------------------------------------------------------


def test_a_failing_canary_raises_the_provider_health_alert(emulator: Emulator, tmp_path: Path) -> None:
    """The scheduled canary loop, end to end. ``smoke.canary.every_s`` cannot be set under 60 s in a
    config file, so the validated config's interval is replaced (``model_copy`` does not validate)."""
    with WebhookReceiver() as hook:
        extra = (
            "smoke:\n  canary: {every_s: 60, deployments: [canary]}\n"
            "alerts:\n  backoff_base_s: 0.05\n  backoff_max_s: 0.1\n  rules: [provider_health]\n"
            "  health_window_s: 86400\n"  # one bucket for the whole test: the alert is sent once
            f"  channels:\n    - {{name: ops, type: webhook, url: '{hook.url('/ops')}', "
            "secret: env:OPS_HOOK_SECRET}\n"
        )
        config = _smoke_config(emulator, tmp_path, extra)
        canary = config.smoke.canary.model_copy(update={"every_s": 0.3})
        config = config.model_copy(update={"smoke": config.smoke.model_copy(update={"canary": canary})})
        with _gateway(config, SMOKE_ENV) as server:
            root = _root(server)

            def runs() -> list[dict[str, Any]]:
                status, body, _ = admin_call(root, "GET", "/admin/smoke?limit=200")
                assert status == 200, body
                return list(body["data"])

            _wait(lambda: any(r["ok"] for r in runs()), "a green canary")
            assert all(r["light"] for r in runs())
            assert {d["id"] for r in runs() for d in r["deployments"]} == {"openai/canary-model-7"}
            assert hook.at("/ops") == []

            emulator.set_model_faults("canary-model-7", "status=500")
            try:
                _wait(lambda: bool(hook.at("/ops")), "the canary's provider-health alert")
                failed = next(r for r in runs() if not r["ok"])
            finally:
                emulator.set_model_faults("canary-model-7", None)
            _wait(lambda: runs()[0]["ok"], "a green canary again")
            time.sleep(1.0)  # a few more canaries: the failure is reported once per health window

        [post] = hook.at("/ops")
        alert = post.json()
        assert alert["rule"] == "provider_health"
        assert alert["scope"] == "deployment:openai/canary-model-7"
        assert alert["facts"]["event"] == "canary"
        assert alert["facts"]["deployment"] == "openai/canary-model-7"
        summary = alert["summary"]
        assert summary.startswith("canary: deployment openai/canary-model-7")
        assert "complete failed" in summary and "stream failed" in summary
        assert "complete stopped working" in summary  # the drift since the green canary before it
        checks = {c["name"]: c for c in failed["deployments"][0]["checks"]}
        assert checks["complete"]["status"] == "fail"
        assert checks["complete"]["data"].get("status_code") == 500 or "500" in checks["complete"]["detail"]
