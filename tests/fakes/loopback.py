"""Serving a fake (any ASGI app) on 127.0.0.1 from a background thread, for tests and benchmarks.

The fakes run in their own thread and event loop so that a test's loop, blocked or cancelled,
never stalls the "remote" side, just as a real remote server would not be.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Literal, Self

import uvicorn
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = [
    "CYCLE_KEY",
    "CaptureCycle",
    "ScriptedResponse",
    "ThreadedServer",
    "loopback_socket",
    "serve_in_loop",
]

#: Scope key under which CaptureCycle leaves uvicorn's request cycle.
CYCLE_KEY = "fake_upstream.cycle"


def loopback_socket() -> socket.socket:
    """A TCP socket bound to a free port on 127.0.0.1.

    The protocol is named explicitly: asyncio turns Nagle's algorithm off only on sockets whose
    ``proto`` is IPPROTO_TCP, and with it on every small response waits ~40 ms for a delayed ACK.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.asynccontextmanager
async def serve_in_loop(app: ASGIApp, *, lifespan: Literal["on", "off"] = "on") -> AsyncIterator[str]:
    """Run ``app`` with uvicorn in the running loop on a free port; yields its base URL.

    For apps under test that share the test's loop (their database and clients are bound to it).
    ``lifespan="off"`` serves requests without ever running the app's start-up.
    """
    sock = loopback_socket()
    server = uvicorn.Server(uvicorn.Config(app, lifespan=lifespan, log_level="warning"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():  # failed to start: surface its error instead of spinning
                task.result()
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


class BackgroundServer:
    """Context-manager plumbing for a fake that serves from a background thread.

    Subclasses provide ``start()`` (returning ``self`` once listening) and ``stop()``; ``with`` and
    ``async with`` then work alike (the async form starts and stops off the event loop).
    """

    def start(self) -> Self:
        """Start serving; returns once the port is listening."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop serving and wait for the thread."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.stop)


class ThreadedServer(BackgroundServer):
    """``app`` under uvicorn on a random loopback port, in a daemon thread."""

    def __init__(self, app: ASGIApp, *, name: str = "fake server") -> None:
        self.app = app
        self.name = name
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The listening port (only while started)."""
        if self._port is None:
            raise RuntimeError(f"{self.name} is not started")
        return self._port

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        """True between ``start()`` and ``stop()``."""
        return self._thread is not None

    def start(self) -> Self:
        """Start serving; returns once the port is listening."""
        if self._thread is not None:
            return self
        sock = loopback_socket()
        config = uvicorn.Config(
            self.app, log_config=None, log_level="warning", access_log=False, lifespan="off",
            ws="none", http="h11", loop="asyncio", proxy_headers=False, timeout_graceful_shutdown=2,
        )  # fmt: skip
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                sock.close()
                raise RuntimeError(f"{self.name} failed to start")
            time.sleep(0.005)
        self._server, self._thread, self._port, self._sock = server, thread, sock.getsockname()[1], sock
        return self

    def stop(self) -> None:
        """Stop serving and wait for the thread."""
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout=10)
        if self._sock is not None:
            self._sock.close()
        self._server, self._thread, self._port, self._sock = None, None, None, None


class ScriptedResponse(Response):
    """Sends an optional status line, body parts, then either ends the body or drops the connection."""

    def __init__(
        self, status: int | None, headers: dict[str, str], parts: Sequence[bytes] = (), *, drop: bool = False
    ) -> None:
        self.status, self.parts, self.drop = status, parts, drop
        self.raw = [(k.encode(), v.encode()) for k, v in headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the scripted status and parts, then end the body or drop the connection."""
        if self.status is not None:
            await send({"type": "http.response.start", "status": self.status, "headers": self.raw})
        for part in self.parts:
            await send({"type": "http.response.body", "body": part, "more_body": True})
        if not self.drop:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        cycle = scope.get(CYCLE_KEY)
        if cycle is None:  # not uvicorn's h11 cycle: let the server close the connection
            raise RuntimeError("fake upstream: dropping the connection")
        cycle.transport.close()  # flushes what was written, then FIN; no terminating chunk
        for _ in range(1000):
            if cycle.disconnected:
                return
            await asyncio.sleep(0.001)


class CaptureCycle:
    """Outermost ASGI layer: remembers uvicorn's request cycle (which owns the transport) in the scope."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Leave uvicorn's request cycle in the scope, then call the app."""
        scope[CYCLE_KEY] = getattr(send, "__self__", None)
        await self.app(scope, receive, send)
