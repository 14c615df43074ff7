"""The provider interface every model provider implements (async all the way)."""

from __future__ import annotations

import importlib
import os
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from decimal import Decimal
from types import TracebackType
from typing import Any, Self

from bot.core.config import ModelConfig, ProviderConfig, RetryConfig
from bot.core.errors import APIKeyMissingError, BotError, ModelNotFoundError, ProviderError
from bot.core.pricing import Pricer
from bot.core.providers.errors import map_sdk_error
from bot.core.providers.retry import with_retries
from bot.core.types import Message, ModelInfo, TokenCount, Usage

__all__ = ["ChatRequest", "OnText", "Provider", "ProviderReply", "note_response"]

#: The statuses of the HTTP responses the current attempt received (set per attempt by
#: ``Provider._with_policy``, appended to by ``note_response``, the SDK clients' response hook).
_ANSWERED: ContextVar[list[int] | None] = ContextVar("provider_answered", default=None)


async def note_response(response: Any) -> None:
    """httpx response hook: remember that the provider answered, and with which status.

    Called when a response's headers arrive, before its body is read: so when the body then
    breaks off, we know the provider had accepted the request and done (and billed) the work.
    """
    seen = _ANSWERED.get()
    if seen is not None:
        seen.append(response.status_code)


def _billed_then_cut(err: ProviderError, provider: str) -> ProviderError:
    """The error for a 2xx reply whose body never arrived whole (no text reached the caller)."""
    cut = ProviderError(
        f"{provider}'s reply was cut off before it was complete",
        provider=provider,
        status=200,
        hint=(
            "This is on the provider's side; it answered, so it billed the call: it was charged at its"
            " worst case (estimated) and not retried, since a retry would be billed again. Try again."
        ),
    )
    cut.no_retry = cut.billed_unknown = True
    cut.context.update(err.context)
    return cut


#: Called with each piece of text as a stream produces it.
OnText = Callable[[str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One chat call as the providers see it (the model is the upstream name)."""

    messages: Sequence[Message]
    model: str
    max_tokens: int
    temperature: float | None = None
    on_text: OnText | None = None


@dataclass(frozen=True, slots=True)
class ProviderReply:
    """What a provider answered; ``usage`` is None when the provider reported none."""

    text: str
    model: str
    usage: Usage | None
    finish_reason: str | None


class Provider(ABC):
    """A model provider reached through its official SDK."""

    #: ``openai``, ``anthropic`` or ``openai_compatible``.
    provider_type: str
    #: Environment variables the SDK reads for its key and base URL.
    key_env: str = ""
    base_url_env: str = ""
    #: The SDK's modules a call needs, the package first (``warm_up`` imports them ahead of time).
    sdk_modules: tuple[str, ...] = ()
    #: The SDK client, built lazily by ``_sdk()`` (subclasses narrow the type).
    _client: Any = None

    def __init__(
        self,
        name: str,
        config: ProviderConfig,
        *,
        pricer: Pricer,
        retry: RetryConfig,
        models: Mapping[str, ModelConfig] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.provider_name = name
        self.config = config
        self.pricer = pricer
        self.retry = retry
        self._env = os.environ if env is None else env
        # Models config assigns to this provider, by the name callers use.
        self._configured = {m: c for m, c in (models or {}).items() if c.provider == name}
        self._connected = False

    # -- identity and models ---------------------------------------------------------------------

    @property
    def api_key(self) -> str | None:
        """The key from config, else from the SDK's standard variable (never logged)."""
        if self.config.api_key is not None:
            return self.config.api_key.get_secret_value()
        return self._env.get(self.key_env) or None

    @property
    def base_url(self) -> str | None:
        """The base URL from config, else from the SDK's standard variable."""
        return self.config.base_url or self._env.get(self.base_url_env) or None

    @property
    def has_key(self) -> bool:
        """True when a key is configured (or none is needed)."""
        return self.api_key is not None

    @property
    def supported_models(self) -> list[str]:
        """Model names callers may use with this provider (configured ones first)."""
        names = list(self._configured)
        names += [m for m in self.config.models if m not in names]
        names += [m for m in self.pricer.known_models(self.provider_type) if m not in names]
        return names

    @property
    def is_connected(self) -> bool:
        """True once ``validate_connection()`` succeeded."""
        return self._connected

    def supports(self, model: str) -> bool:
        """True when ``model`` is one of this provider's models (any name its price list matches)."""
        if model in self._configured or model in self.config.models:
            return True
        return self.pricer.rates(model, self.provider_type) is not None

    def upstream_model(self, model: str) -> str:
        """The name sent upstream for ``model``."""
        config = self._configured.get(model)
        return config.upstream_name if config and config.upstream_name else model

    async def get_model_info(self, model: str) -> ModelInfo:
        """Prices and limits of ``model``; raises ``ModelNotFoundError`` for an unknown one."""
        if not self.supports(model):
            raise ModelNotFoundError(model, provider=self.provider_name, known=self.supported_models)
        return self.pricer.model_info(model, self.provider_name, self.provider_type)

    async def list_models(self) -> list[ModelInfo]:
        """Every supported model with its prices."""
        return [
            self.pricer.model_info(m, self.provider_name, self.provider_type) for m in self.supported_models
        ]

    def require_key(self) -> str:
        """Return the API key or raise ``APIKeyMissingError`` naming the variable to set."""
        key = self.api_key
        if key is None:
            raise APIKeyMissingError(self.provider_name, self.key_env)
        return key

    # -- money -----------------------------------------------------------------------------------

    def estimate_cost(self, model: str, input_tokens: int, max_tokens: int) -> Decimal:
        """The worst-case cost of a call: what a budget reserves before it."""
        return self.pricer.worst_case(model, self.provider_name, self.provider_type, input_tokens, max_tokens)

    def calculate_cost(self, model: str, usage: Usage) -> Decimal:
        """The cost of the usage the provider reported."""
        return self.pricer.cost(model, self.provider_name, self.provider_type, usage)

    # -- calls -----------------------------------------------------------------------------------

    async def _with_policy(
        self, model: str, attempt: Callable[[], Awaitable[ProviderReply]]
    ) -> ProviderReply:
        """Run one SDK call under the retry policy, converting SDK errors at this one boundary."""

        async def once() -> ProviderReply:
            seen: list[int] = []
            token = _ANSWERED.set(seen)
            try:
                return await attempt()
            except Exception as exc:
                err: BotError
                if isinstance(exc, ProviderError):
                    err = exc
                else:
                    err = map_sdk_error(
                        exc, provider=self.provider_name, model=model, known_models=self.supported_models
                    )
                # Answered 2xx, then the body broke before it was whole: the provider billed
                # this attempt. Not retried (that would pay twice); charged its hold, flagged.
                if (
                    isinstance(err, ProviderError)
                    and seen
                    and 200 <= seen[-1] < 300
                    and err.partial is None
                    and not err.billed_unknown
                ):
                    raise _billed_then_cut(err, self.provider_name) from exc
                if err is exc:
                    raise
                raise err from exc
            finally:
                _ANSWERED.reset(token)

        return await with_retries(once, self.retry)

    @abstractmethod
    async def chat(self, request: ChatRequest) -> ProviderReply:
        """Make one chat call (streaming when ``request.on_text`` is set), with retries."""

    @abstractmethod
    async def count_tokens(self, messages: Sequence[Message], model: str) -> TokenCount:
        """Count the prompt tokens of ``messages`` as the provider will bill them."""

    @abstractmethod
    def _sdk(self) -> Any:
        """The official SDK's async client, built on first use (both SDKs share this surface)."""

    def warm_up(self) -> None:
        """Import the official SDK (and the parts of it a call uses) ahead of the first call.

        The SDKs are imported lazily so that an unused provider costs nothing, but the import is
        slow (``anthropic`` ~1.2 s, ``openai`` ~0.5 s) and would otherwise stall the first call.
        This blocks while importing, so run it off the event loop, e.g.
        ``await asyncio.to_thread(provider.warm_up)``: a call that starts meanwhile waits on
        Python's import lock instead of importing twice. Calling it again costs nothing. Raises
        what the import raises (``ImportError`` when the SDK is not installed). It builds no client
        and opens no connection.
        """
        for module in self.sdk_modules:
            importlib.import_module(module)

    async def validate_connection(self) -> bool:
        """List models upstream; True when the key and base URL work. Sets ``is_connected``."""
        try:
            await self._sdk().models.list()
        except Exception as exc:
            raise map_sdk_error(exc, provider=self.provider_name, model="") from exc
        self._connected = True
        return True

    async def close(self) -> None:
        """Release the SDK client's connections."""
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
