"""Plain value types shared by the whole core: messages, usage, results, principals, call records."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

__all__ = [
    "CallRecord",
    "ChatResult",
    "Message",
    "ModelInfo",
    "Outcome",
    "Principal",
    "Surface",
    "TokenCount",
    "Usage",
    "new_request_id",
]

Surface = Literal["slack", "mcp", "cli", "api"]
Outcome = Literal["ok", "refused", "error", "cancelled", "interrupted"]
Role = Literal["system", "user", "assistant"]


def new_request_id() -> str:
    """Return a fresh, unique request id (also the idempotency key of a ledger row)."""
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message."""

    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class Usage:
    """Token usage of one call, in the shape ``genai-prices`` prices.

    ``input_tokens`` is the *whole* prompt, cache reads and writes included (OpenAI's
    ``prompt_tokens``; for Anthropic, ``input_tokens + cache_read + cache_creation``).
    ``output_tokens`` includes ``reasoning_tokens``, as OpenAI bills them.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    #: Of ``cache_write_tokens``, those written to a 1-hour cache (Anthropic prices them at 2x
    #: input, the 5-minute ones at 1.25x).
    cache_write_1h_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_read_tokens + other.cache_read_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
            self.cache_write_1h_tokens + other.cache_write_1h_tokens,
        )

    def to_dict(self) -> dict[str, int]:
        """Return the counts as a plain dict (with ``total_tokens``)."""
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "cache_write_1h_tokens": self.cache_write_1h_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass(frozen=True, slots=True)
class TokenCount:
    """A token count and how it was obtained; ``exact`` is False for an estimate."""

    tokens: int
    exact: bool
    method: str


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What callers may know about a model: prices per million tokens and its limits."""

    name: str
    provider: str
    context_window: int | None
    max_output_tokens: int | None
    input_per_mtok: Decimal | None
    output_per_mtok: Decimal | None
    cache_read_per_mtok: Decimal | None = None
    cache_write_per_mtok: Decimal | None = None
    price_source: str = "genai-prices"

    @property
    def priced(self) -> bool:
        """True when both the input and the output price are known."""
        return self.input_per_mtok is not None and self.output_per_mtok is not None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly dict (prices as strings to keep them exact)."""

        def money(v: Decimal | None) -> str | None:
            return None if v is None else str(v)

        return {
            "name": self.name,
            "provider": self.provider,
            "context_window": self.context_window,
            "max_output_tokens": self.max_output_tokens,
            "input_per_mtok": money(self.input_per_mtok),
            "output_per_mtok": money(self.output_per_mtok),
            "cache_read_per_mtok": money(self.cache_read_per_mtok),
            "cache_write_per_mtok": money(self.cache_write_per_mtok),
            "price_source": self.price_source,
        }


@dataclass(slots=True)
class ChatResult:
    """The answer to one chat call, priced from the usage the provider reported."""

    text: str
    model: str
    provider: str
    usage: Usage
    cost_usd: Decimal
    latency_ms: float
    request_id: str
    finish_reason: str | None = None
    #: True when the provider sent no usage and the cost is our conservative estimate.
    cost_estimated: bool = False
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly dict."""
        return {
            "text": self.text,
            "model": self.model,
            "provider": self.provider,
            "usage": self.usage.to_dict(),
            "cost_usd": str(self.cost_usd),
            "latency_ms": round(self.latency_ms, 3),
            "request_id": self.request_id,
            "finish_reason": self.finish_reason,
            "cost_estimated": self.cost_estimated,
            "dry_run": self.dry_run,
        }


@dataclass(frozen=True, slots=True)
class Principal:
    """Who makes a call; every budget whose scope matches one of its keys is charged.

    Scope keys: ``global``; ``surface`` (slack/mcp/cli); ``team``; ``user`` (``team:user`` for Slack);
    ``channel``; ``client`` (a named MCP client).
    """

    surface: Surface
    user_id: str | None = None
    team_id: str | None = None
    channel_id: str | None = None
    client_id: str | None = None

    @classmethod
    def cli(cls, user: str = "local", team: str | None = None) -> Principal:
        """The principal of a command-line call: ``local``, or a person (``--user``/``--team``),
        whose per-user budget (``team:user``) is then charged as their Slack and MCP calls are."""
        return cls(surface="cli", user_id=user, team_id=team or None)

    @property
    def label(self) -> str:
        """A short human-readable name for logs and ledger rows."""
        parts: list[str] = [self.surface]
        for key in ("team_id", "user_id", "channel_id", "client_id"):
            value = getattr(self, key)
            if value:
                parts.append(f"{key.removesuffix('_id')}={value}")
        return " ".join(parts)

    def scope_keys(self) -> dict[str, str]:
        """Return ``{scope kind: key}`` for every scope this principal belongs to."""
        keys = {"global": "*", "surface": self.surface}
        if self.team_id:
            keys["team"] = self.team_id
        if self.user_id:
            keys["user"] = f"{self.team_id}:{self.user_id}" if self.team_id else self.user_id
        if self.channel_id:
            keys["channel"] = self.channel_id
        if self.client_id:
            keys["client"] = self.client_id
        return keys


@dataclass(slots=True)
class CallRecord:
    """One ledger row: a call made, refused, failed or cancelled, with what it cost."""

    request_id: str
    principal: Principal
    provider: str
    model: str
    outcome: Outcome
    usage: Usage = field(default_factory=Usage)
    cost_usd: Decimal = Decimal(0)
    latency_ms: float = 0.0
    cost_estimated: bool = False
    error_code: str | None = None
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
