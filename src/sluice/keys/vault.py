"""Envelope encryption of provider API keys stored in the database.

Each secret gets its own random 256-bit data key. The secret is sealed with AES-256-GCM under the data
key, and the data key is wrapped with AES-256-GCM under a key-encryption key (KEK) that lives outside
the database (``SLUICE_KEK`` or ``SLUICE_KEK_FILE``). Both encryptions take the row's *binding* (for
example ``"provider_key:42:acme"``) as associated data, so a ciphertext copied to another row does not
decrypt. Rotating the KEK re-wraps only the small data keys; the sealed payloads stay as they are.

A sealed value is stored as one ASCII string: ``v1.<kek_id>.<wrapped_key>.<nonce>.<ciphertext>``, the
last three in unpadded base64url.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sluice.errors import ConfigError, VaultError

KEK_ENV = "SLUICE_KEK"
KEK_FILE_ENV = "SLUICE_KEK_FILE"
PREVIOUS_ENV = "SLUICE_KEK_PREVIOUS"
PREVIOUS_FILE_ENV = "SLUICE_KEK_PREVIOUS_FILE"

_KEY_BYTES = 32  # AES-256
_NONCE_BYTES = 12  # the GCM standard nonce
_TAG_BYTES = 16
_WRAPPED_BYTES = _NONCE_BYTES + _KEY_BYTES + _TAG_BYTES
_VERSION = "v1"
_KEK_ID = re.compile(r"[0-9a-f]{16}")
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_UNREADABLE = "sealed secret cannot be decrypted: wrong row or key-encryption key, or altered data"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str, part: str) -> bytes:
    """Strict unpadded base64url: anything but the canonical encoding is refused."""
    if not _B64URL.fullmatch(text):
        raise VaultError(f"sealed secret is malformed: {part} is not base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise VaultError(f"sealed secret is malformed: {part} is not base64url") from None
    if _b64url(data) != text:
        raise VaultError(f"sealed secret is malformed: {part} is not canonical base64url")
    return data


@dataclass(frozen=True, slots=True, repr=False)
class Sealed:
    """A secret encrypted under a data key, with that data key wrapped under a KEK."""

    kek_id: str
    wrapped_key: bytes
    nonce: bytes
    ciphertext: bytes

    def __repr__(self) -> str:
        return f"Sealed(kek_id={self.kek_id!r}, ciphertext=<{len(self.ciphertext)} bytes>)"

    def to_text(self) -> str:
        """One compact ASCII string for a TEXT column."""
        parts = (_b64url(self.wrapped_key), _b64url(self.nonce), _b64url(self.ciphertext))
        return ".".join((_VERSION, self.kek_id, *parts))

    @classmethod
    def from_text(cls, text: str) -> Sealed:
        """Parse :meth:`to_text` output; :class:`VaultError` on anything malformed."""
        parts = text.split(".")
        if len(parts) != 5 or parts[0] != _VERSION:
            raise VaultError("sealed secret is malformed: expected v1.<kek_id>.<key>.<nonce>.<data>")
        _, kid, wrapped_text, nonce_text, data_text = parts
        if not _KEK_ID.fullmatch(kid):
            raise VaultError("sealed secret is malformed: bad key-encryption key id")
        wrapped = _unb64url(wrapped_text, "wrapped key")
        nonce = _unb64url(nonce_text, "nonce")
        data = _unb64url(data_text, "ciphertext")
        if len(wrapped) != _WRAPPED_BYTES or len(nonce) != _NONCE_BYTES or len(data) < _TAG_BYTES:
            raise VaultError("sealed secret is malformed: a part has the wrong length")
        return cls(kek_id=kid, wrapped_key=wrapped, nonce=nonce, ciphertext=data)


def kek_id(kek: bytes) -> str:
    """A short, stable, non-secret id of a KEK (16 hex characters)."""
    return hashlib.sha256(b"sluice-kek-id" + kek).hexdigest()[:16]


def fingerprint(secret: str) -> str:
    """What APIs show instead of a key: ``fp_`` + 16 hex characters of its SHA-256."""
    return "fp_" + hashlib.sha256(secret.encode()).hexdigest()[:16]


# cryptography is imported when a secret is first sealed or opened, not at start-up: a gateway without
# stored provider keys never needs it, and it costs ~6.5 MB of resident memory per worker.
def _encrypt(key: bytes, data: bytes, aad: bytes) -> tuple[bytes, bytes]:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: PLC0415 - see above

    nonce = secrets.token_bytes(_NONCE_BYTES)
    return nonce, AESGCM(key).encrypt(nonce, data, aad)


def _decrypt(key: bytes, nonce: bytes, data: bytes, aad: bytes) -> bytes:
    from cryptography.exceptions import InvalidTag  # noqa: PLC0415 - see _encrypt
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: PLC0415

    try:
        return AESGCM(key).decrypt(nonce, data, aad)
    except (InvalidTag, ValueError):  # ValueError: a nonce or key of impossible length
        raise VaultError(_UNREADABLE) from None


class Vault:
    """Seals and opens secrets under the current KEK; older KEKs still open and re-wrap."""

    __slots__ = ("_current_id", "_keks")

    def __init__(self, current: bytes, previous: Sequence[bytes] = ()) -> None:
        for kek in (current, *previous):
            if len(kek) != _KEY_BYTES:
                raise VaultError(f"a key-encryption key must be {_KEY_BYTES} bytes, got {len(kek)}")
        self._keks: dict[str, bytes] = {kek_id(k): bytes(k) for k in previous}
        self._current_id = kek_id(current)
        self._keks[self._current_id] = bytes(current)

    @property
    def current_id(self) -> str:
        """The id of the KEK new seals are wrapped under."""
        return self._current_id

    def seal(self, plaintext: str, binding: str) -> Sealed:
        """Encrypt under a fresh data key, wrapped under the current KEK; both bound to ``binding``."""
        aad = binding.encode()
        data_key = secrets.token_bytes(_KEY_BYTES)
        nonce, ciphertext = _encrypt(data_key, plaintext.encode(), aad)
        wrap_nonce, wrapped = _encrypt(self._keks[self._current_id], data_key, aad)
        return Sealed(self._current_id, wrap_nonce + wrapped, nonce, ciphertext)

    def open(self, sealed: Sealed, binding: str) -> str:
        """The plaintext, if ``sealed`` belongs to ``binding`` and its KEK is known."""
        aad = binding.encode()
        data_key = self._unwrap(sealed, aad)
        plaintext = _decrypt(data_key, sealed.nonce, sealed.ciphertext, aad)
        try:
            return plaintext.decode()
        except UnicodeDecodeError:  # authenticated, so only a foreign writer could cause this
            raise VaultError(_UNREADABLE) from None

    def rewrap(self, sealed: Sealed, binding: str) -> Sealed:
        """The same payload with its data key wrapped under the current KEK (checked even if already so)."""
        aad = binding.encode()
        data_key = self._unwrap(sealed, aad)
        if not self.needs_rewrap(sealed):
            return sealed
        wrap_nonce, wrapped = _encrypt(self._keks[self._current_id], data_key, aad)
        return Sealed(self._current_id, wrap_nonce + wrapped, sealed.nonce, sealed.ciphertext)

    def needs_rewrap(self, sealed: Sealed) -> bool:
        """Whether ``sealed`` is wrapped under a KEK other than the current one."""
        return sealed.kek_id != self._current_id

    def _unwrap(self, sealed: Sealed, aad: bytes) -> bytes:
        kek = self._keks.get(sealed.kek_id)
        if kek is None:
            raise VaultError(f"{_UNREADABLE} (key-encryption key {sealed.kek_id!r} is not configured)")
        wrapped = sealed.wrapped_key
        data_key = _decrypt(kek, wrapped[:_NONCE_BYTES], wrapped[_NONCE_BYTES:], aad)
        if len(data_key) != _KEY_BYTES:
            raise VaultError(_UNREADABLE)
        return data_key


def new_kek() -> str:
    """Base64 text of 32 random bytes: a fresh KEK for ``SLUICE_KEK``."""
    return base64.b64encode(secrets.token_bytes(_KEY_BYTES)).decode("ascii")


def _decode_kek(text: str, name: str) -> bytes:
    """32 bytes from standard or URL-safe base64, padding optional. Errors name ``name``, never ``text``."""
    text = text.strip().replace("-", "+").replace("_", "/").rstrip("=")
    try:
        kek = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{name} is not valid base64") from None
    if len(kek) != _KEY_BYTES:
        raise ConfigError(f"{name} must be base64 of {_KEY_BYTES} bytes, got {len(kek)} bytes")
    return kek


def _read(environ: Mapping[str, str], name: str, file_name: str) -> str | None:
    """The text of ``name``, or of the file ``file_name`` points at; None if neither is set."""
    value, path = environ.get(name), environ.get(file_name)
    if value and path:
        raise ConfigError(f"set {name} or {file_name}, not both")
    if not path:
        return value or None
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{file_name} cannot be read: {exc.strerror or 'unreadable'}") from None
    except ValueError:  # not UTF-8, or a NUL in the path
        raise ConfigError(f"{file_name} cannot be read: not a readable text file") from None


def load_keks(environ: Mapping[str, str]) -> Vault | None:
    """The vault configured by ``SLUICE_KEK[_FILE]`` and ``SLUICE_KEK_PREVIOUS[_FILE]``; None if unset."""
    current = _read(environ, KEK_ENV, KEK_FILE_ENV)
    if current is None:
        return None
    current_name = KEK_FILE_ENV if environ.get(KEK_FILE_ENV) else KEK_ENV
    previous_text = _read(environ, PREVIOUS_ENV, PREVIOUS_FILE_ENV) or ""
    from_file = bool(environ.get(PREVIOUS_FILE_ENV))
    previous_name = PREVIOUS_FILE_ENV if from_file else PREVIOUS_ENV
    items = previous_text.splitlines() if from_file else previous_text.split(",")
    previous = [
        _decode_kek(item, f"{previous_name} (entry {n})")
        for n, item in enumerate((i for i in items if i.strip()), start=1)
    ]
    return Vault(_decode_kek(current, current_name), previous)
