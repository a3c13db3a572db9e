"""A request's ledger rows: made from its Record (priced, tokens counted), fitted to their
columns, and inserted with one prepared statement per table.

`Rows` is what the writer inserts, what its batch hooks read (telemetry.writer.on_batch) and
what the spool's `w` line keeps: a JSON array of the five in this order, which a NamedTuple
still is when dumped, so spool files of every version read the same.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, NamedTuple

from django.db import connection, models

from telemetry import pricing
from telemetry.columns import Columns
from telemetry.models import (
    NANO,
    Cost,
    Event,
    PricingSource,
    RecipeHit,
    Segment,
    Usage,
    UsageSource,
)
from telemetry.record import Record
from telemetry.usage import TokenUsage

writer_log = logging.getLogger("tokenpak.ledger")


class Rows(NamedTuple):
    """One request's rows, as column values by attribute name."""

    event: dict[str, Any]  # tp_events
    usage: dict[str, Any]  # tp_usage
    cost: dict[str, Any]  # tp_costs
    segments: list[dict[str, Any]]  # tp_segments
    recipe_hits: list[dict[str, Any]]  # tp_recipe_hits


@dataclass
class Entry:
    """One request's rows on their way in, with the record its listeners read (budget
    settlement, captures): the Record itself, or for a row replayed from the spool one made
    of the row (no body, no leases)."""

    rows: Rows
    record: Record
    seq: int = 0  # the spool file holding its `r` line


def rows_of(r: Record) -> Rows:
    """The rows for one record (tp_events, tp_usage, tp_costs, …)."""
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
    pricing_source: str = PricingSource.NONE
    priced_as = ""
    price = None
    if usage.total:
        price = pricing.resolve(model, r.provider)
        cost_usd = pricing.cost(usage, price)
        pricing_source, priced_as = price.source, price.priced_as

    saved, saved_usd, saved_estimated = 0, Decimal("0"), False
    kinds: dict[str, tuple[int, int]] = {}
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
    return Rows(event, usage_row, cost_row, segments, fired)


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


def storable(rows: Rows) -> Rows:
    """The rows with every value one its column takes (telemetry.columns), in place."""
    _EVENTS.columns.fit(rows.event)
    _USAGE.columns.fit(rows.usage)
    _COSTS.columns.fit(rows.cost)
    for s in rows.segments:
        _SEGMENTS.columns.fit(s)
    for h in rows.recipe_hits:
        _RECIPE_HITS.columns.fit(h)
    return rows


def plain(rows: Rows) -> Rows:
    """A copy of the rows with their text in printable ASCII: the last try before setting
    them aside."""
    return Rows(_EVENTS.columns.plain(rows.event), _USAGE.columns.plain(rows.usage),
                _COSTS.columns.plain(rows.cost),
                [_SEGMENTS.columns.plain(s) for s in rows.segments],
                [_RECIPE_HITS.columns.plain(h) for h in rows.recipe_hits])


def insert(cursor: Any, batch: list[Rows]) -> None:
    """Every table's rows of this batch: one executemany per table."""
    for table, values in (
        (_EVENTS, [rows.event for rows in batch]),
        (_USAGE, [rows.usage for rows in batch]),
        (_COSTS, [rows.cost for rows in batch]),
        (_SEGMENTS, [s for rows in batch for s in rows.segments]),
        (_RECIPE_HITS, [h for rows in batch for h in rows.recipe_hits]),
    ):
        table.insert(cursor, values)


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
