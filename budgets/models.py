"""Budgets: what a user allows TokenPak traffic to spend, and what the proxy has seen of it.

`Budget` is what the user sets (CLI, admin or config.yaml). `Spend` is the running total of one
budget scope in one calendar period, kept by the ledger writer in the same transaction as the
ledger rows, so it always equals the ledger's sum for that period. `Hold` is what a request in
flight may still cost: taken before forwarding, dropped when the request's row lands.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from telemetry import reports
from telemetry.models import NANO


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
_REPORT_PERIOD = {Period.DAILY: "today", Period.WEEKLY: "week", Period.MONTHLY: "month"}


class Source(models.TextChoices):
    CLI = "cli"
    ADMIN = "admin"
    CONFIG = "config.yaml"  # declared in config.yaml's budget block: change it there


def period_bounds(period: str, ts: float) -> tuple[datetime, datetime]:
    """[start, end) of the calendar period holding unix time ts, in the configured zone."""
    return reports.period(_REPORT_PERIOD[Period(period)], datetime.fromtimestamp(ts, reports.zone()))


class Budget(models.Model):
    agent = models.CharField(
        max_length=128, blank=True, default="",
        help_text="X-TokenPak-Agent value; empty for the global budget (all traffic).",
    )
    period = models.CharField(max_length=8, choices=Period.choices)
    limit_usd = models.DecimalField(
        max_digits=20, decimal_places=9, validators=[MinValueValidator(Decimal("0"))]
    )
    alert_at_pct = models.PositiveSmallIntegerField(
        default=80, validators=[MinValueValidator(1), MaxValueValidator(100)]
    )
    on_exceeded = models.CharField(max_length=12, choices=Action.choices, default=Action.WARN)
    source = models.CharField(max_length=12, choices=Source.choices, default=Source.CLI)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "tp_budgets"
        ordering = ["agent", "period"]
        constraints = [
            models.UniqueConstraint(fields=["agent", "period"], name="tp_budgets_agent_period"),
        ]

    def __str__(self) -> str:
        return f"{self.label} {reports.money(self.limit_usd)} ({self.on_exceeded})"

    def clean(self) -> None:
        if self.agent != self.agent.strip():
            raise ValidationError({"agent": "An agent name has no leading or trailing spaces."})

    @property
    def label(self) -> str:
        """`Monthly`, or `Monthly (agent coder)`."""
        name = self.get_period_display()
        return f"{name} (agent {self.agent})" if self.agent else name

    @property
    def limit_nano(self) -> int:
        return int(self.limit_usd * NANO)

    @property
    def alert_nano(self) -> int:
        return self.limit_nano * self.alert_at_pct // 100

    def bounds(self, ts: float) -> tuple[datetime, datetime]:
        return period_bounds(self.period, ts)


class Spend(models.Model):
    """A budget scope's spend in one calendar period (agent "" is all traffic)."""

    agent = models.CharField(max_length=128, blank=True, default="")
    period = models.CharField(max_length=8, choices=Period.choices)
    period_start = models.FloatField()  # unix time of the period's first moment
    spent_nano = models.BigIntegerField(default=0)
    # Each is said once per scope and period, by whichever process gets there first.
    alerted = models.BooleanField(default=False)
    exceeded = models.BooleanField(default=False)

    class Meta:
        db_table = "tp_budget_spend"
        constraints = [
            models.UniqueConstraint(
                fields=["agent", "period", "period_start"], name="tp_budget_spend_scope"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.agent or '*'} {self.period} {self.period_start}: {self.spent_nano}"


class Hold(models.Model):
    """What one request in flight may cost, held against one Spend until its row lands."""

    spend = models.ForeignKey(Spend, on_delete=models.CASCADE, related_name="holds")
    trace_id = models.CharField(max_length=32, db_index=True)
    amount_nano = models.BigIntegerField()
    created = models.FloatField()  # unix time; a hold older than any request can live is void

    class Meta:
        db_table = "tp_budget_holds"


class CheapRoute(models.Model):
    """route-cheap: requests for `model` go to `cheaper` while a budget is exceeded.

    These rows override the defaults derived from the pricing catalog (budgets.routes)."""

    provider = models.CharField(max_length=16)
    model = models.CharField(max_length=128)
    cheaper = models.CharField(max_length=128)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "tp_budget_routes"
        ordering = ["provider", "model"]
        constraints = [
            models.UniqueConstraint(fields=["provider", "model"], name="tp_budget_routes_model"),
        ]

    def __str__(self) -> str:
        return f"{self.model} → {self.cheaper}"


__all__ = ["Action", "Budget", "CheapRoute", "Hold", "Period", "Source", "Spend"]
