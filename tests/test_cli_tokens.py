"""``bot tokens`` and ``bot generate --user`` as an operator runs them: real subprocesses."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path

from bot.core.config import BudgetConfig, DatabaseConfig
from bot.core.ledger import Ledger
from bot.core.types import Principal
from tests.fakes.upstream import FakeUpstream
from tests.test_cli import run

CONFIG = """
budgets:
  - {name: per-user, scope: user, limit_usd: "5", period: monthly}
"""


def test_create_list_and_revoke_a_token(tmp_path: Path) -> None:
    env = {"BOT_PUBLIC_URL": "https://gateway.example.com/"}
    made = run(["tokens", "create", "--user", "U1", "--team", "T1", "--name", "laptop"], env, tmp_path)
    assert made.returncode == 0, made.stderr
    (secret,) = re.findall(r"^(gwp_[\w-]+)$", made.stdout, re.MULTILINE)
    line = f'claude mcp add --transport http llm-gateway https://gateway.example.com/mcp --header "Authorization: Bearer {secret}"'
    assert (
        line in made.stdout and "for T1:U1" in made.stdout and made.stderr.startswith("ledger: sqlite ")
    )  # no warning: the team was given

    listed = run(["tokens", "list", "--json"], {}, tmp_path)
    (row,) = json.loads(listed.stdout)
    assert (row["name"], row["user"], row["team"], row["revoked_at"]) == ("laptop", "U1", "T1", None)
    assert secret not in listed.stdout and "last_used_at" in row
    text = run(["tokens", "list", "--user", "U1"], {}, tmp_path).stdout
    assert row["id"] in text and "last used never" in text

    revoked = run(["tokens", "revoke", row["id"]], {}, tmp_path)
    assert revoked.returncode == 0 and "revoked 'laptop'" in revoked.stdout
    again = run(["tokens", "revoke", row["id"]], {}, tmp_path)
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "no active token" in again.stderr
    assert run(["tokens", "list", "--json"], {}, tmp_path).stdout.strip() == "[]"
    (gone,) = json.loads(run(["tokens", "list", "--all", "--json"], {}, tmp_path).stdout)
    assert gone["revoked_at"] is not None


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    for args, says in [
        (["tokens", "create", "--name", "x"], "the token's person is missing"),
        (["tokens", "create", "--user", "U1", "--name", "two words"], "is not valid"),
        (["tokens", "revoke", "nope"], "no active token with id 'nope'"),
    ]:
        done = run(args, {}, tmp_path)
        assert done.returncode == 2 and says in done.stderr and "Traceback" not in done.stderr, done.stderr
    no_team = run(["tokens", "create", "--user", "U1", "--name", "x"], {}, tmp_path)
    assert no_team.returncode == 0 and "no --team given" in no_team.stderr


async def test_generate_as_a_person_charges_their_per_user_budget(
    fake_env: dict[str, str], fake: FakeUpstream, tmp_path: Path
) -> None:
    (tmp_path / "config.yaml").write_text(CONFIG)
    env = {**fake_env, "BOT_CONFIG": str(tmp_path / "config.yaml")}
    as_flags = run(["generate", "hi", "--user", "U1", "--team", "T1", "--json"], env, tmp_path)
    as_env = run(["generate", "hi", "--json"], {**env, "BOT_USER": "U1", "BOT_TEAM": "T1"}, tmp_path)
    local = run(["generate", "hi", "--json"], env, tmp_path)
    assert as_flags.returncode == as_env.returncode == local.returncode == 0, as_flags.stderr
    costs = [Decimal(json.loads(done.stdout)["cost_usd"]) for done in (as_flags, as_env, local)]

    budgets = [BudgetConfig(name="per-user", scope="user", limit_usd=Decimal(5))]
    async with await Ledger.open(
        DatabaseConfig(url=f"sqlite+aiosqlite:///{tmp_path}/bot.db"), budgets
    ) as ledger:
        # The person's Slack commands see the two calls made as them; 'local' only its own.
        (person,) = await ledger.status(Principal(surface="slack", team_id="T1", user_id="U1"))
        (mine,) = await ledger.status(Principal.cli())
    assert (person.scope_key, person.spent) == ("T1:U1", costs[0] + costs[1])
    assert (mine.scope_key, mine.spent) == ("local", costs[2])
