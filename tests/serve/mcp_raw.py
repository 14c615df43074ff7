"""Raw MCP over Streamable HTTP, for tests that need the session ids an SDK client keeps hidden.

``post`` sends one JSON-RPC message and returns the status, the session id the server gave, and
the JSON-RPC messages of the answer (read from its SSE stream or its JSON body).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx2

__all__ = ["INITIALIZE", "Answer", "call", "initialize", "post"]

#: The legacy (session) revision the SDK's clients negotiate.
PROTOCOL = "2025-11-25"
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}


@dataclass
class Answer:
    """One HTTP answer of the MCP endpoint."""

    status: int
    session: str | None
    messages: list[dict[str, Any]]
    text: str


def _messages(response: httpx2.Response) -> list[dict[str, Any]]:
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        return [json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:")]
    try:
        parsed = response.json()
    except ValueError:
        return []
    return parsed if isinstance(parsed, list) else [parsed]


def post(
    http: httpx2.Client, url: str, token: str, message: dict[str, Any], session: str | None = None
) -> Answer:
    """POST one JSON-RPC message to ``url/mcp`` as the client holding ``token``."""
    headers = {
        "authorization": f"Bearer {token}",
        "accept": "application/json, text/event-stream",
        "content-type": "application/json",
    }
    if session is not None:
        headers["mcp-session-id"] = session
        headers["mcp-protocol-version"] = PROTOCOL
    response = http.post(f"{url}/mcp", json=message, headers=headers)
    return Answer(
        response.status_code, response.headers.get("mcp-session-id"), _messages(response), response.text
    )


def initialize(http: httpx2.Client, url: str, token: str) -> str:
    """Open a session (initialize, then the initialized notification); return its id."""
    opened = post(http, url, token, INITIALIZE)
    assert opened.status == 200 and opened.session, opened
    done = post(http, url, token, {"jsonrpc": "2.0", "method": "notifications/initialized"}, opened.session)
    assert done.status == 202, done
    return opened.session


def call(method: str, params: dict[str, Any] | None = None, id_: int = 2) -> dict[str, Any]:
    """A JSON-RPC request."""
    return {"jsonrpc": "2.0", "id": id_, "method": method, "params": params or {}}
