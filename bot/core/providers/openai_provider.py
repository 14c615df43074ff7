"""OpenAI (Chat Completions) and OpenAI-compatible endpoints (Ollama, vLLM, Groq…), via ``openai``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from bot.core.errors import ConfigurationError, ProviderConnectionError, ProviderError
from bot.core.providers.base import ChatRequest, Provider, ProviderReply, note_response
from bot.core.providers.errors import map_sdk_error
from bot.core.providers.usage_fields import billed_usage
from bot.core.tokens import count_chat_tokens
from bot.core.types import Message, TokenCount, Usage

if TYPE_CHECKING:  # the SDK costs ~0.3 s to import: only a provider that is used loads it
    import openai

__all__ = ["OpenAICompatibleProvider", "OpenAIProvider", "usage_from_openai"]

_CHAT_PATH = "/chat/completions"
#: What ``chat.completions.create`` adds to every request besides the body: bearer-token auth.
_CHAT_OPTIONS: Any = {"security": {"bearer_auth": True}}


def usage_from_openai(raw: Any) -> Usage | None:
    """OpenAI's ``usage`` (prompt tokens *include* cached ones) as billed (``usage_fields``)."""
    return billed_usage(raw, "openai", "chat")


class OpenAIProvider(Provider):
    """OpenAI's Chat Completions API; token counts are exact offline (tiktoken)."""

    provider_type = "openai"
    key_env = "OPENAI_API_KEY"
    base_url_env = "OPENAI_BASE_URL"
    # The client imports its chat and models resources on first use, so warm_up loads them too.
    sdk_modules: tuple[str, ...] = ("openai", "openai.resources.chat.chat", "openai.resources.models")
    _client: openai.AsyncOpenAI | None = None
    _reply_types: tuple[Any, Any] = (None, None)
    """``ChatCompletion`` and ``AsyncStream[ChatCompletionChunk]``, once the SDK is loaded."""

    def _sdk(self) -> openai.AsyncOpenAI:
        if self._client is None:
            import openai
            from openai.types.chat import ChatCompletion, ChatCompletionChunk

            self._reply_types = (ChatCompletion, openai.AsyncStream[ChatCompletionChunk])

            self._client = openai.AsyncOpenAI(
                api_key=self.require_key(),
                base_url=self.base_url,
                timeout=self.config.timeout_seconds,
                max_retries=0,  # our own retry policy applies (see providers/retry.py)
                # The SDK's own client, plus a hook that notes each answer's status: a 2xx whose
                # body then breaks was billed (``Provider._with_policy``).
                http_client=openai.DefaultAsyncHttpxClient(event_hooks={"response": [note_response]}),
            )
        return self._client

    def _token_limit_param(self) -> str:
        # OpenAI's reasoning models accept only max_completion_tokens; most compatible servers
        # know only max_tokens.
        return "max_completion_tokens"

    async def chat(self, request: ChatRequest) -> ProviderReply:
        """One Chat Completions call (streamed with usage when ``on_text`` is set), with retries."""
        client = self._sdk()
        params: dict[str, Any] = {
            "model": request.model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            self._token_limit_param(): request.max_tokens,
        }
        if request.temperature is not None:
            params["temperature"] = request.temperature

        async def once() -> ProviderReply:
            if request.on_text is not None:
                return await self._stream(client, params, request)
            response = await self._post(client, params)
            choice = response.choices[0] if response.choices else None
            return ProviderReply(
                text=(choice.message.content or "") if choice else "",
                model=response.model or request.model,
                usage=usage_from_openai(response.usage),
                finish_reason=choice.finish_reason if choice else None,
            )

        return await self._with_policy(request.model, once)

    async def _post(self, client: openai.AsyncOpenAI, body: dict[str, Any]) -> Any:
        """``POST /chat/completions`` as ``client.chat.completions.create(**body)`` sends it.

        Why not ``create`` itself: before sending, it walks the body against its TypedDict
        types (key aliases, dates, files, iterables); at 50 calls in flight that walk was ~15%
        of the SDK's CPU per call (docs/benchmarks.md, "Core overhead"). Our bodies hold only
        JSON values we built ourselves (strings, ints, a float, bools), which it returns
        unchanged, so the SDK's own ``post`` gets them as they are: the same request on the
        wire, the same auth, retries, errors and parsed types
        (tests/core/test_providers.py compares both ways' requests).
        """
        completion, chunks = self._reply_types
        stream = bool(body.get("stream"))
        return await client.post(
            _CHAT_PATH,
            cast_to=completion,
            body=body,
            options=_CHAT_OPTIONS,
            stream=stream,
            stream_cls=chunks if stream else None,
        )

    async def _stream(
        self, client: openai.AsyncOpenAI, params: dict[str, Any], request: ChatRequest
    ) -> ProviderReply:
        assert request.on_text is not None
        parts: list[str] = []
        usage: Usage | None = None
        finish: str | None = None
        model = request.model
        try:
            stream = await self._post(
                client, {**params, "stream": True, "stream_options": {"include_usage": True}}
            )
            async for chunk in stream:
                model = chunk.model or model
                if chunk.usage is not None:
                    usage = usage_from_openai(chunk.usage)
                for choice in chunk.choices:
                    if choice.finish_reason:
                        finish = choice.finish_reason
                    if choice.delta and choice.delta.content:
                        parts.append(choice.delta.content)
                        await request.on_text(choice.delta.content)
            if finish is None:
                raise ProviderConnectionError(
                    "the stream ended before a finish_reason", provider=self.provider_name
                )
        except Exception as exc:
            err = map_sdk_error(
                exc, provider=self.provider_name, model=request.model, known_models=self.supported_models
            )
            if parts and isinstance(err, ProviderError):
                err.partial = ProviderReply("".join(parts), model, usage, "interrupted")
                err.no_retry = True
            raise err from exc
        return ProviderReply("".join(parts), model, usage, finish)

    async def count_tokens(self, messages: Sequence[Message], model: str) -> TokenCount:
        """Exact prompt tokens, computed offline with the bundled tiktoken encodings."""
        return TokenCount(
            count_chat_tokens(messages, self.upstream_model(model)), exact=True, method="tiktoken"
        )


class OpenAICompatibleProvider(OpenAIProvider):
    """Any endpoint speaking OpenAI's Chat Completions (Ollama, vLLM, Groq, LM Studio…).

    Its models and prices come from config; token counts are tiktoken estimates, labelled as such,
    since the server's own tokenizer is unknown.
    """

    provider_type = "openai_compatible"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self.config.base_url:
            raise ConfigurationError(
                "an openai_compatible provider needs a base_url",
                field=f"providers.{self.provider_name}.base_url",
                hint="Set it to the server's OpenAI API root, e.g. http://localhost:11434/v1 for Ollama.",
            )

    @property
    def api_key(self) -> str | None:
        """Local servers need no key; the SDK still wants a non-empty string."""
        if self.config.api_key is not None:
            return self.config.api_key.get_secret_value()
        return "not-needed"

    @property
    def base_url(self) -> str | None:
        """Only the configured base URL (OPENAI_BASE_URL belongs to the openai provider)."""
        return self.config.base_url

    def supports(self, model: str) -> bool:
        """Only the models config lists for this endpoint (a price list says nothing about it)."""
        return model in self._configured or model in self.config.models

    def _token_limit_param(self) -> str:
        return "max_tokens"

    async def count_tokens(self, messages: Sequence[Message], model: str) -> TokenCount:
        """A tiktoken estimate: the server's tokenizer is not known to us."""
        return TokenCount(
            count_chat_tokens(messages, self.upstream_model(model)), exact=False, method="tiktoken-estimate"
        )
