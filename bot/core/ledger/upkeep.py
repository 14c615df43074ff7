"""The ledger's upkeep: what a dead process or an outage left behind, and old idempotency keys.

A base of ``Ledger``: the sweep of expired holds (``transactions.sweep``: each becomes an
``interrupted`` call), the replay of the local journal (``journal.py``), and ``housekeeping``,
which runs both and prunes idempotency keys; ``Ledger.open`` runs the first two at start-up.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from functools import partial
from typing import Any

from bot.core.config import BudgetConfig
from bot.core.ledger import transactions
from bot.core.ledger.journal import Journal, JournalEntry, replay
from bot.core.ledger.reads import LedgerReads
from bot.core.ledger.statements import Statements

__all__ = ["LedgerUpkeep"]

#: Expired holds released per sweep transaction (keeps each transaction short).
_SWEEP_BATCH = 500


class LedgerUpkeep(LedgerReads):
    """Sweeping, journal replay and housekeeping of a ledger (its state is the ``Ledger``'s)."""

    _s: Statements
    _by_name: Mapping[str, BudgetConfig]
    _key_retention: timedelta
    journal: Journal | None

    def _journaled(self, entry: JournalEntry) -> Any:
        """The transaction of a settle or record, from its journal entry (the one way to build it)."""
        if entry["kind"] == "settle":
            return partial(
                transactions.settle, self._s, entry["call"], entry["hold_id"], int(entry["held"]),
                [int(i) for i in entry["row_ids"]], self._by_name, entry["now"],
            )  # fmt: skip
        return partial(
            transactions.record, self._s, entry["call"], [int(i) for i in entry["row_ids"]], self._by_name,
            entry["now"],
        )  # fmt: skip

    async def replay_journal(self) -> int:
        """Write the records the journal kept while the database was unreachable; return how
        many were written (those failing again stay in the journal). Run at ``open`` and by
        ``housekeeping``."""
        if self.journal is None:
            return 0
        return await replay(self.journal, lambda entry: self._db.writer.run(self._journaled(entry)))

    async def sweep_expired(self) -> int:
        """Turn every hold whose expiry has passed into an ``interrupted`` call charged its
        amount (``transactions.sweep``); return how many."""
        now = self._now()
        async with self._db.read() as conn:
            # A cheap read first, so the common case takes no write lock.
            if (await conn.execute(self._s.any_expired_hold, {"p_now": now})).first() is None:
                return 0
        released = 0
        while True:
            count = await self._db.writer.run(
                partial(transactions.sweep, self._s, now, _SWEEP_BATCH, self._by_name)
            )
            released += count
            if count < _SWEEP_BATCH:
                return released

    async def housekeeping(self) -> tuple[int, int]:
        """Free expired holds and prune old idempotency keys; return how many of each.

        Run periodically (``bot serve``'s alert job), so neither waits for a refusal to be noticed.
        """
        await self.replay_journal()
        swept = await self.sweep_expired()
        before = self._now() - self._key_retention
        pruned = await self._db.writer.run(partial(transactions.prune_request_keys, self._s, before))
        return swept, pruned
