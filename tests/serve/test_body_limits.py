"""Request body limits of ``bot serve``, in its own process: 413 before anything parses a body."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx2
import pytest

from bot.core.errors import ConfigurationError
from bot.settings import DEFAULT_SLACK_BODY_LIMIT, ServerSettings
from tests.fakes.slack_api import FakeSlackApi
from tests.fakes.upstream import FakeUpstream
from tests.mcp.conftest import TOKENS, http_client
from tests.serve.conftest import Served, serve_env, start
from tests.serve.raw_http import MIB, RawAnswer, RawUpload
from tools.mcp_server import MCP_BODY_LIMIT


def rss_bytes(pid: int) -> int:
    """The process's resident set size (``VmRSS`` in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


async def wait_warm(served: Served) -> None:
    """Wait until the providers' SDKs are loaded and checked (they load after start-up), so RSS is steady."""
    async with httpx2.AsyncClient(timeout=5) as http:
        for _ in range(600):
            providers = (await http.get(f"{served.url}/readyz")).json()["providers"]
            if "checking" not in providers.values():
                return
            await asyncio.sleep(0.05)
    raise AssertionError(f"the providers were still being checked: {providers}")


def upload(
    served: Served,
    path: str,
    size: int,
    *,
    chunked: bool = False,
    headers: dict[str, str] | None = None,
    pause: float = 0.0,
) -> RawAnswer:
    """A forged POST of ``size`` bytes to ``path`` of the served process."""
    raw = RawUpload("127.0.0.1", served.port, path, size=size, chunked=chunked, headers=headers, pause=pause)
    return raw.run()


def assert_clean_log(served: Served) -> None:
    """No traceback and no ERROR line in what the server wrote."""
    logs = served.logs()
    assert "Traceback" not in logs, logs
    assert all(line["level"] not in ("ERROR", "CRITICAL") for line in served.log_lines()), logs


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_forged_100_mb_slack_post_is_refused_at_once_and_costs_no_memory(
    served: Served, chunked: bool
) -> None:
    await wait_warm(served)
    before = rss_bytes(served.proc.pid)
    async with httpx2.AsyncClient(timeout=5) as http:
        # Several at once, while /healthz keeps answering.
        uploads = asyncio.gather(
            *(
                asyncio.to_thread(upload, served, "/slack/events", 100 * MIB, chunked=chunked)
                for _ in range(3)
            )
        )
        health = asyncio.gather(*(http.get(f"{served.url}/healthz") for _ in range(3)))
        answers, healths = await asyncio.gather(uploads, health)
        after = rss_bytes(served.proc.pid)
        healths.append(await http.get(f"{served.url}/healthz"))
    for answer in answers:
        assert answer.status == 413, answer.body
        assert answer.seconds < 5  # in practice a few milliseconds
        assert answer.closed  # the rest of the body is never read
        assert answer.sent < 50 * MIB
        body = json.loads(answer.body)
        assert body["error"] == "request body too large" and str(DEFAULT_SLACK_BODY_LIMIT) in body["message"]
        assert answer.headers["x-request-id"]
    assert all(h.status_code == 200 for h in healths)
    assert after - before < 50 * MIB, f"RSS grew by {(after - before) / MIB:.1f} MiB"
    assert_clean_log(served)
    refused = [line for line in served.log_lines() if line["message"] == "POST /slack/events 413"]
    assert len(refused) == 3 and all("larger than this route's limit" in line["refused"] for line in refused)


async def test_every_route_has_a_limit_and_mcp_keeps_the_sdks(served: Served, fake: FakeUpstream) -> None:
    bearer = {"authorization": f"Bearer {TOKENS['alice']}", "content-type": "application/json"}
    accept = {**bearer, "accept": "application/json, text/event-stream"}
    cases = {
        "GET route with a body": upload(served, "/healthz", 4096),
        "unknown route": upload(served, "/nowhere", 4096),
        "MCP, no token, 100 MB declared": upload(served, "/mcp", 100 * MIB),
        "MCP, 5 MB prompt": upload(served, "/mcp", 5 * MIB, headers=accept),
        "MCP, 5 MB chunked": upload(served, "/mcp", 5 * MIB, headers=accept, chunked=True),
    }
    for name, answer in cases.items():
        assert answer.status == 413, name
        assert answer.closed, name
    # A body the MCP SDK would take, sent without a token: refused before it is read, and the
    # connection closed rather than drained.
    unread = upload(served, "/mcp", MCP_BODY_LIMIT, chunked=True, pause=0.1)
    assert unread.status == 401 and unread.closed and unread.sent < MCP_BODY_LIMIT
    assert fake.requests_to("/v1/chat/completions") == []
    assert_clean_log(served)


async def test_mcp_still_takes_a_prompt_of_max_prompt_chars(served: Served, fake: FakeUpstream) -> None:
    # 400,000 characters (session.max_prompt_chars and the tool's own limit), 480,000 bytes; a dry
    # run, since its worst case is above the served config's smallest budget.
    prompt = "café " * 80_000
    args = {"prompt": prompt, "model": "gpt-4o-mini", "dry_run": True}
    async with http_client(served.url, TOKENS["alice"]) as client:
        fits = await client.call_tool("generate", args)
        over = await client.call_tool("generate", {**args, "prompt": prompt + "!"})
    # The whole prompt was read and counted; one character more is the tool's own refusal, not
    # the body limit's.
    assert not fits.is_error, fits.content
    assert fits.structured_content is not None
    assert fits.structured_content["usage"]["input_tokens"] > 80_000
    assert over.is_error and "1 to 400,000 characters (got 400,001" in str(over.content)
    assert_clean_log(served)


async def test_the_slack_limit_is_a_setting(
    tmp_path: Path, fake_env: dict[str, str], slack_fake: FakeSlackApi
) -> None:
    env = serve_env(tmp_path, fake_env, slack_fake.api_url)
    env["BOT_MAX_SLACK_BODY_BYTES"] = "2048"
    served = start(tmp_path, env)
    try:
        served.wait_ready()
        small = await asyncio.to_thread(upload, served, "/slack/events", 2048)
        large = await asyncio.to_thread(upload, served, "/slack/events", 2049)
    finally:
        served.stop()
    assert small.status == 401  # read, then refused for its (missing) signature
    assert large.status == 413 and "2048 bytes" in json.loads(large.body)["message"]


def test_an_invalid_slack_limit_is_a_configuration_error() -> None:
    assert ServerSettings.from_env({}).max_slack_body == DEFAULT_SLACK_BODY_LIMIT == 64 * 1024
    assert ServerSettings.from_env({"BOT_MAX_SLACK_BODY_BYTES": "1024"}).max_slack_body == 1024
    for raw in ("12", "lots", "-5", str(64 * MIB)):
        with pytest.raises(ConfigurationError, match="BOT_MAX_SLACK_BODY_BYTES must be a number of bytes"):
            ServerSettings.from_env({"BOT_MAX_SLACK_BODY_BYTES": raw})
