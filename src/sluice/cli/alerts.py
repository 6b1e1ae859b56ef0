"""``sluice alerts``: send a test alert to a channel, and show the alert log with each delivery."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime

import click
import orjson
from rich.console import Console
from rich.table import Table

from sluice.app import open_alerts, open_ledger, open_limiter, open_services
from sluice.cli.keys import config_opt, data_opt
from sluice.cli.spend import load_cli_config
from sluice.errors import ConfigError, SluiceError
from sluice.metrics import Metrics
from sluice.store.alerts import SENT, AlertRow


@click.group()
def alerts() -> None:
    """Test alert channels and read the alert log."""


def _when(us: int) -> str:
    return datetime.fromtimestamp(us // 1_000_000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _deliveries(row: AlertRow) -> str:
    parts = []
    for d in row.deliveries:
        extra = f", {d.attempts} tries" if d.attempts > 1 else ""
        error = f" ({d.last_error})" if d.last_error and d.status != SENT else ""
        parts.append(f"{d.channel}: {d.status}{extra}{error}")
    return "\n".join(parts) or "—"


@alerts.command("test")
@click.argument("channel")
@config_opt
@data_opt
def test(channel: str, config_path: str | None, data_dir: str | None) -> None:
    """Send a test alert to CHANNEL now (one attempt) and log it; exit 1 if it was not taken."""
    try:
        config = load_cli_config(config_path, data_dir)
        svc = open_services(config, os.environ)
        ledger = open_ledger(config, os.environ)  # not started: a test touches no ledger
        service = open_alerts(
            config, os.environ, svc.store, ledger, open_limiter(config, os.environ), Metrics()
        )

        async def send() -> AlertRow:
            try:
                return await service.send_test(channel)
            finally:
                await service.close()

        row = svc.run(send)
    except (ConfigError, SluiceError) as err:
        click.echo(f"error: {err.message}", err=True)
        sys.exit(1)
    delivery = row.deliveries[0]
    if delivery.status != SENT:
        click.echo(f"{channel}: failed: {delivery.last_error} (logged as {row.id})", err=True)
        sys.exit(1)
    click.echo(f"{channel}: sent (logged as {row.id})")


@alerts.command("list")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True, help="How many.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table.")
@config_opt
@data_opt
def list_(limit: int, as_json: bool, config_path: str | None, data_dir: str | None) -> None:
    """The alert log, newest first, with each channel's delivery status."""
    try:
        config = load_cli_config(config_path, data_dir)
        svc = open_services(config, os.environ)
        rows = svc.run(lambda: svc.store.list_alerts(limit))
    except (ConfigError, SluiceError) as err:
        click.echo(f"error: {err.message}", err=True)
        sys.exit(1)
    if as_json:
        for row in rows:
            click.echo(orjson.dumps(row.public()).decode())
        return
    table = Table(title="Alerts", title_justify="left")
    for name in ("time (UTC)", "rule", "scope", "summary", "deliveries"):
        table.add_column(name)
    for row in rows:
        table.add_row(_when(row.created_us), row.rule, row.scope, row.summary, _deliveries(row))
    Console().print(table)
