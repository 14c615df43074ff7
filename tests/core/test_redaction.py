"""The one redaction rule (``bot.core.redaction``) and where provider error text passes through it."""

from __future__ import annotations

import anthropic
import openai
import pytest

from bot.core.errors import ProviderError, RateLimitError
from bot.core.providers.errors import map_sdk_error, sent_credentials
from bot.core.redaction import MASK, Redactor, redact
from bot.logging_setup import Redactor as LoggingRedactor
from tests.conftest import API_KEY
from tests.fakes.upstream import FakeUpstream

KEYS = {
    "openai": "sk-abcdefghijklmnop1234",
    "openai project": "sk-proj-AbC123_def-456ghiJKL789mnoPQR",
    "anthropic": "sk-ant-api03-AbC123_def-456ghiJKL789mnoPQR-xyzAA",
    "slack bot": "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
    "slack user": "xoxp-123-456-789-abcdef",
    "slack app-level": "xapp-1-A012345-678901-abcdef0123",
    "slack legacy app": "xoxa-2-abcdef",
    "slack refresh": "xoxe-1-abcdef",
    "slack rotating": "xoxe.xoxb-1-MS0yLTIyNjU2",
}


@pytest.mark.parametrize("name", list(KEYS))
def test_every_key_shape_is_masked_wherever_it_appears(name: str) -> None:
    key = KEYS[name]
    for text in (f"Incorrect API key provided: {key}.", f'{{"key":"{key}"}}', f"key={key}\n", key):
        masked = redact(text)
        assert key not in masked and MASK in masked, (name, text, masked)
        assert key[-6:] not in masked  # no tail of the key survives


def test_bearer_tokens_and_url_passwords_keep_their_context() -> None:
    assert redact("Authorization: Bearer 0123456789abcdef") == "Authorization: Bearer ***"
    assert redact("provided: Bearer some.opaque-token_value") == "provided: Bearer ***"
    assert redact("postgresql://bot:pa55word@db/x") == "postgresql://bot:***@db/x"
    # Ordinary words are left alone.
    for text in ("bearer tokens are configured", "Provide it in the Authorization header (Bearer auth)."):
        assert redact(text) == text
    assert redact("sk-short and task-force") == "sk-short and task-force"


def test_configured_values_are_masked_exactly_whatever_their_shape() -> None:
    secrets = ["plain-secret-value", "abc"]  # "abc" is too short to mask: it would garble text
    assert redact("the key plain-secret-value leaked", secrets) == "the key *** leaked"
    assert redact("abc is fine", secrets) == "abc is fine"
    assert redact("long-secret-value-and-more", ["long-secret-value", "long-secret-value-and-more"]) == MASK
    assert Redactor(secrets).data({"a": ["plain-secret-value", 1], "b": ("x",)}) == {
        "a": [MASK, 1],
        "b": ["x"],
    }


def test_the_log_masks_with_the_same_rule() -> None:
    assert LoggingRedactor is Redactor


def test_a_provider_error_is_masked_however_it_is_built() -> None:
    key = KEYS["anthropic"]
    err = ProviderError(f"rejected: {key}", provider="anthropic", hint=f"Check {KEYS['openai']}")
    assert key not in str(err) and KEYS["openai"] not in str(err)
    assert key not in err.message and err.hint is not None and MASK in err.hint
    limited = RateLimitError(f"slow down {key}", provider="anthropic")  # subclasses too
    assert key not in str(limited)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_an_echoed_key_of_any_shape_never_reaches_the_error(fake: FakeUpstream, provider: str) -> None:
    """The fake's ``auth_echo`` 401 repeats the key in full; ``API_KEY`` has no key shape at all."""
    fake.inject("auth_echo")
    caught: BaseException
    try:
        if provider == "openai":
            client = openai.AsyncOpenAI(api_key=API_KEY, base_url=fake.openai_base_url, max_retries=0)
            await client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
            )
        else:
            sdk = anthropic.AsyncAnthropic(api_key=API_KEY, base_url=fake.anthropic_base_url, max_retries=0)
            await sdk.messages.create(
                model="claude-haiku-4-5", max_tokens=5, messages=[{"role": "user", "content": "x"}]
            )
    except Exception as exc:
        caught = exc
    else:
        pytest.fail("the auth_echo fault did not fail the call")
    assert f"Bearer {API_KEY}" in str(caught)  # the SDK's own error carries the echo
    assert sent_credentials(caught) == [API_KEY]
    err = map_sdk_error(caught, provider=provider, model="m")
    assert isinstance(err, ProviderError) and err.status == 401
    text = str(err)
    assert API_KEY not in text and "rejected the API key" in text and "Bearer ***" in text
    assert API_KEY not in str(err.to_dict())


def test_an_exception_without_a_request_has_no_credentials() -> None:
    assert sent_credentials(ValueError("x")) == []
