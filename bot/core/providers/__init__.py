"""Model providers reached through their official SDKs, and the registry that builds them."""

from bot.core.providers.anthropic_provider import AnthropicProvider
from bot.core.providers.base import ChatRequest, OnText, Provider, ProviderReply
from bot.core.providers.openai_provider import OpenAICompatibleProvider, OpenAIProvider
from bot.core.providers.registry import ProviderRouter, get_provider, list_providers, register_provider

__all__ = [
    "AnthropicProvider",
    "ChatRequest",
    "OnText",
    "OpenAICompatibleProvider",
    "OpenAIProvider",
    "Provider",
    "ProviderReply",
    "ProviderRouter",
    "get_provider",
    "list_providers",
    "register_provider",
]
