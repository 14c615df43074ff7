"""The single session core of the gateway: providers, tokens, prices, budgets, sessions.

Nothing here knows Slack, MCP, HTTP or the scheduler; the faces import this public API only.
"""

from bot.core.config import AppConfig, BudgetConfig, DatabaseConfig, ModelConfig, ProviderConfig
from bot.core.errors import (
    AddonError,
    APIKeyMissingError,
    BotError,
    BudgetExceededError,
    ConfigurationError,
    ModelNotFoundError,
    PricingError,
    ProviderConnectionError,
    ProviderError,
    RateLimitError,
    TokenLimitError,
    ValidationError,
)
from bot.core.factory import SessionFactory
from bot.core.monitoring import AlertManager, CostTracker, TokenMonitor
from bot.core.session import Addon, CallContext, LLMSession
from bot.core.types import CallRecord, ChatResult, Message, ModelInfo, Principal, TokenCount, Usage

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
    "CallRecord",
    "ChatResult",
    "ConfigurationError",
    "CostTracker",
    "DatabaseConfig",
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
    "SessionFactory",
    "TokenCount",
    "TokenLimitError",
    "TokenMonitor",
    "Usage",
    "ValidationError",
]
