"""``bot tokens create|list|revoke``: the operator's side of personal MCP tokens.

The command line is the operator (the operating system authenticated them), so it may make,
list and revoke anyone's tokens; the rule is the core's (``bot.core.people``). A new token is
printed once, with the ready ``claude mcp add`` line, on standard output only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from bot.connect import claude_mcp_add, public_url

if TYPE_CHECKING:  # the ledger imports SQLAlchemy: `bot --help` should not wait for it
    from bot.core.people import PersonalToken

__all__ = ["add_parser", "person_from", "run"]


def person_from(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """``--user``/``--team``, else ``BOT_USER``/``BOT_TEAM``: the person a command acts as."""
    user = args.user or os.environ.get("BOT_USER") or None
    team = args.team or os.environ.get("BOT_TEAM") or None
    return user, team


def add_person_flags(parser: argparse.ArgumentParser, what: str) -> None:
    """``--user`` and ``--team`` (with the ``BOT_USER``/``BOT_TEAM`` fallbacks) on ``parser``."""
    parser.add_argument("--user", help=f"{what}: a Slack user id such as U0123ABCD (default: BOT_USER)")
    parser.add_argument(
        "--team", help="that user's Slack team id such as T0123ABCD (default: BOT_TEAM); per-user "
        "budgets key Slack users as TEAM:USER, so give it to share their Slack budget",
    )  # fmt: skip


def add_parser(sub: Any) -> None:
    """Add ``tokens`` and its three subcommands to the ``bot`` parser's subparsers."""
    tokens = sub.add_parser("tokens", help="personal MCP tokens: create, list, revoke")
    actions = tokens.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="make a person's token (printed once, with the claude line)")
    add_person_flags(create, "whose token it is")
    create.add_argument(
        "--name", required=True, help="the token's name, e.g. laptop (its calls' client name)"
    )
    create.add_argument("--json", action="store_true", help="print the token and its details as JSON")
    listing = actions.add_parser("list", help="tokens with their last use (never the tokens themselves)")
    listing.add_argument("--user", help="only this user's tokens")
    listing.add_argument("--all", action="store_true", help="revoked tokens too")
    listing.add_argument("--json", action="store_true")
    revoke = actions.add_parser("revoke", help="revoke a token by its id (see `bot tokens list`)")
    revoke.add_argument("id", help="the token's id")


def _row(token: PersonalToken) -> dict[str, Any]:
    # Never the secret: a listed token is its id, person, dates and who made it.
    def when(moment: Any) -> str | None:
        return None if moment is None else moment.isoformat()

    return {
        "id": token.id,
        "name": token.name,
        "user": token.user_id,
        "team": token.team_id,
        "created_at": when(token.created_at),
        "created_by": token.created_by,
        "last_used_at": when(token.last_used_at),
        "revoked_at": when(token.revoked_at),
    }


def _base_url() -> str:
    # What the operator's users reach: BOT_PUBLIC_URL, else this host's `bot serve` port.
    return public_url(os.environ) or f"http://localhost:{os.environ.get('BOT_PORT') or 8080}"


async def run(args: argparse.Namespace) -> int:
    """Run ``bot tokens ACTION``; user errors propagate to ``bot.cli.main`` (one line, exit 2)."""
    from bot.app import build_core
    from bot.core.people import CHECK_CACHE_SECONDS, person_label
    from bot.core.types import Principal

    asking = Principal.cli()
    async with build_core() as core:
        if args.action == "create":
            user, team = person_from(args)
            issued = await core.issue_token(asking, name=args.name, user_id=user, team_id=team)
        elif args.action == "list":
            rows = await core.list_tokens(asking, user_id=args.user, include_revoked=args.all)
        else:
            gone = await core.revoke_token(asking, args.id)
    if args.action == "create":
        line = claude_mcp_add(_base_url(), issued.secret)
        if args.json:
            print(
                json.dumps({**_row(issued.token), "token": issued.secret, "claude_mcp_add": line}, indent=2)
            )
            return 0
        who = person_label(issued.token.team_id, issued.token.user_id)
        print(f"Personal MCP token '{issued.token.name}' for {who} (id {issued.token.id}); shown only now:")
        print(issued.secret)
        print(f"\nFor Claude Code:\n{line}")
        if issued.token.team_id is None:
            print(
                "note: no --team given, so its calls charge per-user budgets as user "
                f"'{issued.token.user_id}', not as that person's Slack TEAM:USER",
                file=sys.stderr,
            )
        return 0
    if args.action == "list":
        if args.json:
            print(json.dumps([_row(t) for t in rows], indent=2))
            return 0
        if not rows:
            print("no personal tokens (bot tokens create --user U… --name … makes one)")
        for t in rows:
            who = person_label(t.team_id, t.user_id)
            used = t.last_used_at.isoformat(timespec="seconds") if t.last_used_at else "never"
            state = f"  revoked {t.revoked_at.isoformat(timespec='seconds')}" if t.revoked_at else ""
            print(
                f"{t.id}  {t.name:20} {who:24} created {t.created_at.isoformat(timespec='seconds')}  "
                f"last used {used}{state}"
            )
        return 0
    print(
        f"revoked '{gone.name}' ({gone.id}) of {gone.user_id}; a running server refuses it within "
        f"{CHECK_CACHE_SECONDS:g} s"
    )
    return 0
