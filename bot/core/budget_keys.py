"""The one key form of each budget scope, and the checks that keep a key from silently missing.

A budget's key must be spelled as the ledger keys a principal (``Principal.scope_keys``), else it
never applies and nothing says so. The forms (also the README's table):

==========  ==================================================================================
scope       key
==========  ==================================================================================
global      none (one budget for everything)
surface     ``slack``, ``mcp``, ``cli`` or ``api``
team        a Slack team id: ``T0123ABCD``
user        a Slack user: ``T0123ABCD:U0456EFGH``, or ``U0456EFGH`` alone (any team); a CLI
            user's name (``local``)
channel     a Slack channel id: ``C0123ABCD`` (not its ``#name``)
client      an MCP client's name from ``mcp.clients`` (or ``mcp.stdio_client``)
model       a model name; matches its family (any case, dated snapshots)
provider    a configured provider's name: ``openai``
==========  ==================================================================================

The config is checked at start-up (``config_key_problem``), an admin's override when it is set
(``bot.core.budget_admin``), and ``key_matches`` is the one rule a call's key is matched by.
"""

from __future__ import annotations

import re
from collections.abc import Collection

__all__ = [
    "KEY_FORMS",
    "SURFACES",
    "config_key_problem",
    "is_slack_user",
    "key_form_problem",
    "key_matches",
]

#: What a key of each scope looks like, as every error and the README say it.
KEY_FORMS: dict[str, str] = {
    "global": "no key",
    "surface": "one of slack, mcp, cli, api",
    "team": "a Slack team id such as T0123ABCD",
    "user": "a Slack user as T0123ABCD:U0456EFGH or U0456EFGH, or a CLI user's name such as local",
    "channel": "a Slack channel id such as C0123ABCD (in Slack: the channel's details, at the bottom)",
    "client": "an MCP client's name from mcp.clients",
    "model": "a model name such as gpt-4o-mini",
    "provider": "a configured provider's name such as openai",
}

#: The surfaces a principal can have (``bot.core.types.Surface``).
SURFACES = ("slack", "mcp", "cli", "api")

_TEAM = re.compile(r"[TE][A-Z0-9]+")
_USER = re.compile(r"[UW][A-Z0-9]+")
_CHANNEL = re.compile(r"[CGD][A-Z0-9]+")
#: A CLI user's name or an MCP client's: what a shell user name or a config key can be.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]*")
#: Slack's mention syntax, ``<@U123|alice>`` or ``<#C123|eng>``: what a pasted mention looks like.
_MENTION = re.compile(r"<[@#!]?([A-Z0-9]+)(?:\|[^>]*)?>")


def is_slack_user(key: str) -> bool:
    """True when ``key`` is a bare Slack user id (``U0456EFGH``), which needs a team to be a key."""
    return _USER.fullmatch(key) is not None


def key_matches(scope: str, wanted: str, found: str) -> bool:
    """Whether a budget keyed ``wanted`` applies to a call whose ``scope`` key is ``found``.

    A user budget named by a bare Slack user id applies to that user in any team, since the
    ledger keys Slack users ``team:user`` and an admin rarely knows the team id.
    """
    if wanted == found:
        return True
    return scope == "user" and ":" not in wanted and found.endswith(":" + wanted)


def _mention_fix(key: str) -> str | None:
    match = _MENTION.fullmatch(key)
    return None if match is None else match.group(1)


def key_form_problem(
    scope: str,
    key: str,
    *,
    clients: Collection[str] = (),
    providers: Collection[str] = (),
) -> str | None:
    """Why ``key`` can never be a ``scope`` key (one sentence naming the form that works), or None.

    ``clients`` and ``providers`` are the configured names; an empty collection is not checked.
    """
    form = KEY_FORMS.get(scope, "")
    bare = _mention_fix(key)
    if bare is not None:
        return f"'{key}' is a Slack mention; write the id alone: '{bare}'"
    if scope == "global":
        return "a global budget has no key; remove the key, or give the budget the scope the key belongs to"
    if key != key.strip() or not key:
        return f"the key '{key}' is empty or has spaces around it; a {scope} key is {form}"
    if scope == "surface" and key not in SURFACES:
        return f"'{key}' is not a surface; a surface key is {form}"
    if scope == "team" and not _TEAM.fullmatch(key):
        return f"'{key}' is not a Slack team id; a team key is {form}"
    if scope == "channel" and not _CHANNEL.fullmatch(key):
        name = key.lstrip("#")
        return f"'{key}' is not a Slack channel id; give #{name}'s id instead: a channel key is {form}"
    if scope == "user":
        team, sep, user = key.partition(":")
        if sep and (not _TEAM.fullmatch(team) or not user or not _NAME.fullmatch(user)):
            return f"'{key}' is not a user key; a user key is {form}"
        if not sep and not _NAME.fullmatch(key):
            return f"'{key}' is not a user key; a user key is {form}"
    if scope == "client" and clients and key not in clients:
        return f"no MCP client is named '{key}'; the clients are {', '.join(sorted(clients))}"
    if scope == "provider" and providers and key not in providers:
        return f"no provider is named '{key}'; the providers are {', '.join(sorted(providers))}"
    return None


def config_key_problem(
    scope: str, key: str | None, *, clients: Collection[str], providers: Collection[str]
) -> str | None:
    """Why a configured budget's ``key`` can never match a principal, or None when it can."""
    if key is None:
        return None
    return key_form_problem(scope, key, clients=clients, providers=providers)
