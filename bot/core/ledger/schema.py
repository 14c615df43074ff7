"""The ledger's tables as the code reads and writes them today, and the types that keep them exact.

Money is stored as integer nano-dollars (``*_nano_usd``, BIGINT): exact on both databases, summable
in SQL, and comparable in the conditional ``UPDATE`` that reserves a budget. (SQLite's NUMERIC goes
through float and would lose precision.) The API speaks ``Decimal`` only; ``to_nanos`` and
``from_nanos`` are the one conversion point.

Changing a table here needs a new numbered migration in ``migrations.py``; a test compares the
migrated database with these definitions.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

from bot.core.ledger.money import MAX_NANOS, NANOS_PER_USD, from_nanos, to_nanos

__all__ = [
    "CALL_COLUMNS",
    "LEDGER_TABLES",
    "MAX_NANOS",
    "NANOS_PER_USD",
    "UTCDateTime",
    "alerts",
    "api_tokens",
    "budget_overrides",
    "budget_periods",
    "calls",
    "from_nanos",
    "hold_items",
    "holds",
    "metadata",
    "schema_migrations",
    "to_nanos",
]


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """An aware UTC datetime on both databases.

    SQLite has no time zones: values are stored as naive UTC text in one fixed format, so string
    comparison orders them correctly. PostgreSQL stores ``timestamptz``. Naive input is refused
    rather than guessed.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Convert to UTC (naive on SQLite)."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the ledger needs timezone-aware datetimes")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def bind_processor(self, dialect: Dialect) -> Any:
        """On SQLite, the text SQLAlchemy's ``DATETIME`` stores, made straight from the datetime.

        Every call binds several datetimes, and the processor chain (``process_bind_param``,
        then the dialect's formatting) costs several times more than ``isoformat``, which
        writes the very same text (a test compares them).
        """
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        def process(value: datetime | None) -> str | None:
            if value is None:
                return None
            if value.tzinfo is None:
                raise ValueError(f"naive datetime {value!r}: the ledger needs timezone-aware datetimes")
            return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")

        return process

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        """Return an aware UTC datetime."""
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# BIGINT ids on PostgreSQL; on SQLite only INTEGER PRIMARY KEY is the auto-numbered rowid.
_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_Money = sa.BigInteger

metadata = sa.MetaData()

schema_migrations = sa.Table(
    "schema_migrations",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("applied_at", UTCDateTime(), nullable=False),
)

calls = sa.Table(
    "calls",
    metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
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
    sa.Column("input_tokens", sa.BigInteger, nullable=False),
    sa.Column("output_tokens", sa.BigInteger, nullable=False),
    sa.Column("cache_read_tokens", sa.BigInteger, nullable=False),
    sa.Column("cache_write_tokens", sa.BigInteger, nullable=False),
    sa.Column("reasoning_tokens", sa.BigInteger, nullable=False),
    sa.Column("cost_nano_usd", _Money, nullable=False),
    sa.Column("cost_estimated", sa.Boolean, nullable=False),
    sa.Column("latency_ms", sa.Float, nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("error_code", sa.String(100)),
    # m005: "interrupted", a dead process's call, made from its expired hold by the sweeper.
    sa.CheckConstraint(
        "outcome IN ('ok', 'refused', 'error', 'cancelled', 'interrupted')", name="ck_calls_outcome"
    ),
    sa.CheckConstraint("cost_nano_usd >= 0", name="ck_calls_cost"),
)

#: The columns a call's row is written with (all but the auto-numbered id): ``ledger.call_row``.
CALL_COLUMNS = tuple(c.name for c in calls.c if not c.primary_key)

budget_periods = sa.Table(
    "budget_periods",
    metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column("budget", sa.String(100), nullable=False),
    sa.Column("scope", sa.String(16), nullable=False),
    sa.Column("scope_key", sa.String(512), nullable=False),
    sa.Column("period", sa.String(16), nullable=False),
    sa.Column("period_start", UTCDateTime(), nullable=False),
    sa.Column("period_end", UTCDateTime()),
    sa.Column("limit_nano_usd", _Money, nullable=False),
    sa.Column("spent_nano_usd", _Money, nullable=False),
    sa.Column("reserved_nano_usd", _Money, nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    # scope and period are in the key so that a budget whose scope or period changes under the same
    # name (daily -> weekly: both can start on a Monday) never inherits the old row's spend.
    sa.UniqueConstraint("budget", "scope", "scope_key", "period", "period_start", name="uq_budget_periods"),
)

# m004: holds and hold_items are written and deleted by every reserve and settle, so each commit's
# pages count. On SQLite they are WITHOUT ROWID: a rowid table with a text key is two B-trees (rows
# and key index), each written per insert and delete; WITHOUT ROWID is one. No index on expires_at:
# only the sweeper reads it, and the table contains just the calls in flight, so a scan is cheap.
holds = sa.Table(
    "holds",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("request_id", sa.String(128), nullable=False, unique=True),
    sa.Column("amount_nano_usd", _Money, nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
    # m005: the call's identity as JSON (``settlement.call_identity``), so that the sweeper can
    # write a dead process's call as ``interrupted``. Null on holds made before m005.
    sa.Column("call_identity", sa.Text),
    sqlite_with_rowid=False,
)

# No foreign key to holds on purpose: settle and the sweeper claim a hold by deleting its row
# first (whoever deletes it owns the release), then delete its items; a FK would forbid that order.
hold_items = sa.Table(
    "hold_items",
    metadata,
    sa.Column("hold_id", sa.String(32), primary_key=True),
    sa.Column("budget_period_id", _Id, sa.ForeignKey("budget_periods.id"), primary_key=True),
    sqlite_with_rowid=False,
)

alerts = sa.Table(
    "alerts",
    metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column("budget", sa.String(100), nullable=False),
    sa.Column("scope", sa.String(16), nullable=False),
    sa.Column("scope_key", sa.String(512), nullable=False),
    sa.Column("period", sa.String(16), nullable=False),
    sa.Column("period_start", UTCDateTime(), nullable=False),
    sa.Column("threshold", sa.Float, nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("fraction", sa.Float, nullable=False),
    sa.Column("spent_nano_usd", _Money, nullable=False),
    sa.Column("limit_nano_usd", _Money, nullable=False),
    sa.Column("channel", sa.String(255)),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("delivered_at", UTCDateTime(), index=True),
    sa.Column("attempts", sa.Integer, nullable=False),
    # m002: delivery leases (a replica claims a row before sending it), retry backoff, forecasts.
    sa.Column("claimed_until", UTCDateTime()),
    sa.Column("claimed_by", sa.String(64)),
    sa.Column("next_attempt_at", UTCDateTime()),
    sa.Column("last_error", sa.String(255)),
    sa.Column("projected_nano_usd", _Money),
    # The outbox key: replicas racing to create the same alert insert it once (ON CONFLICT DO NOTHING).
    sa.UniqueConstraint(
        "budget", "scope", "scope_key", "period", "period_start", "threshold", name="uq_alerts_once"
    ),
)

budget_overrides = sa.Table(
    "budget_overrides",
    metadata,
    sa.Column("budget", sa.String(100), primary_key=True),
    # "*" overrides every key of the budget; an exact key wins over "*".
    sa.Column("scope_key", sa.String(512), primary_key=True),
    sa.Column("limit_nano_usd", _Money, nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    # m006: who set it (a Slack user key, a CLI user) and through which face (slack, cli, mcp).
    sa.Column("set_by", sa.String(255)),
    sa.Column("set_via", sa.String(32)),
)

# m006: personal MCP tokens. Only the token's SHA-256 is stored; ``id`` is its public handle
# (listed, revoked by), ``user_id``/``team_id`` the person whose budgets its calls are charged to.
api_tokens = sa.Table(
    "api_tokens",
    metadata,
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

# m002: one row per scheduled job run (e.g. "report:day:2026-11-25"): the replica that inserts it
# runs the job, so several replicas on one schedule post a report once.
job_runs = sa.Table(
    "job_runs",
    metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("run_key", sa.String(200), primary_key=True),
    sa.Column("claimed_by", sa.String(64), nullable=False),
    sa.Column("claimed_at", UTCDateTime(), nullable=False),
    sa.Column("finished_at", UTCDateTime()),
)

# m003: idempotency keys of requests a face may receive twice (Slack retries): the first insert
# wins on any replica, a second one is refused before anything is reserved or called.
request_keys = sa.Table(
    "request_keys",
    metadata,
    sa.Column("request_id", sa.String(128), primary_key=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
)

#: Every table the ledger owns, in an order safe for DROP (dependants first).
LEDGER_TABLES = (
    "api_tokens",
    "request_keys",
    "job_runs",
    "alerts",
    "hold_items",
    "holds",
    "budget_periods",
    "budget_overrides",
    "calls",
    "schema_migrations",
)
