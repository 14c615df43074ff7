"""``/mcp-token`` over signed HTTP: a token shown once, only to its person, with the claude line."""

from __future__ import annotations

import re

from bot.core.types import Principal
from tests.fakes.upstream import FakeUpstream
from tests.slack.conftest import TEAM, MakeSlack

LINE = re.compile(
    r'claude mcp add --transport http llm-gateway (\S+)/mcp --header "Authorization: Bearer (gwp_[\w-]+)"'
)


async def test_a_user_gets_a_token_once_only_in_the_ephemeral_ack(
    make_slack: MakeSlack, fake: FakeUpstream
) -> None:
    slack = await make_slack()
    form = slack.form("/mcp-token", "")
    first = await slack.post(form)
    retry = await slack.post(form)  # Slack retrying the same command (same trigger_id)
    body = first.json()
    assert body["response_type"] == "ephemeral"
    match = LINE.search(body["text"])
    assert match is not None, body["text"]
    # No BOT_PUBLIC_URL: the host the request was sent to (loopback, so http).
    assert match.group(1) == slack.url and "`claude`" in body["text"]
    assert retry.status_code == 200 and "gwp_" not in retry.text  # acknowledged, nothing minted
    (token,) = await slack.gateway.list_tokens(Principal(surface="slack", team_id=TEAM, user_id="U1"))
    assert token.name == "claude"
    # Bolt's auth.test is the only Web API call: the token went neither there nor to response_url.
    assert [c.method for c in slack.api.calls] == ["auth.test"]


async def test_the_public_url_setting_is_used(make_slack: MakeSlack) -> None:
    slack = await make_slack(public_url="https://gateway.example.com")
    body = (await slack.command("/mcp-token", "new laptop")).json()
    match = LINE.search(body["text"])
    assert match is not None and match.group(1) == "https://gateway.example.com"


async def test_list_and_revoke_act_on_ones_own_tokens(make_slack: MakeSlack) -> None:
    slack = await make_slack()
    await slack.command("/mcp-token", "new laptop")
    await slack.command("/mcp-token", "new desktop", user_id="U2")
    listed = (await slack.command("/mcp-token", "list")).json()["text"]
    assert "*laptop*" in listed and "desktop" not in listed and "gwp_" not in listed
    assert "last used never" in listed
    (mine,) = re.findall(r"`([0-9a-f]{16})`", listed)
    theirs = re.findall(
        r"`([0-9a-f]{16})`", (await slack.command("/mcp-token", "list", user_id="U2")).json()["text"]
    )
    refused = (await slack.command("/mcp-token", f"revoke {theirs[0]}")).json()["text"]
    assert "no active token of yours" in refused
    revoked = (await slack.command("/mcp-token", f"revoke {mine}")).json()["text"]
    assert "Revoked `laptop`" in revoked
    assert "no personal MCP tokens" in (await slack.command("/mcp-token", "list")).json()["text"]


async def test_bad_input_gets_the_usage_or_the_reason(make_slack: MakeSlack) -> None:
    slack = await make_slack(allowed_users=frozenset({"U1"}))
    assert "Usage: `/mcp-token`" in (await slack.command("/mcp-token", "frobnicate")).json()["text"]
    assert "Usage" in (await slack.command("/mcp-token", "revoke")).json()["text"]
    bad = (await slack.command("/mcp-token", "new bad;name")).json()["text"]
    assert ":warning:" in bad and "is not valid" in bad
    refused = (await slack.command("/mcp-token", "", user_id="U9")).json()["text"]
    assert "allowed users" in refused and "gwp_" not in refused
