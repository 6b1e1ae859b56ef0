"""A canary provider key never appears in a log line, a body or a header, whatever the traffic."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest

from sluice.emulator import Emulator
from tests.conftest import free_port
from tests.serving import start_sluice, stop, wait_ready

CANARY = "sk-canary-7f3a9c1e5b2d4f6a8c0e2b4d6f8a0c2e"
ADMIN = "sk-test-admin-canary-run"


def test_canary_key_never_leaks(emulator: Emulator, tmp_path: Path) -> None:
    port = free_port()
    cfg = tmp_path / "sluice.yaml"
    providers = "".join(
        f"  - {{name: {p}, preset: {p}, base_url: '{emulator.base_url(p)}', api_key: env:CANARY_KEY,"
        " timeouts: {first_byte: 1, idle: 1, total: 3}}\n"
        for p in ("openai", "deepseek", "openrouter", "anthropic", "gemini", "dashscope")
    )
    models = "".join(
        f"  - {{name: {p}, deployments: [{{provider: {p}, model: m, price: {{input: 1, output: 2}}}}]}}\n"
        for p in ("openai", "deepseek", "openrouter", "anthropic", "gemini", "dashscope")
    )
    cfg.write_text(
        f"server: {{data_dir: {tmp_path / 'data'}, log_level: debug, access_log: true}}\n"
        f"providers:\n{providers}models:\n{models}"
        "  - {name: emb, mode: embedding, deployments: [{provider: openai, model: e, price: 0}]}\n"
    )
    log = tmp_path / "sluice.log"
    proc = start_sluice(
        ["serve", "--config", str(cfg), "--port", str(port)],
        tmp_path,
        {"CANARY_KEY": CANARY, "SLUICE_ADMIN_KEY": ADMIN},
        log,
    )
    seen: list[str] = []
    try:
        wait_ready(port, proc)
        with openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key=ADMIN, max_retries=0, timeout=10
        ) as c:
            for model in ("openai", "deepseek", "openrouter", "anthropic", "gemini", "dashscope"):
                for spec in (
                    "",
                    "status=400 echo_key=1",
                    "status=422 echo_key=1",
                    "status=401 echo_key=1",
                    "status=429 retry_after=1",
                    "status=500 echo_key=1",
                    "html=1",
                    "mid_error=2",
                    "cut_after=2",
                    "malformed=2",
                ):
                    for stream in (False, True):
                        seen += _exchange(c, model, spec, stream)
            seen += _exchange(c, "anthropic", "hang=1", stream=True)
            seen.append(c.embeddings.with_raw_response.create(model="emb", input="x").text)
            seen.append(c.models.with_raw_response.list().text)
            seen.append(c.models.with_raw_response.list().headers.__repr__())
    finally:
        stop(proc)
    text = log.read_text()
    assert "Uvicorn running" in text or "Application startup complete" in text  # the log was captured
    assert CANARY not in text
    assert CANARY[10:30] not in text
    for item in seen:
        assert CANARY not in item
        assert CANARY[10:30] not in item


def _exchange(c: openai.OpenAI, model: str, spec: str, stream: bool) -> list[str]:
    content = f"hi @emulator({spec})" if spec else "hi"
    out: list[str] = []
    try:
        raw: Any = c.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": content}], stream=stream
        )
        out += [str(dict(raw.headers)), raw.text if not stream else ""]
        if stream:
            out += [chunk.model_dump_json() for chunk in raw.parse()]
    except openai.APIStatusError as exc:
        out += [exc.response.text, str(dict(exc.response.headers)), exc.message]
    except openai.APIError as exc:
        out.append(str(exc))
    return out


def test_secret_file_is_private(tmp_path: Path) -> None:
    from sluice.keys.digest import load_server_secret  # noqa: PLC0415

    load_server_secret(tmp_path, {})
    mode = (tmp_path / "server.secret").stat().st_mode & 0o777
    assert mode == 0o600


@pytest.mark.parametrize("field", ["api_base", "base_url"])
def test_request_cannot_choose_upstream(client: openai.OpenAI, field: str) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(
            model="oa-chat",
            messages=[{"role": "user", "content": "x"}],
            extra_body={field: "http://169.254.169.254/"},
        )
    assert exc.value.code == "forbidden_parameter"
