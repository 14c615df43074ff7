"""Shared fixtures: a ledger URL per backend (SQLite file always, PostgreSQL when configured), a
controllable clock, and small builders for budgets and call records."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from bot.core.config import BudgetConfig, DatabaseConfig
from bot.core.ledger import Hold, Ledger
from bot.core.ledger.schema import LEDGER_TABLES
from bot.core.types import CallRecord, Outcome, Principal, Usage

PG_DSN = os.environ.get("BOT_TEST_POSTGRES_DSN")
SKIP_PG = "set BOT_TEST_POSTGRES_DSN to run PostgreSQL tests"

ALICE = Principal(surface="slack", team_id="T1", user_id="alice", channel_id="C1")
BOB = Principal(surface="slack", team_id="T1", user_id="bob", channel_id="C1")


class FakeClock:
    """A clock the test moves by hand: returns ``now`` (aware UTC) until told otherwise."""

    def __init__(self, now: datetime) -> None:
        self.now = now.astimezone(UTC)

    def __call__(self) -> datetime:
        return self.now

    def set(self, when: datetime) -> None:
        self.now = when.astimezone(UTC)

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def budget(name: str, limit: str, **kw: Any) -> BudgetConfig:
    """A budget of ``limit`` dollars (monthly and global unless told otherwise)."""
    return BudgetConfig(name=name, limit_usd=Decimal(limit), **kw)


def record(
    request_id: str | Hold,
    cost: str | Decimal = "0",
    *,
    principal: Principal = ALICE,
    outcome: Outcome = "ok",
    model: str = "gpt-test",
    provider: str = "openai",
    created_at: datetime | None = None,
    usage: Usage | None = None,
) -> CallRecord:
    """A call record; pass a ``Hold`` to reuse its request id."""
    rid = request_id.request_id if isinstance(request_id, Hold) else request_id
    rec = CallRecord(
        request_id=rid,
        principal=principal,
        provider=provider,
        model=model,
        outcome=outcome,
        usage=usage or Usage(input_tokens=100, output_tokens=20),
        cost_usd=Decimal(cost),
    )
    if created_at is not None:
        rec.created_at = created_at
    return rec


async def drop_ledger_tables(dsn: str) -> None:
    """Give a PostgreSQL test a clean database: drop every ledger table."""
    engine = create_async_engine(dsn)
    try:
        async with engine.begin() as conn:
            for table in LEDGER_TABLES:
                await conn.execute(sa.text(f'DROP TABLE IF EXISTS "{table}" CASCADE'))
    finally:
        await engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def ledger_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """A database URL for an empty ledger: a SQLite file, or the PostgreSQL test database."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/ledger/bot.db"
    if not PG_DSN:
        pytest.skip(SKIP_PG)
    await drop_ledger_tables(PG_DSN)
    return PG_DSN


OpenLedger = Callable[..., Awaitable[Ledger]]


@pytest.fixture
async def open_ledger(ledger_url: str) -> AsyncIterator[OpenLedger]:
    """Open ledgers on ``ledger_url`` (closed at teardown): ``await open_ledger(budgets, clock=...)``."""
    opened: list[Ledger] = []

    async def factory(
        budgets: Sequence[BudgetConfig] = (),
        *,
        clock: Callable[[], datetime] | None = None,
        timezone: str = "UTC",
        ttl: int = 600,
    ) -> Ledger:
        config = DatabaseConfig(url=ledger_url, timezone=timezone, reservation_ttl_seconds=ttl)
        ledger = await Ledger.open(config, budgets, clock=clock)
        opened.append(ledger)
        return ledger

    yield factory
    for ledger in opened:
        await ledger.close()


async def fetch(ledger: Ledger, sql: str) -> list[Any]:
    """Run raw SQL on the ledger's database (tests check invariants the API does not expose)."""
    async with ledger._db.read() as conn:
        return list((await conn.execute(sa.text(sql))).all())


async def check_invariants(ledger: Ledger) -> None:
    """Money invariants that must hold after any sequence of operations with no live holds."""
    spent_by_row = await fetch(
        ledger,
        "SELECT budget, scope_key, spent_nano_usd, limit_nano_usd, reserved_nano_usd FROM budget_periods",
    )
    for row in spent_by_row:
        assert row.reserved_nano_usd >= 0, row
    (calls_total,) = (await fetch(ledger, "SELECT COALESCE(SUM(cost_nano_usd), 0) FROM calls"))[0]
    for row in spent_by_row:
        if row.budget == "global":
            assert row.spent_nano_usd == calls_total, row
