"""``sluice smoke``: test every configured deployment for real — key, model, latency, stream, usage,
JSON mode, a tool round trip, error shape, rate-limit headers, pricing — under a spend cap, with a
progress display; results as a table, JSON or an HTML report, kept with history for ``--compare``."""

from __future__ import annotations

import asyncio
import os
import sys
from decimal import Decimal, InvalidOperation
from pathlib import Path

import click
import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sluice.accounting import Accounting
from sluice.app import open_ledger, open_limiter, open_services, open_upstream, priced_routes
from sluice.cli.keys import config_opt, data_opt
from sluice.cli.spend import load_cli_config
from sluice.emulator import Emulator
from sluice.errors import ConfigError, SluiceError
from sluice.metrics import Metrics
from sluice.settings import Config
from sluice.smoke import history
from sluice.smoke.html import render
from sluice.smoke.report import (
    CHAT_CHECKS,
    EMBED_CHECKS,
    LIGHT_CHECKS,
    REGRESSIONS,
    Drift,
    RunReport,
    compare,
    usd,
)
from sluice.smoke.runner import SmokeRunner, select
from sluice.store.keys import KeyRow

_STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}


async def _run(
    config_path: str | None,
    data_dir: str | None,
    patterns: tuple[str, ...],
    cap: int | None,
    light: bool,
    store_it: bool,
    console: Console | None,
) -> tuple[Config, RunReport, RunReport | None]:
    emulator = None
    if not config_path:  # the embedded demo setup: its providers played by an emulator, as it serves
        emulator = Emulator()
        await emulator.start()
    try:
        config = load_cli_config(config_path, data_dir, emulator.url if emulator is not None else None)
        run, before = await _smoke(config, patterns, cap, light, store_it, console)
        return config, run, before
    finally:
        if emulator is not None:
            await emulator.stop()


async def _smoke(
    config: Config,
    patterns: tuple[str, ...],
    cap: int | None,
    light: bool,
    store_it: bool,
    console: Console | None,
) -> tuple[RunReport, RunReport | None]:
    svc = open_services(config, os.environ)
    ledger = open_ledger(config, os.environ)
    limiter = open_limiter(config, os.environ)
    upstream = open_upstream(config, os.environ)
    routes = priced_routes(config)
    runner = SmokeRunner(routes, upstream, Accounting(ledger, Metrics(), limiter), config.smoke)
    await svc.store.start()
    await ledger.start()

    async def no_keys() -> list[KeyRow]:  # a run counts on its own cap and the provider accounts
        return []

    try:
        await limiter.start(ledger, no_keys)
        targets = select(routes, patterns)
        if not targets:
            raise ConfigError(f"no deployment matches {' '.join(patterns) or 'the config'}")
        total = sum(
            len(
                [
                    c
                    for c in (EMBED_CHECKS if r.mode == "embedding" else CHAT_CHECKS)
                    if not light or c in LIGHT_CHECKS
                ]
            )
            for r, _ in targets
        )
        with Progress(
            TextColumn("[bold]smoke[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console,
            disable=console is None,
            transient=True,
        ) as bar:
            task = bar.add_task("", total=total)

            def advance(dep_id: str, check: str) -> None:
                bar.update(task, advance=1, description=f"{dep_id}: {check}")

            run = await runner.run(patterns, cap_nanos=cap, light=light, progress=advance)
        before = await history.previous(svc.store, run)
        if store_it:
            await history.keep(svc.store, run, config.smoke.keep_runs)
        return run, before
    finally:
        await ledger.close()  # settles every row first
        await upstream.close()
        await limiter.counters.close()
        await svc.store.close()


def _table(run: RunReport) -> Table:
    """A row per check, grouped by deployment (readable in a narrow terminal)."""
    table = Table(title=f"Smoke run {run.id}", title_justify="left")
    for name in ("deployment", "check", "result", "detail"):
        table.add_column(name)
    for dep in run.deployments:
        for i, check in enumerate(dep.checks):
            who = f"{dep.id}\n[dim]{dep.alias} · ${usd(dep.cost_nanos)}[/]" if i == 0 else ""
            style = _STYLE.get(check.status, "")
            table.add_row(
                who,
                check.name,
                f"[{style}]{check.status}[/]",
                check.detail,
                end_section=i == len(dep.checks) - 1,
            )
    return table


def _drift_table(drift: list[Drift]) -> Table:
    table = Table(title="Drift from the previous run", title_justify="left")
    for name in ("deployment", "check", "change", "detail"):
        table.add_column(name)
    for d in drift:
        style = "bold red" if d.kind in REGRESSIONS else "green" if d.kind == "recovered" else ""
        table.add_row(d.deployment, d.check, f"[{style}]{d.kind}[/]" if style else d.kind, d.detail)
    return table


class _Dollars(click.ParamType[Decimal, object]):
    """A non-negative amount of USD, exactly (a usage error, exit 2, otherwise)."""

    name = "usd"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> Decimal:
        try:
            amount = value if isinstance(value, Decimal) else Decimal(str(value).strip())
        except InvalidOperation:
            self.fail(f"{value!r} is not an amount in USD", param, ctx)
        if not amount.is_finite() or amount < 0 or amount > _MAX_USD:
            self.fail(f"{value!r} must be an amount from 0 to {_MAX_USD} USD", param, ctx)
        return amount


_MAX_USD = Decimal(1_000_000)
_USD = _Dollars()


@click.command("smoke")
@click.argument("patterns", nargs=-1)
@click.option("--max-usd", type=_USD, help="Spend cap of the whole run (default: smoke.max_usd).")
@click.option("--light", is_flag=True, help="Only a completion and a stream per deployment (as a canary).")
@click.option("--compare", is_flag=True, help="Show the drift from the previous run; regressions fail.")
@click.option("--json", "as_json", is_flag=True, help="The run as JSON instead of a table.")
@click.option(
    "--html", "html_path", type=click.Path(dir_okay=False, writable=True), help="Write an HTML report."
)
@click.option("--no-store", is_flag=True, help="Do not keep this run in the history.")
@config_opt
@data_opt
def smoke(
    patterns: tuple[str, ...],
    max_usd: Decimal | None,
    light: bool,
    compare: bool,
    as_json: bool,
    html_path: str | None,
    no_store: bool,
    config_path: str | None,
    data_dir: str | None,
) -> None:
    """Test the deployments (all, or those matching PATTERNS: aliases, providers, provider/model; globs
    allowed). Exit status 1 if a check failed (with --compare: or a check regressed)."""
    console = Console(stderr=True) if not as_json and sys.stderr.isatty() else None
    try:
        cap = int(max_usd.scaleb(9)) if max_usd is not None else None
        config, run, before = asyncio.run(
            _run(config_path, data_dir, patterns, cap, light, not no_store, console)
        )
    except (ConfigError, SluiceError) as err:
        click.echo(f"error: {err.message}", err=True)
        sys.exit(2)
    drift = compare_runs(before, run, config) if compare else []
    if patterns:  # a selection: the deployments it left out are not gone
        drift = [d for d in drift if d.kind != "gone"]
    if html_path:
        Path(html_path).write_text(render(run, drift), encoding="utf-8")
    if as_json:
        out = run.as_json()
        if compare:
            out["compared_with"] = before.id if before is not None else None
            out["drift"] = [d.as_json() for d in drift]
        click.echo(orjson.dumps(out).decode())
    else:
        show = Console()
        show.print(_table(run))
        show.print(
            f"{'[green]pass[/]' if run.ok else '[bold red]fail[/]'} · spent ${usd(run.cost_nanos)} of the "
            f"${usd(run.cap_nanos)} cap · {sum(d.input_tokens for d in run.deployments):,} tokens in, "
            f"{sum(d.output_tokens for d in run.deployments):,} out"
        )
        if compare:
            if before is None:
                show.print("no previous run to compare with")
            elif drift:
                show.print(_drift_table(drift))
            else:
                show.print(f"no drift since {before.id}")
    regressed = any(d.kind in REGRESSIONS for d in drift)
    sys.exit(1 if not run.ok or regressed else 0)


def compare_runs(before: RunReport | None, run: RunReport, config: Config) -> list[Drift]:
    """The drift since ``before`` (none without one)."""
    return [] if before is None else compare(before, run, slower=config.smoke.slower_factor)
