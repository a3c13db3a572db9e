"""Where each budget stands: its spend in the current calendar period, what requests in flight
hold against it, and what one request may hold (its reservation).

Shared by admission (budgets.admission), the leases (budgets.leases) and settlement
(budgets.settlement), which all work under the same row locks (`lock_budgets`), and read by the
admin, the `budget` command and the dashboard (`current`).

Race-free across threads and processes: admission and settlement are transactions that first
lock the budgets' rows (SELECT … FOR UPDATE on PostgreSQL; SQLite's IMMEDIATE transactions
serialise writers anyway), in id order, so a spend counter always equals the ledger's sum for
its period.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import Sum

from budgets.models import Budget, Hold, Spend
from telemetry import pricing, reports
from telemetry.models import NANO
from telemetry.usage import TokenUsage

DEFAULT_OUTPUT_TOKENS = 4096  # held for a request that names no max_tokens
BYTES_PER_TOKEN = 4  # input held from the body's size: no tokenizing on the request path
LEASE_PREFIX = "lease:"  # a Hold whose trace_id starts so is a serving process's lease

Key = tuple[str, str, float]  # (agent, period, period_start) of a Spend


def hold_ttl() -> float:
    """Past this age a hold is void: its request died without a row (a kill -9)."""
    return max(3600.0, 2 * (settings.UPSTREAM_CONNECT_TIMEOUT + settings.UPSTREAM_READ_TIMEOUT))


@dataclass(frozen=True)
class Standing:
    """One budget in its current period."""

    budget: Budget
    start: datetime
    end: datetime
    spent_nano: int
    held_nano: int
    spend_id: int  # the period's Spend row, which holds are taken against
    leased_nano: int = 0  # the part of held_nano that is serving processes' leases (current())

    @property
    def exceeded(self) -> bool:
        return self.spent_nano + self.held_nano >= self.budget.limit_nano

    @property
    def alerting(self) -> bool:
        return self.spent_nano >= self.budget.alert_nano

    def summary(self) -> str:
        b = self.budget
        return (f"{b.label.lower()} budget {reports.money(b.limit_usd)}, "
                f"{reports.money(reports.usd(self.spent_nano))} spent, on exceeded "
                f"{b.on_exceeded}")

    def describe(self) -> str:
        b = self.budget
        held = (f" and {reports.money(reports.usd(self.held_nano))} held by requests in flight"
                if self.held_nano else "")
        flag = f" --agent {b.agent}" if b.agent else ""
        return (
            f"TokenPak budget exceeded: the {b.label.lower()} budget of "
            f"{reports.money(b.limit_usd)} has {reports.money(reports.usd(self.spent_nano))} "
            f"spent{held}; it resets {reset_text(self.end)}. Raise it with "
            f"`tokenpak budget set --{b.period} USD{flag}` or wait for the reset."
        )


def reset_text(end: datetime) -> str:
    return f"{end:%Y-%m-%d %H:%M} ({reports.zone().key})"


def reservation(model: str, provider: str, body_size: int, max_tokens: int) -> int:
    """What a request may cost, in nano-USD: its body as fresh input, max_tokens as output."""
    return _priced(pricing.resolve(model, provider), body_size, max_tokens)


def cached_reservation(model: str, provider: str, body_size: int, max_tokens: int) -> int | None:
    """reservation() without I/O, for the event loop; None when prices are not loaded yet."""
    price = pricing.resolve_cached(model, provider)
    return None if price is None else _priced(price, body_size, max_tokens)


def _priced(price: pricing.Price, body_size: int, max_tokens: int) -> int:
    usage = TokenUsage(input_tokens=body_size // BYTES_PER_TOKEN + 1, output_tokens=max_tokens)
    return int(pricing.cost(usage, price) * NANO)


# The request path runs these few statements for every budgeted request: plain SQL, because
# compiling the same ORM queries each time cost more than running them.
_BUDGETS = (
    "SELECT id, agent, period, limit_usd, alert_at_pct, on_exceeded, source, updated_at "
    "FROM tp_budgets WHERE agent IN ({}) ORDER BY id"
)
_SPEND = (
    "SELECT s.id, s.spent_nano, COALESCE((SELECT SUM(h.amount_nano) FROM tp_budget_holds h "
    "WHERE h.spend_id = s.id AND h.created >= %s), 0) FROM tp_budget_spend s "
    "WHERE s.agent = %s AND s.period = %s AND s.period_start = %s"
)
UNLEASE = "UPDATE tp_budget_holds SET amount_nano = amount_nano - %s WHERE id = %s"


def lock_budgets(agents: Iterable[str]) -> list[Budget]:
    """The budgets that apply to these agents, row-locked in id order (no deadlocks)."""
    scope = sorted({"", *agents})
    sql = _BUDGETS.format(", ".join(["%s"] * len(scope)))
    if connection.features.has_select_for_update:
        sql += " FOR UPDATE"
    return list(Budget.objects.raw(sql, scope))


def standing(budget: Budget, ts: float) -> Standing:
    """The budget's spend and holds in the period holding ts; call with its row locked.

    A period's counter is created on first use from the ledger's sum for that period so far,
    which is why the row lock matters: the ledger writer takes it too before it adds a row's
    cost, so no row is counted twice or missed while the counter is being made.
    """
    start, end = budget.bounds(ts)
    with connection.cursor() as cursor:
        cursor.execute(_SPEND, [ts - hold_ttl(), budget.agent, budget.period, start.timestamp()])
        row = cursor.fetchone()
    if row is not None:
        spend_id, spent, held = row
        return Standing(budget, start, end, int(spent), int(held), spend_id)
    spend = Spend.objects.create(agent=budget.agent, period=budget.period,
                                 period_start=start.timestamp(),
                                 spent_nano=_ledger_sum(budget.agent, start, end))
    # A new period: drop this scope's void holds (requests that died unseen).
    Hold.objects.filter(
        spend__agent=budget.agent, spend__period=budget.period, created__lt=ts - hold_ttl()
    ).delete()
    return Standing(budget, start, end, spend.spent_nano, 0, spend.pk)


def current(agent: str | None = None) -> list[Standing]:
    """Every budget (or one agent's: "" for the global ones) as it stands right now."""
    now = time.time()
    with transaction.atomic():
        budgets = Budget.objects.select_for_update().order_by("agent", "period")
        if agent is not None:
            budgets = budgets.filter(agent=agent)
        order = {p: i for i, p in enumerate(("daily", "weekly", "monthly"))}
        standings = [standing(b, now) for b in budgets]
        leased = dict(
            Hold.objects.filter(spend_id__in=[s.spend_id for s in standings],
                                trace_id__startswith=LEASE_PREFIX, created__gte=now - hold_ttl())
            .values("spend_id").annotate(n=Sum("amount_nano")).values_list("spend_id", "n")
        )
        return sorted((replace(s, leased_nano=int(leased.get(s.spend_id) or 0))
                       for s in standings),
                      key=lambda s: (s.budget.agent, order[s.budget.period]))


def _ledger_sum(agent: str, start: datetime, end: datetime) -> int:
    qs = reports.events(reports.Filters(since=start, until=end, agent=agent))
    return qs.aggregate(n=Sum("cost_nano_usd"))["n"] or 0


def no_flush_wait() -> None:
    if connection.vendor == "postgresql":
        # Holds and leases are void after a crash anyway: no need to wait for this commit's
        # WAL flush (a counter made here is re-made if lost).
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL synchronous_commit TO OFF")


def reset_connection() -> None:
    with contextlib.suppress(DatabaseError):
        connection.close()

