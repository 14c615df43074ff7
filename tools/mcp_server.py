"""MCP transports: stdio for a local assistant, Streamable HTTP (``/mcp``) with bearer tokens.

Over HTTP every request must carry ``Authorization: Bearer <token>``; the token names a client
of ``mcp.clients`` and that name alone becomes the principal's ``client_id``. A request without
a valid token is answered 401 before it reaches the MCP layer, so it can cost nothing. With no
client configured, HTTP mode refuses to start: there is no anonymous HTTP access.
"""

from __future__ import annotations

import contextlib
import hmac
import json
from collections.abc import AsyncIterator

from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import DEFAULT_MAX_REQUEST_BODY_SIZE, TransportSecuritySettings
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from bot.core.config import McpConfig
from bot.core.errors import ConfigurationError
from bot.core.gateway import Gateway
from bot.logging_setup import REFUSAL_SCOPE_KEY, hide_mcp_session_ids
from tools.mcp_sessions import ClientSessions, authenticated_user
from tools.mcp_tools import CLIENT_SCOPE_KEY, build_mcp_server

__all__ = ["MCP_BODY_LIMIT", "BearerAuth", "mcp_http_app", "run_http", "run_stdio", "transport_security"]

MCP_PATH = "/mcp"
#: Bytes one request body to ``/mcp`` may have: the MCP SDK's own limit (4 MiB), which ``bot
#: serve``'s outer layer (``bot.body_limit``) enforces too, before the token is even checked. The
#: longest prompt the ``generate`` tool takes (400,000 characters, at most 4 bytes each in UTF-8,
#: 6 as a JSON ``\uXXXX`` escape) plus its longest system prompt fit inside it.
MCP_BODY_LIMIT: int = DEFAULT_MAX_REQUEST_BODY_SIZE

#: Loopback names the DNS-rebinding check always accepts (with or without a port).
_LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "[::1]"]


async def run_stdio(gateway: Gateway, config: McpConfig | None = None) -> None:
    """Serve the tools on stdin/stdout until the client closes them (``bot mcp``)."""
    config = config or gateway.config.mcp
    await build_mcp_server(gateway, config).run_stdio_async()


class BearerAuth:
    """ASGI middleware: map ``Authorization: Bearer <token>`` to a client name, or answer 401.

    The client name is stored in the ASGI scope under ``CLIENT_SCOPE_KEY``, where the MCP
    server's middleware reads it for each request (the MCP session runs in another task, so a
    context variable set here would not reach the tools), and as ``scope["user"]``, which binds
    every session to the client that opened it (``tools.mcp_sessions``).
    """

    def __init__(self, app: ASGIApp, clients: dict[str, bytes]) -> None:
        self.app = app
        self._clients = clients
        self._users = {name: authenticated_user(name) for name in clients}

    def _client_for(self, token: bytes) -> str | None:
        found: str | None = None
        # Compare against every token, without stopping early, so timing reveals nothing.
        for name, expected in self._clients.items():
            if hmac.compare_digest(token, expected):
                found = name
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer 401 unless the request carries a known bearer token; pass it on with its client."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        client = self._client_for(token.strip()) if scheme.lower() == b"bearer" and token.strip() else None
        if client is None:
            scope[REFUSAL_SCOPE_KEY] = "no bearer token" if not header else "unknown bearer token"
            await _unauthorized(send, missing=not header)
            return
        # In place, so what the layers below leave in the scope (a refusal's reason) is logged.
        scope[CLIENT_SCOPE_KEY], scope["user"] = client, self._users[client]
        await self.app(scope, receive, send)


async def _unauthorized(send: Send, *, missing: bool) -> None:
    body = json.dumps(
        {
            "error": "unauthorized",
            "message": "no bearer token was sent" if missing else "the bearer token is not valid",
            "hint": (
                "Send the header 'Authorization: Bearer <token>' with a token listed under mcp.clients "
                "in the gateway's config. For Claude Code: claude mcp add --transport http llm-gateway "
                "http://HOST:PORT/mcp --header 'Authorization: Bearer <token>'"
            ),
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", b'Bearer realm="llm-gateway"'),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def transport_security(config: McpConfig) -> TransportSecuritySettings:
    """DNS-rebinding protection: loopback plus ``allowed_hosts``/``allowed_origins`` from config."""
    hosts = [*_LOOPBACK_HOSTS, *(f"{h}:*" for h in _LOOPBACK_HOSTS), *config.allowed_hosts]
    origins = [
        *(
            f"{scheme}://{h}{port}"
            for scheme in ("http", "https")
            for h in _LOOPBACK_HOSTS
            for port in ("", ":*")
        ),
        *config.allowed_origins,
    ]
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
    )


def mcp_http_app(gateway: Gateway, config: McpConfig | None = None) -> Starlette:
    """A Starlette app serving the MCP tools at ``/mcp`` (Streamable HTTP, SSE responses).

    The app's lifespan runs the MCP session manager. To mount it inside another app (``bot
    serve``), enter ``app.state.mcp_sessions.run()`` in the parent's lifespan. Sessions are bound
    to their client, at most ``config.max_sessions_per_client`` per client, and closed after
    ``config.session_idle_seconds`` idle (``tools.mcp_sessions``).

    Raises ``ConfigurationError`` when ``config.clients`` is empty: HTTP is never anonymous.
    """
    config = config or gateway.config.mcp
    if not config.clients:
        raise ConfigurationError(
            "no MCP clients are configured, and the HTTP transport never runs without bearer tokens",
            field="mcp.clients",
            hint="Add a client with a token of 16+ characters, e.g. mcp: {clients: {my-laptop: "
            "{token: ${MCP_TOKEN}}}}, or use stdio (`bot mcp` without --http).",
        )
    server: MCPServer = build_mcp_server(gateway, config, http=True)
    hide_mcp_session_ids()  # the SDK logs them at INFO; a session id is a bearer of the session
    # json_response stays False so progress notifications can ride the SSE stream of each call.
    sessions = ClientSessions(
        server._lowlevel_server,
        max_per_client=config.max_sessions_per_client,
        session_idle_timeout=config.session_idle_seconds,
        json_response=False,
        security_settings=transport_security(config),
        max_request_body_size=MCP_BODY_LIMIT,
    )
    tokens = {name: client.token.get_secret_value().encode() for name, client in config.clients.items()}
    endpoint = BearerAuth(sessions.handle_request, tokens)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with sessions.run():
            yield

    app = Starlette(routes=[Route(MCP_PATH, endpoint=endpoint)], lifespan=lifespan)
    app.state.mcp_server = server
    app.state.mcp_sessions = sessions
    return app


async def run_http(gateway: Gateway, *, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Serve ``mcp_http_app`` with uvicorn until interrupted (``bot mcp --http``)."""
    import uvicorn

    app = mcp_http_app(gateway)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on"))
    await server.serve()
