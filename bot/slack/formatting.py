"""Markdown → Slack mrkdwn, splitting long answers into messages, money and the answer footer."""

from __future__ import annotations

import re
from decimal import Decimal

from bot.core import money_text
from bot.core.ledger.models import BudgetStatus
from bot.core.types import ChatResult

__all__ = ["FENCE", "QUOTE_CHARS", "asked", "footer", "progress_bar", "split_message", "to_mrkdwn", "usd"]

FENCE = "```"
#: Characters of the prompt quoted above its answer.
QUOTE_CHARS = 80
_FENCE_LINE = re.compile(r"^\s*```")
# Code spans are kept verbatim; everything else is converted.
_CODE = re.compile(r"```.*?(?:```|\Z)|`[^`\n]+`", re.S)
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
_BOLD = re.compile(r"\*\*(.+?)\*\*|__(.+?)__", re.S)
_ITALIC = re.compile(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])")
_STRIKE = re.compile(r"~~(.+?)~~")
_LINK = re.compile(r"!?\[([^\]\n]*)\]\((\S+?)(?:\s+\"[^\"]*\")?\)")
_BULLET = re.compile(r"^(\s*)[-*+]\s+", re.M)
_BOLD_MARK = "\x00"  # stands for a Slack bold '*' until single-star italics are converted


def _escape(text: str) -> str:
    # Slack reads &, < and > as control characters in message text.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _link(match: re.Match[str]) -> str:
    label, url = match.group(1), match.group(2).replace("|", "%7C")
    return f"<{url}|{label}>" if label else f"<{url}>"


def _convert_prose(text: str) -> str:
    text = _escape(text)
    text = _BULLET.sub(r"\1• ", text)
    text = _HEADING.sub(lambda m: f"{_BOLD_MARK}{m.group(1)}{_BOLD_MARK}", text)
    text = _BOLD.sub(lambda m: f"{_BOLD_MARK}{m.group(1) or m.group(2)}{_BOLD_MARK}", text)
    text = _ITALIC.sub(r"_\1_", text)
    text = _STRIKE.sub(r"~\1~", text)
    text = _LINK.sub(_link, text)
    return text.replace(_BOLD_MARK, "*")


def _convert_code(span: str) -> str:
    if span.startswith(FENCE):
        # Slack ignores language tags and would show "python" as the first code line.
        body = span[3:]
        first, nl, rest = body.partition("\n")
        if nl and re.fullmatch(r"[\w+#.-]*", first.strip()):
            body = rest
        if not body.endswith(FENCE):
            body += "\n" + FENCE
        return FENCE + "\n" + _escape(body.lstrip("\n"))
    return _escape(span)


def to_mrkdwn(markdown: str) -> str:
    """Convert common Markdown (headings, bold, italics, links, lists, code) to Slack mrkdwn."""
    out: list[str] = []
    pos = 0
    for match in _CODE.finditer(markdown):
        out.append(_convert_prose(markdown[pos : match.start()]))
        out.append(_convert_code(match.group(0)))
        pos = match.end()
    out.append(_convert_prose(markdown[pos:]))
    return "".join(out)


def _open_fence(text: str) -> bool:
    """True when ``text`` ends inside a ``` block (an odd number of fences)."""
    return text.count(FENCE) % 2 == 1


def _cut_point(text: str, limit: int) -> int:
    window = text[:limit]
    for sep, floor in (("\n\n", limit // 2), ("\n", limit // 4), (" ", limit // 4)):
        at = window.rfind(sep)
        if at >= floor and at > 0:
            return at
    return limit


def split_message(text: str, limit: int = 3500) -> list[str]:
    """Split ``text`` into parts of at most ``limit`` characters.

    Cuts on a paragraph break, else a line break, else a space, else hard; a ``` block cut in two
    is closed at the end of one part and reopened at the start of the next, so every part renders.
    """
    if limit < 20:
        raise ValueError("limit too small to split messages")
    parts: list[str] = []
    rest = text.strip("\n")
    room = limit - len("\n" + FENCE)  # always leave space to close a fence
    while len(rest) > limit:
        cut = _cut_point(rest, room)
        part, rest = rest[:cut].rstrip(), rest[cut:].lstrip(" ").lstrip("\n")
        if _open_fence(part):
            part += "\n" + FENCE
            rest = FENCE + "\n" + rest
        if part.strip():
            parts.append(part)
    if rest.strip() or not parts:
        parts.append(rest)
    return parts


def usd(amount: Decimal | str) -> str:
    """Money as every face shows it (``bot.core.money_text.usd``)."""
    return money_text.usd(amount)


def progress_bar(fraction: float, width: int = 10) -> str:
    """A text bar like ``▓▓▓▓░░░░░░ 40%`` (the bar stops full; the percentage does not)."""
    filled = max(0, min(width, round(fraction * width)))
    return "▓" * filled + "░" * (width - filled) + f" {round(fraction * 100)}%"


def footer(result: ChatResult, budget: BudgetStatus | None) -> str:
    """The line under an answer: model, tokens in/out, cost, and what is left of the budget that
    limits the next call, named (a channel's or the team's budget is not "yours")."""
    cost = usd(result.cost_usd) + (" (estimated)" if result.cost_estimated else "")
    bits = [
        f"`{result.model}`",
        f"{result.usage.input_tokens:,} in / {result.usage.output_tokens:,} out tokens",
        cost,
    ]
    if budget is not None:
        named = f"your budget {budget.name}" if budget.scope == "user" else f"budget {budget.label}"
        bits.append(f"{usd(budget.remaining)} left in {named}")
    return "_" + " · ".join(bits) + "_"


def asked(user_id: str, prompt: str) -> str:
    """The line heading an answer: who asked, and a short quote of what (one line, escaped)."""
    quote = " ".join(prompt.split())
    if len(quote) > QUOTE_CHARS:
        quote = quote[: QUOTE_CHARS - 1].rstrip() + "…"
    # Backticks and asterisks in the quote would open formatting that never closes.
    quote = _escape(quote).replace("`", "'").replace("*", "∗")
    return f"*<@{user_id}> asked:* “{quote}”"
