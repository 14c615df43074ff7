"""``/metrics`` behind ``BOT_METRICS_TOKEN``: it names clients and budget keys, so it can be closed."""

from __future__ import annotations

from pathlib import Path

import httpx2

from tests.fakes.upstream import FakeUpstream
from tests.serve.conftest import run_to_exit, serve_env, start
from tests.serve.test_body_limits import assert_clean_log

TOKEN = "metrics-token-0123456789abcdef"


def test_metrics_needs_its_token_when_one_is_set(
    tmp_path: Path, fake_env: dict[str, str], fake: FakeUpstream
) -> None:
    env = serve_env(tmp_path, fake_env, None)
    env["BOT_METRICS_TOKEN"] = TOKEN
    served = start(tmp_path, env)
    try:
        served.wait_ready()
        url = f"{served.url}/metrics"
        answers = {
            "none": httpx2.get(url, timeout=10),
            "wrong": httpx2.get(url, headers={"Authorization": "Bearer " + "x" * len(TOKEN)}, timeout=10),
            "prefix": httpx2.get(url, headers={"Authorization": f"Bearer {TOKEN[:-1]}"}, timeout=10),
            "basic": httpx2.get(url, headers={"Authorization": f"Basic {TOKEN}"}, timeout=10),
            "right": httpx2.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10),
        }
        health = httpx2.get(f"{served.url}/readyz", timeout=10)  # health stays open to the balancer
    finally:
        served.stop()
    for name in ("none", "wrong", "prefix", "basic"):
        refused = answers[name]
        assert refused.status_code == 401, name
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert "BOT_METRICS_TOKEN" in refused.json()["hint"] and "llm_" not in refused.text
    assert answers["right"].status_code == 200 and "llm_ledger_up" in answers["right"].text
    assert health.status_code == 200
    logs = served.logs()
    assert TOKEN not in logs and TOKEN[:-1] not in logs
    assert "/metrics behind BOT_METRICS_TOKEN" in logs  # the start-up line says so
    assert_clean_log(served)


def test_metrics_stays_open_without_a_token(
    tmp_path: Path, fake_env: dict[str, str], fake: FakeUpstream
) -> None:
    served = start(tmp_path, serve_env(tmp_path, fake_env, None))
    try:
        served.wait_ready()
        assert httpx2.get(f"{served.url}/metrics", timeout=10).status_code == 200
    finally:
        served.stop()
    assert "/metrics open" in served.logs()


def test_a_short_metrics_token_stops_start_up(tmp_path: Path, fake_env: dict[str, str]) -> None:
    env = serve_env(tmp_path, fake_env, None)
    env["BOT_METRICS_TOKEN"] = "short"
    done = run_to_exit(tmp_path, env)
    assert done.returncode == 2
    assert "BOT_METRICS_TOKEN must have at least 16 characters" in done.stderr
    assert "Traceback" not in done.stderr
