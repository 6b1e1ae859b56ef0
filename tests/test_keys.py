"""Virtual keys: made by the CLI (shown once, stored as HMAC digests), scoped, revoked on a live server."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import orjson
import pytest

from sluice.app import create_app
from sluice.emulator import Emulator
from tests.conftest import ServerThread, make_config, provider_env


def cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sluice.cli", "keys", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        check=False,
        env={**provider_env(), "PATH": ""},
    )


@pytest.fixture
def served(emulator: Emulator, tmp_path: Path) -> Iterator[tuple[ServerThread, Path]]:
    app = create_app(make_config(emulator, tmp_path), provider_env())
    with ServerThread(app) as server:
        yield server, tmp_path


def create(data_dir: Path, *args: str) -> tuple[str, str]:
    res = cli(data_dir, "create", *args)
    assert res.returncode == 0, res.stderr
    assert "shown once" in res.stderr
    made = orjson.loads(res.stdout)
    assert made["status"] == "active" and made["key"].startswith("sk-sluice-")
    return str(made["key"]), str(made["id"])


def test_create_use_list_revoke(served: tuple[ServerThread, Path]) -> None:
    server, data_dir = served
    key, key_id = create(data_dir, "--name", "app-one")
    assert len(key) == len("sk-sluice-") + 43
    with openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0) as c:
        assert c.chat.completions.create(model="oa-chat", messages=[{"role": "user", "content": "x"}]).choices
        listing = cli(data_dir, "list")
        assert key_id in listing.stdout and "active" in listing.stdout and "app-one" in listing.stdout
        assert key not in listing.stdout
        assert cli(data_dir, "revoke", key_id).returncode == 0
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:  # the test config caches keys for 0.2 s
            try:
                c.models.list()
            except openai.AuthenticationError:
                break
            time.sleep(0.05)
        else:
            pytest.fail("revoked key still accepted after 3 s")
    assert "revoked" in cli(data_dir, "list").stdout
    assert cli(data_dir, "revoke", key_id).returncode == 1  # already revoked


def test_keys_are_stored_only_as_digests(served: tuple[ServerThread, Path]) -> None:
    _server, data_dir = served
    key, _id = create(data_dir, "--name", "secret-check")
    for path in (p for p in data_dir.rglob("*") if p.is_file()):
        assert key.encode() not in path.read_bytes(), path
        assert key[10:].encode() not in path.read_bytes(), path
    with sqlite3.connect(data_dir / "sluice.db") as db:
        digests = [r[0] for r in db.execute("SELECT digest FROM virtual_keys")]
    assert all(re.fullmatch(r"[0-9a-f]{64}", d) for d in digests)


def test_model_scoped_key(served: tuple[ServerThread, Path]) -> None:
    server, data_dir = served
    key, _id = create(data_dir, "--name", "scoped", "--model", "ds-chat")
    with openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0) as c:
        assert c.chat.completions.create(model="ds-chat", messages=[{"role": "user", "content": "x"}]).choices
        with pytest.raises(openai.PermissionDeniedError) as exc:
            c.chat.completions.create(model="oa-chat", messages=[{"role": "user", "content": "x"}])
        assert exc.value.code == "permission_denied"
        assert [m.id for m in c.models.list()] == ["ds-chat"]
        with pytest.raises(openai.NotFoundError):
            c.models.retrieve("oa-chat")


def test_admin_key_generated_once_and_reset(tmp_path: Path) -> None:
    from sluice.app import open_services  # noqa: PLC0415
    from sluice.config_file import parse_config  # noqa: PLC0415

    config = parse_config(f"server: {{data_dir: {tmp_path}}}\n", environ={}).config
    svc = open_services(config, {})
    first = svc.run(svc.keys.ensure_admin_key)
    assert first is not None and first.startswith("sk-sluice-admin-")
    again = open_services(config, {})
    assert again.run(again.keys.ensure_admin_key) is None  # shown once only
    reset = cli(tmp_path, "reset-admin")
    assert reset.returncode == 0 and reset.stdout.strip().startswith("sk-sluice-admin-")
    assert first not in (tmp_path / "sluice.db").read_bytes().decode(errors="replace")


def test_bad_key_flood_cannot_evict_good_keys(tmp_path: Path) -> None:
    import asyncio  # noqa: PLC0415

    from sluice.errors import AuthenticationFailed  # noqa: PLC0415
    from sluice.keys.digest import new_key  # noqa: PLC0415
    from sluice.keys.service import KeyService  # noqa: PLC0415
    from sluice.store.sqlite import SQLiteStore  # noqa: PLC0415

    store = SQLiteStore(tmp_path / "k.db")
    keys = KeyService(store, b"secret", ttl=60, max_cache=4)

    async def go() -> None:
        good, row = await keys.create("good")
        assert (await keys.authenticate(good)).key_id == row.id
        for _ in range(20):  # well-formed but unknown keys: each a store read, cached negatively
            with pytest.raises(AuthenticationFailed):
                await keys.authenticate(new_key())
        for bogus in ("x", "sk-sluice-short", "Bearer", "sk-sluice-" + "!" * 43):  # never reach the store
            with pytest.raises(AuthenticationFailed):
                await keys.authenticate(bogus)
        store.shut()  # the good key must now come from the cache alone
        assert (await keys.authenticate(good)).key_id == row.id

    asyncio.run(go())
