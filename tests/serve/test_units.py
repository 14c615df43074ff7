"""In-process pieces of ``bot serve``: redaction, structured logs, metrics, settings."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from bot.core.config import AppConfig
from bot.core.errors import ConfigurationError
from bot.core.ledger import BudgetStatus
from bot.core.types import CallRecord, Principal, Usage
from bot.logging_setup import Redactor, configure_logging, request_id_var
from bot.metrics import Metrics
from bot.settings import DEFAULT_GRACE, ServerSettings, apply_data_dir, shutdown_grace_from_env


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize(
    "secret",
    [
        "sk-proj-abcdefghijklmnop1234",
        "sk-ant-api03-abcdefghijklmnop",
        "xoxb-123-456-abcdef",
        "xapp-1-A1-abc",
        "xoxp-99-abc",
        "configured-secret-value",
    ],
)
def test_redactor_masks_known_shapes_and_configured_values(secret: str) -> None:
    redactor = Redactor(["configured-secret-value", "abc"])  # too short to mask: would garble text
    assert secret not in redactor.text(f"key={secret}!")
    assert redactor.text("abc is fine") == "abc is fine"
    assert redactor.text("Authorization: Bearer 0123456789abcdef") == "Authorization: Bearer ***"
    assert redactor.text("bearer tokens are configured") == "bearer tokens are configured"
    assert redactor.text("postgresql://bot:pa55word@db/x") == "postgresql://bot:***@db/x"


def test_logs_are_json_with_request_id_and_masked_everywhere(restore_logging: None) -> None:
    stream = io.StringIO()  # not a terminal: JSON
    configure_logging("INFO", secrets=["my-very-secret"], stream=stream)
    log = logging.getLogger("bot.test")
    token = request_id_var.set("req-42")
    try:
        log.info(
            "calling with %s",
            "my-very-secret",
            extra={"header": "Bearer my-very-secret", "nested": {"k": ["sk-abcdefghijklmn"]}},
        )
        try:
            raise RuntimeError("failed with key sk-abcdefghijklmn")
        except RuntimeError:
            log.exception("boom")
    finally:
        request_id_var.reset(token)
    out = stream.getvalue()
    assert "my-very-secret" not in out and "sk-abcdefghijklmn" not in out
    first, second = (json.loads(line) for line in out.splitlines() if line.startswith("{"))
    assert first["request_id"] == "req-42" and first["message"] == "calling with ***"
    assert first["nested"] == {"k": ["***"]} and first["level"] == "INFO"
    assert "RuntimeError" in second["exception"]


def test_plain_format_on_a_terminal(restore_logging: None) -> None:
    stream = io.StringIO()
    configure_logging("INFO", json_format=False, secrets=["my-very-secret"], stream=stream)
    logging.getLogger("bot.test").warning("key my-very-secret", extra={"user": "u1"})
    line = stream.getvalue().strip()
    assert line.endswith("key *** user=u1") and "[-]" in line and not line.startswith("{")


async def test_metrics_count_every_outcome_by_surface() -> None:
    metrics = Metrics()
    usage = Usage(input_tokens=10, output_tokens=5)
    ok = CallRecord(
        "r1",
        Principal(surface="mcp", client_id="a"),
        "openai",
        "gpt-4o-mini",
        "ok",
        usage,
        Decimal("0.002"),
        120.0,
    )
    refused = CallRecord("r2", Principal(surface="slack", user_id="u"), "openai", "gpt-4o", "refused")
    await metrics.on_call(ok, [])
    await metrics.on_call(refused, [])
    metrics.alert_delivered("threshold", ok=True)
    metrics.alert_delivered("threshold", ok=False)
    text = (await metrics.render()).decode()
    assert 'llm_calls_total{model="gpt-4o-mini",outcome="ok",provider="openai",surface="mcp"} 1.0' in text
    assert 'llm_calls_total{model="gpt-4o",outcome="refused",provider="openai",surface="slack"} 1.0' in text
    assert 'kind="output",model="gpt-4o-mini",outcome="ok",provider="openai",surface="mcp"} 5.0' in text
    assert (
        'llm_cost_usd_total{model="gpt-4o-mini",outcome="ok",provider="openai",surface="mcp"} 0.002' in text
    )
    assert 'budget_alert_deliveries_total{kind="threshold",outcome="failed"} 1.0' in text
    assert "llm_call_latency_seconds_bucket" in text
    assert Metrics().registry is not metrics.registry  # never the global registry


async def test_budget_gauges_come_from_the_budget_source_at_each_scrape() -> None:
    now = datetime(2026, 11, 15, tzinfo=UTC)
    status = BudgetStatus(
        "team", "team", "T1", "monthly", Decimal(10), Decimal("2.5"), Decimal(0), Decimal("7.5"), 0.25,
        now, now, None,
    )  # fmt: skip
    answers: list[list[BudgetStatus]] = [[status], []]

    async def source() -> list[BudgetStatus]:
        if not answers:
            raise OSError("database gone")
        return answers.pop(0)

    metrics = Metrics(source)
    labels = {"budget": "team", "scope": "team", "scope_key": "T1", "period": "monthly"}
    await metrics.refresh_budgets()
    assert metrics.registry.get_sample_value("budget_spent_usd", labels) == 2.5
    assert metrics.registry.get_sample_value("budget_fraction_used", labels) == 0.25
    await metrics.refresh_budgets()  # the budget is gone: its gauges go too
    assert metrics.registry.get_sample_value("budget_limit_usd", labels) is None
    assert b"llm_calls" in await metrics.render()  # a failing source still lets the scrape answer


def test_settings_from_env_and_flags(tmp_path: Path) -> None:
    assert ServerSettings.from_env({}) == ServerSettings()
    s = ServerSettings.from_env(
        {"BOT_HOST": "127.0.0.1", "BOT_PORT": "9000", "BOT_DATA_DIR": str(tmp_path)}, port="9001"
    )
    assert (s.host, s.port, s.data_dir) == ("127.0.0.1", 9001, tmp_path)
    with pytest.raises(ConfigurationError, match="BOT_PORT"):
        ServerSettings.from_env({"BOT_PORT": "0"})
    config = apply_data_dir(AppConfig(), s.data_dir, {})
    assert config.database.url == f"sqlite+aiosqlite:///{tmp_path.resolve()}/bot.db"
    assert apply_data_dir(AppConfig(), s.data_dir, {"BOT_DATABASE_URL": "x"}) == AppConfig()


def test_one_shutdown_grace_for_bot_serve_and_bot_slack() -> None:
    assert shutdown_grace_from_env({}) == DEFAULT_GRACE == ServerSettings().shutdown_grace
    assert shutdown_grace_from_env({"BOT_SHUTDOWN_GRACE": "2.5"}) == 2.5
    assert ServerSettings.from_env({"BOT_SHUTDOWN_GRACE": "2.5"}).shutdown_grace == 2.5
    with pytest.raises(ConfigurationError, match="BOT_SHUTDOWN_GRACE"):
        shutdown_grace_from_env({"BOT_SHUTDOWN_GRACE": "-1"})


async def test_the_start_up_heap_is_frozen_once_the_sdks_are_loaded() -> None:
    import asyncio
    import gc

    from bot.heap import YOUNG_THRESHOLD, freeze_when_ready

    thresholds = gc.get_threshold()
    gc.set_threshold(700, *thresholds[1:])
    ready = asyncio.Event()
    freeze = asyncio.create_task(freeze_when_ready(ready))
    try:
        await asyncio.sleep(0.01)
        assert not freeze.done() and gc.get_freeze_count() == 0  # waits for the warm-up
        ready.set()
        await asyncio.wait_for(freeze, timeout=30)
        assert gc.get_freeze_count() > 10_000  # everything alive at start-up
        assert gc.get_threshold() == (YOUNG_THRESHOLD, *thresholds[1:])
    finally:
        gc.unfreeze()  # this test process keeps its collector as it was
        gc.set_threshold(*thresholds)


def test_an_operators_own_young_threshold_is_kept() -> None:
    import gc

    from bot.heap import YOUNG_THRESHOLD, freeze_startup_heap

    thresholds = gc.get_threshold()
    try:
        gc.set_threshold(YOUNG_THRESHOLD * 5, *thresholds[1:])
        freeze_startup_heap()
        assert gc.get_threshold()[0] == YOUNG_THRESHOLD * 5
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
