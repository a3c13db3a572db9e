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

from budgets.values import REPORT_PERIOD, Action, BudgetError, Period, Source, key_of
from telemetry import reports
from telemetry.models import NANO


def period_bounds(period: str, ts: float) -> tuple[datetime, datetime]:
    """[start, end) of the calendar period holding unix time ts, in the configured zone."""
    moment = datetime.fromtimestamp(ts, reports.zone())
    return reports.period(REPORT_PERIOD[Period(period)], moment)


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

    def refuse_if_declared(self) -> None:
        if self.source == Source.CONFIG:
            raise BudgetError(
                f"the {self.label.lower()} budget comes from config.yaml "
                f"({key_of(self.agent, self.period)}): change it there"
            )

    @classmethod
    def put(cls, agent: str, period: str, limit: Decimal, alert_at_pct: int | None = None,
            on_exceeded: str | None = None, source: str = Source.CLI) -> Budget:
        """Create or change the (agent, period) budget; unset values keep theirs."""
        budget: Budget | None = cls.objects.filter(agent=agent, period=period).first()
        if budget is None:
            budget = cls(agent=agent, period=period)
        budget.refuse_if_declared()
        budget.limit_usd = limit
        if alert_at_pct is not None:
            budget.alert_at_pct = alert_at_pct
        if on_exceeded is not None:
            budget.on_exceeded = on_exceeded
        budget.source = source
        budget.save()
        return budget

    @classmethod
    def scope(cls, agent: str, period: str | None = None) -> list[Budget]:
        """The global budgets (agent "") or one agent's, optionally of one period; one at least."""
        budgets = cls.objects.filter(agent=agent)
        if period:
            budgets = budgets.filter(period=period)
        found: list[Budget] = list(budgets)
        if not found:
            who = f"agent {agent}" if agent else "global"
            what = f"{period} " if period else ""
            raise BudgetError(
                f"no {who} {what}budget to change: set one first, e.g. `tokenpak budget set "
                f"--{period or 'monthly'} 50{f' --agent {agent}' if agent else ''}`"
            )
        for budget in found:
            budget.refuse_if_declared()
        return found


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
    """What one request in flight may cost, held against one Spend until its row lands; or a
    serving process's lease (trace_id `lease:…`, see budgets.leases), renewed while it lives."""

    spend = models.ForeignKey(Spend, on_delete=models.CASCADE, related_name="holds")
    trace_id = models.CharField(max_length=32, db_index=True)
    amount_nano = models.BigIntegerField()
    created = models.FloatField()  # unix time; a hold older than any request can live is void

    class Meta:
        db_table = "tp_budget_holds"


class CheapRoute(models.Model):
    """route-cheap: requests for `model` go to `cheaper` while a budget is exceeded.

    These rows override the defaults derived from the pricing catalog (budgets.routes)."""

    provider = models.CharField(
        max_length=16, blank=True, help_text="openai or anthropic; empty: from the pricing catalog"
    )
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
