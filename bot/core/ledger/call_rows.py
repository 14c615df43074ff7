"""The calls row: made from a call's record, or from a dead process's hold.

A hold carries its call's identity (``call_identity``: who, through which surface, which model),
so that when it expires with its process, the sweeper can still write the call down
(``interrupted_row``): it may have been billed, so it is charged its hold, flagged estimated.
Pure functions, no I/O: ``transactions.sweep`` uses them inside a transaction.
"""

from __future__ import annotations

import functools
import json
from datetime import datetime
from typing import Any

from bot.core.ledger.money import to_nanos
from bot.core.types import CallRecord, Principal

__all__ = ["INTERRUPTED_CODE", "call_identity", "call_row", "interrupted_row"]

#: ``error_code`` of a call written from an expired hold: its process died during the call.
INTERRUPTED_CODE = "process_died"

#: The principal's columns of a calls row, as ``call_identity`` stores them.
_WHO = ("surface", "principal", "team_id", "user_id", "channel_id", "client_id")


def call_row(record: CallRecord) -> dict[str, Any]:
    """The calls row of ``record``, by column name (checks the record's timestamp is aware)."""
    p, u = record.principal, record.usage
    if record.created_at.tzinfo is None:
        raise ValueError("CallRecord.created_at must be timezone-aware")
    return {
        "request_id": record.request_id,
        "created_at": record.created_at,
        "surface": p.surface,
        "principal": p.label,
        "team_id": p.team_id,
        "user_id": p.user_id,
        "channel_id": p.channel_id,
        "client_id": p.client_id,
        "provider": record.provider,
        "model": record.model,
        "input_tokens": u.input_tokens,
        "output_tokens": u.output_tokens,
        "cache_read_tokens": u.cache_read_tokens,
        "cache_write_tokens": u.cache_write_tokens,
        "reasoning_tokens": u.reasoning_tokens,
        "cost_nano_usd": to_nanos(record.cost_usd, what="cost_usd"),
        "cost_estimated": record.cost_estimated,
        "latency_ms": float(record.latency_ms),
        "outcome": record.outcome,
        "error_code": record.error_code,
    }


def call_identity(
    principal: Principal, provider: str, model: str, created_at: datetime, input_tokens: int = 0
) -> str:
    """What a hold keeps of its call (JSON), for ``interrupted_row``."""
    # The caller's part is the same for every call of one principal and model: made once.
    who = _who_json(principal, provider, model)
    return f'{who[:-1]},"input_tokens":{int(input_tokens)},"created_at":"{created_at.isoformat()}"}}'


@functools.lru_cache(maxsize=4096)
def _who_json(principal: Principal, provider: str, model: str) -> str:
    return json.dumps(
        {
            "surface": principal.surface,
            "principal": principal.label,
            "team_id": principal.team_id,
            "user_id": principal.user_id,
            "channel_id": principal.channel_id,
            "client_id": principal.client_id,
            "provider": provider,
            "model": model,
        },
        separators=(",", ":"),
    )


def interrupted_row(identity: str | None, request_id: str, amount: int, now: datetime) -> dict[str, Any]:
    """The calls row of a hold whose process died: outcome ``interrupted``, charged the hold.

    ``identity`` is the hold's ``call_identity`` (None on a hold made before migration 5: the
    call is then written as an unknown caller's, still charged, so the ledger shows it).
    """
    who: dict[str, Any] = json.loads(identity) if identity else {}
    created_at = datetime.fromisoformat(who["created_at"]) if "created_at" in who else now
    return {
        "request_id": request_id,
        "created_at": created_at,
        **{column: who.get(column) for column in _WHO},
        "surface": who.get("surface") or "unknown",
        "principal": who.get("principal") or "(unknown: held before the ledger kept callers)",
        "provider": who.get("provider") or "unknown",
        "model": who.get("model") or "unknown",
        "input_tokens": int(who.get("input_tokens") or 0),
        "output_tokens": 0,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
        "cost_nano_usd": amount,
        "cost_estimated": True,
        "latency_ms": max(0.0, (now - created_at).total_seconds() * 1000),
        "outcome": "interrupted",
        "error_code": INTERRUPTED_CODE,
    }
