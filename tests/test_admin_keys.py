"""The admin API for virtual keys: every operation, every bad path, and its OpenAPI description; the
`sluice keys` commands on the same store; several workers refused when budgets would not be shared."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from openapi_spec_validator import validate

from sluice.app import create_app
from sluice.config_file import parse_config
from sluice.emulator import Emulator
from tests.conftest import ADMIN_KEY, ServerThread, admin_call, config_yaml, free_port, provider_env
from tests.serving import start_sluice, stop


class Admin:
    def __init__(self, server: ServerThread, data_dir: Path) -> None:
        self.server = server
        self.data_dir = data_dir

    def __call__(
        self, method: str, path: str, body: object = None, key: str = ADMIN_KEY, raw: bytes | None = None
    ) -> tuple[int, Any]:
        root = self.server.base_url.removesuffix("/v1")
        status, answer, _text = admin_call(root, method, path, body, key=key, raw=raw)
        return status, answer


@pytest.fixture(scope="module")
def admin(emulator: Emulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Admin]:
    data_dir = tmp_path_factory.mktemp("admin")
    config = parse_config(config_yaml(emulator, data_dir), environ=provider_env()).config
    with ServerThread(create_app(config, provider_env())) as server:
        yield Admin(server, data_dir)


def _works(admin: Admin, key: str) -> str:
    with openai.OpenAI(base_url=admin.server.base_url, api_key=key, max_retries=0) as c:
        try:
            c.chat.completions.create(model="oa-chat", messages=[{"role": "user", "content": "x"}])
        except openai.APIStatusError as err:
            return str(err.body["code"]) if isinstance(err.body, dict) else str(err.status_code)
    return "ok"


def test_a_key_from_creation_to_revocation(admin: Admin) -> None:
    status, made = admin(
        "POST",
        "/admin/keys",
        {
            "name": "search-prod",
            "owner": "ana@example.com",
            "team": "search",
            "models": ["oa-chat"],
            "limits": {"usd": {"month": "25"}, "requests_per_minute": 600},
            "user_limits": {"usd": {"day": "0.5"}},
            "features": ["search"],
            "metadata": {"ticket": "OPS-1"},
        },
    )
    assert status == 201, made
    secret, key_id = made["key"], made["id"]
    assert made["status"] == "active" and made["hint"].endswith(secret[-4:])
    assert made["limits"] == {"usd": {"month": "25"}, "requests_per_minute": 600}
    assert "digest" not in made
    assert _works(admin, secret) == "ok"

    status, got = admin("GET", f"/admin/keys/{key_id}")
    assert status == 200 and "key" not in got and got["owner"] == "ana@example.com"
    status, listing = admin("GET", "/admin/keys")
    assert key_id in [k["id"] for k in listing["data"]] and all("key" not in k for k in listing["data"])

    status, changed = admin("PATCH", f"/admin/keys/{key_id}", {"name": "search-2", "models": None})
    assert status == 200 and changed["name"] == "search-2" and changed["models"] is None
    assert changed["team"] == "search"  # fields left out are kept

    status, rotated = admin("POST", f"/admin/keys/{key_id}/rotate")
    assert status == 200 and rotated["key"] != secret and rotated["id"] == key_id
    assert _works(admin, secret) == "invalid_api_key"
    assert _works(admin, rotated["key"]) == "ok"

    assert admin("POST", f"/admin/keys/{key_id}/block")[1]["status"] == "blocked"
    assert _works(admin, rotated["key"]) == "key_blocked"
    assert admin("POST", f"/admin/keys/{key_id}/unblock")[1]["status"] == "active"
    assert _works(admin, rotated["key"]) == "ok"

    status, gone = admin("DELETE", f"/admin/keys/{key_id}")
    assert status == 200 and gone["status"] == "revoked"
    assert _works(admin, rotated["key"]) == "invalid_api_key"
    assert admin("PATCH", f"/admin/keys/{key_id}", {"name": "x"})[0] == 404


def test_expiry(admin: Admin) -> None:
    status, made = admin("POST", "/admin/keys", {"name": "old", "expires_at": "2020-01-01T00:00:00Z"})
    assert status == 201 and made["status"] == "expired"
    assert _works(admin, made["key"]) == "invalid_api_key"


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("POST", "/admin/keys", {}, 400, "invalid_request"),
        ("POST", "/admin/keys", {"name": ""}, 400, "invalid_request"),
        ("POST", "/admin/keys", {"name": "x", "nope": 1}, 400, "invalid_request"),
        ("POST", "/admin/keys", {"name": "x", "limits": {"usd": {"day": "-1"}}}, 400, "invalid_request"),
        ("POST", "/admin/keys", {"name": "x", "limits": {"tokens": {"day": "1.5"}}}, 400, "invalid_request"),
        ("POST", "/admin/keys", {"name": "x", "limits": {"concurrent": 0}}, 400, "invalid_request"),
        ("POST", "/admin/keys", {"name": "x", "team": "a\nb"}, 400, "invalid_request"),
        ("POST", "/admin/keys", {"name": "x", "metadata": {"k": 1}}, 400, "invalid_request"),
        ("POST", "/admin/keys", {"name": "x", "expires_at": "soon"}, 400, "invalid_request"),
        ("GET", "/admin/keys/key_missing", None, 404, "not_found"),
        ("PATCH", "/admin/keys/key_missing", {"name": "x"}, 404, "not_found"),
        ("POST", "/admin/keys/key_missing/rotate", None, 404, "not_found"),
        ("POST", "/admin/keys/key_missing/launch", None, 404, "not_found"),
        ("GET", "/admin/keys/key_missing/rotate", None, 405, "method_not_allowed"),
        ("PUT", "/admin/keys", {"name": "x"}, 405, "method_not_allowed"),
        ("DELETE", "/admin/keys/", None, 404, "not_found"),
    ],
)
def test_bad_requests_get_the_error_envelope(
    admin: Admin, method: str, path: str, body: object, status: int, code: str
) -> None:
    got, answer = admin(method, path, body)
    assert got == status, answer
    assert set(answer["error"]) == {"message", "type", "param", "code"}
    assert answer["error"]["code"] == code


def test_malformed_json_is_a_400(admin: Admin) -> None:
    status, answer = admin("POST", "/admin/keys", raw=b"{not json")
    assert status == 400 and answer["error"]["code"] == "invalid_request"


def test_only_the_admin_may_manage_keys(admin: Admin) -> None:
    made = admin("POST", "/admin/keys", {"name": "plain"})[1]
    for method, path in (
        ("GET", "/admin/keys"),
        ("POST", "/admin/keys"),
        ("GET", f"/admin/keys/{made['id']}"),
    ):
        status, answer = admin(method, path, {"name": "x"} if method == "POST" else None, key=made["key"])
        assert status == 403 and answer["error"]["code"] == "permission_denied"
    status, answer = admin("GET", "/admin/keys", key="sk-sluice-" + "x" * 43)
    assert status == 401


def test_openapi_document_is_valid_and_complete(admin: Admin) -> None:
    status, doc = admin("GET", "/admin/openapi.json")
    assert status == 200
    validate(doc)
    assert {"/admin/keys", "/admin/keys/{id}", "/admin/keys/{id}/rotate", "/admin/limits"} <= set(
        doc["paths"]
    )
    assert set(doc["components"]["schemas"]["KeyCreate"]["required"]) == {"name"}


def test_counters_endpoint(admin: Admin) -> None:
    made = admin("POST", "/admin/keys", {"name": "c", "limits": {"requests": {"day": 10}}})[1]
    assert _works(admin, made["key"]) == "ok"
    status, counters = admin("GET", f"/admin/limits?scope=key:{made['id']}")
    assert status == 200
    (day,) = counters["data"]
    assert (day["metric"], day["spent"], day["reserved"]) == ("requests", 1, 0)
    assert day["window"].startswith("d")


def _cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sluice.cli", "keys", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        check=False,
        env={**provider_env(), "PATH": ""},
    )


def test_cli_keys_commands(tmp_path: Path) -> None:
    made = _cli(tmp_path, "create", "--name", "cli", "--owner", "bo", "--limit", "usd.day=5", "--meta", "a=b")
    assert made.returncode == 0, made.stderr
    key = orjson.loads(made.stdout)
    assert key["limits"] == {"usd": {"day": "5"}} and key["metadata"] == {"a": "b"}
    changed = _cli(
        tmp_path, "update", key["id"], "--limit", "requests_per_minute=60", "--user-limit", "usd.day=1"
    )
    assert changed.returncode == 0, changed.stderr
    assert orjson.loads(changed.stdout)["limits"] == {"requests_per_minute": 60}
    assert orjson.loads(_cli(tmp_path, "show", key["id"]).stdout)["user_limits"] == {"usd": {"day": "1"}}
    rotated = orjson.loads(_cli(tmp_path, "rotate", key["id"]).stdout)
    assert rotated["key"] != key["key"]
    assert _cli(tmp_path, "block", key["id"]).stdout.startswith("blocked")
    assert "blocked" in _cli(tmp_path, "list").stdout
    assert _cli(tmp_path, "block", "--undo", key["id"]).stdout.startswith("unblocked")
    assert _cli(tmp_path, "revoke", key["id"]).returncode == 0
    missing = _cli(tmp_path, "show", "key_nothing")
    assert missing.returncode == 1 and "No key with id" in missing.stderr
    bad = _cli(tmp_path, "create", "--name", "x", "--limit", "usd.day")
    assert bad.returncode == 2 and "NAME=VALUE" in bad.stderr
    bad = _cli(tmp_path, "create", "--name", "x", "--limit", "usd.day=-3")
    assert bad.returncode == 2


def test_several_workers_refuse_budgets_without_shared_counters(emulator: Emulator, tmp_path: Path) -> None:
    config = tmp_path / "sluice.yaml"
    config.write_text(
        config_yaml(emulator, tmp_path) + "budgets:\n  all: {usd: {month: 100}}\n", encoding="utf-8"
    )
    port = free_port()
    proc = start_sluice(
        ["serve", "--config", str(config), "--workers", "2", "--port", str(port)],
        tmp_path,
        provider_env(),
        tmp_path / "serve.log",
    )
    try:
        assert proc.wait(timeout=60) == 1
    finally:
        stop(proc)
    log = (tmp_path / "serve.log").read_text()
    assert "counters: redis" in log and "one worker" in log
