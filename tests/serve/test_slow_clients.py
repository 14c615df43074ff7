"""Slow clients of ``bot serve``, in its own process: cut off within their timeout, never waited on.

Before: 1,000 slow-header and 500 slow-body connections were all still open after 40 s, and one
slow-body ``/slack/events`` request made SIGTERM wait the whole grace period (exit after 16.7 s
with a 10 s grace). Timeouts here are 1 s; "closed in time" is asserted with a generous 5 s (or
more) so that a loaded machine cannot fail them, while "never closed" would still fail.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest

from tests.fakes.slack_api import FakeSlackApi
from tests.fakes.upstream import FakeUpstream
from tests.mcp.conftest import TOKENS
from tests.serve.conftest import Served, serve_env, start
from tests.serve.test_body_limits import assert_clean_log
from tests.serve.test_serve import metric

#: Enough connections to show none is left open, few enough for a shared 2-core machine.
SLOW_HEADERS, SLOW_BODIES, SILENT = 60, 30, 30


@dataclass
class Trickle:
    """One connection sending its request a byte at a time; what the server did to it."""

    head: bytes
    body_size: int = 0
    closed_after: float | None = None
    answer: bytes = b""


def trickle(host: str, port: int, slow: Trickle, *, every: float, stop: threading.Event) -> None:
    """Send ``slow.head`` (all but its end a byte at a time when there is no body; else the whole
    head, then the body a byte at a time) until the server closes the connection."""
    started = time.monotonic()
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.settimeout(every)
        head = slow.head if slow.body_size else slow.head[:-4]  # a head that never ends
        if slow.body_size:
            sock.sendall(head)
            pending = b"x" * slow.body_size
        else:
            pending = head
        try:
            while not stop.is_set():
                if pending:
                    sock.sendall(pending[:1])
                    pending = pending[1:]
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                slow.answer += data
        except OSError:  # reset by the server: closed as well
            pass
    slow.closed_after = time.monotonic() - started


def run_all(served: Served, slow: list[Trickle], *, every: float = 0.2, within: float = 30) -> None:
    """Run every trickle in its own thread; wait for them (``within`` seconds at most)."""
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=trickle, args=("127.0.0.1", served.port, s), kwargs={"every": every, "stop": stop}
        )
        for s in slow
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + within
    try:
        # Meanwhile the server keeps answering everyone else.
        while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
            assert httpx2.get(f"{served.url}/healthz", timeout=5).status_code == 200
            time.sleep(0.25)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)


def head(path: str, *, length: int | None = None) -> bytes:
    """A request head for ``path``."""
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/x-www-form-urlencoded"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    # /mcp checks its token before the body: the slow body must come from a real client.
    lines.append(
        f"Authorization: Bearer {TOKENS['alice']}" if path == "/mcp" else "X-Slack-Request-Timestamp: 1"
    )
    lines.append("X-Padding: " + "p" * 40)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.fixture
def impatient(
    tmp_path: Path, fake_env: dict[str, str], slack_fake: FakeSlackApi, fake: FakeUpstream
) -> Iterator[Served]:
    """``bot serve`` with 1 s header, body and idle timeouts."""
    slack_fake.reset()
    env = serve_env(tmp_path, fake_env, slack_fake.api_url)
    env.update(BOT_HEADER_TIMEOUT="1", BOT_BODY_TIMEOUT="1", BOT_IDLE_TIMEOUT="1")
    served = start(tmp_path, env)
    try:
        served.wait_ready()
        yield served
    finally:
        if served.proc.poll() is None:
            served.proc.kill()
            served.proc.wait(10)


def test_slow_heads_slow_bodies_and_silent_connections_are_closed_in_time(impatient: Served) -> None:
    slow_heads = [Trickle(head("/slack/events")) for _ in range(SLOW_HEADERS)]
    slow_bodies = [
        Trickle(head(p, length=1000), 1000) for p in ("/slack/events", "/mcp") * (SLOW_BODIES // 2)
    ]
    silent = [Trickle(b"") for _ in range(SILENT)]
    started = time.monotonic()
    run_all(impatient, slow_heads + slow_bodies + silent)
    assert time.monotonic() - started < 30
    for s in slow_heads + slow_bodies + silent:
        assert s.closed_after is not None and s.closed_after < 5, s
    for s in slow_heads:
        assert s.answer.startswith(b"HTTP/1.1 408 "), s.answer[:200]
        assert b"the request head did not arrive within 1 s" in s.answer
    for s in slow_bodies:
        assert s.answer.startswith(b"HTTP/1.1 408 "), s.answer[:200]
        assert b"the request body did not arrive within 1 s" in s.answer
        assert b"connection: close" in s.answer.lower()
    assert all(s.answer == b"" for s in silent)  # nothing was asked: closed without an answer
    text = httpx2.get(f"{impatient.url}/metrics", timeout=5).text
    assert metric(text, "http_client_timeouts_total", phase="header") >= SLOW_HEADERS + SILENT
    assert metric(text, "http_client_timeouts_total", phase="body") == SLOW_BODIES
    assert metric(text, "http_requests_total", status="408") == SLOW_BODIES
    impatient.stop()
    logs = impatient.logs()
    assert logs.count("no complete request head within 1 s") == SLOW_HEADERS
    assert logs.count("the request body did not arrive within 1 s") >= SLOW_BODIES  # in each request line
    assert_clean_log(impatient)


def test_an_idle_kept_alive_connection_is_closed(impatient: Served) -> None:
    with socket.create_connection(("127.0.0.1", impatient.port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200 ")
        started = time.monotonic()
        while sock.recv(65536):
            pass
        assert time.monotonic() - started < 5  # closed after BOT_IDLE_TIMEOUT=1


def test_sigterm_does_not_wait_for_a_slow_body(
    tmp_path: Path, fake_env: dict[str, str], slack_fake: FakeSlackApi, fake: FakeUpstream
) -> None:
    env = serve_env(tmp_path, fake_env, slack_fake.api_url)
    env.update(BOT_SHUTDOWN_GRACE="10", BOT_BODY_TIMEOUT="120")  # the body alone would hold it 2 min
    served = start(tmp_path, env)
    try:
        served.wait_ready()
        slow = Trickle(head("/slack/events", length=60_000), 60_000)
        stop = threading.Event()
        sender = threading.Thread(
            target=trickle, args=("127.0.0.1", served.port, slow), kwargs={"every": 0.2, "stop": stop}
        )
        sender.start()
        time.sleep(1.5)  # the request is in, its body trickling
        assert slow.closed_after is None
        stopping = time.monotonic()
        code = served.stop(timeout=30)
        took = time.monotonic() - stopping
        stop.set()
        sender.join(10)
    finally:
        if served.proc.poll() is None:
            served.proc.kill()
            served.proc.wait(10)
    assert code == 0
    assert took < 10, f"exit took {took:.1f} s, the whole grace"  # measured: well under 1 s
    assert slow.answer.startswith(b"HTTP/1.1 503 "), slow.answer[:200]
    assert b"shutting down" in slow.answer
    assert_clean_log(served)
