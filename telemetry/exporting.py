"""Ledger rows out as CSV or JSON, streamed in chunks: memory stays flat for a million rows.

Shared by `export`, `cost --export` and (later) the dashboard's downloads.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from typing import IO, Any

from django.db import connections
from django.db.models import Case, CharField, F, Func, QuerySet, Value, When

from telemetry.models import Event

CHUNK = 5000

class _IsoTime(Func):
    """ts (unix seconds) → '2026-11-23T06:49:51.123Z', formatted by the database."""

    output_field = CharField()

    def as_sqlite(self, compiler, connection, **extra):  # type: ignore[no-untyped-def]
        sql, params = compiler.compile(self.source_expressions[0])
        return f"strftime('%%Y-%%m-%%dT%%H:%%M:%%fZ', {sql}, 'unixepoch')", params

    def as_postgresql(self, compiler, connection, **extra):  # type: ignore[no-untyped-def]
        sql, params = compiler.compile(self.source_expressions[0])
        fmt = 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'
        return f"to_char(to_timestamp({sql}) AT TIME ZONE 'UTC', '{fmt}')", params


class _Usd(Func):
    """Whole billionths of a dollar → '0.000285000': exact, formatted by the database."""

    output_field = CharField()

    def as_sqlite(self, compiler, connection, **extra):  # type: ignore[no-untyped-def]
        sql, params = compiler.compile(self.source_expressions[0])
        return f"printf('%%d.%%09d', ({sql}) / 1000000000, ({sql}) %% 1000000000)", params * 2

    def as_postgresql(self, compiler, connection, **extra):  # type: ignore[no-untyped-def]
        sql, params = compiler.compile(self.source_expressions[0])
        return (
            f"(({sql}) / 1000000000)::text || '.' || lpad((({sql}) %% 1000000000)::text, 9, '0')",
            params * 2,
        )


def _flag(path: str) -> Case:
    # SQLite says 1/0, PostgreSQL true/false: the export says true/false everywhere.
    return Case(
        When(**{path: True}, then=Value("true")),
        When(**{path: False}, then=Value("false")),
        default=None,
        output_field=CharField(),
    )


# (column name, ORM path or expression): usage and cost details joined in. Every value is
# formatted in SQL, so rows go from the cursor to the writer untouched.
COLUMNS: list[tuple[str, Any]] = [
    ("trace_id", "trace_id"),
    ("time", _IsoTime("ts")),
    ("provider", "provider"),
    ("event_type", "event_type"),
    ("model", "model"),
    ("requested_model", "requested_model"),
    ("agent_id", "agent_id"),
    ("session_id", "session_id"),
    ("status", "status"),
    ("error_class", "error_class"),
    ("upstream_status", "upstream_status"),
    ("stream", _flag("stream")),
    ("duration_ms", "duration_ms"),
    ("ttfb_ms", "ttfb_ms"),
    ("input_tokens", "input_tokens"),
    ("output_tokens", "output_tokens"),
    ("cache_read_tokens", "usage__cache_read_tokens"),
    ("cache_write_tokens", "usage__cache_write_tokens"),
    ("reasoning_tokens", "usage__reasoning_tokens"),
    ("tokens_saved", "tokens_saved"),
    ("estimated", _flag("usage__estimated")),
    ("cost_usd", _Usd("cost_nano_usd")),
    ("cost_saved_usd", _Usd("saved_nano_usd")),
    ("pricing_source", "cost__pricing_source"),
    ("request_id", "request_id"),
]
FORMATS = ("csv", "json")
NAMES = [name for name, _ in COLUMNS]


def rows(qs: QuerySet[Event]) -> Iterator[tuple[Any, ...]]:
    """Rows in COLUMNS order, oldest first, straight off the cursor.

    The query is Django's (filters, joins); the ORM's per-value converters are skipped because
    at a million rows they cost more than the database does.
    """
    exprs = {f"c{i}": col if not isinstance(col, str) else F(col) for i, (_, col) in
             enumerate(COLUMNS)}
    query = qs.order_by("ts").annotate(**exprs).values_list(*exprs).query
    sql, params = query.sql_with_params()
    with connections[qs.db].cursor() as cursor:
        cursor.execute(sql, params)
        while chunk := cursor.fetchmany(CHUNK):
            yield from chunk


def write(qs: QuerySet[Event], fmt: str, out: IO[str]) -> int:
    """Write every row of qs to out; returns how many."""
    counted = _Counter(rows(qs))
    if fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(NAMES)
        writer.writerows(counted)
        return counted.n
    # JSON: one array, written element by element so it never sits in memory whole.
    encode = json.JSONEncoder().encode
    flags = [NAMES.index("stream"), NAMES.index("estimated")]
    out.write("[")
    for row in counted:
        out.write(",\n" if counted.n > 1 else "\n")
        item = dict(zip(NAMES, row, strict=True))
        for i in flags:  # JSON has real booleans
            item[NAMES[i]] = {"true": True, "false": False}.get(row[i])
        out.write(encode(item))
    out.write("\n]\n" if counted.n else "]\n")
    return counted.n


class _Counter:
    def __init__(self, it: Iterator[tuple[Any, ...]]) -> None:
        self.it, self.n = it, 0

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        for row in self.it:
            self.n += 1
            yield row
