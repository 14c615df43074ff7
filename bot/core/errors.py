"""The one error hierarchy of the gateway.

Every error a user can see is a ``BotError`` (or, for a database outage, ``LedgerUnavailable``,
which looks the same to a user): it carries a message that says what went wrong
*and how to fix it*, plus a ``context`` dict for logs and structured answers. Provider SDK errors
are converted to these at exactly one boundary (``bot.core.providers.errors``). A
``ProviderError``'s message and hint go through ``bot.core.redaction.redact``, since they may
quote what an upstream answered, and an upstream may echo the API key it was sent.

    BotError
    ├── ConfigurationError        bad or missing setting (names file, field and fix)
    ├── ValidationError           bad input (carries a list of problems)
    ├── AddonError                an addon hook failed
    ├── PricingError              a call could not be priced (never recorded as $0)
    ├── BudgetExceededError       a budget would be passed; nothing was called or charged
    ├── DuplicateRequestError     this request id was already used (a retried request)
    └── ProviderError             the upstream model provider failed
        ├── APIKeyMissingError    no key configured for the provider
        ├── ProviderConnectionError  network failure or timeout
        ├── RateLimitError        429 / overloaded, with ``retry_after``
        ├── ModelNotFoundError    unknown model, with close-match suggestions
        └── TokenLimitError       the prompt does not fit the model's context window

    LedgerUnavailable             the ledger's database cannot be reached; nothing was called
                                  (not a BotError, see its docstring; ``USER_ERRORS`` has both)
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from bot.core.money_text import usd
from bot.core.redaction import redact

__all__ = [
    "LEDGER_UNAVAILABLE",
    "USER_ERRORS",
    "APIKeyMissingError",
    "AddonError",
    "BotError",
    "BudgetExceededError",
    "ConfigurationError",
    "DuplicateRequestError",
    "LedgerUnavailable",
    "ModelNotFoundError",
    "PricingError",
    "ProviderConnectionError",
    "ProviderError",
    "RateLimitError",
    "TokenLimitError",
    "ValidationError",
]


class BotError(Exception):
    """Base of every error the gateway raises on purpose; ``str(err)`` is safe to show a user."""

    #: A short machine-readable code, stable across versions (used by the faces and exports).
    code = "error"

    def __init__(self, message: str, *, hint: str | None = None, **context: Any) -> None:
        self.message = message
        self.hint = hint
        self.context: dict[str, Any] = context
        super().__init__(self.__str__())

    def __str__(self) -> str:
        return f"{self.message} {self.hint}" if self.hint else self.message

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly description (code, message, hint, context)."""
        return {
            "code": self.code,
            "message": self.message,
            "hint": self.hint,
            "context": {k: _jsonable(v) for k, v in self.context.items()},
        }


class ConfigurationError(BotError):
    """A setting is missing or invalid; the message names where it came from and the fix."""

    code = "configuration"

    def __init__(
        self, message: str, *, source: str | None = None, field: str | None = None, hint: str | None = None
    ) -> None:
        where = ", ".join(p for p in (source, f"field '{field}'" if field else None) if p)
        super().__init__(f"{where}: {message}" if where else message, hint=hint, source=source, field=field)


class ValidationError(BotError):
    """User input is invalid; ``errors`` lists every problem found, not just the first."""

    code = "validation"

    def __init__(self, errors: Sequence[str], *, hint: str | None = None) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(self.errors) or "invalid input", hint=hint, errors=self.errors)


class AddonError(BotError):
    """An addon hook raised; the call was not made (before-hooks) or not altered (after-hooks)."""

    code = "addon"

    def __init__(self, addon: str, cause: BaseException) -> None:
        super().__init__(f"addon '{addon}' failed: {cause}", addon=addon)


class PricingError(BotError):
    """The gateway cannot price a model, so it refuses to run it or flags a call it could not price."""

    code = "pricing"

    def __init__(self, model: str, provider: str, *, hint: str | None = None) -> None:
        super().__init__(
            f"no price is known for model '{model}' on provider '{provider}'",
            hint=hint
            or f"add a price override under models.{model} in config (input_per_mtok, output_per_mtok).",
            model=model,
            provider=provider,
        )


class BudgetExceededError(BotError):
    """A call was refused because it could pass a budget; nothing was called and nothing charged."""

    code = "budget_exceeded"

    def __init__(
        self,
        *,
        budget: str,
        limit: Decimal,
        spent: Decimal,
        requested: Decimal,
        reserved: Decimal = Decimal(0),
        resets_at: datetime | None = None,
    ) -> None:
        self.budget = budget
        self.limit = limit
        self.spent = spent
        self.reserved = reserved
        self.requested = requested
        self.remaining = max(Decimal(0), limit - spent - reserved)
        self.resets_at = resets_at
        reset = f" It resets at {resets_at.isoformat(timespec='minutes')}." if resets_at else ""
        super().__init__(
            f"budget '{budget}' would be exceeded: this call may cost up to {usd(requested)} "
            f"but only {usd(self.remaining)} of {usd(limit)} is left.{reset}",
            hint="Lower max_tokens, shorten the prompt, pick a cheaper model, or ask an admin to raise it.",
            budget=budget,
            limit=limit,
            spent=spent,
            reserved=reserved,
            requested=requested,
            remaining=self.remaining,
            resets_at=resets_at,
        )


class DuplicateRequestError(BotError):
    """A request with this id was already made (e.g. a Slack retry): nothing was called or charged."""

    code = "duplicate_request"

    def __init__(self, request_id: str) -> None:
        super().__init__(
            f"request '{request_id}' was already received; it is not run twice",
            hint="Nothing to do: the first copy of this request is answered.",
            request_id=request_id,
        )


#: What every face tells a user while the ledger's database cannot be reached.
LEDGER_UNAVAILABLE = "the budget ledger is unreachable; no call was made; try again in a moment"


class LedgerUnavailable(Exception):
    """The ledger's database cannot be reached (refused, down, unopenable, locked past its wait).

    Raised where the database drivers fail (``bot.core.ledger.outage``). The gateway fails
    closed: a call it cannot reserve for is never made, and the user is told exactly that.
    ``cause`` names the driver's failure for operators (logs, ``/readyz``), never for users.

    It has a ``BotError``'s face (``code``, ``message``, ``hint``, ``to_dict``; ``str()`` is safe
    to show) but is deliberately *not* one: inside the core a ``BotError`` means "refused, do not
    retry", while this is a database failure that the ledger's writes retry, then journal, like
    any other. The faces show both alike: catch ``USER_ERRORS``.
    """

    code = "ledger_unavailable"

    def __init__(self, cause: str) -> None:
        self.cause = cause
        self.message = LEDGER_UNAVAILABLE + "."
        self.hint = (
            "If it lasts, tell the gateway's operator: its ledger database (BOT_DATABASE_URL) "
            "does not answer, and its /readyz says why."
        )
        self.context: dict[str, Any] = {"cause": cause}
        super().__init__(f"{self.message} {self.hint}")

    def __str__(self) -> str:
        return f"{self.message} {self.hint}"

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly description (code, message, hint, context), as ``BotError`` does."""
        return {"code": self.code, "message": self.message, "hint": self.hint, "context": dict(self.context)}


#: Every error whose ``str()`` a face shows the user as it is (a message naming the fix).
USER_ERRORS: tuple[type[Exception], ...] = (BotError, LedgerUnavailable)


class ProviderError(BotError):
    """The upstream provider failed; ``status`` is its HTTP status when there was one."""

    code = "provider"

    def __init__(
        self, message: str, *, provider: str, status: int | None = None, hint: str | None = None, **ctx: Any
    ) -> None:
        self.provider = provider
        self.status = status
        #: Set when a stream broke after the provider had produced text (and so billed tokens):
        #: the partial ``ProviderReply``, so the session can charge what was really used.
        self.partial: Any = None
        #: Set when retrying would repeat work already delivered (a stream that had started).
        self.no_retry = False
        #: Set when the provider answered 200 but the body was unreadable: it billed the call,
        #: we cannot know how much, so the session charges the worst case, flagged as estimated.
        self.billed_unknown = False
        # Masked here, so no construction site (or subclass) can forget it; the exact keys a
        # request carried are added where SDK errors are mapped (bot.core.providers.errors).
        super().__init__(
            redact(message),
            hint=None if hint is None else redact(hint),
            provider=provider,
            status=status,
            **ctx,
        )


class APIKeyMissingError(ProviderError):
    """No API key is configured for a provider that needs one."""

    code = "api_key_missing"

    def __init__(self, provider: str, env_var: str) -> None:
        super().__init__(
            f"no API key is configured for provider '{provider}'",
            provider=provider,
            hint=f"Set {env_var} in the environment or providers.{provider}.api_key in config.",
            env_var=env_var,
        )


class ProviderConnectionError(ProviderError):
    """The provider could not be reached, or did not answer in time."""

    code = "connection"


class RateLimitError(ProviderError):
    """The provider is rate limiting or overloaded; ``retry_after`` is in seconds when known."""

    code = "rate_limited"

    def __init__(
        self, message: str, *, provider: str, status: int | None = 429, retry_after: float | None = None
    ) -> None:
        self.retry_after = retry_after
        wait = f"Retry in {retry_after:g} s." if retry_after is not None else "Retry in a little while."
        super().__init__(message, provider=provider, status=status, hint=wait, retry_after=retry_after)


class ModelNotFoundError(ProviderError):
    """The model is not known; ``suggestions`` holds the closest known names."""

    code = "model_not_found"

    def __init__(self, model: str, *, provider: str, known: Iterable[str] = ()) -> None:
        self.model = model
        self.suggestions = difflib.get_close_matches(model, list(known), n=3, cutoff=0.5)
        hint = (
            f"Did you mean: {', '.join(self.suggestions)}?"
            if self.suggestions
            else "Run `bot models` to list the models you can use."
        )
        super().__init__(
            f"unknown model '{model}'", provider=provider, status=404, hint=hint, suggestions=self.suggestions
        )


class TokenLimitError(ProviderError):
    """The prompt plus the requested output does not fit the model's context window."""

    code = "token_limit"

    def __init__(self, model: str, *, provider: str, tokens: int, limit: int) -> None:
        super().__init__(
            f"the prompt needs {tokens} tokens but model '{model}' accepts at most {limit}",
            provider=provider,
            hint="Shorten the prompt or lower max_tokens, or use a model with a larger context window.",
            tokens=tokens,
            limit=limit,
        )


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return value
