"""Shared fixtures: a ledger URL per backend (SQLite file always, PostgreSQL when configured), a
controllable clock, and small builders for budgets and call records."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from bot.core.config import BudgetConfig, DatabaseConfig
from bot.core.ledger import Alert, Hold, Ledger
from bot.core.ledger.alerts import row_to_alert
from bot.core.ledger.schema import LEDGER_TABLES, alerts
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


@dataclass(frozen=True)
class LedgerDriver:
    """One way the ledger runs: a database URL and SQLite's ``synchronous`` (which picks where
    the SQLite writer runs its transactions)."""

    name: str
    url: str
    synchronous: Literal["normal", "full"] = "normal"


#: The drivers every ledger contract test runs on: SQLite's writer on the event loop (the
#: default), in its thread (``full``), with URL query options, and PostgreSQL.
DRIVERS = [
    "sqlite-loop",
    "sqlite-thread",
    "sqlite-url-options",
    pytest.param("postgres", marks=pytest.mark.postgres),
]
#: Read by the multi-process tests' worker (``_worker.py``), so it runs the same driver.
SYNCHRONOUS_ENV = "BOT_TEST_SQLITE_SYNCHRONOUS"


@pytest.fixture(params=DRIVERS)
async def ledger_driver(
    request: pytest.FixtureRequest, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> LedgerDriver:
    """An empty ledger's database for one driver: a SQLite file, or the PostgreSQL test database."""
    name = request.param
    path = f"{tmp_path}/ledger/bot.db"
    if name == "postgres":
        if not PG_DSN:
            pytest.skip(SKIP_PG)
        await drop_ledger_tables(PG_DSN)
        return LedgerDriver(name, PG_DSN)
    if name == "sqlite-thread":
        monkeypatch.setenv(SYNCHRONOUS_ENV, "full")
        return LedgerDriver(name, f"sqlite+aiosqlite:///{path}", "full")
    if name == "sqlite-url-options":
        return LedgerDriver(name, f"sqlite+aiosqlite:///file:{path}?mode=rwc&uri=true")
    return LedgerDriver(name, f"sqlite+aiosqlite:///{path}")


@pytest.fixture
def ledger_url(ledger_driver: LedgerDriver) -> str:
    """The database URL of ``ledger_driver``."""
    return ledger_driver.url


OpenLedger = Callable[..., Awaitable[Ledger]]


@pytest.fixture
async def open_ledger(ledger_driver: LedgerDriver) -> AsyncIterator[OpenLedger]:
    """Open ledgers on ``ledger_driver`` (closed at teardown): ``await open_ledger(budgets, clock=...)``."""
    opened: list[Ledger] = []

    async def factory(
        budgets: Sequence[BudgetConfig] = (),
        *,
        clock: Callable[[], datetime] | None = None,
        timezone: str = "UTC",
        ttl: int = 600,
        journal_path: str | None = None,
    ) -> Ledger:
        config = DatabaseConfig(
            url=ledger_driver.url,
            timezone=timezone,
            reservation_ttl_seconds=ttl,
            sqlite_synchronous=ledger_driver.synchronous,
            journal_path=journal_path,
        )
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


async def undelivered_alerts(ledger: Ledger, limit: int = 100) -> list[Alert]:
    """The alerts not delivered yet, oldest first (what the outbox still has to send)."""
    async with ledger._db.read() as conn:
        rows = await conn.execute(
            sa.select(alerts).where(alerts.c.delivered_at.is_(None)).order_by(alerts.c.id).limit(limit)
        )
        return [row_to_alert(r) for r in rows]


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
