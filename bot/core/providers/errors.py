"""The one boundary where SDK exceptions become the gateway's own errors.

Text the provider sent (an error body's message) is masked on its way into a ``ProviderError``:
``ProviderError`` itself masks secret shapes (``bot.core.redaction``), and here the exact
credentials the failed request carried (its ``Authorization`` bearer or ``x-api-key``) are
masked too, so a key of any shape that the provider echoes never reaches a user.
"""

from __future__ import annotations

import email.utils
import sys
import time
from collections.abc import Iterable
from typing import Any

import httpx2

from bot.core.errors import (
    BotError,
    ModelNotFoundError,
    ProviderConnectionError,
    ProviderError,
    RateLimitError,
)
from bot.core.redaction import redact

__all__ = ["map_sdk_error", "parse_retry_after", "sent_credentials"]

#: Request headers that carry a provider credential (OpenAI: bearer; Anthropic: x-api-key).
_CREDENTIAL_HEADERS = ("authorization", "x-api-key", "api-key")


def parse_retry_after(headers: Any) -> float | None:
    """Read ``retry-after-ms`` / ``retry-after`` (seconds or an HTTP date) from response headers."""
    if headers is None:
        return None
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def sent_credentials(exc: BaseException) -> list[str]:
    """The credentials the request behind ``exc`` carried (SDK exceptions keep their request).

    These are the configured keys themselves, read from the failed request rather than from the
    config, so whatever shape a key has, an echo of it can be masked exactly.
    """
    request = getattr(exc, "request", None)
    headers = getattr(request, "headers", None)
    if headers is None:
        return []
    found: list[str] = []
    for name in _CREDENTIAL_HEADERS:
        try:
            value = headers.get(name)
        except Exception:  # a foreign header type: nothing to learn from it
            return found
        if isinstance(value, str) and value:
            scheme, _, token = value.partition(" ")
            found.append(token.strip() if scheme.lower() == "bearer" and token.strip() else value)
    return found


def _body_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])
    return str(getattr(exc, "message", "") or exc)


def _sdk_classes(name: str) -> tuple[type[BaseException], ...]:
    """Exception class ``name`` from each SDK already imported.

    The SDKs load lazily; an SDK that was never imported cannot have raised anything, so looking
    in ``sys.modules`` keeps this mapping from importing them.
    """
    found = (getattr(sys.modules.get(m), name, None) for m in ("openai", "anthropic"))
    return tuple(cls for cls in found if isinstance(cls, type))


def map_sdk_error(
    exc: BaseException, *, provider: str, model: str, known_models: Iterable[str] = ()
) -> BotError:
    """Convert an ``openai`` or ``anthropic`` exception to our hierarchy (others pass through)."""
    if isinstance(exc, BotError):
        return exc
    credentials = sent_credentials(exc)
    if isinstance(exc, _sdk_classes("APITimeoutError")):
        return ProviderConnectionError(
            f"{provider} did not answer in time", provider=provider, hint="Retry, or raise timeout_seconds."
        )
    # Mid-stream transport failures surface from the SDKs' iterators unwrapped.
    if isinstance(exc, (*_sdk_classes("APIConnectionError"), httpx2.TransportError)):
        return ProviderConnectionError(
            f"could not reach {provider}: the connection failed or was dropped",
            provider=provider,
            hint="Check the provider's base URL and network, then retry.",
        )
    if isinstance(exc, _sdk_classes("APIStatusError")):
        status: int = getattr(exc, "status_code", 0)
        message = redact(_body_message(exc), credentials)
        if status == 429 or status == 529:
            what = "is overloaded" if status == 529 else "is rate limiting requests"
            return RateLimitError(
                f"{provider} {what}: {message}",
                provider=provider,
                status=status,
                retry_after=parse_retry_after(getattr(getattr(exc, "response", None), "headers", None)),
            )
        if status == 401:
            return ProviderError(
                f"{provider} rejected the API key: {message}",
                provider=provider,
                status=401,
                hint=f"Check {_key_var(provider)} or providers.{provider}.api_key.",
            )
        if status == 404:
            return ModelNotFoundError(model, provider=provider, known=known_models)
        if status >= 500:
            return ProviderError(
                f"{provider} failed with HTTP {status}: {message}",
                provider=provider,
                status=status,
                hint="This is on the provider's side; retry in a little while.",
            )
        return ProviderError(
            f"{provider} refused the request (HTTP {status}): {message}", provider=provider, status=status
        )
    if isinstance(exc, (*_sdk_classes("APIResponseValidationError"), ValueError)):
        # A 200 whose body is unreadable (bad JSON or SSE data): the provider did the work and
        # billed it, so a retry would pay twice.
        err = ProviderError(
            f"{provider} sent a malformed response that could not be read",
            provider=provider,
            status=200,
            hint="This is on the provider's side; the call was charged at its worst case to be safe.",
        )
        err.no_retry = err.billed_unknown = True
        return err
    if isinstance(exc, (*_sdk_classes("OpenAIError"), *_sdk_classes("AnthropicError"))):
        return ProviderError(redact(f"{provider} call failed: {exc}", credentials), provider=provider)
    raise exc


def _key_var(provider: str) -> str:
    return "ANTHROPIC_API_KEY" if provider == "anthropic" else "OPENAI_API_KEY"
