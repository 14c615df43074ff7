"""``/mcp-token``: a Slack user gets, lists and revokes their own personal MCP tokens.

``/mcp-token [new [NAME]]`` answers with the token and the ready ``claude mcp add`` line in the
command's ack: an ephemeral answer (only that user sees it), sent once (a retry of the command is
acknowledged empty by the deduper, so it never mints or shows a second token) and never through
the Web API or ``response_url``, so nothing else carries it. ``list`` and ``revoke ID`` act on the
user's own tokens only; who may do what is the core's rule (``bot.core.people``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from slack_bolt.context.ack.async_ack import AsyncAck
from slack_bolt.request.async_request import AsyncBoltRequest

from bot.connect import claude_mcp_add, url_from_headers
from bot.core.errors import USER_ERRORS
from bot.core.people import CHECK_CACHE_SECONDS, IssuedToken, PersonalToken
from bot.slack.commands import SlackCommands, invocation_key, principal_of

__all__ = ["COMMAND", "TOKEN_USAGE", "McpTokenCommand"]

COMMAND = "/mcp-token"
TOKEN_USAGE = (
    f"Usage: `{COMMAND}` or `{COMMAND} new NAME` (a new personal MCP token), `{COMMAND} list` "
    f"(yours, with last use), `{COMMAND} revoke ID`."
)
#: What the ``claude mcp add`` line says when the gateway's address is unknown (Socket Mode).
_NO_URL = "https://YOUR-GATEWAY-HOST"


def _when(moment: datetime | None) -> str:
    return "never" if moment is None else moment.strftime("%Y-%m-%d %H:%M UTC")


def issued_text(issued: IssuedToken, base_url: str | None) -> str:
    """The answer holding a new token: the token, the ready Claude Code line, what it charges."""
    line = claude_mcp_add(base_url or _NO_URL, issued.secret)
    note = "" if base_url else "\n_(Replace the host: the gateway's operator can set BOT_PUBLIC_URL.)_"
    return (
        f":key: Your personal MCP token `{issued.token.name}` (id `{issued.token.id}`). It is shown "
        "only to you and only this once: keep it secret.\n"
        f"```{issued.secret}```\n"
        f"Add the gateway to Claude Code:\n```{line}```{note}\n"
        "Calls made with it are charged to your budgets, the same ones as your `/generate`. "
        f"`{COMMAND} list` shows your tokens, `{COMMAND} revoke ID` ends one."
    )


def listed_text(tokens: list[PersonalToken]) -> str:
    """The user's tokens, one line each (never a secret: only ids, names and dates)."""
    if not tokens:
        return f"You have no personal MCP tokens. `{COMMAND}` makes one."
    lines = [
        f"• `{t.id}` *{t.name}*: created {_when(t.created_at)}, last used {_when(t.last_used_at)}"
        for t in tokens
    ]
    return "Your personal MCP tokens:\n" + "\n".join(lines) + f"\n`{COMMAND} revoke ID` ends one."


class McpTokenCommand:
    """The ``/mcp-token`` handler, sharing ``SlackCommands``' gateway, retry deduper and allow-lists."""

    def __init__(self, commands: SlackCommands) -> None:
        """Bound to the Slack face's commands object (its gateway and settings)."""
        self.commands = commands

    def _base_url(self, request: AsyncBoltRequest | None) -> str | None:
        if self.commands.settings.public_url:
            return self.commands.settings.public_url
        if request is None:
            return None
        host = request.headers.get("host") or [""]
        proto = request.headers.get("x-forwarded-proto") or [""]
        return url_from_headers(host[0], proto[0])

    async def __call__(
        self, ack: AsyncAck, command: dict[str, Any], request: AsyncBoltRequest | None = None
    ) -> None:
        """``/mcp-token [new [NAME] | list | revoke ID]``, answered ephemerally in the ack."""
        # The gate drops retries (so a token is minted and shown once) and applies the allow-lists.
        if not await self.commands._gate(ack, command, invocation_key(command, request)):
            return
        words = command.get("text", "").split()
        sub = words[0].lower() if words else "new"
        asking = principal_of(command)
        gateway = self.commands.gateway
        try:
            if sub == "new" and len(words) <= 2:
                issued = await gateway.issue_token(asking, name=words[1] if len(words) == 2 else None)
                text = issued_text(issued, self._base_url(request))
            elif sub == "list" and len(words) == 1:
                text = listed_text(await gateway.list_tokens(asking))
            elif sub == "revoke" and len(words) == 2:
                gone = await gateway.revoke_token(asking, words[1])
                text = (
                    f"Revoked `{gone.name}` (`{gone.id}`): calls with it are refused from now on "
                    f"(within {CHECK_CACHE_SECONDS:g} s on every server)."
                )
            else:
                text = TOKEN_USAGE
        except USER_ERRORS as err:
            text = f":warning: {err}"
        await ack(text=text, response_type="ephemeral")
