"""Provider API keys kept server-side, encrypted at rest (see ``sluice.keys.vault``).

Besides a provider's ``api_key: env:NAME`` in the config, an admin may store more keys for the same
provider account through the admin API or ``sluice secrets add``. Each is sealed under its own data key,
bound to its row; only ciphertext and a fingerprint reach the database, only the fingerprint reaches any
API. The gateway decrypts them once (at start, and when they change) and uses them in turn, stepping
past a key the provider refuses (401, 402) or throttles (429).
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass

from sluice.errors import InvalidRequest, NotFound, ServiceUnavailable, VaultError
from sluice.keys.vault import Sealed, Vault, fingerprint
from sluice.store.keys import KeyStore, ProviderKeyRow

log = logging.getLogger("sluice.keys")
MAX_SECRET = 4096


@dataclass(frozen=True, slots=True)
class Opened:
    """A stored key, decrypted (``secret`` is None when it cannot be: wrong KEK, or a copied row)."""

    row: ProviderKeyRow
    secret: str | None


class ProviderKeys:
    """Add, list, remove and decrypt stored provider keys; re-wrap them under a new KEK."""

    def __init__(self, store: KeyStore, vault: Vault | None, providers: set[str]) -> None:
        self._store = store
        self._vault = vault
        self._providers = providers

    def _need_vault(self) -> Vault:
        if self._vault is None:
            raise ServiceUnavailable(
                "Storing provider keys needs a key-encryption key: set SLUICE_KEK (or SLUICE_KEK_FILE) "
                "on every instance; `sluice secrets new-kek` makes one."
            )
        return self._vault

    async def add(self, provider: str, secret: str, label: str = "") -> ProviderKeyRow:
        """Encrypt and store a key for a configured provider account."""
        vault = self._need_vault()
        if provider not in self._providers:
            raise InvalidRequest(f"No provider {provider!r} in the config.", param="provider")
        secret = secret.strip()
        if not secret or len(secret) > MAX_SECRET or any(c.isspace() for c in secret):
            raise InvalidRequest("The key must be one token without spaces.", param="key")
        key_id = f"pk_{secrets.token_hex(8)}"
        binding = f"provider_key:{key_id}:{provider}"
        row = ProviderKeyRow(
            id=key_id,
            provider=provider,
            label=label[:128],
            sealed=vault.seal(secret, binding).to_text(),
            fingerprint=fingerprint(secret),
            created_at=int(time.time()),
        )
        await self._store.insert_provider_key(row)
        return row

    async def all(self) -> list[ProviderKeyRow]:
        """Every stored key (ciphertext and fingerprint only)."""
        return await self._store.list_provider_keys()

    async def remove(self, key_id: str) -> ProviderKeyRow:
        """Delete a stored key."""
        row = next((r for r in await self.all() if r.id == key_id), None)
        if row is None or not await self._store.delete_provider_key(key_id):
            raise NotFound(f"No provider key with id {key_id!r}.")
        return row

    async def opened(self) -> list[Opened]:
        """Every stored key, decrypted where possible (a key that cannot be is logged, never used)."""
        out: list[Opened] = []
        for row in await self.all():
            secret: str | None = None
            if self._vault is not None:
                try:
                    secret = self._vault.open(_sealed(row), row.binding)
                except VaultError as exc:
                    # the message says why; a traceback would add nothing (and shows no key either way)
                    log.error("provider key %s (%s) cannot be used: %s", row.id, row.provider, exc.message)  # noqa: TRY400
            out.append(Opened(row, secret))
        return out

    def usable(self, row: ProviderKeyRow) -> bool:
        """True if this instance's KEKs can decrypt the key (checked without decrypting the payload)."""
        if self._vault is None:
            return False
        try:
            sealed = _sealed(row)
            self._vault.rewrap(sealed, row.binding)
        except VaultError:
            return False
        return True

    async def rotate_kek(self) -> tuple[int, int]:
        """Re-wrap every key not under the current KEK (online: compare-and-set per row). Returns
        (re-wrapped, left as they were because they cannot be unwrapped)."""
        vault = self._need_vault()
        done = failed = 0
        for row in await self.all():
            sealed = _sealed(row)
            if not vault.needs_rewrap(sealed):
                continue
            try:
                new = vault.rewrap(sealed, row.binding).to_text()
            except VaultError as exc:
                log.error("provider key %s cannot be re-wrapped: %s", row.id, exc.message)  # noqa: TRY400
                failed += 1
                continue
            if await self._store.reseal_provider_key(row.id, row.sealed, new):
                done += 1
        return done, failed


def _sealed(row: ProviderKeyRow) -> Sealed:
    return Sealed.from_text(row.sealed)
