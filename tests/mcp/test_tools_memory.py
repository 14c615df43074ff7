"""The MCP tools in memory, through the SDK's own client, against the fake upstream."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from typing import Any

import pytest
from mcp.client import Client
from mcp_types import TextResourceContents

from bot.core.gateway import Gateway
from bot.core.types import Principal
from tests.fakes.upstream import FakeUpstream
from tests.mcp.conftest import PER_CLIENT, MakeGateway
from tools import mcp_generate
from tools.mcp_tools import build_mcp_server

CHAT = "/v1/chat/completions"


def connect(gateway: Gateway) -> Client:
    # "legacy" runs real JSON-RPC over memory streams, so progress tokens travel in _meta as on
    # the wire (the default in-process mode calls the progress callback without a token).
    return Client(build_mcp_server(gateway, gateway.config.mcp), mode="legacy")


def error_text(result: Any) -> str:
    assert result.is_error, result
    return " ".join(block.text for block in result.content)


async def test_tools_are_described_for_a_model(gateway: Gateway) -> None:
    async with connect(gateway) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == {"generate", "budget_status", "list_models", "my_usage"}
    for tool in tools.values():
        assert tool.title and tool.description and len(tool.description) > 80
        assert tool.output_schema and tool.output_schema["type"] == "object"
    gen = tools["generate"]
    assert gen.annotations is not None
    assert (
        gen.annotations.read_only_hint,
        gen.annotations.idempotent_hint,
        gen.annotations.open_world_hint,
    ) == (
        False,
        False,
        True,
    )
    for name in ("budget_status", "list_models", "my_usage"):
        ann = tools[name].annotations
        assert ann is not None
        assert (ann.read_only_hint, ann.idempotent_hint, ann.open_world_hint) == (True, True, False)
    props = gen.input_schema["properties"]
    assert "required" not in gen.input_schema  # prompt or messages: the tool says which is missing
    assert {"prompt", "messages", "confirm"} <= set(props)
    prompt = props["prompt"]["anyOf"][0]
    assert (prompt["minLength"], prompt["maxLength"]) == (1, 400_000)
    max_tokens = props["max_tokens"]["anyOf"][0]
    assert (max_tokens["minimum"], max_tokens["maximum"]) == (1, 200_000)
    temperature = props["temperature"]["anyOf"][0]
    assert (temperature["minimum"], temperature["maximum"]) == (0, 2)
    assert {"text", "cost_usd", "usage", "remaining_budget_usd", "request_id"} <= set(
        gen.output_schema["properties"]  # type: ignore[index]
    )
    # The caller's identity is never an argument.
    assert tools["budget_status"].input_schema.get("properties") == {}


async def test_generate_returns_text_and_exact_cost_in_structured_content(
    gateway: Gateway, fake: FakeUpstream
) -> None:
    async with connect(gateway) as client:
        result = await client.call_tool(
            "generate", {"prompt": "Say hello", "model": "gpt-4o-mini", "max_tokens": 50}
        )
    assert not result.is_error
    out = result.structured_content
    assert out is not None
    assert out["text"] == "Echo: Say hello"
    assert (out["model"], out["provider"]) == ("gpt-4o-mini", "openai")
    assert Decimal(out["cost_usd"]) > 0 and out["cost_estimated"] is False
    assert out["usage"]["total_tokens"] == out["usage"]["input_tokens"] + out["usage"]["output_tokens"] > 0
    assert len(out["request_id"]) == 32
    assert out["remaining_budget_usd"] is None  # no ledger, so no budget applies
    assert len(fake.requests_to(CHAT)) == 1


async def test_generate_reports_progress_when_asked(gateway: Gateway, fake: FakeUpstream) -> None:
    seen: list[tuple[float, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, message))

    async with connect(gateway) as client:
        result = await client.call_tool(
            "generate", {"prompt": "Stream this", "model": "claude-haiku-4-5"}, progress_callback=on_progress
        )
        assert not result.is_error
        assert seen and seen[0][0] > 0 and "characters" in (seen[0][1] or "")
        # Without a progress token the call is not streamed for progress at all.
        seen.clear()
        await client.call_tool("generate", {"prompt": "Quiet", "model": "claude-haiku-4-5"})
    assert seen == []
    assert fake.requests_to("/v1/messages")[0].json["stream"] is True


async def test_progress_is_throttled() -> None:
    sent: list[float] = []

    class Ctx:
        async def report_progress(self, progress: float, total: float | None, message: str | None) -> None:
            sent.append(progress)

    clock = iter([10.0, 10.1, 10.2, 10.3, 10.4, 10.6])
    on_text = mcp_generate.progress_callback(Ctx(), clock=lambda: next(clock))  # type: ignore[arg-type]
    for _ in range(6):
        await on_text("ab")
    assert sent == [2, 8, 12]  # at 10.0, 10.3 and 10.6: never twice within 0.25 s


async def test_bad_arguments_are_tool_errors(gateway: Gateway, fake: FakeUpstream) -> None:
    async with connect(gateway) as client:
        empty = await client.call_tool("generate", {"prompt": ""})
        hot = await client.call_tool("generate", {"prompt": "hi", "temperature": 3})
        huge = await client.call_tool("generate", {"prompt": "hi", "max_tokens": 0})
    # One sentence naming the argument and its range: never pydantic's report.
    assert error_text(empty) == (
        "Invalid argument for generate: 'prompt' must be text of 1 to 400,000 characters (got 0 characters); "
        "or leave it out for the default."
    )
    assert error_text(hot) == (
        "Invalid argument for generate: 'temperature' must be a number from 0 to 2 (got 3); "
        "or leave it out for the default."
    )
    assert "'max_tokens' must be a whole number from 1 to 200,000 (got 0)" in error_text(huge)
    for text in (error_text(empty), error_text(hot), error_text(huge)):
        assert "Traceback" not in text and "pydantic" not in text and "\n" not in text
    assert fake.requests_to(CHAT) == []


async def test_unknown_model_is_a_tool_error_with_suggestions(gateway: Gateway) -> None:
    async with connect(gateway) as client:
        result = await client.call_tool("generate", {"prompt": "hi", "model": "gpt-4o-mimi"})
    text = error_text(result)
    assert "unknown model 'gpt-4o-mimi'" in text and "Did you mean: gpt-4o-mini" in text


async def test_budget_refusal_names_the_budget_and_costs_nothing(
    make_gateway: MakeGateway, fake: FakeUpstream
) -> None:
    tiny = {"name": "mcp-tiny", "scope": "client", "limit_usd": "0.0001", "period": "daily"}
    gateway = await make_gateway([tiny])
    async with connect(gateway) as client:
        result = await client.call_tool(
            "generate", {"prompt": "hello", "model": "gpt-4o", "max_tokens": 4000}
        )
        status = await client.call_tool("budget_status", {})
    text = error_text(result)
    assert "budget 'mcp-tiny" in text and "would be exceeded" in text and "Lower max_tokens" in text
    assert fake.requests_to(CHAT) == []
    assert status.structured_content is not None
    (budget,) = status.structured_content["budgets"]
    assert Decimal(budget["spent_usd"]) == Decimal(budget["reserved_usd"]) == 0


async def test_budget_status_and_resource_show_the_callers_budgets(make_gateway: MakeGateway) -> None:
    gateway = await make_gateway([PER_CLIENT])
    async with connect(gateway) as client:
        gen = await client.call_tool(
            "generate", {"prompt": "hello", "model": "gpt-4o-mini", "max_tokens": 20}
        )
        status = await client.call_tool("budget_status", {})
        resource = await client.read_resource("budget://me")
    assert gen.structured_content is not None and status.structured_content is not None
    out = status.structured_content
    assert out["client"] == "local"  # config.mcp.stdio_client: the in-memory server is the stdio one
    (budget,) = out["budgets"]
    assert (budget["name"], budget["scope"], budget["scope_key"]) == ("per-client", "client", "local")
    assert Decimal(budget["spent_usd"]) == Decimal(gen.structured_content["cost_usd"])
    assert Decimal(budget["remaining_usd"]) == 1 - Decimal(gen.structured_content["cost_usd"])
    assert gen.structured_content["remaining_budget_usd"] == budget["remaining_usd"]
    assert gen.structured_content["tightest_budget"] == "per-client"
    (contents,) = resource.contents
    assert isinstance(contents, TextResourceContents)

    def settled(view: dict[str, Any]) -> dict[str, Any]:
        # The projection extrapolates spend over the time elapsed: it moves between two reads.
        return {**view, "budgets": [{**b, "projected_spend_usd": None} for b in view["budgets"]]}

    assert settled(json.loads(contents.text)) == settled(out)


async def test_list_models_has_prices_and_key_state(gateway: Gateway) -> None:
    async with connect(gateway) as client:
        everything = await client.call_tool("list_models", {})
        anthropic = await client.call_tool("list_models", {"provider": "anthropic"})
    assert everything.structured_content is not None and anthropic.structured_content is not None
    models = {m["name"]: m for m in everything.structured_content["models"]}
    mini = models["gpt-4o-mini"]
    assert mini["provider"] == "openai" and mini["key_configured"] is True
    assert Decimal(mini["input_per_mtok_usd"]) > 0 and Decimal(mini["output_per_mtok_usd"]) > 0
    assert mini["cached_input_per_mtok_usd"] is not None and mini["context_window"]
    assert {m["provider"] for m in anthropic.structured_content["models"]} == {"anthropic"}


async def test_a_cancelled_call_is_charged_its_reservation(
    make_gateway: MakeGateway, fake: FakeUpstream
) -> None:
    """A client that cancels after the request reached the provider pays its worst case, not $0."""
    gateway = await make_gateway([PER_CLIENT])
    principal = Principal(surface="mcp", client_id="local")
    fake.latency = 5.0
    async with connect(gateway) as client:
        call = asyncio.create_task(
            client.call_tool("generate", {"prompt": "slow", "model": "gpt-4o-mini", "max_tokens": 1000})
        )
        for _ in range(500):
            if fake.requests_to(CHAT):
                break
            await asyncio.sleep(0.01)
        (held,) = await gateway.budget_status(principal)
        assert held.reserved > 0  # the worst case is held while the call is in flight
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        for _ in range(300):
            (after,) = await gateway.budget_status(principal)
            if after.reserved == 0:
                break
            await asyncio.sleep(0.01)
    assert after.reserved == Decimal(0) and after.spent == held.reserved > 0
