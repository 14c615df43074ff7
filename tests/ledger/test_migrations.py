"""Schema migrations: applied once, safe when several ledgers start at once, matching schema.py."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from bot.core.config import DatabaseConfig
from bot.core.errors import ConfigurationError
from bot.core.ledger import Ledger, migrations
from bot.core.ledger.migrations import MIGRATIONS
from bot.core.ledger.schema import metadata

from .conftest import BOB, FakeClock, OpenLedger, budget, fetch, record

NOW = datetime(2025, 6, 11, 15, 30, tzinfo=UTC)
#: The schema created on PostgreSQL (inside a rolled-back transaction) to compare against.
REFERENCE_SCHEMA = "ledger_reference"


async def test_migrations_run_once_even_when_started_together(open_ledger: OpenLedger) -> None:
    ledgers = await asyncio.gather(*(open_ledger([]) for _ in range(4)))
    ledger = await open_ledger([])
    rows = await fetch(ledger, "SELECT version, name FROM schema_migrations ORDER BY version")
    assert [tuple(r) for r in rows] == [(v, n) for v, n, _ in MIGRATIONS]
    assert len(ledgers) == 4


def shape(conn: sa.Connection, schema: str | None = None) -> dict[str, dict[str, Any]]:
    """What schema.py defines of each ledger table, as reflected from the database."""
    inspector = sa.inspect(conn)
    found: dict[str, dict[str, Any]] = {}
    for table in metadata.sorted_tables:
        name = table.name
        found[name] = {
            "columns": [
                (c["name"], repr(c["type"]), c["nullable"]) for c in inspector.get_columns(name, schema)
            ],
            "primary_key": inspector.get_pk_constraint(name, schema)["constrained_columns"],
            "unique": sorted(
                (u["name"] or "", tuple(u["column_names"]))
                for u in inspector.get_unique_constraints(name, schema)
            ),
            "indexes": sorted(
                (i["name"], tuple(i["column_names"]), bool(i["unique"]))
                for i in inspector.get_indexes(name, schema)
            ),
            "foreign_keys": sorted(
                (tuple(f["constrained_columns"]), f["referred_table"], tuple(f["referred_columns"]))
                for f in inspector.get_foreign_keys(name, schema)
            ),
        }
        if conn.dialect.name == "sqlite":
            found[name]["without_rowid"] = is_without_rowid(conn, name)
    return found


def is_without_rowid(conn: sa.Connection, table: str) -> bool:
    """True if the SQLite table was created WITHOUT ROWID (the clause ends its stored CREATE TABLE)."""
    sql = conn.execute(
        sa.text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = :name"), {"name": table}
    ).scalar_one()
    return " ".join(sql.split()).upper().endswith("WITHOUT ROWID")


async def reference_shape(ledger: Ledger, tmp_path: Any) -> dict[str, dict[str, Any]]:
    """``shape`` of schema.py's tables created from scratch by ``metadata.create_all``."""
    if ledger.backend == "sqlite":
        engine = sa.create_engine(f"sqlite:///{tmp_path}/reference.db")
        try:
            with engine.begin() as conn:
                metadata.create_all(conn)
                return shape(conn)
        finally:
            engine.dispose()

    def create_and_reflect(conn: sa.Connection) -> dict[str, dict[str, Any]]:
        conn.execute(sa.text(f"CREATE SCHEMA {REFERENCE_SCHEMA}"))
        metadata.create_all(conn.execution_options(schema_translate_map={None: REFERENCE_SCHEMA}))
        return shape(conn, REFERENCE_SCHEMA)

    async with ledger._db.engine.connect() as pg_conn:
        transaction = await pg_conn.begin()
        try:
            return await pg_conn.run_sync(create_and_reflect)
        finally:
            await transaction.rollback()  # PostgreSQL's DDL is transactional: nothing is left behind


def assert_slim_holds(found: dict[str, dict[str, Any]], backend: str) -> None:
    """m004's shape: no index on holds.expires_at; keys and the foreign key kept; SQLite WITHOUT ROWID."""
    holds, items = found["holds"], found["hold_items"]
    assert ("expires_at",) not in [columns for _, columns, _ in holds["indexes"]]
    assert holds["primary_key"] == ["id"]
    assert [columns for _, columns in holds["unique"]] == [("request_id",)]
    assert items["primary_key"] == ["hold_id", "budget_period_id"]
    assert items["foreign_keys"] == [(("budget_period_id",), "budget_periods", ("id",))]
    if backend == "sqlite":
        assert holds["without_rowid"] and items["without_rowid"]
        assert not found["calls"]["without_rowid"]  # the check can tell the difference


async def test_migrated_schema_matches_schema_py(open_ledger: OpenLedger, tmp_path: Any) -> None:
    ledger = await open_ledger([])
    async with ledger._db.read() as conn:
        migrated = await conn.run_sync(shape)
    reference = await reference_shape(ledger, tmp_path)
    assert migrated == reference
    # The comparison above is only as good as schema.py: pin m004's shape explicitly too.
    assert_slim_holds(migrated, ledger.backend)


async def test_m004_keeps_holds_in_flight_on_a_version_3_database(
    open_ledger: OpenLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock(NOW)
    budgets = [budget("global", "1.00"), budget("u", "0.50", scope="user")]
    with monkeypatch.context() as patch:
        patch.setattr(migrations, "MIGRATIONS", MIGRATIONS[:3])
        old = await open_ledger(budgets, clock=clock, ttl=60)
        await old.reserve(BOB, Decimal("0.20"), request_id="stale", model="m", provider="p")
        clock.advance(seconds=30)
        live = await old.reserve(BOB, Decimal("0.30"), request_id="live", model="m", provider="p")
        holds_before = await fetch(old, "SELECT * FROM holds ORDER BY id")
        items_before = await fetch(old, "SELECT * FROM hold_items ORDER BY hold_id, budget_period_id")
        assert [v for v, *_ in await fetch(old, "SELECT version FROM schema_migrations")] == [1, 2, 3]
        await old.close()
    assert len(holds_before) == 2 and len(items_before) == 4

    ledger = await open_ledger(budgets, clock=clock, ttl=60)
    assert await fetch(ledger, "SELECT * FROM holds ORDER BY id") == holds_before
    assert await fetch(ledger, "SELECT * FROM hold_items ORDER BY hold_id, budget_period_id") == items_before
    async with ledger._db.read() as conn:
        assert_slim_holds(await conn.run_sync(shape), ledger.backend)

    # The holds work as before: the sweeper frees the expired one only, a settle charges the real cost.
    clock.advance(seconds=31)  # past the stale hold's expiry only
    assert await ledger.sweep_expired() == 1
    assert [tuple(r) for r in await fetch(ledger, "SELECT request_id FROM holds")] == [("live",)]
    await ledger.settle(live, record(live, "0.25", principal=BOB))
    status = {s.name: (s.spent, s.reserved) for s in await ledger.status(BOB)}
    assert status == {"global": (Decimal("0.25"), Decimal(0)), "u": (Decimal("0.25"), Decimal(0))}
    assert await fetch(ledger, "SELECT * FROM holds") == []
    assert await fetch(ledger, "SELECT * FROM hold_items") == []
    # request_id is still unique: a second hold for the same request is refused.
    await ledger.reserve(BOB, Decimal("0.01"), request_id="again", model="m", provider="p")
    with pytest.raises(ValueError, match="already has a hold"):
        await ledger.reserve(BOB, Decimal("0.01"), request_id="again", model="m", provider="p")


async def test_sqlite_file_is_created_in_wal_mode(tmp_path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/deep/er/bot.db"
    async with await Ledger.open(DatabaseConfig(url=url), [budget("g", "1")]) as ledger:
        assert ledger.backend == "sqlite"
        assert (await fetch(ledger, "PRAGMA journal_mode"))[0][0] == "wal"
    assert (tmp_path / "deep" / "er" / "bot.db").exists()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite+aiosqlite:///:memory:", "in-memory"),
        ("mysql://u@h/db", "unsupported database 'mysql'"),
        ("not a url", "cannot parse"),
    ],
)
async def test_bad_urls_are_configuration_errors(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        await Ledger.open(DatabaseConfig(url=url), [])


async def test_duplicate_budget_names_are_refused(tmp_path) -> None:
    with pytest.raises(ConfigurationError, match="repeated: a"):
        await Ledger.open(
            DatabaseConfig(url=f"sqlite:///{tmp_path}/x.db"), [budget("a", "1"), budget("a", "2")]
        )
