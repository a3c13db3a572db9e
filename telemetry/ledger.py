"""The ledger writer: the only code that writes tp_* rows while serving.

The proxy hands over a finished `Record` (a queue put, no I/O); a background thread prices it,
estimates tokens for cut streams, logs the request line, and inserts rows in batches. The
response never waits on the database.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, models, transaction

from budgets import guard
from telemetry import captures, pricing, retention, spool
from telemetry.columns import Columns
from telemetry.models import (
    NANO,
    Cost,
    Event,
    PricingSource,
    RecipeHit,
    Segment,
    Status,
    Usage,
    UsageSource,
)
from telemetry.spool import Spool
from telemetry.usage import TokenUsage

log = logging.getLogger("tokenpak.requests")
writer_log = logging.getLogger("tokenpak.ledger")


def new_trace_id(now: float | None = None) -> str:
    """32 hex digits, time-ordered like UUIDv7: 48 bits of milliseconds, then 80 random bits.

    Rows are appended in time order, so their primary-key indexes grow at the end and joins
    over a period read neighbouring pages instead of a random sample of the whole index.
    """
    ms = int((time.time() if now is None else now) * 1000)
    return f"{ms:012x}{secrets.randbits(80):020x}"


@dataclass
class Record:
    """Everything the ledger keeps about one request; filled in along the request's path."""

    trace_id: str
    provider: str
    event_type: str
    endpoint: str
    ts: float
    agent_id: str = ""
    session_id: str = ""
    requested_model: str = ""
    sent_model: str = ""
    model: str = ""  # as the provider reported it
    stream: bool = False
    status: str = Status.OK
    error_class: str = ""
    upstream_status: int | None = None
    request_id: str = ""
    upstream: str = ""  # host:port the answer came from
    failover: str = ""  # upstreams that failed first, and why
    duration_ms: float = 0.0
    ttfb_ms: float | None = None
    usage: TokenUsage | None = None
    # For cut streams: counts what was seen, run by the writer, never on the request path.
    estimate: Callable[[], TokenUsage] | None = None
    request_body: str | None = None
    response_body: str | None = None
    # proxy.compression.Outcome: what compression did; the writer counts what it saved.
    compression: Any = None
    # Set before forwarding only when the stats footer needs them; otherwise the writer counts.
    tokens_before: int = 0
    tokens_saved: int = 0
    # Budget holds were taken for this request: the writer drops them when the row lands.
    held: bool = False
    # Admitted on this process's budget leases instead: (lease hold id, amount) to settle.
    leases: list[tuple[int, int]] = field(default_factory=list)
    # For a debug capture (telemetry.captures): references to what the request path holds
    # anyway, copied only for a request the writer captures. `headers` are as forwarded,
    # credentials included: only captures.safe_headers() may turn them into anything stored.
    method: str = ""
    path: str = ""  # with the query string
    headers: list[tuple[str, str]] | None = None
    original_body: bytes = b""  # set only for requests worth capturing (billable, with a body)
    sent_body: bytes | None = None  # what went upstream after compression; None: nothing did
    route_note: str = ""  # what a budget did to it; empty: nothing
    answer: Callable[[], str] | None = None  # the answer's text, made only for a capture
    spool_seq: int = 0  # the spool file holding its `r` line; 0: none (telemetry.spool)
    # A decision still being made on another thread whose outcome the row depends on (a budget
    # check taking holds): the row is written once it is done (proxy/call.py).
    pending: Any = None

    def finish(self, status: str, *, error_class: str = "") -> None:
        self.status = status
        if error_class:
            self.error_class = error_class[:64]
        self.duration_ms = (time.time() - self.ts) * 1000.0


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
        self._stranded: list[tuple[bool, Rows]] = []

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
                    line = _facts_line(record)
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
        """A clean stop: write what is queued; the spool goes when nothing in it is left."""
        self.flush()
        if self.spool is not None and not self._stranded:
            self.spool.close()

    def _run(self) -> None:
        try:
            self._write_stopped_processes_rows()
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
                _log_request(r, *entry.rows[:3])
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

    def _entry(self, r: Record) -> _Entry | None:
        """The record's rows, made storable; None when none could be made (set aside)."""
        try:
            return _Entry(_storable(_rows(r)), r, r.spool_seq)
        except Exception as e:  # a bug, or a value nothing expected: this row only
            writer_log.exception("ledger: no row could be made of %s", r.trace_id)
            self._set_aside({"r": _facts(r)}, e, r.trace_id)
            guard.forget([r])
            if self.spool is not None and r.spool_seq:
                self.spool.done([r.spool_seq])
            return None

    def _land(self, todo: list[list[_Entry]]) -> int:
        """Commit these parts of a batch, each in its transaction with its budget settlement;
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

    def _commit(self, part: list[_Entry]) -> None:
        records = [e.record for e in part]
        rows = [e.rows for e in part]
        with transaction.atomic(), connection.cursor() as cursor:
            _insert(cursor, rows)
            # Budget spend moves with the rows, in the same transaction: a part that is rolled
            # back settles nothing, a part that commits settles its own rows, once.
            grown = guard.settle(records, [SimpleNamespace(**row[0]) for row in rows])
            captures.take(records)
        if self.spool is not None:
            self.spool.done([e.seq for e in part if e.seq])
        _notify(grown)

    def _alone(self, entry: _Entry, error: Exception) -> int:
        """One row the database refused: with its text in plain ASCII, or set aside."""
        trace_id = entry.rows[0]["trace_id"]
        try:
            self._commit([_Entry(_plain(entry.rows), entry.record, entry.seq)])
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

    def _release(self, entry: _Entry) -> None:
        """A row set aside: its budget holds and lease reservations go, its cost counts
        nowhere (spend stays the ledger's sum); its spool line goes."""
        r = entry.record
        event = entry.rows[0]
        mine = SimpleNamespace(trace_id=event["trace_id"], agent_id=event.get("agent_id", ""),
                               held=r.held, leases=r.leases)
        try:
            with transaction.atomic():
                guard.settle([mine], [])
        except Exception as e:  # held for hold_ttl() at worst, as for a killed request
            writer_log.error("ledger: the budget holds of %s stay until they expire (%s)",
                             event["trace_id"], _why(e))
            guard.forget([r])
        if self.spool is not None and entry.seq:
            self.spool.done([entry.seq])

    def _outage(self, entries: list[_Entry], error: Exception) -> None:
        """The database refuses rows. Requests go on being forwarded; their rows go to the
        spool (or memory, when the disk is full too) and in when the database takes them."""
        since = time.time()
        writer_log.error("ledger: the database refused %d rows (%s). Requests are still "
                         "forwarded; their rows wait in the spool and are written when the "
                         "database is back.", len(entries), str(error).strip())
        # Their reservations are no longer in flight: the rows will settle only their cost.
        guard.forget([e.record for e in entries])
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
                        _log_request(item, *entry.rows[:3])
                        guard.forget([item])
                        kept.append((item.held, entry.rows))
                    drained += 1
                    time.sleep(0)
            if kept:
                lines = [_rows_line(held, row) for held, row in kept]
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
        """Write the rows kept in memory, then those in these spool files, skipping any the
        database holds already. Raises UNAVAILABLE when it takes nothing; a line or a row it
        refuses is set aside."""
        written = self._insert_new(self._stranded)
        self._stranded = []
        chunk: list[tuple[bool, Rows]] = []
        for held, row in replayable(paths, self._set_aside):
            chunk.append((held, row))
            if len(chunk) >= settings.LEDGER_BATCH_SIZE:
                written += self._insert_new(chunk)
                chunk = []
        return written + self._insert_new(chunk)

    def _write_stopped_processes_rows(self) -> None:
        """Rows a killed process left in the spool: written before any new ones."""
        if self.spool is None:
            return
        directory = self.spool.directory
        for owner in spool.owners(directory, me=self.spool.name):
            if owner.alive:
                continue
            fd = spool.claim(directory, owner.name)
            if fd is None:
                continue
            try:
                written = self._replay(owner.files)
            except Exception as e:  # UNAVAILABLE, or a bug: the files stay for the next start
                connection.close()
                os.close(fd)
                writer_log.error("ledger: the rows a stopped process left in the spool could "
                                 "not be written (%s); the next start tries again", e)
                continue
            spool.release(directory, owner.name, fd)
            if written:
                writer_log.warning("ledger: wrote %d rows a stopped process (%s) left in the "
                                   "spool", written, owner.name)

    def _insert_new(self, entries: list[tuple[bool, Rows]]) -> int:
        """Insert the rows the database does not hold yet (a kill -9 can come after the commit
        and before the spool was emptied); settle their cost against the budgets. Returns how
        many. Raises UNAVAILABLE when the database takes nothing."""
        if not entries:
            return 0
        fresh: dict[str, _Entry] = {}
        for held, row in entries:
            row = _storable(row)
            event = row[0]
            fresh[event["trace_id"]] = _Entry(row, SimpleNamespace(
                trace_id=event["trace_id"], agent_id=event["agent_id"], held=held, leases=[],
                original_body=b""))
        there = Event.objects.filter(trace_id__in=list(fresh)).values_list("trace_id", flat=True)
        for trace_id in there:
            del fresh[trace_id]
        return self._land([list(fresh.values())]) if fresh else 0


Rows = tuple[dict, dict, dict, list[dict], list[dict]]

# The database takes no writes at all (down, locked, disk full): the rows wait and go in when it
# is back. Anything else is about the rows themselves: the rows at fault are found and set apart.
UNAVAILABLE = (OperationalError, InterfaceError)


@dataclass
class _Entry:
    """One request's rows on their way in; `record` is what budget settlement and captures
    read (the Record, or for a replayed row the little they need)."""

    rows: Rows
    record: Any
    seq: int = 0  # the spool file holding its `r` line


def _why(error: BaseException) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())}"[:300]


def _takes_rows() -> bool:
    """Whether the database takes a plain row now (inserted, then rolled back): a row is set
    aside only when the fault is its own."""
    probe = _rows(Record(trace_id=new_trace_id(), provider="", event_type="", endpoint="",
                         ts=time.time()))
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            _insert(cursor, [probe])
            transaction.set_rollback(True)
    except Exception:
        return False
    return True


def _storable(row: Rows) -> Rows:
    """The rows with every value one its column takes (telemetry.columns), in place."""
    event, usage, cost, segments, hits = row
    _EVENTS.columns.fit(event)
    _USAGE.columns.fit(usage)
    _COSTS.columns.fit(cost)
    for s in segments:
        _SEGMENTS.columns.fit(s)
    for h in hits:
        _RECIPE_HITS.columns.fit(h)
    return row


def _plain(row: Rows) -> Rows:
    """A copy of the rows with their text in printable ASCII: the last try before setting
    them aside."""
    event, usage, cost, segments, hits = row
    return (_EVENTS.columns.plain(event), _USAGE.columns.plain(usage),
            _COSTS.columns.plain(cost), [_SEGMENTS.columns.plain(s) for s in segments],
            [_RECIPE_HITS.columns.plain(h) for h in hits])


def _insert(cursor: Any, rows: list[Rows]) -> None:
    for table, values in (
        (_EVENTS, [row[0] for row in rows]),
        (_USAGE, [row[1] for row in rows]),
        (_COSTS, [row[2] for row in rows]),
        (_SEGMENTS, [s for row in rows for s in row[3]]),
        (_RECIPE_HITS, [h for row in rows for h in row[4]]),
    ):
        table.insert(cursor, values)


def _notify(grown: dict) -> None:
    try:
        guard.notify(grown)
    except Exception:  # the rows are written; an alert must never stop the writer
        writer_log.exception("budget alerts could not be checked")


# --- the spool's lines ------------------------------------------------------------------------

# A request's facts as its `r` line keeps them: no headers, no prompt (bodies only when
# store_prompts put them in the ledger anyway).
_FACTS = ("trace_id", "provider", "event_type", "endpoint", "ts", "agent_id", "session_id",
          "requested_model", "sent_model", "model", "stream", "status", "error_class",
          "upstream_status", "request_id", "upstream", "failover", "duration_ms", "ttfb_ms",
          "held")


def _facts_line(r: Record) -> bytes:
    return json.dumps({"r": _facts(r)}, separators=(",", ":")).encode() + b"\n"


def _facts(r: Record) -> dict[str, Any]:
    facts: dict[str, Any] = {k: getattr(r, k) for k in _FACTS}
    if r.usage is not None:
        facts["usage"] = vars(r.usage)
    if r.compression is not None:
        facts["compression"] = {"recipes": r.compression.recipes, "stages": r.compression.stages}
    if r.request_body is not None:
        facts["request_body"] = r.request_body
    if r.response_body is not None:
        facts["response_body"] = r.response_body
    return facts


def _rows_line(held: bool, row: Rows) -> bytes:
    return json.dumps({"w": row, "held": held}, separators=(",", ":"), default=str).encode() + b"\n"


@dataclass
class _Replayed:
    """What an `r` line says of compression: what fired and how long it took. What it saved
    needs the prompt, which the spool never holds: a row rebuilt from the line says 0."""

    recipes: dict[str, int]
    stages: list[tuple[str, float]]

    def savings(self, model: str) -> Any:
        from proxy.compression import Savings

        return Savings()


def replayable(paths: list[Path], set_aside: Callable[[dict, Exception, Any], None],
               ) -> Iterator[tuple[bool, Rows]]:
    """(held, rows) for every request in these spool files: its `w` line when there is one,
    else rows rebuilt from its `r` line. A line no rows can be made of goes to `set_aside`
    (the line, why, its trace id), never stopping the others."""
    finished = {spool.trace_id(e) for e in spool.lines(paths) if "w" in e} - {None}
    for entry in spool.lines(paths):
        if "r" in entry and spool.trace_id(entry) in finished:
            continue
        if "r" not in entry and "w" not in entry:
            continue
        try:
            yield _replayed(entry)
        except Exception as e:  # an old version's line, a damaged one: this one only
            set_aside({"line": entry}, e, spool.trace_id(entry))


def _replayed(entry: dict[str, Any]) -> tuple[bool, Rows]:
    if "w" in entry:
        event, usage, cost, segments, hits = entry["w"]
        if not (isinstance(event.get("trace_id"), str) and event["trace_id"]):
            raise ValueError("the line names no trace id")
        event["created_at"] = datetime.fromtimestamp(float(event["ts"]), tz=UTC)
        cost["cost_usd"] = Decimal(str(cost["cost_usd"]))
        cost["cost_saved_usd"] = Decimal(str(cost["cost_saved_usd"]))
        return bool(entry.get("held")), (event, usage, cost, list(segments), list(hits))
    facts = dict(entry["r"])
    usage = facts.pop("usage", None)
    compressed = facts.pop("compression", None)
    r = Record(**facts)
    if not (isinstance(r.trace_id, str) and r.trace_id):
        raise ValueError("the line names no trace id")
    r.usage = TokenUsage(**usage) if usage is not None else None
    if compressed is not None:
        r.compression = _Replayed(compressed["recipes"],
                                  [tuple(s) for s in compressed["stages"]])
    return bool(r.held), _rows(r)


def _rows(r: Record) -> Rows:
    """The batch's rows for one record, as column values (tp_events, tp_usage, tp_costs, …)."""
    usage, source = r.usage, UsageSource.PROVIDER
    if usage is None and r.estimate is not None:
        try:
            usage, source = r.estimate(), UsageSource.ESTIMATED
        except Exception:  # an estimate must never cost the row
            writer_log.exception("token estimate failed for %s", r.trace_id)
            usage = None
    if usage is None:
        usage, source = TokenUsage(), UsageSource.NONE
    elif usage.estimated:
        source = UsageSource.ESTIMATED
    usage = _counted(usage)

    model = r.model or r.sent_model or r.requested_model
    cost_usd = Decimal("0")
    pricing_source, priced_as = PricingSource.NONE, ""
    price = None
    if usage.total:
        price = pricing.resolve(model, r.provider)
        cost_usd = pricing.cost(usage, price)
        pricing_source, priced_as = price.source, price.priced_as

    saved, saved_usd, kinds, saved_estimated = 0, Decimal("0"), {}, False
    hits: dict[str, int] = {}
    if r.compression is not None:
        hits = r.compression.recipes
        if usage.input_tokens > 0:  # savings on what the provider billed, nothing else
            try:
                s = r.compression.savings(model)
                saved, kinds, saved_estimated = max(0, s.tokens_saved), s.segments, s.estimated
                if saved:
                    saved_usd = pricing.saved_cost(
                        usage, price or pricing.resolve(model, r.provider), s.saved_prior,
                        s.saved_new, s.new_after)
            except Exception:  # counting must never cost the row
                writer_log.exception("savings could not be counted for %s", r.trace_id)
    event = dict(
        trace_id=r.trace_id,
        request_id=r.request_id,
        event_type=r.event_type,
        ts=r.ts,
        created_at=datetime.fromtimestamp(r.ts, tz=UTC),
        provider=r.provider,
        model=model,
        agent_id=r.agent_id,
        duration_ms=round(r.duration_ms, 3),
        status=r.status,
        error_class=r.error_class,
        session_id=r.session_id,
        endpoint=r.endpoint,
        requested_model=r.requested_model,
        sent_model=r.sent_model,
        stream=r.stream,
        upstream_status=r.upstream_status,
        upstream=r.upstream,
        failover=r.failover,
        ttfb_ms=None if r.ttfb_ms is None else round(r.ttfb_ms, 3),
        usage_source=source,
        compress_ms=round(sum(ms for _, ms in r.compression.stages), 3)
        if r.compression is not None and r.compression.stages else None,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cost_nano_usd=int(cost_usd * NANO),
        tokens_saved=saved,
        saved_nano_usd=int(saved_usd * NANO),
        request_body=r.request_body,
        response_body=r.response_body,
    )
    usage_row = dict(
        trace_id=r.trace_id,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_hit=usage.cache_read_tokens > 0,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        cache_write_1h_tokens=usage.cache_write_1h_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        estimated=source == UsageSource.ESTIMATED,
        tokens_saved=saved,
        savings_pct=round(100.0 * saved / (usage.input_tokens + saved), 2) if saved else 0.0,
        saved_estimated=saved_estimated,
    )
    cost_row = dict(
        trace_id=r.trace_id,
        cost_usd=cost_usd,
        cost_saved_usd=saved_usd,
        pricing_source=pricing_source,
        priced_as=priced_as,
    )
    segments = [
        dict(trace_id=r.trace_id, segment_type=kind, tokens_raw=raw, tokens_after=after)
        for kind, (raw, after) in sorted(kinds.items())
    ]
    fired = [dict(trace_id=r.trace_id, recipe=name, hits=n)
             for name, n in sorted(hits.items())]
    return event, usage_row, cost_row, segments, fired


def _counted(usage: TokenUsage) -> TokenUsage:
    """The counts as tp_usage holds them (absurd ones clamped to their columns), so that the
    cost is the price of what the ledger shows, and reports can still sum it."""
    counts = (usage.input_tokens, usage.output_tokens, usage.cache_read_tokens,
              usage.cache_write_tokens, usage.cache_write_1h_tokens, usage.reasoning_tokens)
    try:
        if _TOKENS[0] <= min(counts) and max(counts) <= _TOKENS[1]:
            return usage  # every provider's counts: nothing to fit
    except TypeError:  # a spool line's count that is no number
        pass
    given = vars(usage)
    fitted = dict(given)
    _USAGE.columns.fit(fitted)
    return TokenUsage(**{k: v for k, v in fitted.items() if k in given})


def _log_request(r: Record, event: dict, usage: dict, cost: dict) -> None:
    log.info(
        "%s %s %s model=%s status=%s upstream=%s in=%d out=%d cost=$%s %.1fms%s",
        r.trace_id,
        r.provider,
        r.endpoint,
        event["model"] or "-",
        r.status,
        r.upstream_status if r.upstream_status is not None else "-",
        usage["input_tokens"],
        usage["output_tokens"],
        format(cost["cost_usd"], "f"),
        r.duration_ms,
        " (estimated)" if usage["estimated"] else "",
    )


class _Insert:
    """One table's INSERT, prepared once from its model: plain values, one executemany.

    The ORM's bulk_create cost about 150 µs a request (a model instance per row, every field
    prepared one call at a time), on the thread that shares the GIL with the event loop."""

    def __init__(self, model: type[models.Model]) -> None:
        self.model = model
        # Every column but an auto-increment id, which the database fills in.
        self.fields = [f for f in model._meta.concrete_fields
                       if not (f.primary_key and isinstance(f, models.AutoField))]
        self.names = [f.attname for f in self.fields]
        self.defaults = [f.get_default() for f in self.fields]
        self.stamps = [i for i, f in enumerate(self.fields) if isinstance(f, models.DateTimeField)]
        self.columns = Columns(self.fields)
        self.sql = ""

    def insert(self, cursor: Any, rows: list[dict]) -> None:
        if not rows:
            return
        if not self.sql:
            qn = connection.ops.quote_name
            self.sql = "INSERT INTO {} ({}) VALUES ({})".format(
                qn(self.model._meta.db_table), ", ".join(qn(f.column) for f in self.fields),
                ", ".join(["%s"] * len(self.fields)))
        params = []
        for row in rows:
            values = [row.get(name, default)
                      for name, default in zip(self.names, self.defaults, strict=True)]
            for i in self.stamps:  # SQLite keeps datetimes as text, in Django's own format
                values[i] = connection.ops.adapt_datetimefield_value(values[i])
            params.append(values)
        cursor.executemany(self.sql, params)


_EVENTS, _USAGE, _COSTS = _Insert(Event), _Insert(Usage), _Insert(Cost)
_SEGMENTS, _RECIPE_HITS = _Insert(Segment), _Insert(RecipeHit)
_TOKENS = _USAGE.columns.limits("input_tokens")  # every count column is an IntegerField

writer = LedgerWriter()


def record(r: Record) -> None:
    writer.submit(r)


# A clean stop (SIGTERM, Ctrl-C, end of a command) writes what is queued before exiting.
atexit.register(writer.stop)
