"""Getting an answer to the user: channel messages first, the command's ``response_url`` as fallback.

``chat.postMessage`` fails with ``not_in_channel`` / ``channel_not_found`` where the bot is not a
member; the ``response_url`` works everywhere but only five times in 30 minutes, so it carries the
final answer (never a stream of updates). Every failure is logged with Slack's error before falling
back, so no answer is silently lost.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from bot.slack.formatting import FENCE, split_message, to_mrkdwn

__all__ = ["RESPONSE_URL_USES", "AnswerStream", "Delivery"]

log = logging.getLogger(__name__)

#: Slack accepts at most five posts to one response_url.
RESPONSE_URL_USES = 5
ResponseType = Literal["in_channel", "ephemeral"]


def _slack_error(exc: BaseException) -> str:
    if isinstance(exc, SlackApiError):
        return str(exc.response.get("error") or exc.response.status_code)
    return f"{type(exc).__name__}: {exc}"


class Delivery:
    """Posts for one slash command or event: to its channel (in ``thread_ts``'s thread when
    given) while that works, else to its response_url (a slash command's only)."""

    def __init__(
        self, client: AsyncWebClient, command: dict[str, Any], *, thread_ts: str | None = None
    ) -> None:
        self.client = client
        self.channel: str = command.get("channel_id", "")
        self.user: str = command.get("user_id", "")
        self.response_url: str | None = command.get("response_url") or None
        self.thread_ts = thread_ts
        self.response_uses = 0
        #: Set after the first channel failure: later parts go to the response_url, in order.
        self.channel_failed = False

    async def post(self, text: str) -> str | None:
        """Post ``text`` in the channel; returns its ``ts``, or None (logged, channel marked failed)."""
        if self.channel_failed:
            return None
        try:
            resp = await self.client.chat_postMessage(
                channel=self.channel, text=text, unfurl_links=False, thread_ts=self.thread_ts
            )
        except Exception as exc:  # any failure must fall back, not vanish
            log.warning(
                "chat.postMessage to %s failed (%s); using the response_url", self.channel, _slack_error(exc)
            )
            self.channel_failed = True
            return None
        ts = resp.get("ts")
        return str(ts) if ts else None

    async def update(self, ts: str, text: str) -> bool:
        """Replace the message ``ts``; False (logged) when Slack refused."""
        try:
            await self.client.chat_update(channel=self.channel, ts=ts, text=text)
        except Exception as exc:
            log.warning("chat.update of %s in %s failed (%s)", ts, self.channel, _slack_error(exc))
            return False
        return True

    async def delete(self, ts: str) -> bool:
        """Delete the bot's message ``ts`` (a placeholder no answer will fill); False (logged) on failure."""
        try:
            await self.client.chat_delete(channel=self.channel, ts=ts)
        except Exception as exc:
            log.warning("chat.delete of %s in %s failed (%s)", ts, self.channel, _slack_error(exc))
            return False
        return True

    async def respond(
        self, text: str, response_type: ResponseType = "ephemeral", *, replace_original: bool = False
    ) -> bool:
        """Post to the command's response_url (at most five times); False (logged) on failure.

        ``replace_original`` replaces the command's own ephemeral ack ("Working on it…") instead
        of adding a message beside it.
        """
        if self.response_url is None or self.response_uses >= RESPONSE_URL_USES:
            log.error(
                "cannot deliver to user %s: no response_url use left; text lost: %.200s", self.user, text
            )
            return False
        self.response_uses += 1
        hook = AsyncWebhookClient(self.response_url, retry_handlers=[AsyncRateLimitErrorRetryHandler()])
        try:
            resp = await hook.send(text=text, response_type=response_type, replace_original=replace_original)
        except Exception as exc:
            log.error("response_url post failed (%s); text lost: %.200s", _slack_error(exc), text)
            return False
        if resp.status_code != 200:
            log.error("response_url answered %s %s; text lost: %.200s", resp.status_code, resp.body, text)
            return False
        return True

    async def ephemeral(self, text: str, *, replace_original: bool = False) -> bool:
        """Tell the user alone: response_url first (works in any channel), else chat.postEphemeral."""
        # An event has no response_url: straight to chat.postEphemeral, without logging a loss.
        if self.response_url is not None and await self.respond(
            text, "ephemeral", replace_original=replace_original
        ):
            return True
        try:
            await self.client.chat_postEphemeral(
                channel=self.channel, user=self.user, text=text, thread_ts=self.thread_ts
            )
        except Exception as exc:
            log.error("chat.postEphemeral failed (%s); text lost: %.200s", _slack_error(exc), text)
            return False
        return True


class AnswerStream:
    """Shows a streaming answer: one message posted early, updated in place at most every ``interval``.

    ``header`` (mrkdwn: who asked what) heads the first message; ``ts`` is a message already
    posted ("Working on it…") that the answer replaces instead of posting a new one.
    """

    def __init__(
        self, out: Delivery, *, interval: float, limit: int, header: str = "", ts: str | None = None
    ) -> None:
        self.out = out
        self.interval = interval
        self.limit = limit
        self.header = header
        self.text = ""
        self.ts = ts
        self.updates = 0
        self._last = 0.0

    def _body(self, fallback: str = "") -> str:
        answer = to_mrkdwn(self.text) or fallback
        return f"{self.header}\n{answer}" if self.header else answer

    def _preview(self) -> str:
        # Only the first message is updated live; the rest is posted when the answer is complete.
        first = split_message(self._body(), self.limit - 2)[0]
        return first + " …"

    async def on_text(self, piece: str) -> None:
        """Stream callback for ``Gateway.generate``."""
        self.text += piece
        if self.out.channel_failed or not self.text.strip():
            return
        now = time.monotonic()
        if self.ts is None:
            self.ts = await self.out.post(self._preview())
            self._last = now
        elif now - self._last >= self.interval:
            self._last = now
            if await self.out.update(self.ts, self._preview()):
                self.updates += 1

    async def finish(self, footer: str) -> None:
        """Deliver the whole answer, split into messages, with ``footer`` under the last one."""
        parts = split_message(self._body("_(the model returned no text)_"), self.limit)
        if len(parts[-1]) + len(footer) + 1 <= self.limit:
            parts[-1] += "\n" + footer
        else:
            parts.append(footer)
        pending = list(parts)
        if self.ts is not None and not self.out.channel_failed:
            if await self.out.update(self.ts, pending[0]):
                pending.pop(0)
            else:
                self.out.channel_failed = True
        while pending and not self.out.channel_failed:
            if await self.out.post(pending[0]) is not None:
                pending.pop(0)
        await self._fallback(pending)

    async def _fallback(self, parts: list[str]) -> None:
        if not parts:
            return
        room = RESPONSE_URL_USES - self.out.response_uses
        if len(parts) > room:
            # Too many parts for the response_url's five uses: keep the start and say so.
            parts = parts[: max(room, 1)]
            last = parts[-1][: self.limit - 80]
            if last.count(FENCE) % 2:  # the cut fell inside a code block: close it
                last += "\n" + FENCE
            parts[-1] = last + "\n_(answer truncated: invite the bot to see it all)_"
        for part in parts:
            await self.out.respond(part, "in_channel")

    async def abandon(self, note: str) -> None:
        """Mark a partly shown answer as cut short (the error itself goes to the user alone)."""
        if self.ts is not None and not self.out.channel_failed and self.text.strip():
            await self.out.update(self.ts, self._preview()[:-2] + f"\n_({note})_")

    async def replace(self, text: str) -> None:
        """Show ``text`` (a refusal) in place of the message posted so far, or post it when none was."""
        if self.ts is not None and not self.out.channel_failed and await self.out.update(self.ts, text):
            return
        if await self.out.post(text) is None:
            await self.out.respond(text, "ephemeral")
