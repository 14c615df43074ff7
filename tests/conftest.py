"""Shared fixtures: the fake upstream on loopback, and a fail-closed guard against real APIs."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bot.core.config import AppConfig
from bot.core.factory import SessionFactory
from tests.fakes.upstream import FakeUpstream

API_KEY = "test-key"

#: Variables that could point a test at a real, paid API; every test runs without them.
_REAL_API_VARS = (
    "OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL",
    "SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "SLACK_APP_TOKEN", "BOT_CONFIG",
)  # fmt: skip


@pytest.fixture(autouse=True)
def _no_real_apis(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in _REAL_API_VARS:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeUpstream]:
    """One fake OpenAI + Anthropic server for the whole run."""
    with FakeUpstream(api_key=API_KEY) as server:
        yield server


@pytest.fixture
def fake(upstream: FakeUpstream) -> Iterator[FakeUpstream]:
    """The fake upstream, clean for this test."""
    upstream.reset()
    yield upstream
    upstream.reset()


@pytest.fixture
def fake_env(fake: FakeUpstream) -> dict[str, str]:
    """The SDKs' standard variables, pointing at the fake."""
    return {
        "OPENAI_API_KEY": API_KEY,
        "OPENAI_BASE_URL": fake.openai_base_url,
        "ANTHROPIC_API_KEY": API_KEY,
        "ANTHROPIC_BASE_URL": fake.anthropic_base_url,
    }


def fast_config(**overrides: object) -> AppConfig:
    """A config with quick retries, so fault tests take milliseconds."""
    data: dict[str, object] = {
        "retry": {"max_retries": 2, "initial_delay_seconds": 0.01, "max_delay_seconds": 0.5},
        "providers": {
            "openai": {"type": "openai", "timeout_seconds": 5},
            "anthropic": {"type": "anthropic", "timeout_seconds": 5},
        },
    }
    data.update(overrides)
    return AppConfig.from_dict(data)


@pytest.fixture
async def factory(fake_env: dict[str, str]) -> AsyncIterator[SessionFactory]:
    """A session factory whose providers talk to the fake."""
    async with SessionFactory(fast_config(), env=fake_env) as f:
        yield f


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty ledger database: a SQLite file, or the PostgreSQL test database (skipped without
    a DSN)."""
    from tests.ledger.conftest import PG_DSN, SKIP_PG, drop_ledger_tables

    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/ledger.db"
    if not PG_DSN:
        pytest.skip(SKIP_PG)
    await drop_ledger_tables(PG_DSN)
    return PG_DSN


def pytest_report_header() -> str:
    dsn = os.environ.get("BOT_TEST_POSTGRES_DSN")
    return f"postgres: {'enabled' if dsn else 'skipped (set BOT_TEST_POSTGRES_DSN)'}"


#: Set by ``pytest_configure`` to the PostgreSQL database this run made for itself.
_RUN_DATABASE = "_BOT_TEST_RUN_DATABASE"


async def _admin(dsn: str, statement: str) -> None:
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(dsn.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def _database_of_this_run() -> str | None:
    """Give this run a PostgreSQL database of its own, so that two runs at once (two developers,
    or a developer and CI, on one server) never drop each other's tables; return the DSN it was
    given. Done on import, before any test module reads BOT_TEST_POSTGRES_DSN (conftests are
    imported from the top down); the servers the tests start inherit the environment."""
    dsn = os.environ.get("BOT_TEST_POSTGRES_DSN")
    if not dsn or os.environ.get(_RUN_DATABASE):
        return None
    base, _, _ = dsn.rpartition("/")
    name = f"bot_test_{os.getpid()}"
    asyncio.run(_admin(dsn, f'DROP DATABASE IF EXISTS "{name}"'))
    asyncio.run(_admin(dsn, f'CREATE DATABASE "{name}"'))
    os.environ[_RUN_DATABASE] = name
    os.environ["BOT_TEST_POSTGRES_DSN"] = f"{base}/{name}"
    return dsn


_GIVEN_DSN = _database_of_this_run()


def pytest_unconfigure(config: pytest.Config) -> None:
    """Drop the run's own PostgreSQL database."""
    dsn, name = _GIVEN_DSN, os.environ.pop(_RUN_DATABASE, None)
    if dsn is None or name is None:
        return
    os.environ["BOT_TEST_POSTGRES_DSN"] = dsn
    asyncio.run(_admin(dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
