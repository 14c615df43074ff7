"""Schema migrations: applied once, safe when several ledgers start at once, matching schema.py."""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa

from bot.core.config import DatabaseConfig
from bot.core.errors import ConfigurationError
from bot.core.ledger import Ledger
from bot.core.ledger.migrations import MIGRATIONS
from bot.core.ledger.schema import metadata

from .conftest import OpenLedger, budget, fetch


async def test_migrations_run_once_even_when_started_together(open_ledger: OpenLedger) -> None:
    ledgers = await asyncio.gather(*(open_ledger([]) for _ in range(4)))
    ledger = await open_ledger([])
    rows = await fetch(ledger, "SELECT version, name FROM schema_migrations ORDER BY version")
    assert [tuple(r) for r in rows] == [(v, n) for v, n, _ in MIGRATIONS]
    assert len(ledgers) == 4


async def test_migrated_schema_matches_schema_py(open_ledger: OpenLedger) -> None:
    ledger = await open_ledger([])

    def reflect(conn: sa.Connection) -> dict[str, set[str]]:
        inspector = sa.inspect(conn)
        return {t: {c["name"] for c in inspector.get_columns(t)} for t in inspector.get_table_names()}

    async with ledger._db.read() as conn:
        found = await conn.run_sync(reflect)
    expected = {t.name: {c.name for c in t.columns} for t in metadata.sorted_tables}
    assert {t: found.get(t) for t in expected} == expected


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
