"""Who may make, see and revoke personal tokens, and whom a call with one charges (``bot.core.people``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.core.errors import ConfigurationError, ValidationError
from bot.core.gateway import Gateway
from bot.core.ledger import Ledger
from bot.core.people import MAX_TOKENS_PER_PERSON, TokenPermissionError, token_principal
from bot.core.redaction import redact
from bot.core.types import Principal
from tests.mcp.conftest import mcp_config

ALICE = Principal(surface="slack", team_id="T1", user_id="UALICE", channel_id="C1")
CLI = Principal.cli()


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    """A gateway with a SQLite ledger and the config clients alice and bob."""
    config = mcp_config()
    db = config.database.model_copy(update={"url": f"sqlite+aiosqlite:///{tmp_path}/people.db"})
    async with Gateway(config, ledger=await Ledger.open(db, config.budgets), env={}) as gw:
        yield gw


async def test_a_slack_user_manages_only_their_own_tokens(gateway: Gateway) -> None:
    mine = await gateway.issue_token(ALICE, name="laptop")
    assert (mine.token.team_id, mine.token.user_id, mine.token.created_by) == ("T1", "UALICE", ALICE.label)
    with pytest.raises(TokenPermissionError, match="only manage their own"):
        await gateway.issue_token(ALICE, name="x", user_id="UBOB")
    theirs = await gateway.issue_token(CLI, user_id="UBOB", team_id="T1", name="ci")
    # The same user id in another team is another person.
    other_team = await gateway.issue_token(CLI, user_id="UALICE", team_id="T2", name="elsewhere")
    assert [t.id for t in await gateway.list_tokens(ALICE)] == [mine.token.id]
    with pytest.raises(ValidationError, match="no active token of yours"):
        await gateway.revoke_token(ALICE, theirs.token.id)
    with pytest.raises(ValidationError, match="no active token of yours"):
        await gateway.revoke_token(ALICE, other_team.token.id)
    assert (await gateway.revoke_token(ALICE, mine.token.id)).name == "laptop"
    assert await gateway.check_token(mine.secret) is None and await gateway.check_token(theirs.secret)
    # The command line sees and revokes everyone's.
    assert {t.name for t in await gateway.list_tokens(CLI)} == {"ci", "elsewhere"}
    assert len(await gateway.list_tokens(CLI, include_revoked=True)) == 3
    await gateway.revoke_token(CLI, theirs.token.id)


async def test_mcp_cannot_mint_and_names_are_checked(gateway: Gateway) -> None:
    caller = Principal(surface="mcp", team_id="T1", user_id="UALICE", client_id="laptop")
    with pytest.raises(TokenPermissionError, match="over mcp"):
        await gateway.issue_token(caller, name="more")
    with pytest.raises(ValidationError, match="person is missing"):
        await gateway.issue_token(CLI, name="x")
    for bad in ("has space", "-dash", "x" * 65, "semi;colon", 'quo"te'):
        with pytest.raises(ValidationError, match="is not valid"):
            await gateway.issue_token(ALICE, name=bad)
    with pytest.raises(ValidationError, match="shared MCP client"):
        await gateway.issue_token(ALICE, name="alice")  # would charge that client's budget
    assert (await gateway.issue_token(ALICE)).token.name == "claude"  # the default name


async def test_one_person_holds_a_bounded_number_of_tokens(gateway: Gateway) -> None:
    for i in range(MAX_TOKENS_PER_PERSON):
        await gateway.issue_token(ALICE, name=f"t{i}")
    with pytest.raises(ValidationError, match="Revoke one"):
        await gateway.issue_token(ALICE, name="one-more")
    await gateway.revoke_token(ALICE, (await gateway.list_tokens(ALICE))[0].id)
    await gateway.issue_token(ALICE, name="one-more")


async def test_a_personal_tokens_calls_charge_the_person_and_the_client(gateway: Gateway) -> None:
    issued = await gateway.issue_token(ALICE, name="laptop")
    checked = await gateway.check_token(issued.secret)
    assert checked is not None
    principal = token_principal(checked)
    # The same per-user key as the person's Slack commands (and ``bot generate --user --team``).
    assert principal.scope_keys()["user"] == ALICE.scope_keys()["user"] == "T1:UALICE"
    assert principal.scope_keys()["user"] == Principal.cli("UALICE", "T1").scope_keys()["user"]
    assert principal.surface == "mcp" and principal.scope_keys()["client"] == "laptop"


async def test_without_a_ledger_tokens_are_a_clear_error(tmp_path: Path) -> None:
    async with Gateway(mcp_config(), env={}) as gateway:
        assert await gateway.check_token("gwp_" + "x" * 43) is None
        with pytest.raises(ConfigurationError, match="personal tokens cannot be made"):
            await gateway.issue_token(ALICE)


async def test_a_personal_token_is_masked_wherever_it_is_written(gateway: Gateway) -> None:
    secret = (await gateway.issue_token(ALICE)).secret
    for text in (f"token={secret}", f"Authorization: Bearer {secret}", f"'{secret}' failed"):
        assert secret not in redact(text) and secret[4:20] not in redact(text)
