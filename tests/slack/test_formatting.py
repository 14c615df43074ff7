"""Unit tests: Markdown → mrkdwn, message splitting, money, progress bars, settings and dedupe."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from bot.core.errors import ConfigurationError
from bot.core.ledger import BudgetStatus
from bot.core.types import ChatResult, ModelInfo, Usage
from bot.slack.blocks import budget_blocks, models_blocks
from bot.slack.commands import parse_generate
from bot.slack.dedupe import RetryDeduper, command_key
from bot.slack.formatting import footer, progress_bar, split_message, to_mrkdwn, usd
from bot.slack.settings import SlackSettings


@pytest.mark.parametrize(
    ("markdown", "mrkdwn"),
    [
        ("**bold** and __also__", "*bold* and *also*"),
        ("*italic* text", "_italic_ text"),
        ("# Title\n### Sub ###", "*Title*\n*Sub*"),
        ("see [the docs](https://x.io/a?b=1)", "see <https://x.io/a?b=1|the docs>"),
        ("- one\n* two\n  + nested", "• one\n• two\n  • nested"),
        ("1. first\n2. second", "1. first\n2. second"),
        ("~~gone~~", "~gone~"),
        ("a < b & c > d", "a &lt; b &amp; c &gt; d"),
        ("use `**x**` here", "use `**x**` here"),
        ("```python\nprint(**k)\n```", "```\nprint(**k)\n```"),
    ],
)
def test_to_mrkdwn(markdown: str, mrkdwn: str) -> None:
    assert to_mrkdwn(markdown) == mrkdwn


def test_unclosed_code_block_is_closed() -> None:
    assert to_mrkdwn("text\n```\ncode").count("```") == 2


def test_split_short_text_is_one_part() -> None:
    assert split_message("hello", 100) == ["hello"]
    assert split_message("", 100) == [""]


def test_split_prefers_paragraphs_then_lines_then_words() -> None:
    text = "a" * 60 + "\n\n" + "b" * 60
    assert split_message(text, 100) == ["a" * 60, "b" * 60]
    words = " ".join(["word"] * 100)
    parts = split_message(words, 50)
    assert all(len(p) <= 50 for p in parts)
    assert " ".join(parts) == words


def test_split_hard_cuts_a_huge_word() -> None:
    parts = split_message("x" * 250, 100)
    assert all(len(p) <= 100 for p in parts) and "".join(parts) == "x" * 250


def test_split_closes_and_reopens_code_fences() -> None:
    code = "\n".join(f"line {i}" for i in range(100))
    parts = split_message("intro\n\n```\n" + code + "\n```\nafter", 200)
    assert len(parts) > 3
    for part in parts:
        assert len(part) <= 200
        assert part.count("```") % 2 == 0
    assert parts[1].startswith("```\n")
    joined = "\n".join(parts)
    assert all(f"line {i}\n" in joined + "\n" for i in range(100))


def test_money_and_progress_bar() -> None:
    assert usd(Decimal("0.000123")) == "$0.000123"
    assert usd("0.5") == "$0.50"
    assert usd("1234.5") == "$1,234.50"
    assert usd("0") == "$0.00"
    assert progress_bar(0.4) == "▓▓▓▓░░░░░░ 40%"
    assert progress_bar(1.5) == "▓▓▓▓▓▓▓▓▓▓ 150%"


def test_footer() -> None:
    result = ChatResult("hi", "gpt-4o-mini", "openai", Usage(12, 3400), Decimal("0.00204"), 1.0, "r1")
    mine = _status(remaining=Decimal("4.99"))
    assert footer(result, mine) == (
        "_`gpt-4o-mini` · 12 in / 3,400 out tokens · $0.00204 · $4.99 left in your budget per-user_"
    )
    # A channel's budget is named as such, never "yours".
    channel = _status(name="eng-channel", scope="channel", scope_key="C1", remaining=Decimal("0.17065"))
    assert footer(result, channel).endswith("$0.17065 left in budget eng-channel (channel C1)_")
    result.cost_estimated = True
    assert "(estimated)" in footer(result, None) and "left" not in footer(result, None)


def test_models_blocks_are_capped() -> None:
    info = [(ModelInfo(f"m{i}", "p", None, None, Decimal(1), Decimal(2)), i % 2 == 0) for i in range(500)]
    blocks = models_blocks(info, cap=200)
    assert len(blocks) <= 50
    assert all(len(b["text"]["text"]) <= 3000 for b in blocks if b["type"] == "section")
    first = blocks[1]["text"]["text"]
    assert "no key" not in first.splitlines()[0]
    assert "Showing 200 of 500" in blocks[-2]["elements"][0]["text"]


def test_parse_generate() -> None:
    assert parse_generate("hello world") == (None, "hello world")
    assert parse_generate("--model gpt-4o  say  hi") == ("gpt-4o", "say  hi")
    assert parse_generate("--model=claude-haiku-4-5 hi") == ("claude-haiku-4-5", "hi")
    assert parse_generate("--model") == (None, "")


def test_settings_from_env() -> None:
    with pytest.raises(ConfigurationError, match="SLACK_SIGNING_SECRET"):
        SlackSettings.from_env({"SLACK_BOT_TOKEN": "xoxb"})
    s = SlackSettings.from_env(
        {"SLACK_BOT_TOKEN": "xoxb", "SLACK_SIGNING_SECRET": "s", "SLACK_ADMIN_USERS": "U1, U2",
         "SLACK_API_URL": "http://h/api", "SLACK_ALLOWED_CHANNELS": "C1"}
    )  # fmt: skip
    assert s.api_url == "http://h/api/" and s.admin_users == {"U1", "U2"}
    assert s.allowed_users is None and s.allowed_channels == frozenset({"C1"})
    assert s.refusal("U9", "C1") is None and s.refusal("U9", "C2") is not None


def test_deduper_forgets_after_ttl() -> None:
    now = [0.0]
    d = RetryDeduper(ttl_seconds=10, clock=lambda: now[0])
    key = command_key({"team_id": "T", "trigger_id": "x"})
    assert d.first_time(key) and not d.first_time(key)
    now[0] = 11.0
    assert d.first_time(key)


async def test_socket_mode_needs_an_app_token() -> None:
    from bot.core.gateway import Gateway
    from bot.slack.app import run_slack_socket
    from tests.conftest import fast_config

    async with Gateway(fast_config()) as gateway:
        with pytest.raises(ConfigurationError, match="SLACK_APP_TOKEN"):
            await run_slack_socket(gateway, SlackSettings(bot_token="xoxb", signing_secret="s"))


def _status(**changes: object) -> BudgetStatus:
    fields: dict[str, object] = {
        "name": "per-user", "scope": "user", "scope_key": "T1:U1", "period": "monthly",
        "limit": Decimal(5), "spent": Decimal("1.25"), "reserved": Decimal(0),
        "remaining": Decimal("3.75"), "fraction_used": 0.3,
        "period_start": datetime(2026, 11, 1, tzinfo=UTC), "resets_at": datetime(2026, 12, 1, 5, 30, tzinfo=UTC),
        "projected_spend": None,
    }  # fmt: skip
    fields.update(changes)
    return BudgetStatus(**fields)  # type: ignore[arg-type]


def test_budget_blocks_read_the_typed_statuses() -> None:
    held = _status(reserved=Decimal("0.5"), remaining=Decimal("3.25"), projected_spend=Decimal("2.5"))
    total = _status(name="all", scope="global", period="total", resets_at=None, period_start=None)
    header, first, second = budget_blocks([held, total])
    assert header["type"] == "header"
    assert first["text"]["text"] == (
        "*per-user* (user, monthly)\n"
        "$1.25 of $5.00 spent · $3.25 left ($0.50 held for calls in flight)\n"
        "`▓▓▓░░░░░░░ 30%`\n"
        "resets 2026-12-01 05:30 UTC · projected $2.50 this period"
    )
    assert second["text"]["text"].endswith("$3.75 left\n`▓▓▓░░░░░░░ 30%`\nnever resets")
    assert budget_blocks([])[0]["text"]["text"].startswith("No budget applies to you")


async def test_the_slack_apps_shutdown_waits_the_grace_it_was_given() -> None:
    from bot.core.gateway import Gateway
    from bot.slack.app import slack_http_app
    from tests.conftest import fast_config

    async with Gateway(fast_config()) as gateway:
        app = slack_http_app(gateway, SlackSettings(bot_token="xoxb", signing_secret="s"), grace=0.05)
        stuck = asyncio.create_task(asyncio.sleep(60))  # a generation that will not finish in time
        app.state.slack_commands.tasks.add(stuck)
        started = time.monotonic()
        async with app.router.lifespan_context(app):
            pass
        waited = time.monotonic() - started
        stuck.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stuck
    assert 0.04 <= waited < 5  # waited for it, but only its grace (the default would be 30 s)
