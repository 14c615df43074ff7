"""``GET /``: the front door page, in process and in a real headless browser (Debian's Chromium)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import httpx2
import pytest

from bot.core.gateway import Gateway
from bot.front_door import FrontDoor, render
from bot.server import build_app
from bot.slack.settings import SlackSettings
from tests.conftest import API_KEY
from tests.fakes.loopback import serve_in_loop as serve
from tests.fakes.slack_api import FakeSlackApi
from tests.mcp.conftest import TOKENS, mcp_config
from tests.serve.conftest import BOT_TOKEN, SIGNING_SECRET, Served, serve_env, start

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
#: Set to a path to keep the browser's screenshot there (docs/front-door.png is made this way).
SCREENSHOT_ENV = "BOT_FRONT_DOOR_SCREENSHOT"


def text_of(html: str) -> str:
    """The page's visible text, tags removed and entities of the escaped values kept."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


async def test_front_door_lists_the_faces_and_the_urls_to_give_clients(fake_env: dict[str, str]) -> None:
    async with Gateway(mcp_config(), env=fake_env) as gateway:
        slack = SlackSettings(bot_token=BOT_TOKEN, signing_secret=SIGNING_SECRET)
        app, _ = build_app(gateway, gateway.config, slack_settings=slack)
        async with serve(app) as url, httpx2.AsyncClient(timeout=10) as http:
            page = await http.get(f"{url}/")
            head = await http.head(f"{url}/")
            refused = await http.post(f"{url}/", content=b"x")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src" not in page.headers["content-security-policy"]  # default-src 'none' covers it
    assert page.headers["x-content-type-options"] == "nosniff"
    text = text_of(page.text)
    assert "Slack on" in text and "MCP on" in text and "Providers on openai, anthropic" in text
    assert f"{url}/slack/events" in text and f"{url}/mcp" in text
    assert (
        f'claude mcp add --transport http llm-gateway {url}/mcp --header "Authorization: Bearer YOUR_TOKEN"'
        in page.text.replace("&quot;", '"')
    )
    for path in ("/readyz", "/metrics", "/healthz"):
        assert f'href="{url}{path}"' in page.text
    for secret in (API_KEY, BOT_TOKEN, SIGNING_SECRET, *TOKENS.values(), "alice", "bob"):
        assert secret not in page.text
    assert head.status_code == 200 and refused.status_code == 405


async def test_front_door_says_what_is_off_and_how_to_turn_it_on() -> None:
    async with Gateway(mcp_config(mcp={"clients": {}}), env={}) as gateway:
        app, _ = build_app(gateway, gateway.config)
        async with serve(app) as url, httpx2.AsyncClient(timeout=10) as http:
            text = text_of((await http.get(f"{url}/")).text)
    assert "Slack off set SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET" in text
    assert "MCP off add bearer tokens under mcp.clients" in text
    assert "Providers off set OPENAI_API_KEY or ANTHROPIC_API_KEY" in text
    assert "Ledger off none" in text


def test_the_ledger_is_named_by_its_kind_and_every_value_is_escaped() -> None:
    door = FrontDoor(slack=False, socket_mode=False, mcp=True, providers=("<b>x</b>",), ledger="PostgreSQL")
    html = render(door, 'http://evil"><script>alert(1)</script>')
    assert "<script>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html
    assert "PostgreSQL" in html


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on PATH (Debian: apt-get install chromium)")
def test_front_door_in_a_headless_browser(tmp_path: Path, fake_env: dict[str, str]) -> None:
    assert CHROMIUM is not None
    with FakeSlackApi(token=BOT_TOKEN) as slack:
        served = start(tmp_path, serve_env(tmp_path, fake_env, slack.api_url))
        shot = tmp_path / "front-door.png"
        browser = _browse(served, shot, tmp_path)
    assert browser.returncode == 0, browser.stderr
    _check(browser, served, shot, tmp_path)


def _browse(served: Served, shot: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Open the served page in headless Chromium: its DOM on stdout, a screenshot in ``shot``."""
    assert CHROMIUM is not None
    try:
        served.wait_ready()
        # Every flag keeps the browser to this page: no sandbox (root in CI), no background
        # requests, no profile beyond the test's folder.
        return subprocess.run(
            [
                CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1000,720",
                f"--screenshot={shot}", "--dump-dom", f"{served.url}/",
            ],
            capture_output=True, text=True, timeout=120, cwd=tmp_path,
        )  # fmt: skip
    finally:
        served.stop()


def _check(browser: subprocess.CompletedProcess[str], served: Served, shot: Path, tmp_path: Path) -> None:
    dom = browser.stdout
    assert "<title>LLM gateway</title>" in dom
    text = text_of(dom)
    assert "Slack on" in text and "MCP on" in text and "Ledger on SQLite" in text
    assert f"{served.url}/mcp" in text and "claude mcp add --transport http llm-gateway" in text
    assert API_KEY not in dom and TOKENS["alice"] not in dom and str(tmp_path) not in dom
    assert shot.read_bytes().startswith(b"\x89PNG")
    if target := os.environ.get(SCREENSHOT_ENV):
        shutil.copyfile(shot, target)
