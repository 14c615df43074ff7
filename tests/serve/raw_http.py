"""``RawUpload``: a forged HTTP/1.1 POST over a plain socket, for tests of what a server refuses.

An HTTP client library would refuse to misbehave; this one sends exactly the bytes asked for: a
``Content-Length`` or a chunked body of any size, streamed from a thread while the main thread
reads the answer, so a server that answers before the body is sent can be timed::

    answer = RawUpload("127.0.0.1", port, "/slack/events", size=100 * MIB).run()
    assert answer.status == 413 and answer.seconds < 5

The answer's body is read by its ``Content-Length`` (the servers under test always send one).
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field

__all__ = ["MIB", "RawAnswer", "RawUpload"]

MIB = 1024 * 1024
_CHUNK = 256 * 1024


@dataclass
class RawAnswer:
    """What came back: status, lower-cased headers, body, seconds until the status line, bytes sent."""

    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float
    sent: int
    closed: bool = field(default=False)
    """True when the server closed the connection after its answer."""


class RawUpload:
    """One POST of ``size`` body bytes to ``path``; ``chunked`` sends it without a Content-Length."""

    def __init__(
        self,
        host: str,
        port: int,
        path: str,
        *,
        size: int,
        chunked: bool = False,
        headers: dict[str, str] | None = None,
        pause: float = 0.0,
    ) -> None:
        self.host, self.port, self.path = host, port, path
        self.size, self.chunked, self.pause = size, chunked, pause
        self.headers = {"content-type": "application/x-www-form-urlencoded", **(headers or {})}
        self.sent = 0
        self._stop = threading.Event()

    def _head(self) -> bytes:
        lines = [f"POST {self.path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{k}: {v}" for k, v in self.headers.items()]
        lines.append("Transfer-Encoding: chunked" if self.chunked else f"Content-Length: {self.size}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def _send_body(self, sock: socket.socket) -> None:
        """Stream the body until it is all sent, the server closes, or ``run`` is done."""
        block = b"x" * _CHUNK
        try:
            while self.sent < self.size and not self._stop.is_set():
                part = block[: min(_CHUNK, self.size - self.sent)]
                sock.sendall(b"%x\r\n%s\r\n" % (len(part), part) if self.chunked else part)
                self.sent += len(part)
                if self.pause:
                    time.sleep(self.pause)
            if self.chunked and not self._stop.is_set():
                sock.sendall(b"0\r\n\r\n")
        except OSError:  # the server answered and closed: what a refusal looks like from here
            pass

    def run(self, timeout: float = 30) -> RawAnswer:
        """Send the request, read the answer (``timeout`` seconds at most); raises if none came."""
        started = time.monotonic()
        with socket.create_connection((self.host, self.port), timeout=timeout) as sock:
            sock.sendall(self._head())
            sender = threading.Thread(target=self._send_body, args=(sock,), daemon=True)
            sender.start()
            try:
                answer = self._read(sock, started)
            finally:
                self._stop.set()
                sender.join(timeout)
        return answer

    def _read(self, sock: socket.socket, started: float) -> RawAnswer:
        data = b""
        seconds: float | None = None
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"the server closed without an answer after {self.sent} bytes")
            seconds = seconds if seconds is not None else time.monotonic() - started
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        closed = False
        try:
            sock.settimeout(2)
            closed = sock.recv(1) == b""
        except (TimeoutError, OSError) as exc:
            closed = not isinstance(exc, TimeoutError)
        assert seconds is not None
        return RawAnswer(int(status_line.split()[1]), headers, body, seconds, self.sent, closed)
