"""Tests of the fake upstream server itself, driven through the official OpenAI and Anthropic SDKs."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anthropic
import httpx2
import openai
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.fakes.upstream_openai import encoding

KEY = "test-key"
CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
GPT = "gpt-4o"
CLAUDE = "claude-sonnet-4-6"
USER: Any = [{"role": "user", "content": "Hello there, how are you?"}]
# The OpenAI cookbook's example ("How to count tokens with tiktoken"); the API billed 129 prompt tokens
# for gpt-3.5-turbo / gpt-4 (cl100k_base) and 124 for gpt-4o / gpt-4o-mini (o200k_base).
COOKBOOK: Any = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate jargon "
        "into plain English.",
    },
    {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more time to touch base on opportunities for "
        "increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client deliverable.",
    },
]


@pytest.fixture(scope="module")
def server() -> Iterator[FakeUpstream]:
    with FakeUpstream(api_key=KEY) as upstream:
        yield upstream


@pytest.fixture(autouse=True)
def _clean(server: FakeUpstream) -> None:
    server.reset()


@pytest.fixture
async def oai(server: FakeUpstream) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=server.openai_base_url, api_key=KEY, max_retries=0)
    yield client
    await client.close()


@pytest.fixture
async def ant(server: FakeUpstream) -> AsyncIterator[anthropic.AsyncAnthropic]:
    client = anthropic.AsyncAnthropic(base_url=server.anthropic_base_url, api_key=KEY, max_retries=0)
    yield client
    await client.close()


def o200k(text: str) -> int:
    return len(encoding("o200k_base").encode(text))


def cl100k(text: str) -> int:
    return len(encoding("cl100k_base").encode(text))


async def chat(client: openai.AsyncOpenAI, **kw: Any) -> Any:
    """Create a chat completion; for ``stream=True`` return the list of chunks."""
    kw.setdefault("model", GPT)
    kw.setdefault("messages", USER)
    result = await client.chat.completions.create(**kw)
    return [c async for c in result] if kw.get("stream") else result


async def message(client: anthropic.AsyncAnthropic, **kw: Any) -> Any:
    """Create a message; for ``stream=True`` return the list of raw events."""
    kw.setdefault("model", CLAUDE)
    kw.setdefault("messages", USER)
    kw.setdefault("max_tokens", 100)
    result = await client.messages.create(**kw)
    return [e async for e in result] if kw.get("stream") else result


# --------------------------------------------------------------------------- lifecycle
def test_urls_and_sync_context_manager() -> None:
    upstream = FakeUpstream()
    with upstream:
        assert upstream.base_url == f"http://127.0.0.1:{upstream.port}"
        assert upstream.openai_base_url == upstream.base_url + "/v1"
        assert upstream.anthropic_base_url == upstream.base_url
    with pytest.raises(RuntimeError):
        _ = upstream.base_url


async def test_async_context_manager_accepts_any_key_without_api_key() -> None:
    async with FakeUpstream() as upstream:
        client = openai.AsyncOpenAI(base_url=upstream.openai_base_url, api_key="whatever", max_retries=0)
        reply = await chat(client)
        await client.close()
    assert reply.choices[0].message.content == "Echo: Hello there, how are you?"


# --------------------------------------------------------------------------- OpenAI
async def test_openai_prompt_tokens_match_cookbook_counts(
    server: FakeUpstream, oai: openai.AsyncOpenAI
) -> None:
    for model, billed in [("gpt-4o", 124), ("gpt-4o-mini", 124), ("gpt-4", 129), ("gpt-3.5-turbo", 129)]:
        reply = await chat(oai, model=model, messages=COOKBOOK)
        assert reply.usage.prompt_tokens == billed
        assert server.openai_prompt_tokens({"model": model, "messages": COOKBOOK}) == billed


async def test_openai_non_streaming(server: FakeUpstream, oai: openai.AsyncOpenAI) -> None:
    messages = [{"role": "system", "content": "Be brief."}, *USER]
    reply = await chat(oai, messages=messages)
    text = "Echo: Hello there, how are you?"
    assert reply.object == "chat.completion" and reply.model == GPT
    assert reply.choices[0].message.content == text
    assert reply.choices[0].finish_reason == "stop"
    usage = reply.usage
    # 3 priming + (3 + "system" + "Be brief.") + (3 + "user" + content)
    assert usage.prompt_tokens == 3 + (3 + 1 + 3) + (3 + 1 + 7) == 21
    assert usage.completion_tokens == o200k(text)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details.cached_tokens == 0
    assert usage.completion_tokens_details.reasoning_tokens == 0


async def test_openai_cached_and_reasoning_tokens(server: FakeUpstream, oai: openai.AsyncOpenAI) -> None:
    server.cached_tokens, server.reasoning_tokens = 5, 7
    usage = (await chat(oai, model="o3")).usage
    assert usage.prompt_tokens_details.cached_tokens == 5
    assert usage.completion_tokens_details.reasoning_tokens == 7
    assert usage.completion_tokens == o200k("Echo: Hello there, how are you?") + 7
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


async def test_openai_max_tokens_truncates(server: FakeUpstream, oai: openai.AsyncOpenAI) -> None:
    server.reply_text = "one two three four five six"
    reply = await chat(oai, max_completion_tokens=3)
    assert reply.choices[0].message.content == "one two three"
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 3
    legacy = await chat(oai, model="gpt-4", max_tokens=2)
    assert legacy.choices[0].message.content == "one two" and legacy.usage.completion_tokens == 2


async def test_openai_streaming_with_usage(server: FakeUpstream, oai: openai.AsyncOpenAI) -> None:
    server.cached_tokens = 4
    full = await chat(oai)
    chunks = await chat(oai, stream=True, stream_options={"include_usage": True})
    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content) >= 3
    assert "".join(content) == full.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage == full.usage
    assert all(c.usage is None for c in chunks[:-1])
    plain = await chat(oai, stream=True)
    assert all(c.usage is None for c in plain) and plain[-1].choices[0].finish_reason == "stop"


async def test_openai_stream_splits_unicode_cleanly(server: FakeUpstream, oai: openai.AsyncOpenAI) -> None:
    server.reply_text = "Grüße 👋🏽 日本語のテキスト — ok"
    chunks = await chat(oai, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == server.reply_text


async def test_openai_omit_usage_and_no_usage_fault(server: FakeUpstream, oai: openai.AsyncOpenAI) -> None:
    server.inject("no_usage")
    assert (await chat(oai)).usage is None
    assert (await chat(oai)).usage is not None  # the fault applied once
    server.omit_usage = True
    chunks = await chat(oai, stream=True, stream_options={"include_usage": True})
    assert all(c.usage is None and c.choices for c in chunks)


# --------------------------------------------------------------------------- Anthropic
async def test_anthropic_non_streaming(server: FakeUpstream, ant: anthropic.AsyncAnthropic) -> None:
    server.cached_tokens, server.cache_write_tokens = 11, 13
    body = {"model": CLAUDE, "system": "Be brief.", "messages": USER, "max_tokens": 100}
    msg = await message(ant, system="Be brief.")
    text = "Echo: Hello there, how are you?"
    assert msg.type == "message" and msg.role == "assistant" and msg.model == CLAUDE
    assert msg.content[0].type == "text" and msg.content[0].text == text
    assert msg.stop_reason == "end_turn"
    assert (
        msg.usage.input_tokens
        == server.anthropic_input_tokens(body)
        == cl100k("Be brief.") + 4 + cl100k(USER[0]["content"])
    )
    assert msg.usage.cache_read_input_tokens == 11
    assert msg.usage.cache_creation_input_tokens == 13
    assert msg.usage.output_tokens == cl100k(text)


async def test_anthropic_max_tokens_truncates(server: FakeUpstream, ant: anthropic.AsyncAnthropic) -> None:
    server.reply_text = "one two three four five six"
    msg = await message(ant, max_tokens=2)
    assert (
        msg.content[0].text == "one two" and msg.stop_reason == "max_tokens" and msg.usage.output_tokens == 2
    )


async def test_anthropic_streaming_events(server: FakeUpstream, ant: anthropic.AsyncAnthropic) -> None:
    server.cached_tokens, server.cache_write_tokens = 3, 2
    full = await message(ant)
    events = await message(ant, stream=True)
    types = [e.type for e in events]
    assert types[:2] == ["message_start", "content_block_start"]
    assert types[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    deltas = [e.delta.text for e in events if e.type == "content_block_delta"]
    assert len(deltas) >= 3 and "".join(deltas) == full.content[0].text
    start = events[0].message.usage
    assert (start.input_tokens, start.cache_read_input_tokens, start.cache_creation_input_tokens) == (
        full.usage.input_tokens,
        3,
        2,
    )
    end = events[-2]
    assert end.delta.stop_reason == "end_turn" and end.usage.output_tokens == full.usage.output_tokens


async def test_anthropic_stream_helper_final_message(
    server: FakeUpstream, ant: anthropic.AsyncAnthropic
) -> None:
    server.cached_tokens = 6
    full = await message(ant)
    async with ant.messages.stream(model=CLAUDE, max_tokens=100, messages=USER) as stream:
        final: Any = await stream.get_final_message()
    assert final.content[0].text == full.content[0].text
    assert final.usage.output_tokens == full.usage.output_tokens
    assert final.usage.input_tokens == full.usage.input_tokens
    assert final.usage.cache_read_input_tokens == 6


async def test_anthropic_omit_usage(server: FakeUpstream, ant: anthropic.AsyncAnthropic) -> None:
    server.omit_usage = True
    assert (await message(ant)).usage is None
    events = await message(ant, stream=True)
    assert events[0].message.usage is None
    assert next(e for e in events if e.type == "message_delta").usage is None


async def test_count_tokens(server: FakeUpstream, ant: anthropic.AsyncAnthropic) -> None:
    blocks = [{"type": "text", "text": "Part one. "}, {"type": "text", "text": "Part two."}]
    messages: Any = [*USER, {"role": "assistant", "content": "Fine."}, {"role": "user", "content": blocks}]
    counted = await ant.messages.count_tokens(model=CLAUDE, system="Sys", messages=messages)
    expected = (
        cl100k("Sys") + 3 * 4 + cl100k(USER[0]["content"]) + cl100k("Fine.") + cl100k("Part one. Part two.")
    )
    assert counted.input_tokens == expected
    assert counted.input_tokens == server.anthropic_input_tokens({"system": "Sys", "messages": messages})
    msg = await message(ant, system="Sys", messages=messages)
    assert msg.usage.input_tokens == expected


# --------------------------------------------------------------------------- models, 404, 401
async def test_models_lists(
    server: FakeUpstream, oai: openai.AsyncOpenAI, ant: anthropic.AsyncAnthropic
) -> None:
    server.openai_models, server.anthropic_models = ["gpt-4o", "o3"], ["claude-a", "claude-b", "claude-c"]
    assert [m.id async for m in oai.models.list()] == ["gpt-4o", "o3"]
    assert [m.id async for m in ant.models.list(limit=2)] == ["claude-a", "claude-b", "claude-c"]
    page = await ant.models.list(limit=2)
    assert (page.has_more, page.first_id, page.last_id) == (True, "claude-a", "claude-b")
    assert page.data[0].type == "model" and page.data[0].display_name == "claude-a"
    assert (await oai.models.retrieve("o3")).id == "o3"
    assert (await ant.models.retrieve("claude-c")).id == "claude-c"


async def test_unknown_model_is_404(oai: openai.AsyncOpenAI, ant: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(openai.NotFoundError) as oerr:
        await chat(oai, model="gpt-nope")
    assert oerr.value.code == "model_not_found" and oerr.value.type == "invalid_request_error"
    with pytest.raises(anthropic.NotFoundError) as aerr:
        await message(ant, model="claude-nope")
    assert aerr.value.body == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "model: claude-nope"},
        "request_id": aerr.value.request_id,
    }


async def test_wrong_key_is_401(server: FakeUpstream) -> None:
    oclient = openai.AsyncOpenAI(base_url=server.openai_base_url, api_key="bad-key", max_retries=0)
    aclient = anthropic.AsyncAnthropic(base_url=server.anthropic_base_url, api_key="bad-key", max_retries=0)
    try:
        with pytest.raises(openai.AuthenticationError) as oerr:
            await chat(oclient)
        assert oerr.value.code == "invalid_api_key"
        with pytest.raises(anthropic.AuthenticationError) as aerr:
            await message(aclient)
        assert aerr.value.type == "authentication_error"
    finally:
        await oclient.close()
        await aclient.close()


async def test_raw_wire_auth_and_sse(server: FakeUpstream) -> None:
    body = {"model": GPT, "messages": USER, "stream": True, "stream_options": {"include_usage": True}}
    async with httpx2.AsyncClient(base_url=server.base_url) as http:
        missing = await http.post(CHAT, json=body)
        assert missing.status_code == 401 and missing.json()["error"]["type"] == "invalid_request_error"
        denied = await http.post(MESSAGES, json={}, headers={"x-api-key": "nope"})
        assert denied.status_code == 401
        assert denied.json()["error"] == {"type": "authentication_error", "message": "invalid x-api-key"}
        ok = await http.post(
            "/v1/messages/count_tokens", json={"model": CLAUDE, "messages": USER}, headers={"x-api-key": KEY}
        )
        assert ok.json() == {"input_tokens": server.anthropic_input_tokens({"messages": USER})}
        sse = await http.post(CHAT, json=body, headers={"authorization": f"Bearer {KEY}"})
        assert sse.headers["content-type"].startswith("text/event-stream")
        frames = sse.text.split("\n\n")
        assert frames[-2:] == ["data: [DONE]", ""]
        assert json.loads(frames[-3].removeprefix("data: "))["choices"] == []


# --------------------------------------------------------------------------- faults
@pytest.mark.parametrize("stream", [False, True])
async def test_status_faults(
    server: FakeUpstream, oai: openai.AsyncOpenAI, ant: anthropic.AsyncAnthropic, stream: bool
) -> None:
    server.inject("rate_limit", retry_after=7, times=2)
    with pytest.raises(openai.RateLimitError) as oerr:
        await chat(oai, stream=stream)
    assert oerr.value.response.headers["retry-after"] == "7" and oerr.value.code == "rate_limit_exceeded"
    with pytest.raises(anthropic.RateLimitError) as aerr:
        await message(ant, stream=stream)
    assert aerr.value.response.headers["retry-after"] == "7" and aerr.value.type == "rate_limit_error"

    cases: list[tuple[str, type[openai.APIStatusError], type[anthropic.APIStatusError]]] = [
        ("server_error", openai.InternalServerError, anthropic.InternalServerError),
        ("unavailable", openai.InternalServerError, anthropic.ServiceUnavailableError),
        ("overloaded", openai.InternalServerError, anthropic.OverloadedError),
    ]
    for kind, oexc, aexc in cases:
        server.inject(kind, times=2)  # type: ignore[arg-type]
        with pytest.raises(oexc):
            await chat(oai, stream=stream)
        with pytest.raises(aexc) as err:
            await message(ant, stream=stream)
        assert err.value.status_code == {"server_error": 500, "unavailable": 503, "overloaded": 529}[kind]
    assert [r.fault for r in server.requests] == ["rate_limit"] * 2 + [k for k, _, _ in cases for _ in (1, 2)]


async def test_slow_fault(
    server: FakeUpstream, oai: openai.AsyncOpenAI, ant: anthropic.AsyncAnthropic
) -> None:
    server.inject("slow", delay=5, times=2)
    began = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        await chat(oai, timeout=0.2)
    with pytest.raises(anthropic.APITimeoutError):
        await message(ant, timeout=0.2)
    assert time.monotonic() - began < 2
    server.inject("slow", delay=0.2)
    began = time.monotonic()
    assert (await chat(oai)).choices[0].message.content
    assert time.monotonic() - began >= 0.2


async def test_latency(server: FakeUpstream, ant: anthropic.AsyncAnthropic) -> None:
    server.latency = 0.2
    began = time.monotonic()
    await message(ant)
    assert time.monotonic() - began >= 0.2


@pytest.mark.parametrize("stream", [False, True])
async def test_drop_fault(
    server: FakeUpstream, oai: openai.AsyncOpenAI, ant: anthropic.AsyncAnthropic, stream: bool
) -> None:
    server.inject("drop", times=2)
    with pytest.raises(openai.APIConnectionError):
        await chat(oai, stream=stream)
    with pytest.raises(anthropic.APIConnectionError):
        await message(ant, stream=stream)
    assert (await chat(oai)).usage is not None  # the server survives


async def test_drop_mid_stream_openai(server: FakeUpstream, oai: openai.AsyncOpenAI) -> None:
    server.reply_text = "one two three four five six seven eight"  # 8 tokens -> 4 content chunks
    server.inject("drop_mid_stream")
    received: list[Any] = []
    stream = await oai.chat.completions.create(
        model=GPT, messages=USER, stream=True, stream_options={"include_usage": True}
    )
    with pytest.raises(openai.APIConnectionError):
        async for chunk in stream:
            received.append(chunk)
    assert "".join(c.choices[0].delta.content for c in received) == "one two three four"
    assert all(c.usage is None and c.choices[0].finish_reason is None for c in received)
    server.inject("drop_mid_stream")
    with pytest.raises(openai.APIConnectionError):  # non-streaming: half the body, then the connection closes
        await chat(oai)


async def test_drop_mid_stream_anthropic(server: FakeUpstream, ant: anthropic.AsyncAnthropic) -> None:
    server.reply_text = "one two three four five six seven eight"
    server.inject("drop_mid_stream")
    received: list[Any] = []
    stream = await ant.messages.create(model=CLAUDE, max_tokens=100, messages=USER, stream=True)
    # anthropic 2.x lets the transport error escape a stream unwrapped (httpx2.RemoteProtocolError)
    with pytest.raises((anthropic.APIConnectionError, httpx2.TransportError)):
        async for event in stream:
            received.append(event)
    types = [e.type for e in received]
    assert types == ["message_start", "content_block_start", *["content_block_delta"] * 2]
    assert "".join(e.delta.text for e in received[2:]) == "one two three four"
    assert received[0].message.usage.output_tokens == 1
    server.inject("drop_mid_stream")
    with pytest.raises(anthropic.APIConnectionError):
        await message(ant)


@pytest.mark.parametrize("stream", [False, True])
async def test_malformed_fault(
    server: FakeUpstream, oai: openai.AsyncOpenAI, ant: anthropic.AsyncAnthropic, stream: bool
) -> None:
    server.inject("malformed", times=2)
    with pytest.raises(json.JSONDecodeError):
        await chat(oai, stream=stream)
    with pytest.raises(json.JSONDecodeError):
        await message(ant, stream=stream)


async def test_retries_are_recorded(server: FakeUpstream) -> None:
    oclient = openai.AsyncOpenAI(base_url=server.openai_base_url, api_key=KEY, max_retries=2)
    aclient = anthropic.AsyncAnthropic(base_url=server.anthropic_base_url, api_key=KEY, max_retries=2)
    try:
        server.inject("server_error", retry_after=0.01)
        assert (await chat(oclient)).choices[0].message.content
        assert [r.fault for r in server.requests_to(CHAT)] == ["server_error", None]
        server.inject("overloaded", retry_after=0.01, path=MESSAGES)
        server.inject("drop", path=MESSAGES)
        assert (await message(aclient)).content[0].text
        assert [r.fault for r in server.requests_to(MESSAGES)] == ["overloaded", "drop", None]
        server.inject("rate_limit", retry_after=0.01, times=3)
        with pytest.raises(openai.RateLimitError):
            await chat(oclient)
        assert len(server.requests_to(CHAT)) == 2 + 3
    finally:
        await oclient.close()
        await aclient.close()


async def test_fault_path_filter_and_request_log(server: FakeUpstream, ant: anthropic.AsyncAnthropic) -> None:
    server.inject("server_error", path=MESSAGES)
    counted = await ant.messages.count_tokens(model=CLAUDE, messages=USER)
    assert counted.input_tokens > 0
    with pytest.raises(anthropic.InternalServerError):
        await message(ant)
    first, second = server.requests
    assert (first.method, first.path, first.fault) == ("POST", "/v1/messages/count_tokens", None)
    assert (second.path, second.fault) == (MESSAGES, "server_error")
    # anthropic 2.x sends the key as a Bearer token; older versions used x-api-key (both accepted)
    auth = second.headers.get("x-api-key") or second.headers["authorization"].removeprefix("Bearer ")
    assert auth == KEY and "anthropic-version" in second.headers
    assert second.json == {"model": CLAUDE, "messages": USER, "max_tokens": 100}
    assert first.time <= second.time
    server.reset()
    assert server.requests == [] and (await message(ant)).content


def test_inject_rejects_unknown_kind(server: FakeUpstream) -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        server.inject("explode")  # type: ignore[arg-type]


def test_upstream_in_its_own_process_answers_and_takes_latency() -> None:
    """``FakeUpstreamProcess`` (what the benchmarks use) serves the same fake from a child process."""
    from tests.fakes.upstream_process import FakeUpstreamProcess

    with FakeUpstreamProcess(api_key=KEY) as fake:
        client = openai.OpenAI(base_url=fake.openai_base_url, api_key=KEY, max_retries=0)
        reply = client.chat.completions.create(model=GPT, messages=USER, max_completion_tokens=8)
        assert reply.choices[0].message.content and reply.usage is not None
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(
                base_url=fake.openai_base_url, api_key="wrong", max_retries=0
            ).chat.completions.create(model=GPT, messages=USER)
        fake.latency = 0.3
        start = time.monotonic()
        client.chat.completions.create(model=GPT, messages=USER, max_completion_tokens=8)
        assert time.monotonic() - start >= 0.3
        assert fake.latency == 0.3
        client.close()
    assert fake.base_url  # stopped cleanly; stopping twice is harmless
    fake.stop()
