"""Providers through the official SDKs against the fake upstream: wire formats, retries, faults."""

from __future__ import annotations

import time

import pytest

from bot.core.config import ProviderConfig
from bot.core.errors import (
    APIKeyMissingError,
    ConfigurationError,
    ModelNotFoundError,
    ProviderConnectionError,
    ProviderError,
    RateLimitError,
)
from bot.core.factory import SessionFactory
from bot.core.pricing import Pricer
from bot.core.providers import (
    ChatRequest,
    OpenAICompatibleProvider,
    ProviderRouter,
    get_provider,
    list_providers,
)
from bot.core.types import Message, Usage
from tests.conftest import fast_config
from tests.fakes.upstream import FakeUpstream

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
HELLO = [Message("user", "hello")]


def request(model: str, *, stream: bool = False, max_tokens: int = 32) -> ChatRequest:
    async def sink(text: str) -> None:
        return None

    return ChatRequest(HELLO, model, max_tokens, on_text=sink if stream else None)


@pytest.mark.parametrize("stream", [False, True])
async def test_openai_usage_with_cache_and_reasoning(
    factory: SessionFactory, fake: FakeUpstream, stream: bool
) -> None:
    fake.cached_tokens, fake.reasoning_tokens = 3, 5
    reply = await factory.provider("openai").chat(request("o3", stream=stream))
    body = fake.requests_to(CHAT)[0].json
    assert reply.usage is not None
    assert reply.usage.input_tokens == fake.openai_prompt_tokens(body)
    assert (reply.usage.cache_read_tokens, reply.usage.reasoning_tokens) == (3, 5)
    assert body["max_completion_tokens"] == 32
    if stream:
        assert body["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("stream", [False, True])
async def test_openai_request_is_what_the_sdks_create_sends(
    factory: SessionFactory, fake: FakeUpstream, fake_env: dict[str, str], stream: bool
) -> None:
    """Our provider hands its own body to the SDK's ``post`` (no TypedDict walk): same wire request."""
    import openai

    messages = [Message("system", "Be brief."), Message("user", "Où est la gare ? 🚉")]
    sink = request("gpt-4o-mini", stream=True).on_text if stream else None
    reply = await factory.provider("openai").chat(ChatRequest(messages, "gpt-4o-mini", 32, 0.5, sink))
    kwargs: dict[str, object] = {
        "model": "gpt-4o-mini",
        "messages": [{"role": m.role, "content": m.content} for m in messages],
        "max_completion_tokens": 32,
        "temperature": 0.5,
    }
    client = openai.AsyncOpenAI(
        api_key=fake_env["OPENAI_API_KEY"], base_url=fake.openai_base_url, max_retries=0, timeout=30
    )
    async with client:
        if stream:
            chunks = await client.chat.completions.create(
                **kwargs,
                stream=True,
                stream_options={"include_usage": True},  # type: ignore[call-overload]
            )
            direct_text = "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])
        else:
            completion = await client.chat.completions.create(**kwargs)  # type: ignore[call-overload]
            direct_text = completion.choices[0].message.content
    ours, theirs = fake.requests_to(CHAT)
    assert ours.json == theirs.json
    assert (
        ours.headers["authorization"]
        == theirs.headers["authorization"]
        == f"Bearer {fake_env['OPENAI_API_KEY']}"
    )
    same = {
        "content-type",
        "accept",
        "content-length",
        "user-agent",
        "x-stainless-lang",
        "x-stainless-package-version",
    }
    assert {k: ours.headers.get(k) for k in same} == {k: theirs.headers.get(k) for k in same}
    assert set(same) <= set(ours.headers)
    assert reply.text == direct_text and reply.usage is not None and reply.finish_reason == "stop"


async def test_openai_count_matches_what_the_api_bills(factory: SessionFactory, fake: FakeUpstream) -> None:
    messages = [Message("system", "Answer in French."), Message("user", "Où est la gare ? 🚉")]
    provider = factory.provider("openai")
    counted = await provider.count_tokens(messages, "gpt-4o")
    reply = await provider.chat(ChatRequest(messages, "gpt-4o", 10))
    assert counted.exact and reply.usage is not None and counted.tokens == reply.usage.input_tokens


async def test_anthropic_counts_through_its_endpoint_then_estimates(
    factory: SessionFactory, fake: FakeUpstream
) -> None:
    provider = factory.provider("anthropic")
    counted = await provider.count_tokens(HELLO, "claude-haiku-4-5")
    assert counted.exact and counted.method == "anthropic-count-tokens"
    assert counted.tokens == fake.anthropic_input_tokens(
        fake.requests_to("/v1/messages/count_tokens")[0].json
    )
    fake.inject("server_error", path="/v1/messages/count_tokens")
    other = [Message("user", "a different prompt, so the cache does not answer")]
    estimate = await provider.count_tokens(other, "claude-haiku-4-5")
    assert not estimate.exact and estimate.method == "estimate" and estimate.tokens > 0


async def test_retry_after_is_honoured(factory: SessionFactory, fake: FakeUpstream) -> None:
    fake.inject("rate_limit", retry_after=0.3, path=CHAT)
    started = time.monotonic()
    reply = await factory.provider("openai").chat(request("gpt-4o-mini"))
    assert reply.text and len(fake.requests_to(CHAT)) == 2
    assert time.monotonic() - started >= 0.3


@pytest.mark.parametrize(
    ("kind", "error", "retried"),
    [
        ("rate_limit", RateLimitError, True),
        ("server_error", ProviderError, True),
        ("unavailable", ProviderError, True),
        ("overloaded", RateLimitError, True),
        ("drop", ProviderConnectionError, True),
        ("malformed", ProviderError, False),  # billed already: retrying would pay twice
    ],
)
@pytest.mark.parametrize(
    ("provider", "model", "path"),
    [("openai", "gpt-4o-mini", CHAT), ("anthropic", "claude-haiku-4-5", MESSAGES)],
)
async def test_persistent_faults_exhaust_retries(
    factory: SessionFactory, fake: FakeUpstream, kind: str, error: type[Exception], retried: bool,
    provider: str, model: str, path: str,
) -> None:  # fmt: skip
    fake.inject(kind, times=10, path=path)  # type: ignore[arg-type]
    with pytest.raises(error) as info:
        await factory.provider(provider).chat(request(model))
    attempts = 3 if retried else 1  # max_retries=2 in fast_config
    assert len(fake.requests_to(path)) == attempts
    assert info.value.context.get("attempts") == attempts  # type: ignore[attr-defined]
    assert "Traceback" not in str(info.value)


async def test_transient_fault_then_success(factory: SessionFactory, fake: FakeUpstream) -> None:
    fake.inject("overloaded", times=2, path=MESSAGES)
    reply = await factory.provider("anthropic").chat(request("claude-haiku-4-5", stream=True))
    assert reply.text == "Echo: hello" and len(fake.requests_to(MESSAGES)) == 3


async def test_timeout_becomes_connection_error(fake_env: dict[str, str], fake: FakeUpstream) -> None:
    config = fast_config(
        providers={"openai": {"type": "openai", "timeout_seconds": 0.2}},
        retry={"max_retries": 0},
    )
    fake.inject("slow", delay=2, path=CHAT)
    async with SessionFactory(config, env=fake_env) as factory:
        with pytest.raises(ProviderConnectionError, match="did not answer in time"):
            await factory.provider("openai").chat(request("gpt-4o-mini"))


async def test_unknown_model_upstream_and_bad_key(fake_env: dict[str, str], fake: FakeUpstream) -> None:
    fake.openai_models = ["gpt-4o"]
    async with SessionFactory(fast_config(), env=fake_env) as factory:
        with pytest.raises(ModelNotFoundError):
            await factory.provider("openai").chat(request("gpt-4o-mini"))
    async with SessionFactory(fast_config(), env={**fake_env, "OPENAI_API_KEY": "wrong"}) as factory:
        with pytest.raises(ProviderError, match="rejected the API key") as info:
            await factory.provider("openai").chat(request("gpt-4o"))
    assert "wrong" not in str(info.value)


async def test_missing_key_names_the_variable(fake: FakeUpstream) -> None:
    async with SessionFactory(fast_config(), env={}) as factory:
        with pytest.raises(APIKeyMissingError, match="ANTHROPIC_API_KEY"):
            await factory.provider("anthropic").chat(request("claude-haiku-4-5"))
        assert [p["has_key"] for p in factory.list_providers()] == [False, False]


async def test_openai_compatible_endpoint(fake: FakeUpstream) -> None:
    fake.openai_models = ["llama3.2"]
    config = fast_config(
        providers={"ollama": {"type": "openai_compatible", "base_url": fake.openai_base_url, "models": ["llama3.2"],
                              "api_key": "test-key"}},
        models={"llama3.2": {"provider": "ollama", "input_per_mtok": "0.1", "output_per_mtok": "0.2"}},
    )  # fmt: skip
    async with SessionFactory(config, env={}) as factory, factory.create() as session:
        result = await session.chat("hi", model="llama3.2", max_tokens=20)
    body = fake.requests_to(CHAT)[0].json
    assert body["max_tokens"] == 20 and "max_completion_tokens" not in body
    assert result.provider == "ollama" and result.cost_usd > 0


def test_registry_and_router(fake_env: dict[str, str]) -> None:
    assert list_providers() == ["anthropic", "openai", "openai_compatible"]
    assert get_provider("openai_compatible") is OpenAICompatibleProvider
    with pytest.raises(ConfigurationError, match="unknown provider type 'x'"):
        get_provider("x")
    with pytest.raises(ConfigurationError, match="needs a base_url"):
        OpenAICompatibleProvider(
            "vllm", ProviderConfig(type="openai_compatible"), pricer=Pricer(), retry=fast_config().retry
        )
    router = ProviderRouter(fast_config(), pricer=Pricer(), env=fake_env)
    assert router.resolve("claude-haiku-4-5").provider_name == "anthropic"
    assert router.resolve("gpt-4o-2024-08-06").provider_name == "openai"


@pytest.mark.parametrize("name", ["openai", "anthropic"])
async def test_validate_connection_and_model_info(
    factory: SessionFactory, fake: FakeUpstream, name: str
) -> None:
    provider = factory.provider(name)
    assert not provider.is_connected
    assert await provider.validate_connection() and provider.is_connected
    model = "gpt-4o-mini" if name == "openai" else "claude-haiku-4-5"
    info = await provider.get_model_info(model)
    assert info.context_window and info.input_per_mtok and info.output_per_mtok and info.priced
    assert provider.estimate_cost(model, 1000, 100) > provider.calculate_cost(model, Usage(1000, 10))
    with pytest.raises(ModelNotFoundError):
        await provider.get_model_info("no-such-model")


async def test_validate_connection_with_a_bad_key(fake_env: dict[str, str], fake: FakeUpstream) -> None:
    async with SessionFactory(fast_config(), env={**fake_env, "ANTHROPIC_API_KEY": "bad"}) as factory:
        with pytest.raises(ProviderError, match="rejected the API key"):
            await factory.provider("anthropic").validate_connection()
        assert not factory.provider("anthropic").is_connected
