"""Alert delivery: every kind exactly once, retried through outages, once across replicas."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from bot.core.errors import BudgetExceededError
from bot.core.gateway import Gateway
from bot.core.ledger.schema import alerts
from bot.core.types import Principal
from bot.jobs.delivery import SKIPPED_NO_CHANNEL
from tests.conftest import fast_config
from tests.ledger.conftest import FakeClock, undelivered_alerts

from .conftest import ALERTS, T0, MakeEnv, budget


def alert_ids(bodies: list[dict[str, Any]]) -> list[int]:
    return [b["metadata"]["event_payload"]["alert_id"] for b in bodies]


def kinds(bodies: list[dict[str, Any]]) -> list[str]:
    return [b["metadata"]["event_payload"]["kind"] for b in bodies]


async def test_threshold_and_exhausted_alerts_are_posted_once_with_figures(make_env: MakeEnv) -> None:
    env = await make_env([budget("team", "10")])
    created = await env.charge("6")  # 60%: the 50% alert
    assert [a.threshold for a in created] == [0.5]
    assert await env.runner.deliver_alerts_once() == 1
    created = await env.charge("4")  # 100%: 80% and exhausted
    assert [a.threshold for a in created] == [0.8, 1.0]
    assert await env.runner.deliver_alerts_once() == 2
    assert await env.runner.deliver_alerts_once() == 0  # nothing is sent twice
    posted = env.posted(ALERTS)
    assert len(posted) == 3 and len(set(alert_ids(posted))) == 3
    assert "50% of its daily limit" in posted[0]["text"] and "$6.00 of $10.00" in posted[0]["text"]
    assert "exhausted" in posted[2]["text"] and "resets 2026-11-19 00:00 UTC" in posted[2]["text"]
    blocks = str(posted[2]["blocks"])
    assert "▓▓▓▓▓▓▓▓▓▓ 100%" in blocks and "*Limit*" in blocks and "*Resets*" in blocks
    assert await undelivered_alerts(env.ledger) == []


async def test_reset_alert_once_when_a_new_period_starts(make_env: MakeEnv, clock: FakeClock) -> None:
    env = await make_env([budget("team", "10"), budget("quiet", "10")])
    await env.charge("10", model="m")  # exhausts both "team" and "quiet"
    assert await env.runner.deliver_alerts_once() == 6
    clock.advance(days=1)
    assert await env.runner.deliver_alerts_once() == 2  # one reset per budget
    assert await env.runner.deliver_alerts_once() == 0
    clock.advance(days=1)  # nothing was alerted yesterday: no reset today
    assert await env.runner.deliver_alerts_once() == 0
    resets = [b for b in env.posted() if b["metadata"]["event_payload"]["kind"] == "reset"]
    assert len(resets) == 2 and "has reset" in resets[0]["text"] and "$0.00 of $10.00" in resets[0]["text"]


async def test_forecast_alert_once_per_period(make_env: MakeEnv, clock: FakeClock) -> None:
    env = await make_env(
        [budget("monthly", "100", period="monthly", alert_thresholds=[1.0])], jobs={"forecast_alerts": True}
    )
    # Nov 18 12:00 is 17.5 days into 30: $60 so far projects to about $103.
    await env.charge("60")
    assert await env.runner.deliver_alerts_once() == 1
    clock.advance(hours=1)
    await env.charge("1")
    assert await env.runner.deliver_alerts_once() == 0  # still over, but already announced
    (body,) = env.posted()
    assert (
        kinds([body]) == ["forecast"]
        and "on track to pass" in body["text"]
        and "projected $10" in body["text"]
    )
    clock.set(clock.now.replace(month=12, day=20))
    await env.charge("90")  # December: a new period, a new forecast
    assert await env.runner.deliver_alerts_once() == 1  # no reset: November only had a forecast
    assert kinds(env.posted()) == ["forecast", "forecast"]


async def test_no_forecast_early_in_a_period_or_when_disabled(make_env: MakeEnv, clock: FakeClock) -> None:
    clock.set(clock.now.replace(day=1, hour=3))  # 0.4% of the month
    on = {"forecast_alerts": True}
    env = await make_env([budget("monthly", "100", period="monthly", alert_thresholds=[1.0])], jobs=on)
    await env.charge("5")
    assert await env.runner.deliver_alerts_once() == 0
    off = await make_env(
        [budget("monthly", "100", period="monthly", alert_thresholds=[1.0])], jobs={"forecast_alerts": False}
    )
    clock.set(clock.now.replace(day=20))
    assert await off.runner.deliver_alerts_once() == 0
    await env.charge("60")  # $65 by the 20th projects to about $102
    assert await env.runner.deliver_alerts_once() == 1


async def test_delivery_survives_a_slack_outage(make_env: MakeEnv, clock: FakeClock) -> None:
    env = await make_env([budget("team", "10", alert_thresholds=[0.5])])
    env.api.inject("chat.postMessage", error="internal_error", status=500, times=2)
    env.api.inject("chat.postMessage", status=429, retry_after=0, times=2)  # past the client's 1 retry
    await env.charge("6")
    assert await env.runner.deliver_alerts_once() == 0
    (pending,) = await undelivered_alerts(env.ledger)
    assert pending.attempts == 1 and pending.last_error == "internal_error"
    assert pending.next_attempt_at == clock.now + timedelta(seconds=30)
    assert await env.runner.deliver_alerts_once() == 0  # not due yet: no request at all
    assert len(env.api.calls_to("chat.postMessage")) == 1
    clock.advance(seconds=30)
    assert await env.runner.deliver_alerts_once() == 0
    (pending,) = await undelivered_alerts(env.ledger)
    assert pending.attempts == 2 and pending.next_attempt_at == clock.now + timedelta(seconds=60)
    clock.advance(seconds=60)
    assert await env.runner.deliver_alerts_once() == 0  # rate limited twice (one client retry)
    (pending,) = await undelivered_alerts(env.ledger)
    assert pending.attempts == 3 and pending.last_error == "ratelimited"
    clock.advance(seconds=120)
    assert await env.runner.deliver_alerts_once() == 1
    assert len(env.posted()) == 1 and len(env.api.calls_to("chat.postMessage")) == 5
    async with env.ledger._db.read() as conn:
        row = (await conn.execute(sa.select(alerts))).one()
    assert row.attempts == 4 and row.delivered_at == clock.now and row.last_error is None


async def test_slack_unreachable_is_retried(make_env: MakeEnv, clock: FakeClock) -> None:
    env = await make_env([budget("team", "10", alert_thresholds=[0.5])])
    env.runner.delivery._slack.base_url = "http://127.0.0.1:9/api/"  # type: ignore[union-attr]
    await env.charge("6")
    assert await env.runner.deliver_alerts_once() == 0
    (pending,) = await undelivered_alerts(env.ledger)
    assert pending.attempts == 1 and pending.last_error and "Error" in pending.last_error


async def test_alert_without_channel_is_closed_as_skipped(make_env: MakeEnv) -> None:
    env = await make_env([budget("silent", "10", channel=None)])
    await env.charge("10")
    assert await env.runner.deliver_alerts_once() == 0
    assert env.api.calls == [] and await undelivered_alerts(env.ledger) == []
    async with env.ledger._db.read() as conn:
        errors = (await conn.execute(sa.select(alerts.c.last_error, alerts.c.attempts))).all()
    assert [tuple(r) for r in errors] == [(SKIPPED_NO_CHANNEL, 0)] * 3


async def test_without_slack_alerts_stay_pending(make_env: MakeEnv) -> None:
    env = await make_env([budget("team", "10")], slack=False)
    await env.charge("6")
    assert await env.runner.deliver_alerts_once() == 0
    assert len(await undelivered_alerts(env.ledger)) == 1


async def test_two_replicas_deliver_each_alert_exactly_once(make_env: MakeEnv) -> None:
    per_user = budget("per-user", "1", scope="user")
    first, second = await make_env([per_user]), await make_env([per_user])
    users = [Principal(surface="slack", team_id="T1", user_id=f"U{i}") for i in range(20)]
    for user in users:
        await first.charge("1", principal=user)  # 50%, 80%, 100% each: 60 alerts
    assert len(await undelivered_alerts(first.ledger, 1000)) == 60
    sent = await asyncio.gather(*(r.runner.deliver_alerts_once() for r in (first, second, first, second)))
    assert sum(sent) == 60
    ids = alert_ids(first.posted())
    assert len(ids) == 60 and len(set(ids)) == 60
    assert await undelivered_alerts(second.ledger) == []


async def test_a_crossing_call_pushes_its_alert_at_once(make_env: MakeEnv, fake_env: dict[str, str]) -> None:
    async with Gateway(fast_config(), env=fake_env) as probe:
        cost = (
            await probe.generate(Principal.cli(), "x", model="gpt-4o-mini", max_tokens=20, dry_run=True)
        ).cost_usd
    env = await make_env([budget("tiny", str(cost * 3), alert_thresholds=[0.01])])
    await env.runner.start()
    await env.gateway.generate(Principal.cli(), "x", model="gpt-4o-mini", max_tokens=20)
    await env.gateway.sessions.pending.flush()  # the settle (and its observers) runs after the answer
    await env.runner.observer.wait_idle()
    (body,) = env.posted(ALERTS)
    assert "1% of its daily limit" in body["text"]
    assert await env.runner.deliver_alerts_once() == 0  # the periodic job finds nothing left to send
    assert len(env.posted()) == 1


async def test_claims_expire_so_a_crashed_replica_does_not_lose_alerts(
    make_env: MakeEnv, clock: FakeClock
) -> None:
    env = await make_env([budget("team", "10", alert_thresholds=[0.5])])
    await env.charge("6")
    claimed = await env.ledger.outbox.claim("crashed", lease=timedelta(minutes=5), limit=10)
    assert len(claimed) == 1
    assert await env.runner.deliver_alerts_once() == 0  # leased to the crashed replica
    clock.advance(minutes=6)
    assert await env.runner.deliver_alerts_once() == 1
    assert await env.ledger.outbox.delivered(claimed[0].id, "crashed") is False


async def test_m002_upgrades_a_version_1_database_with_pending_alerts(
    db_url: str, monkeypatch: pytest.MonkeyPatch, make_env: MakeEnv
) -> None:
    from bot.core.config import DatabaseConfig
    from bot.core.ledger import Ledger, migrations

    with monkeypatch.context() as patch:
        patch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:1])
        old = await Ledger.open(DatabaseConfig(url=db_url), [])
        async with old._db.write() as conn:
            await conn.execute(
                sa.text(
                    "INSERT INTO alerts (budget, scope, scope_key, period, period_start, threshold, kind, "
                    "fraction, spent_nano_usd, limit_nano_usd, channel, created_at, attempts) VALUES "
                    "('team', 'global', '*', 'daily', :start, 0.5, 'threshold', 0.6, 6000000000, "
                    "10000000000, :channel, :start, 0)"
                ),
                {"start": T0.replace(hour=0), "channel": ALERTS},
            )
        await old.close()
    env = await make_env([budget("team", "10")])
    assert await env.runner.deliver_alerts_once() == 1
    assert "50% of its daily limit" in env.posted(ALERTS)[0]["text"]


async def test_an_alert_that_never_gets_through_is_closed_as_failed_after_its_tries(
    make_env: MakeEnv, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Slack refuses for good (``channel_not_found``): three tries, then the row leaves the queue,
    kept with the reason, logged at ERROR and counted, instead of a retry every half hour for ever."""
    env = await make_env([budget("team", "10", alert_thresholds=[0.5])], jobs={"alert_max_attempts": 3})
    gave_up: list[str] = []
    env.runner.observe_deliveries(lambda kind, ok: None, gave_up.append)
    env.api.inject("chat.postMessage", error="channel_not_found", times=10)
    await env.charge("6")
    for _ in range(3):
        assert await env.runner.deliver_alerts_once() == 0
        clock.advance(seconds=600)
    assert await undelivered_alerts(env.ledger) == []
    async with env.ledger._db.read() as conn:
        row = (await conn.execute(sa.select(alerts))).one()
    assert row.attempts == 3 and row.last_error == "failed: channel_not_found"
    assert gave_up == ["threshold"] and len(env.api.calls_to("chat.postMessage")) == 3
    assert any(
        r.levelname == "ERROR" and "given up after 3 attempts" in r.getMessage() for r in caplog.records
    )
    assert await env.runner.deliver_alerts_once() == 0 and len(env.api.calls_to("chat.postMessage")) == 3


async def test_a_budget_that_starts_refusing_posts_exhausted_once_through_slack(make_env: MakeEnv) -> None:
    """A channel budget at 88% refusing every call that needs more than is left: the channel
    hears "exhausted" once, however many calls are refused, on SQLite and PostgreSQL."""
    env = await make_env([budget("eng-channel", "0.20", scope="channel", alert_thresholds=[0.5])])
    await env.charge("0.176")
    assert await env.runner.deliver_alerts_once() == 1  # the 50% alert
    who = Principal(surface="slack", team_id="T1", user_id="bob", channel_id="C1")
    for i in range(5):
        with pytest.raises(BudgetExceededError, match="eng-channel"):
            await env.gateway.generate(who, f"hello {i}", model="gpt-4o-mini", max_tokens=100_000)
    assert await env.runner.deliver_alerts_once() == 1
    with pytest.raises(BudgetExceededError):
        await env.gateway.generate(who, "again", model="gpt-4o-mini", max_tokens=100_000)
    assert await env.runner.deliver_alerts_once() == 0
    posted = [b for b in env.posted(ALERTS) if kinds([b]) == ["exhausted"]]
    assert len(posted) == 1
    assert "eng-channel" in posted[0]["text"] and "exhausted" in posted[0]["text"]
    assert "$0.176 of $0.20" in posted[0]["text"]
