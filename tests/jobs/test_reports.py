"""Spend reports: figures equal to the ledger's sums, the chart, posting once, and ``bot report``."""

from __future__ import annotations

import asyncio
import json
import struct
import zlib
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bot.cli import main
from bot.core.config import DatabaseConfig
from bot.core.ledger import Ledger
from bot.core.types import Principal
from bot.jobs.chart import PNG_SIGNATURE, spend_chart_png
from tests.fakes.slack_api import FakeSlackApi
from tests.ledger.conftest import FakeClock, record

from .conftest import BOT_TOKEN, JobsEnv, MakeEnv

ALICE = Principal(surface="slack", team_id="T1", user_id="alice", channel_id="C1")
BOB = Principal(surface="slack", team_id="T1", user_id="bob", channel_id="C1")
CLI = Principal.cli()
MCP = Principal(surface="mcp", client_id="laptop")
REPORTS = "CREPORTS"


def decode_png(data: bytes) -> tuple[int, int, bytes]:
    """Check a PNG's signature, chunk CRCs and pixel data size; return (width, height, pixels)."""
    assert data[:8] == PNG_SIGNATURE
    pos, chunks = 8, dict[bytes, bytes]()
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF, kind
        chunks[kind] = chunks.get(kind, b"") + body
        pos += 12 + length
    width, height, depth, color = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, color) == (8, 2) and b"IEND" in chunks
    pixels = zlib.decompress(chunks[b"IDAT"])
    assert len(pixels) == height * (1 + 3 * width)
    return width, height, pixels


#: (when, who, model, cost): a few days of calls around the reported day, 2026-11-17.
CALLS = [
    (datetime(2026, 11, 12, 10, tzinfo=UTC), ALICE, "gpt-a", "0.40"),
    (datetime(2026, 11, 16, 9, tzinfo=UTC), ALICE, "gpt-a", "1.00"),
    (datetime(2026, 11, 16, 23, 59, tzinfo=UTC), BOB, "claude-b", "0.50"),
    (datetime(2026, 11, 17, 0, 0, tzinfo=UTC), ALICE, "gpt-a", "1.25"),
    (datetime(2026, 11, 17, 8, tzinfo=UTC), BOB, "claude-b", "0.75"),
    (datetime(2026, 11, 17, 13, tzinfo=UTC), CLI, "gpt-a", "0.10"),
    (datetime(2026, 11, 17, 23, 59, 59, tzinfo=UTC), MCP, "claude-b", "0.333333"),
    (datetime(2026, 11, 18, 1, tzinfo=UTC), ALICE, "gpt-a", "9.00"),  # today: not in the report
]


async def make_calls(env: JobsEnv, clock: FakeClock) -> None:
    saved = clock.now
    for when, who, model, cost in CALLS:
        clock.set(when)
        await env.charge(cost, principal=who, model=model)
    clock.set(saved)


def expected(start: datetime, end: datetime) -> dict[str, dict[str, Decimal]]:
    sums: dict[str, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for when, who, model, cost in CALLS:
        if start <= when < end:
            user = (
                who.client_id or "(unknown)"  # an MCP client is named, never "(none)"
                if not who.user_id
                else (f"{who.team_id}:{who.user_id}" if who.team_id else who.user_id)
            )
            for group, key in (("user", user), ("model", model), ("surface", who.surface), ("total", "")):
                sums[group][key] += Decimal(cost)
    return sums


def as_map(rows: list[dict[str, Any]]) -> dict[str, Decimal]:
    return {r["key"]: Decimal(r["cost_usd"]) for r in rows}


async def test_daily_report_figures_equal_the_ledger_sums(make_env: MakeEnv, clock: FakeClock) -> None:
    env = await make_env([])
    await make_calls(env, clock)
    report = (await env.runner.build_report("day")).to_dict()
    day = expected(datetime(2026, 11, 17, tzinfo=UTC), datetime(2026, 11, 18, tzinfo=UTC))
    before = expected(datetime(2026, 11, 16, tzinfo=UTC), datetime(2026, 11, 17, tzinfo=UTC))
    assert report["label"] == "2026-11-17"
    assert Decimal(report["total_usd"]) == day["total"][""] == Decimal("2.433333")
    assert Decimal(report["previous_total_usd"]) == before["total"][""] == Decimal("1.50")
    assert Decimal(report["change_usd"]) == Decimal("0.933333") and report["change_pct"] == 62.22
    assert as_map(report["by_user"]) == day["user"]
    assert as_map(report["by_model"]) == day["model"]
    assert as_map(report["by_surface"]) == day["surface"]
    assert report["calls"] == 4
    by_day = as_map(report["by_day"])
    assert list(by_day) == [f"2026-11-{d}" for d in range(11, 18)]  # 7 days, empty ones at $0
    assert by_day["2026-11-12"] == Decimal("0.40") and by_day["2026-11-13"] == 0


async def test_weekly_report_in_a_local_time_zone(make_env: MakeEnv, clock: FakeClock) -> None:
    clock.set(datetime(2026, 11, 23, 14, tzinfo=UTC))  # Monday 09:00 in New York
    env = await make_env([], timezone="America/New_York")
    await make_calls(env, clock)
    report = await env.runner.build_report("week")
    # Last week in New York: Mon 16 05:00 UTC to Mon 23 05:00 UTC (EST is UTC-5).
    start, end = datetime(2026, 11, 16, 5, tzinfo=UTC), datetime(2026, 11, 23, 5, tzinfo=UTC)
    assert (report.start, report.end) == (start, end)
    assert report.label == "2026-11-16 to 2026-11-22"
    assert report.totals.cost_usd == expected(start, end)["total"][""] == Decimal("12.933333")
    assert report.previous.cost_usd == Decimal("0.40")  # only the 12th: the 16th 09:00 UTC is 04:00 local
    assert len(report.by_day) == 14 and sum(r.cost_usd for r in report.by_day) == Decimal("13.333333")
    assert "Weekly spend report" in report.text() and "T1:alice" in report.text()


def test_chart_is_a_valid_png() -> None:
    days = [(f"2026-11-{d:02d}", Decimal(d) / 7) for d in range(1, 15)]
    width, height, pixels = decode_png(spend_chart_png(days, width=320, height=200))
    assert (width, height) == (320, 200)
    assert bytes((54, 122, 209)) in pixels  # the bars are drawn
    assert decode_png(spend_chart_png([]))[0] == 640  # no data: still a valid picture


async def test_post_report_uploads_the_chart(make_env: MakeEnv, clock: FakeClock) -> None:
    env = await make_env([], jobs={"report_channels": [REPORTS]})
    await make_calls(env, clock)
    await env.runner.post_report("day")
    (message,) = env.posted(REPORTS)
    assert "Daily spend report, 2026-11-17" in str(message["blocks"]) and "$2.43" in message["text"]
    (url,) = env.api.ok_calls_to("files.getUploadURLExternal")
    (done,) = env.api.ok_calls_to("files.completeUploadExternal")
    assert done.body["channel_id"] == REPORTS and int(url.body["length"]) > 100
    (png,) = env.api.uploads.values()
    decode_png(png)


async def test_report_slot_is_posted_once_by_two_replicas_and_retried(
    make_env: MakeEnv, clock: FakeClock
) -> None:
    first = await make_env([], jobs={"report_channels": [REPORTS]})
    second = await make_env([], jobs={"report_channels": [REPORTS]})
    first.runner.report_retry_delays = second.runner.report_retry_delays = (0.01,)
    first.api.inject("chat.postMessage", error="internal_error", status=500)
    await asyncio.gather(first.runner._report_job("day"), second.runner._report_job("day"))
    assert len(first.posted(REPORTS)) == 1  # one failure, then one success, never two reports
    await first.runner._report_job("day")  # the same slot again (a late replica): nothing
    assert len(first.posted(REPORTS)) == 1
    clock.advance(days=1)
    await second.runner._report_job("day")
    assert len(first.posted(REPORTS)) == 2


async def test_report_without_slack_or_channels_is_refused(make_env: MakeEnv) -> None:
    from bot.core.errors import ConfigurationError

    env = await make_env([])
    with pytest.raises(ConfigurationError, match="no report channel"):
        await env.runner.post_report("day")


def _yesterday_calls(url: str) -> Decimal:
    async def go() -> Decimal:
        ledger = await Ledger.open(DatabaseConfig(url=url), [])
        total = Decimal(0)
        try:
            when = datetime.now(UTC) - timedelta(days=1)
            for i, cost in enumerate(("0.5", "0.25")):
                hold = await ledger.reserve(
                    ALICE, Decimal(0), request_id=f"r{i}", model="m", provider="openai"
                )
                await ledger.settle(hold, record(hold, cost, created_at=when))
                total += Decimal(cost)
        finally:
            await ledger.close()
        return total

    return asyncio.run(go())


def test_bot_report_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/cli.db"
    total = _yesterday_calls(url)
    monkeypatch.setenv("BOT_DATABASE_URL", url)
    assert main(["report", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["period"] == "day" and Decimal(data["total_usd"]) == total == Decimal("0.75")
    assert [r["key"] for r in data["by_user"]] == ["T1:alice"] and data["calls"] == 2
    assert main(["report", "--period", "week"]) == 0
    assert "Weekly spend report" in capsys.readouterr().out
    assert main(["report", "--post"]) == 2  # no SLACK_BOT_TOKEN
    assert "SLACK_BOT_TOKEN" in capsys.readouterr().err


def test_bot_report_post(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    slack_api: FakeSlackApi,
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/cli.db"
    _yesterday_calls(url)
    config = tmp_path / "config.yaml"
    config.write_text(f"database: {{url: '{url}'}}\njobs: {{report_channels: [{REPORTS}]}}\n")
    for name, value in {
        "BOT_CONFIG": str(config),
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_API_URL": slack_api.api_url,
    }.items():
        monkeypatch.setenv(name, value)
    assert main(["report", "--post", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["posted_to"] == [REPORTS]
    assert len(slack_api.ok_calls_to("chat.postMessage")) == 1 and len(slack_api.uploads) == 1
