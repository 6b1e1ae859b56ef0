"""``sluice credits``: each free or trial account's runway — credit left, burn per day, days left,
today's request allowance, expiry — from the ledger and the providers' balance endpoints."""

from __future__ import annotations

import asyncio
import os
import sys
import time

import click
import orjson
from rich.console import Console
from rich.table import Table

from sluice.app import open_ledger, open_upstream
from sluice.cli.keys import config_opt, data_opt
from sluice.cli.spend import load_cli_config
from sluice.credits import poll_balances, runways
from sluice.errors import ConfigError, SluiceError
from sluice.providers.accounts import Runway, account_of
from sluice.settings import Config


async def _runways(config: Config, poll: bool) -> list[Runway]:
    accounts = [a for a in map(account_of, config.providers) if a.watched]
    balances = {}
    if poll and accounts:
        upstream = open_upstream(config, os.environ)
        try:
            balances = await poll_balances(upstream, accounts)
        finally:
            await upstream.close()
    ledger = open_ledger(config, os.environ)
    await ledger.start()
    try:
        return await runways(accounts, ledger, time.time_ns() // 1000, balances)
    finally:
        await ledger.close()


def _cell(value: object, suffix: str = "") -> str:
    return "—" if value is None else f"{value}{suffix}"


@click.command("credits")
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table.")
@click.option("--no-poll", is_flag=True, help="Do not ask the providers' balance endpoints.")
@config_opt
@data_opt
def credits_cmd(as_json: bool, no_poll: bool, config_path: str | None, data_dir: str | None) -> None:
    """The runway of every free or trial account (and any with credits or a daily allowance)."""
    try:
        config = load_cli_config(config_path, data_dir)
        found = asyncio.run(_runways(config, not no_poll))
    except (ConfigError, SluiceError) as err:
        click.echo(f"error: {err.message}", err=True)
        sys.exit(1)
    rows = [r.as_json() for r in found]
    if as_json:
        for row in rows:
            click.echo(orjson.dumps(row).decode())
        return
    if not rows:
        click.echo("No free or trial accounts, and none with credits or a daily allowance, are configured.")
        return
    table = Table(title="Credit runway", title_justify="left")
    for name in ("provider", "plan", "remaining", "burn/day", "days left", "today", "resets", "expires"):
        table.add_column(name)
    for row in rows:
        remaining = _cell(row["remaining_usd"])
        if row["remaining_usd"] is not None:
            remaining = f"${remaining} ({row['remaining_from']})"
        today = "—"
        if row["daily_requests"] is not None:
            today = f"{row['requests_left_today']}/{row['daily_requests']} left"
        expires = _cell(row["expires"])
        if row["days_to_expiry"] is not None:
            expires += f" ({row['days_to_expiry']} d)"
        table.add_row(
            str(row["provider"]),
            str(row["plan"]),
            remaining,
            f"${row['burn_per_day_usd']}",
            _cell(row["days_left"]),
            today,
            str(row["next_reset"]),
            expires,
        )
    Console().print(table)
