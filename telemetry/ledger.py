"""The ledger writer: the only code that writes tp_* rows while serving.

The proxy hands over a finished `Record` (a queue put, no I/O); a background thread prices it,
estimates tokens for cut streams, logs the request line, and inserts rows in batches. The
response never waits on the database.
"""

from __future__ import annotations

import atexit
import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connection, models, transaction

from budgets import guard
from telemetry import captures, pricing, retention
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

    def finish(self, status: str, *, error_class: str = "") -> None:
        self.status = status
        if error_class:
            self.error_class = error_class[:64]
        self.duration_ms = (time.time() - self.ts) * 1000.0


class LedgerWriter:
    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Record | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._pending = 0  # submitted and not yet written (or given up on)
        self._idle = threading.Condition(self._lock)
        self._said_off = False
        self._flushed = threading.Event()

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
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="tokenpak-ledger", daemon=True
                )
                self._thread.start()
                retention.start()  # once per process; only serving processes submit records
        self._queue.put(record)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every submitted record is written; True when nothing is left."""
        deadline = time.monotonic() + timeout
        self._flushed.set()  # don't wait for the batch window to end
        self._queue.put(None)  # wake the writer if it waits for a first record
        with self._idle:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            batch: list[Record] = [] if first is None else [first]
            if first is not None:
                # Let the window fill, then take what came without waiting again: one wake-up
                # per batch. Waking for every record cost the event loop its GIL each time.
                self._flushed.wait(settings.LEDGER_FLUSH_SECONDS)
                self._flushed.clear()
                while len(batch) < settings.LEDGER_BATCH_SIZE:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is not None:  # a flush() marker: the batch goes now anyway
                        batch.append(item)
            if batch:
                self._write(batch)
            with self._idle:
                self._pending -= len(batch)
                self._idle.notify_all()

    def _write(self, batch: list[Record]) -> None:
        rows = []
        for r in batch:
            rows.append(row := _rows(r))
            _log_request(r, *row[:3])
            # This thread shares the GIL with the event loop: give it back between rows, so a
            # request waits for one row's work at most, never for a whole batch's.
            time.sleep(0)
        events = [SimpleNamespace(**row[0]) for row in rows]  # for guard.settle()
        for attempt in range(5):
            try:
                with transaction.atomic(), connection.cursor() as cursor:
                    for table, values in (
                        (_EVENTS, [row[0] for row in rows]),
                        (_USAGE, [row[1] for row in rows]),
                        (_COSTS, [row[2] for row in rows]),
                        (_SEGMENTS, [s for row in rows for s in row[3]]),
                        (_RECIPE_HITS, [h for row in rows for h in row[4]]),
                    ):
                        table.insert(cursor, values)
                    # Budget spend moves with the rows, in the same transaction.
                    grown = guard.settle(batch, events)
                    captures.take(batch)
                break
            except DatabaseError as e:
                writer_log.error(
                    "ledger write failed (attempt %d, %d rows): %s", attempt + 1, len(rows), e
                )
                connection.close()
                time.sleep(0.2 * (attempt + 1))
        else:
            writer_log.error("ledger: %d rows could not be written and were dropped", len(rows))
            guard.forget(batch)
            return
        try:
            guard.notify(grown)
        except Exception:  # the rows are written; an alert must never stop the writer
            writer_log.exception("budget alerts could not be checked")


def _rows(r: Record) -> tuple[dict, dict, dict, list[dict], list[dict]]:
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
        request_id=r.request_id[:128],
        event_type=r.event_type,
        ts=r.ts,
        created_at=datetime.fromtimestamp(r.ts, tz=UTC),
        provider=r.provider,
        model=model[:128],
        agent_id=r.agent_id[:128],
        duration_ms=round(r.duration_ms, 3),
        status=r.status,
        error_class=r.error_class,
        session_id=r.session_id[:128],
        endpoint=r.endpoint[:255],
        requested_model=r.requested_model[:128],
        sent_model=r.sent_model[:128],
        stream=r.stream,
        upstream_status=r.upstream_status,
        upstream=r.upstream[:255],
        failover=r.failover[:512],
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
        priced_as=priced_as[:128],
    )
    segments = [
        dict(trace_id=r.trace_id, segment_type=kind, tokens_raw=raw, tokens_after=after)
        for kind, (raw, after) in sorted(kinds.items())
    ]
    fired = [dict(trace_id=r.trace_id, recipe=name[:64], hits=n)
             for name, n in sorted(hits.items())]
    return event, usage_row, cost_row, segments, fired


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

writer = LedgerWriter()


def record(r: Record) -> None:
    writer.submit(r)


# A clean stop (SIGTERM, Ctrl-C, end of a command) writes what is queued before exiting.
atexit.register(writer.flush)
