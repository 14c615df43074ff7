"""The provider registry (types → classes) and the router (model name → provider instance)."""

from __future__ import annotations

from collections.abc import Mapping

from bot.core.config import AppConfig
from bot.core.errors import ConfigurationError, ModelNotFoundError
from bot.core.pricing import Pricer
from bot.core.providers.anthropic_provider import AnthropicProvider
from bot.core.providers.base import Provider
from bot.core.providers.openai_provider import OpenAICompatibleProvider, OpenAIProvider

__all__ = ["ProviderRouter", "get_provider", "list_providers", "register_provider"]

_REGISTRY: dict[str, type[Provider]] = {}


def register_provider(provider_type: str, cls: type[Provider]) -> None:
    """Make ``cls`` available for ``type: provider_type`` in config (built-ins register the same way)."""
    _REGISTRY[provider_type] = cls


def get_provider(provider_type: str) -> type[Provider]:
    """Return the class registered for ``provider_type``."""
    try:
        return _REGISTRY[provider_type]
    except KeyError:
        raise ConfigurationError(
            f"unknown provider type '{provider_type}'",
            hint=f"Use one of: {', '.join(list_providers())}.",
        ) from None


def list_providers() -> list[str]:
    """The provider types that can be configured."""
    return sorted(_REGISTRY)


register_provider("openai", OpenAIProvider)
register_provider("anthropic", AnthropicProvider)
register_provider("openai_compatible", OpenAICompatibleProvider)


class ProviderRouter:
    """Builds every configured provider once and finds the one serving a model."""

    def __init__(self, config: AppConfig, *, pricer: Pricer, env: Mapping[str, str] | None = None) -> None:
        self.providers: dict[str, Provider] = {}
        for name, provider_config in config.providers.items():
            if not provider_config.enabled:
                continue
            cls = get_provider(provider_config.type)
            extra = {"cache": config.cache} if cls is AnthropicProvider else {}
            self.providers[name] = cls(
                name,
                provider_config,
                pricer=pricer,
                retry=config.retry,
                models=config.models,
                env=env,
                **extra,
            )
        self._explicit = {model: c.provider for model, c in config.models.items()}

    def resolve(self, model: str) -> Provider:
        """Return the provider for ``model``: config first, then each provider's own list."""
        name = self._explicit.get(model)
        if name is not None and name in self.providers:
            return self.providers[name]
        # Self-hosted endpoints list their models explicitly, so they win over price-list guesses.
        ordered = sorted(self.providers.values(), key=lambda p: p.provider_type != "openai_compatible")
        for provider in ordered:
            if provider.supports(model):
                return provider
        known = [m for p in self.providers.values() for m in p.supported_models]
        raise ModelNotFoundError(model, provider="any", known=known)

    async def close(self) -> None:
        """Close every provider's SDK client."""
        for provider in self.providers.values():
            await provider.close()
