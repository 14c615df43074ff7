"""Writing calls' records: a settle written at once or in a task, and every write retried.

Why here, apart from ``Ledger``: a settle must not make the answer wait, must survive its caller
hanging up, and must never be lost to a passing database failure. ``CallWrites.settle`` writes
it at once into SQLite's open shared transaction when there is one (no task until its commit),
else in a task of its own; either way it hands back a ``Settlement`` whose future resolves once
the write is committed (with the alerts it created), or kept in the local journal (``journal``)
after its retries failed; it fails only if the journal could not take it either.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Generator
from functools import partial
from typing import Any, TypeVar

from bot.core.errors import BotError
from bot.core.ledger import alerts
from bot.core.ledger.database import Database
from bot.core.ledger.drivers import MakeTx
from bot.core.ledger.journal import Journal, JournalEntry
from bot.core.ledger.models import Alert
from bot.core.ledger.transactions import NothingWritten

__all__ = ["CallWrites", "Settlement"]

T = TypeVar("T")
log = logging.getLogger(__name__)

#: Tries at one write of a call's record (a locked SQLite file, a PostgreSQL failover).
WRITE_ATTEMPTS = 3


class Settlement:
    """A settle or release under way: await it for the alerts it created, once it is committed.

    ``future`` is the same result for whoever tracks the write without awaiting it (it fails
    only when the write failed after its retries). Awaiting never cancels the write.
    """

    __slots__ = ("_committed", "future")

    def __init__(
        self, future: asyncio.Future[list[Alert]], committed: asyncio.Future[None] | None = None
    ) -> None:
        """``committed``: the shared commit of a write made at once that created no alert (then
        an awaiter needs nothing else, and waits for it alone: one loop turn less)."""
        self.future = future
        self._committed = committed

    def __await__(self) -> Generator[Any, None, list[Alert]]:
        """Wait for the commit; return the alerts the call created."""
        if self._committed is not None:
            try:
                yield from asyncio.shield(self._committed).__await__()
            except Exception:
                pass  # lost with its shared transaction: ``future`` has it written again
            else:
                return []
        return (yield from asyncio.shield(self.future).__await__())


class CallWrites:
    """The writes of calls' records of one ledger: settles under way and their retries."""

    def __init__(self, db: Database, journal: Journal | None = None) -> None:
        """Write through ``db``'s writer; a write that fails after its retries goes to ``journal``."""
        self._db = db
        self._journal = journal
        self._tasks: set[asyncio.Task[Any]] = set()

    async def finish(self) -> None:
        """Wait for every write under way."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    def _start(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    async def write(self, make_tx: MakeTx[T]) -> T:
        """Run a transaction that records a call, retrying a passing database failure: a record
        is never dropped quietly (each of these transactions is idempotent per request)."""
        for attempt in range(WRITE_ATTEMPTS):
            try:
                return await self._db.writer.run(make_tx)
            except (BotError, NothingWritten, ValueError, TypeError):
                raise  # our own refusal or a programming error: retrying cannot help
            except Exception:
                if attempt + 1 == WRITE_ATTEMPTS:
                    raise
                log.warning("a ledger write failed; retrying", exc_info=True)
                await asyncio.sleep(0.05 * 2**attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    async def write_or_journal(self, make_tx: MakeTx[list[int]], entry: JournalEntry) -> list[int]:
        """``write``; if it still fails, keep ``entry`` in the journal (no alerts then: they are
        made when the journal is replayed). Raises only if the journal cannot take it either."""
        try:
            return await self.write(make_tx)
        except (BotError, NothingWritten, ValueError, TypeError):
            raise
        except Exception:
            if self._journal is None:
                raise
            try:
                self._journal.append(entry)
            except OSError:
                log.exception("the local journal could not be written either")
                raise
            return []

    def settle(self, make: MakeTx[list[int]], entry: JournalEntry) -> Settlement:
        """Write a settle (``transactions.settle``): at once if a shared transaction is open,
        else in a task; the ``Settlement`` resolves with its alerts once committed."""
        future: asyncio.Future[list[Alert]] = asyncio.get_running_loop().create_future()
        try:
            written = self._db.writer.write_now(make)
        except Exception:  # never fail the answer here: the write is made again alone, and logged
            log.warning("a settle could not be written at once; writing it alone", exc_info=True)
            written = None
        if written is None:
            self._start(self._settle_alone(make, entry, future))
        else:
            alert_ids, committed = written
            committed.add_done_callback(partial(self._committed, make, entry, alert_ids, future))
            return Settlement(future, None if alert_ids else committed)
        return Settlement(future)

    def _committed(
        self,
        make: MakeTx[list[int]],
        entry: JournalEntry,
        alert_ids: list[int],
        future: asyncio.Future[list[Alert]],
        committed: asyncio.Future[None],
    ) -> None:
        if committed.cancelled() or committed.exception() is not None:
            # Nothing was written (the shared transaction was lost): once more, alone, with retries.
            self._start(self._settle_alone(make, entry, future))
        elif alert_ids:
            self._start(self._resolve(future, alerts.alerts_by_id(self._db, alert_ids)))
        else:
            future.set_result([])

    async def _settle_alone(
        self, make: MakeTx[list[int]], entry: JournalEntry, future: asyncio.Future[list[Alert]]
    ) -> None:
        async def write() -> list[Alert]:
            alert_ids = await self.write_or_journal(make, entry)
            return await alerts.alerts_by_id(self._db, alert_ids) if alert_ids else []

        await self._resolve(future, write())

    @staticmethod
    async def _resolve(future: asyncio.Future[T], work: Coroutine[Any, Any, T]) -> None:
        try:
            future.set_result(await work)
        except BaseException as exc:
            future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
