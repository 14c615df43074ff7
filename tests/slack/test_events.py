"""Mentions, DMs and threads end to end: signed events over HTTP, the fake model, the fake Slack API.

Each user message is first stored in the fake Slack (``user_says``), as Slack has it before it
sends the event, so ``conversations.replies`` reads the thread back as Slack would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import yaml

from bot.core.tokens import count_chat_tokens
from bot.core.types import Message, Role
from tests.fakes.slack_api import BOT_USER
from tests.fakes.upstream import FakeUpstream
from tests.slack.conftest import TEAM, MakeSlack, SlackHarness

CHAT = "/v1/chat/completions"
MODEL = "gpt-4o-mini"


async def mention(
    slack: SlackHarness, text: str, *, thread_ts: str | None = None, channel: str = "C1", user: str = "U1"
) -> tuple[str, dict[str, Any]]:
    """``user`` writes ``<@BOT> text`` in ``channel`` (in ``thread_ts``'s thread); its ts and envelope."""
    said = f"<@{BOT_USER}> {text}"
    ts = slack.api.user_says(channel, user, said, thread_ts=thread_ts)
    event = {"type": "app_mention", "user": user, "text": said, "ts": ts, "channel": channel}
    if thread_ts:
        event["thread_ts"] = thread_ts
    envelope = slack.event_body(event)
    resp = await slack.post_event(envelope)
    assert resp.status_code == 200, resp.text
    return ts, envelope


async def dm(slack: SlackHarness, text: str, *, thread_ts: str | None = None) -> tuple[str, dict[str, Any]]:
    """U1 writes ``text`` to the bot in the DM D1; its ts and envelope."""
    ts = slack.api.user_says("D1", "U1", text, thread_ts=thread_ts)
    event = {"type": "message", "channel_type": "im", "user": "U1", "text": text, "ts": ts, "channel": "D1"}
    if thread_ts:
        event["thread_ts"] = thread_ts
    envelope = slack.event_body(event)
    resp = await slack.post_event(envelope)
    assert resp.status_code == 200, resp.text
    return ts, envelope


def bot_replies(slack: SlackHarness, channel: str, thread_ts: str) -> list[str]:
    """The texts of the bot's messages in a thread, as Slack now shows them."""
    return [m["text"] for m in slack.api.thread(channel, thread_ts) if m.get("user") == BOT_USER]


def sent_messages(fake: FakeUpstream, n: int) -> list[dict[str, Any]]:
    """The ``messages`` of the ``n``-th chat request the model received."""
    return list(fake.requests_to(CHAT)[n].json["messages"])


async def test_mention_is_answered_in_a_thread_under_it(make_slack: MakeSlack, fake: FakeUpstream) -> None:
    slack = await make_slack()
    ts, _ = await mention(slack, "Say hello")
    await slack.settle()

    [placeholder] = slack.api.ok_calls_to("chat.postMessage")
    assert placeholder.body["thread_ts"] == ts and placeholder.text == "Working on it…"
    [answer] = bot_replies(slack, "C1", ts)
    header, _, rest = answer.partition("\n")
    assert header == "*<@U1> asked:* “Say hello”"
    assert rest.startswith("Echo: Say hello")
    assert f"`{MODEL}`" in rest and "out tokens" in rest and "left in your budget per-user" in rest
    assert sent_messages(fake, 0) == [{"role": "user", "content": "Say hello"}], "the mention is taken off"
    [call] = await slack.gateway.recent_calls()
    assert call.who == f"{TEAM}:U1" and call.surface == "slack" and call.outcome == "ok"


async def test_dm_is_answered_in_the_dm(make_slack: MakeSlack, fake: FakeUpstream) -> None:
    slack = await make_slack()
    ts, _ = await dm(slack, "What is 2+2?")
    await slack.settle()

    assert {c.body["channel"] for c in slack.api.ok_calls_to("chat.postMessage")} == {"D1"}
    [answer] = bot_replies(slack, "D1", ts)
    assert "Echo: What is 2+2?" in answer
    [call] = await slack.gateway.recent_calls()
    assert call.who == f"{TEAM}:U1"


async def test_a_three_turn_thread_sends_the_earlier_turns(make_slack: MakeSlack, fake: FakeUpstream) -> None:
    slack = await make_slack()
    root, _ = await mention(slack, "first question")
    await slack.settle(1)
    await mention(slack, "second question", thread_ts=root)
    await slack.settle(2)
    await mention(slack, "third question", thread_ts=root)
    await slack.settle(3)

    expected = [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "Echo: first question"},
        {"role": "user", "content": "second question"},
        {"role": "assistant", "content": "Echo: second question"},
        {"role": "user", "content": "third question"},
    ]
    assert sent_messages(fake, 0) == expected[:1]
    assert sent_messages(fake, 1) == expected[:3]
    assert sent_messages(fake, 2) == expected, "the header and footer of the bot's answers are taken off"
    # The ledger recorded (and held for) the whole conversation's input, not the last question's.
    calls = sorted(await slack.gateway.recent_calls(), key=lambda c: c.created_at)
    whole = count_chat_tokens([Message(cast(Role, m["role"]), m["content"]) for m in expected], MODEL)
    alone = count_chat_tokens([Message("user", "third question")], MODEL)
    assert calls[2].input_tokens == whole > alone
    assert calls[0].input_tokens < calls[1].input_tokens < calls[2].input_tokens
    assert len(bot_replies(slack, "C1", root)) == 3


async def test_any_reply_in_a_dm_thread_continues_it(make_slack: MakeSlack, fake: FakeUpstream) -> None:
    slack = await make_slack()
    root, _ = await dm(slack, "remember: blue")
    await slack.settle(1)
    await dm(slack, "what colour?", thread_ts=root)
    await slack.settle(2)

    assert sent_messages(fake, 1) == [
        {"role": "user", "content": "remember: blue"},
        {"role": "assistant", "content": "Echo: remember: blue"},
        {"role": "user", "content": "what colour?"},
    ]


async def test_a_retried_event_is_answered_once(make_slack: MakeSlack, fake: FakeUpstream) -> None:
    slack = await make_slack()
    ts, envelope = await mention(slack, "only once")
    retry = await slack.post_event(
        envelope, headers={"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}
    )
    assert retry.status_code == 200
    await slack.received(2)
    await slack.settle()

    assert len(fake.requests_to(CHAT)) == 1
    assert len(bot_replies(slack, "C1", ts)) == 1


async def test_a_retry_reaching_another_replica_is_refused_by_the_ledger(
    make_slack: MakeSlack, fake: FakeUpstream
) -> None:
    first = await make_slack(ledger_name="shared")
    other = await make_slack(ledger_name="shared")  # a second replica on the same ledger
    ts, envelope = await mention(first, "only once")
    await first.settle()
    await other.post_event(envelope, headers={"X-Slack-Retry-Num": "1"})
    await other.received(1)
    await other.settle()

    assert len(fake.requests_to(CHAT)) == 1, "the ledger refused the retry's call (same request id)"
    [answer] = bot_replies(first, "C1", ts)
    assert "Echo: only once" in answer, "the retry's placeholder was deleted, the answer stands alone"
    assert len(first.api.ok_calls_to("chat.delete")) == 1


async def test_a_refusal_replaces_the_placeholder(make_slack: MakeSlack, fake: FakeUpstream) -> None:
    tiny = {"name": "tiny-user", "scope": "user", "key": None, "limit_usd": "0.000001", "period": "daily"}
    slack = await make_slack(budgets=[tiny])
    ts, _ = await mention(slack, "Say hello")
    await slack.settle()

    assert fake.requests_to(CHAT) == []
    assert len(slack.api.ok_calls_to("chat.postMessage")) == 1, "only the placeholder was posted"
    [update] = slack.api.ok_calls_to("chat.update")
    [message] = [m for m in slack.api.thread("C1", ts) if m.get("user") == BOT_USER]
    assert update.body["ts"] == message["ts"], "the refusal was written over the placeholder"
    [shown] = bot_replies(slack, "C1", ts)
    assert shown.startswith(":warning:") and "tiny-user" in shown, "one message: the refusal"


async def test_old_turns_are_dropped_past_the_turn_cap_and_the_answer_says_so(
    make_slack: MakeSlack, fake: FakeUpstream
) -> None:
    slack = await make_slack(config={"slack": {"max_context_turns": 2}})
    root, _ = await mention(slack, "one")
    await slack.settle(1)
    await mention(slack, "two", thread_ts=root)
    await slack.settle(2)
    await mention(slack, "three", thread_ts=root)
    await slack.settle(3)

    assert sent_messages(fake, 2) == [
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": "Echo: two"},
        {"role": "user", "content": "three"},
    ]
    last = bot_replies(slack, "C1", root)[-1]
    assert "2 earlier messages of this thread left out" in last


async def test_old_turns_are_dropped_past_the_token_cap(make_slack: MakeSlack, fake: FakeUpstream) -> None:
    long = "word " * 150
    slack = await make_slack(config={"slack": {"max_context_tokens": 200}})
    root, _ = await mention(slack, long)
    await slack.settle(1)
    await mention(slack, "short follow-up", thread_ts=root)
    await slack.settle(2)

    # The long question and its long echo do not fit 200 tokens: both are left out.
    assert sent_messages(fake, 1) == [{"role": "user", "content": "short follow-up"}]
    assert "2 earlier messages of this thread left out" in bot_replies(slack, "C1", root)[-1]


async def test_old_turns_are_dropped_past_the_models_context_window(
    make_slack: MakeSlack, fake: FakeUpstream
) -> None:
    # The window is the model's: 1,024 output tokens held plus the input must fit in it.
    window = {MODEL: {"provider": "openai", "context_window": 1300}}
    slack = await make_slack(config={"models": window})
    root, _ = await mention(slack, "word " * 150)
    await slack.settle(1)
    await mention(slack, "short follow-up", thread_ts=root)
    await slack.settle(2)

    assert sent_messages(fake, 1) == [{"role": "user", "content": "short follow-up"}]
    assert "left out" in bot_replies(slack, "C1", root)[-1]


async def test_an_unreadable_thread_is_answered_without_it_and_says_so(
    make_slack: MakeSlack, fake: FakeUpstream
) -> None:
    slack = await make_slack()
    root, _ = await mention(slack, "first")
    await slack.settle(1)
    slack.api.inject("conversations.replies", error="missing_scope")
    await mention(slack, "second", thread_ts=root)
    await slack.settle(2)

    assert sent_messages(fake, 1) == [{"role": "user", "content": "second"}]
    assert "could not be read (missing_scope)" in bot_replies(slack, "C1", root)[-1]


async def test_long_threads_are_read_page_by_page(make_slack: MakeSlack, fake: FakeUpstream) -> None:
    slack = await make_slack()
    slack.api.replies_page = 1
    root, _ = await mention(slack, "first")
    await slack.settle(1)
    await mention(slack, "second", thread_ts=root)
    await slack.settle(2)

    assert len(sent_messages(fake, 1)) == 3
    assert len(slack.api.ok_calls_to("conversations.replies")) >= 3


async def test_bot_messages_and_edits_start_nothing(make_slack: MakeSlack, fake: FakeUpstream) -> None:
    slack = await make_slack()
    base = {"type": "message", "channel_type": "im", "channel": "D1", "ts": slack.api.next_ts()}
    await slack.post_event(slack.event_body({**base, "user": "U2", "bot_id": "BOTHER", "text": "hi"}))
    await slack.post_event(slack.event_body({**base, "subtype": "message_changed", "text": "hi"}))
    await slack.post_event(slack.event_body({**base, "channel_type": "channel", "user": "U1", "text": "hi"}))
    await slack.received(3)

    assert slack.commands.started == 0
    assert fake.requests_to(CHAT) == [] and slack.api.calls_to("chat.postMessage") == []


async def test_an_empty_mention_gets_a_hint_to_the_user_alone(
    make_slack: MakeSlack, fake: FakeUpstream
) -> None:
    slack = await make_slack()
    await mention(slack, "  ")
    await slack.received(1)

    assert slack.commands.started == 0
    [hint] = slack.api.ok_calls_to("chat.postEphemeral")
    assert hint.body["user"] == "U1" and "Ask me something" in hint.text


def test_the_manifest_declares_the_events_and_scopes_these_need() -> None:
    manifest = yaml.safe_load(
        (Path(__file__).resolve().parents[2] / "config" / "slack-manifest.yml").read_text()
    )
    events = manifest["settings"]["event_subscriptions"]
    assert set(events["bot_events"]) == {"app_mention", "message.im"}
    assert events["request_url"].endswith("/slack/events")
    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    assert {"app_mentions:read", "im:history", "channels:history", "groups:history", "chat:write"} <= scopes
    assert manifest["features"]["app_home"]["messages_tab_enabled"] is True
