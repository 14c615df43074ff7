"""People, not surfaces: personal MCP tokens, who may make them, and whom a call with one charges.

A person is a Slack user of a team (``team_id``, ``user_id``). Their personal token (stored
hashed in the ledger, ``bot.core.ledger.tokens``) lets their MCP assistant call as them: the
principal of such a call (``token_principal``) carries the person *and* the token's name as its
client, so it is charged to the person's ``user``/``team`` budgets, which their Slack commands and
``bot generate --user`` charge too, as well as to the client's.

Who may do what, decided here once for every face:

* a Slack user makes, lists and revokes tokens for themselves only;
* the command line (the operator, authenticated by the operating system) for anyone;
* an MCP caller for nobody (a token must not mint more tokens).
"""

from __future__ import annotations

import re
from collections.abc import Collection

from bot.core.errors import BotError, ValidationError
from bot.core.ledger.tokens import CHECK_CACHE_SECONDS, TOKEN_PREFIX, IssuedToken, PersonalToken, TokenStore
from bot.core.types import Principal

# The token types and constants are re-exported: the faces know personal tokens through here only.
__all__ = [
    "CHECK_CACHE_SECONDS",
    "DEFAULT_TOKEN_NAME",
    "MAX_TOKENS_PER_PERSON",
    "TOKEN_PREFIX",
    "IssuedToken",
    "People",
    "PersonalToken",
    "TokenPermissionError",
    "person_label",
    "token_principal",
]

#: The name a token gets when its person gives none.
DEFAULT_TOKEN_NAME = "claude"
#: Active tokens one person may hold: bounds the table against a user minting in a loop.
MAX_TOKENS_PER_PERSON = 20
#: A token's name becomes its calls' client name and goes into a ready shell command line, so it
#: is kept to characters that need no quoting.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class TokenPermissionError(BotError):
    """The asker may not make, see or revoke this token (another person's, or from MCP)."""

    code = "permission"


def token_principal(token: PersonalToken) -> Principal:
    """Whom an MCP call made with ``token`` is charged to: its person, and its name as the client."""
    return Principal(surface="mcp", team_id=token.team_id, user_id=token.user_id, client_id=token.name)


def person_label(team_id: str | None, user_id: str) -> str:
    """``team:user`` (the key per-user budgets use), or the user alone without a team."""
    return f"{team_id}:{user_id}" if team_id else user_id


class People:
    """The personal-token rules over one ledger's ``TokenStore`` (``Gateway`` delegates here)."""

    def __init__(self, store: TokenStore, reserved_names: Collection[str] = ()) -> None:
        """``reserved_names``: the config's MCP client names, which no personal token may take
        (its calls would be charged to that shared client's budget)."""
        self._store = store
        self._reserved = frozenset(reserved_names)

    @staticmethod
    def _target(asking: Principal, user_id: str | None, team_id: str | None) -> tuple[str, str | None]:
        """The person ``asking`` acts on: themselves (Slack), anyone named (CLI)."""
        if asking.surface == "slack":
            if not asking.user_id or not asking.team_id:
                raise TokenPermissionError("a Slack command without its team and user cannot hold a token.")
            if (user_id or asking.user_id) != asking.user_id or (team_id or asking.team_id) != asking.team_id:
                raise TokenPermissionError(
                    "a Slack user can only manage their own tokens.",
                    hint="Ask an operator to run `bot tokens create --user USER --team TEAM --name NAME`.",
                )
            return asking.user_id, asking.team_id
        if asking.surface == "cli":
            if not user_id or not user_id.strip():
                raise ValidationError(
                    ["the token's person is missing."], hint="Name them: --user U123 (and --team T1)."
                )
            return user_id.strip(), (team_id or "").strip() or None
        raise TokenPermissionError(
            f"personal tokens cannot be managed over {asking.surface}.",
            hint="Use `/mcp-token` in Slack or `bot tokens` on the gateway's host.",
        )

    def _check_name(self, name: str | None) -> str:
        name = (name or "").strip() or DEFAULT_TOKEN_NAME
        if not _NAME.match(name):
            raise ValidationError(
                [f"the token name {name!r} is not valid."],
                hint="Use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit "
                "(e.g. laptop or claude-code).",
            )
        if name in self._reserved:
            raise ValidationError(
                [f"the token name {name!r} is the name of a shared MCP client in the gateway's config."],
                hint="Pick another name (e.g. laptop or claude-code).",
            )
        return name

    async def issue(
        self,
        asking: Principal,
        *,
        name: str | None = None,
        user_id: str | None = None,
        team_id: str | None = None,
    ) -> IssuedToken:
        """Make a token for the person ``asking`` may act on; its secret is in the result only."""
        user, team = self._target(asking, user_id, team_id)
        checked = self._check_name(name)
        held = await self._mine(user, team)
        if len(held) >= MAX_TOKENS_PER_PERSON:
            raise ValidationError(
                [
                    f"{person_label(team, user)} already has {len(held)} active tokens, the most one person may hold."
                ],
                hint="Revoke one you no longer use first (list them to see their ids).",
            )
        return await self._store.create(user_id=user, team_id=team, name=checked, created_by=asking.label)

    async def _mine(
        self, user_id: str, team_id: str | None, *, include_revoked: bool = False
    ) -> list[PersonalToken]:
        # The store keys by user; a Slack user id is unique only within its team, so filter on it.
        tokens = await self._store.list(user_id=user_id, include_revoked=include_revoked)
        return [t for t in tokens if t.team_id == team_id]

    async def list(
        self, asking: Principal, *, user_id: str | None = None, include_revoked: bool = False
    ) -> list[PersonalToken]:
        """Tokens ``asking`` may see, newest first: a Slack user's own; for the CLI, everyone's
        (or ``user_id``'s)."""
        if asking.surface == "cli":
            return await self._store.list(user_id=user_id or None, include_revoked=include_revoked)
        user, team = self._target(asking, user_id, None)
        return await self._mine(user, team, include_revoked=include_revoked)

    async def revoke(self, asking: Principal, token_id: str) -> PersonalToken:
        """Revoke one active token ``asking`` may manage, by id; returns it as it was listed."""
        token_id = token_id.strip()
        if asking.surface == "cli":
            candidates = await self._store.list()
        else:
            user, team = self._target(asking, None, None)
            candidates = await self._mine(user, team)
        found = next((t for t in candidates if t.id == token_id), None)
        if found is None or not await self._store.revoke(found.id, user_id=found.user_id):
            whose = "" if asking.surface == "cli" else " of yours"
            raise ValidationError(
                [f"there is no active token{whose} with id {token_id!r}."],
                hint="List the tokens to see their ids.",
            )
        return found

    async def check(self, secret: str) -> PersonalToken | None:
        """The active token whose bearer secret this is, or None."""
        return await self._store.check(secret)
