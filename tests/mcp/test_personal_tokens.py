"""Personal tokens over real Streamable HTTP: the person pays, sessions are the token's own."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import httpx2

from bot.core.types import Principal
from tests.fakes.loopback import serve_in_loop as serve
from tests.fakes.upstream import FakeUpstream
from tests.mcp.conftest import PER_CLIENT, TOKENS, MakeGateway, http_client
from tests.serve.mcp_raw import call, initialize, post
from tools.mcp_server import mcp_http_app

PER_USER = {"name": "per-user", "scope": "user", "key": None, "limit_usd": "5", "period": "monthly"}
SLACK_ALICE = Principal(surface="slack", team_id="T1", user_id="UALICE", channel_id="C1")


async def test_a_personal_token_charges_its_person_and_its_client(
    make_gateway: MakeGateway, fake: FakeUpstream
) -> None:
    gateway = await make_gateway([PER_USER, PER_CLIENT])
    issued = await gateway.issue_token(SLACK_ALICE, name="laptop")
    async with serve(mcp_http_app(gateway)) as url, http_client(url, issued.secret) as me:
        gen = await me.call_tool("generate", {"prompt": "mine", "model": "gpt-4o-mini", "max_tokens": 20})
        status = await me.call_tool("budget_status", {})
    assert gen.structured_content is not None and status.structured_content is not None
    cost = Decimal(gen.structured_content["cost_usd"])
    assert status.structured_content["client"] == "laptop"
    keys = {
        b["name"]: (b["scope_key"], Decimal(b["spent_usd"])) for b in status.structured_content["budgets"]
    }
    assert keys == {"per-user": ("T1:UALICE", cost), "per-client": ("laptop", cost)}
    # The person's Slack commands see the same per-user spend.
    (slack,) = await gateway.budget_status(SLACK_ALICE)
    assert (slack.name, slack.spent) == ("per-user", cost)
    (listed,) = await gateway.list_tokens(SLACK_ALICE)
    assert listed.last_used_at is not None


async def test_a_session_answers_only_the_token_that_opened_it(
    make_gateway: MakeGateway, fake: FakeUpstream
) -> None:
    gateway = await make_gateway([PER_USER])
    first = await gateway.issue_token(SLACK_ALICE, name="laptop")
    second = await gateway.issue_token(SLACK_ALICE, name="desktop")  # the same person, another token
    async with serve(mcp_http_app(gateway)) as url:

        def exchange() -> tuple[int, int, int, int]:
            with httpx2.Client(timeout=10) as http:
                session = initialize(http, url, first.secret)
                other = post(http, url, second.secret, call("tools/list"), session).status
                shared = post(http, url, TOKENS["alice"], call("tools/list"), session).status
                own = post(http, url, first.secret, call("tools/list"), session).status
                bad = post(http, url, first.secret[:-2] + "xx", call("tools/list"), session).status
            return other, shared, own, bad

        other, shared, own, bad = await asyncio.to_thread(exchange)
    assert (other, shared, own, bad) == (404, 404, 200, 401)


async def test_a_revoked_token_is_refused_at_once(make_gateway: MakeGateway, fake: FakeUpstream) -> None:
    gateway = await make_gateway([PER_USER])
    issued = await gateway.issue_token(SLACK_ALICE, name="laptop")
    async with serve(mcp_http_app(gateway)) as url:
        async with http_client(url, issued.secret) as me:
            assert not (await me.call_tool("budget_status", {})).is_error
        await gateway.revoke_token(SLACK_ALICE, issued.token.id)
        async with httpx2.AsyncClient(timeout=10) as http:
            reply = await http.post(
                f"{url}/mcp",
                json=call("tools/list"),
                headers={"Authorization": f"Bearer {issued.secret}", "Accept": "application/json"},
            )
    assert reply.status_code == 401 and "revoked" in reply.json()["message"]
    assert fake.requests == []
