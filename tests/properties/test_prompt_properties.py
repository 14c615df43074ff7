"""Properties of prompts: any text either prices as a dry run or raises a ``BotError``, never crashes."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.core.errors import BotError, ValidationError
from bot.core.factory import SessionFactory
from tests.fakes.upstream import FakeUpstream

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
MODELS = ["gpt-4o-mini", "gpt-4o", "claude-haiku-4-5"]

#: Big prompts: one just under the default 400,000-character limit, one over it.
HUGE = ["lorem ipsum dolor sit amet " * 14_000, "é🚉 " * 140_000]
prompts = st.one_of(
    st.text(),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=2000),
    st.text(alphabet=" \t\n\r\u00a0\u2028\u3000\u200b", max_size=50),
    st.sampled_from(["", " ", "\n\n", *HUGE]),
)


@SETTINGS
@given(prompt=prompts, model=st.sampled_from(MODELS), system=st.none() | st.text(max_size=50))
async def test_dry_run_prices_any_prompt_or_raises_a_bot_error(
    factory: SessionFactory, fake: FakeUpstream, prompt: str, model: str, system: str | None
) -> None:
    """A dry run never crashes; its token count is non-negative and the same every time."""
    async with factory.create() as session:
        try:
            first = await session.chat(prompt, model=model, system=system, max_tokens=16, dry_run=True)
        except BotError as err:
            assert str(err) and "Traceback" not in str(err)
            if not prompt.strip():
                assert isinstance(err, ValidationError)
            return
        second = await session.chat(prompt, model=model, system=system, max_tokens=16, dry_run=True)
    assert prompt.strip(), "an empty prompt must be refused"
    assert first.dry_run and first.usage.input_tokens >= 0 and first.cost_usd >= 0
    assert (second.usage.input_tokens, second.cost_usd) == (first.usage.input_tokens, first.cost_usd)
    assert not [r for r in fake.requests if r.path == "/v1/chat/completions" or r.path == "/v1/messages"]
