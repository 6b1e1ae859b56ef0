"""`sluice serve` with no config, and `./scripts/start`: the demo on the emulator, driven by the real SDK."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import openai
import orjson
import pytest

from tests.conftest import free_port
from tests.serving import start_sluice, stop, wait_ready

ROOT = Path(__file__).resolve().parents[1]
PROVIDER_ENVS = (
    "OPENAI_API_KEY",
    "DEEPSEEK_API_KEY",
    "DASHSCOPE_API_KEY",
    "OPENROUTER_API_KEY",
    "ANTHROPIC_API_KEY",
    "GEMINI_API_KEY",
    "GROQ_API_KEY",
    "SLUICE_ADMIN_KEY",
)


def clean_env() -> dict[str, str]:
    return dict.fromkeys(PROVIDER_ENVS, "")


def drive_demo(port: int, log: Path) -> None:
    text = log.read_text()
    match = re.search(r"admin key: (sk-sluice-admin-\S+)", text)
    assert match, text
    assert f"http://127.0.0.1:{port}/v1" in text
    assert "from openai import OpenAI" in text
    with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=match.group(1), max_retries=0) as c:
        ids = [m.id for m in c.models.list()]
        for name in (
            "deepseek-flash",
            "qwen-plus",
            "claude-sonnet-5",
            "gpt-4o-mini",
            "gemini-2.5-flash",
            "text-embedding-3-small",
        ):
            assert name in ids
        for model in ids:
            if "embedding" in model:
                assert c.embeddings.create(model=model, input="hello").data[0].embedding
                continue
            reply = c.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hello"}])
            assert reply.choices[0].message.content
            chunks = list(
                c.chat.completions.create(
                    model=model,
                    messages=[{"role": "user", "content": "Hi"}],
                    stream=True,
                    stream_options={"include_usage": True},
                )
            )
            assert chunks[-1].usage is not None


def test_serve_without_config_runs_the_demo(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    proc = start_sluice(["serve", "--port", str(port)], tmp_path, clean_env(), log)
    try:
        wait_ready(port, proc)
        drive_demo(port, log)
        assert (tmp_path / ".sluice" / "sluice.db").exists(), "SQLite lives under ./.sluice"
    finally:
        stop(proc)
    # second start: the admin key is not printed again
    proc = start_sluice(["serve", "--port", str(port)], tmp_path, clean_env(), log)
    try:
        wait_ready(port, proc)
        assert "sk-sluice-admin-" not in log.read_text()
    finally:
        stop(proc)


def test_serve_with_two_workers(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    proc = start_sluice(["serve", "--port", str(port), "--workers", "2"], tmp_path, clean_env(), log)
    try:
        wait_ready(port, proc, timeout=60)
        drive_demo(port, log)
        match = re.search(r"admin key: (sk-sluice-admin-\S+)", log.read_text())
        assert match
        auth = {"authorization": f"Bearer {match.group(1)}"}
        # Both workers settled requests; every scrape, whichever worker answers, counts all of them,
        # and agrees with the ledger (which /admin/spend flushes only in the worker that answers it:
        # so read the ledger from the CLI after the server has stopped).
        time.sleep(1.5)  # each worker shares its totals every second
        scrapes = []
        for _ in range(4):
            req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers=auth)
            with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - our own server
                text = resp.read().decode()
            scrapes.append(
                sum(
                    float(line.rsplit(" ", 1)[1])
                    for line in text.splitlines()
                    if line.startswith("sluice_requests_total{")
                )
            )
    finally:
        stop(proc)
    assert len(set(scrapes)) == 1 and scrapes[0] > 0, scrapes
    spend = subprocess.run(
        [sys.executable, "-m", "sluice.cli", "spend", "--format", "json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert orjson.loads(spend.stdout)["total"]["requests"] == scrapes[0]


@pytest.mark.slow
def test_scripts_start(tmp_path: Path) -> None:
    """The README's first command, run as a newcomer would (reusing the venv ./scripts/test made)."""
    port = free_port()
    log = tmp_path / "start.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(ROOT / "scripts" / "start"), "--port", str(port)],
            cwd=tmp_path,
            env={**os.environ, **clean_env()},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_ready(port, proc, timeout=300)
        drive_demo(port, log)
    finally:
        stop(proc)


def test_sluice_emulate_command(tmp_path: Path) -> None:
    """The emulator alone, as the CLI runs it (on uvloop)."""
    port = free_port()
    log = tmp_path / "emulate.log"
    proc = start_sluice(["emulate", "--port", str(port), "--faults", "tokens=3"], tmp_path, {}, log)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/deepseek", api_key="x", max_retries=0) as c:
            reply = c.chat.completions.create(
                model="deepseek-flash", messages=[{"role": "user", "content": "hi"}]
            )
            assert reply.usage is not None
            assert reply.choices[0].message.content == "sluice gates measure"
            assert [m.id for m in c.models.list()] == ["deepseek-flash"]
        assert "emulator listening on" in log.read_text()
    finally:
        stop(proc)


def test_bad_command_line_option_is_a_clear_error(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "sluice.cli", "serve", "--port", "99999"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **clean_env()},
    )
    assert res.returncode == 1
    assert "--port: Input should be less than or equal to 65535" in res.stderr


def test_missing_provider_key_variable_stops_startup(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "providers: [{name: ds, preset: deepseek, api_key: env:SLUICE_TEST_UNSET_KEY}]\n"
        "models: [{name: m, deployments: [{provider: ds, model: deepseek-flash}]}]\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "SLUICE_TEST_UNSET_KEY"}
    res = subprocess.run(
        [sys.executable, "-m", "sluice.cli", "serve", "--config", str(cfg), "--port", "0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=30,
    )
    assert res.returncode == 1
    assert "provider 'ds': environment variable SLUICE_TEST_UNSET_KEY is not set" in res.stderr
