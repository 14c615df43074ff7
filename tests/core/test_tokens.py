"""Token counts: our bundled encodings give exactly tiktoken's answers, offline."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import tiktoken

from bot.core.tokens import (
    count_chat_tokens,
    count_text_tokens,
    encoding_for_model,
    encoding_from_bytes,
    encoding_name_for_model,
)
from bot.core.types import Message

DATA = Path(__file__).resolve().parents[2] / "bot" / "core" / "data"
URL = "https://openaipublic.blob.core.windows.net/encodings/{}.tiktoken"
SAMPLES = [
    "Hello, world!",
    "Tokens: 1234567890 — naïve café, 日本語のテキスト, emoji 🎉🎉",
    "def f(x):\n    return x ** 2  # comment\n\n\n",
    "<|endoftext|> is ordinary text here",
    "  leading and trailing spaces   ",
]


@pytest.fixture
def tiktoken_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Let tiktoken's own registry load the same official files from its cache, offline."""
    for name in ("cl100k_base", "o200k_base"):
        key = hashlib.sha1(URL.format(name).encode()).hexdigest()
        shutil.copy(DATA / f"{name}.tiktoken", tmp_path / key)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))


@pytest.mark.parametrize(
    "model", ["gpt-4o", "gpt-4o-mini", "gpt-4.1", "o3", "gpt-5", "gpt-4", "gpt-3.5-turbo"]
)
def test_counts_equal_tiktoken_itself(model: str, tiktoken_registry: None) -> None:
    reference = tiktoken.encoding_for_model(model)
    ours = encoding_for_model(model)
    assert ours.name == reference.name
    for text in SAMPLES:
        assert ours.encode(text, disallowed_special=()) == reference.encode(text, disallowed_special=())
        assert count_text_tokens(text, model) == len(reference.encode(text, disallowed_special=()))


def test_encoding_choice() -> None:
    assert encoding_name_for_model("gpt-4o-2024-08-06") == "o200k_base"
    assert encoding_name_for_model("gpt-4-0613") == "cl100k_base"
    assert encoding_name_for_model("some-future-model") == "o200k_base"


def test_chat_overhead_follows_openai_formula() -> None:
    messages = [Message("system", "You are terse."), Message("user", "Hi there")]
    enc = encoding_for_model("gpt-4o")
    expected = 3 + sum(3 + len(enc.encode(m.role)) + len(enc.encode(m.content)) for m in messages)
    assert count_chat_tokens(messages, "gpt-4o") == expected


def test_a_tampered_encoding_is_refused() -> None:
    good = (DATA / "cl100k_base.tiktoken").read_bytes()
    assert encoding_from_bytes("cl100k_base", good).encode("hi") == encoding_for_model("gpt-4").encode("hi")
    with pytest.raises(ValueError, match="corrupt"):
        encoding_from_bytes("cl100k_base", good[:-10])
