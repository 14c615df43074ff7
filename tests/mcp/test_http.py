"""The MCP tools over real Streamable HTTP (uvicorn on loopback), with and without bearer tokens."""

from __future__ import annotations

from decimal import Decimal

import pytest

from bot.core.gateway import Gateway
from tests.conftest import fast_config
from tests.fakes.loopback import serve_in_loop as serve
from tests.fakes.upstream import FakeUpstream
from tests.mcp.conftest import PER_CLIENT, TOKENS, MakeGateway, http_client, raw_http
from tools.mcp_server import mcp_http_app

CHAT = "/v1/chat/completions"
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}
ACCEPT = {"Accept": "application/json, text/event-stream"}


@pytest.mark.parametrize(
    "auth", [None, "Bearer wrong-token-0123456789", "Basic YWxpY2U6eA==", "Bearer alice"]
)
async def test_missing_or_wrong_token_is_401_with_a_hint(
    gateway: Gateway, fake: FakeUpstream, auth: str | None
) -> None:
    headers = dict(ACCEPT, **({"Authorization": auth} if auth else {}))
    async with serve(mcp_http_app(gateway)) as url, raw_http(**headers) as http:
        reply = await http.post(f"{url}/mcp", json=INIT)
    assert reply.status_code == 401
    assert reply.headers["www-authenticate"].startswith("Bearer")
    body = reply.json()
    assert body["error"] == "unauthorized" and "Authorization: Bearer <token>" in body["hint"]
    assert fake.requests == []


async def test_authenticated_client_uses_every_tool(gateway: Gateway, fake: FakeUpstream) -> None:
    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    async with serve(mcp_http_app(gateway)) as url, http_client(url, TOKENS["alice"]) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        gen = await client.call_tool(
            "generate", {"prompt": "Over HTTP", "model": "gpt-4o-mini"}, progress_callback=on_progress
        )
        models = await client.call_tool("list_models", {"provider": "openai"})
        status = await client.call_tool("budget_status", {})
        unknown = await client.call_tool("generate", {"prompt": "hi", "model": "gpt-4o-mimi"})
    assert set(tools) == {"generate", "budget_status", "list_models", "my_usage"}
    assert tools["generate"].output_schema is not None
    assert gen.structured_content is not None and gen.structured_content["text"] == "Echo: Over HTTP"
    assert Decimal(gen.structured_content["cost_usd"]) > 0
    assert seen, "progress notifications reach the client over SSE"
    assert models.structured_content is not None and models.structured_content["models"]
    assert status.structured_content == {"client": "alice", "budgets": [], "remaining_budget_usd": None}
    assert unknown.is_error and "Did you mean" in unknown.content[0].text  # type: ignore[union-attr]


async def test_each_client_sees_only_its_own_budget(make_gateway: MakeGateway, fake: FakeUpstream) -> None:
    gateway = await make_gateway([PER_CLIENT])
    async with serve(mcp_http_app(gateway)) as url:
        async with http_client(url, TOKENS["alice"]) as alice:
            spent = await alice.call_tool(
                "generate", {"prompt": "mine", "model": "gpt-4o-mini", "max_tokens": 20}
            )
            alice_status = await alice.call_tool("budget_status", {})
        async with http_client(url, TOKENS["bob"]) as bob:
            bob_status = await bob.call_tool("budget_status", {})
            bob_resource = await bob.read_resource("budget://me")
    assert spent.structured_content is not None
    assert alice_status.structured_content is not None and bob_status.structured_content is not None
    (a,) = alice_status.structured_content["budgets"]
    (b,) = bob_status.structured_content["budgets"]
    assert a["scope_key"] == "alice" and Decimal(a["spent_usd"]) == Decimal(
        spent.structured_content["cost_usd"]
    )
    assert b["scope_key"] == "bob" and Decimal(b["spent_usd"]) == 0
    assert "alice" not in str(bob_status.structured_content) + str(bob_resource.contents)


async def test_budget_refusal_over_http(make_gateway: MakeGateway, fake: FakeUpstream) -> None:
    gateway = await make_gateway([{"name": "tiny", "scope": "client", "key": "bob", "limit_usd": "0.0001"}])
    async with serve(mcp_http_app(gateway)) as url, http_client(url, TOKENS["bob"]) as bob:
        refused = await bob.call_tool("generate", {"prompt": "hi", "model": "gpt-4o", "max_tokens": 4000})
    assert refused.is_error and "budget 'tiny" in refused.content[0].text  # type: ignore[union-attr]
    assert fake.requests_to(CHAT) == []


async def test_dns_rebinding_protection_keeps_configured_hosts(fake_env: dict[str, str]) -> None:
    config = fast_config(
        mcp={"clients": {"alice": {"token": TOKENS["alice"]}}, "allowed_hosts": ["gateway.example:8765"]}
    )
    async with Gateway(config, env=fake_env) as gateway, serve(mcp_http_app(gateway)) as url:
        auth = {"Authorization": f"Bearer {TOKENS['alice']}", **ACCEPT}
        async with raw_http(**auth, Host="evil.example") as http:
            evil = await http.post(f"{url}/mcp", json=INIT)
        async with raw_http(**auth, Host="gateway.example:8765") as http:
            allowed = await http.post(f"{url}/mcp", json=INIT)
        async with raw_http(**auth, Origin="http://evil.example") as http:
            bad_origin = await http.post(f"{url}/mcp", json=INIT)
    assert evil.status_code == 421
    assert allowed.status_code == 200
    assert bad_origin.status_code == 403


async def test_http_without_any_client_or_ledger_serves_only_401s(
    fake_env: dict[str, str], fake: FakeUpstream
) -> None:
    # /mcp is always there, never anonymous: every token is refused, with how to get one.
    async with Gateway(fast_config(), env=fake_env) as gateway, serve(mcp_http_app(gateway)) as url:
        for auth in ({}, {"Authorization": "Bearer gwp_" + "x" * 43}):
            async with raw_http(**ACCEPT, **auth) as http:
                reply = await http.post(f"{url}/mcp", json=INIT)
            assert reply.status_code == 401
            assert "/mcp-token" in reply.json()["hint"] and "bot tokens create" in reply.json()["hint"]
    assert fake.requests == []
