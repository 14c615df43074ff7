"""``bot budget set|unset``, ``bot calls``, ``bot models --provider``, ``bot report --period today``
and the start-up check of budget keys, as a user runs them: real subprocesses, on SQLite and
PostgreSQL (issue #15)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fakes.upstream import FakeUpstream
from tests.ledger.conftest import PG_DSN, SKIP_PG, drop_ledger_tables
from tests.test_cli import run

CONFIG = """
budgets:
  - {name: company-monthly, scope: global, limit_usd: %s, period: monthly}
  - {name: per-user-daily, scope: user, limit_usd: 7, period: daily}
  - {name: tiny, scope: model, key: gpt-4o, limit_usd: 0.000001, period: daily}
"""


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def env(request: pytest.FixtureRequest, tmp_path: Path, fake_env: dict[str, str]) -> dict[str, str]:
    """The CLI's environment: the fake upstream, a config file, a clean ledger of either kind."""
    (tmp_path / "c.yaml").write_text(CONFIG % 500)
    url = f"sqlite+aiosqlite:///{tmp_path}/bot.db"
    if request.param == "postgres":
        if not PG_DSN:
            pytest.skip(SKIP_PG)
        await drop_ledger_tables(PG_DSN)
        url = PG_DSN
    return {**fake_env, "BOT_CONFIG": str(tmp_path / "c.yaml"), "BOT_DATABASE_URL": url, "USER": "ops"}


def ok(args: list[str], env: dict[str, str], tmp_path: Path) -> str:
    done = run(args, env, tmp_path)
    assert done.returncode == 0, done.stderr
    return done.stdout


def refused(args: list[str], env: dict[str, str], tmp_path: Path) -> str:
    """A user mistake: exit 2 and one line naming what was wrong and the fix, never a traceback."""
    done = run(args, env, tmp_path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    return done.stderr


def test_overrides_set_shown_unset_and_kept_across_runs(
    env: dict[str, str], tmp_path: Path, fake: FakeUpstream
) -> None:
    said = ok(["budget", "set", "per-user-daily:local", "2"], env, tmp_path)
    assert "Budget per-user-daily (user local) is now $2.00 per period (config file: $7.00)" in said
    shown = ok(["budget"], env, tmp_path)  # another process: the override is in the ledger
    assert "per-user-daily (user local)" in shown and "of $2.00" in shown
    assert "limit set by ops via cli on " in shown and "the config file says $7.00" in shown
    [mine] = [b for b in json.loads(ok(["budget", "--json"], env, tmp_path)) if b["name"] == "per-user-daily"]
    assert mine["limit"] == "2" and mine["config_limit"] == "7"
    assert (mine["override"]["set_by"], mine["override"]["set_via"]) == ("ops", "cli")

    assert "is now $1,000,000,000.00" in ok(["budget", "set", "company-monthly", "1e9"], env, tmp_path)
    (tmp_path / "c.yaml").write_text(CONFIG % 600)  # the YAML changed; the override still wins, openly
    shown = ok(["budget"], env, tmp_path)
    assert "of $1,000,000,000.00" in shown and "the config file says $600.00" in shown

    gone = json.loads(ok(["budget", "unset", "company-monthly", "--json"], env, tmp_path))
    assert gone["limit"] == "600" and gone["removed"]["set_by"] == "ops"
    assert "of $600.00" in ok(["budget"], env, tmp_path)
    assert "the override of $2.00 (set by ops via cli on" in ok(
        ["budget", "unset", "per-user-daily:local"], env, tmp_path
    )


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (
            ["budget", "set", "nope", "1"],
            ["unknown budget 'nope'", "Known budgets: company-monthly, per-user-daily"],
        ),
        (
            ["budget", "set", "per-user-daily:UBOB", "3"],
            ["no call of Slack user UBOB is recorded", "TEAM:UBOB"],
        ),
        (["budget", "set", "per-user-daily:T1:U B", "3"], ["is not a user key", "T0123ABCD:U0456EFGH"]),
        (["budget", "set", "tiny:claude-3-haiku", "3"], ["covers only model gpt-4o, not 'claude-3-haiku'"]),
        (["budget", "set", "company-monthly", "1E+10"], ["larger than any budget limit"]),
        (["budget", "set", "company-monthly", "-5"], ["must be above $0"]),
        (["budget", "unset", "per-user-daily:local"], ["has no override for local", "Its overrides: none"]),
        (["models", "--provider", "nope"], ["unknown provider 'nope'. Known providers: anthropic, openai."]),
        (["calls", "--since", "last tuesday"], ["--since 'last tuesday' is not a time", "30m, 2h, 7d"]),
    ],
)
def test_mistakes_get_one_line_with_their_fix(
    env: dict[str, str], tmp_path: Path, args: list[str], needles: list[str]
) -> None:
    line = refused(args, env, tmp_path)
    for needle in needles:
        assert needle in line, line


@pytest.mark.parametrize(
    ("budget", "needle"),
    [
        ("{name: b, scope: channel, key: '#eng', limit_usd: 1}", "give #eng's id instead"),
        ("{name: b, scope: user, key: '<@UALICE>', limit_usd: 1}", "write the id alone: 'UALICE'"),
        ("{name: b, scope: global, key: everyone, limit_usd: 1}", "a global budget has no key"),
        ("{name: b, scope: client, key: nobody, limit_usd: 1}", "no MCP client is named 'nobody'"),
        ("{name: b, scope: provider, key: azure, limit_usd: 1}", "the providers are anthropic, openai"),
        ("{name: b, scope: surface, key: web, limit_usd: 1}", "one of slack, mcp, cli, api"),
        ("{name: b, scope: global, limit_usd: 1e10}", "less than or equal to 1000000000"),
    ],
)
def test_a_configured_key_that_can_never_match_stops_start_up(
    tmp_path: Path, fake_env: dict[str, str], budget: str, needle: str
) -> None:
    (tmp_path / "c.yaml").write_text(f"budgets:\n  - {budget}\n")
    line = refused(["budget"], {**fake_env, "BOT_CONFIG": str(tmp_path / "c.yaml")}, tmp_path)
    assert needle in line and ("budgets.0" in line), line


def test_a_bare_slack_user_key_is_accepted(tmp_path: Path, fake_env: dict[str, str]) -> None:
    (tmp_path / "c.yaml").write_text(
        "budgets:\n  - {name: alice, scope: user, key: UALICE, limit_usd: 0.01}\n"
    )
    assert ok(["budget"], {**fake_env, "BOT_CONFIG": str(tmp_path / "c.yaml")}, tmp_path) is not None


def test_calls_lists_recent_calls_and_reports_count_refusals_apart(
    env: dict[str, str], tmp_path: Path, fake: FakeUpstream
) -> None:
    ok(["generate", "hello", "--model", "gpt-4o-mini"], env, tmp_path)
    no = run(["generate", "hello", "--model", "gpt-4o"], env, tmp_path)  # the tiny model budget refuses
    assert no.returncode == 2 and "budget 'tiny (model gpt-4o)' would be exceeded" in no.stderr
    rows = json.loads(ok(["calls", "--json", "--since", "today"], env, tmp_path))
    assert [(r["who"], r["kind"], r["surface"], r["model"], r["outcome"]) for r in rows] == [
        ("local", "cli_user", "cli", "gpt-4o", "refused"),
        ("local", "cli_user", "cli", "gpt-4o-mini", "ok"),
    ]
    assert rows[1]["input_tokens"] > 0 and rows[1]["cost_usd"] != "0"
    table = ok(["calls", "--user", "local"], env, tmp_path)
    assert "gpt-4o-mini" in table and "refused" in table and "$" in table
    assert "no calls by someone-else" in ok(["calls", "--user", "someone-else"], env, tmp_path)

    report = json.loads(ok(["report", "--period", "today", "--json"], env, tmp_path))
    assert (report["calls"], report["refused"]) == (1, 1)
    assert [(u["label"], u["calls"], u["refused"]) for u in report["by_user"]] == [("cli user local", 1, 1)]
    text = ok(["report", "--period", "today"], env, tmp_path)
    assert "Spend report of today so far" in text and "in 1 call, 1 refused" in text
    assert "cli user local: $" in text and "(none)" not in text
