"""Properties of the Slack face: any correctly signed form gets 200 or 4xx, and money stays consistent."""

from __future__ import annotations

import os
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fakes.upstream import FakeUpstream
from tests.slack.conftest import PER_USER, MakeSlack, SlackHarness

SETTINGS = settings(
    max_examples=int(os.environ.get("BOT_SLACK_PROPERTY_EXAMPLES", "50")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
GLOBAL = {"name": "all", "scope": "global", "key": None, "limit_usd": "1000", "period": "monthly"}
FIELDS = [
    "token", "team_id", "team_domain", "channel_id", "channel_name", "user_id", "user_name",
    "command", "text", "api_app_id", "response_url", "trigger_id", "enterprise_id", "is_enterprise_install",
]  # fmt: skip
COMMANDS = ["/generate", "/budget", "/models"]

texts = st.text(max_size=200)
overrides = st.dictionaries(
    st.sampled_from(FIELDS) | st.text(min_size=1, max_size=12),
    st.one_of(texts, st.sampled_from(["", " ", "gpt-4o-mini", "claude-haiku-4-5", "true", "T1", "U1"])),
    max_size=5,
)
command_texts = st.one_of(
    texts,
    st.sampled_from(["", "help", "add 5", "set per-user U1 10", "--model gpt-4o hello", "--max-tokens 9"]),
    st.builds(lambda m, t: f"--model {m} {t}", st.sampled_from(["gpt-4o-mini", "nope", ""]), texts),
)


@pytest.fixture
async def slack(make_slack: MakeSlack) -> SlackHarness:
    """One Slack app per test (hypothesis reuses it across examples); U1 is an admin."""
    return await make_slack(budgets=[PER_USER, GLOBAL], admin_users=frozenset({"U1"}))


async def _consistent(slack: SlackHarness) -> None:
    """Every hold released; the global budget's spend equals the sum of the calls rows."""
    await slack.commands.wait_idle()
    ledger = slack.gateway.ledger
    assert ledger is not None
    statuses = await ledger.status_all()
    assert all(s.reserved == 0 for s in statuses)
    spent = sum((s.spent for s in statuses if s.name == "all"), Decimal(0))
    assert spent == (await ledger.totals()).cost_usd


@SETTINGS
@given(
    command=st.sampled_from(COMMANDS) | st.text(max_size=15),
    text=command_texts,
    fields=overrides,
    drop=st.lists(st.sampled_from(FIELDS), max_size=3),
)
async def test_signed_forms_get_200_or_4xx_and_the_ledger_stays_consistent(
    slack: SlackHarness,
    fake: FakeUpstream,
    command: str,
    text: str,
    fields: dict[str, str],
    drop: list[str],
) -> None:
    """Whatever a correctly signed slash-command form holds, the app never answers 5xx."""
    form: dict[str, Any] = {**slack.form(command, text), **fields}
    for name in drop:
        form.pop(name, None)
    resp = await slack.post(form)
    assert 200 <= resp.status_code < 500 and resp.status_code not in range(300, 400), resp.text
    await _consistent(slack)
