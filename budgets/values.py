"""Budget values as the user gives them (CLI, admin, config.yaml), checked in one place.

No models here: settings.py validates config.yaml's budget block before Django's apps load.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from django.db import models


class Period(models.TextChoices):
    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"


class Action(models.TextChoices):
    WARN = "warn"  # forward, log, X-TokenPak-Budget: exceeded
    BLOCK = "block"  # 429 in the provider's shape; nothing goes upstream
    ROUTE_CHEAP = "route-cheap"  # forward with the cheaper model of the mapping


# The strictest action wins when several budgets are exceeded at once.
STRICTNESS = {Action.WARN: 0, Action.ROUTE_CHEAP: 1, Action.BLOCK: 2}
# Calendar periods as telemetry.reports names them.
REPORT_PERIOD = {Period.DAILY: "today", Period.WEEKLY: "week", Period.MONTHLY: "month"}


def key_of(agent: str, period: str) -> str:
    """Where config.yaml declares the (agent, period) budget: budget.agents.coder.daily_usd."""
    return f"{f'budget.agents.{agent}' if agent else 'budget'}.{period}_usd"


class Source(models.TextChoices):
    CLI = "cli"
    ADMIN = "admin"
    CONFIG = "config.yaml"  # declared in config.yaml's budget block: change it there


class BudgetError(ValueError):
    """A budget value TokenPak refuses; the message is one line saying what it takes."""


MAX_LIMIT = Decimal("100000000000")  # what tp_budgets.limit_usd holds


def parse_limit(value: object) -> Decimal:
    """A limit in USD: `50`, `50.00`, `$50`; zero allows nothing, negative is refused."""
    text = str(value).strip()
    try:
        if isinstance(value, bool) or not re.fullmatch(r"\$?\d*\.?\d+|\$?\d+\.", text):
            raise InvalidOperation
        amount = Decimal(text.lstrip("$"))
    except InvalidOperation:
        raise BudgetError(
            f"bad limit {text!r}: use a number of dollars of 0 or more, like 50 or 12.50"
        ) from None
    if amount >= MAX_LIMIT:
        raise BudgetError(f"bad limit {text!r}: at most {MAX_LIMIT - 1:,} dollars")
    return amount.quantize(Decimal("0.000000001")) if amount else Decimal("0")


def parse_pct(value: object) -> int:
    """An alert threshold: `80`, `80%`; a whole percentage from 1 to 100."""
    text = str(value).strip()
    m = re.fullmatch(r"(\d{1,3})\s*%?", text)
    if isinstance(value, bool) or not m or not 1 <= int(m[1]) <= 100:
        raise BudgetError(f"bad percentage {text!r}: use a whole number from 1 to 100, like 80%")
    return int(m[1])


def parse_action(value: object) -> str:
    text = str(value).strip().lower().replace("_", "-")
    if text not in Action.values:
        raise BudgetError(
            f"unknown action {str(value).strip()!r}: use {', '.join(Action.values)}"
        )
    return text
