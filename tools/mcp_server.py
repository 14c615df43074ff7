"""MCP transports: stdio for a local assistant, Streamable HTTP (``/mcp``) with bearer tokens.

Over HTTP every request must carry ``Authorization: Bearer <token>``: either a shared client's
token from ``mcp.clients`` (that name alone becomes the principal's ``client_id``), or a person's
personal token (``gwp_…``, checked through ``Gateway.check_token``: the principal is that person
plus the token's name as the client, ``bot.core.people.token_principal``). A request without a
valid token is answered 401, with how to get one, before it reaches the MCP layer, so it can cost
nothing. ``/mcp`` is served even with no client configured (personal tokens need none), and is
never anonymous.
"""

from __future__ import annotations

import contextlib
import hmac
import json
from collections.abc import AsyncIterator, Awaitable, Callable

from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import DEFAULT_MAX_REQUEST_BODY_SIZE, TransportSecuritySettings
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from bot.core.config import McpConfig
from bot.core.errors import USER_ERRORS
from bot.core.gateway import Gateway
from bot.core.people import TOKEN_PREFIX, PersonalToken, token_principal
from bot.core.types import Principal
from bot.logging_setup import REFUSAL_SCOPE_KEY, hide_mcp_session_ids
from tools.mcp_sessions import ClientSessions, authenticated_user
from tools.mcp_tools import CLIENT_SCOPE_KEY, PRINCIPAL_SCOPE_KEY, build_mcp_server

__all__ = ["MCP_BODY_LIMIT", "BearerAuth", "mcp_http_app", "run_http", "run_stdio", "transport_security"]

MCP_PATH = "/mcp"
#: Bytes one request body to ``/mcp`` may have: the MCP SDK's own limit (4 MiB), which ``bot
#: serve``'s outer layer (``bot.body_limit``) enforces too, before the token is even checked. The
#: longest prompt the ``generate`` tool takes (400,000 characters, at most 4 bytes each in UTF-8,
#: 6 as a JSON ``\uXXXX`` escape) plus its longest system prompt fit inside it.
MCP_BODY_LIMIT: int = DEFAULT_MAX_REQUEST_BODY_SIZE

#: Loopback names the DNS-rebinding check always accepts (with or without a port).
_LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "[::1]"]

#: Resolves a personal token's secret to its person, or None (``Gateway.check_token``).
ResolveToken = Callable[[str], Awaitable[PersonalToken | None]]

#: How to get a token: said by every 401, since a client without one cannot ask anything else.
TOKEN_HINT = (
    "Send the header 'Authorization: Bearer <token>'. Get a personal token with /mcp-token in Slack "
    "(shown only to you, with the ready claude mcp add line), or ask the gateway's operator to run "
    "`bot tokens create --user U123 --team T123 --name laptop`. Shared service clients use a token "
    "listed under mcp.clients in the gateway's config. Then, for Claude Code: claude mcp add "
    "--transport http llm-gateway https://HOST/mcp --header 'Authorization: Bearer <token>'"
)


async def run_stdio(gateway: Gateway, config: McpConfig | None = None) -> None:
    """Serve the tools on stdin/stdout until the client closes them (``bot mcp``)."""
    config = config or gateway.config.mcp
    await build_mcp_server(gateway, config).run_stdio_async()


class BearerAuth:
    """ASGI middleware: map ``Authorization: Bearer <token>`` to whom it charges, or answer 401.

    A config token (compared in constant time) names a client; a personal token (``gwp_…``,
    looked up by ``resolve``) names a person and its own name as the client. The principal is
    stored in the ASGI scope under ``PRINCIPAL_SCOPE_KEY`` (the client name under
    ``CLIENT_SCOPE_KEY``), where the MCP server's middleware reads it for each request (the MCP
    session runs in another task, so a context variable set here would not reach the tools), and
    ``scope["user"]`` identifies the client or the personal token, which binds every session to
    the credential that opened it (``tools.mcp_sessions``).
    """

    def __init__(self, app: ASGIApp, clients: dict[str, bytes], resolve: ResolveToken | None = None) -> None:
        """``clients``: config client name to token; ``resolve``: personal tokens (None: none)."""
        self.app = app
        self._clients = clients
        self._resolve = resolve
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
        secret = token.strip() if scheme.lower() == b"bearer" else b""
        client = self._client_for(secret) if secret else None
        if client is not None:
            # In place, so what the layers below leave in the scope (a refusal's reason) is logged.
            scope[CLIENT_SCOPE_KEY], scope["user"] = client, self._users[client]
            scope[PRINCIPAL_SCOPE_KEY] = Principal(surface="mcp", client_id=client)
            await self.app(scope, receive, send)
            return
        if secret.startswith(TOKEN_PREFIX.encode()) and self._resolve is not None and secret.isascii():
            try:
                person = await self._resolve(secret.decode("ascii"))
            except USER_ERRORS as err:  # the ledger is down: say so, never let anyone in
                scope[REFUSAL_SCOPE_KEY] = "personal token not checked: the ledger is unreachable"
                await _answer(send, 503, {"error": "unavailable", "message": str(err)})
                return
            if person is not None:
                principal = token_principal(person)
                label = f"personal token {person.id} ({person.name})"
                scope[CLIENT_SCOPE_KEY], scope[PRINCIPAL_SCOPE_KEY] = principal.client_id, principal
                scope["user"] = authenticated_user(label, subject=person.id)
                await self.app(scope, receive, send)
                return
            scope[REFUSAL_SCOPE_KEY] = "unknown or revoked personal token"
        else:
            scope[REFUSAL_SCOPE_KEY] = "no bearer token" if not header else "unknown bearer token"
        await _unauthorized(send, missing=not header)


async def _unauthorized(send: Send, *, missing: bool) -> None:
    message = "no bearer token was sent" if missing else "the bearer token is not valid (unknown, or revoked)"
    await _answer(send, 401, {"error": "unauthorized", "message": message, "hint": TOKEN_HINT})


async def _answer(send: Send, status: int, content: dict[str, str]) -> None:
    body = json.dumps(content).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="llm-gateway"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
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

    Bearer tokens are ``config.clients``' and, with a ledger, the personal tokens in it; with
    neither, every request is answered 401 with how to get a token (never anonymous access).
    """
    config = config or gateway.config.mcp
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
    endpoint = BearerAuth(
        sessions.handle_request, tokens, gateway.check_token if gateway.has_ledger else None
    )

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
