"""``bot budget [set|unset]`` and ``bot calls``: budgets and the calls behind them, on the command line.

The command line is the operator (the operating system authenticated them), so it may change any
budget; the checks of a budget, a key and an amount are the core's (``Gateway.set_budget_limit``),
and an override records the OS user who set it, ``via cli``.
"""

from __future__ import annotations

import argparse
import getpass
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from bot.core.errors import ValidationError
from bot.core.money_text import usd

__all__ = ["add_parsers", "parse_since", "run_budget", "run_calls"]

_AGO = re.compile(r"(\d+)\s*([mhdw])")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def add_parsers(sub: Any) -> None:
    """Add ``budget`` (with ``set`` and ``unset``) and ``calls`` to the ``bot`` parser's subparsers."""
    budget = sub.add_parser("budget", help="show every budget that applies to you; set or unset a limit")
    budget.add_argument("--json", action="store_true")
    actions = budget.add_subparsers(dest="budget_action")
    setter = actions.add_parser(
        "set", help="override a budget's limit (kept across restarts, wins over the config file)"
    )
    setter.add_argument(
        "target", help="NAME, or NAME:KEY for one key of a per-key budget (e.g. per-user:T1:U2)"
    )
    setter.add_argument("amount", help="the new limit in dollars per period, e.g. 25 or 0.50")
    setter.add_argument("--json", action="store_true")
    unsetter = actions.add_parser("unset", help="remove an override: the config file's limit applies again")
    unsetter.add_argument("target", help="NAME or NAME:KEY, as it was set")
    unsetter.add_argument("--json", action="store_true")

    calls = sub.add_parser(
        "calls", help="list recent calls: time, who, surface, model, tokens, cost, outcome"
    )
    calls.add_argument(
        "--user", help="only this caller: T1:U2 or U2 (a Slack user), a CLI user's or an MCP client's name"
    )
    calls.add_argument(
        "--since", help="today, 30m, 2h, 7d, or a date/time such as 2026-11-25 or 2026-11-25T14:00 (UTC)"
    )
    calls.add_argument("--limit", type=int, default=50, help="most calls listed (default 50, at most 10000)")
    calls.add_argument("--json", action="store_true")


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (a bare container)
        return "local"


def parse_since(text: str, *, now: datetime, today: datetime) -> datetime:
    """``--since``: ``today`` (local midnight, ``today``), ``30m``/``2h``/``7d``/``1w`` ago, or ISO 8601."""
    value = text.strip().lower()
    if value == "today":
        return today
    ago = _AGO.fullmatch(value)
    if ago:
        return now - timedelta(**{_UNITS[ago.group(2)]: int(ago.group(1))})
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValidationError(
            [f"--since '{text}' is not a time."],
            hint="Give today, 30m, 2h, 7d, 1w, or a date/time such as 2026-11-25 or 2026-11-25T14:00.",
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _status_line(s: Any) -> str:
    resets = f", resets {s.resets_at.isoformat()}" if s.resets_at else ""
    line = (
        f"{s.label:32} {s.period:8} spent {usd(s.spent)} of {usd(s.limit)} "
        f"({s.fraction_used * 100:.1f}%), {usd(s.remaining)} left{resets}"
    )
    if s.override is not None:
        line += f"\n{'':32} limit {s.override.source}; the config file says {usd(s.config_limit)}"
    return line


async def run_budget(args: argparse.Namespace) -> int:
    """``bot budget`` (your budgets), ``bot budget set TARGET AMOUNT``, ``bot budget unset TARGET``."""
    from bot.app import build_core
    from bot.core.types import Principal

    action = getattr(args, "budget_action", None)
    async with build_core() as core:
        if action in ("set", "unset"):
            name, key = core.budget_target(args.target)
            if action == "set":
                change = await core.set_budget_limit(name, key, args.amount, by=_os_user(), via="cli")
            else:
                change = await core.unset_budget_limit(name, key)
            if args.json:
                print(json.dumps(_change_dict(change, removed=action == "unset"), indent=2))
            else:
                print(change.summary(removed=action == "unset"))
            return 0
        statuses = await core.budget_status(Principal.cli())
    if args.json:
        print(json.dumps([s.to_dict() for s in statuses], indent=2))
        return 0
    if not statuses:
        print("no budgets are configured (add them under `budgets:` in config)")
    for s in statuses:
        print(_status_line(s))
    return 0


def _change_dict(change: Any, *, removed: bool) -> dict[str, Any]:
    return {
        "budget": change.budget,
        "scope": change.scope,
        "scope_key": change.scope_key,
        "limit": str(change.limit),
        "config_limit": str(change.config_limit),
        "removed" if removed else "replaced": None if change.previous is None else change.previous.to_dict(),
        "notes": change.notes,
        "message": change.summary(removed=removed),
    }


async def run_calls(args: argparse.Namespace) -> int:
    """``bot calls [--user WHO] [--since WHEN] [--limit N] [--json]``: the most recent calls first."""
    from bot.app import build_core

    if not 1 <= args.limit <= 10_000:
        raise ValidationError(
            [f"--limit {args.limit} is out of range."], hint="Give a number from 1 to 10000."
        )
    async with build_core() as core:
        since = None
        if args.since:
            since = parse_since(args.since, now=datetime.now(UTC), today=core.current_period("daily")[0])
        rows = await core.recent_calls(since=since, caller=args.user, limit=args.limit)
    if args.json:
        print(json.dumps([r.to_dict() for r in rows], indent=2))
        return 0
    if not rows:
        print(
            "no calls"
            + (f" by {args.user}" if args.user else "")
            + (f" since {since:%Y-%m-%d %H:%M} UTC" if since else "")
        )
        return 0
    print(
        f"{'time (UTC)':19}  {'who':24} {'surface':7} {'model':28} {'in':>7} {'out':>7} {'cost':>12}  outcome"
    )
    for r in rows:
        cost = usd(r.cost_usd) + ("*" if r.cost_estimated else "")
        who = r.who if r.kind != "mcp_client" else f"mcp:{r.who}"
        print(
            f"{r.created_at.astimezone(UTC):%Y-%m-%d %H:%M:%S}  {who[:24]:24} {r.surface:7} {r.model[:28]:28} "
            f"{r.input_tokens:>7} {r.output_tokens:>7} {cost:>12}  {r.outcome}"
        )
    if any(r.cost_estimated for r in rows):
        print("* estimated: the provider reported no usage, so the call was charged its hold")
    return 0
