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

Leases keep that exactness off the request path. Each serving process holds, per budget that
applies to its traffic, one lease: a Hold row (trace_id `lease:<host>:<pid>:<n>`) whose amount is
this process's reserved capacity, i.e. its free part plus the reservations of its requests in
flight. Leases are granted, renewed and released by a background thread (`Lessor`) in the same
kind of locked transaction as `admit()`, so spend plus every hold plus every lease never exceeds
a limit. A request that fits in the free part of every lease it needs is admitted on the event
loop from memory: no query, no thread hop. The writer takes its reservation off the lease row in
the transaction that adds its cost to the counter (`settle()`). Near a limit leases are released
(see `Lessor` for the sizing rule) and every request goes through `admit()`, exactly as before.

Requests whose agent has no budget, and every request when no budget exists at all, never touch
the database here: which scopes have budgets is re-read by the lessor's thread.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

import httpx
from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import Q, Sum

from budgets import routes
from budgets.models import Budget, Hold, Spend
from budgets.values import STRICTNESS, Action
from telemetry import pricing, reports
from telemetry.models import NANO, Event
from telemetry.usage import TokenUsage

if TYPE_CHECKING:
    from telemetry.ledger import Record

log = logging.getLogger("tokenpak.budget")

LEASE_REFRESH_SECONDS = 0.5  # a budget set from the CLI or the admin applies within this long
LEASE_MIN_GAP_SECONDS = 0.05  # a busy process wakes the lessor often: one refresh per 50 ms at most
# Lease sizing, in units of the largest reservation this process saw in the last minute or two:
LEASE_UNITS = 256  # the free part is topped up to this many requests' worth (32 connections
# in flight used up a 32-request lease between refreshes: requests fell to the exact path) ...
LEASE_SHARE = 4  # ... but never more than 1/4 of the capacity nobody else holds;
NEAR_UNITS = 32  # with less unbound capacity than this, no lease at all: the exact path rules.
LOW_WATER_UNITS = 64  # an admission that leaves less free than this wakes the lessor at once
UNIT_WINDOW_SECONDS = 60.0
LEASE_RENEW_SECONDS = 60.0  # far below hold_ttl(): a live process's lease never goes void
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


# Budget work runs on a few long-lived threads, each with its own database connection kept
# open between requests (a request's own thread would connect anew every time).
_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="tokenpak-budget")


async def check(rec: Record, payload: Any, body_size: int,
                max_tokens: int | None = None) -> Verdict:
    """The verdict for a request about to be forwarded; WITHIN when no budget applies.

    max_tokens is the output the request asks for at most, as its provider reads it (proxy's
    Provider.output_limit); without it, the payload's max_tokens-like field, else
    DEFAULT_OUTPUT_TOKENS, is what is held.

    Admitted on a lease, from memory, when every budget's lease has room (rec.leases says what
    it took); else decided exactly by admit() on a budget thread. A client that leaves while
    admit() decides still gets its row, recorded here: once the holds exist, if holds were being
    taken, since the writer drops a held row's holds."""
    if not settings.TELEMETRY_ENABLED:
        return WITHIN
    lessor.start()
    budgets = lessor.budgets
    if max_tokens is None:
        max_tokens = _max_tokens(payload)
    if budgets is not None:
        if "" not in budgets and rec.agent_id not in budgets:
            return WITHIN
        verdict = lessor.take(rec, body_size, max_tokens)
        if verdict is not None:
            return verdict
    future = asyncio.get_running_loop().run_in_executor(
        _pool, _exact, rec.trace_id, rec.agent_id, rec.provider, rec.requested_model,
        body_size, max_tokens, rec.ts,
    )
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        from telemetry.ledger import record
        from telemetry.models import Status

        rec.finish(Status.CLIENT_CLOSED)
        rec.held = True
        future.add_done_callback(lambda _: record(rec))
        raise


def _exact(
    trace_id: str, agent: str, provider: str, model: str, body_size: int, max_tokens: int,
    ts: float,
) -> Verdict:
    if lessor.budgets is None:  # this process's first request: nothing is cached yet
        lessor.read_budgets()
    budgets = lessor.budgets or {}
    if "" not in budgets and agent not in budgets:
        return WITHIN
    # Sizes the next leases; pricing here may read the database, which is fine on this thread.
    lessor.note(reservation(model, provider, body_size, max_tokens))
    lessor.want(budgets.get("", ()) + (budgets.get(agent, ()) if agent else ()))
    return admit(trace_id, agent, provider, model, body_size, max_tokens, ts)


def _max_tokens(payload: Any) -> int:
    if isinstance(payload, dict):
        for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
            value = payload.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return DEFAULT_OUTPUT_TOKENS


def reservation(model: str, provider: str, body_size: int, max_tokens: int) -> int:
    """What a request may cost, in nano-USD: its body as fresh input, max_tokens as output."""
    return _priced(pricing.resolve(model, provider), body_size, max_tokens)


def _cached_reservation(model: str, provider: str, body_size: int, max_tokens: int) -> int | None:
    """reservation() without I/O, for the event loop; None when prices are not loaded yet."""
    price = pricing.resolve_cached(model, provider)
    return None if price is None else _priced(price, body_size, max_tokens)


def _priced(price: pricing.Price, body_size: int, max_tokens: int) -> int:
    usage = TokenUsage(input_tokens=body_size // BYTES_PER_TOKEN + 1, output_tokens=max_tokens)
    return int(pricing.cost(usage, price) * NANO)


def admit(
    trace_id: str, agent: str, provider: str, model: str, body_size: int, max_tokens: int,
    ts: float,
) -> Verdict:
    """Decide and hold, in one transaction under the budgets' row locks."""
    try:
        with lessor.mutex, transaction.atomic():
            _no_flush_wait()
            budgets = _lock_budgets([agent])
            if not budgets:
                return WITHIN
            standings = [standing(b, ts) for b in budgets]
            # This process's unused lease capacity must not make a budget look exceeded. Given
            # back only then: far from the limit a lease outlives a request that missed it.
            if (any(s.exceeded for s in standings)
                    and lessor.release_free([(b.agent, b.period) for b in budgets])):
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


def _no_flush_wait() -> None:
    if connection.vendor == "postgresql":
        # Holds and leases are void after a crash anyway: no need to wait for this commit's
        # WAL flush (a counter made here is re-made if lost).
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL synchronous_commit TO OFF")


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
_UNLEASE = "UPDATE tp_budget_holds SET amount_nano = amount_nano - %s WHERE id = %s"
_UNHOLD = "DELETE FROM tp_budget_holds WHERE trace_id IN ({})"
_GROW = (
    "UPDATE tp_budget_spend SET spent_nano = spent_nano + %s "
    "WHERE agent = %s AND period = %s AND period_start = %s"
)
_SPENDS = (
    "SELECT id, agent, period, period_start, spent_nano, alerted, exceeded "
    "FROM tp_budget_spend WHERE {}"
)
_SCOPE = "(agent = %s AND period = %s AND period_start = %s)"


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


def settle(records: list[Record], events: list[Event]) -> dict[Key, Budget]:
    """Inside the writer's transaction: add each row's cost to its spend counters and drop the
    holds of the requests these rows finish. Returns the counters that grew, with their budget.

    Plain SQL: this runs for every batch, on the thread that shares the GIL with the event
    loop, and compiling ORM statements each time showed in the requests' p99."""
    held = [r.trace_id for r in records if r.held]
    leased = [taken for r in records for taken in r.leases]
    costly = [e for e in events if e.cost_nano_usd > 0]
    if not (held or leased or costly):
        return {}
    # The same locks as admit(), taken first, so neither ever waits on the other's rows.
    budgets = _lock_budgets({r.agent_id for r in records if r.held or r.leases}
                            | {e.agent_id for e in costly})
    if held:
        with connection.cursor() as cursor:
            cursor.execute(_UNHOLD.format(", ".join(["%s"] * len(held))), held)
    if leased:
        # A leased request's reservation leaves the lease as its cost reaches the counter.
        per_lease: dict[int, int] = defaultdict(int)
        for hold_id, amount in leased:
            per_lease[hold_id] += amount
        with connection.cursor() as cursor:
            cursor.executemany(_UNLEASE, [(n, hold_id) for hold_id, n in per_lease.items()])
        transaction.on_commit(lambda: lessor.settled(leased))
    if not (budgets and costly):
        return {}
    grow: dict[Key, int] = defaultdict(int)
    owners: dict[Key, Budget] = {}
    starts: dict[tuple[str, float], float] = {}
    for e in costly:
        for b in budgets:
            if b.agent in ("", e.agent_id):
                # Rows of one batch fall in the same few minutes: one calendar sum per minute.
                minute = (b.period, e.ts // 60)
                if minute not in starts:
                    starts[minute] = b.bounds(e.ts)[0].timestamp()
                key = (b.agent, b.period, starts[minute])
                grow[key] += e.cost_nano_usd
                owners[key] = b
    with connection.cursor() as cursor:
        cursor.executemany(_GROW, [(nano, *key) for key, nano in grow.items()])
    # This process's own spend shows in its cached standings at once (alerts on the fast path).
    transaction.on_commit(lambda: lessor.spent(grow))
    return {key: owners[key] for key in grow}


def forget(records: list[Record]) -> None:
    """The writer gave up on these rows: their reservations are no longer in flight."""
    leased = [taken for r in records for taken in r.leases]
    if leased:
        lessor.settled(leased)


def notify(grown: dict[Key, Budget]) -> None:
    """After the writer's commit: say once per budget and period that it crossed its alert
    threshold or its limit (log line, and the webhook when one is set)."""
    if not grown:
        return
    keys = list(grown)
    with connection.cursor() as cursor:  # plain SQL, as in settle(): every batch runs this
        cursor.execute(_SPENDS.format(" OR ".join([_SCOPE] * len(keys))),
                       [v for key in keys for v in key])
        found = cursor.fetchall()
    for pk, agent, period, start, spent, alerted, exceeded in found:
        budget = grown.get((agent, period, start))
        if budget is None:
            continue
        # Whichever process flips a flag first says it; the others see 0 rows updated. A step
        # past both thresholds at once is said once, as exceeded.
        crossed = ""
        for kind, threshold, said in (("alert", budget.alert_nano, alerted),
                                      ("exceeded", budget.limit_nano, exceeded)):
            if spent < threshold or said:
                continue
            flag = _FLAGS[kind]
            if Spend.objects.filter(pk=pk, **{flag: False}).update(**{flag: True}):
                crossed = kind
        if crossed:
            _announce(crossed, budget, Spend(pk=pk, agent=agent, period=period,
                                             period_start=start, spent_nano=spent))


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


# --- leases ------------------------------------------------------------------------------------

LEASE_PREFIX = "lease:"
LeaseKey = tuple[str, str]  # (agent, period) of a Budget


def _lease_tag_prefix() -> str:
    """`lease:<host>:<pid>:`; with a serial of up to 5 digits it fits Hold.trace_id (32)."""
    return f"{LEASE_PREFIX}{socket.gethostname()[:12]}:{os.getpid()}:"


@dataclass(eq=False)  # identity: two leases may hold equal figures
class Lease:
    """This process's reserved capacity against one budget's Spend row (one period)."""

    hold_id: int
    spend_id: int
    agent: str
    period: str
    start: float  # the period, as unix times: a request outside it takes the exact path
    end: float
    limit_nano: int
    alert_nano: int
    spent_nano: int  # as last read, plus what this process's writer added since
    free: int = 0  # not yet handed to a request
    inflight: int = 0  # handed to requests whose rows have not landed yet
    renewed: float = 0.0  # unix time the row's `created` was last set


@dataclass
class _Plan:
    """What one refresh does to one lease, worked out under the lock, applied in the DB."""

    lease: Lease
    total: int  # the row's new amount
    grant: int = 0  # added to `free` only once the row says so (after commit)
    renew: bool = False
    drop: bool = False  # no free part and nothing in flight: delete the row
    retired: bool = False  # its period ended or its budget went: only settlements remain


class Lessor:
    """Keeps this process's leases and the cached budget scopes; one thread per process.

    Sizing (in units of the largest reservation seen in the last one to two minutes, so a lease
    covers many requests of the size this process actually serves): the free part is topped up
    to min(LEASE_UNITS units, unbound / LEASE_SHARE), where unbound is the limit minus spend,
    minus every other hold and lease, minus this process's requests in flight. With unbound
    below NEAR_UNITS units the free part is released instead, so near a limit every process
    decides through admit() and sees the true headroom. A free part below half its target is
    topped up, one above its target is cut back. Refreshes run every LEASE_REFRESH_SECONDS, and
    at once when an admission leaves a lease below LOW_WATER_UNITS or a request had to take the
    exact path. A process that served no budgeted request for a minute or two gives its leases
    back. Leases are renewed (`created`) every LEASE_RENEW_SECONDS, far within hold_ttl().
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()  # in-memory lease state: event loop, writer, lessor thread
        # Serialises this process's locked transactions that move lease capacity (refresh,
        # admit): a grant lands in memory only after its commit, and admit() must see it.
        self.mutex = threading.Lock()
        self.budgets: dict[str, tuple[LeaseKey, ...]] | None = None  # by agent; None: unread
        self.leases: dict[LeaseKey, Lease] = {}
        self.by_hold: dict[int, Lease] = {}  # every lease a record may still settle against
        self.ids: dict[LeaseKey, int] = {}  # the budgets' ids, read with `budgets`
        # The budgets (by id) this process's requests asked for while it had no lease for them:
        # a lease is taken only for these, so a budget nobody's traffic needs is never leased.
        self.wanted: dict[LeaseKey, int] = {}
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None
        self.stopping = False
        self.serial = 0
        self.failed = False
        self._unit_now = self._unit_prev = 0
        self._window_at = time.monotonic()

    # --- the event loop's side: memory only ----------------------------------------------------

    def start(self) -> None:
        if self.thread is not None:
            return
        with self.lock:
            if self.thread is None and not self.stopping:
                self.thread = threading.Thread(target=self._run, name="tokenpak-lessor",
                                               daemon=True)
                self.thread.start()

    def take(self, rec: Record, body_size: int, max_tokens: int) -> Verdict | None:
        """Admit on the leases, or None: the exact path decides."""
        r = _cached_reservation(rec.requested_model, rec.provider, body_size, max_tokens)
        if r is None:
            return None
        budgets = self.budgets or {}
        keys = budgets.get("", ())
        if rec.agent_id:
            keys += budgets.get(rec.agent_id, ())
        self.note(r)
        low = LOW_WATER_UNITS * self.unit
        with self.lock:
            leases = [self.leases.get(k) for k in keys]
            # Spend plus this process's whole lease must still fit: a request that cost far more
            # than its reservation can push spend up after the lease was granted, and then the
            # exact path decides (and gives the free part back).
            if not all(lease is not None and lease.start <= rec.ts < lease.end
                       and lease.free >= r
                       and lease.spent_nano + lease.free + lease.inflight <= lease.limit_nano
                       for lease in leases):
                taken: list[Lease] = []
            else:
                taken = [lease for lease in leases if lease is not None]
                for lease in taken:
                    lease.free -= r
                    lease.inflight += r
            running_low = not taken or any(lease.free < low for lease in taken)
            if not taken:
                self._want(keys)
        if running_low:
            self.wake.set()
        if not taken:
            return None
        rec.leases = [(lease.hold_id, r) for lease in taken]
        return Verdict(alert=any(lease.spent_nano >= lease.alert_nano for lease in taken))

    def note(self, r: int) -> None:
        """A budgeted request of this size was seen: leases are sized for the largest."""
        now = time.monotonic()
        if now - self._window_at >= UNIT_WINDOW_SECONDS:
            self._unit_prev, self._unit_now, self._window_at = self._unit_now, 0, now
        self._unit_now = max(self._unit_now, r)

    def want(self, keys: tuple[LeaseKey, ...]) -> None:
        """A request took the exact path for these budgets: lease them from now on."""
        with self.lock:
            self._want(keys)
        self.wake.set()

    def _want(self, keys: tuple[LeaseKey, ...]) -> None:
        for key in keys:
            if key not in self.wanted and key in self.ids:
                self.wanted[key] = self.ids[key]

    @property
    def unit(self) -> int:
        return max(self._unit_now, self._unit_prev)

    # --- the writer's side ---------------------------------------------------------------------

    def settled(self, leased: list[tuple[int, int]]) -> None:
        """After the writer's commit: these reservations left their lease rows."""
        with self.lock:
            for hold_id, r in leased:
                lease = self.by_hold.get(hold_id)
                if lease is not None:
                    lease.inflight -= r

    def spent(self, grow: dict[Key, int]) -> None:
        if not grow:
            return
        with self.lock:
            for lease in self.leases.values():
                lease.spent_nano += grow.get((lease.agent, lease.period, lease.start), 0)

    def release_free(self, keys: list[LeaseKey]) -> bool:
        """In admit()'s transaction: give back the free part of these budgets' leases; True
        when there was some."""
        released = []
        with self.lock:
            for key in keys:
                lease = self.leases.get(key)
                if lease is not None and lease.free:
                    released.append((lease.free, lease.hold_id))
                    lease.free = 0
        if released:
            with connection.cursor() as cursor:
                cursor.executemany(_UNLEASE, released)
        return bool(released)

    # --- the lessor thread ---------------------------------------------------------------------

    def _run(self) -> None:
        last = 0.0
        while not self.stopping:
            self.wake.wait(max(0.0, LEASE_REFRESH_SECONDS - (time.monotonic() - last)))
            gap = LEASE_MIN_GAP_SECONDS - (time.monotonic() - last)
            if gap > 0:
                time.sleep(gap)
            self.wake.clear()
            last = time.monotonic()
            if self.stopping:
                break
            try:
                # The connection stays open between refreshes (a new SQLite connection sets up
                # WAL and a 1 GB mmap each time); _reset_connection() drops it after an error.
                self.refresh()
                self._answered(None)
            except DatabaseError as e:
                self._answered(e)
            except Exception:  # the thread must outlive any one bad refresh
                log.exception("budget leases not refreshed")

    def read_budgets(self) -> None:
        """For the exact path's first request. Fails open: a ledger that cannot be read must
        not stop the user's traffic."""
        try:
            self._read_budgets()
            self._answered(None)
        except DatabaseError as e:
            self.budgets = {}
            self._answered(e)

    def _read_budgets(self) -> None:
        found: dict[str, list[LeaseKey]] = defaultdict(list)
        ids: dict[LeaseKey, int] = {}
        for pk, agent, period in Budget.objects.values_list("pk", "agent", "period"):
            found[agent].append((agent, period))
            ids[(agent, period)] = pk
        self.ids = ids
        self.budgets = {agent: tuple(keys) for agent, keys in found.items()}

    def _answered(self, error: DatabaseError | None) -> None:
        """Say once that the database stopped answering, and once that it answers again."""
        if error is None:
            if self.failed:
                log.warning("budgets: the database answers again; enforced")
            self.failed = False
            return
        _reset_connection()
        if not self.failed:
            log.error("budgets not enforced, leases not refreshed, until the database "
                      "answers: %s", error)
        self.failed = True

    def refresh(self, now: float | None = None) -> None:
        """Re-read the budgets and prices; grant, renew and release leases. Never on the
        request path: this thread's locked transaction is what the requests no longer make.
        `now` is for tests that cross a period's end."""
        pricing.refresh()
        try:
            self._read_budgets()
        except DatabaseError:
            self.budgets = {}  # fail open until it answers; _run says so once
            raise
        budgets = self.budgets
        with self.lock:
            if not self.unit:  # no budgeted traffic for a minute or two: give the leases back
                self.wanted.clear()
            wanted = {k: pk for k, pk in self.wanted.items()
                      if self.ids.get(k) == pk and k[0] in budgets}
            self.wanted = wanted
        agents = {agent for agent, _ in wanted}
        if not (self.by_hold or agents):
            return
        with self.mutex:
            with transaction.atomic():
                _no_flush_wait()
                locked = _lock_budgets(agents | {k[0] for k in self.leases})
                now = time.time() if now is None else now
                plans = self._plan(locked, wanted, now)
                for plan in plans:
                    self._apply(plan, now)
            with self.lock:  # committed: the granted capacity is in the rows now
                for plan in plans:
                    plan.lease.free += plan.grant

    def _plan(self, locked: list[Budget], wanted: dict[LeaseKey, int],
              now: float) -> list[_Plan]:
        plans: list[_Plan] = []
        own = self._own_rows()
        unit = self.unit
        current: set[LeaseKey] = set()
        for b in locked:
            key = (b.agent, b.period)
            s = standing(b, now)
            lease = self.leases.get(key)
            if lease is not None and lease.spend_id != s.spend_id:
                plans.append(self._retire(lease))  # a new period: settlements still come in
                lease = None
            if wanted.get(key) != b.pk:
                continue
            current.add(key)
            if lease is None:
                lease = Lease(hold_id=0, spend_id=s.spend_id, agent=b.agent, period=b.period,
                              start=s.start.timestamp(), end=s.end.timestamp(),
                              limit_nano=b.limit_nano, alert_nano=b.alert_nano,
                              spent_nano=s.spent_nano)
            row = own.get(lease.hold_id, 0)
            with self.lock:
                lease.limit_nano, lease.alert_nano = b.limit_nano, b.alert_nano
                lease.spent_nano = s.spent_nano
                unbound = b.limit_nano - s.spent_nano - (s.held_nano - row) - lease.inflight
                want = (min(LEASE_UNITS * unit, unbound // LEASE_SHARE)
                        if unit and unbound >= NEAR_UNITS * unit else 0)
                free = lease.free
                new_free = want if free < want // 2 or free > want else free
                if new_free < free:  # giving back is safe before the commit
                    lease.free = new_free
                total = new_free + lease.inflight
                drop = total == 0
                if drop:
                    self.leases.pop(key, None)
            if lease.hold_id == 0 and drop:
                continue  # nothing to lease, and no row yet
            plans.append(_Plan(lease, total, grant=max(0, new_free - free),
                               renew=now - lease.renewed >= LEASE_RENEW_SECONDS or total != row,
                               drop=drop))
        for key, lease in list(self.leases.items()):
            if key not in current:  # its budget went, or this process stopped serving it
                plans.append(self._retire(lease))
        planned = {id(p.lease) for p in plans}
        for lease in list(self.by_hold.values()):
            if id(lease) in planned or lease in self.leases.values():
                continue
            planned.add(id(lease))
            with self.lock:
                settled = lease.free + lease.inflight <= 0
            if settled:  # a retired lease whose last request has landed
                plans.append(_Plan(lease, 0, drop=True, retired=True))
        return plans

    def _retire(self, lease: Lease) -> _Plan:
        with self.lock:
            self.leases.pop((lease.agent, lease.period), None)
            lease.free = 0
            total = lease.inflight
        return _Plan(lease, total, renew=True, drop=total <= 0, retired=True)

    def _own_rows(self) -> dict[int, int]:
        ids = list(self.by_hold)
        if not ids:
            return {}
        return dict(Hold.objects.filter(id__in=ids).values_list("id", "amount_nano"))

    def _apply(self, plan: _Plan, now: float) -> None:
        lease = plan.lease
        if plan.drop:
            Hold.objects.filter(id=lease.hold_id).delete()
            with self.lock:
                for hold_id in [h for h, x in self.by_hold.items() if x is lease]:
                    del self.by_hold[hold_id]
            return
        updated = plan.renew and Hold.objects.filter(id=lease.hold_id).update(
            amount_nano=plan.total, created=now)
        if updated:
            lease.renewed = now
        elif not plan.retired and (lease.hold_id == 0 or plan.renew):
            # A new lease, or one whose row went (voided while this thread was stalled):
            # records admitted on an old id still find this lease through by_hold.
            self.serial = (self.serial + 1) % 100_000
            hold = Hold.objects.create(spend_id=lease.spend_id,
                                       trace_id=f"{_lease_tag_prefix()}{self.serial}",
                                       amount_nano=plan.total, created=now)
            with self.lock:
                lease.hold_id = hold.pk
                lease.renewed = now
                self.by_hold[hold.pk] = lease
                self.leases[(lease.agent, lease.period)] = lease

    def release_all(self) -> None:
        """A clean stop: the leases go with the process (after the writer's last rows)."""
        self.stopping = True
        self.wake.set()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout=2.0)
        if not self.by_hold:
            return
        try:
            with self.mutex:
                Hold.objects.filter(trace_id__startswith=_lease_tag_prefix()).delete()
        except DatabaseError as e:
            log.warning("budget leases not released (void after %.0f s): %s", hold_ttl(), e)
        with self.lock:
            self.leases.clear()
            self.by_hold.clear()


lessor = Lessor()


def _release_at_exit() -> None:
    lessor.release_all()


# Registered before the ledger writer's flush (which imports this module first), so it runs
# after it: requests that finished have settled against their leases by then.
atexit.register(_release_at_exit)
