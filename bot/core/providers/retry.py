"""Retry with exponential backoff that honours ``Retry-After``.

We retry ourselves (the SDKs get ``max_retries=0``) so that one policy, from config, governs every
provider, and so a stream is never retried once text has reached the caller.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from bot.core.config import RetryConfig
from bot.core.errors import ProviderConnectionError, ProviderError, RateLimitError

__all__ = ["is_retryable", "retry_delay", "with_retries"]

T = TypeVar("T")
log = logging.getLogger(__name__)


def is_retryable(err: ProviderError) -> bool:
    """Rate limits, overloads, 5xx and connection failures are worth another try; 4xx are not."""
    if getattr(err, "no_retry", False):
        return False
    if isinstance(err, (RateLimitError, ProviderConnectionError)):
        return True
    return err.status is not None and err.status >= 500


def retry_delay(policy: RetryConfig, attempt: int, err: ProviderError) -> float:
    """Seconds to wait before retry ``attempt`` (1-based): Retry-After if given, else backoff with jitter."""
    retry_after = getattr(err, "retry_after", None)
    if retry_after is not None:
        return float(min(retry_after, policy.max_delay_seconds))
    backoff = policy.initial_delay_seconds * policy.multiplier ** (attempt - 1)
    # Full jitter up to 25% keeps replicas that failed together from retrying together.
    return float(min(policy.max_delay_seconds, backoff * (1 + random.random() * 0.25)))


async def with_retries(
    call: Callable[[], Awaitable[T]],
    policy: RetryConfig,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """Run ``call`` until it succeeds, fails for good, or ``policy.max_retries`` retries are used."""
    attempt = 0
    while True:
        try:
            return await call()
        except ProviderError as err:
            attempt += 1
            if attempt > policy.max_retries or not is_retryable(err):
                err.context["attempts"] = attempt
                raise
            delay = retry_delay(policy, attempt, err)
            log.warning(
                "provider call failed, retrying",
                extra={"provider": err.provider, "status": err.status, "attempt": attempt, "delay_s": delay},
            )
            await sleep(delay)
