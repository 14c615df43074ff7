"""A real loopback HTTP server faking the Slack Web API and slash-command response URLs.

``FakeSlackApi`` runs uvicorn (a Starlette app) in a background thread, like ``FakeUpstream``::

    with FakeSlackApi(token="xoxb-test") as slack:
        client = AsyncWebClient(token="xoxb-test", base_url=slack.api_url)
        slack.inject("chat.postMessage", error="not_in_channel")
        slack.inject("chat.postMessage", status=429, retry_after=0)

It records every call (``calls``) and every POST to ``/response/<id>`` (``responses``).
Methods: ``auth.test``, ``chat.postMessage``, ``chat.update``, ``chat.delete``,
``chat.postEphemeral``, ``conversations.replies`` (over the channels' messages, ``messages``: the
bot's posts and updates, and what a test wrote as a user with ``user_says``), and the
external file upload flow (``files.getUploadURLExternal``, a POST of the bytes to the returned
``upload_url`` — recorded as ``upload:<file id>``, the bytes kept in ``uploads`` —, then
``files.completeUploadExternal``). With ``enable_socket_mode(app_token, issue_url)`` it also answers
``apps.connections.open`` (bearer: the app-level token) with ``issue_url()`` (see ``slack_socket``).
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.loopback import BackgroundServer, ThreadedServer

__all__ = ["FakeSlackApi", "SlackCall", "SlackMessages"]

TEAM_ID = "T0FAKE"
BOT_USER = "UBOT"


@dataclass
class SlackCall:
    """One request as the server saw it (``time`` is ``time.monotonic()`` on arrival)."""

    method: str
    """The Web API method (``chat.postMessage``) or ``response:<id>`` for a response URL."""
    body: dict[str, Any]
    headers: dict[str, str]
    time: float
    status: int = 200
    error: str | None = None

    @property
    def text(self) -> str:
        """The ``text`` field of the body ('' when absent)."""
        return str(self.body.get("text", ""))


class SlackMessages:
    """The messages of every channel, as ``conversations.replies`` reads them back.

    Each is a dict like Slack's (``ts``, ``text``, ``user``, ``bot_id``, ``thread_ts``); a thread is
    its root (``ts == thread_ts``, or a message that has replies) and the messages whose
    ``thread_ts`` is the root's ``ts``. Not thread-safe by itself: ``FakeSlackApi`` holds its lock.
    """

    def __init__(self) -> None:
        self._by_channel: dict[str, dict[str, dict[str, Any]]] = {}

    def clear(self) -> None:
        """Forget every message."""
        self._by_channel.clear()

    def add(self, channel: str, message: dict[str, Any]) -> None:
        """Store ``message`` (it has its ``ts``) in ``channel``."""
        self._by_channel.setdefault(channel, {})[str(message["ts"])] = message

    def get(self, channel: str, ts: str) -> dict[str, Any] | None:
        """The message ``ts`` of ``channel``, if stored."""
        return self._by_channel.get(channel, {}).get(ts)

    def remove(self, channel: str, ts: str) -> bool:
        """Delete the message ``ts``; False when there was none."""
        return self._by_channel.get(channel, {}).pop(ts, None) is not None

    def thread(self, channel: str, thread_ts: str) -> list[dict[str, Any]]:
        """The root ``thread_ts`` and its replies, oldest first (copies)."""
        found = [
            dict(m)
            for ts, m in self._by_channel.get(channel, {}).items()
            if ts == thread_ts or m.get("thread_ts") == thread_ts
        ]
        return sorted(found, key=lambda m: float(m["ts"]))


@dataclass
class _Fault:
    method: str
    remaining: int
    status: int
    error: str | None
    retry_after: float | None


class FakeSlackApi(BackgroundServer):
    """Fake Slack Web API on ``127.0.0.1`` with a random port, recording calls, with injectable errors."""

    def __init__(self, *, token: str = "xoxb-test-token") -> None:
        self.token = token
        self.calls: list[SlackCall] = []
        self._faults: list[_Fault] = []
        #: Bytes POSTed to upload URLs, by file id.
        self.uploads: dict[str, bytes] = {}
        self._file_ids = itertools.count(1)
        self._lock = threading.Lock()
        self._ts = itertools.count(1)
        #: Every channel's messages (``conversations.replies`` answers from it).
        self.messages = SlackMessages()
        #: ``conversations.replies`` answers this many messages per page (Slack: up to ``limit``).
        self.replies_page = 200
        self._app_token: str | None = None
        self._issue_socket_url: Callable[[], str] | None = None
        app = Starlette(
            routes=[
                Route("/api/{method}", self._api, methods=["POST", "GET"]),
                Route("/response/{rid}", self._response, methods=["POST"]),
                Route("/upload/{fid}", self._upload, methods=["POST"]),
            ]
        )
        self._http = ThreadedServer(app, name="FakeSlackApi")

    # ----------------------------------------------------------------- configuration
    def reset(self) -> None:
        """Forget recorded calls and queued faults, and turn Socket Mode off."""
        with self._lock:
            self.calls.clear()
            self._faults.clear()
            self.uploads.clear()
            self.messages.clear()
            self.replies_page = 200
            self._app_token, self._issue_socket_url = None, None

    def next_ts(self) -> str:
        """A fresh message ``ts``, later than every one given before (unique in this fake)."""
        return f"{1700000000 + next(self._ts)}.000100"

    def user_says(self, channel: str, user: str, text: str, *, thread_ts: str | None = None) -> str:
        """Store a message ``user`` wrote (as Slack would before sending its event); its ``ts``."""
        ts = self.next_ts()
        message: dict[str, Any] = {"type": "message", "ts": ts, "user": user, "text": text}
        if thread_ts:
            message["thread_ts"] = thread_ts
        with self._lock:
            self.messages.add(channel, message)
        return ts

    def thread(self, channel: str, thread_ts: str) -> list[dict[str, Any]]:
        """The thread as ``conversations.replies`` would answer it (all pages)."""
        with self._lock:
            return self.messages.thread(channel, thread_ts)

    def enable_socket_mode(self, app_token: str, issue_url: Callable[[], str]) -> None:
        """Answer ``apps.connections.open`` called with ``app_token`` with ``{"url": issue_url()}``."""
        with self._lock:
            self._app_token, self._issue_socket_url = app_token, issue_url

    def inject(
        self,
        method: str,
        *,
        error: str | None = None,
        status: int = 200,
        retry_after: float | None = None,
        times: int = 1,
    ) -> None:
        """Make the next ``times`` calls of ``method`` fail.

        ``error`` answers ``{"ok": false, "error": error}`` with ``status`` (200 like Slack does);
        ``status=429`` answers ``ratelimited`` with a ``Retry-After`` header (``retry_after`` seconds).
        ``method`` may be ``response:<id>`` to fail posts to that response URL.
        """
        with self._lock:
            self._faults.append(_Fault(method, times, status, error, retry_after))

    def calls_to(self, method: str) -> list[SlackCall]:
        """Recorded calls of ``method`` (failed ones included), in arrival order."""
        with self._lock:
            return [c for c in self.calls if c.method == method]

    def ok_calls_to(self, method: str) -> list[SlackCall]:
        """Recorded calls of ``method`` that succeeded."""
        return [c for c in self.calls_to(method) if c.status == 200 and c.error is None]

    def responses(self, rid: str | None = None) -> list[SlackCall]:
        """Posts to response URLs (all, or to ``/response/<rid>``)."""
        with self._lock:
            return [
                c
                for c in self.calls
                if c.method.startswith("response:") and (rid is None or c.method == f"response:{rid}")
            ]

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return self._http.base_url

    @property
    def api_url(self) -> str:
        """Base URL for ``AsyncWebClient(base_url=...)`` (ends with a slash)."""
        return self.base_url + "/api/"

    def response_url(self, rid: str) -> str:
        """A response URL for one slash command."""
        return f"{self.base_url}/response/{rid}"

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> Self:
        """Start serving in a background thread; returns once the port is listening."""
        self._http.start()
        return self

    def stop(self) -> None:
        """Stop the server and wait for its thread."""
        self._http.stop()

    # ----------------------------------------------------------------- handlers
    async def _record(self, request: Request, method: str) -> tuple[SlackCall, _Fault | None]:
        raw = (await request.body()).decode()
        body: dict[str, Any]
        if "json" in request.headers.get("content-type", ""):
            body = json.loads(raw) if raw else {}
        else:
            body = dict(parse_qsl(raw))
        # slack_sdk sends some methods' arguments (files.*External) in the query string.
        body = {**dict(request.query_params), **body}
        call = SlackCall(method, body, dict(request.headers), time.monotonic())
        with self._lock:
            self.calls.append(call)
            fault = next((f for f in self._faults if f.method == method), None)
            if fault is not None:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
        return call, fault

    @staticmethod
    def _fault_reply(call: SlackCall, fault: _Fault) -> Response:
        call.status = fault.status
        call.error = fault.error or ("ratelimited" if fault.status == 429 else "fake_error")
        headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
        return JSONResponse({"ok": False, "error": call.error}, fault.status, headers)

    async def _api(self, request: Request) -> Response:
        method = request.path_params["method"]
        call, fault = await self._record(request, method)
        if fault is not None:
            return self._fault_reply(call, fault)
        if method == "apps.connections.open":
            return self._connections_open(call, request)
        if request.headers.get("authorization") != f"Bearer {self.token}":
            call.error = "invalid_auth"
            return JSONResponse({"ok": False, "error": "invalid_auth"})
        ts = self.next_ts()
        body = call.body
        if method == "auth.test":
            return JSONResponse(
                {"ok": True, "url": "https://fake.slack.com/", "team": "Fake", "user": "bot",
                 "team_id": TEAM_ID, "user_id": BOT_USER, "bot_id": "BFAKE"}
            )  # fmt: skip
        if method == "chat.postMessage":
            return self._post_message(call, ts)
        if method == "chat.update":
            return self._update(call)
        if method == "chat.delete":
            with self._lock:
                found = self.messages.remove(str(body.get("channel")), str(body.get("ts")))
            if not found:
                call.error = "message_not_found"
                return JSONResponse({"ok": False, "error": "message_not_found"})
            return JSONResponse({"ok": True, "channel": body.get("channel"), "ts": body.get("ts")})
        if method == "conversations.replies":
            return self._replies(call)
        if method == "chat.postEphemeral":
            return JSONResponse({"ok": True, "message_ts": ts})
        if method == "files.getUploadURLExternal":
            fid = f"F{next(self._file_ids):06d}"
            return JSONResponse({"ok": True, "upload_url": f"{self.base_url}/upload/{fid}", "file_id": fid})
        if method == "files.completeUploadExternal":
            files = json.loads(str(body.get("files", "[]")))
            missing = [f["id"] for f in files if f.get("id") not in self.uploads]
            if missing:  # like Slack: completing a file whose bytes never arrived fails
                call.error = "file_not_found"
                return JSONResponse({"ok": False, "error": "file_not_found"})
            return JSONResponse(
                {"ok": True, "files": [{"id": f["id"], "title": f.get("title")} for f in files]}
            )
        call.error = "unknown_method"
        return JSONResponse({"ok": False, "error": "unknown_method"})

    def _post_message(self, call: SlackCall, ts: str) -> Response:
        """Store the bot's message (in its thread when ``thread_ts`` is given) and answer its ts."""
        body = call.body
        message: dict[str, Any] = {
            "type": "message", "ts": ts, "user": BOT_USER, "bot_id": "BFAKE", "text": call.text,
        }  # fmt: skip
        if body.get("thread_ts"):
            message["thread_ts"] = str(body["thread_ts"])
        with self._lock:
            self.messages.add(str(body.get("channel")), message)
        return JSONResponse({"ok": True, "channel": body.get("channel"), "ts": ts, "message": message})

    def _update(self, call: SlackCall) -> Response:
        """Replace a stored message's text (an unknown ts is answered ok: tests update made-up ones)."""
        body = call.body
        channel, ts = str(body.get("channel")), str(body.get("ts"))
        with self._lock:
            message = self.messages.get(channel, ts)
            if message is not None:
                message["text"] = call.text
        return JSONResponse({"ok": True, "channel": channel, "ts": ts, "text": call.text})

    def _replies(self, call: SlackCall) -> Response:
        """``conversations.replies``: the thread ``ts`` of ``channel``, oldest first, paged by cursor."""
        body = call.body
        channel, root = str(body.get("channel")), str(body.get("ts"))
        with self._lock:
            thread = self.messages.thread(channel, root)
        if not thread:
            call.error = "thread_not_found"
            return JSONResponse({"ok": False, "error": "thread_not_found"})
        start = int(body.get("cursor") or 0)
        page = thread[start : start + self.replies_page]
        rest = start + len(page) < len(thread)
        meta = {"next_cursor": str(start + len(page)) if rest else ""}
        return JSONResponse({"ok": True, "messages": page, "has_more": rest, "response_metadata": meta})

    def _connections_open(self, call: SlackCall, request: Request) -> Response:
        """Socket Mode's URL, for the app-level token only (like Slack: a bot token is refused)."""
        with self._lock:
            app_token, issue_url = self._app_token, self._issue_socket_url
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
        if issue_url is None or bearer != app_token:
            call.error = "not_allowed_token_type" if bearer == self.token else "invalid_auth"
            return JSONResponse({"ok": False, "error": call.error})
        return JSONResponse({"ok": True, "url": issue_url()})

    async def _upload(self, request: Request) -> Response:
        fid = request.path_params["fid"]
        data = await request.body()
        call = SlackCall(f"upload:{fid}", {"size": len(data)}, dict(request.headers), time.monotonic())
        with self._lock:
            self.calls.append(call)
            self.uploads[fid] = data
        return Response(f"OK - {len(data)}")

    async def _response(self, request: Request) -> Response:
        call, fault = await self._record(request, f"response:{request.path_params['rid']}")
        if fault is not None:
            call.status = fault.status
            call.error = fault.error or "fake_error"
            return Response(call.error, fault.status)
        return Response("ok")
