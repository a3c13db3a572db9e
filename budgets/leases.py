"""Leases: this process's share of each budget, so most admissions need no query.

Each serving process holds, per budget that applies to its traffic, one lease: a Hold row
(trace_id `lease:<host>:<pid>:<n>`) whose amount is this process's reserved capacity, i.e. its
free part plus the reservations of its requests in flight. Leases are granted, renewed and
released by a background thread (`Lessor`) in the same kind of locked transaction as admission
(budgets.admission.admit), so spend plus every hold plus every lease never exceeds a limit. A
request that fits in the free part of every lease it needs is admitted on the event loop from
memory: no query, no thread hop. The ledger writer takes its reservation off the lease row in
the transaction that adds its cost to the counter (budgets.settlement). Near a limit leases are
released (see `Lessor` for the sizing rule) and every request goes through admit().

The design, and why it is safe: docs/design/leases.md#the-lessor-thread.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import defaultdict
from dataclasses import dataclass

from django.db import DatabaseError, connection, transaction

from budgets.models import Budget, Hold
from budgets.standings import (
    LEASE_PREFIX,
    UNLEASE,
    Key,
    cached_reservation,
    hold_ttl,
    lock_budgets,
    no_flush_wait,
    reset_connection,
    standing,
)
from telemetry import pricing
from telemetry.record import Record

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

    def take(self, rec: Record, body_size: int, max_tokens: int) -> bool | None:
        """Admit on the leases: whether a budget it took from is past its alert threshold; or
        None, taking nothing: the exact path decides."""
        r = cached_reservation(rec.requested_model, rec.provider, body_size, max_tokens)
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
        return any(lease.spent_nano >= lease.alert_nano for lease in taken)

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
                cursor.executemany(UNLEASE, released)
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
                # WAL and a 1 GB mmap each time); reset_connection() drops it after an error.
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
        reset_connection()
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
        budgets = self.budgets or {}  # _read_budgets() set it
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
                no_flush_wait()
                locked = lock_budgets(agents | {k[0] for k in self.leases})
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


def release_at_stop() -> None:
    """The ledger writer's stop hook (budgets/apps.py): the leases go with the process, after
    the writer's last rows have settled against them."""
    lessor.release_all()
