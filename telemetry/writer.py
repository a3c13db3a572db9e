"""The ledger writer: the only code that writes tp_* rows while serving.

The proxy hands over a finished `Record` (record(): a queue put, no I/O); a background thread
prices it, estimates tokens for cut streams, logs the request line, and inserts rows in batches.
The response never waits on the database.

Other apps listen to it; it knows none of them (budgets register in their AppConfig.ready()).
For each part of a batch it commits, in this order:

1. inside the transaction, after the part's rows are inserted: every `on_batch` hook, in the
   order they were registered, as fn(cursor, records, rows); then debug captures
   (telemetry.captures). What a hook writes commits with the rows or rolls back with them:
   a part the database refuses is split and retried, so a hook runs once for every part that
   commits and its work in a rolled-back part is undone with the rows;
2. after the commit, once the part's spool lines are done: whatever each hook returned (a
   callable, or None), in the same order. An error there is logged; the rows stay.

A request whose rows the writer gives up on for now (none could be made, the row is set aside,
or the database is down and the rows wait in the spool) goes to every `on_give_up` hook; a row
set aside for good also runs the `on_batch` hooks, in a transaction of its own, with the
request in `records` and nothing in `rows`. The `on_stop` hooks run at a clean stop, after the
last rows are written.

The design, and why it is safe: docs/design/spool.md.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction

from telemetry import captures, replay, retention, spool
from telemetry.record import Record, new_trace_id
from telemetry.rows import Entry, Rows, insert, plain, rows_of, storable
from telemetry.spool import Spool

log = logging.getLogger("tokenpak.requests")
writer_log = logging.getLogger("tokenpak.ledger")

AfterCommit = Callable[[], None]
# fn(cursor, records, rows) inside the transaction; returns what to run after the commit.
BatchHook = Callable[[Any, list[Record], list[Rows]], AfterCommit | None]
GiveUpHook = Callable[[list[Record]], None]

_on_batch: list[BatchHook] = []
_on_give_up: list[GiveUpHook] = []
_on_stop: list[Callable[[], None]] = []


def on_batch(fn: BatchHook) -> None:
    """Run fn(cursor, records, rows) inside every transaction that writes rows (see above)."""
    if fn not in _on_batch:
        _on_batch.append(fn)


def on_give_up(fn: GiveUpHook) -> None:
    """Run fn(records) for requests whose rows are not written now (see above)."""
    if fn not in _on_give_up:
        _on_give_up.append(fn)


def on_stop(fn: Callable[[], None]) -> None:
    """Run fn() at a clean stop, after the writer's last rows."""
    if fn not in _on_stop:
        _on_stop.append(fn)


# The database takes no writes at all (down, locked, disk full): the rows wait and go in when it
# is back. Anything else is about the rows themselves: the rows at fault are found and set apart.
UNAVAILABLE = (OperationalError, InterfaceError)


class LedgerWriter:
    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Record | object | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._pending = 0  # submitted and not yet written (or given up on)
        self._idle = threading.Condition(self._lock)
        self._said_off = False
        self._flushed = threading.Event()
        self.spool: Spool | None = None
        # Rows the database refused and the disk too (both full or gone): written when one is back.
        self._stranded: list[replay.Kept] = []

    def start(self) -> None:
        """Start the writer now (a serving process does at startup): it first writes what a
        stopped process left in the spool."""
        if settings.TELEMETRY_ENABLED:
            with self._lock:
                self._start()

    def _start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        if self.spool is None:
            self.spool = Spool(Path(settings.TOKENPAK_HOME) / "spool")
            try:
                self.spool.start()
            except OSError as e:
                writer_log.error("ledger: no spool (%s): a kill -9 loses the rows still queued", e)
                self.spool = None
        self._thread = threading.Thread(target=self._run, name="tokenpak-ledger", daemon=True)
        self._thread.start()
        retention.start()  # once per process; only serving processes write rows

    def submit(self, record: Record) -> None:
        if not settings.TELEMETRY_ENABLED:
            if not self._said_off:  # once per process, on the first request
                self._said_off = True
                writer_log.warning(
                    "telemetry is off (TOKENPAK_DB=%s): requests are forwarded, nothing is "
                    "recorded", settings.TOKENPAK_DB_LABEL,
                )
            return
        with self._lock:
            self._pending += 1
            self._start()
            # On disk before the response's last byte goes out; in the same order as the queue.
            if self.spool is not None:
                try:
                    line = replay.facts_line(record)
                except (TypeError, ValueError):  # a value JSON can't hold must not fail a request
                    writer_log.exception("ledger: %s could not be spooled", record.trace_id)
                else:
                    record.spool_seq = self.spool.append(line)
            self._queue.put(record)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every submitted record is written (or, in an outage, safe in the spool);
        True when nothing is left."""
        deadline = time.monotonic() + timeout
        self._flushed.set()  # don't wait for the batch window to end
        self._queue.put(None)  # wake the writer if it waits for a first record
        with self._idle:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        if self._stranded:
            writer_log.error("ledger: %d rows could not be written, to the database or to disk, "
                             "before this stop: they are lost", len(self._stranded))
        return True

    def stop(self) -> None:
        """A clean stop: write what is queued; the spool goes when nothing in it is left; then
        the on_stop hooks."""
        self.flush()
        if self.spool is not None and not self._stranded:
            self.spool.close()
        for fn in list(_on_stop):
            try:
                fn()
            except Exception:  # every listener gets its turn
                writer_log.exception("ledger: a stop hook failed")

    def _run(self) -> None:
        try:
            if self.spool is not None:
                replay.stopped_processes(self.spool, self._replay)
        except Exception:  # a bug must not cost the rows of the requests to come
            writer_log.exception("ledger: the rows a stopped process left could not be written")
        while True:
            first = self._queue.get()
            batch: list[Record] = [] if not isinstance(first, Record) else [first]
            if batch:
                # Let the window fill, then take what came without waiting again: one wake-up
                # per batch. Waking for every record cost the event loop its GIL each time.
                self._flushed.wait(settings.LEDGER_FLUSH_SECONDS)
                self._flushed.clear()
                while len(batch) < settings.LEDGER_BATCH_SIZE:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if isinstance(item, Record):  # None, a flush() marker: the batch goes now
                        batch.append(item)
            if batch:
                try:
                    self._write(batch)
                except Exception:  # never the writer thread's end: the next batch is written
                    writer_log.exception("ledger: %d rows were lost to an error", len(batch))
            self._done(len(batch))

    def _done(self, n: int) -> None:
        with self._idle:
            self._pending -= n
            self._idle.notify_all()

    def _write(self, batch: list[Record]) -> None:
        entries = []
        for r in batch:
            entry = self._entry(r)
            if entry is not None:
                entries.append(entry)
                _log_request(r, entry.rows)
            # This thread shares the GIL with the event loop: give it back between rows, so a
            # request waits for one row's work at most, never for a whole batch's.
            time.sleep(0)
        todo = [entries] if entries else []
        for attempt in range(3):
            try:
                self._land(todo)
                return
            except UNAVAILABLE as e:
                error = e
                connection.close()
                if attempt < 2:
                    time.sleep(0.2 * (attempt + 1))
        self._outage([entry for part in todo for entry in part], error)

    def _entry(self, r: Record) -> Entry | None:
        """The record's rows, made storable; None when none could be made (set aside)."""
        try:
            return Entry(storable(rows_of(r)), r, r.spool_seq)
        except Exception as e:  # a bug, or a value nothing expected: this row only
            writer_log.exception("ledger: no row could be made of %s", r.trace_id)
            self._set_aside({"r": replay.facts(r)}, e, r.trace_id)
            _give_up([r])
            if self.spool is not None and r.spool_seq:
                self.spool.done([r.spool_seq])
            return None

    def _land(self, todo: list[list[Entry]]) -> int:
        """Commit these parts of a batch, each in its transaction with its batch hooks;
        returns how many rows went in. A part the database refuses for its values (anything
        but UNAVAILABLE) is split in two until the row at fault is alone: that one is tried
        again with plain text, and at worst set aside, so every other row lands.

        Raises UNAVAILABLE (the database takes nothing now): `todo` then holds the parts not
        written yet, for the outage path."""
        written = 0
        while todo:
            part = todo[-1]
            try:
                self._commit(part)
            except UNAVAILABLE:
                raise
            except Exception as e:  # DataError, IntegrityError, UnicodeEncodeError, …
                if len(part) > 1:
                    todo.pop()
                    middle = len(part) // 2
                    todo += [part[middle:], part[:middle]]  # the first half goes first
                else:
                    written += self._alone(part[0], e)
                    todo.pop()
                continue
            todo.pop()
            written += len(part)
        return written

    def _commit(self, part: list[Entry]) -> None:
        records = [e.record for e in part]
        rows = [e.rows for e in part]
        with transaction.atomic(), connection.cursor() as cursor:
            insert(cursor, rows)
            # Budget spend moves with the rows, in the same transaction: a part that is rolled
            # back settles nothing, a part that commits settles its own rows, once.
            after = _in_transaction(cursor, records, rows)
            captures.take(records)
        if self.spool is not None:
            self.spool.done([e.seq for e in part if e.seq])
        _after_commit(after)

    def _alone(self, entry: Entry, error: Exception) -> int:
        """One row the database refused: with its text in plain ASCII, or set aside."""
        trace_id = entry.rows.event["trace_id"]
        try:
            self._commit([Entry(plain(entry.rows), entry.record, entry.seq)])
        except UNAVAILABLE:
            raise
        except Exception as again:
            if not _takes_rows():  # not this row's fault: the database takes none (no table…)
                raise OperationalError(f"the database takes no row: {_why(again)}") from again
            self._set_aside({"held": bool(entry.record.held), "w": entry.rows}, again, trace_id)
            self._release(entry)
            return 0
        writer_log.warning("ledger: the database refused the row of %s (%s): it is stored "
                           "with its text in plain ASCII", trace_id, _why(error))
        return 1

    def _set_aside(self, kept: dict[str, Any], error: Exception, trace_id: Any) -> None:
        directory = (self.spool.directory if self.spool is not None
                     else Path(settings.TOKENPAK_HOME) / "spool")
        reason = _why(error)
        try:
            where = str(spool.set_aside(directory, {"reason": reason, **kept}))
        except OSError as e:
            where = f"nowhere: {e}; it is lost"
        writer_log.error("ledger: the row of %s cannot be written, even with its text "
                         "cleaned (%s); the other rows are. It is set aside in %s",
                         trace_id, reason, where)

    def _release(self, entry: Entry) -> None:
        """A row set aside: the batch hooks run with its request and no row (budgets drop its
        holds and lease reservations, and its cost counts nowhere: spend stays the ledger's
        sum); its spool line goes."""
        r = entry.record
        event = entry.rows.event
        # As the row names it: the holds were taken under the trace id the row carries.
        mine = replace(r, trace_id=event["trace_id"], agent_id=event.get("agent_id", ""))
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                after = _in_transaction(cursor, [mine], [])
        except Exception as e:  # held for hold_ttl() at worst, as for a killed request
            writer_log.error("ledger: the budget holds of %s stay until they expire (%s)",
                             event["trace_id"], _why(e))
            _give_up([r])
        else:
            _after_commit(after)
        if self.spool is not None and entry.seq:
            self.spool.done([entry.seq])

    def _outage(self, entries: list[Entry], error: Exception) -> None:
        """The database refuses rows. Requests go on being forwarded; their rows go to the
        spool (or memory, when the disk is full too) and in when the database takes them."""
        since = time.time()
        writer_log.error("ledger: the database refused %d rows (%s). Requests are still "
                         "forwarded; their rows wait in the spool and are written when the "
                         "database is back.", len(entries), str(error).strip())
        # Their reservations are no longer in flight: the rows will settle only their cost.
        _give_up([e.record for e in entries])
        kept = [(bool(e.record.held), e.rows) for e in entries]
        pause, said = 0.5, since
        while True:
            with self._lock:  # no request joins the closed files or the queue meanwhile
                seq, paths = self.spool.rotate() if self.spool is not None else (0, [])
                mark = object()
                self._queue.put(mark)
            drained = 0
            while (item := self._queue.get()) is not mark:
                if isinstance(item, Record):
                    entry = self._entry(item)
                    if entry is not None:
                        _log_request(item, entry.rows)
                        _give_up([item])
                        kept.append((item.held, entry.rows))
                    drained += 1
                    time.sleep(0)
            if kept:
                lines = [replay.rows_line(held, rows) for held, rows in kept]
                if not (seq and self.spool is not None and self.spool.write_into(seq, lines)):
                    self._stranded.extend(kept)
                kept = []
            self._done(drained)
            waiting = len(self._stranded) + spool.count(paths)
            if self.spool is not None:
                self.spool.set_state({"failing_since": since, "error": str(error).strip()[:300],
                                      "waiting": waiting})
            try:
                written = self._replay(paths)
                break
            except UNAVAILABLE as e:
                error = e
                connection.close()
            if time.time() - said >= 60:  # loud, not a line per retry
                said = time.time()
                writer_log.error("ledger: the database still refuses rows (%s); %d waiting",
                                 str(error).strip(), waiting)
            time.sleep(pause)
            pause = min(pause * 2, 5.0)
        if self.spool is not None:
            self.spool.forget(paths)
            self.spool.set_state({})
        writer_log.warning("ledger: the database takes rows again: %d rows written after %.0f s",
                           written, time.time() - since)

    def _replay(self, paths: list[Path]) -> int:
        """Write the rows kept in memory, then those in these spool files (telemetry.replay).
        Raises UNAVAILABLE when the database takes nothing."""
        written = replay.insert_new(self._stranded, self._land)
        self._stranded = []
        return written + replay.replay_files(paths, self._land, self._set_aside)


def _in_transaction(cursor: Any, records: list[Record], rows: list[Rows]) -> list[AfterCommit]:
    return [after for fn in list(_on_batch) if (after := fn(cursor, records, rows)) is not None]


def _after_commit(after: list[AfterCommit]) -> None:
    for fn in after:
        try:
            fn()
        except Exception:  # the rows are written; a listener must never stop the writer
            writer_log.exception("ledger: an after-commit hook failed")


def _give_up(records: list[Record]) -> None:
    for fn in list(_on_give_up):
        fn(records)


def _why(error: BaseException) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())}"[:300]


def _takes_rows() -> bool:
    """Whether the database takes a plain row now (inserted, then rolled back): a row is set
    aside only when the fault is its own."""
    probe = rows_of(Record(trace_id=new_trace_id(), provider="", event_type="", endpoint="",
                           ts=time.time()))
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            insert(cursor, [probe])
            transaction.set_rollback(True)
    except Exception:
        return False
    return True


def _log_request(r: Record, rows: Rows) -> None:
    usage = rows.usage
    log.info(
        "%s %s %s model=%s status=%s upstream=%s in=%d out=%d cost=$%s %.1fms%s",
        r.trace_id,
        r.provider,
        r.endpoint,
        rows.event["model"] or "-",
        r.status,
        r.upstream_status if r.upstream_status is not None else "-",
        usage["input_tokens"],
        usage["output_tokens"],
        format(rows.cost["cost_usd"], "f"),
        r.duration_ms,
        " (estimated)" if usage["estimated"] else "",
    )


writer = LedgerWriter()


def record(r: Record) -> None:
    """Hand a finished request's record to the writer: a queue put (and its spool line)."""
    writer.submit(r)


# A clean stop (SIGTERM, Ctrl-C, end of a command) writes what is queued before exiting.
atexit.register(writer.stop)
