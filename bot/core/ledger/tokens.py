"""Personal MCP tokens: a person's own bearer token, so their assistant's calls are theirs.

A token is ``gwp_`` and 43 URL-safe characters (256 random bits). Only its SHA-256 is stored
(``api_tokens.token_hash``): the token is shown once, when it is made, and a leaked database
gives no usable token. ``id`` is a token's public handle (listed, revoked by). A call made over
MCP with a personal token is charged to its person's budgets (``user``/``team`` scopes) as
well as the client's.

Checking a token is a read per request, so a checked token is remembered for
``CHECK_CACHE_SECONDS`` (a revoked one stops working within that time, on every replica); its
``last_used_at`` is written at most once a minute.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from bot.core.ledger.database import Database
from bot.core.ledger.schema import api_tokens

__all__ = ["CHECK_CACHE_SECONDS", "TOKEN_PREFIX", "IssuedToken", "PersonalToken", "TokenStore"]

#: What every personal token starts with (so a log scrubber or a secret scanner can spot one).
TOKEN_PREFIX = "gwp_"
#: How long a checked token is trusted without reading the database again.
CHECK_CACHE_SECONDS = 10.0
#: ``last_used_at`` is written when it is older than this.
_TOUCH_EVERY = timedelta(minutes=1)
_t = api_tokens.c


@dataclass(frozen=True, slots=True)
class PersonalToken:
    """A personal token as listed: never the token itself."""

    id: str
    name: str
    team_id: str | None
    user_id: str
    created_at: datetime
    created_by: str
    last_used_at: datetime | None
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        """False once revoked."""
        return self.revoked_at is None


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A token just made: ``secret`` is the bearer token, shown to its person once."""

    token: PersonalToken
    secret: str


def token_hash(secret: str) -> str:
    """The SHA-256 (hex) a token is stored and looked up by."""
    return hashlib.sha256(secret.encode()).hexdigest()


def _row(r: sa.Row[tuple[object, ...]]) -> PersonalToken:
    return PersonalToken(
        r.id, r.name, r.team_id, r.user_id, r.created_at, r.created_by, r.last_used_at, r.revoked_at
    )


class TokenStore:
    """The personal tokens of one ledger (``ledger.tokens``)."""

    def __init__(self, db: Database, clock: Callable[[], datetime]) -> None:
        """Bound to the ledger's database and clock."""
        self._db = db
        self._clock = clock
        self._checked: dict[str, tuple[float, PersonalToken | None]] = {}

    async def create(self, *, user_id: str, team_id: str | None, name: str, created_by: str) -> IssuedToken:
        """Make a token for a person (a Slack user of a team); the secret is returned, never stored."""
        if not user_id.strip():
            raise ValueError("a personal token needs the user it belongs to")
        name = name.strip() or "token"
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = self._clock()
        token = PersonalToken(secrets.token_hex(8), name[:100], team_id, user_id, now, created_by, None, None)
        async with self._db.write() as conn:
            await conn.execute(
                api_tokens.insert().values(
                    id=token.id, token_hash=token_hash(secret), name=token.name, team_id=team_id,
                    user_id=user_id, created_at=now, created_by=created_by,
                )
            )  # fmt: skip
        return IssuedToken(token, secret)

    async def check(self, secret: str) -> PersonalToken | None:
        """The active token whose secret this is, or None (unknown or revoked)."""
        if not secret.startswith(TOKEN_PREFIX):
            return None
        digest = token_hash(secret)
        cached = self._checked.get(digest)
        if cached is not None and time.monotonic() - cached[0] < CHECK_CACHE_SECONDS:
            return cached[1]
        async with self._db.read() as conn:
            row = (await conn.execute(sa.select(api_tokens).where(_t.token_hash == digest))).first()
        token = None if row is None or row.revoked_at is not None else _row(row)
        if len(self._checked) > 10_000:
            self._checked.clear()  # bounded: anyone may present any number of wrong tokens
        self._checked[digest] = (time.monotonic(), token)
        if token is not None:
            await self._touch(token)
        return token

    async def _touch(self, token: PersonalToken) -> None:
        now = self._clock()
        if token.last_used_at is not None and now - token.last_used_at < _TOUCH_EVERY:
            return
        async with self._db.write() as conn:
            await conn.execute(
                sa.update(api_tokens)
                .where(
                    _t.id == token.id, sa.or_(_t.last_used_at.is_(None), _t.last_used_at < now - _TOUCH_EVERY)
                )
                .values(last_used_at=now)
            )

    async def list(self, *, user_id: str | None = None, include_revoked: bool = False) -> list[PersonalToken]:
        """Tokens, newest first: one person's, or everyone's."""
        query = sa.select(api_tokens).order_by(_t.created_at.desc(), _t.id)
        if user_id is not None:
            query = query.where(_t.user_id == user_id)
        if not include_revoked:
            query = query.where(_t.revoked_at.is_(None))
        async with self._db.read() as conn:
            return [_row(r) for r in await conn.execute(query)]

    async def revoke(self, token_id: str, *, user_id: str | None = None) -> bool:
        """Revoke a token by id (only that person's, when ``user_id`` is given); False if there
        was no such active token."""
        where = [_t.id == token_id, _t.revoked_at.is_(None)]
        if user_id is not None:
            where.append(_t.user_id == user_id)
        async with self._db.write() as conn:
            result = await conn.execute(sa.update(api_tokens).where(*where).values(revoked_at=self._clock()))
        self._checked.clear()  # this process stops trusting it at once
        return bool(result.rowcount)
