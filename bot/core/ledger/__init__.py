"""The persistent ledger: every call's cost, scoped periodic budgets that can never be overspent.

Budgets are checked and held atomically before a call (``Ledger.reserve``), charged at the real
cost after it (``settle``) or freed (``release``); the ledger runs on SQLite or PostgreSQL.
Every money rule is in ``money.py``, every write transaction in ``transactions.py``, run by the
database's one writer (``drivers/``).
"""

from bot.core.ledger.call_log import CallEntry
from bot.core.ledger.ledger import Clock, Ledger
from bot.core.ledger.models import Alert, BudgetStatus, Hold, Override, SpendRow, Totals
from bot.core.ledger.periods import period_bounds
from bot.core.ledger.settlement import Settlement

__all__ = [
    "Alert",
    "BudgetStatus",
    "CallEntry",
    "Clock",
    "Hold",
    "Ledger",
    "Override",
    "Settlement",
    "SpendRow",
    "Totals",
    "period_bounds",
]
