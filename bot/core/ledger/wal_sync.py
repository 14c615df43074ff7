"""Durability under SQLite's ``synchronous = NORMAL``: the WAL is synced shortly after every write.

Why not ``FULL``: it makes every commit wait for an fsync of the WAL, slowest after an idle spell
(the figures are in docs/benchmarks.md), and a call commits twice (reserve, settle): alone it
would blow the gateway's 1 ms budget of added latency. In WAL mode with ``NORMAL`` a commit is written to the
WAL file without waiting: it survives the process crashing at once (the operating system has
it), and the database is never corrupted; only a power loss or kernel crash can lose commits not
yet synced. ``WalSyncer`` fsyncs the WAL file in a worker thread at most ``interval`` after any
write, which is exactly the sync ``FULL`` does at each commit, shared by every commit of the
interval: the window a power loss can take is that interval plus one fsync, well inside what any
crash loses anyway (every call in flight, billed by the provider but never answered).

It syncs the file rather than checkpointing because the first commit after a full checkpoint
restarts the WAL and SQLite syncs the new WAL header then, even under ``NORMAL``: checkpointing
every interval put an fsync back into the next commit (measured, docs/benchmarks.md). The WAL still has to be checkpointed into the database file now and then, which SQLite
does every 1000 pages on its own; the SQLite writer's loop connection turns that off so that no commit on
the event loop pays for a checkpoint (``drivers/sqlite.py``), so this does it in its thread every
``CHECKPOINT_EVERY_WRITES`` writes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
from collections.abc import Callable

__all__ = ["CHECKPOINT_EVERY_WRITES", "WalSyncer"]

log = logging.getLogger(__name__)

#: Writes between checkpoints (a ledger transaction writes ~3-6 pages; SQLite's default is 1000 pages).
CHECKPOINT_EVERY_WRITES = 250


class WalSyncer:
    """Syncs one SQLite file's WAL at most ``interval`` seconds after each ``note_write``."""

    def __init__(self, path: str, configure: Callable[[sqlite3.Connection], None], interval: float) -> None:
        """``configure`` applies the ledger's pragmas to the checkpoint's own connection."""
        self._path = path
        self._wal_path = path + "-wal"
        self._configure = configure
        self._interval = interval
        self._dirty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._writes = 0
        # A cancelled ``sync`` leaves its thread running: never let two threads share these.
        self._lock = threading.Lock()
        self._wal_fd: int | None = None
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self.syncs = 0
        """Syncs that put every commit made before them on disk (for tests and benchmarks)."""
        self.checkpoints = 0
        """Checkpoints run (for tests)."""

    def note_write(self) -> None:
        """A transaction committed: make sure the WAL is synced within the interval."""
        if self._closed:
            return
        self._writes += 1
        self._dirty.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="sqlite-wal-sync")

    async def _run(self) -> None:
        while True:
            await self._dirty.wait()
            # Wait before syncing, not after: the writes of the next interval share one fsync.
            await asyncio.sleep(self._interval)
            self._dirty.clear()
            if not await self.sync():
                self._dirty.set()  # try again next interval

    async def sync(self) -> bool:
        """Sync the WAL now (and checkpoint if due); True when every earlier commit is on disk."""
        checkpoint = self._writes >= CHECKPOINT_EVERY_WRITES
        if checkpoint:
            self._writes = 0
        try:
            await asyncio.to_thread(self._sync, checkpoint)
        except (sqlite3.Error, OSError) as exc:
            log.warning("syncing the SQLite ledger's WAL failed; retrying (%s)", exc)
            return False
        return True

    def _sync(self, checkpoint: bool) -> None:
        with self._lock:
            fd = self._current_wal_fd()
            if fd is not None:
                os.fsync(fd)
            # None: no WAL file, i.e. the last connection checkpointed (synced) and removed it.
            self.syncs += 1
            if checkpoint:
                self._checkpoint()

    def _current_wal_fd(self) -> int | None:
        """An open descriptor of the WAL file as it is now (reopened if SQLite replaced it)."""
        try:
            inode = os.stat(self._wal_path).st_ino
        except FileNotFoundError:
            return None
        if self._wal_fd is not None and os.fstat(self._wal_fd).st_ino != inode:
            os.close(self._wal_fd)
            self._wal_fd = None
        if self._wal_fd is None:
            try:
                self._wal_fd = os.open(self._wal_path, os.O_RDONLY)
            except FileNotFoundError:
                return None
        return self._wal_fd

    def _checkpoint(self) -> None:
        if self._conn is None:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            self._configure(conn)
            self._conn = conn
        # PASSIVE never waits for (or blocks) readers and writers; what it cannot copy now, a
        # later checkpoint will.
        self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        self.checkpoints += 1

    def _release(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if self._wal_fd is not None:
                os.close(self._wal_fd)
                self._wal_fd = None

    async def close(self) -> None:
        """Stop the background task, sync what is left, and release the file."""
        self._closed = True
        if self._task is not None:  # there were writes: end with a sync, whatever the task was doing
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
            await self.sync()
        await asyncio.to_thread(self._release)
