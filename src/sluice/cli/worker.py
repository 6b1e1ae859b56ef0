"""App factory for ``sluice serve --workers N``: each worker process builds its app from the environment."""

from __future__ import annotations

import os

from sluice.api.asgi import SluiceAPI
from sluice.app import create_app
from sluice.cli.main import CONFIG_ENV, EMULATOR_URL_ENV, load_for_serving


def app_factory() -> SluiceAPI:
    """Build one worker's app (the parent validated the same config before forking)."""
    loaded = load_for_serving(os.environ.get(CONFIG_ENV), os.environ.get(EMULATOR_URL_ENV))
    return create_app(loaded.config, os.environ)
