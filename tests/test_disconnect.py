"""A client that leaves mid-stream stops the upstream promptly; the gateway stays healthy."""

from __future__ import annotations

import http.client
import json
import time
from pathlib import Path

import openai
import pytest

from sluice.app import create_app
from sluice.emulator import Emulator
from tests.conftest import ADMIN_KEY, ServerThread, make_config, provider_env


@pytest.mark.parametrize("alias", ["oa-chat", "claude-chat", "or-chat"])
def test_client_disconnect_cancels_upstream(tmp_path: Path, alias: str) -> None:
    emu = Emulator()
    emu.start_in_thread()
    try:
        app = create_app(make_config(emu, tmp_path), provider_env())
        with (
            ServerThread(app) as server,
            openai.OpenAI(base_url=server.base_url, api_key=ADMIN_KEY, max_retries=0) as c,
        ):
            stream = c.chat.completions.create(
                model=alias,
                stream=True,
                messages=[{"role": "user", "content": "long @emulator(tokens=200 pace_ms=50)"}],
            )
            got = [next(stream), next(stream)]
            assert got
            assert emu.in_flight == 1
            stream.close()  # the client goes away after two chunks (~10 s of stream left)
            deadline = time.monotonic() + 3
            while emu.in_flight and time.monotonic() < deadline:
                time.sleep(0.05)
            assert emu.in_flight == 0, "the upstream stream was not cancelled"
            # and the gateway still serves
            assert c.chat.completions.create(model=alias, messages=[{"role": "user", "content": "x"}]).choices
    finally:
        emu.stop_thread()


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/embeddings"])
def test_client_leaving_a_non_stream_call_cancels_upstream(tmp_path: Path, path: str) -> None:
    emu = Emulator()
    emu.start_in_thread()
    try:
        app = create_app(make_config(emu, tmp_path), provider_env())
        with ServerThread(app) as server:
            body: dict[str, object] = {"model": "oa-embed", "input": "slow @emulator(latency_ms=10000)"}
            if "chat" in path:
                body = {
                    "model": "oa-chat",
                    "messages": [{"role": "user", "content": "slow @emulator(latency_ms=10000)"}],
                }
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=0.5)
            conn.request(
                "POST",
                path,
                body=json.dumps(body),
                headers={"authorization": f"Bearer {ADMIN_KEY}", "content-type": "application/json"},
            )
            with pytest.raises(TimeoutError):
                conn.getresponse()
            assert emu.in_flight == 1
            conn.close()  # the client gives up
            deadline = time.monotonic() + 3
            while emu.in_flight and time.monotonic() < deadline:
                time.sleep(0.05)
            assert emu.in_flight == 0, "the upstream call was not cancelled"
    finally:
        emu.stop_thread()
