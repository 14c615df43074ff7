"""MCP sessions over HTTP: each one bound to the client that opened it, and capped per client.

The MCP SDK's session manager already refuses a session id presented with another credential
than the one that created it, answering 404 exactly as for an unknown id, *when the request
carries an authenticated user* (``scope["user"]``): ``BearerAuth`` (``tools.mcp_server``) sets
one per client, via ``authenticated_user``. So client B holding client A's session id can neither
use it nor ``DELETE`` it.

What the SDK does not do is share its session limit fairly: it has one global cap (10,000), so a
single client opening idle sessions could fill it and every other client got 503 "Too many open
sessions". ``ClientSessions`` counts the open sessions of each client when a new one is admitted
(under the SDK's own admission lock, so concurrent openings cannot overshoot) and refuses the
client over ``max_per_client`` with a 429 JSON-RPC error naming the cap and the fix; other
clients are still admitted. Idle sessions (no request in flight, no open GET stream) close after
``mcp.session_idle_seconds`` instead of the SDK's 30 minutes.

Requests of the 2026-07-28 revision (stateless: no ``initialize``, no session id) never reach
the admission step, so they need no session and count against no cap.
"""

from __future__ import annotations

import json
from typing import Any

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, AuthorizationContext
from mcp.server.auth.provider import AccessToken
from mcp.server.streamable_http import StreamableHTTPServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp_types import INTERNAL_ERROR
from starlette.types import Receive, Scope, Send

from bot.logging_setup import REFUSAL_SCOPE_KEY

__all__ = ["ClientSessions", "SessionCapReachedError", "authenticated_user"]


def authenticated_user(client: str, subject: str | None = None) -> AuthenticatedUser:
    """The ``scope["user"]`` the SDK binds sessions to: the client's name, and no secret.

    The SDK compares ``(client_id, issuer, subject)``; the token itself is never stored here. A
    personal token passes its id as ``subject`` (and a client name naming that token), so its
    sessions are its own and capped on their own.
    """
    return AuthenticatedUser(AccessToken(token="", client_id=client, scopes=[], subject=subject))


class SessionCapReachedError(Exception):
    """A client asked for a new session while it already had ``cap`` open."""

    def __init__(self, client: str, cap: int, idle_seconds: float | None) -> None:
        self.client, self.cap, self.idle_seconds = client, cap, idle_seconds
        super().__init__(
            f"client '{client}' already has {cap} open MCP sessions, the most one client may have "
            "(mcp.max_sessions_per_client)"
        )

    @property
    def hint(self) -> str:
        """How to get a session again."""
        idle = f" after {self.idle_seconds:g} s" if self.idle_seconds else ""
        return (
            "Close the sessions you no longer use (an MCP client ends one with DELETE /mcp and its "
            f"Mcp-Session-Id), or wait: idle sessions are closed{idle}. An operator can raise "
            "mcp.max_sessions_per_client."
        )


class ClientSessions(StreamableHTTPSessionManager):
    """The SDK's session manager, with at most ``max_per_client`` open sessions per client.

    Relies on the SDK calling ``_admit_session(requestor)`` under its admission lock for every
    new stateful session (``mcp`` 2.x); ``tests/serve/test_mcp_sessions.py`` checks it still does.
    """

    def __init__(self, app: Any, *, max_per_client: int, **options: Any) -> None:
        """``options`` are the SDK manager's (``session_idle_timeout``, ``security_settings``…)."""
        super().__init__(app, **options)
        self.max_per_client = max_per_client

    def open_sessions(self, client: str) -> int:
        """How many sessions ``client`` has open now."""
        return sum(1 for owner in self._session_owners.values() if owner["client_id"] == client)

    def _admit_session(self, requestor: AuthorizationContext | None) -> StreamableHTTPServerTransport | None:
        # Called under the SDK's admission lock: counting and registering cannot interleave.
        if requestor is not None and self.open_sessions(requestor["client_id"]) >= self.max_per_client:
            raise SessionCapReachedError(
                requestor["client_id"], self.max_per_client, self.session_idle_timeout
            )
        return super()._admit_session(requestor)

    async def handle_request(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request; a client over its session cap gets a 429 JSON-RPC error."""
        try:
            await self.asgi_app(scope, receive, send)
        except SessionCapReachedError as refusal:
            scope[REFUSAL_SCOPE_KEY] = str(refusal)
            await _too_many_sessions(send, refusal)


async def _too_many_sessions(send: Send, refusal: SessionCapReachedError) -> None:
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": None,
            "error": {
                "code": INTERNAL_ERROR,
                "message": f"Too many open sessions: {refusal}",
                "data": {"cap": refusal.cap, "hint": refusal.hint},
            },
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 429,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
