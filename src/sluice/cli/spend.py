"""``sluice spend``: the ledger as a report — a rich table, CSV or JSON."""

from __future__ import annotations

import asyncio
import os
import sys

import click
from rich.console import Console
from rich.table import Table

from sluice.app import open_ledger
from sluice.config_file import load_config, parse_config
from sluice.demo import demo_config
from sluice.emulator import flavor_url
from sluice.errors import ConfigError, SluiceError
from sluice.ledger.report import Report
from sluice.ledger.spend import spend_report
from sluice.settings import Config, ServerSettings

# Without --config, commands that read the routing table see the demo setup (its providers not called).
DEMO_EMULATOR = "http://127.0.0.1:4010"


def load_cli_config(config_path: str | None, data_dir: str | None, emulator_url: str | None = None) -> Config:
    """The config file (or the defaults; with ``emulator_url``, the embedded demo setup, its providers
    played by the emulator there), with the data directory the command line names."""
    if config_path:
        config = load_config(config_path).config
    elif emulator_url is not None:
        config = demo_config(lambda flavor: flavor_url(emulator_url, flavor))
    else:
        config = parse_config("{}").config
    if data_dir:
        server = ServerSettings.model_validate({**config.server.model_dump(), "data_dir": data_dir})
        config = config.model_copy(update={"server": server})
    return config


async def _report(config: Config, by: str, since: str | None, until: str | None, top: int | None) -> Report:
    ledger = open_ledger(config, os.environ)
    await ledger.start()
    try:
        return await spend_report(ledger, by=by, since=since, until=until, top=top)
    finally:
        await ledger.close()


def _table(report: Report) -> Table:
    table = Table(title="Spend", title_justify="left")
    for dim in report.by:
        table.add_column(dim)
    for name in ("requests", "input", "cached", "output", "reasoning", "cost $", "$/request"):
        table.add_column(name, justify="right")
    for name in ("p50 tok", "p95 tok", "month $ (proj.)", "estimated", "cache hits", "saved $"):
        table.add_column(name, justify="right")
    records = report.as_dicts()
    total = report.as_total()
    for rec in [*records, total]:
        table.add_row(
            *(str(rec[d]) if rec[d] is not None else "TOTAL" for d in report.by),
            f"{rec['requests']:,}",
            f"{rec['input_tokens']:,}",
            f"{rec['cache_read_tokens']:,}",
            f"{rec['output_tokens']:,}",
            f"{rec['reasoning_tokens']:,}",
            rec["cost_usd"],
            rec["cost_per_request_usd"],
            f"{rec['tokens_p50']:,}",
            f"{rec['tokens_p95']:,}",
            rec["projected_month_usd"],
            f"{rec['usage_estimated']:,}",
            f"{rec['cache_hits']:,}",
            rec["saved_usd"],
            end_section=rec is records[-1] if records else False,
        )
    return table


@click.command("spend")
@click.option(
    "--by",
    default="feature",
    show_default=True,
    help="Group by: key, user, team, feature, "
    "alias, provider, model, status, endpoint, day, week, month, tag:NAME (comma-separated).",
)
@click.option("--since", help="Start: 7d, 12h, 2w, 2026-11-01 or 2026-11-01T12:00Z (default: 30 days ago).")
@click.option("--until", help="End (exclusive), same forms (default: now).")
@click.option("--top", type=click.IntRange(1), help="Only the N most expensive groups.")
@click.option("--top-features", type=click.IntRange(1), help="Token burn of the N costliest features.")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True
)
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Config file.")
@click.option("--data-dir", help="State directory (default ./.sluice).")
def spend(
    by: str,
    since: str | None,
    until: str | None,
    top: int | None,
    top_features: int | None,
    fmt: str,
    config_path: str | None,
    data_dir: str | None,
) -> None:
    """Report spend and token burn from the ledger, grouped as asked."""
    if top_features is not None:
        by, top = "feature", top_features
    try:
        config = load_cli_config(config_path, data_dir)
        report = asyncio.run(_report(config, by, since, until, top))
    except ConfigError as err:
        click.echo(f"error: {err.message}", err=True)
        sys.exit(1)
    except SluiceError as err:  # a bad --by / --since: the same message the admin API gives
        click.echo(f"error: {err.message}", err=True)
        sys.exit(2)
    if fmt == "json":
        click.echo(report.to_json().decode())
    elif fmt == "csv":
        click.echo(report.to_csv(), nl=False)
    else:
        Console().print(_table(report))
