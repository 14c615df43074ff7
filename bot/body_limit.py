"""``BodyLimit``: refuse a request body larger than its route allows, before anything parses it.

Without it, ``/slack/events`` read a whole body into memory before checking its signature: one
forged 100 MB POST stalled the process for seconds and grew it by more than a gigabyte. This
layer sits outside every route and costs nothing to a request within its limit:

* a ``Content-Length`` above the route's limit is answered 413 at once, nothing read;
* a body without one (``Transfer-Encoding: chunked``) is counted as the app reads it, and the
  chunk that crosses the limit is answered 413 (the app then sees an error instead of the body,
  and anything it tries to send is dropped), so no more than the limit plus one chunk is held;
* every refusal, and every answer sent before the request body was read to its end (a 401
  refusing an unsigned request, a GET route ignoring a body), carries ``Connection: close``: the
  server closes the connection instead of reading and discarding the rest of the body, so a
  large or never-ending body cannot keep it busy after the answer.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bot.logging_setup import REFUSAL_SCOPE_KEY

__all__ = ["DEFAULT_BODY_LIMIT", "BodyLimit", "BodyTooLargeError", "send_refusal"]

log = logging.getLogger(__name__)

#: Bytes a route without a limit of its own accepts (the GET routes carry no body at all).
DEFAULT_BODY_LIMIT = 1024


class BodyTooLargeError(Exception):
    """Raised into the app when the body it is reading passes its route's limit (already answered 413)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"the request body is larger than this route's limit of {limit} bytes")


@dataclass
class _Exchange:
    """What one request's layer knows: whether a response started, whether it was refused."""

    limit: int
    received: int = 0
    body_done: bool = False
    started: bool = False
    refused: bool = False


class BodyLimit:
    """ASGI middleware: per-path body limits (``limits``, exact paths), ``default`` elsewhere."""

    def __init__(self, app: ASGIApp, limits: Mapping[str, int], default: int = DEFAULT_BODY_LIMIT) -> None:
        self.app = app
        self.limits = dict(limits)
        self.default = default

    def limit_for(self, path: str) -> int:
        """The most bytes a request body to ``path`` may have (a trailing slash is ignored)."""
        return self.limits.get(path.rstrip("/") or "/", self.default)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse an oversized body with 413; otherwise call the app with a counting ``receive``."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        chunked = b"transfer-encoding" in headers
        ex = _Exchange(self.limit_for(scope["path"]))
        if declared is not None:
            size = int(declared) if declared.strip().isdigit() else -1
            if size < 0:  # the HTTP parser refuses these first; kept so no path can reach int() errors
                await _answer(scope, send, 400, "the Content-Length header is not a number of bytes")
                return
            if size > ex.limit:
                await _too_large(scope, send, ex.limit, size)
                return
        if (declared is None or declared.strip() == b"0") and not chunked:
            ex.body_done = True  # no body: nothing to count or to leave unread

        async def counted() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                ex.received += len(message.get("body", b""))
                ex.body_done = not message.get("more_body", False)
                if ex.received > ex.limit:
                    if not ex.started:
                        ex.refused = True
                        await _too_large(scope, send, ex.limit, None)
                    raise BodyTooLargeError(ex.limit)
            return message

        async def guarded(message: Message) -> None:
            if ex.refused:  # the 413 was the answer; what the app does with its cut body is moot
                return
            if message["type"] == "http.response.start":
                ex.started = True
                if not ex.body_done:
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not ex.refused:
                raise
            # The app failed only because its body was cut off, and the client has its 413.
            log.debug("request body over the limit; the app's error is dropped", exc_info=True)


async def _too_large(scope: Scope, send: Send, limit: int, declared: int | None) -> None:
    size = f" ({declared} bytes)" if declared is not None else ""
    how = "" if declared is not None else " (counted as it arrived, and cut off there)"
    await _answer(
        scope,
        send,
        413,
        f"the request body{size} is larger than this route's limit of {limit} bytes{how}",
        hint="Send a smaller body: Slack's payloads are a few KB, and /mcp takes any prompt within "
        "the configured max_prompt_chars.",
    )


async def _answer(scope: Scope, send: Send, status: int, message: str, hint: str | None = None) -> None:
    """A JSON refusal that closes the connection (the unread body is never drained)."""
    await send_refusal(
        scope, send, status, "request body too large" if status == 413 else "bad request", message, hint
    )


async def send_refusal(
    scope: Scope, send: Send, status: int, error: str, message: str, hint: str | None = None
) -> None:
    """Answer ``status`` with a JSON ``{error, message, hint}`` and close the connection (what
    is left of the request body is never read); the log line gets ``message`` as its reason."""
    scope[REFUSAL_SCOPE_KEY] = message
    payload = {"error": error, "message": message}
    if hint:
        payload["hint"] = hint
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
