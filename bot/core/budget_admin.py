"""Admins' budget changes, checked once for every face: which budget and key an override names,
what the answer says, and what start-up logs about overrides that differ from the config file.

An override names ``NAME`` (every key of the budget, or its one configured key) or ``NAME:KEY``
(one key of a per-key budget). A key that could never match a principal is refused with the
form that works (``budget_keys.KEY_FORMS``) and the keys the ledger has seen, so no override can
silently miss: that is how ``/budget set per-user:UBOB 3`` once answered "now $3" while UBOB's
budget stayed at $7.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from bot.core.budget_keys import KEY_FORMS, is_slack_user, key_form_problem, key_matches
from bot.core.config import AppConfig, BudgetConfig
from bot.core.errors import ConfigurationError, ValidationError
from bot.core.ledger.models import Override
from bot.core.ledger.periods import model_family
from bot.core.money_text import usd

__all__ = [
    "LimitChange",
    "log_drift",
    "override_drift",
    "resolve_key",
    "shadow_notes",
    "split_target",
    "unknown_budget",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LimitChange:
    """What an admin's ``set`` or ``unset`` did, for the face to say."""

    budget: str
    scope: str
    #: The key the override is stored under: ``*`` (every key, or the budget's one key) or one key.
    scope_key: str
    #: The limit in force for that key now (the config's after an unset with no other override).
    limit: Decimal
    config_limit: Decimal
    #: The override this change replaced or removed, if there was one.
    previous: Override | None = None
    #: Things the admin should know: keys whose own override still wins, a key with no calls yet.
    notes: list[str] = field(default_factory=list)

    @property
    def target(self) -> str:
        """``per-user`` or ``per-user:T1:U2``: how the change's budget and key are written."""
        return self.budget if self.scope_key == "*" else f"{self.budget}:{self.scope_key}"

    @property
    def covers(self) -> str:
        """Who the limit applies to, in words: ``every user``, ``user T1:U2``, ``channel C1``."""
        if self.scope == "global":
            return "everything"
        return f"every {self.scope}" if self.scope_key == "*" else f"{self.scope} {self.scope_key}"

    def summary(self, *, removed: bool = False) -> str:
        """The answer to the admin, the same on every face: what the limit is now and why."""
        if removed:
            assert self.previous is not None
            text = (
                f"Budget {self.budget} ({self.covers}): the override of {usd(self.previous.limit)} "
                f"({self.previous.source}) is removed; the limit is {usd(self.limit)} per period"
            )
            return text + (
                "." if self.limit == self.config_limit else f" (config file: {usd(self.config_limit)})."
            )
        was = f", was {usd(self.previous.limit)} ({self.previous.source})" if self.previous else ""
        text = (
            f"Budget {self.budget} ({self.covers}) is now {usd(self.limit)} per period "
            f"(config file: {usd(self.config_limit)}{was})."
        )
        return " ".join([text, *(f"Note: {n}." for n in self.notes)])


def unknown_budget(name: str, budgets: Sequence[BudgetConfig]) -> ConfigurationError:
    """The error for an override naming no configured budget: the budgets there are, and the form."""
    known = ", ".join(sorted(b.name for b in budgets)) or "(none: add them under `budgets:` in config)"
    return ConfigurationError(
        f"unknown budget '{name}'",
        hint=f"Known budgets: {known}. Write NAME or NAME:KEY, e.g. per-user:T1:U2.",
    )


def split_target(target: str, budgets: Sequence[BudgetConfig]) -> tuple[str, str | None]:
    """``NAME[:KEY]`` as ``(name, key)``; a configured name that itself has a colon is matched whole."""
    text = target.strip()
    for name in sorted((b.name for b in budgets), key=len, reverse=True):
        if text == name:
            return name, None
        if text.startswith(name + ":"):
            return name, text[len(name) + 1 :] or None
    name, _, key = text.partition(":")
    return name, key or None


def _refuse(budget: BudgetConfig, key: str, problem: str, known: Sequence[str]) -> ValidationError:
    seen = f" Keys with spend so far: {', '.join(known[:10])}." if known else ""
    return ValidationError(
        [f"budget '{budget.name}' ({budget.scope}): {problem}."],
        hint=f"Write {budget.name}:KEY, where KEY is {KEY_FORMS[budget.scope]}, or {budget.name} alone "
        f"for every {budget.scope}.{seen}",
    )


def resolve_key(
    budget: BudgetConfig,
    key: str | None,
    *,
    team: str | None,
    known: Sequence[str],
    clients: Collection[str],
    providers: Collection[str],
) -> str:
    """The key an override of ``budget`` for ``key`` is stored under, or a ``ValidationError``
    naming the form that works.

    ``*`` for no key, for a global budget, and for a budget that names its one key in config
    (given or not). A bare Slack user id (``U2``) becomes ``team:U2`` with ``team`` (the admin's
    own, in Slack) or, failing that, the one team the ledger has seen it in. ``known`` is the
    budget's keys with rows in the ledger.
    """
    if key is None or key == "*":
        return "*"
    key = key.strip()
    if budget.scope == "global":
        raise ValidationError(
            [f"budget '{budget.name}' is global: it has no key, so '{key}' cannot be one of its keys."],
            hint=f"Write {budget.name} alone.",
        )
    if budget.key is not None:
        same = key_matches(budget.scope, budget.key, key) or key_matches(budget.scope, key, budget.key)
        if budget.scope == "model":
            same = model_family(key) == model_family(budget.key)
        if same or (team and key_matches(budget.scope, budget.key, f"{team}:{key}")):
            return "*"
        raise ValidationError(
            [f"budget '{budget.name}' covers only {budget.scope} {budget.key}, not '{key}'."],
            hint=f"Write {budget.name} alone to change its limit (or give {key} a budget of its own in config).",
        )
    problem = key_form_problem(budget.scope, key, clients=clients, providers=providers)
    if problem is not None:
        raise _refuse(budget, key, problem, known)
    if budget.scope == "model":
        return model_family(key)  # rows are keyed by the family (periods.model_family)
    if budget.scope == "user" and is_slack_user(key):
        if team:
            return f"{team}:{key}"
        teams = [k for k in known if k.endswith(":" + key)]
        if len(teams) == 1:
            return teams[0]
        if teams:
            raise _refuse(
                budget, key, f"Slack user {key} has spent in several teams: {', '.join(teams)}", known
            )
        raise _refuse(
            budget,
            key,
            f"no call of Slack user {key} is recorded, so its team is unknown; write it as TEAM:{key}",
            known,
        )
    return key


def shadow_notes(budget: BudgetConfig, key: str, overrides: Sequence[Override]) -> list[str]:
    """Notes on setting every key's limit while some keys keep their own override, which wins."""
    if key != "*" or budget.key is not None:
        return []
    own = [o for o in overrides if o.budget == budget.name and o.scope_key != "*"]
    if not own:
        return []
    listed = ", ".join(f"{o.scope_key} ({usd(o.limit)})" for o in own[:10])
    more = f" and {len(own) - 10} more" if len(own) > 10 else ""
    return [
        f"these keys keep their own override, which wins over this one: {listed}{more}; unset them to apply it"
    ]


def override_drift(config: AppConfig, overrides: Sequence[Override]) -> list[str]:
    """One line per override that makes a budget's limit differ from the config file (or that
    names a budget the config no longer has), with both figures and where it came from."""
    by_name = {b.name: b for b in config.budgets}
    lines = []
    for o in overrides:
        target = o.budget if o.scope_key == "*" else f"{o.budget}:{o.scope_key}"
        budget = by_name.get(o.budget)
        if budget is None:
            lines.append(
                f"the override of budget '{target}' ({usd(o.limit)}, {o.source}) names no configured "
                "budget, so it has no effect"
            )
        elif o.limit != budget.limit_usd:
            lines.append(
                f"budget '{target}' is held to its override {usd(o.limit)} ({o.source}), not the config "
                f"file's {usd(budget.limit_usd)}; `bot budget unset {target}` returns it to the config's"
            )
    return lines


def log_drift(config: AppConfig, overrides: Sequence[Override]) -> None:
    """Log ``override_drift``'s lines as warnings (at start-up)."""
    for line in override_drift(config, overrides):
        log.warning(line)
