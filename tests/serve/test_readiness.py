"""Readiness gates on this replica only; providers are warmed and checked in the background.

``/readyz`` is 503 before start-up, while draining (``test_app.py``) and while the database is
unreachable, but stays 200 while a provider is down, reporting it in its body and in
``llm_provider_up``. The SDKs are imported off the event loop after start-up.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx2
import pytest
from sqlalchemy.engine import make_url

from bot.core.config import DatabaseConfig
from bot.core.gateway import Gateway
from bot.core.ledger import Ledger
from bot.core.pricing import Pricer
from bot.core.providers import OpenAIProvider
from bot.metrics import Metrics
from bot.readiness import CHECKING, ProviderWatch, database_status
from bot.server import build_app
from tests.conftest import API_KEY, fast_config
from tests.fakes.loopback import serve_in_loop as serve
from tests.fakes.upstream import FakeUpstream
from tests.ledger.conftest import PG_DSN, SKIP_PG
from tests.serve.conftest import free_port
from tests.serve.test_serve import metric


async def settled_readyz(http: httpx2.AsyncClient, url: str, seconds: float = 20) -> httpx2.Response:
    """Poll ``/readyz`` until no provider is still being checked; return that answer."""
    for _ in range(int(seconds / 0.05)):
        answer = await http.get(f"{url}/readyz")
        if CHECKING not in answer.json()["providers"].values():
            return answer
        await asyncio.sleep(0.05)
    raise AssertionError(f"providers still being checked after {seconds}s: {answer.text}")


async def test_readyz_stays_200_while_a_provider_is_unreachable_and_reports_it(
    fake_env: dict[str, str],
) -> None:
    # OpenAI's base URL is a loopback port nothing listens on; Anthropic is the fake and answers.
    env = {**fake_env, "OPENAI_BASE_URL": f"http://127.0.0.1:{free_port()}/v1"}
    config = fast_config()
    async with Gateway(config, env=env) as gateway:
        app, _ = build_app(gateway, config)
        async with serve(app) as url, httpx2.AsyncClient(timeout=10) as http:
            first = await http.get(f"{url}/readyz")
            settled = await settled_readyz(http, url)
            scraped = (await http.get(f"{url}/metrics")).text
    assert first.status_code == 200  # whatever the providers' state, from the start
    assert settled.status_code == 200
    body = settled.json()
    assert body["status"] == "ready" and body["checks"] == {"database": "ok"} and "not_ready" not in body
    assert body["providers"]["anthropic"] == "ok"
    assert body["providers"]["openai"].startswith("unreachable: could not reach openai")
    assert metric(scraped, "llm_provider_up", provider="openai") == 0
    assert metric(scraped, "llm_provider_up", provider="anthropic") == 1
    assert 'llm_provider_up{provider="openai"} 0.0' in scraped  # present, not merely absent
    assert API_KEY not in settled.text


async def test_providers_report_ok_against_the_fake_and_the_gauge_shows_1(
    fake_env: dict[str, str], fake: FakeUpstream
) -> None:
    async with Gateway(fast_config(), env=fake_env) as gateway:
        app, _ = build_app(gateway, gateway.config)
        async with serve(app) as url, httpx2.AsyncClient(timeout=10) as http:
            settled = await settled_readyz(http, url)
            scraped = (await http.get(f"{url}/metrics")).text
    assert settled.status_code == 200
    assert settled.json()["providers"] == {"openai": "ok", "anthropic": "ok"}
    assert metric(scraped, "llm_provider_up", provider="openai") == 1
    assert metric(scraped, "llm_provider_up", provider="anthropic") == 1
    assert len(fake.requests_to("/v1/models")) == 2  # one check each, the next only after the TTL


async def test_readyz_is_503_before_start_up(fake_env: dict[str, str]) -> None:
    async with Gateway(fast_config(), env=fake_env) as gateway:
        app, _ = build_app(gateway, gateway.config)
        # Without the lifespan the app never starts: no faces, no services, no provider watch.
        async with serve(app, lifespan="off") as url, httpx2.AsyncClient(timeout=10) as http:
            answer = await http.get(f"{url}/readyz")
    assert answer.status_code == 503
    body = answer.json()
    assert body["not_ready"] == {"server": "starting"} and body["checks"]["database"] == "ok"
    assert body["providers"] == {"openai": CHECKING, "anthropic": CHECKING}


async def test_watch_reports_an_outage_then_the_recovery(
    fake_env: dict[str, str], fake: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bot.readiness")
    fake.inject("unavailable", path="/v1/models")  # the first check gets a 503, the next an answer
    metrics = Metrics()
    async with Gateway(fast_config(), env=fake_env) as gateway:
        provider = gateway.sessions.router.providers["openai"]
        watch = ProviderWatch([provider], metrics, retry=0.05)
        seen: list[str] = []
        watch.start()
        try:
            for _ in range(400):
                status = watch.status["openai"]
                if not seen or seen[-1] != status:
                    seen.append(status)
                if status == "ok":
                    break
                await asyncio.sleep(0.01)
        finally:
            await watch.stop()
    assert seen[-1] == "ok" and any(s.startswith("unreachable: ") for s in seen), seen
    assert metrics.registry.get_sample_value("llm_provider_up", {"provider": "openai"}) == 1
    assert "provider openai unreachable" in caplog.text and "provider openai reachable" in caplog.text
    assert not [r for r in caplog.records if r.levelname == "ERROR" or r.exc_info]


class _MissingSdk(OpenAIProvider):
    """An OpenAI provider whose SDK is not installed."""

    sdk_modules = ("bot_test_no_such_sdk",)


async def test_a_failed_warm_up_is_a_status_never_a_crash(caplog: pytest.LogCaptureFixture) -> None:
    config = fast_config()
    provider = _MissingSdk(
        "openai", config.providers["openai"], pricer=Pricer(), retry=config.retry, env={"OPENAI_API_KEY": "k"}
    )
    metrics = Metrics()
    watch = ProviderWatch([provider], metrics)
    watch.start()
    try:
        for _ in range(200):
            if watch.status["openai"] != CHECKING:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
    finally:
        await watch.stop()
    status = watch.status["openai"]
    assert status.startswith("error: cannot load the SDK: ModuleNotFoundError"), status
    assert watch.warmed.is_set()  # tried, if failed: what waits for the warm-up goes on
    assert metrics.registry.get_sample_value("llm_provider_up", {"provider": "openai"}) == 0
    assert not [r for r in caplog.records if r.levelname == "ERROR" or r.exc_info]


#: Run in a fresh interpreter, where the SDK is not imported yet: warm it up while a heartbeat
#: task ticks every 10 ms, then check the provider against the fake.
_WARM_UP_SCRIPT = """
import asyncio, json, sys, time
from bot.core.config import AppConfig
from bot.core.gateway import Gateway
from bot.metrics import Metrics
from bot.readiness import ProviderWatch

async def main(base_url, key):
    before = "anthropic" in sys.modules
    config = AppConfig.from_dict({"providers": {"anthropic": {"type": "anthropic"}}})
    env = {"ANTHROPIC_API_KEY": key, "ANTHROPIC_BASE_URL": base_url}
    async with Gateway(config, env=env) as gateway:
        provider = gateway.sessions.router.providers["anthropic"]
        watch = ProviderWatch([provider], Metrics())
        ticks = []
        async def heartbeat():
            while True:
                ticks.append(time.monotonic())
                await asyncio.sleep(0.01)
        beat = asyncio.create_task(heartbeat())
        await asyncio.sleep(0.05)
        start = time.monotonic()
        warmed = await watch.warm_up(provider)
        seconds = time.monotonic() - start
        beat.cancel()
        during = [t for t in ticks if t > start]
        gaps = [b - a for a, b in zip(ticks, ticks[1:]) if b > start]
        after = "anthropic" in sys.modules
        status = await watch.check(provider)
    print(json.dumps({"before": before, "after": after, "warmed": warmed, "seconds": seconds,
                      "ticks": len(during), "max_gap": max(gaps), "status": status}))

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def test_the_sdk_is_imported_off_the_event_loop_then_the_provider_reports_ok(fake: FakeUpstream) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _WARM_UP_SCRIPT, fake.anthropic_base_url, API_KEY],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert not result["before"] and result["warmed"] and result["after"], result
    # The loop kept running while the import took its time in the worker thread.
    assert result["ticks"] >= 5 and result["max_gap"] < result["seconds"] / 2, result
    assert result["status"] == "ok"


class _TcpProxy:
    """A loopback TCP forwarder to ``host:port`` that can be cut, as when a database goes away."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.target_port = host, port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._forward, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.cut()

    async def cut(self) -> None:
        """Stop accepting and close every forwarded connection."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in self._writers:
            writer.close()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(self.host, self.target_port)
        self._writers += [writer, upstream_writer]

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except OSError:
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))


@pytest.mark.postgres
@pytest.mark.skipif(not PG_DSN, reason=SKIP_PG)
async def test_readyz_is_503_while_the_database_is_unreachable() -> None:
    assert PG_DSN is not None
    target = make_url(PG_DSN)
    async with _TcpProxy(target.host or "127.0.0.1", target.port or 5432) as proxy:
        url = target.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        ledger = await Ledger.open(DatabaseConfig(url=url), [])
        async with Gateway(fast_config(), ledger=ledger, env={}) as gateway:
            app, _ = build_app(gateway, gateway.config)
            async with serve(app) as base, httpx2.AsyncClient(timeout=10) as http:
                before = await http.get(f"{base}/readyz")
                await proxy.cut()
                during = await http.get(f"{base}/readyz")
    assert before.status_code == 200 and before.json()["checks"] == {"database": "ok"}
    assert during.status_code == 503
    not_ready = during.json()["not_ready"]
    assert set(not_ready) == {"database"} and not_ready["database"].startswith("error: "), not_ready


async def test_with_no_provider_the_warm_up_is_done_at_once() -> None:
    watch = ProviderWatch([], Metrics())
    watch.start()
    assert watch.warmed.is_set()
    await watch.stop()


async def _no_answer() -> None:
    raise OSError("connection refused\n(Background on this error at: https://sqlalche.me/e/20/e3q8)")


async def _hang() -> None:
    await asyncio.sleep(60)


async def test_readiness_pings_the_ledger_through_the_gateway(
    tmp_path: Path, fake_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = await Ledger.open(DatabaseConfig(url=f"sqlite+aiosqlite:///{tmp_path}/ledger.db"), [])
    async with Gateway(fast_config(), ledger=ledger, env=fake_env) as gateway:
        assert await database_status(gateway) == "ok"  # a real SELECT 1 on the SQLite file
        app, _ = build_app(gateway, gateway.config)
        async with serve(app) as url, httpx2.AsyncClient(timeout=10) as http:
            before = await http.get(f"{url}/readyz")
            # The database stops answering: ``Ledger.ping`` raises what the driver raised.
            monkeypatch.setattr(ledger, "ping", _no_answer)
            during = await http.get(f"{url}/readyz")
            unreachable = "error: the budget ledger is unreachable (OSError: connection refused)"
            assert await database_status(gateway) == unreachable
            monkeypatch.setattr(ledger, "ping", _hang)
            slow = await database_status(gateway, within=0.05)
            assert slow == "error: the budget ledger is unreachable (no answer within 0.05 s)"
    assert before.status_code == 200 and before.json()["checks"] == {"database": "ok"}
    assert during.status_code == 503
    assert during.json()["not_ready"] == {"database": unreachable}


async def test_a_gateway_without_a_ledger_has_no_database_to_wait_for(fake_env: dict[str, str]) -> None:
    async with Gateway(fast_config(), env=fake_env) as gateway:
        assert await database_status(gateway) == "ok"
