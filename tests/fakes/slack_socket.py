"""A real loopback WebSocket server faking Slack's Socket Mode endpoint.

``FakeSocketMode`` serves ``ws://127.0.0.1:PORT/link/?ticket=...`` with aiohttp (uvicorn here has
no WebSocket library) in its own thread and event loop. Wired into ``FakeSlackApi`` it answers
``apps.connections.open`` (bearer: the app-level token) with a fresh ticket URL::

    with FakeSocketMode(app_token="xapp-test") as sock:
        slack_api.enable_socket_mode(sock.app_token, sock.issue_url)
        ...  # connect a Socket Mode client, then
        envelope_id = await sock.push("slash_commands", {...})
        ack = await sock.wait_ack(envelope_id)

The protocol is Slack's: on connect the server sends ``hello``; each envelope
``{"envelope_id", "type", "accepts_response_payload", "payload"}`` is answered by the client with
``{"envelope_id": <same>, "payload": {...}}`` (recorded in ``acks``).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from aiohttp import WSMsgType, web

from tests.fakes.loopback import loopback_socket

__all__ = ["FakeSocketMode", "SocketAck"]

APP_ID = "A1"


@dataclass
class SocketAck:
    """One acknowledgement as the server received it (``time`` is ``time.monotonic()``)."""

    envelope_id: str
    payload: dict[str, Any] | None
    time: float


class FakeSocketMode:
    """Fake Socket Mode WebSocket endpoint on ``127.0.0.1``, recording pushed envelopes and acks."""

    def __init__(self, *, app_token: str = "xapp-test-token") -> None:
        self.app_token = app_token
        #: Every ack received, in arrival order.
        self.acks: list[SocketAck] = []
        #: Envelopes sent, by id, with ``time.monotonic()`` of sending.
        self.sent: dict[str, float] = {}
        #: How many WebSocket connections were accepted so far.
        self.connections = 0
        self._tickets: set[str] = set()
        self._sockets: list[web.WebSocketResponse] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None
        self._runner: web.AppRunner | None = None

    # ----------------------------------------------------------------- addresses
    @property
    def port(self) -> int:
        """The listening port (only while started)."""
        if self._port is None:
            raise RuntimeError("FakeSocketMode is not running")
        return self._port

    @property
    def open_connections(self) -> int:
        """How many WebSocket connections are open now."""
        return len(self._sockets)

    def issue_url(self) -> str:
        """A fresh ``ws://`` URL with a one-time ticket (what ``apps.connections.open`` returns)."""
        ticket = uuid.uuid4().hex
        with self._lock:
            self._tickets.add(ticket)
        return f"ws://127.0.0.1:{self.port}/link/?ticket={ticket}"

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> Self:
        """Start serving in a background thread; returns once the port is listening."""
        if self._thread is not None:
            return self
        sock = loopback_socket()
        loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_get("/link/", self._link)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1)
        try:
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.SockSite(runner, sock).start())
        except BaseException:
            loop.run_until_complete(runner.cleanup())
            loop.close()
            sock.close()
            raise
        thread = threading.Thread(target=loop.run_forever, name="fake socket mode", daemon=True)
        thread.start()
        self._loop, self._thread, self._runner = loop, thread, runner
        self._port = sock.getsockname()[1]
        return self

    def stop(self) -> None:
        """Close every connection, stop the server and wait for its thread."""
        loop, thread, runner = self._loop, self._thread, self._runner
        if loop is None or thread is None or runner is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(runner), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
        self._loop, self._thread, self._runner, self._port = None, None, None, None

    async def _shutdown(self, runner: web.AppRunner) -> None:
        for ws in list(self._sockets):
            await ws.close()
        await runner.cleanup()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ----------------------------------------------------------------- test side (any loop)
    async def wait_connected(self, count: int = 1, within: float = 10.0) -> None:
        """Wait (``within`` seconds at most) until ``count`` connections were accepted and greeted."""
        async with asyncio.timeout(within):
            while self.connections < count or not self._sockets:  # noqa: ASYNC110 - set by another thread
                await asyncio.sleep(0.01)

    async def push(
        self, envelope_type: str, payload: dict[str, Any], *, accepts_response: bool = True
    ) -> str:
        """Send one envelope over the newest connection; returns its ``envelope_id``."""
        if self._loop is None:
            raise RuntimeError("FakeSocketMode is not running")
        envelope_id = str(uuid.uuid4())
        envelope = {
            "envelope_id": envelope_id,
            "type": envelope_type,
            "accepts_response_payload": accepts_response,
            "payload": payload,
        }
        future = asyncio.run_coroutine_threadsafe(self._send(envelope), self._loop)
        await asyncio.wrap_future(future)
        return envelope_id

    async def wait_ack(self, envelope_id: str, within: float = 5.0) -> SocketAck:
        """The ack of ``envelope_id``, waiting up to ``within`` seconds for it."""
        async with asyncio.timeout(within):
            while True:
                with self._lock:
                    found = next((a for a in self.acks if a.envelope_id == envelope_id), None)
                if found is not None:
                    return found
                await asyncio.sleep(0.01)

    # ----------------------------------------------------------------- server side
    async def _send(self, envelope: dict[str, Any]) -> None:
        if not self._sockets:
            raise RuntimeError("no Socket Mode client is connected")
        self.sent[envelope["envelope_id"]] = time.monotonic()
        await self._sockets[-1].send_str(json.dumps(envelope))

    async def _link(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            ticket = request.query.get("ticket", "")
            if ticket not in self._tickets:
                return web.Response(status=401, text="invalid ticket")
            self._tickets.discard(ticket)
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        await ws.send_str(
            json.dumps(
                {
                    "type": "hello",
                    "num_connections": 1,
                    "debug_info": {"host": "fake-socket-mode", "approximate_connection_time": 18060},
                    "connection_info": {"app_id": APP_ID},
                }
            )
        )
        self._sockets.append(ws)
        self.connections += 1
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                data = json.loads(msg.data)
                if "envelope_id" in data:
                    ack = SocketAck(str(data["envelope_id"]), data.get("payload"), time.monotonic())
                    with self._lock:
                        self.acks.append(ack)
        finally:
            self._sockets.remove(ws)
        return ws
