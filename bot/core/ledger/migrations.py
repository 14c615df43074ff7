"""Versioned schema migrations: numbered functions, each applied once and recorded.

``migrate()`` runs from ``Ledger.open()`` only. It is safe when several processes start at once:
on PostgreSQL it holds a transaction-scoped advisory lock, on SQLite ``BEGIN IMMEDIATE`` makes it
the only writer; both databases run DDL inside the transaction, so a migration is all or nothing.

To change the schema: add ``m00N_what(conn)`` below and to ``MIGRATIONS``, and change ``schema.py``
to match. Never edit an applied migration: m001 spells out its tables instead of reusing
``schema.py`` so that it keeps creating exactly version 1.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import sqlalchemy as sa

from bot.core.ledger.database import Database
from bot.core.ledger.schema import UTCDateTime, schema_migrations

__all__ = [
    "MIGRATIONS",
    "Migration",
    "m001_initial",
    "m002_alert_delivery",
    "m003_request_keys",
    "m004_slim_holds",
    "m005_interrupted_calls",
    "m006_people",
    "migrate",
]

#: A migration: runs DDL/DML on a synchronous connection inside the migration transaction.
Migration = Callable[[sa.Connection], None]

#: Key of the PostgreSQL advisory lock that serialises migrations ("ledger" in ASCII).
ADVISORY_LOCK_KEY = 0x6C6564676572


def m001_initial(conn: sa.Connection) -> None:
    """Create the version-1 tables: calls, budget_periods, holds, hold_items, alerts, overrides."""
    md = sa.MetaData()
    id_ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    money = sa.BigInteger
    sa.Table(
        "calls",
        md,
        sa.Column("id", id_, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(128), nullable=False, unique=True),
        sa.Column("created_at", UTCDateTime(), nullable=False, index=True),
        sa.Column("surface", sa.String(32), nullable=False),
        sa.Column("principal", sa.String(512), nullable=False),
        sa.Column("team_id", sa.String(255)),
        sa.Column("user_id", sa.String(255)),
        sa.Column("channel_id", sa.String(255)),
        sa.Column("client_id", sa.String(255)),
        sa.Column("provider", sa.String(100), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        *(
            sa.Column(f"{kind}_tokens", sa.BigInteger, nullable=False)
            for kind in ("input", "output", "cache_read", "cache_write", "reasoning")
        ),
        sa.Column("cost_nano_usd", money, nullable=False),
        sa.Column("cost_estimated", sa.Boolean, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("error_code", sa.String(100)),
        sa.CheckConstraint("outcome IN ('ok', 'refused', 'error', 'cancelled')", name="ck_calls_outcome"),
        sa.CheckConstraint("cost_nano_usd >= 0", name="ck_calls_cost"),
    )
    sa.Table(
        "budget_periods",
        md,
        sa.Column("id", id_, primary_key=True, autoincrement=True),
        sa.Column("budget", sa.String(100), nullable=False),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("scope_key", sa.String(512), nullable=False),
        sa.Column("period", sa.String(16), nullable=False),
        sa.Column("period_start", UTCDateTime(), nullable=False),
        sa.Column("period_end", UTCDateTime()),
        sa.Column("limit_nano_usd", money, nullable=False),
        sa.Column("spent_nano_usd", money, nullable=False),
        sa.Column("reserved_nano_usd", money, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint(
            "budget", "scope", "scope_key", "period", "period_start", name="uq_budget_periods"
        ),
    )
    sa.Table(
        "holds",
        md,
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("request_id", sa.String(128), nullable=False, unique=True),
        sa.Column("amount_nano_usd", money, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False, index=True),
    )
    sa.Table(
        "hold_items",
        md,
        sa.Column("hold_id", sa.String(32), primary_key=True),
        sa.Column("budget_period_id", id_, sa.ForeignKey("budget_periods.id"), primary_key=True),
    )
    sa.Table(
        "alerts",
        md,
        sa.Column("id", id_, primary_key=True, autoincrement=True),
        sa.Column("budget", sa.String(100), nullable=False),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("scope_key", sa.String(512), nullable=False),
        sa.Column("period", sa.String(16), nullable=False),
        sa.Column("period_start", UTCDateTime(), nullable=False),
        sa.Column("threshold", sa.Float, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("fraction", sa.Float, nullable=False),
        sa.Column("spent_nano_usd", money, nullable=False),
        sa.Column("limit_nano_usd", money, nullable=False),
        sa.Column("channel", sa.String(255)),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("delivered_at", UTCDateTime(), index=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.UniqueConstraint(
            "budget", "scope", "scope_key", "period", "period_start", "threshold", name="uq_alerts_once"
        ),
    )
    sa.Table(
        "budget_overrides",
        md,
        sa.Column("budget", sa.String(100), primary_key=True),
        sa.Column("scope_key", sa.String(512), primary_key=True),
        sa.Column("limit_nano_usd", money, nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    md.create_all(conn)


def m002_alert_delivery(conn: sa.Connection) -> None:
    """Add delivery leases, retry times, errors and forecasts to alerts; create ``job_runs``."""
    for column in (
        sa.Column("claimed_until", UTCDateTime()),
        sa.Column("claimed_by", sa.String(64)),
        sa.Column("next_attempt_at", UTCDateTime()),
        sa.Column("last_error", sa.String(255)),
        sa.Column("projected_nano_usd", sa.BigInteger),
    ):
        # ADD COLUMN of a nullable column: the same DDL on SQLite and PostgreSQL, no table rebuild.
        type_ = column.type.compile(dialect=conn.dialect)
        conn.execute(sa.text(f"ALTER TABLE alerts ADD COLUMN {column.name} {type_}"))
    md = sa.MetaData()
    sa.Table(
        "job_runs",
        md,
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("run_key", sa.String(200), primary_key=True),
        sa.Column("claimed_by", sa.String(64), nullable=False),
        sa.Column("claimed_at", UTCDateTime(), nullable=False),
        sa.Column("finished_at", UTCDateTime()),
    )
    md.create_all(conn)


def m003_request_keys(conn: sa.Connection) -> None:
    """Create ``request_keys``: idempotency keys, so a retried request runs once on any replica."""
    md = sa.MetaData()
    sa.Table(
        "request_keys",
        md,
        sa.Column("request_id", sa.String(128), primary_key=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    md.create_all(conn)


def _slim_hold_tables(md: sa.MetaData, suffix: str) -> tuple[sa.Table, sa.Table]:
    """Version 4's ``holds`` and ``hold_items`` (named with ``suffix``): WITHOUT ROWID, no index."""
    id_ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    # Only so that the foreign key below compiles: never created (the real table exists).
    sa.Table("budget_periods", md, sa.Column("id", id_, primary_key=True))
    holds = sa.Table(
        f"holds{suffix}",
        md,
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("request_id", sa.String(128), nullable=False, unique=True),
        sa.Column("amount_nano_usd", sa.BigInteger, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sqlite_with_rowid=False,
    )
    hold_items = sa.Table(
        f"hold_items{suffix}",
        md,
        sa.Column("hold_id", sa.String(32), primary_key=True),
        sa.Column("budget_period_id", id_, sa.ForeignKey("budget_periods.id"), primary_key=True),
        sqlite_with_rowid=False,
    )
    return holds, hold_items


def _rebuild_sqlite_table(conn: sa.Connection, new: sa.Table, name: str) -> None:
    """Replace table ``name`` by ``new`` (same columns), rows included, then give it ``name``.

    SQLite's documented order: create the new table, copy, drop the old one, rename the new one.
    ``foreign_keys`` may stay on: nothing references ``holds`` or ``hold_items`` (dropping a child
    table deletes no parent row), and every copied item still references its budget row.
    """
    new.create(conn)
    columns = ", ".join(c.name for c in new.columns)
    conn.execute(sa.text(f"INSERT INTO {new.name} ({columns}) SELECT {columns} FROM {name}"))
    conn.execute(sa.text(f"DROP TABLE {name}"))
    conn.execute(sa.text(f"ALTER TABLE {new.name} RENAME TO {name}"))


def m004_slim_holds(conn: sa.Connection) -> None:
    """Drop the index on ``holds.expires_at``; on SQLite, make ``holds``/``hold_items`` WITHOUT ROWID.

    Fewer pages written per commit of reserve and settle. The index served only the sweeper, and
    ``holds`` contains only the calls in flight (settle deletes the row), so its scan is cheap. A rowid
    table with a text primary key is two B-trees (the rows, and the key's index), so each insert
    and delete wrote both; WITHOUT ROWID stores the rows in the key's B-tree: one. PostgreSQL's
    tables are heaps either way: there, only the index goes.
    """
    # IF EXISTS: the end state is the same for a version-3 database whose index was dropped by hand.
    conn.execute(sa.text("DROP INDEX IF EXISTS ix_holds_expires_at"))
    if conn.dialect.name != "sqlite":
        return
    holds, hold_items = _slim_hold_tables(sa.MetaData(), "_m004")
    _rebuild_sqlite_table(conn, holds, "holds")
    _rebuild_sqlite_table(conn, hold_items, "hold_items")


def _calls_v5(md: sa.MetaData, name: str) -> sa.Table:
    """Version 5's ``calls`` (named ``name``): version 1's, with the ``interrupted`` outcome."""
    id_ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    return sa.Table(
        name,
        md,
        sa.Column("id", id_, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(128), nullable=False, unique=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("surface", sa.String(32), nullable=False),
        sa.Column("principal", sa.String(512), nullable=False),
        sa.Column("team_id", sa.String(255)),
        sa.Column("user_id", sa.String(255)),
        sa.Column("channel_id", sa.String(255)),
        sa.Column("client_id", sa.String(255)),
        sa.Column("provider", sa.String(100), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        *(
            sa.Column(f"{kind}_tokens", sa.BigInteger, nullable=False)
            for kind in ("input", "output", "cache_read", "cache_write", "reasoning")
        ),
        sa.Column("cost_nano_usd", sa.BigInteger, nullable=False),
        sa.Column("cost_estimated", sa.Boolean, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("error_code", sa.String(100)),
        sa.CheckConstraint(f"outcome IN ({_OUTCOMES_V5})", name="ck_calls_outcome"),
        sa.CheckConstraint("cost_nano_usd >= 0", name="ck_calls_cost"),
        # Named as version 1's index=True named it on "calls", since this table is renamed so.
        sa.Index("ix_calls_created_at", "created_at"),
    )


_OUTCOMES_V5 = "'ok', 'refused', 'error', 'cancelled', 'interrupted'"


def m005_interrupted_calls(conn: sa.Connection) -> None:
    """Let a hold carry its call's identity, and a call be ``interrupted``.

    ``holds.call_identity`` (JSON: who, through which surface, which model) is what the sweeper
    needs to turn a dead process's hold into a calls row (outcome ``interrupted``, charged the
    hold, estimated): such a call may have been billed, and a hold released at $0 left no trace.
    PostgreSQL changes the outcome check in place; SQLite cannot alter a check, so ``calls`` is
    rebuilt (rows, ids, the unique request id and the created_at index kept).
    """
    conn.execute(sa.text("ALTER TABLE holds ADD COLUMN call_identity TEXT"))
    if conn.dialect.name != "sqlite":
        conn.execute(sa.text("ALTER TABLE calls DROP CONSTRAINT ck_calls_outcome"))
        conn.execute(
            sa.text(f"ALTER TABLE calls ADD CONSTRAINT ck_calls_outcome CHECK (outcome IN ({_OUTCOMES_V5}))")
        )
        return
    # The index name must be free before the new table's index takes it.
    conn.execute(sa.text("DROP INDEX IF EXISTS ix_calls_created_at"))
    _rebuild_sqlite_table(conn, _calls_v5(sa.MetaData(), "calls_m005"), "calls")


def m006_people(conn: sa.Connection) -> None:
    """Create ``api_tokens`` (personal MCP tokens, hashed), and record who set each override.

    A personal token makes an MCP client's calls the person's, so per-user budgets cover them;
    only its SHA-256 is kept (``token_hash``), never the token. ``budget_overrides`` gains
    ``set_by`` and ``set_via`` (the person and the face: slack, cli, mcp), shown beside the limit.
    """
    md = sa.MetaData()
    sa.Table(
        "api_tokens",
        md,
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("team_id", sa.String(255)),
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("created_by", sa.String(255), nullable=False),
        sa.Column("last_used_at", UTCDateTime()),
        sa.Column("revoked_at", UTCDateTime()),
    )
    md.create_all(conn)
    for column in (sa.Column("set_by", sa.String(255)), sa.Column("set_via", sa.String(32))):
        type_ = column.type.compile(dialect=conn.dialect)
        conn.execute(sa.text(f"ALTER TABLE budget_overrides ADD COLUMN {column.name} {type_}"))


#: Every migration, in order: (version, name, function).
MIGRATIONS: tuple[tuple[int, str, Migration], ...] = (
    (1, "m001_initial", m001_initial),
    (2, "m002_alert_delivery", m002_alert_delivery),
    (3, "m003_request_keys", m003_request_keys),
    (4, "m004_slim_holds", m004_slim_holds),
    (5, "m005_interrupted_calls", m005_interrupted_calls),
    (6, "m006_people", m006_people),
)


def _apply_pending(conn: sa.Connection) -> list[str]:
    schema_migrations.create(conn, checkfirst=True)
    done = set(conn.execute(sa.select(schema_migrations.c.version)).scalars())
    applied = []
    for version, name, migration in MIGRATIONS:
        if version in done:
            continue
        migration(conn)
        conn.execute(
            schema_migrations.insert().values(version=version, name=name, applied_at=datetime.now(UTC))
        )
        applied.append(name)
    return applied


async def migrate(db: Database) -> list[str]:
    """Apply every pending migration in one transaction; return the names applied (often none)."""
    async with db.write() as conn:
        if not db.is_sqlite:
            # Held until commit: a second process starting now waits, then finds nothing to do.
            await conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
        return await conn.run_sync(_apply_pending)
