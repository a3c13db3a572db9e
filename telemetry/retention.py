"""Deleting old ledger rows: `prune` (manage.py prune, and the server once a day) and
`purge_all` (manage.py purge --telemetry).

Rows go in chunks of trace_ids taken oldest first from the ts index, one transaction per chunk
(children, then events), so memory stays flat on any ledger size and the write lock is never
held for long: on SQLite there is one writer, and the proxy's ledger writer waits for it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction

from telemetry import reports

log = logging.getLogger("tokenpak.retention")

# Children first: their foreign keys point at tp_events.
CHILD_TABLES = ("tp_segments", "tp_recipe_hits", "tp_captures", "tp_usage", "tp_costs")
TABLES = (*CHILD_TABLES, "tp_events")

# The server's first run comes a little after it starts (or after its first request, see
# start()), not at import: startup stays fast and tests can shrink the wait.
def _first_run_seconds() -> float:
    try:
        return float(os.environ.get("TOKENPAK_RETENTION_FIRST_RUN_SECONDS", "60"))
    except ValueError:  # a test knob, not a setting: a typo must not stop the server
        return 60.0


FIRST_RUN_SECONDS = _first_run_seconds()
INTERVAL_SECONDS = 24 * 3600
RETRY_SECONDS = 3600  # after a failed run; a day is too long to leave a broken run alone
# In the server, small chunks with a pause between them: each chunk holds SQLite's write lock
# for a few ms, and the ledger writer and requests get their turn in the pause.
BACKGROUND_CHUNK = 1_000
BACKGROUND_PAUSE_SECONDS = 0.05

Progress = Callable[[int, int], None]


def prune(
    before: datetime,
    *,
    chunk: int = 10_000,
    dry_run: bool = False,
    progress: Progress | None = None,
    pause: float = 0.0,
) -> int:
    """Delete every request older than `before` with its usage, cost, segment, recipe hit and
    capture rows.

    Returns how many requests were deleted (or would be, with dry_run). `progress(done, total)`
    is called after each chunk; `pause` seconds are slept between chunks.
    """
    cutoff = before.timestamp()
    total = _count(cutoff)
    if dry_run or not total:
        return total
    return _delete_chunks(cutoff, total, chunk=chunk, progress=progress, pause=pause)


def purge_all(*, chunk: int = 10_000, progress: Progress | None = None) -> int:
    """Delete every ledger row (tp_events and its children, CHILD_TABLES); returns how many
    requests were deleted. Prices (tp_pricing), budgets, settings and users are not touched;
    budgets' spend counters go with the rows they summed (the next request re-reads them from
    the ledger), so `budget status` and `cost` keep agreeing.

    Chunked like prune rather than four DELETEs in one transaction: on SQLite one transaction
    over a million rows holds the only write lock for many seconds, long enough for a running
    server's ledger writer to give up (the busy timeout) and spool its rows, and grows the WAL by
    the size of the ledger. An interrupted purge leaves some old rows; running it again ends it.
    """
    deleted = _delete_chunks(None, _count(None), chunk=chunk, progress=progress, pause=0.0)
    # Sweep what the chunks could not see: rows written meanwhile with an earlier ts.
    with transaction.atomic(), connection.cursor() as cursor:
        for table in TABLES:
            cursor.execute(f"DELETE FROM {connection.ops.quote_name(table)}")
            if table == "tp_events":
                deleted += max(cursor.rowcount, 0)
        for table in ("tp_budget_holds", "tp_budget_spend"):
            cursor.execute(f"DELETE FROM {connection.ops.quote_name(table)}")
    return deleted


def _count(cutoff: float | None) -> int:
    # An index-only count on tp_events_ts (ts is its first column).
    where, params = ("WHERE ts < %s", [cutoff]) if cutoff is not None else ("", [])
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT COUNT(*) FROM tp_events {where}", params)
        return int(cursor.fetchone()[0])


def _delete_chunks(
    cutoff: float | None, total: int, *, chunk: int, progress: Progress | None, pause: float
) -> int:
    if chunk < 1:
        raise ValueError("chunk must be at least 1")
    deleted = 0
    # Keyset pagination: start each chunk's index scan where the last one ended, so PostgreSQL
    # does not walk the dead index entries of every earlier chunk (O(n²) on a big prune).
    # `>=`, not `>`: rows sharing the last ts that did not fit in the chunk are still there.
    floor: float | None = None
    while True:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(*_select_chunk(cutoff, floor, chunk))
            picked = cursor.fetchall()
            if not picked:
                break
            floor = picked[-1][1]
            in_ids, param = _in_ids([row[0] for row in picked])
            for table in TABLES:
                cursor.execute(
                    f"DELETE FROM {connection.ops.quote_name(table)} WHERE trace_id {in_ids}",
                    [param],
                )
            deleted += len(picked)
        if progress is not None:
            progress(deleted, max(total, deleted))
        if len(picked) < chunk:
            break
        if pause:
            time.sleep(pause)
    return deleted


def _select_chunk(
    cutoff: float | None, floor: float | None, chunk: int
) -> tuple[str, list[float]]:
    where: list[str] = []
    params: list[float] = []
    if floor is not None:
        where.append("ts >= %s")
        params.append(floor)
    if cutoff is not None:
        where.append("ts < %s")
        params.append(cutoff)
    sql = "SELECT trace_id, ts FROM tp_events"
    if where:
        sql += " WHERE " + " AND ".join(where)
    return sql + " ORDER BY ts LIMIT %s", [*params, chunk]


def _in_ids(ids: list[str]) -> tuple[str, list[str] | str]:
    """`IN <ids>` as one parameter, whatever the chunk size: SQLite caps bound variables
    (32,766) and PostgreSQL plans `= ANY(array)` as one index lookup per id."""
    if connection.vendor == "postgresql":
        return "= ANY(%s)", ids
    return "IN (SELECT value FROM json_each(%s))", json.dumps(ids)


# --- the server's daily run ----------------------------------------------------------------

_started = False
_start_lock = threading.Lock()


def start() -> None:
    """Start the daily retention thread, once per process. Called by the ledger writer when it
    starts, so it runs only in a process that serves and records requests (daphne,
    runserver), never in management commands, which write no ledger rows."""
    global _started
    with _start_lock:
        if _started:
            return
        _started = True
    days = settings.RETENTION_DAYS
    if not settings.TELEMETRY_ENABLED or not days:
        log.info("retention: off (telemetry.retention_days = 0), the ledger is kept forever")
        return
    threading.Thread(
        target=_daily, args=(days,), name="tokenpak-retention", daemon=True
    ).start()


def stay_off() -> None:
    """For a command that sends a request through the proxy in its own process (`replay`): its
    ledger writer must not start the daily run, which belongs to serving processes."""
    global _started
    with _start_lock:
        _started = True


def _daily(days: int) -> None:
    wait = FIRST_RUN_SECONDS
    while True:
        time.sleep(wait)
        wait = INTERVAL_SECONDS if run_once(days) else RETRY_SECONDS


def run_once(days: int) -> bool:
    """One background run; logs one line. False when it failed."""
    before = datetime.now(tz=reports.zone()) - timedelta(days=days)
    started = time.monotonic()
    try:
        deleted = prune(before, chunk=BACKGROUND_CHUNK, pause=BACKGROUND_PAUSE_SECONDS)
    except Exception as e:  # whatever it was, the thread must live to try again
        log.error("retention: run failed, retrying in %d min: %s: %s",
                  RETRY_SECONDS // 60, type(e).__name__, e)
        return False
    finally:
        # This thread sleeps a day between runs: don't hold a connection that long.
        connection.close()
    log.info(
        "retention: deleted %s requests older than %s (%d day%s) in %.1f s",
        reports.count(deleted),
        describe(before),
        days,
        "" if days == 1 else "s",
        time.monotonic() - started,
    )
    return True


def describe(moment: datetime) -> str:
    """A cutoff as people read it, in the configured zone."""
    return moment.astimezone(reports.zone()).strftime("%Y-%m-%d %H:%M")
