"""Whom an MCP request is charged to: set per request by the server's middleware, read by the tools.

The tools never take the caller's identity from their arguments: a server middleware puts the
caller's ``Principal`` (the stdio client; over HTTP, the config client or the person behind the
personal token the bearer token named) in a context variable for the duration of each request,
and every tool charges that principal alone.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

from mcp.server.mcpserver.exceptions import ToolError

from bot.core.types import Principal

__all__ = [
    "CLIENT_SCOPE_KEY",
    "NOT_AUTHENTICATED",
    "PRINCIPAL_SCOPE_KEY",
    "acting_as",
    "current_client",
    "current_principal",
    "require_principal",
]

#: ASGI scope key under which the HTTP auth middleware stores the authenticated client name.
CLIENT_SCOPE_KEY = "bot.mcp_client"
#: ASGI scope key under which it stores the ``Principal`` the request is charged to (for a
#: personal token: the person plus the token's name as the client).
PRINCIPAL_SCOPE_KEY = "bot.mcp_principal"
#: What a request without a caller is told (it cannot happen past ``BearerAuth``; fail closed).
NOT_AUTHENTICATED = "This request is not authenticated. Send 'Authorization: Bearer <token>'."

_caller: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("bot_mcp_caller", default=None)


def current_principal() -> Principal | None:
    """Whom the request being served is charged to, or None outside an authenticated request."""
    return _caller.get()


def current_client() -> str | None:
    """The client name of the request being served, or None outside an authenticated request."""
    caller = _caller.get()
    return None if caller is None else caller.client_id


def require_principal() -> Principal:
    """The caller, or a ``ToolError`` saying how to authenticate: never guess who is paying."""
    principal = current_principal()
    if principal is None:
        raise ToolError(NOT_AUTHENTICATED)
    return principal


@contextmanager
def acting_as(caller: Principal | None) -> Iterator[None]:
    """Make ``caller`` the current principal for the block (the server's middleware uses it)."""
    token = _caller.set(caller)
    try:
        yield
    finally:
        _caller.reset(token)
