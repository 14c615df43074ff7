"""The composition root: builds the core once from settings and hands it to every face."""

from __future__ import annotations

import os
from collections.abc import Mapping

from bot.core.config import AppConfig
from bot.core.gateway import Gateway

__all__ = ["build_core", "load_config", "open_core"]


def load_config(env: Mapping[str, str] | None = None) -> AppConfig:
    """Config from ``BOT_CONFIG`` (YAML) and ``BOT_*`` variables, else the embedded defaults."""
    return AppConfig.from_env(os.environ if env is None else env)


async def open_core(config: AppConfig | None = None, *, with_ledger: bool = True) -> Gateway:
    """Build the gateway: providers, pricing and (unless ``with_ledger`` is False) the ledger."""
    config = config or load_config()
    ledger = None
    if with_ledger:
        from bot.core.ledger import Ledger

        ledger = await Ledger.open(config.database, config.budgets)
    return Gateway(config, ledger=ledger)


class build_core:
    """Async context manager around ``open_core`` that always closes what it opened."""

    def __init__(self, config: AppConfig | None = None, *, with_ledger: bool = True) -> None:
        self._config = config
        self._with_ledger = with_ledger
        self._core: Gateway | None = None

    async def __aenter__(self) -> Gateway:
        self._core = await open_core(self._config, with_ledger=self._with_ledger)
        return self._core

    async def __aexit__(self, *exc: object) -> None:
        if self._core is not None:
            await self._core.close()
