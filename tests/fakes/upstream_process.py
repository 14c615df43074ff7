"""``FakeUpstream`` in a process of its own, for measurements where its CPU must not count as ours.

In the same process, the fake's thread and the code being measured share one GIL: every time the
measured code releases it (each ``sqlite3`` statement does), the fake's thread may take it and
run for up to the switch interval before handing it back. A real upstream is never in the
gateway's process, so benchmarks run the fake here instead::

    with FakeUpstreamProcess(api_key="k") as fake:
        client = openai.AsyncOpenAI(base_url=fake.openai_base_url, api_key="k")
        fake.latency = 0.2  # seconds before every answer, as FakeUpstream.latency

Only the fake's latency can be changed from the parent (over the child's stdin); tests that
inject faults or read recorded requests use ``FakeUpstream`` in-process.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
from pathlib import Path
from types import TracebackType
from typing import IO, Self

__all__ = ["FakeUpstreamProcess"]

_ROOT = Path(__file__).resolve().parents[2]
_START_TIMEOUT_S = 30.0


class FakeUpstreamProcess:
    """A ``FakeUpstream`` served by a child Python process on ``127.0.0.1``."""

    def __init__(self, *, api_key: str | None = None) -> None:
        self.api_key = api_key
        self._process: subprocess.Popen[str] | None = None
        self._base_url = ""
        self._latency = 0.0

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` (after ``start``)."""
        return self._base_url

    @property
    def openai_base_url(self) -> str:
        """Base URL for the OpenAI SDK (``.../v1``)."""
        return self._base_url + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        """Base URL for the Anthropic SDK."""
        return self._base_url

    @property
    def latency(self) -> float:
        """Seconds the fake waits before every answer."""
        return self._latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        self._command(f"latency {float(seconds)!r}")
        self._latency = float(seconds)

    def start(self) -> Self:
        """Start the child and wait until it listens (its first line is its base URL)."""
        command = [sys.executable, "-m", "tests.fakes.upstream_process"]
        if self.api_key is not None:
            command += ["--api-key", self.api_key]
        self._process = subprocess.Popen(
            command, cwd=_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        self._base_url = self._read_line("its base URL")
        return self

    def stop(self) -> None:
        """Stop the child (closing its stdin ends it) and wait for it."""
        process, self._process = self._process, None
        if process is None:
            return
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()

    def _command(self, line: str) -> None:
        """Send one command line and wait for the child's ``ok``."""
        if self._process is None or self._process.stdin is None:
            raise RuntimeError("the fake upstream process is not running: call start() first")
        self._process.stdin.write(line + "\n")
        self._process.stdin.flush()
        answer = self._read_line(f"an answer to {line!r}")
        if answer != "ok":
            raise RuntimeError(f"the fake upstream process refused {line!r}: {answer}")

    def _read_line(self, what: str) -> str:
        """One line from the child's stdout, or an error if it exits or stays silent."""
        assert self._process is not None and self._process.stdout is not None
        stdout: IO[str] = self._process.stdout
        result: list[str] = []
        reader = threading.Thread(target=lambda: result.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(_START_TIMEOUT_S)
        if not result or not result[0]:
            raise RuntimeError(
                f"the fake upstream process did not send {what} (exit code {self._process.poll()})"
            )
        return result[0].strip()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _serve(api_key: str | None) -> None:
    """The child: serve a ``FakeUpstream`` and obey commands from stdin until it closes."""
    from tests.fakes.upstream import FakeUpstream

    with FakeUpstream(api_key=api_key) as fake:
        print(fake.base_url, flush=True)
        for line in sys.stdin:
            name, _, value = line.strip().partition(" ")
            if name == "latency":
                fake.latency = float(value)
                print("ok", flush=True)
            else:
                print(f"unknown command {name!r}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Serve a FakeUpstream until stdin closes.")
    parser.add_argument("--api-key")
    _serve(parser.parse_args().api_key)
