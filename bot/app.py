"""The composition root: builds the core once from settings and hands it to every face."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Mapping

from bot.core.config import AppConfig
from bot.core.gateway import Gateway
from bot.settings import apply_data_dir, data_dir_from_env

__all__ = ["build_core", "load_config", "open_core"]


def load_config(env: Mapping[str, str] | None = None) -> AppConfig:
    """Config from ``BOT_CONFIG`` (YAML) and ``BOT_*`` variables, else the embedded defaults,
    with the default SQLite ledger under ``BOT_DATA_DIR``: one ledger for every command."""
    env = os.environ if env is None else env
    return apply_data_dir(AppConfig.from_env(env), data_dir_from_env(env), env)


async def open_core(config: AppConfig | None = None, *, with_ledger: bool = True) -> Gateway:
    """Build the gateway: providers, pricing and (unless ``with_ledger`` is False) the ledger."""
    config = config or load_config()
    ledger = None
    if with_ledger:
        from bot.core.ledger import Ledger

        ledger = await Ledger.open(config.database, config.budgets)
    return Gateway(config, ledger=ledger)


@contextlib.asynccontextmanager
async def build_core(config: AppConfig | None = None, *, with_ledger: bool = True) -> AsyncIterator[Gateway]:
    """``open_core`` as ``async with``: the gateway (and its ledger) is closed on the way out."""
    async with await open_core(config, with_ledger=with_ledger) as core:
        yield core
