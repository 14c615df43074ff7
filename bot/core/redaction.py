"""The one rule for masking secrets in text a user or a log can see.

Provider error text is the usual carrier: an upstream answering 401 may echo the API key it was
sent ("Incorrect API key provided: Bearer sk-…"). ``bot.core.errors.ProviderError`` passes its
message through :func:`redact`, and ``bot.core.providers.errors`` adds the exact credentials the
failed request carried, so every face (MCP, Slack, the command line) shows the same masked text.
The server's log (``bot.logging_setup``) masks with the same :class:`Redactor`.

Two kinds of secret are masked:

* shapes, wherever they appear, configured or not: OpenAI keys (``sk-…``, ``sk-proj-…``),
  Anthropic keys (``sk-ant-…``), Slack tokens (``xoxb-``, ``xoxp-``, ``xoxa-``, ``xoxe-``, …,
  rotating ``xoxe.xoxb-…``, app-level ``xapp-…``), personal MCP tokens (``gwp_…``), the token
  after ``Bearer``, and passwords inside URLs (database DSNs);
* exact values the caller knows are secret (configured keys and tokens), however they look.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["MASK", "MIN_SECRET_LENGTH", "Redactor", "redact"]

#: What a secret is replaced with.
MASK = "***"
#: Exact values shorter than this are not masked: they would garble ordinary words.
MIN_SECRET_LENGTH = 6

#: Shapes of secrets; group 1, when present, is a prefix kept in front of the mask and group 2
#: a suffix kept after it (the URL pattern keeps "://user:" and "@").
_PATTERNS = (
    re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}"),  # OpenAI (sk-…, sk-proj-…) and Anthropic (sk-ant-…) keys
    # Slack bot / user / legacy / refresh tokens, and rotating ones ("xoxe.xoxb-…")
    re.compile(r"\bxox[a-z](?:\.xox[a-z])?-[A-Za-z0-9\-]+"),
    re.compile(r"\bxapp-[A-Za-z0-9\-]+"),  # Slack app-level tokens
    re.compile(r"\bgwp_[A-Za-z0-9_\-]{16,}"),  # personal MCP tokens (bot.core.ledger.tokens)
    re.compile(r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/=\-]{12,}"),  # Authorization header values
    re.compile(r"(?i)(://[^:/\s@]+:)[^@\s/]+(@)"),  # passwords inside URLs (database DSNs)
)


def _masked(match: re.Match[str]) -> str:
    groups = match.re.groups
    prefix = match.group(1) if groups >= 1 else ""
    suffix = match.group(2) if groups >= 2 else ""
    return f"{prefix}{MASK}{suffix}"


def _usable(secrets: Iterable[str]) -> list[str]:
    # Longest first, so a secret containing another is masked whole.
    return sorted({s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True)


def _apply(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    for pattern in _PATTERNS:
        text = pattern.sub(_masked, text)
    return text


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every secret shape and every value of ``secrets`` replaced by ``***``.

    Values shorter than ``MIN_SECRET_LENGTH`` characters are left alone (they would mask ordinary
    words); the shapes are masked whatever ``secrets`` holds.
    """
    return _apply(text, _usable(secrets))


class Redactor:
    """:func:`redact` bound to a fixed set of exact secrets, for text and for nested data."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets = _usable(secrets)

    def text(self, value: str) -> str:
        """``value`` with every secret replaced by ``***`` (the rule of :func:`redact`)."""
        return _apply(value, self._secrets)

    def data(self, value: Any) -> Any:
        """Redact strings inside dicts, lists and tuples; other values pass unchanged."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {k: self.data(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.data(v) for v in value]
        return value
