"""How a person connects their assistant: the gateway's public URL and the ready ``claude mcp add`` line.

Shared by the faces that hand out personal tokens (``/mcp-token`` in Slack, ``bot tokens create``)
and the front door, so the line is the same wherever it is shown. The public URL is
``BOT_PUBLIC_URL`` when set (what users reach, e.g. behind a load balancer); otherwise each face
says what it knows: the Slack request's host, the CLI's ``BOT_PORT`` on localhost.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["MCP_SERVER_NAME", "PUBLIC_URL_ENV", "claude_mcp_add", "public_url", "url_from_headers"]

#: The variable naming the URL users reach the gateway at (scheme and host, no path).
PUBLIC_URL_ENV = "BOT_PUBLIC_URL"
#: The name the MCP server gets in the assistant's configuration.
MCP_SERVER_NAME = "llm-gateway"
_LOOPBACK = ("127.0.0.1", "localhost", "[::1]")


def public_url(env: Mapping[str, str]) -> str | None:
    """``BOT_PUBLIC_URL`` without a trailing slash (and without ``/mcp`` if it was given), or None."""
    raw = (env.get(PUBLIC_URL_ENV) or "").strip().rstrip("/")
    return raw.removesuffix("/mcp") or None


def url_from_headers(host: str | None, forwarded_proto: str | None = None) -> str | None:
    """The base URL a request was sent to, from its ``Host`` (and ``X-Forwarded-Proto``).

    Slack only calls ``https`` request URLs, so a non-loopback host without a forwarded scheme is
    taken as ``https`` (a TLS-terminating proxy in front of the gateway); loopback as ``http``.
    """
    if not host or any(c in host for c in " \"'\\<>`$"):  # a Host fit to paste into a shell line
        return None
    scheme = (forwarded_proto or "").split(",")[0].strip().lower()
    if scheme not in ("http", "https"):
        scheme = "http" if host.rsplit(":", 1)[0] in _LOOPBACK or host.startswith("[::1]") else "https"
    return f"{scheme}://{host}"


def claude_mcp_add(base_url: str, secret: str, name: str = MCP_SERVER_NAME) -> str:
    """The Claude Code command that adds this gateway's ``/mcp`` with ``secret`` as bearer token."""
    mcp = f"{base_url.rstrip('/')}/mcp"
    return f'claude mcp add --transport http {name} {mcp} --header "Authorization: Bearer {secret}"'
