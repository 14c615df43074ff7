"""``bot serve`` end to end, as a subprocess: health, MCP and Slack calls, metrics, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from decimal import Decimal
from urllib.parse import urlencode

import httpx2

from bot.core.config import BudgetConfig, DatabaseConfig
from bot.core.ledger import Ledger
from tests.conftest import API_KEY
from tests.fakes.slack_api import FakeSlackApi
from tests.fakes.upstream import FakeUpstream
from tests.mcp.conftest import TOKENS, http_client
from tests.serve.conftest import BOT_TOKEN, SIGNING_SECRET, Served
from tests.slack.conftest import sign

CHAT = "/v1/chat/completions"


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            total += float(match.group(2))
    return total


async def slash(http: httpx2.AsyncClient, url: str, api: FakeSlackApi, text: str) -> httpx2.Response:
    """A correctly signed ``/generate`` slash command."""
    form = {
        "token": "legacy", "team_id": "T1", "team_domain": "fake", "channel_id": "C1",
        "channel_name": "general", "user_id": "U1", "user_name": "alice", "command": "/generate",
        "text": text, "api_app_id": "A1", "response_url": api.response_url("r1"), "trigger_id": "trigger.1",
    }  # fmt: skip
    body = urlencode(form)
    ts = str(int(time.time()))
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": sign(body, ts, SIGNING_SECRET),
    }
    return await http.post(f"{url}/slack/events", content=body, headers=headers)


async def wait_for(predicate: Callable[[], bool], seconds: float = 10) -> None:
    """Poll ``predicate()`` until it is true, for ``seconds`` at most."""
    for _ in range(int(seconds / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def test_one_process_serves_every_face_and_drains_on_sigterm(
    served: Served, fake: FakeUpstream, slack_fake: FakeSlackApi
) -> None:
    async with httpx2.AsyncClient(timeout=10) as http:
        health = await http.get(f"{served.url}/healthz")
        ready = await http.get(f"{served.url}/readyz")
        assert health.status_code == 200 and health.json() == {"status": "ok"}
        assert ready.status_code == 200
        assert ready.json()["checks"] == {"database": "ok"}  # providers are reported, never gating
        assert ready.headers["x-request-id"]
        # The providers' SDKs load, and the providers are checked, in the background after start-up.
        for _ in range(400):
            providers = (await http.get(f"{served.url}/readyz")).json()["providers"]
            if "checking" not in providers.values():
                break
            await asyncio.sleep(0.05)
        assert providers == {"openai": "ok", "anthropic": "ok"}

        # A real MCP client over Streamable HTTP, with its bearer token.
        async with http_client(served.url, TOKENS["alice"]) as client:
            gen = await client.call_tool("generate", {"prompt": "via mcp", "model": "gpt-4o-mini"})
        assert gen.structured_content is not None and gen.structured_content["text"] == "Echo: via mcp"

        # A signed Slack command: acked at once, answered through the (fake) Web API.
        ack = await slash(http, served.url, slack_fake, "--model gpt-4o-mini via slack")
        assert ack.status_code == 200
        await wait_for(lambda: any("Echo: via slack" in c.text for c in slack_fake.calls))
        assert all(
            c.headers.get("authorization") == f"Bearer {BOT_TOKEN}"
            for c in slack_fake.calls_to("chat.postMessage")
        )

        # The scheduler runs in the same process: the first call crossed the watched budget's
        # threshold, and its alert was pushed to the budget's channel at once.
        await wait_for(
            lambda: any(c.body.get("channel") == "C-ALERTS" for c in slack_fake.calls_to("chat.postMessage"))
        )

        text = ""

        async def counted() -> bool:
            nonlocal text
            text = (await http.get(f"{served.url}/metrics")).text
            return metric(text, "llm_calls_total", surface="slack", outcome="ok") == 1

        for _ in range(200):
            if await counted():
                break
            await asyncio.sleep(0.05)
        assert metric(text, "llm_calls_total", surface="mcp", outcome="ok", model="gpt-4o-mini") == 1
        assert metric(text, "llm_tokens_total", surface="mcp", kind="output") > 0
        assert metric(text, "llm_cost_usd_total", surface="slack") > 0
        assert metric(text, "llm_call_latency_seconds_count", surface="mcp") == 1
        assert 0 < metric(text, "budget_fraction_used", budget="everything") < 1
        assert metric(text, "http_requests_total", route="/slack/events", status="200") == 1
        assert metric(text, "budget_alert_deliveries_total", kind="threshold", outcome="ok") >= 1
        assert metric(text, "llm_provider_up", provider="openai") == 1
        assert metric(text, "llm_provider_up", provider="anthropic") == 1

        # SIGTERM while a call is in flight: it completes, new work is refused, nothing is lost.
        fake.latency = 2
        async with http_client(served.url, TOKENS["alice"]) as client:
            # The client checks a result against the tool's schema, listing tools if it has not
            # yet: list them now, since a request made after SIGTERM is (rightly) refused.
            await client.list_tools()
            call = asyncio.create_task(
                client.call_tool("generate", {"prompt": "in flight", "model": "gpt-4o-mini"})
            )
            await wait_for(lambda: len(fake.requests_to(CHAT)) == 3)
            stopped = time.monotonic()
            served.proc.terminate()
            await asyncio.sleep(0.3)
            not_ready = await http.get(f"{served.url}/readyz")
            refused = await slash(http, served.url, slack_fake, "too late")
            still_alive = await http.get(f"{served.url}/healthz")
            result = await call
    assert not_ready.status_code == 503 and not_ready.json()["checks"]["server"] == "shutting down"
    assert refused.status_code == 503
    assert still_alive.status_code == 200
    assert result.structured_content is not None and result.structured_content["text"] == "Echo: in flight"
    code = await asyncio.to_thread(served.proc.wait, 20)
    assert code == 0, served.logs()
    assert time.monotonic() - stopped < 10
    assert len(fake.requests_to(CHAT)) == 3  # the refused command never reached a model

    # The ledger on disk holds every call, the in-flight one included, settled.
    ledger = await Ledger.open(
        DatabaseConfig(url=f"sqlite+aiosqlite:///{served.db_path}"),
        [BudgetConfig(name="everything", limit_usd=Decimal(10))],
    )
    try:
        totals = await ledger.totals()
        (status,) = await ledger.status_all()
    finally:
        await ledger.close()
    assert totals.calls == 3 and totals.by_outcome["ok"].calls == 3
    assert status.spent == totals.cost_usd > 0 and status.reserved == 0

    logs = served.logs()
    assert API_KEY not in logs and BOT_TOKEN not in logs and SIGNING_SECRET not in logs
    assert TOKENS["alice"] not in logs
    assert "Traceback" not in logs
    lines = served.log_lines()
    (startup,) = [line for line in lines if line["message"].startswith("bot serve listening")]
    assert "MCP over HTTP on" in startup["message"] and "Slack on" in startup["message"]
    requests = [line for line in lines if line["message"].startswith("POST /slack/events")]
    assert requests and all(len(line["request_id"]) >= 8 for line in requests)
    assert any(line["message"] == "stopped cleanly" for line in lines)
    # Once the SDKs were loaded, the start-up heap left garbage collection (bot/heap.py).
    (frozen,) = [line for line in lines if line["message"].startswith("start-up objects frozen")]
    assert frozen["frozen_objects"] > 100_000
    calls = [line for line in lines if line["message"].startswith("call ok")]
    assert sorted(line["surface"] for line in calls) == ["mcp", "mcp", "slack"]
    assert all(line["call_id"] and line["request_id"] != "-" for line in calls)
