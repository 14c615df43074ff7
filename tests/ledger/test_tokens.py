"""Personal MCP tokens in the ledger: stored hashed, checked, listed with last use, revoked."""

from __future__ import annotations

from datetime import UTC, datetime

from bot.core.ledger.tokens import TOKEN_PREFIX, token_hash

from .conftest import FakeClock, OpenLedger, fetch

NOW = datetime(2025, 6, 11, 15, 30, tzinfo=UTC)


async def test_a_personal_token_is_stored_hashed_checked_listed_and_revoked(open_ledger: OpenLedger) -> None:
    clock = FakeClock(NOW)
    ledger = await open_ledger([], clock=clock)
    issued = await ledger.tokens.create(user_id="UALICE", team_id="T1", name="laptop", created_by="T1:UALICE")
    other = await ledger.tokens.create(user_id="UBOB", team_id="T1", name="ci", created_by="cli:admin")
    assert issued.secret.startswith(TOKEN_PREFIX) and len(issued.secret) > 40
    # Only the hash is stored, never the token.
    rows = await fetch(ledger, "SELECT token_hash FROM api_tokens ORDER BY user_id")
    assert [r[0] for r in rows] == [token_hash(issued.secret), token_hash(other.secret)]
    assert issued.secret not in repr(await fetch(ledger, "SELECT * FROM api_tokens"))

    checked = await ledger.tokens.check(issued.secret)
    assert checked is not None and (checked.user_id, checked.team_id, checked.name) == (
        "UALICE",
        "T1",
        "laptop",
    )
    assert await ledger.tokens.check(issued.secret[:-1] + "x") is None
    assert await ledger.tokens.check("not-a-personal-token") is None
    (listed,) = await ledger.tokens.list(user_id="UALICE")
    assert listed.id == issued.token.id and listed.last_used_at == NOW  # the check was its use

    # A person revokes only their own tokens; a revoked token stops working at once here.
    assert not await ledger.tokens.revoke(other.token.id, user_id="UALICE")
    assert await ledger.tokens.revoke(issued.token.id, user_id="UALICE")
    assert not await ledger.tokens.revoke(issued.token.id)
    assert await ledger.tokens.check(issued.secret) is None
    assert await ledger.tokens.check(other.secret) is not None
    assert [t.user_id for t in await ledger.tokens.list()] == ["UBOB"]
    every = await ledger.tokens.list(include_revoked=True)
    assert sorted((t.user_id, t.active) for t in every) == [("UALICE", False), ("UBOB", True)]
