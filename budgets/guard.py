"""The spend guard: may this request go upstream, and with which model?

Before forwarding, `check()` compares each budget that applies (the global ones, and the
request's agent's) with its spend in the current calendar period plus what requests already in
flight may cost (their holds). A budget at or past its limit is *exceeded*; the strictest action
among the exceeded budgets decides: block > route-cheap > warn. An admitted request then holds
its own possible cost (input from the body's size, output from max_tokens) against every one of
those budgets, so concurrent requests see each other before any of them has finished.

Race-free across threads and processes: the check and the hold are one transaction that first
locks the budgets' rows (SELECT … FOR UPDATE on PostgreSQL; SQLite's IMMEDIATE transactions
serialise writers anyway). The ledger writer adds each row's cost to the spend counters and
drops its holds in the same transaction as the row, under the same locks (`settle()`), so a
spend counter always equals the ledger's sum for its period.

Requests whose agent has no budget, and every request when no budget exists at all, never touch
the database here: which scopes have budgets is cached for a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import httpx
from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import F, Q, Sum

from budgets import routes
from budgets.models import Budget, Hold, Spend
from budgets.values import STRICTNESS, Action
from telemetry import pricing, reports
from telemetry.models import NANO, Event
from telemetry.usage import TokenUsage

if TYPE_CHECKING:
    from telemetry.ledger import Record

log = logging.getLogger("tokenpak.budget")

SCOPES_TTL = 1.0  # a budget set from the CLI or the admin applies within this many seconds
DEFAULT_OUTPUT_TOKENS = 4096  # held for a request that names no max_tokens
BYTES_PER_TOKEN = 4  # input held from the body's size: no tokenizing on the request path


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


@dataclass(frozen=True)
class Verdict:
    """What the guard decided for one request."""

    action: str = ""  # "" within every budget; else the strictest exceeded budget's action
    decider: Standing | None = None
    alert: bool = False  # a budget that applies is past its alert threshold
    route_to: str = ""  # route-cheap: the model to send instead
    held: bool = False  # holds were taken: the ledger writer must drop them

    @property
    def blocked(self) -> bool:
        return self.action == Action.BLOCK

    def header(self) -> str:
        """X-TokenPak-Budget: exceeded, alert, or nothing."""
        return "exceeded" if self.action else "alert" if self.alert else ""


WITHIN = Verdict()


# --- the request path --------------------------------------------------------------------------


class _Scopes:
    """Which agents have budgets ("" for the global ones), re-read at most once a second."""

    def __init__(self) -> None:
        self.agents: frozenset[str] = frozenset()
        self.read_at = -SCOPES_TTL
        self.failed = False

    def stale(self) -> bool:
        return time.monotonic() - self.read_at >= SCOPES_TTL

    def read(self) -> None:
        try:
            self.agents = frozenset(Budget.objects.values_list("agent", flat=True).distinct())
            self.failed = False
        except DatabaseError as e:
            _reset_connection()
            # Fail open: a ledger that cannot be read must not stop the user's traffic.
            if not self.failed:
                log.error("budgets unreadable, not enforced until the database answers: %s", e)
            self.failed = True
            self.agents = frozenset()
        self.read_at = time.monotonic()


_scopes = _Scopes()
# Budget work runs on a few long-lived threads, each with its own database connection kept
# open between requests (a request's own thread would connect anew every time).
_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="tokenpak-budget")


async def check(rec: Record, payload: Any, body_size: int) -> Verdict:
    """The verdict for a request about to be forwarded; WITHIN when no budget applies.

    A client that leaves while the guard decides still gets its row, recorded here: once the
    holds exist, if holds were being taken, since the writer drops a held row's holds."""
    if not settings.TELEMETRY_ENABLED:
        return WITHIN
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Verdict] | None = None
    try:
        if _scopes.stale():
            await loop.run_in_executor(_pool, _scopes.read)
        if "" not in _scopes.agents and rec.agent_id not in _scopes.agents:
            return WITHIN
        future = loop.run_in_executor(
            _pool, admit, rec.trace_id, rec.agent_id, rec.provider, rec.requested_model,
            body_size, _max_tokens(payload), rec.ts,
        )
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        from telemetry.ledger import record
        from telemetry.models import Status

        rec.finish(Status.CLIENT_CLOSED)
        if future is None:
            record(rec)
        else:
            rec.held = True
            future.add_done_callback(lambda _: record(rec))
        raise


def _max_tokens(payload: Any) -> int:
    if isinstance(payload, dict):
        for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
            value = payload.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return DEFAULT_OUTPUT_TOKENS


def reservation(model: str, provider: str, body_size: int, max_tokens: int) -> int:
    """What a request may cost, in nano-USD: its body as fresh input, max_tokens as output."""
    usage = TokenUsage(input_tokens=body_size // BYTES_PER_TOKEN + 1, output_tokens=max_tokens)
    return int(pricing.cost(usage, pricing.resolve(model, provider)) * NANO)


def admit(
    trace_id: str, agent: str, provider: str, model: str, body_size: int, max_tokens: int,
    ts: float,
) -> Verdict:
    """Decide and hold, in one transaction under the budgets' row locks."""
    try:
        with transaction.atomic():
            if connection.vendor == "postgresql":
                # Holds live for one request and are void after a crash anyway: no need to
                # wait for this commit's WAL flush (a counter made here is re-made if lost).
                with connection.cursor() as cursor:
                    cursor.execute("SET LOCAL synchronous_commit TO OFF")
            budgets = _lock_budgets([agent])
            if not budgets:
                return WITHIN
            standings = [standing(b, ts) for b in budgets]
            exceeded = [s for s in standings if s.exceeded]
            alert = any(s.alerting for s in standings)
            if not exceeded:
                return _hold(standings, trace_id, provider, model, body_size, max_tokens, ts,
                             Verdict(alert=alert, held=True))
            decider = max(exceeded, key=lambda s: STRICTNESS[Action(s.budget.on_exceeded)])
            action = decider.budget.on_exceeded
            if action == Action.BLOCK:
                return Verdict(action=action, decider=decider, alert=alert)
            target = routes.cheaper(provider, model) if action == Action.ROUTE_CHEAP else ""
            verdict = Verdict(action=action, decider=decider, alert=alert, route_to=target,
                              held=True)
            return _hold(standings, trace_id, provider, target or model, body_size, max_tokens,
                         ts, verdict)
    except DatabaseError as e:
        _reset_connection()
        log.error("budget check failed, forwarding %s unchecked: %s", trace_id, e)
        return WITHIN


def _hold(
    standings: list[Standing], trace_id: str, provider: str, model: str, body_size: int,
    max_tokens: int, ts: float, verdict: Verdict,
) -> Verdict:
    amount = reservation(model, provider, body_size, max_tokens)
    with connection.cursor() as cursor:
        cursor.executemany(_HOLD, [(s.spend_id, trace_id, amount, ts) for s in standings])
    return verdict


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
_HOLD = (
    "INSERT INTO tp_budget_holds (spend_id, trace_id, amount_nano, created) "
    "VALUES (%s, %s, %s, %s)"
)


def _lock_budgets(agents: Iterable[str]) -> list[Budget]:
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
        return sorted((standing(b, now) for b in budgets),
                      key=lambda s: (s.budget.agent, order[s.budget.period]))


def _ledger_sum(agent: str, start: datetime, end: datetime) -> int:
    qs = reports.events(reports.Filters(since=start, until=end, agent=agent))
    return qs.aggregate(n=Sum("cost_nano_usd"))["n"] or 0


def _scope_q(keys: Iterable[tuple[str, str, float]]) -> Q:
    q = Q(pk__in=[])
    for agent, period, start in keys:
        q |= Q(agent=agent, period=period, period_start=start)
    return q


def _reset_connection() -> None:
    with contextlib.suppress(DatabaseError):
        connection.close()


# --- the ledger writer's side ------------------------------------------------------------------

Key = tuple[str, str, float]  # (agent, period, period_start) of a Spend


def settle(records: list[Record], events: list[Event]) -> list[Key]:
    """Inside the writer's transaction: add each row's cost to its spend counters and drop the
    holds of the requests these rows finish. Returns the counters that grew."""
    held = [r.trace_id for r in records if r.held]
    costly = [e for e in events if e.cost_nano_usd > 0]
    if not (held or costly):
        return []
    # The same locks as admit(), taken first, so neither ever waits on the other's rows.
    budgets = _lock_budgets({r.agent_id for r in records if r.held} | {e.agent_id for e in costly})
    if held:
        Hold.objects.filter(trace_id__in=held).delete()
    if not (budgets and costly):
        return []
    grow: dict[Key, int] = defaultdict(int)
    starts: dict[tuple[str, float], float] = {}
    for e in costly:
        for b in budgets:
            if b.agent in ("", e.agent_id):
                # Rows of one batch fall in the same few minutes: one calendar sum per minute.
                minute = (b.period, e.ts // 60)
                if minute not in starts:
                    starts[minute] = b.bounds(e.ts)[0].timestamp()
                grow[(b.agent, b.period, starts[minute])] += e.cost_nano_usd
    for (agent, period, start), nano in grow.items():
        Spend.objects.filter(agent=agent, period=period, period_start=start).update(
            spent_nano=F("spent_nano") + nano
        )
    return list(grow)


def notify(keys: list[Key]) -> None:
    """After the writer's commit: say once per budget and period that it crossed its alert
    threshold or its limit (log line, and the webhook when one is set)."""
    if not keys:
        return
    for spend in Spend.objects.filter(_scope_q(keys)):
        budget = Budget.objects.filter(agent=spend.agent, period=spend.period).first()
        if budget is None:
            continue
        # Whichever process flips a flag first says it; the others see 0 rows updated. A step
        # past both thresholds at once is said once, as exceeded.
        crossed = ""
        for kind, threshold in (("alert", budget.alert_nano), ("exceeded", budget.limit_nano)):
            flag = _FLAGS[kind]
            if spend.spent_nano < threshold or getattr(spend, flag):
                continue
            if Spend.objects.filter(pk=spend.pk, **{flag: False}).update(**{flag: True}):
                crossed = kind
        if crossed:
            _announce(crossed, budget, spend)


_FLAGS = {"alert": "alerted", "exceeded": "exceeded"}


def _announce(kind: str, budget: Budget, spend: Spend) -> None:
    start, end = budget.bounds(spend.period_start)
    spent = reports.usd(spend.spent_nano)
    pct = 100.0 * spend.spent_nano / budget.limit_nano if budget.limit_nano else 100.0
    if kind == "alert":
        message = (f"{budget.label} budget at {pct:.1f}%: {reports.money(spent)} of "
                   f"{reports.money(budget.limit_usd)} spent (alert at {budget.alert_at_pct}%)")
    else:
        message = (f"{budget.label} budget exceeded: {reports.money(spent)} of "
                   f"{reports.money(budget.limit_usd)} spent; from now on: "
                   f"{budget.on_exceeded} until {reset_text(end)}")
    log.warning("%s", message)
    url = settings.BUDGET_WEBHOOK_URL
    if url:
        alert = {
            "type": f"budget.{kind}",
            "message": message,
            "budget": {
                "agent": budget.agent or None,
                "period": budget.period,
                "limit_usd": reports.plain(budget.limit_usd),
                "alert_at_pct": budget.alert_at_pct,
                "on_exceeded": budget.on_exceeded,
            },
            "spent_usd": reports.plain(spent),
            "spent_pct": round(pct, 2),
            "period_start": start.isoformat(),
            "period_end": end.isoformat(),
        }
        threading.Thread(target=_post, args=(url, alert), name="tokenpak-webhook",
                         daemon=True).start()


def _post(url: str, alert: dict[str, Any]) -> None:
    where = httpx.URL(url).host  # a webhook's path often carries its secret: never log it
    try:
        response = httpx.post(url, json=alert, timeout=10.0, trust_env=False)
        if response.is_error:
            log.error("budget webhook at %s answered HTTP %d", where, response.status_code)
    except httpx.HTTPError as e:
        log.error("budget webhook at %s failed: %s", where, type(e).__name__)
