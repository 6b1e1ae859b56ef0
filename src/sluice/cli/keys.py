"""``sluice keys``: create, show, change, rotate, block and revoke virtual keys from the shell.

The same operations as the admin API (``/admin/keys``), on the configured store. A running server
notices a change when it next loads the key (within ``server.key_cache_ttl_s``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import click
import orjson
from pydantic import ValidationError

from sluice.api.admin import key_json
from sluice.app import Services, open_services
from sluice.cli.spend import load_cli_config
from sluice.errors import ConfigError, SluiceError
from sluice.keys.spec import KeyChange, KeyCreate
from sluice.store.keys import KeyRow

T = TypeVar("T")


@click.group()
def keys() -> None:
    """Create, list, change and revoke virtual keys."""


config_opt = click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Config file.")
data_opt = click.option("--data-dir", help="State directory (default ./.sluice).")


def run_on_store(
    config_path: str | None, data_dir: str | None, work: Callable[[Services], Awaitable[T]]
) -> T:
    """Open the configured store, run ``work`` on it, and turn failures into a message and exit 1."""
    try:
        svc = open_services(load_cli_config(config_path, data_dir), os.environ)
        return svc.run(lambda: work(svc))
    except (ConfigError, SluiceError) as err:
        click.echo(f"error: {err.message}", err=True)
        sys.exit(1)


def _limits(items: tuple[str, ...], option: str) -> dict[str, Any] | None:
    """``usd.day=5 requests_per_minute=60`` → ``{"usd": {"day": "5"}, "requests_per_minute": "60"}``."""
    if not items:
        return None
    out: dict[str, Any] = {}
    for item in items:
        path, sep, value = item.partition("=")
        if not sep or not path:
            raise click.BadParameter(f"expected NAME=VALUE, e.g. usd.day=5 (got {item!r})", param_hint=option)
        head, _, tail = path.partition(".")
        if tail:
            out.setdefault(head, {})[tail] = value
        else:
            out[head] = value
    return out


def _change(model: type[KeyChange], fields: dict[str, Any]) -> KeyChange:
    try:
        return model.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise click.BadParameter(f"{where}: {first['msg']}") from None


_settings_opts = [
    click.option("--owner", help="Who the key belongs to."),
    click.option("--team", help="Team or project (ledger column and team budget)."),
    click.option("--model", "models", multiple=True, help="Allowed model alias (repeat); default: all."),
    click.option("--expires", help="Expiry, ISO 8601 (UTC if no zone), e.g. 2027-01-31."),
    click.option(
        "--limit", "limits", multiple=True, help="Key limit, e.g. usd.day=5, requests_per_minute=60."
    ),
    click.option(
        "--user-limit", "user_limits", multiple=True, help="Each end user's quota, e.g. usd.day=0.5."
    ),
    click.option("--feature", "features", multiple=True, help="Allowed feature tag (repeat); default: any."),
    click.option("--tag", "tags", multiple=True, help="Allowed tag key or key=value (repeat); default: any."),
    click.option(
        "--require-feature/--no-require-feature", default=None, help="Refuse requests without a feature."
    ),
    click.option(
        "--log-content/--no-log-content", default=None, help="Store prompts and answers in the ledger."
    ),
    click.option("--meta", "metadata", multiple=True, help="Metadata pair KEY=VALUE (repeat)."),
]


def _with_settings(fn: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(_settings_opts):
        fn = option(fn)
    return fn


def _fields(opts: dict[str, Any]) -> dict[str, Any]:
    """The settings options as a ``KeyChange`` body (options not given are left out)."""
    lists = {name: list(opts[name]) or None for name in ("models", "features", "tags")}
    return {
        "owner": opts["owner"],
        "team": opts["team"],
        **lists,
        "expires_at": opts["expires"],
        "limits": _limits(opts["limits"], "--limit"),
        "user_limits": _limits(opts["user_limits"], "--user-limit"),
        "require_feature": opts["require_feature"],
        "log_content": opts["log_content"],
        "metadata": dict(item.partition("=")[::2] for item in opts["metadata"]) or None,
    }


def _echo(row: KeyRow, secret: str | None = None) -> None:
    click.echo(orjson.dumps(key_json(row, secret=secret), option=orjson.OPT_INDENT_2).decode())
    if secret is not None:
        click.echo("(the key is shown once; store it now)", err=True)


@keys.command("create")
@click.option("--name", required=True, help="A name for the key (who or what uses it).")
@_with_settings
@config_opt
@data_opt
def keys_create(name: str, config_path: str | None, data_dir: str | None, **opts: Any) -> None:
    """Create a key; it is shown once and stored only as a digest."""
    change = _change(KeyCreate, {"name": name, **_fields(opts)})
    secret, row = run_on_store(config_path, data_dir, lambda svc: svc.keys.create_from(change))
    _echo(row, secret)


@keys.command("update")
@click.argument("key_id")
@click.option("--name", help="A new name.")
@_with_settings
@config_opt
@data_opt
def keys_update(
    key_id: str, name: str | None, config_path: str | None, data_dir: str | None, **opts: Any
) -> None:
    """Change a key's settings (options not given are kept)."""
    change = _change(KeyChange, {"name": name, **_fields(opts)})
    _echo(run_on_store(config_path, data_dir, lambda svc: svc.keys.update(key_id, change)))


@keys.command("list")
@config_opt
@data_opt
def keys_list(config_path: str | None, data_dir: str | None) -> None:
    """List keys (never the keys themselves)."""
    rows = run_on_store(config_path, data_dir, lambda svc: svc.keys.all())
    if not rows:
        click.echo("no keys")
    for r in rows:
        j = key_json(r)
        created = datetime.fromtimestamp(r.created_at, UTC).strftime("%Y-%m-%d %H:%M")
        models = ",".join(r.models) if r.models else "*"
        p = r.policy
        extra = "".join(
            [
                f"  owner={r.owner}" if r.owner else "",
                f"  team={p.team}" if p.team else "",
                f"  features={','.join(sorted(p.features))}" if p.features is not None else "",
                f"  tags={','.join(sorted(p.tags))}" if p.tags is not None else "",
                "  require-feature" if p.require_feature else "",
                "  log-content" if p.log_content else "",
                f"  limits={orjson.dumps(j['limits']).decode()}" if r.limits else "",
                f"  user-limits={orjson.dumps(j['user_limits']).decode()}" if r.user_limits else "",
            ]
        )
        click.echo(f"{r.id}  {j['status']:<7}  {created}  {r.hint}  {r.name}  models={models}{extra}")


@keys.command("show")
@click.argument("key_id")
@config_opt
@data_opt
def keys_show(key_id: str, config_path: str | None, data_dir: str | None) -> None:
    """Show one key as JSON."""
    _echo(run_on_store(config_path, data_dir, lambda svc: svc.keys.get(key_id)))


@keys.command("rotate")
@click.argument("key_id")
@config_opt
@data_opt
def keys_rotate(key_id: str, config_path: str | None, data_dir: str | None) -> None:
    """Give a key a new secret (its id, settings and spend stay); the old secret stops working."""
    secret, row = run_on_store(config_path, data_dir, lambda svc: svc.keys.rotate(key_id))
    _echo(row, secret)


@keys.command("block")
@click.argument("key_id")
@click.option("--undo", is_flag=True, help="Unblock instead.")
@config_opt
@data_opt
def keys_block(key_id: str, undo: bool, config_path: str | None, data_dir: str | None) -> None:
    """Refuse a key's requests until unblocked (reversible, unlike revoke)."""
    row = run_on_store(config_path, data_dir, lambda svc: svc.keys.set_blocked(key_id, not undo))
    click.echo(f"{'unblocked' if undo else 'blocked'} {row.id}")


@keys.command("revoke")
@click.argument("key_id")
@config_opt
@data_opt
def keys_revoke(key_id: str, config_path: str | None, data_dir: str | None) -> None:
    """Revoke a key by id, for good."""
    row = run_on_store(config_path, data_dir, lambda svc: svc.keys.revoke(key_id))
    click.echo(f"revoked {row.id}")


@keys.command("reset-admin")
@config_opt
@data_opt
def keys_reset_admin(config_path: str | None, data_dir: str | None) -> None:
    """Replace the stored admin key and print the new one once."""
    click.echo(run_on_store(config_path, data_dir, lambda svc: svc.keys.reset_admin_key()))
