"""Ledger writes that finish after their call has answered, tracked so that none is ever dropped.

Why: a successful call's settle (charge the real cost, write the calls row, queue alerts, tell the
observers) used to run before the caller got its answer. It adds nothing the caller needs: the
cost is known before it, the hold keeps the worst case reserved until it commits, so no later
call can overspend meanwhile, and it is retried on a passing database failure. So it is started at
once, in the same event-loop turn, and finishes after the answer (what that saves is measured in
docs/benchmarks.md), and a caller that hangs up cannot interrupt it. The ledger often writes it
right away, into SQLite's shared transaction of the loop turn, and hands back
the future of its commit (``Ledger.settle``), which is tracked here (``track``).

What keeps that safe: whoever reads budgets or closes the core first waits for the writes in
flight (``flush``), so a budget read after an answer sees its charge, and a shutdown (SIGTERM
drains, then closes the gateway) loses none.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

__all__ = ["PendingWrites"]

log = logging.getLogger(__name__)


class PendingWrites:
    """The ledger writes of this process still in flight."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self._futures: set[asyncio.Future[Any]] = set()

    def start(self, write: Coroutine[Any, Any, None]) -> None:
        """Run ``write`` in its own task now; ``flush`` waits for it."""
        task = asyncio.get_running_loop().create_task(write)
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # The writer has logged the record itself (accounting._log_lost).
            log.error("a ledger write failed after its call answered", exc_info=task.exception())

    def track(self, written: asyncio.Future[Any]) -> None:
        """Count a write already made, until ``written`` (its commit) is done; ``flush`` waits for it.

        Whoever made it handles the result (``written``'s own callbacks run before ``flush``
        resumes, so a write they start then is waited for too).
        """
        if written not in self._futures:  # the writes of one shared commit share its future
            self._futures.add(written)
            written.add_done_callback(self._futures.discard)

    def __len__(self) -> int:
        """How many writes are in flight."""
        return len(self._tasks) + len(self._futures)

    async def flush(self) -> None:
        """Wait until every write started so far (and any they start) has finished."""
        while self._tasks or self._futures:
            await asyncio.wait({*self._tasks, *self._futures})
