"""Which database failures mean "the ledger cannot be reached", turned into ``LedgerUnavailable``.

The drivers raise whatever their database raised: asyncpg a bare ``ConnectionRefusedError`` for a
closed port (SQLAlchemy wraps only DB-API errors, and a refused connect is not one), SQLAlchemy a
``DBAPIError`` flagged ``connection_invalidated`` for a connection that broke mid-way, sqlite3 an
``OperationalError`` coded ``SQLITE_CANTOPEN`` for a file it cannot open. Each face used to show
those as an internal error ("unexpected ConnectionRefusedError"). ``translated()`` is applied
where the ledger meets its database (``Database.read`` and ``write``, each writer's ``run``), so
every face gets one ``LedgerUnavailable`` and its one sentence instead.

Only failures to reach or open the database are translated: a constraint violation, a bug in a
statement or a transaction the ledger lost on purpose (``BatchLostError``, no SQLite code) stay
what they are, so the retries of ``settlement.py`` and the ledger's own refusals are unchanged.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.exc import DBAPIError

from bot.core.errors import LedgerUnavailable

__all__ = ["translated", "unavailable"]

#: SQLite primary result codes of a file that cannot be opened or used at all right now. Not
#: ``SQLITE_IOERR`` or ``SQLITE_FULL``: those are the passing failures ``settlement.py`` retries.
_SQLITE_UNREACHABLE = frozenset(
    {
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_BUSY,  # still locked by another process after busy_timeout
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_PERM,
        sqlite3.SQLITE_NOTADB,
    }
)
#: PostgreSQL SQLSTATE prefixes: connection exceptions (08…), the server shutting down or not
#: accepting connections yet (57P01–57P03), too many connections (53300).
_PG_UNREACHABLE = ("08", "57P01", "57P02", "57P03", "53300")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, the DB-API error SQLAlchemy wrapped, and their causes (a few levels, no cycles)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo and len(seen) < 8:
        current = todo.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo += [getattr(current, "orig", None), current.__cause__, current.__context__]


def _reason(exc: BaseException) -> str:
    first_line = (str(exc).splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first_line}"[:300] if first_line else type(exc).__name__


def unavailable(exc: BaseException) -> LedgerUnavailable | None:
    """The ``LedgerUnavailable`` that ``exc`` (raised by a database driver) means, or None."""
    if isinstance(exc, LedgerUnavailable):
        return exc
    for link in _chain(exc):
        if isinstance(link, DBAPIError) and link.connection_invalidated:
            return LedgerUnavailable(_reason(link.orig if link.orig is not None else link))
        if isinstance(link, OSError):  # refused, reset, unresolvable host, connect timeout
            return LedgerUnavailable(_reason(link))
        code = getattr(link, "sqlite_errorcode", None)
        if isinstance(link, sqlite3.Error) and isinstance(code, int) and code & 0xFF in _SQLITE_UNREACHABLE:
            return LedgerUnavailable(_reason(link))
        state = getattr(link, "sqlstate", None)
        if isinstance(state, str) and state.startswith(_PG_UNREACHABLE):
            return LedgerUnavailable(_reason(link))
    return None


@contextmanager
def translated() -> Iterator[None]:
    """Re-raise a failure to reach the database as ``LedgerUnavailable`` (the original chained)."""
    try:
        yield
    except Exception as exc:
        error = unavailable(exc)
        if error is None or error is exc:
            raise
        raise error from exc
