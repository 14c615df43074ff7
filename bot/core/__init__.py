"""The single session core of the gateway: providers, tokens, prices, budgets, sessions.

Nothing here knows Slack, MCP, HTTP or the scheduler; the faces import this public API only.
"""

from typing import TYPE_CHECKING, Any

from bot.core.config import AppConfig, BudgetConfig, DatabaseConfig, ModelConfig, ProviderConfig
from bot.core.errors import (
    AddonError,
    APIKeyMissingError,
    BotError,
    BudgetExceededError,
    ConfigurationError,
    DuplicateRequestError,
    ModelNotFoundError,
    PricingError,
    ProviderConnectionError,
    ProviderError,
    RateLimitError,
    TokenLimitError,
    ValidationError,
)
from bot.core.monitoring import AlertManager, CostTracker, TokenMonitor
from bot.core.redaction import Redactor, redact
from bot.core.types import CallRecord, ChatResult, Message, ModelInfo, Principal, TokenCount, Usage

if TYPE_CHECKING:
    from bot.core.factory import SessionFactory
    from bot.core.pipeline import Addon
    from bot.core.session import CallContext, CallObserver, LLMSession

# The provider SDKs take ~2 s to import; names that need them load on first use, so that
# `import bot.core.ledger` (or the CLI's --help) stays fast.
_LAZY = {
    "SessionFactory": "bot.core.factory",
    "Addon": "bot.core.pipeline",
    "CallContext": "bot.core.session",
    "CallObserver": "bot.core.session",
    "LLMSession": "bot.core.session",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bot.core' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "APIKeyMissingError",
    "Addon",
    "AddonError",
    "AlertManager",
    "AppConfig",
    "BotError",
    "BudgetConfig",
    "BudgetExceededError",
    "CallContext",
    "CallObserver",
    "CallRecord",
    "ChatResult",
    "ConfigurationError",
    "CostTracker",
    "DatabaseConfig",
    "DuplicateRequestError",
    "LLMSession",
    "Message",
    "ModelConfig",
    "ModelInfo",
    "ModelNotFoundError",
    "PricingError",
    "Principal",
    "ProviderConfig",
    "ProviderConnectionError",
    "ProviderError",
    "RateLimitError",
    "Redactor",
    "SessionFactory",
    "TokenCount",
    "TokenLimitError",
    "TokenMonitor",
    "Usage",
    "ValidationError",
    "redact",
]
