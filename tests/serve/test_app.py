"""``build_app`` in process: services follow the lifespan, and a drain makes readiness 503 at once."""

from __future__ import annotations

import httpx2

from bot.core.gateway import Gateway
from bot.server import build_app
from tests.conftest import fast_config
from tests.fakes.loopback import serve_in_loop as serve
from tests.fakes.upstream import FakeUpstream


class Recorder:
    """A service that notes when it is started and stopped."""

    def __init__(self, name: str, events: list[str]) -> None:
        self.name = name
        self.events = events

    async def start(self) -> None:
        """Note the start."""
        self.events.append(f"start {self.name}")

    async def stop(self) -> None:
        """Note the stop."""
        self.events.append(f"stop {self.name}")


async def test_services_start_with_the_app_and_stop_in_reverse(
    fake_env: dict[str, str], fake: FakeUpstream
) -> None:
    events: list[str] = []
    async with Gateway(fast_config(), env=fake_env) as gateway:
        app, state = build_app(
            gateway, gateway.config, services=[Recorder("a", events), Recorder("b", events)]
        )
        async with serve(app) as url, httpx2.AsyncClient(timeout=10) as http:
            assert events == ["start a", "start b"]
            ready = await http.get(f"{url}/readyz")
            await state.drain()
            draining = await http.get(f"{url}/readyz")
            refused = await http.post(f"{url}/mcp", json={})
            alive = await http.get(f"{url}/healthz")
    assert events == ["start a", "start b", "stop b", "stop a"]
    assert ready.status_code == 200
    assert draining.status_code == 503 and draining.json()["not_ready"] == {"server": "shutting down"}
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert alive.status_code == 200
