"""``Ledger``: reserve before a call, settle or release after it, and never overspend a budget.

The life of a call::

    hold = await ledger.reserve(principal, max_cost, request_id=rid, model=m, provider=p)
    try:
        result = await call_the_model()
    except BaseException:
        await ledger.release(hold, failed_record)   # in finally: a missed release leaks the hold
        raise
    await ledger.settle(hold, ok_record)            # charges the real cost, returns new alerts

``reserve`` checks and holds every applicable budget in one transaction, all or nothing, so N
concurrent callers can never all see the same room (see design-notes "Money"). A refused call is
not written by ``reserve``; the caller records it with ``record()``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import TracebackType
from typing import Self
from zoneinfo import ZoneInfo

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.core.config import BudgetConfig, DatabaseConfig
from bot.core.errors import BudgetExceededError, ConfigurationError, DuplicateRequestError
from bot.core.ledger import alerts, queries, sqlite_fast, sqlite_tx, store
from bot.core.ledger.database import Database
from bot.core.ledger.migrations import migrate
from bot.core.ledger.models import Alert, BudgetStatus, Hold, SpendRow, Totals
from bot.core.ledger.outbox import Outbox
from bot.core.ledger.periods import Target, applicable_budgets, budget_label, call_scope_keys
from bot.core.ledger.schema import from_nanos, to_nanos
from bot.core.types import CallRecord, Principal

__all__ = ["Clock", "Ledger"]

#: Returns the current time as an aware UTC datetime; injectable so tests never sleep.
Clock = Callable[[], datetime]

#: Expired holds released per sweep transaction (keeps each transaction short).
_SWEEP_BATCH = 500


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _same_request(hold: Hold, record: CallRecord | None) -> None:
    if record is not None and record.request_id != hold.request_id:
        raise ValueError(
            f"record is for request '{record.request_id}' but the hold is for '{hold.request_id}'"
        )


class Ledger:
    """The persistent ledger: calls, budget periods, holds and alerts, on SQLite or PostgreSQL.

    Create it with ``await Ledger.open(config, budgets)`` (or ``async with await Ledger.open(...)``)
    and close it with ``await ledger.close()``.
    """

    def __init__(
        self, db: Database, config: DatabaseConfig, budgets: Sequence[BudgetConfig], clock: Clock
    ) -> None:
        """Use ``Ledger.open``, which also migrates the database."""
        self._db = db
        self._budgets = tuple(budgets)
        self._by_name = {b.name: b for b in self._budgets}
        self._limit_nanos = {b.name: to_nanos(b.limit_usd) for b in self._budgets}
        self._tz = ZoneInfo(config.timezone)
        self._clock = clock
        self._ttl = timedelta(seconds=config.reservation_ttl_seconds)
        # Ids of budget_periods rows already seen; rows are never deleted, so ids stay valid.
        self._period_ids: dict[store.PeriodKey, int] = {}
        # SQLite: reserve and settle each run as one plain sqlite3 function call (sqlite_fast).
        self._fast = (
            sqlite_fast.FastSqlite(db.sqlite_path, db.sqlite_setup, db.engine.dialect, db.note_write)
            if db.sqlite_path and db.sqlite_setup
            else None
        )
        if self._fast is not None:
            db.before_read = self._fast.commit_pending
        self.outbox = Outbox(db, self._by_name, self._tz, self._now)
        """Claiming and delivering alerts, job-made alert kinds, job runs (see ``outbox.py``)."""

    # -- life cycle ----------------------------------------------------------------------------

    @classmethod
    async def open(
        cls, config: DatabaseConfig, budgets: Sequence[BudgetConfig], *, clock: Clock | None = None
    ) -> Ledger:
        """Connect to ``config.url``, apply pending migrations, and return a ready ledger."""
        names = [b.name for b in budgets]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigurationError(
                f"budget names must be unique; repeated: {', '.join(dupes)}", field="budgets"
            )
        db = Database.connect(config)
        try:
            await migrate(db)
        except BaseException:
            await db.dispose()
            raise
        return cls(db, config, budgets, clock or _utc_now)

    async def close(self) -> None:
        """Close every database connection."""
        if self._fast is not None:
            await self._fast.close()
        await self._db.dispose()

    async def __aenter__(self) -> Self:
        """Return the ledger itself (it is already open)."""
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close the ledger."""
        await self.close()

    @property
    def backend(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._db.backend

    @property
    def budgets(self) -> tuple[BudgetConfig, ...]:
        """The configured budgets."""
        return self._budgets

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("the ledger clock must return timezone-aware datetimes")
        return now.astimezone(UTC)

    def _targets(
        self, principal: Principal, model: str | None, provider: str | None, now: datetime
    ) -> list[Target]:
        keys = call_scope_keys(principal, model=model, provider=provider)
        return applicable_budgets(self._budgets, keys, now, self._tz)

    # -- reserve / settle / release ------------------------------------------------------------

    async def reserve(
        self, principal: Principal, amount: Decimal, *, request_id: str, model: str, provider: str
    ) -> Hold:
        """Hold ``amount`` against every budget that applies to this call, or refuse.

        All or nothing, in one transaction. Raises ``BudgetExceededError`` naming the budget that
        lacks room (after freeing expired holds and trying once more); nothing is written then.
        """
        nanos = to_nanos(amount)
        for attempt in (1, 2):
            try:
                return await self._try_reserve(principal, nanos, request_id, model, provider)
            except BudgetExceededError:
                # A crashed process's holds must not block past their expiry: sweep, then retry once.
                if attempt == 2 or await self.sweep_expired() == 0:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _try_reserve(
        self, principal: Principal, nanos: int, request_id: str, model: str, provider: str
    ) -> Hold:
        now = self._now()
        targets = self._targets(principal, model, provider, now)
        hold_id, amount, expires_at = uuid.uuid4().hex, from_nanos(nanos), now + self._ttl
        if self._fast is not None and all(t.key in self._period_ids for t in targets):
            # Every row exists already (the common case): the SQLite hot path.
            target_of = {self._period_ids[t.key]: t for t in targets}
            hold = Hold(hold_id, request_id, amount, now, expires_at, tuple(store.lock_order(target_of)))
            return await self._fast_reserve(self._fast, target_of, hold, nanos)
        hold = Hold(hold_id, request_id, amount, now, expires_at)
        try:
            async with self._db.write() as conn:
                ids = {t.key: self._period_ids[t.key] for t in targets if t.key in self._period_ids}
                if len(ids) < len(targets):
                    # New rows are created with the limit in force; known rows pick it in the UPDATE.
                    limits = await store.effective_limits(conn, targets)
                    ids = await store.ensure_periods(conn, self._db, targets, limits, now, self._period_ids)
                row_ids = store.lock_order(ids.values())
                # The hold goes in first: it locks no budget row, so row locks are held briefly.
                values = {
                    "id": hold.id,
                    "request_id": request_id,
                    "amount_nano_usd": nanos,
                    "created_at": now,
                    "expires_at": hold.expires_at,
                }
                await store.insert_hold(conn, self._db, values, row_ids)
                target_of = {ids[t.key]: t for t in targets}
                # One fixed order for every transaction: replicas never deadlock on shared rows.
                for row_id in row_ids:
                    await self._reserve_row(conn, row_id, nanos, target_of[row_id])
        except IntegrityError as exc:
            if "request_id" in str(exc.orig) or "holds" in str(exc.orig):
                raise ValueError(f"request_id '{request_id}' already has a hold") from None
            raise
        self._period_ids.update(ids)  # only after commit: a rolled-back insert has no id to keep
        return Hold(
            id=hold.id,
            request_id=request_id,
            amount=hold.amount,
            created_at=now,
            expires_at=hold.expires_at,
            budget_period_ids=tuple(row_ids),
        )

    async def _fast_reserve(
        self, fast: sqlite_fast.FastSqlite, target_of: Mapping[int, Target], hold: Hold, nanos: int
    ) -> Hold:
        """``_try_reserve`` on SQLite when every target's row id is known (see ``sqlite_fast``)."""
        limits = self._limit_nanos
        rows = {
            i: sqlite_tx.RowBudget(t.budget.name, t.scope_key, limits[t.budget.name])
            for i, t in target_of.items()
        }
        try:
            await fast.reserve(self._db.write_gate, hold, nanos, rows)
        except sqlite_tx.Refusal as r:
            raise self._refusal(target_of[r.row_id], nanos, r.limit, r.spent, r.reserved) from None
        return hold

    async def _reserve_row(self, conn: AsyncConnection, row_id: int, nanos: int, target: Target) -> None:
        refused = await store.reserve_row(conn, row_id, nanos, to_nanos(target.budget.limit_usd))
        if refused is None:
            return
        # Only now read the limit in force (the UPDATE picked it in SQL), for the error message.
        limit = (await store.effective_limits(conn, [target]))[target.key]
        # Raising inside the transaction rolls back the holds taken on other rows.
        raise self._refusal(target, nanos, limit, *refused)

    @staticmethod
    def _refusal(target: Target, nanos: int, limit: int, spent: int, reserved: int) -> BudgetExceededError:
        return BudgetExceededError(
            budget=budget_label(target.budget.name, target.budget.scope, target.scope_key),
            limit=from_nanos(limit),
            spent=from_nanos(spent),
            reserved=from_nanos(reserved),
            requested=from_nanos(nanos),
            resets_at=target.period_end,
        )

    async def settle(self, hold: Hold, record: CallRecord) -> list[Alert]:
        """Charge the call's real cost (``record.cost_usd``) in place of its hold, and write its row.

        One transaction: the hold is freed, the cost is added to every budget it held (even when it
        is more than was held: money spent is always recorded), the calls row is written and any
        alert threshold reached is queued. Returns the alerts created. A second settle (or release)
        of the same request is a no-op.
        """
        return await self._finish(hold, record)

    def settle_now(self, hold: Hold, record: CallRecord) -> tuple[list[int], asyncio.Future[None]] | None:
        """``settle`` written at once, in this event-loop turn, when that needs no waiting.

        That is when the SQLite hot path's shared transaction is open (under load it nearly
        always is; see ``sqlite_batch``). Returns the ids of the alerts it created
        (``alerts_by_id`` loads them once committed) and the future of the commit; if that fails,
        nothing was written: call ``settle``. None when it cannot be written at once
        (PostgreSQL, ``full`` SQLite, no open transaction): call ``settle``.
        """
        if self._fast is None or record.request_id != hold.request_id:
            return None
        return self._fast.settle_now(hold, record, self._by_name, self._now())

    async def alerts_by_id(self, ids: Sequence[int]) -> list[Alert]:
        """The alerts with these ids (from ``settle_now``), by id."""
        return await alerts.alerts_by_id(self._db, ids)

    async def release(self, hold: Hold, record: CallRecord | None = None) -> list[Alert]:
        """Free a hold without a successful call; write ``record`` (failed/cancelled) if given.

        If the provider billed tokens before failing, ``record.cost_usd`` is charged as spent.
        Idempotent per request: releasing twice, or after settle, changes nothing.
        """
        return await self._finish(hold, record)

    async def _finish(self, hold: Hold, record: CallRecord | None) -> list[Alert]:
        if record is not None and record.request_id != hold.request_id:
            raise ValueError(
                f"record is for request '{record.request_id}' but the hold is for '{hold.request_id}'"
            )
        now = self._now()
        if self._fast is not None:
            # The same statements as below, as one plain function (see sqlite_tx.settle_tx).
            ids = await self._fast.settle(self._db.write_gate, hold, record, self._by_name, now)
            return await alerts.alerts_by_id(self._db, ids)
        async with self._db.write() as conn:
            # The calls row first: its unique request_id makes a repeated settle a no-op charge.
            new_row, claimed = await store.record_and_claim(conn, self._db, record, hold.id)
            spend = to_nanos(record.cost_usd) if new_row and record is not None else 0
            if claimed is not None:
                held, row_ids = claimed
                unreserve = dict.fromkeys(row_ids, held)
            else:
                # Already swept after expiry (or released): the call still cost money, so charge
                # the budgets the hold was for.
                row_ids, unreserve = list(hold.budget_period_ids), {}
            rows = await store.charge_rows(conn, row_ids, unreserve=unreserve, spend=spend)
            if spend == 0:
                return []
            return await alerts.insert_alerts(conn, self._db, rows, self._by_name, now)

    async def claim_request(self, request_id: str) -> None:
        """Claim an idempotency key; ``DuplicateRequestError`` if any replica did (keys are kept)."""
        try:
            async with self._db.write() as conn:
                await store.insert_request_key(conn, request_id, self._now())
        except IntegrityError:
            raise DuplicateRequestError(request_id) from None

    async def record(self, record: CallRecord) -> None:
        """Write a call that had no hold, e.g. a refused call at $0. Idempotent per request_id.

        A non-zero cost is charged to the applicable budgets of the current period (no limit
        check: it is already spent), so budget totals always equal the sum of the calls rows.
        """
        now = self._now()
        spend = to_nanos(record.cost_usd, what="cost_usd")
        async with self._db.write() as conn:
            if not await store.insert_call(conn, self._db, record) or spend == 0:
                return
            targets = self._targets(record.principal, record.model, record.provider, now)
            limits = await store.effective_limits(conn, targets)
            ids = await store.ensure_periods(conn, self._db, targets, limits, now, self._period_ids)
            rows = await store.charge_rows(conn, ids.values(), unreserve={}, spend=spend)
            await alerts.insert_alerts(conn, self._db, rows, self._by_name, now)
        self._period_ids.update(ids)

    async def sweep_expired(self) -> int:
        """Release every hold whose expiry has passed; return how many were released."""
        now = self._now()
        async with self._db.read() as conn:
            # A cheap read first, so the common case takes no write lock.
            if not await store.expired_hold_exists(conn, now):
                return 0
        released = 0
        while True:
            async with self._db.write() as conn:
                count = await store.sweep_batch(conn, now, _SWEEP_BATCH)
            released += count
            if count < _SWEEP_BATCH:
                return released

    # -- queries -------------------------------------------------------------------------------

    async def status(
        self, principal: Principal, *, model: str | None = None, provider: str | None = None
    ) -> list[BudgetStatus]:
        """Where every budget that applies to this principal (and model/provider) stands now."""
        now = self._now()
        targets = self._targets(principal, model, provider, now)
        return await queries.status(self._db, targets, now)

    async def status_all(self) -> list[BudgetStatus]:
        """Every budget row of the current periods (one per scope key of a per-key budget)."""
        now = self._now()
        return await queries.status_all(self._db, self._budgets, now, self._tz)

    async def spend_by_model(self, start: datetime, end: datetime) -> list[SpendRow]:
        """Spend per (provider, model) of calls created in ``[start, end)``, largest first."""
        return await queries.spend_by_model(self._db, start, end)

    async def spend_by_user(self, start: datetime, end: datetime) -> list[SpendRow]:
        """Spend per user (``team:user`` key, as in budgets) of calls in ``[start, end)``, largest first."""
        return await queries.spend_by_user(self._db, start, end)

    async def spend_by_day(self, start: datetime, end: datetime) -> list[SpendRow]:
        """Spend per local day (ISO date in the configured zone) of calls in ``[start, end)``."""
        return await queries.spend_by_day(self._db, start, end, self._tz)

    async def spend_by_surface(self, start: datetime, end: datetime) -> list[SpendRow]:
        """Spend per surface (cli, slack, mcp…) of calls in ``[start, end)``, largest first."""
        return await queries.spend_by_surface(self._db, start, end)

    @property
    def timezone(self) -> ZoneInfo:
        """The zone periods and days are counted in."""
        return self._tz

    def now(self) -> datetime:
        """The ledger clock's current time (aware UTC)."""
        return self._now()

    async def totals(self, start: datetime | None = None, end: datetime | None = None) -> Totals:
        """Cost, calls and tokens in ``[start, end)`` (all time by default), also by outcome."""
        return await queries.totals(self._db, start, end)

    async def pending_alerts(self, limit: int = 100) -> list[Alert]:
        """Alerts not delivered yet, oldest first."""
        return await alerts.pending_alerts(self._db, limit)

    async def mark_alert_delivered(self, alert_id: int) -> bool:
        """Mark an alert delivered; False if it already was (another replica sent it) or is unknown."""
        return await alerts.mark_alert_delivered(self._db, alert_id, self._now())

    async def mark_alert_failed(self, alert_id: int) -> None:
        """Count a failed delivery attempt of an alert (it stays pending)."""
        await alerts.mark_alert_failed(self._db, alert_id)

    async def set_budget_limit(self, name: str, scope_key: str | None, limit: Decimal) -> None:
        """Override a budget's limit persistently (wins over config) and apply it to the current period.

        ``scope_key`` picks one key of a per-key budget (e.g. one user); None overrides every key.
        """
        budget = self._by_name.get(name)
        if budget is None:
            raise ConfigurationError(
                f"unknown budget '{name}'",
                hint=f"Known budgets: {', '.join(sorted(self._by_name)) or '(none)'}.",
            )
        nanos = to_nanos(limit, what="limit")
        if nanos == 0:
            raise ValueError("a budget limit must be greater than zero")
        await queries.set_budget_limit(self._db, budget, scope_key, nanos, self._now(), self._tz)
