"""An upstream that echoes the API key in its 401: the key reaches no face and no log.

``bot serve`` runs in its own process with key-shaped provider keys, against a fake upstream of
its own (one that takes any key) whose ``auth_echo`` fault answers 401 "Incorrect API key
provided: Bearer <the key>". The MCP tool result, the Slack reply (response_url and Web API), the
CLI's stderr and the server's log must all show the error, and none the key.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import httpx2
import pytest

from tests.fakes.slack_api import FakeSlackApi
from tests.fakes.upstream import FakeUpstream
from tests.mcp.conftest import TOKENS, http_client
from tests.serve.conftest import SIGNING_SECRET, Served, serve_env, start
from tests.serve.test_body_limits import assert_clean_log
from tests.slack.conftest import sign

OPENAI_KEY = "sk-proj-EchoedKey0123456789abcdefGHIJKLmnop"
ANTHROPIC_KEY = "sk-ant-api03-EchoedKey0123456789abcdefGHIJKLmnop-QRSTUVwx"
#: Any tail of a key long enough to identify it must be gone too.
FRAGMENTS = [OPENAI_KEY, ANTHROPIC_KEY, OPENAI_KEY[8:], ANTHROPIC_KEY[13:], "EchoedKey0123456789"]
MODELS = {
    "openai": ("gpt-4o-mini", "/v1/chat/completions"),
    "anthropic": ("claude-haiku-4-5", "/v1/messages"),
}


def leaks(text: str) -> list[str]:
    """The key fragments found in ``text``."""
    return [fragment for fragment in FRAGMENTS if fragment in text]


@pytest.fixture
def echoing() -> Iterator[FakeUpstream]:
    """A fake upstream taking any key, for this test alone (the shared one wants ``test-key``)."""
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture
def key_env(echoing: FakeUpstream) -> dict[str, str]:
    """Key-shaped provider keys, pointed at ``echoing``."""
    return {
        "OPENAI_API_KEY": OPENAI_KEY,
        "OPENAI_BASE_URL": echoing.openai_base_url,
        "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
        "ANTHROPIC_BASE_URL": echoing.anthropic_base_url,
    }


def inject_echo(fake: FakeUpstream) -> None:
    """Every call (not the readiness probe) is answered with the key echoed."""
    for _, path in MODELS.values():
        fake.inject("auth_echo", times=100, path=path)


async def slash(http: httpx2.AsyncClient, url: str, api: FakeSlackApi, n: int, text: str) -> httpx2.Response:
    """A signed ``/generate`` with its own trigger_id and response_url ``r<n>``."""
    form = {
        "team_id": "T1", "channel_id": "C1", "user_id": "U1", "command": "/generate", "text": text,
        "response_url": api.response_url(f"r{n}"), "trigger_id": f"trigger.echo.{n}",
    }  # fmt: skip
    body, ts = urlencode(form), str(int(time.time()))
    headers = {
        "content-type": "application/x-www-form-urlencoded",
        "x-slack-request-timestamp": ts,
        "x-slack-signature": sign(body, ts, SIGNING_SECRET),
    }
    return await http.post(f"{url}/slack/events", content=body, headers=headers)


async def test_an_echoed_key_reaches_no_face_and_no_log(
    tmp_path: Path, echoing: FakeUpstream, key_env: dict[str, str], slack_fake: FakeSlackApi
) -> None:
    slack_fake.reset()
    served: Served = start(tmp_path, serve_env(tmp_path, key_env, slack_fake.api_url))
    try:
        served.wait_ready()
        inject_echo(echoing)
        results = {}
        async with http_client(served.url, TOKENS["alice"]) as client:
            for provider, (model, _) in MODELS.items():
                results[provider] = await client.call_tool("generate", {"prompt": "hi", "model": model})
        async with httpx2.AsyncClient(timeout=10) as http:
            for n, (model, _) in enumerate(MODELS.values()):
                ack = await slash(http, served.url, slack_fake, n, f"--model {model} hi")
                assert ack.status_code == 200
        for _ in range(200):
            if len(slack_fake.responses()) >= 2:
                break
            await asyncio.sleep(0.05)
        # What the upstream really sent back held the key (else this test would prove nothing).
        echoed = [r for r in echoing.requests if r.fault == "auth_echo"]
        assert len(echoed) == 4
    finally:
        served.stop()

    for provider, result in results.items():
        text = json.dumps([c.model_dump() for c in result.content])
        assert result.is_error and f"{provider} rejected the API key" in text, text
        assert "Incorrect API key provided: Bearer ***" in text
        assert leaks(text) == [], text
    replies = slack_fake.responses()
    assert len(replies) == 2 and all("rejected the API key" in r.text for r in replies)
    for call in slack_fake.calls:
        assert leaks(json.dumps(call.body)) == [], call
    logs = served.logs()
    assert leaks(logs) == [], logs
    assert_clean_log(served)


@pytest.mark.parametrize("provider", list(MODELS))
def test_an_echoed_key_never_reaches_the_clis_stderr(
    tmp_path: Path, echoing: FakeUpstream, key_env: dict[str, str], provider: str
) -> None:
    inject_echo(echoing)
    env = serve_env(tmp_path, key_env, None)
    model, _ = MODELS[provider]
    done = subprocess.run(
        [sys.executable, "-m", "bot.cli", "generate", "--model", model, "hi"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert [r.fault for r in echoing.requests if r.path == MODELS[provider][1]] == ["auth_echo"]
    assert done.returncode == 1, done.stderr
    assert f"error: {provider} rejected the API key" in done.stderr
    assert "Bearer ***" in done.stderr and "Traceback" not in done.stderr
    assert leaks(done.stderr + done.stdout) == [], done.stderr
