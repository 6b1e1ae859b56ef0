"""``sluice burn --top 3``: the token mix of the top workflows, priced under every configured
deployment, side by side with the last smoke run — the table to choose a paid primary and a fallback."""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import UTC, datetime
from typing import Any

import click
import orjson
from rich.console import Console
from rich.table import Table

from sluice.app import open_ledger, open_services, priced_routes
from sluice.cli.keys import config_opt, data_opt
from sluice.cli.spend import DEMO_EMULATOR, load_cli_config
from sluice.errors import ConfigError, SluiceError
from sluice.ledger import burn
from sluice.ledger.report import parse_time, to_us
from sluice.ledger.spend import DEFAULT_WINDOW
from sluice.settings import Config
from sluice.smoke import history
from sluice.smoke.report import PASS, RunReport, usd

_FEATURES = ("stream_usage", "json_mode", "tool_call")


async def _read(config: Config, since_us: int, until_us: int) -> tuple[list[Any], RunReport | None]:
    svc = open_services(config, os.environ)
    ledger = open_ledger(config, os.environ)
    await svc.store.start()
    await ledger.start()
    try:
        rows = await ledger.rows(since_us, until_us, burn.COLUMNS)
        last = next(iter(await history.recent(svc.store, 10, light=False)), None)
    finally:
        await ledger.close()
        await svc.store.close()
    return rows, last


def _smoke_facts(run: RunReport | None, dep_id: str) -> dict[str, Any]:
    rep = next((d for d in run.deployments if d.id == dep_id), None) if run is not None else None
    if rep is None:
        return {"smoke": None, "latency_ms": None, "works": []}
    complete = rep.check("complete") or rep.check("embed")
    latency = complete.data.get("latency_ms") if complete is not None else None
    works = [n for n in _FEATURES if (c := rep.check(n)) is not None and c.status == PASS]
    return {"smoke": rep.status, "latency_ms": latency, "works": works}


def _money(nanos: int | None) -> str | None:
    return None if nanos is None else usd(nanos)


@click.command("burn")
@click.option("--top", type=click.IntRange(1, 50), default=3, show_default=True, help="How many workflows.")
@click.option("--since", help="Start of the window (ISO date or time, or 7d / 24h ago). Default: 30 days.")
@click.option("--until", help="End of the window (default: now).")
@click.option("--json", "as_json", is_flag=True, help="JSON lines (one per workflow) instead of tables.")
@config_opt
@data_opt
def burn_cmd(
    top: int,
    since: str | None,
    until: str | None,
    as_json: bool,
    config_path: str | None,
    data_dir: str | None,
) -> None:
    """What the top workflows (features) would cost on each configured provider and model."""
    now = datetime.now(UTC)
    try:
        config = load_cli_config(config_path, data_dir, DEMO_EMULATOR)
        end = parse_time(until, now) if until else now
        start = parse_time(since, now) if since else end - DEFAULT_WINDOW
        if start >= end:
            raise ConfigError("--since must be before --until")
        rows, last = asyncio.run(_read(config, to_us(start), to_us(end)))
        routes = priced_routes(config)
    except (ConfigError, SluiceError) as err:
        click.echo(f"error: {err.message}", err=True)
        sys.exit(2)
    flows = burn.workflows(rows, top)
    first = min((int(r[2]) for r in rows), default=to_us(end))
    span = burn.window_us(first, to_us(end))  # the volume seen since the first request of the window
    out: list[dict[str, Any]] = []
    for flow in flows:
        tokens_in, tokens_out = flow.tokens
        n = len(flow.requests)
        options = [
            {
                "deployment": p.deployment,
                "alias": p.alias,
                "per_request_usd": _money(p.per_request()),
                "per_1000_usd": _money(p.per_thousand()),
                "per_month_usd": _money(p.per_month()),
                "total_usd": _money(p.total_nanos),
                **_smoke_facts(last, p.deployment),
            }
            for p in burn.price(flow, routes, span)
        ]
        out.append(
            {
                "feature": flow.feature,
                "mode": flow.mode,
                "requests": n,
                "input_tokens_per_request": round(tokens_in / n, 1),
                "output_tokens_per_request": round(tokens_out / n, 1),
                "actual_usd": usd(flow.actual_nanos),
                "window_days": round(span / 86_400_000_000, 3),
                "smoke_run": last.id if last is not None else None,
                "options": options,
            }
        )
    if as_json:
        for item in out:
            click.echo(orjson.dumps(item).decode())
        return
    console = Console()
    if not out:
        console.print(
            "No requests with tokens in the window: tag requests with x-sluice-feature and look again."
        )
        return
    for item in out:
        title = (
            f"{item['feature']} ({item['mode']}): {item['requests']:,} requests, "
            f"{item['input_tokens_per_request']:g} in / {item['output_tokens_per_request']:g} out each, "
            f"${item['actual_usd']} as served"
        )
        table = Table(title=title, title_justify="left")
        for name in ("deployment", "per request", "per 1,000", "per month", "latency", "smoke", "works"):
            table.add_column(name, justify="right" if name.startswith("per") else "left")
        for o in item["options"]:
            unpriced = o["per_request_usd"] is None
            table.add_row(
                o["deployment"],
                "unpriced" if unpriced else f"${o['per_request_usd']}",
                "" if unpriced else f"${o['per_1000_usd']}",
                "" if unpriced else f"${o['per_month_usd']}",
                f"{o['latency_ms']:g} ms" if o["latency_ms"] is not None else "—",
                o["smoke"] or "not run",
                ", ".join(o["works"]) or "—",
            )
        console.print(table)
