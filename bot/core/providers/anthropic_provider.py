"""Anthropic's Messages API via the official ``anthropic`` SDK."""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from bot.core.config import CacheConfig
from bot.core.errors import ProviderConnectionError, ProviderError
from bot.core.providers.base import ChatRequest, Provider, ProviderReply, note_response
from bot.core.providers.errors import map_sdk_error
from bot.core.providers.usage_fields import billed_usage
from bot.core.tokens import ESTIMATE_FACTOR, count_text_tokens
from bot.core.types import Message, TokenCount, Usage

if TYPE_CHECKING:  # the SDK costs ~1.2 s to import: only a provider that is used loads it
    import anthropic

__all__ = ["AnthropicProvider", "usage_from_anthropic"]

log = logging.getLogger(__name__)

#: Framing tokens per message in the offline estimate (Claude's tokenizer is not public, so the
#: estimate is cl100k scaled up by ESTIMATE_FACTOR to err on the over-reserving side).
_ESTIMATE_PER_MESSAGE = 8


def usage_from_anthropic(raw: Any) -> Usage | None:
    """Anthropic's ``usage`` (input *excludes* cache reads and writes) as billed: input with
    both added, and 1-hour cache writes apart (``usage_fields``)."""
    usage = billed_usage(raw, "anthropic", "default")
    if usage is not None and usage.cache_write_1h_tokens > usage.cache_write_tokens:
        usage = replace(usage, cache_write_1h_tokens=usage.cache_write_tokens)  # never more than all writes
    return usage


def _split_system(messages: Sequence[Message]) -> tuple[str | None, list[dict[str, str]]]:
    system = "\n\n".join(m.content for m in messages if m.role == "system") or None
    return system, [{"role": m.role, "content": m.content} for m in messages if m.role != "system"]


class AnthropicProvider(Provider):
    """Claude models; counts come from the count-tokens endpoint, else a labelled estimate."""

    provider_type = "anthropic"
    key_env = "ANTHROPIC_API_KEY"
    base_url_env = "ANTHROPIC_BASE_URL"
    sdk_modules: tuple[str, ...] = ("anthropic",)  # its resources are imported with the package
    _client: anthropic.AsyncAnthropic | None = None

    def __init__(self, *args: Any, cache: CacheConfig | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._cache_config = cache or CacheConfig()
        self._counts: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def _sdk(self) -> anthropic.AsyncAnthropic:
        if self._client is None:
            import anthropic

            self._client = anthropic.AsyncAnthropic(
                api_key=self.require_key(),
                base_url=self.base_url,
                timeout=self.config.timeout_seconds,
                max_retries=0,  # our own retry policy applies (see providers/retry.py)
                # The SDK's own client, plus a hook that notes each answer's status: a 2xx whose
                # body then breaks was billed (``Provider._with_policy``).
                http_client=anthropic.DefaultAsyncHttpxClient(event_hooks={"response": [note_response]}),
            )
        return self._client

    async def chat(self, request: ChatRequest) -> ProviderReply:
        """One Messages call (streamed when ``on_text`` is set), with retries."""
        client = self._sdk()
        system, messages = _split_system(request.messages)
        params: dict[str, Any] = {
            "model": request.model,
            "messages": messages,
            "max_tokens": request.max_tokens,
        }
        if system:
            params["system"] = system
        if request.temperature is not None:
            params["temperature"] = min(request.temperature, 1.0)  # Anthropic's range is 0..1

        async def once() -> ProviderReply:
            if request.on_text is not None:
                return await self._stream(client, params, request)
            msg = await client.messages.create(**params)
            text = "".join(block.text for block in msg.content if block.type == "text")
            return ProviderReply(text, msg.model, usage_from_anthropic(msg.usage), msg.stop_reason)

        return await self._with_policy(request.model, once)

    async def _stream(
        self, client: anthropic.AsyncAnthropic, params: dict[str, Any], request: ChatRequest
    ) -> ProviderReply:
        assert request.on_text is not None
        parts: list[str] = []
        start_usage: Any = None
        output_tokens: int | None = None
        stop: str | None = None
        model = request.model
        complete = False
        try:
            stream = await client.messages.create(**params, stream=True)
            async for event in stream:
                if event.type == "message_start":
                    start_usage, model = event.message.usage, event.message.model
                elif event.type == "content_block_delta" and event.delta.type == "text_delta":
                    parts.append(event.delta.text)
                    await request.on_text(event.delta.text)
                elif event.type == "message_delta":
                    if event.usage is not None:  # absent when a proxy strips usage: estimated later
                        output_tokens = event.usage.output_tokens
                    stop = event.delta.stop_reason or stop
                elif event.type == "message_stop":
                    complete = True
            if not complete:
                raise ProviderConnectionError(
                    "the anthropic stream ended before message_stop", provider=self.provider_name
                )
        except Exception as exc:
            err = map_sdk_error(exc, provider=self.provider_name, model=request.model, known_models=())
            if isinstance(err, ProviderError) and (parts or start_usage is not None):
                # Input was billed at message_start; output so far is known only as text.
                err.partial = ProviderReply(
                    "".join(parts), model, usage_from_anthropic(start_usage), "interrupted"
                )
                err.no_retry = bool(parts)
            raise err from exc
        usage = None
        if start_usage is not None and output_tokens is not None:
            base = usage_from_anthropic(start_usage)
            assert base is not None
            usage = replace(base, output_tokens=output_tokens)
        return ProviderReply("".join(parts), model, usage, stop)

    async def count_tokens(self, messages: Sequence[Message], model: str) -> TokenCount:
        """Ask the count-tokens endpoint; if it cannot be reached, return a conservative estimate."""
        key = hashlib.sha256(repr((model, [(m.role, m.content) for m in messages])).encode()).hexdigest()
        cached = self._counts.get(key)
        if cached and time.monotonic() - cached[0] < self._cache_config.ttl_seconds:
            return TokenCount(cached[1], exact=True, method="anthropic-count-tokens")
        system, body = _split_system(messages)
        try:
            kwargs: dict[str, Any] = {"model": self.upstream_model(model), "messages": body}
            if system:
                kwargs["system"] = system
            result = await self._sdk().messages.count_tokens(**kwargs)
        except Exception as exc:
            log.info("anthropic count_tokens unavailable, estimating", extra={"reason": type(exc).__name__})
            return TokenCount(_estimate(messages), exact=False, method="estimate")
        if self._cache_config.enabled and self._cache_config.max_entries:
            self._counts[key] = (time.monotonic(), result.input_tokens)
            while len(self._counts) > self._cache_config.max_entries:
                self._counts.popitem(last=False)
        return TokenCount(result.input_tokens, exact=True, method="anthropic-count-tokens")


def _estimate(messages: Sequence[Message]) -> int:
    raw = sum(count_text_tokens(m.content, "gpt-4") + _ESTIMATE_PER_MESSAGE for m in messages)
    return math.ceil(raw * ESTIMATE_FACTOR) + _ESTIMATE_PER_MESSAGE
