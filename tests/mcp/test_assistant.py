"""What assistants need from a budgeted model, through real MCP clients over Streamable HTTP.

Conversations charged for every turn, expensive calls confirmed through elicitation (both the
2025-11-25 session revision and the 2026-07-28 stateless one), long answers as resource links,
and the caller's own usage equal to the ledger's.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from mcp.shared.exceptions import MCPError
from mcp_types import ElicitRequestParams, ElicitResult, ResourceLink, TextResourceContents

from bot.core.gateway import Gateway
from bot.core.types import Principal
from tests.fakes.loopback import serve_in_loop as serve
from tests.fakes.upstream import FakeUpstream
from tests.mcp.conftest import PER_CLIENT, TOKENS, MakeGateway, http_client
from tools.mcp_server import mcp_http_app

CHAT = "/v1/chat/completions"
ALICE = Principal(surface="mcp", client_id="alice")
BOB = Principal(surface="mcp", client_id="bob")
#: Both protocol revisions the SDK speaks: sessions with mid-call requests, and stateless.
REVISIONS = ["legacy", "2026-07-28"]


def mcp_settings(**mcp: Any) -> dict[str, Any]:
    """``mcp`` config with the two test clients and ``mcp``'s other settings."""
    clients: dict[str, Any] = {name: {"token": token} for name, token in TOKENS.items()}
    for name, extra in mcp.pop("client_settings", {}).items():
        clients[name] = {**clients[name], **extra}
    return {"clients": clients, **mcp}


def text_of(result: Any) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)


async def spent(gateway: Gateway, principal: Principal) -> Decimal:
    (budget,) = await gateway.budget_status(principal)
    return budget.spent


@pytest.mark.parametrize("mode", REVISIONS)
async def test_a_conversation_is_sent_and_charged_whole(
    make_gateway: MakeGateway, fake: FakeUpstream, mode: str
) -> None:
    gateway = await make_gateway([PER_CLIENT])
    turns = [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hello Ada."},
        {"role": "user", "content": "What is my name?"},
    ]
    async with serve(mcp_http_app(gateway)) as url, http_client(url, TOKENS["alice"], mode=mode) as alice:
        gen = await alice.call_tool("generate", {"messages": turns, "model": "gpt-4o-mini", "max_tokens": 20})
        both = await alice.call_tool("generate", {"prompt": "hi", "messages": turns})
        neither = await alice.call_tool("generate", {"model": "gpt-4o-mini"})
    assert gen.structured_content is not None, text_of(gen)
    (request,) = fake.requests_to(CHAT)
    sent = [(m["role"], m["content"]) for m in request.json["messages"]]
    assert sent == [(t["role"], t["content"]) for t in turns]  # every turn reached the model
    usage = gen.structured_content["usage"]
    assert usage["input_tokens"] == fake.openai_prompt_tokens(request.json)  # all turns counted
    assert gen.structured_content["text"] == "Echo: What is my name?"
    assert await spent(gateway, ALICE) == Decimal(gen.structured_content["cost_usd"]) > 0
    assert both.is_error and "not both" in text_of(both)
    assert neither.is_error and "'messages'" in text_of(neither)


@pytest.mark.parametrize("mode", REVISIONS)
async def test_an_expensive_call_is_confirmed_or_declined_through_elicitation(
    make_gateway: MakeGateway, fake: FakeUpstream, mode: str
) -> None:
    settings = mcp_settings(client_settings={"alice": {"confirm_above_usd": "0.0001"}})
    gateway = await make_gateway([PER_CLIENT], mcp=settings)
    asked: list[str] = []
    answer = {"action": "accept"}

    async def elicit(context: Any, params: ElicitRequestParams) -> ElicitResult:
        asked.append(params.message)
        if answer["action"] == "accept":
            return ElicitResult(action="accept", content={"run": True})
        return ElicitResult(action=answer["action"])  # type: ignore[arg-type]

    dear = {"prompt": "Worth it", "model": "gpt-4o", "max_tokens": 2000}
    async with serve(mcp_http_app(gateway)) as url:
        async with http_client(url, TOKENS["alice"], mode=mode, elicitation_callback=elicit) as alice:
            priced = await alice.call_tool("generate", {**dear, "dry_run": True})
            answer["action"] = "decline"
            declined = await alice.call_tool("generate", dear)
            answer["action"] = "cancel"
            cancelled = await alice.call_tool("generate", dear)
            assert fake.requests_to(CHAT) == [] and await spent(gateway, ALICE) == 0  # nothing charged
            answer["action"] = "accept"
            confirmed = await alice.call_tool("generate", dear)
            cheap = await alice.call_tool(
                "generate", {"prompt": "hi", "model": "gpt-4o-mini", "max_tokens": 5}
            )
        async with http_client(url, TOKENS["bob"], mode=mode, elicitation_callback=elicit) as bob:
            unasked = await bob.call_tool("generate", dear)  # bob's threshold: the global one, none
    assert priced.structured_content is not None
    worst = priced.structured_content["cost_usd"]
    assert len(asked) == 3, asked  # the dry run, the cheap call and bob's were not asked about
    assert f"${worst}" in asked[0] and "$0.0001" in asked[0] and "'per-client' has $1 left" in asked[0]
    assert declined.is_error and "nothing was charged" in text_of(declined)
    assert cancelled.is_error and "nothing was charged" in text_of(cancelled)
    assert confirmed.structured_content is not None, text_of(confirmed)
    assert cheap.structured_content is not None and unasked.structured_content is not None
    assert len(fake.requests_to(CHAT)) == 3
    charged = Decimal(confirmed.structured_content["cost_usd"]) + Decimal(
        cheap.structured_content["cost_usd"]
    )
    assert await spent(gateway, ALICE) == charged


@pytest.mark.parametrize("mode", REVISIONS)
async def test_a_client_without_elicitation_is_told_the_figure_and_how_to_proceed(
    make_gateway: MakeGateway, fake: FakeUpstream, mode: str
) -> None:
    gateway = await make_gateway([PER_CLIENT], mcp=mcp_settings(confirm_above_usd="0.0001"))
    dear = {"prompt": "Worth it", "model": "gpt-4o", "max_tokens": 2000}
    async with serve(mcp_http_app(gateway)) as url, http_client(url, TOKENS["alice"], mode=mode) as alice:
        priced = await alice.call_tool("generate", {**dear, "dry_run": True})
        refused = await alice.call_tool("generate", dear)
        assert fake.requests_to(CHAT) == [] and await spent(gateway, ALICE) == 0
        forced = await alice.call_tool("generate", {**dear, "confirm": True})
    assert priced.structured_content is not None
    text = text_of(refused)
    assert refused.is_error and f"${priced.structured_content['cost_usd']}" in text
    assert "confirm: true" in text and "Nothing was charged" in text and "$1 left" in text
    assert forced.structured_content is not None, text_of(forced)
    assert await spent(gateway, ALICE) == Decimal(forced.structured_content["cost_usd"]) > 0


@pytest.mark.parametrize("mode", REVISIONS)
async def test_a_long_answer_is_a_resource_link_only_its_caller_can_read(
    make_gateway: MakeGateway, fake: FakeUpstream, mode: str
) -> None:
    gateway = await make_gateway([PER_CLIENT], mcp=mcp_settings(inline_answer_chars=1_000))
    fake.reply_text = "".join(f"line {i} of a long answer.\n" for i in range(400))  # ~10,000 chars
    async with serve(mcp_http_app(gateway)) as url:
        async with http_client(url, TOKENS["alice"], mode=mode) as alice:
            gen = await alice.call_tool(
                "generate", {"prompt": "long", "model": "gpt-4o-mini", "max_tokens": 8000}
            )
            assert gen.structured_content is not None, text_of(gen)
            uri = gen.structured_content["full_text_uri"]
            read = await alice.read_resource(uri)
        async with http_client(url, TOKENS["bob"], mode=mode) as bob:
            with pytest.raises(MCPError, match="No answer"):
                await bob.read_resource(uri)
    out = gen.structured_content
    assert out["text_truncated"] is True and out["full_text_chars"] == len(fake.reply_text)
    assert out["text"] == fake.reply_text[:1_000]
    (link,) = [block for block in gen.content if isinstance(block, ResourceLink)]
    assert link.uri == uri and uri.startswith("gateway://answers/")
    (contents,) = read.contents
    assert isinstance(contents, TextResourceContents) and contents.text == fake.reply_text
    assert await spent(gateway, ALICE) == Decimal(out["cost_usd"])  # charged once, for all of it


@pytest.mark.parametrize("mode", REVISIONS)
async def test_usage_equals_the_ledger(make_gateway: MakeGateway, fake: FakeUpstream, mode: str) -> None:
    gateway = await make_gateway([PER_CLIENT])
    async with serve(mcp_http_app(gateway)) as url:
        async with http_client(url, TOKENS["alice"], mode=mode) as alice:
            for prompt in ("one", "two"):
                await alice.call_tool(
                    "generate", {"prompt": prompt, "model": "gpt-4o-mini", "max_tokens": 10}
                )
            usage = await alice.call_tool("my_usage", {"period": "daily", "limit": 1})
            resource = await alice.read_resource("usage://me")
        async with http_client(url, TOKENS["bob"], mode=mode) as bob:
            await bob.call_tool("generate", {"prompt": "three", "model": "gpt-4o-mini", "max_tokens": 10})
            bobs = await bob.call_tool("my_usage", {})
    ledger = await gateway.recent_calls(of=ALICE)
    out = usage.structured_content
    assert out is not None, text_of(usage)
    assert (out["caller"], out["period"], out["call_count"]) == ("alice", "daily", 2)
    assert Decimal(out["spent_usd"]) == sum(c.cost_usd for c in ledger) == await spent(gateway, ALICE) > 0
    (latest,) = out["calls"]  # limit 1: the newest only
    assert latest["request_id"] == ledger[0].request_id and Decimal(latest["cost_usd"]) == ledger[0].cost_usd
    assert out["remaining_budget_usd"] == str(1 - Decimal(out["spent_usd"]))
    (contents,) = resource.contents
    assert isinstance(contents, TextResourceContents) and '"call_count": 2' in contents.text
    assert bobs.structured_content is not None and bobs.structured_content["call_count"] == 1
    assert Decimal(bobs.structured_content["spent_usd"]) == await spent(gateway, BOB)
