"""``sluice secrets``: provider keys stored encrypted, and the key-encryption key (KEK) that guards them.

    sluice secrets new-kek                      print a fresh KEK (set it as SLUICE_KEK on every instance)
    sluice secrets add PROVIDER [--label L]     store a key for a provider account (read from stdin)
    sluice secrets list                         stored keys: id, provider, label, fingerprint
    sluice secrets remove ID                    delete one
    sluice secrets rotate-kek                   re-wrap every stored key under SLUICE_KEK (online)

Rotating the KEK without downtime: give every instance the new KEK as SLUICE_KEK and the old one as
SLUICE_KEK_PREVIOUS (a rolling restart), run ``sluice secrets rotate-kek``, then drop the old one.
Servers hold the keys they decrypted at start, so requests never wait on a rotation.
"""

from __future__ import annotations

import sys

import click
import orjson

from sluice.api.admin import provider_key_json
from sluice.app import Services
from sluice.cli.keys import config_opt, data_opt, run_on_store
from sluice.keys.vault import new_kek


@click.group()
def secrets() -> None:
    """Provider keys stored encrypted, and their key-encryption key."""


@secrets.command("new-kek")
def secrets_new_kek() -> None:
    """Print a new key-encryption key (base64 of 32 random bytes)."""
    click.echo(new_kek())


@secrets.command("add")
@click.argument("provider")
@click.option("--label", default="", help="A note for people (which account, who made it).")
@config_opt
@data_opt
def secrets_add(provider: str, label: str, config_path: str | None, data_dir: str | None) -> None:
    """Store a key for PROVIDER, read from standard input (so it stays out of shell history)."""
    secret = sys.stdin.readline().strip()
    row = run_on_store(config_path, data_dir, lambda svc: svc.provider_keys.add(provider, secret, label))
    click.echo(f"stored {row.id} for {row.provider} ({row.fingerprint})")
    click.echo("running servers pick it up at their next start (or add keys through the admin API)", err=True)


@secrets.command("list")
@config_opt
@data_opt
def secrets_list(config_path: str | None, data_dir: str | None) -> None:
    """List stored provider keys (fingerprints only)."""

    async def rows(svc: Services) -> list[dict[str, object]]:
        return [provider_key_json(svc.provider_keys, r) for r in await svc.provider_keys.all()]

    for row in run_on_store(config_path, data_dir, rows):
        click.echo(orjson.dumps(row).decode())


@secrets.command("remove")
@click.argument("key_id")
@config_opt
@data_opt
def secrets_remove(key_id: str, config_path: str | None, data_dir: str | None) -> None:
    """Delete a stored provider key."""
    row = run_on_store(config_path, data_dir, lambda svc: svc.provider_keys.remove(key_id))
    click.echo(f"removed {row.id} ({row.provider}, {row.fingerprint})")


@secrets.command("rotate-kek")
@config_opt
@data_opt
def secrets_rotate_kek(config_path: str | None, data_dir: str | None) -> None:
    """Re-wrap every stored key under SLUICE_KEK (the old KEK in SLUICE_KEK_PREVIOUS)."""
    done, failed = run_on_store(config_path, data_dir, lambda svc: svc.provider_keys.rotate_kek())
    click.echo(f"re-wrapped {done} key(s) under the current KEK")
    if failed:
        click.echo(
            f"error: {failed} key(s) could not be unwrapped with SLUICE_KEK/SLUICE_KEK_PREVIOUS", err=True
        )
        sys.exit(1)
