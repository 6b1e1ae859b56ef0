"""The ``sluice`` command: serve, emulate, config check/docs, keys, spend."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import sys
from collections.abc import Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import click
from pydantic import ValidationError

from sluice import __version__
from sluice.app import (
    Services,
    create_app,
    open_limiter,
    open_services,
    priced_routes,
    unpriced,
    unshared_budgets,
)
from sluice.config_file import LoadedConfig, load_config, parse_config, render_docs
from sluice.demo import DEMO_PRESETS, demo_config, real_presets
from sluice.emulator import Emulator, flavor_url
from sluice.errors import ConfigError
from sluice.keys.service import ADMIN_ENV
from sluice.metrics import share_between_workers
from sluice.settings import Config, ServerSettings

EMULATOR_URL_ENV = "SLUICE_DEMO_EMULATOR_URL"
CONFIG_ENV = "SLUICE_CONFIG_FILE"


def _fail(err: ConfigError) -> None:
    click.echo(f"error: {err.message}", err=True)
    for problem in err.problems:
        if problem != err.message:
            click.echo(f"  {problem}", err=True)
    sys.exit(1)


def load_for_serving(config_path: str | None, emulator_url: str | None = None) -> LoadedConfig:
    """The config from a file, or the embedded demo config (emulated providers at ``emulator_url``)."""
    if config_path:
        return load_config(config_path)
    if emulator_url is None:
        return LoadedConfig(demo_config(None))
    return LoadedConfig(demo_config(lambda flavor: flavor_url(emulator_url, flavor)))


def _with_server(config: Config, **changes: object) -> Config:
    """The config with command-line overrides of server settings, validated like the file."""
    updates = {k: v for k, v in changes.items() if v is not None}
    if not updates:
        return config
    try:
        server = ServerSettings.model_validate({**config.server.model_dump(), **updates})
    except ValidationError as exc:
        problems = [f"--{'.'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}" for e in exc.errors()]
        raise ConfigError("invalid command-line option", problems) from exc
    return config.model_copy(update={"server": server})


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


class _LazyGroup(click.Group):
    """Subcommands imported when they are run or listed, not at every start: ``sluice serve`` never
    loads the reports' modules and rich (~3 MB of resident memory per worker, and start-up time)."""

    LAZY: ClassVar[dict[str, str]] = {
        "alerts": "sluice.cli.alerts:alerts",
        "burn": "sluice.cli.burn:burn_cmd",
        "credits": "sluice.cli.credits:credits_cmd",
        "doctor": "sluice.cli.doctor:doctor",
        "keys": "sluice.cli.keys:keys",
        "secrets": "sluice.cli.secrets:secrets",
        "smoke": "sluice.cli.smoke:smoke",
        "spend": "sluice.cli.spend:spend",
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.LAZY})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = self.LAZY.get(cmd_name)
        if target is None:
            return super().get_command(ctx, cmd_name)
        module, attr = target.split(":")
        command = getattr(importlib.import_module(module), attr)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=_LazyGroup)
@click.version_option(__version__, prog_name="sluice")
def main() -> None:
    """Sluice: a fast, exact, small gateway for LLM APIs."""


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML config file.")
@click.option("--host", help="Interface to listen on (default 127.0.0.1).")
@click.option("--port", type=int, help="Port (default 4000).")
@click.option("--workers", type=click.IntRange(1, 64), help="Worker processes (default 1).")
@click.option("--data-dir", help="State directory (default ./.sluice).")
def serve(
    config_path: str | None, host: str | None, port: int | None, workers: int | None, data_dir: str | None
) -> None:
    """Run the gateway. Without --config: the demo models, on the emulator unless a provider key is set."""
    emulator: Emulator | None = None
    try:
        if config_path is None and len(real_presets()) < len(DEMO_PRESETS):
            emulator = Emulator()
            emulator.start_in_thread()
        loaded = load_for_serving(config_path, emulator.url if emulator else None)
        config = _with_server(loaded.config, host=host, port=port, workers=workers, data_dir=data_dir)
    except ConfigError as err:
        _fail(err)
        return
    _setup_logging(config.server.log_level)
    for warning in loaded.warnings:
        logging.getLogger("sluice").warning("%s", warning)
    try:
        services = open_services(config, os.environ)
        admin_key = services.run(services.keys.ensure_admin_key)
    except ConfigError as err:
        _fail(err)
        return
    _banner(config, admin_key, emulator)
    try:
        _run(config, config_path, emulator, services)
    except ConfigError as err:
        _fail(err)


def _run(config: Config, config_path: str | None, emulator: Emulator | None, services: Services) -> None:
    import uvicorn  # noqa: PLC0415  (only the serving path needs it)

    s = config.server
    common = {
        "host": s.host,
        "port": s.port,
        "log_level": s.log_level,
        "access_log": s.access_log,
        "loop": "uvloop" if sys.platform != "win32" else "asyncio",
        "http": "httptools",
        "server_header": False,
        "date_header": False,
        "proxy_headers": False,  # we never use the client address; the middleware costs ~1.5 % per request
        "backlog": 2048,
        "timeout_keep_alive": 30,
        "lifespan": "on",
    }
    if s.workers == 1:
        app = create_app(config, os.environ, services)
        uvicorn.Server(uvicorn.Config(app, **common)).run()  # type: ignore[arg-type]
        return
    # Several workers: each process builds its own app from the same inputs.
    problem = services.run(lambda: unshared_budgets(config, open_limiter(config, os.environ), services.keys))
    if problem is not None:
        raise ConfigError(problem)
    priced_routes(config)  # resolve the price sheets once, here, so the workers read the cache
    share_between_workers(Path(s.data_dir) / "metrics")
    if config_path:
        os.environ[CONFIG_ENV] = str(Path(config_path).resolve())
    if emulator is not None:
        os.environ[EMULATOR_URL_ENV] = emulator.url
    os.environ.update(
        {
            "SLUICE_DATA_DIR": s.data_dir,
            "SLUICE_HOST": s.host,
            "SLUICE_PORT": str(s.port),
            "SLUICE_WORKERS": str(s.workers),
        }
    )
    uvicorn.run("sluice.cli.worker:app_factory", factory=True, workers=s.workers, **common)  # type: ignore[arg-type]


def _banner(config: Config, admin_key: str | None, emulator: Emulator | None) -> None:
    s = config.server
    base = f"http://{s.host}:{s.port}/v1"
    chat = next((m.name for m in config.models if m.mode == "chat"), "MODEL")
    if admin_key:
        key_line = admin_key
    elif os.environ.get(ADMIN_ENV):
        key_line = f"(the value of {ADMIN_ENV})"
    else:
        key_line = "(shown once, on first start; `sluice keys reset-admin` prints a new one)"
    shown = admin_key or "YOUR_KEY"
    models = ", ".join(m.name for m in config.models) or "(none)"
    click.echo(f"Sluice {__version__} — {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC")
    click.echo(f"  base URL:  {base}")
    click.echo(f"  admin key: {key_line}")
    click.echo(f"  models:    {models}")
    if emulator is not None:
        real = real_presets()
        click.echo(
            f"  emulator:  {emulator.url} (demo providers are emulated"
            + (f"; real: {', '.join(real)})" if real else ")")
        )
    click.echo(f"  state:     {Path(s.data_dir).resolve()}")
    click.echo("\nPaste into Python:\n")
    click.echo("from openai import OpenAI")
    click.echo(f'client = OpenAI(base_url="{base}", api_key="{shown}")')
    click.echo(
        f'reply = client.chat.completions.create(model="{chat}", '
        'messages=[{"role": "user", "content": "Hello"}])'
    )
    click.echo("print(reply.choices[0].message.content)\n", nl=True)
    sys.stdout.flush()


@main.command()
@click.option("--host", default=None, help="Interface (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default 4010).")
@click.option("--faults", default=None, help="Fault spec applied to every request, e.g. 'latency_ms=20'.")
@click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), help="Config file (emulator section)."
)
def emulate(host: str | None, port: int | None, faults: str | None, config_path: str | None) -> None:
    """Run the provider emulator alone."""
    try:
        cfg = (load_config(config_path) if config_path else parse_config("{}")).config.emulator
    except ConfigError as err:
        _fail(err)
        return
    emu = Emulator(faults if faults is not None else cfg.faults, cfg.model_faults)

    async def run() -> None:
        await emu.start(host or cfg.host, cfg.port if port is None else port)
        click.echo(f"emulator listening on {emu.url}")
        for flavor in ("openai", "deepseek", "dashscope", "openrouter", "anthropic", "gemini"):
            click.echo(f"  {flavor:<11} {emu.base_url(flavor)}")
        sys.stdout.flush()
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        _asyncio_run(run())


def _asyncio_run(coro: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop  # noqa: PLC0415

        uvloop.run(coro)
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
        asyncio.run(coro)


@main.group()
def config() -> None:
    """Check a config file or print the settings reference."""


@config.command("check")
@click.argument("path", type=click.Path(dir_okay=False))
def config_check(path: str) -> None:
    """Validate a config file; print each problem with its line."""
    try:
        loaded = load_config(path)
    except ConfigError as err:
        _fail(err)
        return
    try:
        missing = unpriced(priced_routes(loaded.config, cache=False))
    except ConfigError as err:
        _fail(err)
        return
    for warning in [*loaded.warnings, *missing]:
        click.echo(f"warning: {warning}", err=True)
    c = loaded.config
    click.echo(f"{path}: OK ({len(c.providers)} providers, {len(c.models)} models)")


@config.command("docs")
def config_docs() -> None:
    """Print the configuration reference (docs/config.md)."""
    click.echo(render_docs())
