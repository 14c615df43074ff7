"""MCP fixtures: gateways on the fake upstream (with or without a ledger) and a live HTTP server."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from bot.core.config import AppConfig
from bot.core.gateway import Gateway
from bot.core.ledger import Ledger
from tests.conftest import fast_config

TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789abc"}
#: Each MCP client gets its own $1 a month (``key: null`` means one budget per client name).
PER_CLIENT = {"name": "per-client", "scope": "client", "key": None, "limit_usd": "1", "period": "monthly"}

MakeGateway = Callable[..., Awaitable[Gateway]]


def mcp_config(**overrides: Any) -> AppConfig:
    """``fast_config`` with two HTTP clients and any other overrides."""
    data: dict[str, Any] = {"mcp": {"clients": {name: {"token": tok} for name, tok in TOKENS.items()}}}
    data.update(overrides)
    return fast_config(**data)


@pytest.fixture
async def gateway(fake_env: dict[str, str]) -> AsyncIterator[Gateway]:
    """A gateway on the fake upstream, without a ledger (no budgets)."""
    async with Gateway(mcp_config(), env=fake_env) as gw:
        yield gw


@pytest.fixture
async def make_gateway(fake_env: dict[str, str], tmp_path: Path) -> AsyncIterator[MakeGateway]:
    """Build gateways with a SQLite ledger and the given budgets; all are closed at the end."""
    opened: list[Gateway] = []

    async def make(budgets: list[dict[str, Any]], **overrides: Any) -> Gateway:
        config = mcp_config(budgets=budgets, **overrides)
        db = config.database.model_copy(
            update={"url": f"sqlite+aiosqlite:///{tmp_path}/ledger{len(opened)}.db"}
        )
        ledger = await Ledger.open(db, config.budgets)
        gw = Gateway(config, ledger=ledger, env=fake_env)
        opened.append(gw)
        return gw

    yield make
    for gw in opened:
        await gw.close()


@contextlib.asynccontextmanager
async def http_client(url: str, token: str | None, **options: Any) -> AsyncIterator[Client]:
    """An MCP client over Streamable HTTP sending ``token`` as a bearer token.

    ``options`` go to the SDK's ``Client``: ``mode="legacy"`` (the 2025-11-25 session revision)
    or ``mode="2026-07-28"`` (stateless), ``elicitation_callback``…
    """
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with (
        create_mcp_http_client(headers=headers) as http,
        Client(streamable_http_client(f"{url}/mcp", http_client=http), **options) as client,
    ):
        yield client


def raw_http(**headers: str) -> httpx2.AsyncClient:
    """A plain HTTP client, for checking what the endpoint answers before MCP is involved."""
    return httpx2.AsyncClient(headers=headers, timeout=10)
