"""The local journal: ledger writes that failed after every retry, kept on disk until replayed.

A call's record must never be lost, but the ledger's database can be unreachable for longer
than a write's retries (``settlement.WRITE_ATTEMPTS``). Then the write's inputs (the calls row,
the hold and its budget rows) are appended here as one JSON line, flushed and fsynced, and the
next ``Ledger.open`` (or the periodic ``housekeeping``) runs them again. Every journaled
transaction is idempotent per request (``transactions.settle``/``record``), so a replay made
twice, or by two processes sharing the file, charges once. If the hold expired meanwhile, the
sweeper wrote an ``interrupted`` estimate; the replayed settle replaces it with the real record.

Several processes may share one journal (``bot serve`` and a ``bot generate`` on the same data
folder): appends hold an exclusive ``flock``, and a replay first renames the file under that
lock, so an append never lands in a file being emptied.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Awaitable, Callable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import IO, Any

__all__ = ["Journal", "JournalEntry", "journal_for", "replay"]

log = logging.getLogger(__name__)

#: One journaled write: ``{"kind": "settle" | "record", ...its transaction's inputs}``.
JournalEntry = dict[str, Any]


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"$dt": value.isoformat()}
    if isinstance(value, Mapping):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$dt"}:
            return datetime.fromisoformat(value["$dt"])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


@contextlib.contextmanager
def _locked(path: Path, mode: str) -> Iterator[IO[str]]:
    with open(path, mode, encoding="utf-8") as file:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX)
        try:
            yield file
        finally:
            fcntl.flock(file.fileno(), fcntl.LOCK_UN)


class Journal:
    """The journal file of one ledger (``DatabaseConfig.journal_path``)."""

    def __init__(self, path: Path) -> None:
        """Journal to ``path`` (created, with its folder, on the first append)."""
        self.path = path

    def append(self, entry: JournalEntry) -> None:
        """Add one write, durably: it is on disk when this returns (raises ``OSError`` if not)."""
        line = json.dumps(_encode(entry), separators=(",", ":")) + "\n"
        new = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(self.path, "a") as file:
            file.write(line)
            file.flush()
            os.fsync(file.fileno())
        if new:  # the file's name must survive a crash too: sync its folder
            fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        log.warning(
            "the ledger could not be written; the call's record is kept in the local journal and"
            " will be written when the database answers",
            extra={"journal": str(self.path), "request_id": entry.get("call", {}).get("request_id")},
        )

    def pending(self) -> bool:
        """Whether anything may wait in the journal (its file, or a dead replay's, exists)."""
        return self.path.exists() or any(self.path.parent.glob(f"{self.path.name}.replaying-*"))

    @contextlib.contextmanager
    def replaying(self) -> Iterator[list[JournalEntry]]:
        """The journaled writes, to replay inside the ``with``: on leaving it normally they are
        gone from the journal (``append`` again the ones that failed once more).

        The journal is renamed to ``<name>.replaying-<pid>`` first, so appends meanwhile start
        a new one. Files left so by a process that died mid-replay are taken too.
        """
        files = self._claim()
        entries: list[JournalEntry] = []
        for file in files:
            for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
                try:
                    entries.append(_decode(json.loads(line)))
                except ValueError:
                    # A torn last line (the process died mid-append, before its fsync returned):
                    # that write was never acknowledged, so its call was logged as lost instead.
                    log.error(
                        "skipping an unreadable journal line", extra={"journal": str(file), "line": number}
                    )
        yield entries
        for file in files:
            file.unlink(missing_ok=True)

    def _claim(self) -> list[Path]:
        """Rename the journal for this process; return it and the orphans of dead processes."""
        mine = self.path.with_name(f"{self.path.name}.replaying-{os.getpid()}")
        if self.path.exists():
            try:
                with _locked(self.path, "r"):
                    os.replace(self.path, mine)
            except FileNotFoundError:
                pass  # another process took it first
        claimed = [mine] if mine.exists() else []
        for orphan in self.path.parent.glob(f"{self.path.name}.replaying-*"):
            pid = orphan.name.rpartition("-")[2]
            if orphan != mine and pid.isdigit() and not _alive(int(pid)):
                claimed.append(orphan)
        return claimed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def journal_for(journal_path: str | None, sqlite_file: str | None) -> Journal | None:
    """The configured journal, else one beside a SQLite ledger's file (None for PostgreSQL
    without a configured path)."""
    if journal_path:
        return Journal(Path(journal_path).expanduser())
    if sqlite_file:
        return Journal(Path(f"{sqlite_file}.unrecorded.jsonl").expanduser())
    return None


async def replay(journal: Journal, write: Callable[[JournalEntry], Awaitable[Any]]) -> int:
    """Run ``write`` on every journaled entry; return how many succeeded (the others are put
    back in the journal)."""
    if not journal.pending():
        return 0
    written = 0
    with journal.replaying() as entries:
        for entry in entries:
            try:
                await write(entry)
                written += 1
            except Exception:
                log.warning("a journaled record could not be written yet", exc_info=True)
                journal.append(entry)
    if written:
        log.info("journaled call records written to the ledger", extra={"records": written})
    return written
