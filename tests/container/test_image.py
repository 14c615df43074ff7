"""The container image, built from this repository and run: what `docker run` users get.

Health and readiness, a real ``generate`` over MCP against the fake upstream (reached from the
container over the host's network), the non-root user, ``SIGTERM`` with a call in flight drained
and settled, the SQLite ledger on the ``/data`` volume surviving a restart, and every ``.py`` file
of the package in the image identical to the source. Skipped with the reason when no container
engine can run here (``tests/container/engine.py``); ``.ci/run`` makes them required.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx2
import pytest

from bot.core.config import BudgetConfig, DatabaseConfig
from bot.core.ledger import Ledger
from tests.conftest import API_KEY
from tests.container.engine import REPO, REQUIRED_ENV, Engine, find_engine, quiet
from tests.fakes.upstream import FakeUpstream
from tests.mcp.conftest import TOKENS, http_client
from tests.serve.conftest import free_port

CHAT = "/v1/chat/completions"
TAG = "localhost/llm-gateway:test"
CONFIG_YAML = f"""
retry: {{max_retries: 0, initial_delay_seconds: 0.01, max_delay_seconds: 0.1}}
providers:
  openai: {{type: openai, timeout_seconds: 20}}
  anthropic: {{type: anthropic, timeout_seconds: 20}}
mcp:
  clients:
    alice: {{token: "{TOKENS["alice"]}"}}
budgets:
  - {{name: everything, scope: global, limit_usd: "10", period: monthly}}
"""
#: What reads the package's sources inside the image: path under site-packages → sha256.
_HASH_SOURCES = (
    "import hashlib, json, pathlib, sysconfig\n"
    "site = pathlib.Path(sysconfig.get_path('purelib'))\n"
    "print(json.dumps({str(p.relative_to(site)): hashlib.sha256(p.read_bytes()).hexdigest()"
    " for pkg in ('bot', 'tools') for p in (site / pkg).rglob('*.py')}))"
)


@pytest.fixture(scope="module")
def engine() -> Engine:
    found = find_engine()
    if isinstance(found, str):
        if os.environ.get(REQUIRED_ENV) == "required":
            pytest.fail(f"{REQUIRED_ENV}=required, but {found}")
        pytest.skip(found)
    return found


@pytest.fixture(scope="module")
def image(engine: Engine) -> str:
    """The image, built from the work tree (layers cached by the engine between runs)."""
    started = time.monotonic()
    built = engine.build(TAG)
    assert built.returncode == 0, f"the image did not build:\n{quiet(built.stderr)[-6000:]}"
    size = int(engine.run("image", "inspect", "--format", "{{.Size}}", TAG).stdout)
    # Figures for docs/README (not asserted: they depend on the machine and the cache).
    print(f"\nimage {TAG}: {size / 1e6:.0f} MB, built in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return TAG


def test_every_python_file_in_the_image_is_the_sources(engine: Engine, image: str) -> None:
    shipped = json.loads(
        engine.run("run", "--rm", "--entrypoint", "python", image, "-c", _HASH_SOURCES).stdout
    )
    sources = {
        str(path.relative_to(REPO)): hashlib.sha256(path.read_bytes()).hexdigest()
        for package in ("bot", "tools")
        for path in (REPO / package).rglob("*.py")
    }
    assert shipped == sources
    assert os.path.getsize(REPO / "bot" / "__init__.py") > 0  # the stale 0-byte stubs of #18


@pytest.fixture
def container(engine: Engine, image: str, tmp_path: Path, fake: FakeUpstream) -> Iterator[Container]:
    """A gateway container on the host's network, MCP on, its ledger on a fresh volume; removed after."""
    config = tmp_path / "config"
    config.mkdir(mode=0o755)
    config.chmod(0o755)  # the container's user (uid 10001) must read it
    (config / "config.yaml").write_text(CONFIG_YAML)
    (config / "config.yaml").chmod(0o644)
    box = Container(engine, f"llm-gateway-test-{uuid.uuid4().hex[:8]}", free_port())
    keys = {
        "OPENAI_API_KEY": API_KEY, "OPENAI_BASE_URL": fake.openai_base_url,
        "ANTHROPIC_API_KEY": API_KEY, "ANTHROPIC_BASE_URL": fake.anthropic_base_url,
    }  # fmt: skip
    # Keys are passed by name (-e NAME), so their values are not on the command line.
    passed = [arg for name in keys for arg in ("-e", name)]
    engine.run("volume", "create", box.volume)
    try:
        engine.env.update(keys)
        engine.run(
            "run", "-d", "--name", box.name, "--network", "host", "--stop-timeout", "40",
            "-v", f"{box.volume}:/data", "-v", f"{config}:/config:ro",
            "-e", "BOT_CONFIG=/config/config.yaml", "-e", "BOT_HOST=127.0.0.1", "-e", f"BOT_PORT={box.port}",
            "-e", "BOT_SHUTDOWN_GRACE=15", *passed, image,
        )  # fmt: skip
        yield box
    finally:
        for name in keys:
            engine.env.pop(name, None)
        engine.run("rm", "-f", "-t", "0", box.name, check=False)
        engine.run("volume", "rm", "-f", box.volume, check=False)


class Container:
    """One running gateway container and the named volume holding its ledger."""

    def __init__(self, engine: Engine, name: str, port: int) -> None:
        self.engine = engine
        self.name = name
        self.volume = f"{name}-data"
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def logs(self) -> str:
        """Everything the container printed (the structured log, then stderr)."""
        done = self.engine.run("logs", self.name, check=False)
        return done.stdout + quiet(done.stderr)

    def state(self, field: str) -> str:
        """One field of ``inspect``'s ``.State`` (``Running``, ``ExitCode``)."""
        return self.engine.run("inspect", "--format", f"{{{{.State.{field}}}}}", self.name).stdout.strip()

    async def wait_ready(self, seconds: float = 90) -> None:
        """Poll ``/readyz`` until 200; fail with the logs if the container stops or time runs out."""
        deadline = time.monotonic() + seconds
        async with httpx2.AsyncClient(timeout=2) as http:
            while time.monotonic() < deadline:
                try:
                    if (await http.get(f"{self.url}/readyz")).status_code == 200:
                        return
                except httpx2.TransportError:
                    if self.state("Running") != "true":
                        pytest.fail(f"the container stopped (exit {self.state('ExitCode')}):\n{self.logs()}")
                await asyncio.sleep(0.2)
        pytest.fail(f"the container was not ready after {seconds} s:\n{self.logs()}")


async def generate(url: str, prompt: str) -> str:
    """One ``generate`` over MCP as alice; the text it returned."""
    async with http_client(url, TOKENS["alice"]) as client:
        result = await client.call_tool("generate", {"prompt": prompt, "model": "gpt-4o-mini"})
    assert result.structured_content is not None, result
    text: str = result.structured_content["text"]
    return text


async def wait_for_requests(fake: FakeUpstream, count: int, seconds: float = 30) -> None:
    """Until the fake has received ``count`` chat requests."""
    deadline = time.monotonic() + seconds
    while len(fake.requests_to(CHAT)) < count:
        assert time.monotonic() < deadline, "the call never reached the fake upstream"
        await asyncio.sleep(0.05)


async def test_the_container_serves_drains_on_sigterm_and_keeps_its_ledger(
    container: Container, engine: Engine, fake: FakeUpstream
) -> None:
    await container.wait_ready()
    async with httpx2.AsyncClient(timeout=10) as http:
        health = await http.get(f"{container.url}/healthz")
        door = await http.get(f"{container.url}/")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert door.status_code == 200 and "MCP" in door.text and API_KEY not in door.text
    if engine.is_podman:  # the image's HEALTHCHECK survived the build (--format docker)
        assert engine.run("healthcheck", "run", container.name, check=False).returncode == 0

    # Not root: the server (PID 1) runs as the image's user, uid 10001.
    assert engine.run("inspect", "--format", "{{.Config.User}}", container.name).stdout.strip() == "bot"
    status = engine.run("exec", container.name, "cat", "/proc/1/status").stdout
    assert [line.split()[1:] for line in status.splitlines() if line.startswith("Uid:")] == [["10001"] * 4]

    # A real call, from the container to the fake upstream in this process.
    assert await generate(container.url, "from a container") == "Echo: from a container"
    assert len(fake.requests_to(CHAT)) == 1

    # SIGTERM (`stop`) with a call in flight: the call finishes, then the server exits 0.
    fake.latency = 2
    async with http_client(container.url, TOKENS["alice"]) as client:
        # The client lists the tools to check a result against its schema: list them now, since a
        # request made after SIGTERM is (rightly) refused.
        await client.list_tools()
        call = asyncio.create_task(
            client.call_tool("generate", {"prompt": "in flight", "model": "gpt-4o-mini"})
        )
        await wait_for_requests(fake, 2)
        stop = asyncio.create_task(
            asyncio.to_thread(engine.run, "stop", "-t", "40", container.name, timeout=60)
        )
        result = await call
    assert result.structured_content is not None and result.structured_content["text"] == "Echo: in flight"
    await stop
    assert container.state("ExitCode") == "0", container.logs()
    logs = container.logs()
    assert "stopped cleanly" in logs and "Traceback" not in logs
    assert API_KEY not in logs and TOKENS["alice"] not in logs

    # The same container started again: its ledger on the volume still holds both calls.
    fake.latency = 0
    engine.run("start", container.name)
    await container.wait_ready()
    assert await generate(container.url, "after a restart") == "Echo: after a restart"
    engine.run("stop", "-t", "40", container.name, timeout=60)
    assert container.state("ExitCode") == "0", container.logs()

    if not engine.is_podman:
        return  # the volume's files are read from the host below, where podman keeps them
    mountpoint = engine.run(
        "volume", "inspect", "--format", "{{.Mountpoint}}", container.volume
    ).stdout.strip()
    ledger = await Ledger.open(
        DatabaseConfig(url=f"sqlite+aiosqlite:///{mountpoint}/bot.db"),
        [BudgetConfig(name="everything", limit_usd=Decimal(10))],
    )
    try:
        totals = await ledger.totals()
        (budget,) = await ledger.status_all()
    finally:
        await ledger.close()
    assert totals.calls == 3 and totals.by_outcome["ok"].calls == 3
    assert budget.spent == totals.cost_usd > 0 and budget.reserved == 0
