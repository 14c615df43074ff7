"""Slack threads through ``bot serve``: a conversation continued after a restart, retries answered once.

The thread lives in the fake Slack (``conversations.replies``) and the request ids in the ledger,
so nothing depends on the first process's memory.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx2

from tests.fakes.slack_api import BOT_USER, FakeSlackApi
from tests.fakes.upstream import FakeUpstream
from tests.serve.conftest import SIGNING_SECRET, Served, serve_env, start
from tests.serve.test_serve import wait_for
from tests.slack.conftest import sign

CHAT = "/v1/chat/completions"


async def post_event(http: httpx2.AsyncClient, url: str, envelope: dict[str, Any], **headers: str) -> int:
    """A correctly signed Events API request; its status."""
    body = json.dumps(envelope)
    ts = str(int(time.time()))
    all_headers = {
        "Content-Type": "application/json",
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": sign(body, ts, SIGNING_SECRET),
        **headers,
    }
    resp = await http.post(f"{url}/slack/events", content=body, headers=all_headers)
    return resp.status_code


def mention(api: FakeSlackApi, text: str, event_id: str, thread_ts: str | None = None) -> dict[str, Any]:
    """U1 mentions the bot in C1 (stored in the fake Slack first); the event's envelope."""
    said = f"<@{BOT_USER}> {text}"
    ts = api.user_says("C1", "U1", said, thread_ts=thread_ts)
    event = {"type": "app_mention", "user": "U1", "text": said, "ts": ts, "channel": "C1", "team": "T1"}
    if thread_ts:
        event["thread_ts"] = thread_ts
    return {
        "team_id": "T1",
        "api_app_id": "A1",
        "type": "event_callback",
        "event_id": event_id,
        "event": event,
    }


def answered(api: FakeSlackApi, root: str, count: int) -> bool:
    """True once ``count`` of the bot's messages in the thread are finished answers."""
    done = [m for m in api.thread("C1", root) if m.get("user") == BOT_USER and "out tokens" in m["text"]]
    return len(done) >= count


async def test_a_thread_continues_after_a_restart_and_a_retry_is_not_answered_again(
    tmp_path: Path, fake_env: dict[str, str], fake: FakeUpstream, slack_fake: FakeSlackApi
) -> None:
    slack_fake.reset()
    env = serve_env(tmp_path, fake_env, slack_fake.api_url)
    first = mention(slack_fake, "remember the number 7", "Ev1")
    root = first["event"]["ts"]
    async with httpx2.AsyncClient(timeout=10) as http:
        server: Served = start(tmp_path, env)
        try:
            server.wait_ready()
            assert await post_event(http, server.url, first) == 200
            await wait_for(lambda: answered(slack_fake, root, 1))
        finally:
            assert server.stop() == 0

        server = start(tmp_path, env)  # the same ledger and the same Slack, a new process
        try:
            server.wait_ready()
            # Slack retries the first event against the new process: the ledger knows its id.
            assert await post_event(http, server.url, first, **{"X-Slack-Retry-Num": "1"}) == 200
            follow_up = mention(slack_fake, "which number?", "Ev2", thread_ts=root)
            assert await post_event(http, server.url, follow_up) == 200
            await wait_for(lambda: answered(slack_fake, root, 2))
        finally:
            assert server.stop() == 0

    bodies = [r.json["messages"] for r in fake.requests_to(CHAT)]
    assert len(bodies) == 2, "the retry made no call"
    assert bodies[1] == [
        {"role": "user", "content": "remember the number 7"},
        {"role": "assistant", "content": "Echo: remember the number 7"},
        {"role": "user", "content": "which number?"},
    ]
    answers = [m for m in slack_fake.thread("C1", root) if m.get("user") == BOT_USER]
    assert len(answers) == 2, "the retry's placeholder was taken back"
