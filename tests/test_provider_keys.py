"""Provider keys kept server-side: stored encrypted through the admin API, used in turn, stepped past
when the provider refuses (401) or throttles (429) one, and never shown anywhere — not in answers, logs,
metrics, nor a plain dump of SQLite or PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from sluice.app import create_app
from sluice.config_file import parse_config
from sluice.emulator import Emulator
from sluice.keys.vault import kek_id, new_kek
from tests.conftest import ADMIN_KEY, ServerThread, admin_call, config_yaml, provider_env
from tests.servers import fresh_database, postgres_bindir

CONFIG_KEY = "sk-emu-openai-key"  # what the test config's `env:` reference resolves to
STORED = ["sk-stored-first-0123456789", "sk-stored-second-0123456789"]


class Served:
    def __init__(self, server: ServerThread, data_dir: Path) -> None:
        self.server = server
        self.data_dir = data_dir

    @property
    def root(self) -> str:
        return self.server.base_url.removesuffix("/v1")

    def admin(self, method: str, path: str, body: object = None) -> tuple[int, Any, str]:
        return admin_call(self.root, method, path, body)

    def chat(self, directive: str = "") -> str:
        with openai.OpenAI(base_url=self.server.base_url, api_key=ADMIN_KEY, max_retries=0) as c:
            try:
                c.chat.completions.create(
                    model="oa-chat", messages=[{"role": "user", "content": f"hi {directive}"}]
                )
            except openai.APIStatusError as err:
                return str(err.status_code)
        return "ok"


def _env(kek: str | None, previous: str | None = None) -> dict[str, str]:
    env = provider_env()
    if kek:
        env["SLUICE_KEK"] = kek
    if previous:
        env["SLUICE_KEK_PREVIOUS"] = previous
    return env


@pytest.fixture
def kek() -> str:
    return new_kek()


def _serve(emulator: Emulator, data_dir: Path, env: dict[str, str], extra: str = "") -> ServerThread:
    text = config_yaml(emulator, data_dir).replace("server:\n", "server:\n" + extra, 1)
    (data_dir / "sluice.yaml").write_text(text)  # for the CLI
    config = parse_config(text, environ=env).config
    return ServerThread(create_app(config, env))


@pytest.fixture
def served(emulator: Emulator, tmp_path: Path, kek: str) -> Iterator[Served]:
    with _serve(emulator, tmp_path, _env(kek)) as server:
        yield Served(server, tmp_path)


def test_without_a_kek_keys_cannot_be_stored(emulator: Emulator, tmp_path: Path) -> None:
    with _serve(emulator, tmp_path, _env(None)) as server:
        status, body, _ = Served(server, tmp_path).admin(
            "POST", "/admin/provider-keys", {"provider": "openai", "key": STORED[0]}
        )
    assert status == 503
    assert "SLUICE_KEK" in body["error"]["message"]


def test_store_list_delete_and_bad_input(served: Served) -> None:
    status, made, raw = served.admin("POST", "/admin/provider-keys", {"provider": "openai", "key": STORED[0]})
    assert status == 201, made
    assert made["fingerprint"].startswith("fp_") and made["usable"] is True
    assert STORED[0] not in raw and STORED[0][-8:] not in raw
    status, listing, raw = served.admin("GET", "/admin/provider-keys")
    assert [k["id"] for k in listing["data"]] == [made["id"]]
    assert STORED[0] not in raw
    for bad in (
        {"provider": "nope", "key": "sk-x"},
        {"provider": "openai", "key": "two words"},
        {"provider": "openai"},
        {"provider": "openai", "key": "k", "extra": 1},
    ):
        status, body, _ = served.admin("POST", "/admin/provider-keys", bad)
        assert status == 400, (bad, body)
        assert set(body["error"]) == {"message", "type", "param", "code"}
    assert served.admin("DELETE", f"/admin/provider-keys/{made['id']}")[0] == 200
    assert served.admin("DELETE", f"/admin/provider-keys/{made['id']}")[0] == 404
    assert served.admin("GET", "/admin/provider-keys/x")[0] == 405


def test_a_refused_key_steps_aside_for_the_next(served: Served) -> None:
    refuse_config_key = f"@emulator(bad_key={CONFIG_KEY})"
    assert served.chat(refuse_config_key) == "502"  # only the config's key, and the provider refuses it
    status, made, _ = served.admin("POST", "/admin/provider-keys", {"provider": "openai", "key": STORED[0]})
    assert status == 201
    # the config's key is tried first, refused, and steps aside: the same request is retried with the
    # stored key, which serves it and the next ones
    outcomes = [served.chat(refuse_config_key) for _ in range(4)]
    assert outcomes == ["ok", "ok", "ok", "ok"]
    served.admin("DELETE", f"/admin/provider-keys/{made['id']}")
    assert served.chat(refuse_config_key) == "502"  # back to the config's key alone


def test_a_throttled_key_steps_aside(served: Served) -> None:
    for key in STORED:
        served.admin("POST", "/admin/provider-keys", {"provider": "openai", "key": key})
    busy = f"@emulator(busy_key={CONFIG_KEY})"
    assert served.chat(busy) == "ok"  # throttled, then retried at once with the account's next key
    assert [served.chat(busy) for _ in range(3)] == ["ok", "ok", "ok"]
    assert served.chat() == "ok"


def test_keys_appear_nowhere_but_as_ciphertext(
    served: Served, caplog: pytest.LogCaptureFixture, kek: str
) -> None:
    caplog.set_level(logging.DEBUG)
    for key in STORED:
        served.admin("POST", "/admin/provider-keys", {"provider": "openai", "key": key})
    served.chat(f"@emulator(bad_key={CONFIG_KEY} echo_key=1)")  # a provider that echoes the key it saw
    served.chat("@emulator(status=500 echo_key=1)")
    answers = [served.admin("GET", "/admin/provider-keys")[2], served.admin("GET", "/metrics")[2]]
    with sqlite3.connect(served.data_dir / "sluice.db") as db:
        dump = "\n".join(db.iterdump())
    assert "provider_keys" in dump
    texts = {"answers": "\n".join(answers), "logs": caplog.text, "sqlite dump": dump}
    for where, text in texts.items():
        for secret in (*STORED, CONFIG_KEY, kek):
            assert secret not in text, f"{secret[:6]}… found in {where}"
    files = b"".join(p.read_bytes() for p in served.data_dir.rglob("*") if p.is_file())
    for secret in (*STORED, kek):
        assert secret.encode() not in files


def test_a_ciphertext_copied_to_another_row_does_not_decrypt(
    emulator: Emulator, tmp_path: Path, kek: str, caplog: pytest.LogCaptureFixture
) -> None:
    with _serve(emulator, tmp_path, _env(kek)) as server:
        s = Served(server, tmp_path)
        first = s.admin("POST", "/admin/provider-keys", {"provider": "openai", "key": STORED[0]})[1]
        second = s.admin("POST", "/admin/provider-keys", {"provider": "openai", "key": STORED[1]})[1]
    with sqlite3.connect(tmp_path / "sluice.db") as db:
        (sealed,) = db.execute("SELECT sealed FROM provider_keys WHERE id = ?", (first["id"],)).fetchone()
        db.execute("UPDATE provider_keys SET sealed = ? WHERE id = ?", (sealed, second["id"]))
    caplog.set_level(logging.ERROR)
    with _serve(emulator, tmp_path, _env(kek)) as server:
        s = Served(server, tmp_path)
        usable = {k["id"]: k["usable"] for k in s.admin("GET", "/admin/provider-keys")[1]["data"]}
        assert usable == {first["id"]: True, second["id"]: False}
        assert f"provider key {second['id']} (openai) cannot be used" in caplog.text
        # the copy is never used: with the config's key refused, only the first stored key serves
        outcomes = [s.chat(f"@emulator(bad_key={CONFIG_KEY})") for _ in range(3)]
        assert outcomes[1:] == ["ok", "ok"]
    for secret in STORED:
        assert secret not in caplog.text


def test_kek_rotation_under_load_fails_no_request(emulator: Emulator, tmp_path: Path) -> None:
    old, new = new_kek(), new_kek()
    stop = threading.Event()
    outcomes: list[str] = []
    refuse = f"@emulator(bad_key={CONFIG_KEY})"
    with _serve(emulator, tmp_path, _env(new, previous=old)) as server:
        s = Served(server, tmp_path)
        # keys stored under the old KEK by a CLI that knew only it
        config = tmp_path / "sluice.yaml"
        env_old = {**os.environ, **_env(old)}
        for key in STORED:
            subprocess.run(
                [sys.executable, "-m", "sluice.cli", "secrets", "add", "openai", "--config", str(config)],
                input=key + "\n",
                text=True,
                env=env_old,
                check=True,
                capture_output=True,
            )
    with _serve(emulator, tmp_path, _env(new, previous=old)) as server:
        s = Served(server, tmp_path)
        s.chat(refuse)  # the config's key steps aside: the stored keys carry the load

        def load() -> None:
            while not stop.is_set():
                outcomes.append(s.chat(refuse))

        worker = threading.Thread(target=load)
        worker.start()
        try:
            env_new = {**os.environ, **_env(new, previous=old)}
            done = subprocess.run(
                [sys.executable, "-m", "sluice.cli", "secrets", "rotate-kek", "--config", str(config)],
                env=env_new,
                capture_output=True,
                text=True,
                check=False,
            )
            assert done.returncode == 0, done.stderr
            assert "re-wrapped 2 key(s)" in done.stdout
            asyncio.run(asyncio.sleep(0.3))
        finally:
            stop.set()
            worker.join()
    assert outcomes and set(outcomes) == {"ok"}
    with sqlite3.connect(tmp_path / "sluice.db") as db:
        ids = {row[0].split(".")[1] for row in db.execute("SELECT sealed FROM provider_keys")}
    assert ids == {kek_id(base64.b64decode(new))}
    with _serve(emulator, tmp_path, _env(new)) as server:  # the old KEK is gone for good
        s = Served(server, tmp_path)
        assert [s.chat(refuse) for _ in range(3)][1:] == ["ok", "ok"]


def test_postgres_dump_holds_only_ciphertext(
    emulator: Emulator, tmp_path: Path, kek: str, postgres_dsn: str
) -> None:
    dsn = fresh_database(postgres_dsn, "provider_keys_dump")
    env = {**_env(kek), "TEST_PG": dsn}
    with _serve(emulator, tmp_path, env, "  store: postgres\n  database_url: env:TEST_PG\n") as server:
        s = Served(server, tmp_path)
        for key in STORED:
            assert s.admin("POST", "/admin/provider-keys", {"provider": "openai", "key": key})[0] == 201
        assert s.chat(f"@emulator(bad_key={CONFIG_KEY})") == "ok"  # retried with a stored key
    dump = subprocess.run(
        [str(postgres_bindir() / "pg_dump"), "--no-owner", dsn], capture_output=True, text=True, check=True
    ).stdout
    assert "provider_keys" in dump and "v1." in dump
    for secret in (*STORED, kek):
        assert secret not in dump
