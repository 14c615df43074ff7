"""Who made a call, by name, and the recent calls themselves (``bot calls``).

A call's caller is named the way budgets key it: a person by ``team:user`` (a Slack user, or a
person behind a personal MCP token) or by a CLI user's name; else the MCP client by its name.
Reports, ``/budget team`` and ``bot calls`` all name callers with ``who``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from bot.core.ledger.database import Database
from bot.core.ledger.schema import calls, from_nanos
from bot.core.types import Principal

__all__ = ["CallEntry", "recent_calls", "who"]

_c = calls.c


def who(team_id: str | None, user_id: str | None, client_id: str | None) -> tuple[str, str]:
    """``(key, kind)`` of a caller: ``("T1:U2", "slack_user")``, ``("local", "cli_user")``,
    ``("alice", "mcp_client")``, or ``("(unknown)", "unknown")`` for a row naming nobody."""
    if user_id:
        return (f"{team_id}:{user_id}", "slack_user") if team_id else (user_id, "cli_user")
    if client_id:
        return client_id, "mcp_client"
    return "(unknown)", "unknown"


@dataclass(frozen=True, slots=True)
class CallEntry:
    """One call as ``bot calls`` lists it."""

    created_at: datetime
    #: The caller's key and kind, as ``who`` names them.
    who: str
    kind: str
    surface: str
    provider: str
    model: str
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal
    cost_estimated: bool
    #: ``ok``, ``refused``, ``error``, ``cancelled`` or ``interrupted``.
    outcome: str
    error_code: str | None
    request_id: str

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly dict (money as a string to keep it exact)."""
        return {
            "created_at": self.created_at.isoformat(),
            "who": self.who,
            "kind": self.kind,
            "surface": self.surface,
            "provider": self.provider,
            "model": self.model,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": str(self.cost_usd),
            "cost_estimated": self.cost_estimated,
            "outcome": self.outcome,
            "error_code": self.error_code,
            "request_id": self.request_id,
        }


def _caller_filter(caller: str) -> sa.ColumnElement[bool]:
    """Calls of ``caller``: ``T1:U2`` (that Slack user), a bare user id or CLI user name (any
    team), or an MCP client's name."""
    team, sep, user = caller.partition(":")
    if sep:
        return sa.and_(_c.team_id == team, _c.user_id == user)
    return sa.or_(_c.user_id == caller, sa.and_(_c.user_id.is_(None), _c.client_id == caller))


def _principal_filter(of: Principal) -> sa.ColumnElement[bool]:
    """Calls ``who`` names as ``of``: a person's (any face, any client), else the client's own
    (a client's name is not a CLI user's of the same name, so ``user_id`` must be empty)."""
    if of.user_id:
        team = _c.team_id.is_(None) if of.team_id is None else _c.team_id == of.team_id
        return sa.and_(_c.user_id == of.user_id, team)
    if of.client_id:
        return sa.and_(_c.user_id.is_(None), _c.client_id == of.client_id)
    return sa.false()  # a principal naming nobody has no calls of its own


async def recent_calls(
    db: Database, *, since: datetime | None, caller: str | None, limit: int, of: Principal | None = None
) -> list[CallEntry]:
    """The ``limit`` most recent calls (newest first) made at or after ``since``, of ``caller`` and
    of principal ``of`` if given."""
    where = []
    if since is not None:
        if since.tzinfo is None:
            raise ValueError("since must be a timezone-aware datetime")
        where.append(_c.created_at >= since)
    if caller:
        where.append(_caller_filter(caller))
    if of is not None:
        where.append(_principal_filter(of))
    stmt = sa.select(calls).where(*where).order_by(_c.created_at.desc(), _c.id.desc()).limit(limit)
    async with db.read() as conn:
        rows = (await conn.execute(stmt)).all()
    return [
        CallEntry(
            created_at=r.created_at,
            who=who(r.team_id, r.user_id, r.client_id)[0],
            kind=who(r.team_id, r.user_id, r.client_id)[1],
            surface=r.surface,
            provider=r.provider,
            model=r.model,
            input_tokens=int(r.input_tokens),
            output_tokens=int(r.output_tokens),
            cost_usd=from_nanos(int(r.cost_nano_usd)),
            cost_estimated=bool(r.cost_estimated),
            outcome=r.outcome,
            error_code=r.error_code,
            request_id=r.request_id,
        )
        for r in rows
    ]
