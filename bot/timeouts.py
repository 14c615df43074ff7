"""Slow clients are cut off: a request head, and a request body, must each arrive in time.

uvicorn only times out a kept-alive connection that sits idle between requests
(``timeout_keep_alive``). A client that opens a connection and sends nothing, sends its head a
byte at a time, or its body a byte at a time, kept its connection (and, for a body, a task and
the bytes so far) for as long as it liked: 1,000 slow-header and 500 slow-body connections were
all still open after 40 s, and one slow body made SIGTERM wait the whole grace period. Two
layers, one per phase of a request:

* ``header_timeout_protocol``: uvicorn's own h11 protocol, plus a timer from the moment a
  connection opens, or a new request's first byte arrives, until its head is complete. When it
  fires the connection is closed, with a 408 if part of a head had arrived (``BOT_HEADER_TIMEOUT``).
  This has to live in the protocol: an ASGI app is only called once the head is complete. The
  h11 protocol is named explicitly (not uvicorn's "auto"), so the timer is there whether or not
  ``httptools`` happens to be installed.
* ``BodyTimeout``: an ASGI layer that gives the whole body ``BOT_BODY_TIMEOUT`` seconds from the
  moment the head was complete; past it the request is answered 408 with ``Connection: close``
  and the app reading it gets ``BodyTimeoutError`` instead (its own error is dropped, as for a
  body over its limit in ``bot.body_limit``). A total deadline, not one per chunk: a client
  sending one byte every few seconds never trips a per-chunk timeout.

While the server drains, ``BodyTimeout.cut_all`` ends every body still being read at once (503,
"shutting down"): such a request has not started any work, so there is nothing to wait for, and
the drain no longer waits on it. Idle keep-alive connections are closed after ``BOT_IDLE_TIMEOUT``
seconds by uvicorn itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import h11
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from bot.body_limit import send_refusal
from bot.logging_setup import REFUSAL_SCOPE_KEY

__all__ = ["BodyTimeout", "BodyTimeoutError", "connection_timeouts", "header_timeout_protocol"]

log = logging.getLogger(__name__)

#: Told of every connection or request cut off, with its phase (``"header"`` or ``"body"``).
OnTimeout = Callable[[str], None]


def _refusal(error: str, message: str, hint: str) -> bytes:
    return json.dumps({"error": error, "message": message, "hint": hint}).encode()


def header_timeout_protocol(seconds: float, on_timeout: OnTimeout | None = None) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol, closing a connection whose request head takes over ``seconds``."""
    body = _refusal(
        "request timeout",
        f"the request head did not arrive within {seconds:g} s",
        "Send the whole request head at once; this server closes slow connections (BOT_HEADER_TIMEOUT).",
    )
    answer = (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(body), body)
    )

    class HeaderTimeoutProtocol(H11Protocol):
        """``H11Protocol`` with a deadline on each request head (and on a silent new connection)."""

        _head_timer: asyncio.TimerHandle | None = None
        _head_started = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            """Start the clock: a new connection must send a complete head within ``seconds``."""
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            """Feed h11; arm the clock at a new head's first byte, stop it once the head is in."""
            waiting = self.conn.their_state is h11.IDLE
            super().data_received(data)
            if self.conn.their_state is h11.IDLE:  # still no complete head
                self._head_started = self._head_started or (waiting and bool(data))
                self._arm()
            else:
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            """Stop the clock, then let uvicorn clean up."""
            self._disarm()
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            """A response went out: the next head's clock starts with its first byte."""
            self._head_started = False
            super().on_response_complete()

        def _arm(self) -> None:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(seconds, self._timed_out)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _timed_out(self) -> None:
            self._head_timer = None
            if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
                return
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "?"
            if self._head_started:  # part of a head arrived: tell the client why it is cut off
                self.transport.write(answer)
                log.info(
                    "closed a connection: no complete request head within %g s",
                    seconds,
                    extra={"client": client, "phase": "header"},
                )
            else:  # a connection that sent nothing (or idled after its last answer): just close
                log.debug("closed a silent connection after %g s", seconds, extra={"client": client})
            self.transport.close()
            if on_timeout is not None:
                on_timeout("header")

    return HeaderTimeoutProtocol


def connection_timeouts(header: float, idle: float, on_timeout: OnTimeout | None = None) -> dict[str, Any]:
    """The ``uvicorn.Config`` options for ``header`` and ``idle`` (keep-alive) timeouts in seconds."""
    # uvicorn types timeout_keep_alive as int, but only ever hands it to loop.call_later.
    return {"http": header_timeout_protocol(header, on_timeout), "timeout_keep_alive": idle}


class BodyTimeoutError(Exception):
    """Raised into the app when its request body did not arrive in time (already answered)."""


@dataclass(eq=False)
class _Read:
    """One request whose body is still arriving."""

    deadline: float
    timer: asyncio.Timeout | None = None
    started: bool = False
    answered: bool = False
    draining: bool = False


class BodyTimeout:
    """ASGI middleware: a request body must be complete within ``seconds`` of its head.

    ``on_timeout("body")`` hears of every request cut off (not those cut by a drain).
    """

    def __init__(self, app: ASGIApp, seconds: float, on_timeout: OnTimeout | None = None) -> None:
        self.app = app
        self.seconds = seconds
        self.on_timeout = on_timeout
        self._reading: set[_Read] = set()

    def cut_all(self) -> None:
        """End every body still being read, now (the server is draining): each gets a 503."""
        now = asyncio.get_running_loop().time()
        for read in list(self._reading):
            read.draining, read.deadline = True, now
            if read.timer is not None:
                read.timer.reschedule(now)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Call the app with a ``receive`` that gives up on a late body, and answers for it."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"").strip()
        if b"transfer-encoding" not in headers and declared in (b"", b"0"):
            await self.app(scope, receive, send)  # no body to wait for
            return
        read = _Read(asyncio.get_running_loop().time() + self.seconds)
        self._reading.add(read)

        async def timed_receive() -> Message:
            if read not in self._reading:  # the body is complete (or the client left)
                return await receive()
            if read.answered:
                raise BodyTimeoutError(scope.get(REFUSAL_SCOPE_KEY, "request body timed out"))
            try:
                async with asyncio.timeout_at(read.deadline) as timer:
                    read.timer = timer
                    message = await receive()
            except TimeoutError:
                return await self._late(scope, send, read)
            finally:
                read.timer = None
            if message["type"] != "http.request" or not message.get("more_body", False):
                self._reading.discard(read)
            return message

        async def guarded(message: Message) -> None:
            if read.answered:  # the 408 (or 503) was the answer
                return
            if message["type"] == "http.response.start":
                read.started = True
            await send(message)

        try:
            await self.app(scope, timed_receive, guarded)
        except Exception:
            if not read.answered:
                raise
            # The app failed only because its body was cut off, and the client has its answer.
            log.debug("request body timed out; the app's error is dropped", exc_info=True)
        finally:
            self._reading.discard(read)

    async def _late(self, scope: Scope, send: Send, read: _Read) -> Message:
        """The body is late: answer 408 (503 while draining) and stop the app reading it."""
        self._reading.discard(read)
        if read.started:
            # The app answered without waiting for its body (a refusal); it may stop reading.
            return {"type": "http.disconnect"}
        read.answered = True
        if read.draining:
            status, why = 503, "the server is shutting down and the request body was not complete"
            hint = "Retry on another replica."
        else:
            status, why = 408, f"the request body did not arrive within {self.seconds:g} s"
            hint = "Send the whole body promptly; this server closes slow requests (BOT_BODY_TIMEOUT)."
            if self.on_timeout is not None:
                self.on_timeout("body")
        await send_refusal(
            scope, send, status, "shutting down" if read.draining else "request timeout", why, hint
        )
        raise BodyTimeoutError(why)
