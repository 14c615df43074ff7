"""A Slack thread as a conversation: its earlier messages read back from Slack, fitted to the model.

The thread is read from Slack (``conversations.replies``) on every question, never from process
memory, so a conversation continues across restarts and on any replica. The bot's own messages
are the assistant turns (with the header, footer and notes this face adds taken off again), every
other message a user turn (with the bot's mention taken off). ``fit`` then leaves out the oldest
turns until the conversation is within ``slack.max_context_turns``, ``slack.max_context_tokens``
and the model's context window, asking the core itself (a dry run counts the input exactly as the
real call will, and applies the window), so no token rule is repeated here.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from slack_sdk.web.async_client import AsyncWebClient

from bot.core.errors import BotError, TokenLimitError, ValidationError
from bot.core.gateway import Gateway
from bot.core.types import Message, Principal

__all__ = [
    "MAX_PAGES",
    "WORKING",
    "BotUser",
    "Fitted",
    "assistant_text",
    "conversation",
    "fit",
    "read_thread",
    "strip_mention",
]

log = logging.getLogger(__name__)

#: The placeholder posted at once under a question; the answer (or the refusal) replaces it.
WORKING = "Working on it…"
#: Pages of ``conversations.replies`` read at most (200 messages each): a longer thread's
#: oldest messages would be left out by ``fit`` anyway.
MAX_PAGES = 5

_MENTION = re.compile(r"<@([A-Z0-9]+)(?:\|[^>]*)?>")
_HEADER = re.compile(r"^\*<@[^>]+> asked:\*")
_FOOTER = re.compile(r"^_`[^`]+` · .*_$")
_NOTE = re.compile(r"^_\(.*\)_$")


@dataclass(frozen=True, slots=True)
class BotUser:
    """The bot as Slack names it (``auth.test``): its user id and bot id."""

    user_id: str | None
    bot_id: str | None = None

    def wrote(self, message: Mapping[str, Any]) -> bool:
        """True when ``message`` is one of the bot's own."""
        return bool(
            (self.user_id and message.get("user") == self.user_id)
            or (self.bot_id and message.get("bot_id") == self.bot_id)
        )


@dataclass(frozen=True, slots=True)
class Fitted:
    """The conversation to send, and how many earlier turns were left out to fit it."""

    messages: list[Message]
    dropped: int


def _unescape(text: str) -> str:
    # Slack escapes these three in every message's text; the model should read them plainly.
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def strip_mention(text: str, bot_user_id: str | None) -> str:
    """``text`` without the bot's ``<@BOTID>`` mentions (other people's mentions stay)."""
    if bot_user_id:
        text = _MENTION.sub(lambda m: "" if m.group(1) == bot_user_id else m.group(0), text)
    return text.strip()


def assistant_text(text: str) -> str | None:
    """The answer inside one of the bot's messages, or None for a placeholder or a refusal.

    Takes off what ``AnswerStream`` and the event handlers add around an answer: the "asked" line
    heading it, the footer and notes under it, and the ``…`` of an answer still streaming.
    """
    stripped = text.strip()
    if not stripped or stripped == WORKING or stripped.startswith(":warning:"):
        return None
    lines = stripped.split("\n")
    if lines and _HEADER.match(lines[0]):
        lines = lines[1:]
    while lines and (_FOOTER.match(lines[-1]) or _NOTE.match(lines[-1])):
        lines.pop()
    body = "\n".join(lines).strip().removesuffix(" …").rstrip()
    return _unescape(body) or None


def _ts(value: Any) -> Decimal:
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError):
        return Decimal(0)


def conversation(turns: Iterable[Message]) -> list[Message]:
    """``turns`` with consecutive messages of one role merged (several people writing in a row,
    an answer split into several Slack messages), as every provider accepts."""
    merged: list[Message] = []
    for turn in turns:
        if merged and merged[-1].role == turn.role:
            merged[-1] = Message(turn.role, f"{merged[-1].content}\n\n{turn.content}")
        else:
            merged.append(turn)
    return merged


def turns_of(messages: Iterable[Mapping[str, Any]], bot: BotUser, *, before_ts: str) -> list[Message]:
    """The turns of a thread's messages older than ``before_ts`` (the question being answered)."""
    limit = _ts(before_ts)
    turns: list[Message] = []
    for message in sorted(messages, key=lambda m: _ts(m.get("ts"))):
        if _ts(message.get("ts")) >= limit or message.get("subtype") not in (None, "thread_broadcast"):
            continue
        text = str(message.get("text") or "")
        if bot.wrote(message):
            answer = assistant_text(text)
            if answer:
                turns.append(Message("assistant", answer))
        elif not message.get("bot_id"):  # other apps' messages are neither the user nor us
            said = _unescape(strip_mention(text, bot.user_id))
            if said:
                turns.append(Message("user", said))
    return turns


async def read_thread(
    client: AsyncWebClient, channel: str, thread_ts: str, bot: BotUser, *, before_ts: str
) -> list[Message]:
    """The earlier turns of the thread ``thread_ts`` in ``channel``, read from Slack.

    Raises ``SlackApiError`` when Slack refuses (a missing ``*:history`` scope, say); the caller
    answers without the context and says so.
    """
    messages: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(MAX_PAGES):
        resp = await client.conversations_replies(channel=channel, ts=thread_ts, limit=200, cursor=cursor)
        messages += list(resp.get("messages") or [])
        cursor = (resp.get("response_metadata") or {}).get("next_cursor") or None
        if not cursor:
            break
    return turns_of(messages, bot, before_ts=before_ts)


def _user_first(earlier: Sequence[Message], drop: int) -> int:
    # A conversation must start with a user turn (Anthropic refuses one that does not).
    while drop < len(earlier) and earlier[drop].role != "user":
        drop += 1
    return drop


async def fit(
    gateway: Gateway,
    principal: Principal,
    turns: Sequence[Message],
    *,
    model: str | None,
    max_turns: int,
    max_tokens: int,
) -> Fitted:
    """``turns`` (the last one the new question) with the oldest earlier turns left out until it
    fits ``max_turns``, ``max_tokens`` input tokens and the model's context window.

    Each try is a dry run of the core (counted, never held or charged). The question itself is
    never left out: when even it alone does not fit, the real call refuses it with the reason.
    """
    earlier, question = list(turns[:-1]), turns[-1]
    drop = max(0, len(earlier) - max_turns)
    while True:
        drop = _user_first(earlier, drop)
        candidate = [*earlier[drop:], question]
        if drop >= len(earlier):
            return Fitted(candidate, drop)
        try:
            counted = await gateway.generate(principal, candidate, model=model, dry_run=True)
        except (TokenLimitError, ValidationError):  # past the window or the prompt-size limit
            drop += 1
            continue
        except BotError:  # not a matter of size (unknown model…): the real call says what
            return Fitted(candidate, drop)
        if counted.usage.input_tokens <= max_tokens:
            return Fitted(candidate, drop)
        drop += 1
