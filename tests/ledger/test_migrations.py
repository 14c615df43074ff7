"""Schema migrations: applied once, safe when several ledgers start at once, matching schema.py."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from bot.core.config import DatabaseConfig
from bot.core.errors import ConfigurationError
from bot.core.ledger import Ledger, migrations
from bot.core.ledger.migrations import MIGRATIONS
from bot.core.ledger.models import Hold
from bot.core.ledger.schema import UTCDateTime, metadata

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


async def hold_as_version_3_did(
    ledger: Ledger, request_id: str, amount: str, now: datetime, ttl: int
) -> None:
    """Reserve as the code of schema version 3 did (no ``call_identity``), on a version-3 database."""
    targets = ledger._targets(BOB, "m", "p", now)
    row_ids = list(await ledger._period_rows(targets, now))
    hold_id, nanos = f"h-{request_id}", int(Decimal(amount) * 10**9)
    when = [sa.bindparam("c", type_=UTCDateTime()), sa.bindparam("e", type_=UTCDateTime())]
    async with ledger._db.write() as conn:
        await conn.execute(
            sa.text(
                "INSERT INTO holds (id, request_id, amount_nano_usd, created_at, expires_at)"
                " VALUES (:i, :r, :a, :c, :e)"
            ).bindparams(*when),
            {"i": hold_id, "r": request_id, "a": nanos, "c": now, "e": now + timedelta(seconds=ttl)},
        )
        for row_id in row_ids:
            await conn.execute(
                sa.text("INSERT INTO hold_items (hold_id, budget_period_id) VALUES (:h, :b)"),
                {"h": hold_id, "b": row_id},
            )
            await conn.execute(
                sa.text("UPDATE budget_periods SET reserved_nano_usd = reserved_nano_usd + :a WHERE id = :b"),
                {"a": nanos, "b": row_id},
            )


async def test_m004_and_m005_keep_holds_in_flight_on_a_version_3_database(
    open_ledger: OpenLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock(NOW)
    budgets = [budget("global", "1.00"), budget("u", "0.50", scope="user")]
    with monkeypatch.context() as patch:
        patch.setattr(migrations, "MIGRATIONS", MIGRATIONS[:3])
        old = await open_ledger(budgets, clock=clock, ttl=60)
        await hold_as_version_3_did(old, "stale", "0.20", clock.now, 60)
        clock.advance(seconds=30)
        await hold_as_version_3_did(old, "live", "0.30", clock.now, 60)
        old_call = record("before", "0.01", principal=BOB)
        await old.record(old_call)
        holds_before = await fetch(
            old, "SELECT id, request_id, amount_nano_usd, created_at, expires_at FROM holds ORDER BY id"
        )
        items_before = await fetch(old, "SELECT * FROM hold_items ORDER BY hold_id, budget_period_id")
        calls_before = await fetch(old, "SELECT * FROM calls")
        assert [v for v, *_ in await fetch(old, "SELECT version FROM schema_migrations")] == [1, 2, 3]
        await old.close()
    assert len(holds_before) == 2 and len(items_before) == 4 and len(calls_before) == 1

    ledger = await open_ledger(budgets, clock=clock, ttl=60)
    holds_after = await fetch(
        ledger,
        "SELECT id, request_id, amount_nano_usd, created_at, expires_at, call_identity FROM holds ORDER BY id",
    )
    assert [tuple(h[:5]) for h in holds_after] == [tuple(h) for h in holds_before]
    assert all(h[5] is None for h in holds_after)
    assert await fetch(ledger, "SELECT * FROM hold_items ORDER BY hold_id, budget_period_id") == items_before
    assert await fetch(ledger, "SELECT * FROM calls") == calls_before  # m005 rebuilt calls on SQLite
    async with ledger._db.read() as conn:
        assert_slim_holds(await conn.run_sync(shape), ledger.backend)

    # The holds work as before: the sweeper takes the expired one only (a caller unknown to a
    # version-3 hold, still written down and charged), a settle charges the real cost.
    clock.advance(seconds=31)  # past the stale hold's expiry only
    assert await ledger.sweep_expired() == 1
    assert [tuple(r) for r in await fetch(ledger, "SELECT request_id FROM holds")] == [("live",)]
    (stale,) = await fetch(
        ledger, "SELECT surface, cost_nano_usd, outcome FROM calls WHERE request_id = 'stale'"
    )
    assert tuple(stale) == ("unknown", 200_000_000, "interrupted")
    live = Hold(
        "h-live",
        "live",
        Decimal("0.30"),
        NOW,
        NOW,
        tuple(r for (r,) in await fetch(ledger, "SELECT budget_period_id FROM hold_items")),
    )
    await ledger.settle(live, record(live, "0.25", principal=BOB))
    status = {s.name: (s.spent, s.reserved) for s in await ledger.status(BOB)}
    # 0.01 recorded before, 0.20 interrupted, 0.25 settled: spent; nothing held any more.
    assert status == {"global": (Decimal("0.46"), Decimal(0)), "u": (Decimal("0.46"), Decimal(0))}
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
