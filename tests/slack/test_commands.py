"""Signatures, allow-lists, ``/budget`` (with the admin subcommands) and ``/models`` over HTTP."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

from bot.core.types import Principal
from tests.fakes.upstream import FakeUpstream
from tests.slack.conftest import ADMIN, TEAM, MakeSlack


def _texts(blocks: list[dict[str, Any]]) -> str:
    out = []
    for block in blocks:
        if "text" in block:
            out.append(block["text"]["text"])
        for element in block.get("elements", []):
            out.append(element["text"])
    return "\n".join(out)


async def test_forged_signature_is_401_and_costs_nothing(make_slack: MakeSlack, fake: FakeUpstream) -> None:
    slack = await make_slack()
    resp = await slack.post(slack.form("/generate", "hello"), secret="not-the-secret")
    assert resp.status_code == 401
    assert slack.commands.started == 0
    assert fake.requests == [] and slack.api.calls == []


async def test_stale_signature_is_401_and_costs_nothing(make_slack: MakeSlack, fake: FakeUpstream) -> None:
    slack = await make_slack()
    old = str(int(time.time()) - 6 * 60)
    resp = await slack.post(slack.form("/generate", "hello"), ts=old)
    assert resp.status_code == 401
    assert slack.commands.started == 0
    assert fake.requests == [] and slack.api.calls == []


async def test_user_allow_list_refuses_others(make_slack: MakeSlack, fake: FakeUpstream) -> None:
    slack = await make_slack(allowed_users=frozenset({"U2"}))
    resp = await slack.command("/generate", "hello")
    body = resp.json()
    assert body["response_type"] == "ephemeral" and "allowed users" in body["text"]
    resp = await slack.command("/budget", "")
    assert "allowed users" in resp.json()["text"]
    assert slack.commands.started == 0 and fake.requests == []


async def test_channel_allow_list(make_slack: MakeSlack, fake: FakeUpstream) -> None:
    slack = await make_slack(allowed_channels=frozenset({"C2"}))
    refused = await slack.command("/generate", "hello", channel_id="C1")
    assert "not enabled in this channel" in refused.json()["text"]
    assert slack.commands.started == 0
    await slack.command("/generate", "hello", channel_id="C2")
    await slack.settle()
    assert len(fake.requests_to("/v1/chat/completions")) == 1


async def test_budget_shows_blocks_with_progress_bar(make_slack: MakeSlack, fake: FakeUpstream) -> None:
    slack = await make_slack()
    await slack.command("/generate", "spend a little")
    await slack.settle()
    resp = await slack.command("/budget", "")
    body = resp.json()
    assert body["response_type"] == "ephemeral"
    text = _texts(body["blocks"])
    assert "*per-user*" in text and "of $5.00 spent" in text
    assert "░" in text and "%" in text and "resets" in text


async def test_budget_team_is_admin_only(make_slack: MakeSlack, fake: FakeUpstream) -> None:
    slack = await make_slack()
    await slack.command("/generate", "spend a little")
    await slack.settle()
    refused = await slack.command("/budget", "team")
    assert "admins only" in refused.json()["text"]
    resp = await slack.command("/budget", "team", user_id=ADMIN)
    text = _texts(resp.json()["blocks"])
    assert "<@U1>" in text and "`gpt-4o-mini`" in text and "1 call" in text


async def test_budget_set_is_admin_only(make_slack: MakeSlack, fake: FakeUpstream) -> None:
    slack = await make_slack()
    principal = Principal(surface="slack", team_id=TEAM, user_id="U1", channel_id="C1")
    refused = await slack.command("/budget", "set per-user 50")
    assert "admins only" in refused.json()["text"]
    [before] = await slack.gateway.budget_status(principal)
    assert before.limit == 5

    done = await slack.command("/budget", f"set per-user:{TEAM}:U1 42.5", user_id=ADMIN)
    assert "now $42.5" in done.json()["text"]
    [after] = await slack.gateway.budget_status(principal)
    assert after.limit == Decimal("42.5")

    unknown = await slack.command("/budget", "set nope 1", user_id=ADMIN)
    assert "unknown budget 'nope'" in unknown.json()["text"]
    bad = await slack.command("/budget", "set per-user zero", user_id=ADMIN)
    assert "not an amount of dollars" in bad.json()["text"]


async def test_models_lists_prices(make_slack: MakeSlack, fake: FakeUpstream) -> None:
    slack = await make_slack()
    resp = await slack.command("/models", "")
    blocks = resp.json()["blocks"]
    assert len(blocks) <= 50
    text = _texts(blocks)
    assert "`gpt-4o-mini` (openai) in $0.15 / out $0.60 per 1M tokens" in text
    assert all(len(b["text"]["text"]) <= 3000 for b in blocks if b["type"] == "section")


def test_a_retry_carries_the_same_request_id_on_any_replica() -> None:
    from bot.slack.dedupe import request_id_of

    first = {"team_id": "T1", "trigger_id": "123.456.abc", "response_url": "https://hooks/x"}
    retry = dict(first)
    other = {**first, "trigger_id": "123.456.def"}
    assert request_id_of(first) == request_id_of(retry) != request_id_of(other)
    assert request_id_of(first).startswith("slack-") and len(request_id_of(first)) <= 128
