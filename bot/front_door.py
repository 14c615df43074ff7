"""``GET /``: a small HTML page saying what this gateway serves and how to connect to it.

The page needs no login, so it shows only what a caller could learn by trying the routes: which
faces are on (Slack, MCP over HTTP), which providers have a key (names only), the ledger's kind
(never its host, path or password), and the URLs to give Slack and MCP clients, with the ready
``claude mcp add`` line. No token, key, client name or spend figure is ever on it. The URLs are
built from the request (scheme and ``Host`` as the client used them), escaped like every value.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from html import escape
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from bot.connect import claude_mcp_add
from bot.core.config import AppConfig
from bot.core.gateway import Gateway

__all__ = ["FrontDoor", "front_door", "render"]

#: The page is self-contained: no script, no request to any other origin, never framed.
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

_STYLE = """
body{font:16px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
main{max-width:46rem;margin:2.5rem auto;padding:0 1.25rem}
h1{font-size:1.6rem;margin:0 0 .25rem} h2{font-size:1.1rem;margin:1.75rem 0 .5rem}
p.lead{margin:0;color:#4a5263}
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid #dde1e8;border-radius:6px}
td{padding:.5rem .75rem;border-top:1px solid #eceef2;vertical-align:top}
tr:first-child td{border-top:0} td:first-child{font-weight:600;width:9rem}
.on{color:#17693a;font-weight:600} .off{color:#8a5a00;font-weight:600}
.hint{color:#4a5263;font-size:.9rem}
code,pre{font:14px/1.45 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
pre{background:#1d2330;color:#f0f2f5;padding:.75rem 1rem;border-radius:6px;white-space:pre-wrap;overflow-wrap:anywhere}
nav a{margin-right:1.25rem}
"""


@dataclass(frozen=True, slots=True)
class FrontDoor:
    """What the page says, decided once at start-up: every field is safe to show anyone."""

    slack: bool
    socket_mode: bool
    mcp: bool
    providers: tuple[str, ...]
    ledger: str

    @classmethod
    def from_server(cls, gateway: Gateway, config: AppConfig, slack_settings: Any) -> FrontDoor:
        """Read the faces, providers and ledger kind the server was built with."""
        # The same providers the start-up line lists (bot/settings.py's startup_summary).
        keyed = tuple(p.provider_name for p in gateway.sessions.router.providers.values() if p.has_key)
        return cls(
            slack=slack_settings is not None,
            socket_mode=bool(slack_settings is not None and slack_settings.app_token),
            # Personal tokens live in the ledger, so with one MCP is usable without any config client.
            mcp=bool(config.mcp.clients) or gateway.has_ledger,
            providers=keyed,
            ledger=_ledger_kind(config.database.url) if gateway.has_ledger else "none",
        )


def _ledger_kind(url: str) -> str:
    """``SQLite`` or ``PostgreSQL``: the kind only, never where it is or who logs in."""
    scheme = url.split(":", 1)[0].split("+", 1)[0].lower()
    return {"sqlite": "SQLite", "postgresql": "PostgreSQL", "postgres": "PostgreSQL"}.get(scheme, scheme)


def _row(name: str, on: bool, detail: str) -> str:
    state = '<span class="on">on</span>' if on else '<span class="off">off</span>'
    return f"<tr><td>{escape(name)}</td><td>{state} <span class='hint'>{detail}</span></td></tr>"


def _rows(door: FrontDoor) -> Iterable[str]:
    if door.slack:
        yield _row("Slack", True, "Socket Mode and HTTP" if door.socket_mode else "HTTP (Events API)")
    else:
        yield _row("Slack", False, "set SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET to turn it on")
    if door.mcp:
        yield _row(
            "MCP", True, "Streamable HTTP: a personal token (/mcp-token in Slack) or a shared client's token"
        )
    else:
        yield _row("MCP", False, "add bearer tokens under mcp.clients in the BOT_CONFIG file")
    names = ", ".join(escape(name) for name in door.providers)
    yield _row("Providers", bool(door.providers), names or "set OPENAI_API_KEY or ANTHROPIC_API_KEY")
    yield _row("Ledger", door.ledger != "none", escape(door.ledger))


def render(door: FrontDoor, base_url: str) -> str:
    """The whole page for a server reached at ``base_url`` (scheme and host, no trailing slash)."""
    base = base_url.rstrip("/")
    mcp_url, slack_url = f"{base}/mcp", f"{base}/slack/events"
    claude = claude_mcp_add(base, "YOUR_TOKEN")
    connect = [
        "<h2>Connect</h2>",
        f"<p><b>Slack</b> request URL (slash commands and events): <code>{escape(slack_url)}</code>"
        + ("" if door.slack else " <span class='hint'>(once Slack is on)</span>")
        + "</p>",
        f"<p><b>MCP</b> endpoint: <code>{escape(mcp_url)}</code>"
        + ("" if door.mcp else " <span class='hint'>(once MCP is on)</span>")
        + "</p>",
        "<p>Claude Code, with your personal token (<code>/mcp-token</code> in Slack answers with this "
        "line filled in, shown only to you; an operator runs <code>bot tokens create</code>):</p>",
        f"<pre>{escape(claude)}</pre>",
    ]
    return "\n".join(
        [
            "<!doctype html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>LLM gateway</title><style>{_STYLE}</style></head><body><main>",
            "<h1>LLM gateway</h1>",
            '<p class="lead">Every call to a model is counted and checked against its budgets before it is made.</p>',
            "<h2>What is on</h2>",
            "<table>",
            *_rows(door),
            "</table>",
            *connect,
            "<h2>Operations</h2>",
            f'<nav><a href="{escape(base)}/readyz">/readyz</a><a href="{escape(base)}/healthz">/healthz</a>'
            f'<a href="{escape(base)}/metrics">/metrics</a></nav>',
            "</main></body></html>",
        ]
    )


def front_door(
    gateway: Gateway, config: AppConfig, slack_settings: Any
) -> Callable[[Request], Awaitable[Response]]:
    """The ``GET /`` endpoint of a server built with these faces."""
    door = FrontDoor.from_server(gateway, config, slack_settings)

    async def endpoint(request: Request) -> Response:
        base = f"{request.url.scheme}://{request.url.netloc}"
        return HTMLResponse(render(door, base), headers=_HEADERS)

    return endpoint
