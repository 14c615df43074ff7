"""MCP sessions of ``bot serve``, in its own process: bound to their client, capped per client.

Before: client B's token worked on client A's session id, B's ``DELETE`` of it got 200 (and A
then got "Session not found"); session ids were logged at INFO; 10,100 idle sessions of one
client took the server from 122 to 581 MB and then refused every other client's new session.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from tests.fakes.upstream import FakeUpstream
from tests.mcp.conftest import TOKENS
from tests.serve.conftest import Served, serve_env, start
from tests.serve.mcp_raw import call, initialize, post
from tests.serve.test_body_limits import assert_clean_log
from tests.serve.test_serve import metric

CAP = 20


def config_yaml(cap: int = CAP, idle: float = 300) -> str:
    """Two MCP clients, a per-client session cap and an idle timeout."""
    clients = "\n".join(f'    {name}: {{token: "{token}"}}' for name, token in TOKENS.items())
    return f"""
retry: {{max_retries: 0, initial_delay_seconds: 0.01, max_delay_seconds: 0.1}}
providers:
  openai: {{type: openai, timeout_seconds: 10}}
mcp:
  max_sessions_per_client: {cap}
  session_idle_seconds: {idle}
  clients:
{clients}
budgets:
  - {{name: per-client, scope: client, limit_usd: "1", period: monthly}}
"""


def serve_mcp(tmp_path: Path, fake_env: dict[str, str], **options: float) -> Served:
    """``bot serve`` with MCP only (two clients), ready."""
    env = serve_env(tmp_path, fake_env, None)
    Path(env["BOT_CONFIG"]).write_text(config_yaml(**options))  # type: ignore[arg-type]
    served = start(tmp_path, env)
    served.wait_ready()
    return served


@pytest.fixture
def mcp_served(tmp_path: Path, fake_env: dict[str, str], fake: FakeUpstream) -> Iterator[Served]:
    """``bot serve`` with alice and bob as MCP clients, at most ``CAP`` sessions each."""
    served = serve_mcp(tmp_path, fake_env)
    try:
        yield served
    finally:
        if served.proc.poll() is None:
            served.proc.kill()
            served.proc.wait(10)


def delete(http: httpx2.Client, url: str, token: str, session: str) -> int:
    """``DELETE /mcp`` of ``session`` with ``token``: the status."""
    headers = {
        "authorization": f"Bearer {token}",
        "mcp-session-id": session,
        "mcp-protocol-version": "2025-11-25",
    }
    return http.delete(f"{url}/mcp", headers=headers).status_code


def test_a_session_answers_only_the_client_that_opened_it(mcp_served: Served) -> None:
    url, alice, bob = mcp_served.url, TOKENS["alice"], TOKENS["bob"]
    with httpx2.Client(timeout=10) as http:
        session = initialize(http, url, alice)
        assert post(http, url, alice, call("tools/list"), session).status == 200
        # Bob holds Alice's session id: every use of it is answered as for an unknown session.
        stolen = post(http, url, bob, call("tools/call", {"name": "budget_status", "arguments": {}}), session)
        assert stolen.status == 404 and "Session not found" in stolen.text, stolen
        assert delete(http, url, bob, session) == 404
        # ... and Alice's session is untouched: still hers, and it still works.
        mine = post(http, url, alice, call("tools/call", {"name": "budget_status", "arguments": {}}), session)
        assert mine.status == 200, mine
        assert '\\"client\\": \\"alice\\"' in mine.text or '"client": "alice"' in mine.text, mine.text
        assert delete(http, url, alice, session) == 200
        assert post(http, url, alice, call("tools/list"), session).status == 404  # deleted now
    mcp_served.stop()
    logs = mcp_served.logs()
    assert session not in logs, "a session id reached the log"
    assert not re.search(r"\b[0-9a-f]{32}\b", logs), logs
    assert_clean_log(mcp_served)


def test_one_clients_idle_sessions_never_lock_another_out(mcp_served: Served) -> None:
    url, alice, bob = mcp_served.url, TOKENS["alice"], TOKENS["bob"]
    with httpx2.Client(timeout=10) as http:
        sessions = [initialize(http, url, alice) for _ in range(CAP)]
        assert len(set(sessions)) == CAP
        refused = post(http, url, alice, {**call("initialize"), "params": {}})
        assert refused.status == 429, refused
        error = refused.messages[0]["error"]
        assert f"client 'alice' already has {CAP} open MCP sessions" in error["message"], error
        assert "mcp.max_sessions_per_client" in error["message"]
        assert "DELETE /mcp" in error["data"]["hint"] and error["data"]["cap"] == CAP
        # Bob is served while Alice is at her cap...
        bob_session = initialize(http, url, bob)
        assert post(http, url, bob, call("tools/list"), bob_session).status == 200
        # ... and Alice gets a session again as soon as she closes one.
        assert delete(http, url, alice, sessions[0]) == 200
        initialize(http, url, alice)
        text = http.get(f"{url}/metrics").text
    assert metric(text, "http_requests_total", route="/mcp", method="POST", status="429") == 1
    mcp_served.stop()
    assert "already has 20 open MCP sessions" in mcp_served.logs()  # the refusal's reason, logged
    assert_clean_log(mcp_served)


async def test_the_stateless_revision_needs_no_session(mcp_served: Served) -> None:
    url, alice, bob = mcp_served.url, TOKENS["alice"], TOKENS["bob"]
    with httpx2.Client(timeout=10) as http:
        for _ in range(CAP):  # Alice at her cap changes nothing for stateless requests
            initialize(http, url, alice)
    for name in ("alice", "bob"):
        headers = {"Authorization": f"Bearer {TOKENS[name]}"}
        async with (
            create_mcp_http_client(headers=headers) as client_http,
            Client(
                streamable_http_client(f"{url}/mcp", http_client=client_http), mode="2026-07-28"
            ) as client,
        ):
            result = await client.call_tool("budget_status", {})
            assert not result.is_error, result
            assert result.structured_content is not None
            assert result.structured_content["client"] == name  # the token's client, no session
    del bob


def test_idle_sessions_close_after_the_configured_time(
    tmp_path: Path, fake_env: dict[str, str], fake: FakeUpstream
) -> None:
    served = serve_mcp(tmp_path, fake_env, cap=2, idle=1)
    try:
        with httpx2.Client(timeout=10) as http:
            first, _ = (
                initialize(http, served.url, TOKENS["alice"]),
                initialize(http, served.url, TOKENS["alice"]),
            )
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                time.sleep(2)  # longer than the idle time: a check is itself activity
                if post(http, served.url, TOKENS["alice"], call("tools/list"), first).status == 404:
                    break
            else:
                pytest.fail("an idle session was still open after 15 s with session_idle_seconds: 1")
            # Both expired, so the cap has room again.
            initialize(http, served.url, TOKENS["alice"])
            initialize(http, served.url, TOKENS["alice"])
    finally:
        served.stop()
    assert_clean_log(served)
