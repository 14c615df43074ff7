"""``Ledger``: reserve before a call, settle or release after it, and never overspend a budget.

The life of a call::

    hold = await ledger.reserve(principal, max_cost, request_id=rid, model=m, provider=p)
    try:
        result = await call_the_model()
    except BaseException:
        await ledger.release(hold, failed_record)   # in finally: a missed release leaks the hold
        raise
    alerts = await ledger.settle(hold, ok_record)   # charges the real cost

``reserve`` checks and holds every applicable budget in one transaction, all or nothing, so N
concurrent callers can never all see the same room (see design-notes "Money"). A refused call is
not written by ``reserve``; the caller records it with ``record()``. Every write is one
transaction of ``transactions.py`` run by the database's writer (``drivers/``); the money rules
they apply are ``money.py``'s.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from types import TracebackType
from typing import Self, TypeVar
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from bot.core.config import BudgetConfig, DatabaseConfig
from bot.core.errors import BudgetExceededError, ConfigurationError, DuplicateRequestError
from bot.core.ledger import queries, transactions
from bot.core.ledger.database import Database
from bot.core.ledger.migrations import migrate
from bot.core.ledger.models import BudgetStatus, Hold, SpendRow, Totals
from bot.core.ledger.money import from_nanos, to_nanos
from bot.core.ledger.outbox import Outbox
from bot.core.ledger.periods import Target, applicable_budgets, budget_label, call_scope_keys, period_bounds
from bot.core.ledger.settlement import CallWrites, Settlement, call_row
from bot.core.ledger.statements import statements_for
from bot.core.ledger.transactions import DuplicateRequest, Refusal, lock_order
from bot.core.types import CallRecord, Principal

__all__ = ["Clock", "Ledger", "Settlement"]

T = TypeVar("T")
log = logging.getLogger(__name__)

#: Returns the current time as an aware UTC datetime; injectable so tests never sleep.
Clock = Callable[[], datetime]

#: Expired holds released per sweep transaction (keeps each transaction short).
_SWEEP_BATCH = 500


def _utc_now() -> datetime:
    return datetime.now(UTC)


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
        self._s = statements_for(db.backend)
        self._budgets = tuple(budgets)
        self._by_name = {b.name: b for b in self._budgets}
        self._limit_nanos = {b.name: to_nanos(b.limit_usd) for b in self._budgets}
        self._tz = ZoneInfo(config.timezone)
        self._clock = clock
        self._ttl = timedelta(seconds=config.reservation_ttl_seconds)
        self._key_retention = timedelta(hours=config.request_key_retention_hours)
        # Ids of budget_periods rows already seen; rows are never deleted, so ids stay valid.
        self._period_ids: dict[tuple[str, str, str, str, datetime], int] = {}
        self._writes = CallWrites(db)
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
        """Finish the writes under way, then close every database connection."""
        await self._writes.finish()
        await self._db.dispose()

    async def __aenter__(self) -> Self:
        """Return the ledger itself (it is already open)."""
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close the ledger."""
        await self.close()

    async def ping(self) -> None:
        """Run one trivial query on the ledger's database; raises whatever the database raised."""
        async with self._db.read() as conn:
            await conn.execute(sa.text("SELECT 1"))

    @property
    def backend(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._db.backend

    @property
    def budgets(self) -> tuple[BudgetConfig, ...]:
        """The configured budgets."""
        return self._budgets

    @property
    def timezone(self) -> ZoneInfo:
        """The zone periods and days are counted in."""
        return self._tz

    def now(self) -> datetime:
        """The ledger clock's current time (aware UTC)."""
        return self._now()

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
        A request id that has a hold already raises ``ValueError``.
        """
        nanos = to_nanos(amount)
        try:
            return await self._try_reserve(principal, nanos, request_id, model, provider)
        except BudgetExceededError:
            # Expired holds (a dead process's) never count against room: sweep them, then decide
            # once more. Always once more: in a burst, another refused call may be the one whose
            # sweep freed the room.
            await self.sweep_expired()
        return await self._try_reserve(principal, nanos, request_id, model, provider)

    async def _try_reserve(
        self, principal: Principal, nanos: int, request_id: str, model: str, provider: str
    ) -> Hold:
        now = self._now()
        targets = self._targets(principal, model, provider, now)
        target_of = await self._period_rows(targets, now)
        hold = Hold(
            uuid.uuid4().hex,
            request_id,
            from_nanos(nanos),
            now,
            now + self._ttl,
            tuple(lock_order(target_of)),
        )
        row = {
            "id": hold.id,
            "request_id": request_id,
            "amount_nano_usd": nanos,
            "created_at": now,
            "expires_at": hold.expires_at,
        }
        limits = {row_id: self._limit_nanos[t.budget.name] for row_id, t in target_of.items()}
        reserve = partial(transactions.reserve, self._s, row, limits, hold_first=self._db.writer.hold_first)
        try:
            # Not durable: SQLite's lock keeps the hold safe until its commit (``sqlite_batch``).
            await self._db.writer.run(reserve, durable=False)
        except Refusal as r:
            t = target_of[r.row_id]
            raise BudgetExceededError(
                budget=budget_label(t.budget.name, t.budget.scope, t.scope_key),
                limit=from_nanos(r.limit),
                spent=from_nanos(r.spent),
                reserved=from_nanos(r.reserved),
                requested=from_nanos(nanos),
                resets_at=t.period_end,
            ) from None
        except DuplicateRequest:
            raise ValueError(f"request_id '{request_id}' already has a hold") from None
        return hold

    async def _period_rows(self, targets: Sequence[Target], now: datetime) -> dict[int, Target]:
        """The budget row id of every target's period, creating missing rows (committed first)."""
        missing = [t for t in targets if t.key not in self._period_ids]
        if missing:
            rows = [
                {
                    "budget": t.budget.name,
                    "scope": t.budget.scope,
                    "scope_key": t.scope_key,
                    "period": t.budget.period,
                    "period_start": t.period_start,
                    "period_end": t.period_end,
                    "limit_nano_usd": self._limit_nanos[t.budget.name],
                    "spent_nano_usd": 0,
                    "reserved_nano_usd": 0,
                    "created_at": now,
                }
                for t in missing
            ]
            ids = await self._db.writer.run(partial(transactions.ensure_periods, self._s, rows))
            # Only once committed: a rolled-back row has no id to keep.
            self._period_ids.update(zip((t.key for t in missing), ids, strict=True))
        return {self._period_ids[t.key]: t for t in targets}

    def settle(self, hold: Hold, record: CallRecord) -> Settlement:
        """Charge the call's real cost (``record.cost_usd``) in place of its hold, and write its row.

        One transaction: the hold is freed, the cost is added to every budget it held (even when it
        is more than was held: money spent is always recorded), the calls row is written and any
        alert threshold reached is queued. It is written at once into SQLite's open shared
        transaction when there is one, else in a task; await the ``Settlement`` for the alerts it
        created. A second settle (or release) of the same request charges nothing.
        """
        return self._finish(hold, record)

    def release(self, hold: Hold, record: CallRecord | None = None) -> Settlement:
        """Free a hold without a successful call; write ``record`` (failed/cancelled) if given.

        If the provider billed tokens before failing, ``record.cost_usd`` is charged as spent.
        Idempotent per request: releasing twice, or after settle, changes nothing.
        """
        return self._finish(hold, record)

    def _finish(self, hold: Hold, record: CallRecord | None) -> Settlement:
        if record is not None and record.request_id != hold.request_id:
            raise ValueError(
                f"record is for request '{record.request_id}' but the hold is for '{hold.request_id}'"
            )
        call = None if record is None else call_row(record)
        held, rows = to_nanos(hold.amount), hold.budget_period_ids
        make = partial(transactions.settle, self._s, call, hold.id, held, rows, self._by_name, self._now())
        return self._writes.settle(make)

    @property
    def hold_renewal_seconds(self) -> float:
        """How often a call still running renews its hold: a third of the hold's lifetime, so
        expiry only ever frees the holds of dead processes."""
        return self._ttl.total_seconds() / 3

    async def renew(self, hold: Hold) -> bool:
        """Keep a running call's hold alive for another lifetime; False if it is gone already."""
        expires_at = self._now() + self._ttl
        return await self._db.writer.run(partial(transactions.renew, self._s, hold.id, expires_at))

    async def record(self, record: CallRecord) -> None:
        """Write a call that had no hold, e.g. a refused call at $0. Idempotent per request_id.

        A non-zero cost is charged to the applicable budgets of the current period (no limit
        check: it is already spent), so budget totals always equal the sum of the calls rows.
        """
        now = self._now()
        call = call_row(record)
        row_ids: list[int] = []
        if call["cost_nano_usd"]:
            targets = self._targets(record.principal, record.model, record.provider, now)
            row_ids = list(await self._period_rows(targets, now))
        await self._writes.write(partial(transactions.record, self._s, call, row_ids, self._by_name, now))

    async def claim_request(self, request_id: str) -> None:
        """Claim an idempotency key; ``DuplicateRequestError`` if any replica did (keys are kept)."""
        try:
            await self._db.writer.run(partial(transactions.claim_request, self._s, request_id, self._now()))
        except DuplicateRequest:
            raise DuplicateRequestError(request_id) from None

    async def sweep_expired(self) -> int:
        """Release every hold whose expiry has passed; return how many were released."""
        now = self._now()
        async with self._db.read() as conn:
            # A cheap read first, so the common case takes no write lock.
            if (await conn.execute(self._s.any_expired_hold, {"p_now": now})).first() is None:
                return 0
        released = 0
        while True:
            count = await self._db.writer.run(partial(transactions.sweep, self._s, now, _SWEEP_BATCH))
            released += count
            if count < _SWEEP_BATCH:
                return released

    async def housekeeping(self) -> tuple[int, int]:
        """Free expired holds and prune old idempotency keys; return how many of each.

        Run periodically (``bot serve``'s alert job), so neither waits for a refusal to be noticed.
        """
        swept = await self.sweep_expired()
        before = self._now() - self._key_retention
        pruned = await self._db.writer.run(partial(transactions.prune_request_keys, self._s, before))
        return swept, pruned

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

    async def totals(self, start: datetime | None = None, end: datetime | None = None) -> Totals:
        """Cost, calls and tokens in ``[start, end)`` (all time by default), also by outcome."""
        return await queries.totals(self._db, start, end)

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
        key = "*" if scope_key is None or budget.scope == "global" else scope_key
        now = self._now()
        start, _ = period_bounds(budget.period, now, self._tz)
        await self._db.writer.run(partial(transactions.set_override, self._s, budget, key, nanos, start, now))
