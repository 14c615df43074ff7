"""The bot's identity is fetched once per token; commands without ids still get keys of their own."""

from __future__ import annotations

import asyncio
import time

from bot.slack.dedupe import command_key, request_id_of
from tests.fakes.slack_api import FakeSlackApi
from tests.fakes.upstream import FakeUpstream
from tests.slack.conftest import MakeSlack

CHAT = "/v1/chat/completions"


def without_ids(form: dict[str, str]) -> dict[str, str]:
    """A slash-command payload with neither ``trigger_id`` nor ``response_url``."""
    return {k: v for k, v in form.items() if k not in ("trigger_id", "response_url")}


async def test_a_burst_of_commands_after_start_up_makes_one_auth_test_call(
    make_slack: MakeSlack, slack_api: FakeSlackApi
) -> None:
    slack = await make_slack()
    answers = await asyncio.gather(*(slack.command("/models", "") for _ in range(100)))
    assert all(a.status_code == 200 and a.json()["text"] == "Models and prices" for a in answers)
    assert len(slack_api.calls_to("auth.test")) == 1
    await slack.command("/budget", "")  # and later commands reuse it
    assert len(slack_api.calls_to("auth.test")) == 1


async def test_a_failed_auth_test_is_not_kept(make_slack: MakeSlack, slack_api: FakeSlackApi) -> None:
    slack = await make_slack()
    slack_api.inject("auth.test", error="invalid_auth")
    refused = await slack.command("/models", "")
    answered = await slack.command("/models", "")
    assert refused.status_code == 200 and "installation with this app is no longer available" in refused.text
    assert answered.status_code == 200 and answered.json()["text"] == "Models and prices"
    assert [c.error for c in slack_api.calls_to("auth.test")] == ["invalid_auth", None]


async def test_commands_without_ids_are_told_apart_and_a_replay_is_not_run_twice(
    make_slack: MakeSlack, fake: FakeUpstream, slack_api: FakeSlackApi
) -> None:
    slack = await make_slack()
    first = without_ids(slack.form("/generate", "--model gpt-4o-mini first"))
    second = without_ids(slack.form("/generate", "--model gpt-4o-mini second"))
    now = int(time.time())
    # The same signed request twice (a replay), another command signed in the same second, and
    # the first command's text sent again a second later (the user asking twice).
    sent = [(first, now), (first, now), (second, now), (first, now - 1)]
    answers = [await slack.post(form, ts=str(ts)) for form, ts in sent]
    assert all(a.status_code == 200 for a in answers)
    await slack.settle(started=3)
    assert slack.commands.started == 3
    prompts = sorted(r.json["messages"][-1]["content"] for r in fake.requests_to(CHAT))
    assert prompts == ["first", "first", "second"]
    assert len(slack_api.calls_to("chat.postMessage")) == 3  # each answered in the channel


def test_the_key_of_a_command_without_ids_is_the_signed_request() -> None:
    command = {"team_id": "T1", "command": "/generate", "text": "hi"}
    a = command_key(command, timestamp="1700000000", raw_body="team_id=T1&text=hi")
    replay = command_key(command, timestamp="1700000000", raw_body="team_id=T1&text=hi")
    later = command_key(command, timestamp="1700000001", raw_body="team_id=T1&text=hi")
    other = command_key(command, timestamp="1700000000", raw_body="team_id=T1&text=ho")
    assert a == replay and len({a, later, other}) == 3 and a.startswith("T1:signed:")
    # Outside HTTP (no signed request) the command's own fields tell invocations apart.
    assert command_key(command) != command_key({**command, "text": "ho"})
    # A command with a trigger_id keeps its key, on every replica.
    with_id = {**command, "trigger_id": "123.456"}
    assert command_key(with_id, timestamp="1", raw_body="x") == "T1:123.456"
    assert request_id_of(with_id) == request_id_of(dict(with_id)) != request_id_of(command)
