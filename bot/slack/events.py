"""Mentions and DMs: ``app_mention`` and ``message.im`` events answered in a thread, streaming.

``@bot question`` in a channel is answered in a thread under the mention; a DM to the bot in a
thread under that DM. A message in a thread (mentioning the bot in a channel; any in a DM)
continues that thread's conversation: its earlier turns are read back from Slack
(``bot.slack.threads``) and sent with the question through the same ``Gateway.generate`` as
``/generate``, so they are counted, held for and charged like any prompt.

Bolt acknowledges an event before its listener runs; the answer then runs as one of
``SlackCommands``' background generations (waited for on shutdown like ``/generate``'s). A
"Working on it…" placeholder is posted at once and the answer, or the refusal, replaces it.

Slack retries an event it thinks was not received (same message, same ``event_id``): the
per-process memory acknowledges a retry at once, and the ledger refuses a call whose request id
(``request_id_for(event_key(...))``) was already used, on any replica or after a restart.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from slack_bolt.context.async_context import AsyncBoltContext
from slack_sdk.errors import SlackApiError

from bot.core.errors import USER_ERRORS, DuplicateRequestError
from bot.core.face_words import in_words_of
from bot.core.types import Message, Principal
from bot.slack.commands import SlackCommands, parse_generate
from bot.slack.dedupe import event_key, request_id_for
from bot.slack.delivery import AnswerStream, Delivery
from bot.slack.formatting import asked
from bot.slack.threads import WORKING, BotUser, conversation, fit, read_thread, strip_mention

__all__ = ["MENTION_USAGE", "Question", "SlackEvents"]

log = logging.getLogger(__name__)

MENTION_USAGE = "Ask me something after the mention, e.g. `@bot [--model MODEL] your question`."
#: Message subtypes that are someone writing to the bot; edits, joins, deletions… are not.
_SPOKEN = (None, "thread_broadcast", "file_share")


@dataclass(frozen=True, slots=True)
class Question:
    """One message to answer: where it was written, by whom, and what it asks."""

    principal: Principal
    channel: str
    user: str
    ts: str
    #: The thread the answer goes to: the message's own, or a new one under the message.
    thread_ts: str
    #: True when the message was already in a thread (so earlier turns may exist).
    in_thread: bool
    model: str | None
    prompt: str
    request_id: str


class SlackEvents:
    """Handlers for ``app_mention`` and ``message`` (DMs), sharing ``SlackCommands``' tasks."""

    def __init__(self, commands: SlackCommands) -> None:
        self.commands = commands
        #: Events looked at so far, answered or not (tests wait on it, e.g. for a retry).
        self.received = 0

    async def app_mention(
        self, body: dict[str, Any], event: dict[str, Any], context: AsyncBoltContext
    ) -> None:
        """``@bot question`` in a channel (or in a thread there)."""
        try:
            await self._take(body, event, context)
        finally:
            self.received += 1

    async def message(self, body: dict[str, Any], event: dict[str, Any], context: AsyncBoltContext) -> None:
        """A message event: answered in a DM only (channel messages arrive as ``app_mention``)."""
        try:
            if event.get("channel_type") == "im" and event.get("subtype") in _SPOKEN:
                await self._take(body, event, context)
        finally:
            self.received += 1

    async def _take(self, body: dict[str, Any], event: dict[str, Any], context: AsyncBoltContext) -> None:
        bot = BotUser(context.bot_user_id, context.bot_id)
        # Bolt already drops the bot's own messages; another app's must not start a conversation.
        if event.get("bot_id") or bot.wrote(event) or not event.get("user") or not event.get("channel"):
            return
        key = event_key(body)
        if not self.commands.deduper.first_time(key):
            log.info("ignoring a retry of event %s", key)
            return
        user, channel, ts = str(event["user"]), str(event["channel"]), str(event.get("ts") or "")
        out = Delivery(self.commands.client, {"channel_id": channel, "user_id": user})
        out.thread_ts = str(event.get("thread_ts") or ts) or None
        refusal = self.commands.settings.refusal(user, channel)
        if refusal is not None:
            await out.ephemeral(refusal)
            return
        model, prompt = parse_generate(strip_mention(str(event.get("text") or ""), bot.user_id))
        if not prompt:
            await out.ephemeral(MENTION_USAGE)
            return
        team = body.get("team_id") or event.get("team") or None
        question = Question(
            principal=Principal(surface="slack", team_id=team, user_id=user, channel_id=channel),
            channel=channel,
            user=user,
            ts=ts,
            thread_ts=out.thread_ts or ts,
            in_thread=bool(event.get("thread_ts")),
            model=model,
            prompt=prompt,
            request_id=request_id_for(key),
        )
        self.commands.spawn(self._answer(question, bot, out))

    async def _earlier(self, question: Question, bot: BotUser) -> tuple[list[Message], str | None]:
        """The thread's earlier turns, and a note when they could not be read."""
        if not question.in_thread:
            return [], None
        try:
            turns = await read_thread(
                self.commands.client, question.channel, question.thread_ts, bot, before_ts=question.ts
            )
        except SlackApiError as exc:  # a missing *:history scope: answer, but say what is missing
            error = str(exc.response.get("error") or exc.response.status_code)
            log.warning("conversations.replies in %s failed (%s)", question.channel, error)
            return [], f"_(the thread's earlier messages could not be read ({error}): answered without them)_"
        return turns, None

    async def _answer(self, question: Question, bot: BotUser, out: Delivery) -> None:
        settings, gateway = self.commands.settings, self.commands.gateway
        placeholder = await out.post(WORKING)
        stream = AnswerStream(
            out,
            interval=settings.update_interval,
            limit=settings.message_limit,
            header=asked(question.user, question.prompt),
            ts=placeholder,
        )
        try:
            earlier, note = await self._earlier(question, bot)
            caps = gateway.config.slack
            fitted = await fit(
                gateway,
                question.principal,
                conversation([*earlier, Message("user", question.prompt)]),
                model=question.model,
                max_turns=caps.max_context_turns,
                max_tokens=caps.max_context_tokens,
            )
            result = await gateway.generate(
                question.principal,
                fitted.messages,
                model=question.model,
                on_text=stream.on_text,
                request_id=question.request_id,
            )
        except DuplicateRequestError:  # a retry already answered (another replica, or before a restart)
            log.info("ignoring a retry of message %s already run", question.ts)
            if placeholder is not None:
                await out.delete(placeholder)
            return
        except USER_ERRORS as err:
            await self._refused(stream, f":warning: {in_words_of(err, 'slack')}")
            return
        except Exception as exc:  # a bug or an unexpected failure: say so, keep the trace
            log.exception("answering a Slack message failed for %s", question.principal.label)
            await self._refused(
                stream, f":warning: the request failed unexpectedly ({type(exc).__name__}). Try again."
            )
            return
        if not stream.text and result.text:  # a provider that did not stream
            stream.text = result.text
        lines = [await self.commands.footer_for(question.principal, result)]
        if fitted.dropped:
            lines.append(
                f"_({fitted.dropped} earlier message{'s' if fitted.dropped != 1 else ''} of this thread "
                "left out to fit the context limit)_"
            )
        if note:
            lines.append(note)
        await stream.finish("\n".join(lines))

    @staticmethod
    async def _refused(stream: AnswerStream, text: str) -> None:
        """A refusal in place of the placeholder; a half-streamed answer keeps its text, marked."""
        if stream.text.strip():
            await stream.abandon("stopped")
            await stream.out.post(text)
        else:
            await stream.replace(text)
