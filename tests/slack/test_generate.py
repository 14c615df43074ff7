"""``/generate`` end to end: signed HTTP in, the fake model upstream, the fake Slack API out."""

from __future__ import annotations

import time

from tests.fakes.upstream import FakeUpstream
from tests.slack.conftest import MakeSlack

CHAT = "/v1/chat/completions"


async def test_generate_acks_fast_then_posts_answer_with_footer(
    make_slack: MakeSlack, fake: FakeUpstream
) -> None:
    slack = await make_slack()
    start = time.monotonic()
    resp = await slack.command("/generate", "Say hello")
    elapsed = time.monotonic() - start
    assert resp.status_code == 200
    assert elapsed < 2.0
    await slack.settle()

    posts = slack.api.ok_calls_to("chat.postMessage")
    updates = slack.api.ok_calls_to("chat.update")
    assert len(posts) == 1 and posts[0].body["channel"] == "C1"
    assert updates, "the streamed message is finished in place with chat.update"
    final = updates[-1].text
    assert "Echo: Say hello" in final
    assert "`gpt-4o-mini`" in final and " in / " in final and "out tokens" in final
    assert "$" in final and "left in your budget" in final
    assert len(fake.requests_to(CHAT)) == 1


async def test_stream_is_shown_by_updating_one_message(make_slack: MakeSlack, fake: FakeUpstream) -> None:
    slack = await make_slack()
    fake.reply_text = "one two three four five six seven eight nine ten " * 4
    await slack.command("/generate", "count")
    await slack.settle()

    posts = slack.api.ok_calls_to("chat.postMessage")
    updates = slack.api.ok_calls_to("chat.update")
    assert len(posts) == 1
    assert posts[0].text.endswith(" …"), "the first post is a preview of a stream in progress"
    assert len(updates) >= 2, "intermediate updates, then the final one"
    assert len({u.body["ts"] for u in updates}) == 1
    header, _, answer = updates[-1].text.partition("\n")
    assert header == "*<@U1> asked:* “count”", "the answer says who asked what"
    assert answer.startswith("one two three") and "out tokens" in answer


async def test_long_answer_is_split_with_balanced_code_fences(
    make_slack: MakeSlack, fake: FakeUpstream
) -> None:
    slack = await make_slack(config={"session": {"max_tokens": 8000}})
    code = "\n".join(f"    value_{i} = compute({i})  # step {i}" for i in range(200))
    fake.reply_text = (
        ("Intro paragraph. " * 60) + "\n\n```python\n" + code + "\n```\n\n" + ("Outro words. " * 200)
    )
    await slack.command("/generate", "write a lot")
    await slack.settle()

    updates = slack.api.ok_calls_to("chat.update")
    posts = slack.api.ok_calls_to("chat.postMessage")
    messages = [updates[-1].text] + [p.text for p in posts[1:]]
    assert len(messages) >= 3
    for text in messages:
        assert len(text) <= 3500
        assert text.count("```") % 2 == 0, text[:200]
    assert "```python" not in "".join(messages), "language tags are dropped for Slack"
    assert "value_199" in "".join(messages)
    assert "out tokens" in messages[-1] and "out tokens" not in messages[0]


async def test_budget_refusal_is_ephemeral_and_calls_nothing(
    make_slack: MakeSlack, fake: FakeUpstream
) -> None:
    tiny = {"name": "tiny-user", "scope": "user", "key": None, "limit_usd": "0.000001", "period": "daily"}
    slack = await make_slack(budgets=[tiny])
    await slack.command("/generate", "Say hello")
    await slack.settle()

    assert fake.requests_to(CHAT) == []
    assert slack.api.calls_to("chat.postMessage") == []
    [reply] = slack.api.responses()
    assert reply.body["response_type"] == "ephemeral"
    assert "tiny-user" in reply.text and "would be exceeded" in reply.text
    assert reply.body["replace_original"] is True, "the refusal replaces the 'Working on it…' ack"


async def test_unknown_model_is_ephemeral_with_suggestion(make_slack: MakeSlack, fake: FakeUpstream) -> None:
    slack = await make_slack()
    await slack.command("/generate", "--model gpt-4o-mni hello")
    await slack.settle()

    assert fake.requests_to(CHAT) == []
    assert slack.api.calls_to("chat.postMessage") == []
    [reply] = slack.api.responses()
    assert reply.body["response_type"] == "ephemeral"
    assert "gpt-4o-mni" in reply.text and "gpt-4o-mini" in reply.text


async def test_empty_prompt_is_refused_in_the_ack(make_slack: MakeSlack, fake: FakeUpstream) -> None:
    slack = await make_slack()
    resp = await slack.command("/generate", "--model gpt-4o-mini   ")
    assert resp.status_code == 200
    body = resp.json()
    assert body["response_type"] == "ephemeral" and "prompt is empty" in body["text"]
    assert slack.commands.started == 0
    assert fake.requests == []


async def test_provider_failure_is_ephemeral(make_slack: MakeSlack, fake: FakeUpstream) -> None:
    slack = await make_slack()
    fake.inject("server_error", times=10, path=CHAT)
    await slack.command("/generate", "hello")
    await slack.settle()

    assert slack.api.calls_to("chat.postMessage") == []
    [reply] = slack.api.responses()
    assert reply.body["response_type"] == "ephemeral" and reply.text.startswith(":warning:")
    assert "server" in reply.text.lower() or "provider" in reply.text.lower()


async def test_slack_retry_never_generates_twice(make_slack: MakeSlack, fake: FakeUpstream) -> None:
    slack = await make_slack()
    form = slack.form("/generate", "only once")
    first = await slack.post(form)
    retry = await slack.post(form, headers={"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"})
    assert first.status_code == retry.status_code == 200
    await slack.settle()

    assert slack.commands.started == 1
    assert len(fake.requests_to(CHAT)) == 1
    assert len(slack.api.ok_calls_to("chat.postMessage")) == 1


async def test_not_in_channel_falls_back_to_response_url(make_slack: MakeSlack, fake: FakeUpstream) -> None:
    slack = await make_slack()
    slack.api.inject("chat.postMessage", error="not_in_channel", times=5)
    await slack.command("/generate", "Say hello")
    await slack.settle()

    assert slack.api.ok_calls_to("chat.postMessage") == []
    [reply] = slack.api.responses()
    assert reply.body["response_type"] == "in_channel"
    assert "Echo: Say hello" in reply.text and "out tokens" in reply.text


async def test_rate_limited_post_is_retried(make_slack: MakeSlack, fake: FakeUpstream) -> None:
    slack = await make_slack()
    slack.api.inject("chat.postMessage", status=429, retry_after=0)
    await slack.command("/generate", "Say hello")
    await slack.settle()

    posts = slack.api.calls_to("chat.postMessage")
    assert [p.status for p in posts] == [429, 200]
    assert slack.api.responses() == []
    assert "Echo: Say hello" in slack.api.ok_calls_to("chat.update")[-1].text


async def test_failed_final_update_goes_to_response_url(make_slack: MakeSlack, fake: FakeUpstream) -> None:
    slack = await make_slack()
    slack.api.inject("chat.update", error="msg_too_long", times=100)
    await slack.command("/generate", "Say hello")
    await slack.settle()

    [reply] = slack.api.responses()
    assert reply.body["response_type"] == "in_channel"
    assert "Echo: Say hello" in reply.text and "out tokens" in reply.text


async def test_response_url_fallback_is_capped_at_five_posts(
    make_slack: MakeSlack, fake: FakeUpstream
) -> None:
    slack = await make_slack(config={"session": {"max_tokens": 8000}}, message_limit=500)
    slack.api.inject("chat.postMessage", error="channel_not_found", times=100)
    fake.reply_text = "```\n" + "\n".join(f"row {i}" for i in range(1000)) + "\n```"
    await slack.command("/generate", "many rows")
    await slack.settle()

    replies = slack.api.responses()
    assert len(replies) == 5
    assert all(r.body["response_type"] == "in_channel" and len(r.text) <= 500 for r in replies)
    assert all(r.text.count("```") % 2 == 0 for r in replies)
    assert "answer truncated" in replies[-1].text
