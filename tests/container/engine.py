"""The container engine the image tests drive: podman (or docker), checked before use.

``find_engine()`` returns an ``Engine`` that can build and run the image here, or the reason it
cannot (no engine on PATH, no base image, the engine unable to start a container), which the
tests turn into a skip, or into a failure when ``BOT_TEST_CONTAINER=required`` (``.ci/run`` sets it:
in CI the image must be tested). ``BOT_TEST_CONTAINER=off`` skips them on purpose.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["REPO", "REQUIRED_ENV", "Engine", "find_engine"]

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "container"
#: ``required`` (CI): an engine that cannot run fails the tests; ``off``: skip them.
REQUIRED_ENV = "BOT_TEST_CONTAINER"
#: Lines podman prints on machines without systemd (its healthcheck timers), on every command.
_NOISE = ("unable to get systemd connection", "Removing timer for container")


@dataclass(frozen=True)
class Engine:
    """A container engine command, its environment, and the base image the Dockerfile starts from."""

    command: str
    env: dict[str, str]
    base: str

    @property
    def is_podman(self) -> bool:
        """True for podman (healthchecks run on demand, volumes have a host path)."""
        return Path(self.command).name == "podman"

    def run(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``engine ARGS``; a failure raises with the engine's own words (when ``check``)."""
        done = subprocess.run(
            [self.command, *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{self.command} {' '.join(args)} exited {done.returncode}:\n{quiet(done.stderr)}"
            )
        return done

    def build(self, tag: str) -> subprocess.CompletedProcess[str]:
        """Build the repository's image as ``scripts/container build`` does (a developer's one command)."""
        env = {**self.env, "BOT_IMAGE": tag, "CONTAINER_ENGINE": self.command, "BOT_BASE_IMAGE": self.base}
        return subprocess.run(
            ["bash", str(SCRIPT), "build"], env=env, capture_output=True, text=True, timeout=1800, cwd=REPO
        )


def quiet(text: str) -> str:
    """``text`` without podman's systemd noise."""
    return "\n".join(line for line in text.splitlines() if not any(n in line for n in _NOISE))


def find_engine() -> Engine | str:
    """An engine that can run a container from the base image here, else why not."""
    if os.environ.get(REQUIRED_ENV) == "off":
        return f"{REQUIRED_ENV}=off"
    named = os.environ.get("CONTAINER_ENGINE")
    command = shutil.which(named) if named else shutil.which("podman") or shutil.which("docker")
    if not command:
        if named:
            return f"CONTAINER_ENGINE={named} is not a command on PATH"
        return "no container engine: neither podman nor docker is on PATH (scripts/container setup installs podman)"
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(REPO / "scripts" / "containers.conf"))
    env["CONTAINER_ENGINE"] = command
    base = subprocess.run(
        ["bash", str(SCRIPT), "base"], env=env, capture_output=True, text=True, timeout=30, check=True
    ).stdout.strip()
    engine = Engine(command, env, base)
    if engine.run("image", "inspect", base, check=False, timeout=60).returncode != 0:
        return f"the base image {base} is not in {command}'s storage: run scripts/container setup"
    probe = engine.run("run", "--rm", "--network", "host", base, "true", check=False, timeout=120)
    if probe.returncode != 0:
        lines = quiet(probe.stderr).strip().splitlines() or ["(no message)"]
        return f"{command} cannot run a container here: {lines[-1]}"
    return engine
