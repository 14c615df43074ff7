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
from bot.core.ledger import transactions
from bot.core.ledger.call_rows import call_identity, call_row
from bot.core.ledger.database import Database
from bot.core.ledger.journal import journal_for
from bot.core.ledger.migrations import migrate
from bot.core.ledger.models import Hold
from bot.core.ledger.money import from_nanos, to_nanos
from bot.core.ledger.outbox import Outbox
from bot.core.ledger.overrides import LedgerOverrides
from bot.core.ledger.periods import Target, budget_label
from bot.core.ledger.settlement import CallWrites, Settlement
from bot.core.ledger.statements import statements_for
from bot.core.ledger.tokens import TokenStore
from bot.core.ledger.transactions import DuplicateRequest, Refusal, lock_order
from bot.core.ledger.upkeep import LedgerUpkeep
from bot.core.types import CallRecord, Principal

__all__ = ["Clock", "Ledger", "Settlement"]

T = TypeVar("T")
log = logging.getLogger(__name__)

#: Returns the current time as an aware UTC datetime; injectable so tests never sleep.
Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


class _Refused(Exception):
    """A reserve refused by one budget row: the user's error, and what its alert needs."""

    def __init__(self, error: BudgetExceededError, refusal: Refusal, budget: BudgetConfig) -> None:
        super().__init__(error)
        self.error, self.budget = error, budget
        self.row_id, self.spent, self.limit = refusal.row_id, refusal.spent, refusal.limit


class Ledger(LedgerOverrides, LedgerUpkeep):
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
        # Budget rows whose exhausted alert this process has queued (rows are per period).
        self._exhausted_rows: set[int] = set()
        self.journal = journal_for(config.journal_path, db.sqlite_setup.path if db.sqlite_setup else None)
        """Where records the database could not take wait to be written (None: no journal)."""
        self._writes = CallWrites(db, self.journal)
        self.outbox = Outbox(db, self._by_name, self._tz, self._now)
        """Claiming and delivering alerts, job-made alert kinds, job runs (see ``outbox.py``)."""
        self.tokens = TokenStore(db, self._now)
        """Personal MCP tokens: made, checked, listed, revoked (see ``tokens.py``)."""

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
            ledger = cls(db, config, budgets, clock or _utc_now)
            # What a dead process left: its journaled records, then its expired holds.
            await ledger.replay_journal()
            await ledger.sweep_expired()
        except BaseException:
            await db.dispose()
            raise
        return ledger

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

    # -- reserve / settle / release ------------------------------------------------------------

    async def reserve(
        self,
        principal: Principal,
        amount: Decimal,
        *,
        request_id: str,
        model: str,
        provider: str,
        input_tokens: int = 0,
    ) -> Hold:
        """Hold ``amount`` against every budget that applies to this call, or refuse.

        All or nothing, in one transaction. The hold keeps who calls which model (and its
        ``input_tokens``), so that if this process dies during the call, the sweeper writes it
        down as ``interrupted``. Raises ``BudgetExceededError`` naming the budget that
        lacks room (after freeing expired holds and trying once more); nothing is written then.
        A request id that has a hold already raises ``ValueError``.
        """
        nanos = to_nanos(amount)
        try:
            return await self._try_reserve(principal, nanos, request_id, model, provider, input_tokens)
        except _Refused:
            # Expired holds (a dead process's) never count against room: sweep them, then decide
            # once more. Always once more: in a burst, another refused call may be the one whose
            # sweep freed the room.
            await self.sweep_expired()
        try:
            return await self._try_reserve(principal, nanos, request_id, model, provider, input_tokens)
        except _Refused as refused:
            await self._exhausted(refused)
            raise refused.error from None

    async def _exhausted(self, refused: _Refused) -> None:
        """The budget row refuses calls now: queue its ``exhausted`` alert (once per period; this
        process skips rows it has alerted already, so a burst of refusals writes once)."""
        if refused.row_id in self._exhausted_rows:
            return
        fraction = refused.spent / refused.limit if refused.limit > 0 else 1.0
        make = partial(
            transactions.queue_exhausted, self._s, refused.row_id, fraction, refused.budget, self._now()
        )
        try:
            await self._db.writer.run(make)
        except Exception:  # the refusal stands and is what the caller must hear; the alert is lost
            log.warning("could not queue a budget's exhausted alert", exc_info=True)
            return
        self._exhausted_rows.add(refused.row_id)

    async def _try_reserve(
        self, principal: Principal, nanos: int, request_id: str, model: str, provider: str, input_tokens: int
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
            "call_identity": call_identity(principal, provider, model, now, input_tokens),
        }
        limits = {row_id: self._limit_nanos[t.budget.name] for row_id, t in target_of.items()}
        reserve = partial(transactions.reserve, self._s, row, limits, hold_first=self._db.writer.hold_first)
        try:
            # Not durable: SQLite's lock keeps the hold safe until its commit (``sqlite_batch``).
            await self._db.writer.run(reserve, durable=False)
        except Refusal as r:
            t = target_of[r.row_id]
            error = BudgetExceededError(
                budget=budget_label(t.budget.name, t.budget.scope, t.scope_key),
                limit=from_nanos(r.limit),
                spent=from_nanos(r.spent),
                reserved=from_nanos(r.reserved),
                requested=from_nanos(nanos),
                resets_at=t.period_end,
            )
            raise _Refused(error, r, t.budget) from None
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
        held, rows, now = to_nanos(hold.amount), hold.budget_period_ids, self._now()
        entry = {
            "kind": "settle",
            "call": call,
            "hold_id": hold.id,
            "held": held,
            "row_ids": rows,
            "now": now,
        }
        return self._writes.settle(self._journaled(entry), entry)

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
        entry = {"kind": "record", "call": call, "row_ids": row_ids, "now": now}
        await self._writes.write_or_journal(self._journaled(entry), entry)

    async def claim_request(self, request_id: str) -> None:
        """Claim an idempotency key; ``DuplicateRequestError`` if any replica did (keys are kept)."""
        try:
            await self._db.writer.run(partial(transactions.claim_request, self._s, request_id, self._now()))
        except DuplicateRequest:
            raise DuplicateRequestError(request_id) from None
