"""Settlement: the ledger writer's rows reach the budgets' spend counters.

Registered on the writer by budgets/apps.py: `settle_batch` runs inside the transaction that
inserts a batch's rows (telemetry.writer.on_batch), so spend commits with the rows or not at
all, once for every part of a batch that commits; the budget alerts run after the commit
(budgets.alerts). `forget` runs for requests whose rows the writer gives up on for now.

The design, and why it is safe: docs/design/leases.md#settlement-in-the-writers-transaction.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from django.db import connection, transaction

from budgets import alerts, leases
from budgets.models import Budget
from budgets.standings import UNLEASE, Key, lock_budgets
from telemetry.record import Record
from telemetry.rows import Rows

log = logging.getLogger("tokenpak.budget")

_UNHOLD = "DELETE FROM tp_budget_holds WHERE trace_id IN ({})"
_GROW = (
    "UPDATE tp_budget_spend SET spent_nano = spent_nano + %s "
    "WHERE agent = %s AND period = %s AND period_start = %s"
)


def settle_batch(cursor: Any, records: list[Record], rows: list[Rows]
                 ) -> Callable[[], None] | None:
    """The writer's batch hook: settle these rows; the alerts they may raise, after commit."""
    grown = settle(records, rows)
    if not grown:
        return None

    def announce() -> None:
        try:
            alerts.notify(grown)
        except Exception:  # the rows are written; an alert must never stop the writer
            log.exception("budget alerts could not be checked")

    return announce


def settle(records: list[Record], rows: list[Rows]) -> dict[Key, Budget]:
    """Inside the writer's transaction: add each row's cost to its spend counters and drop the
    holds and lease reservations of these requests (a request set aside comes with no row: its
    holds go, its cost counts nowhere). Returns the counters that grew, with their budget.

    Plain SQL: this runs for every batch, on the thread that shares the GIL with the event
    loop, and compiling ORM statements each time showed in the requests' p99."""
    held = [r.trace_id for r in records if r.held]
    leased = [taken for r in records for taken in r.leases]
    costly = [row.event for row in rows if row.event["cost_nano_usd"] > 0]
    if not (held or leased or costly):
        return {}
    # The same locks as admit(), taken first, so neither ever waits on the other's rows.
    budgets = lock_budgets({r.agent_id for r in records if r.held or r.leases}
                            | {e["agent_id"] for e in costly})
    if held:
        with connection.cursor() as cursor:
            cursor.execute(_UNHOLD.format(", ".join(["%s"] * len(held))), held)
    if leased:
        # A leased request's reservation leaves the lease as its cost reaches the counter.
        per_lease: dict[int, int] = defaultdict(int)
        for hold_id, amount in leased:
            per_lease[hold_id] += amount
        with connection.cursor() as cursor:
            cursor.executemany(UNLEASE, [(n, hold_id) for hold_id, n in per_lease.items()])
        lessor = leases.lessor
        transaction.on_commit(lambda: lessor.settled(leased))
    if not (budgets and costly):
        return {}
    grow: dict[Key, int] = defaultdict(int)
    owners: dict[Key, Budget] = {}
    starts: dict[tuple[str, float], float] = {}
    for e in costly:
        for b in budgets:
            if b.agent in ("", e["agent_id"]):
                # Rows of one batch fall in the same few minutes: one calendar sum per minute.
                minute = (b.period, e["ts"] // 60)
                if minute not in starts:
                    starts[minute] = b.bounds(e["ts"])[0].timestamp()
                key = (b.agent, b.period, starts[minute])
                grow[key] += e["cost_nano_usd"]
                owners[key] = b
    with connection.cursor() as cursor:
        cursor.executemany(_GROW, [(nano, *key) for key, nano in grow.items()])
    # This process's own spend shows in its cached standings at once (alerts on the fast path).
    lessor = leases.lessor
    transaction.on_commit(lambda: lessor.spent(grow))
    return {key: owners[key] for key in grow}


def forget(records: list[Record]) -> None:
    """The writer gave up on these rows: their reservations are no longer in flight."""
    leased = [taken for r in records for taken in r.leases]
    if leased:
        leases.lessor.settled(leased)

