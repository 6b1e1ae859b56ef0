"""``sluice doctor``: the production-readiness checklist, each item pass / warn / fail with its fix."""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import UTC, datetime

import click
import orjson
from rich.console import Console
from rich.table import Table

from sluice.app import open_ledger, open_services, priced_routes
from sluice.cli.keys import config_opt, data_opt
from sluice.cli.spend import DEMO_EMULATOR, load_cli_config
from sluice.errors import ConfigError, SluiceError
from sluice.readiness import FAIL, Item, checklist, gather
from sluice.settings import Config

_STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red"}


async def _items(config: Config) -> list[Item]:
    svc = open_services(config, os.environ)
    ledger = open_ledger(config, os.environ)
    await svc.store.start()
    await ledger.start()
    try:
        facts = await gather(svc.store, ledger, datetime.now(UTC))
    finally:
        await ledger.close()
        await svc.store.close()
    return checklist(config, priced_routes(config), facts)


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@config_opt
@data_opt
def doctor(as_json: bool, config_path: str | None, data_dir: str | None) -> None:
    """Is this setup ready for real users? Exit status 1 if an item fails."""
    try:
        config = load_cli_config(config_path, data_dir, DEMO_EMULATOR)
        items = asyncio.run(_items(config))
    except (ConfigError, SluiceError) as err:
        click.echo(f"error: {err.message}", err=True)
        sys.exit(2)
    ready = all(i.status != FAIL for i in items)
    if as_json:
        click.echo(orjson.dumps({"ready": ready, "items": [i.as_json() for i in items]}).decode())
    else:
        table = Table(title="Production readiness", title_justify="left")
        for name in ("check", "result", "found", "fix"):
            table.add_column(name)
        for i in items:
            table.add_row(i.name, f"[{_STYLE[i.status]}]{i.status}[/]", i.found, i.fix)
        console = Console()
        console.print(table)
        fails = sum(i.status == FAIL for i in items)
        console.print("[green]ready[/]" if ready else f"[bold red]not ready[/]: {fails} item(s) to fix")
    sys.exit(0 if ready else 1)
