"""Key material: the server secret, key generation and HMAC digests."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path

KEY_PREFIX = "sk-sluice-"
KEY_SHAPE = re.compile(r"sk-sluice-(?:admin-)?[A-Za-z0-9_-]{43}")  # every key new_key() can make
SECRET_ENV = "SLUICE_SECRET"  # noqa: S105  (a variable name, not a secret)
_SECRET_FILE = "server.secret"  # noqa: S105  (a file name)


def new_key(kind: str = "") -> str:
    """A fresh API key: ``sk-sluice-`` + 43 URL-safe characters (256 bits)."""
    return f"{KEY_PREFIX}{kind}{secrets.token_urlsafe(32)}"


def digest(secret: bytes, key: str) -> str:
    """The HMAC-SHA256 of a key under the server secret: what is stored and looked up."""
    return hmac.new(secret, key.encode(), hashlib.sha256).hexdigest()


class Digester:
    """``digest`` under one secret, keyed once: each call copies the keyed state (half the cost)."""

    __slots__ = ("_keyed",)

    def __init__(self, secret: bytes) -> None:
        self._keyed = hmac.new(secret, digestmod=hashlib.sha256)

    def __call__(self, key: str) -> str:
        mac = self._keyed.copy()
        mac.update(key.encode())
        return mac.hexdigest()


def hint(key: str) -> str:
    """A short, non-secret reminder of which key this is (last four characters)."""
    return f"{KEY_PREFIX}…{key[-4:]}"


def load_server_secret(data_dir: Path, environ: Mapping[str, str] | None = None) -> bytes:
    """The server secret from ``SLUICE_SECRET``, else from the data directory (created 0600 once)."""
    env = os.environ if environ is None else environ
    if env.get(SECRET_ENV):
        return env[SECRET_ENV].encode()
    path = data_dir / _SECRET_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text(encoding="ascii").strip().encode()
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(secrets.token_hex(32))
    return path.read_text(encoding="ascii").strip().encode()
