"""Ledger rows out as CSV or JSON, streamed in chunks: memory stays flat for a million rows.

Shared by `export`, `cost --export` and (later) the dashboard's downloads. The database
formats each row (a CSV line, or a JSON object with json_object / json_build_object), so a
million rows go from the cursor to the file without a Python operation per value: at that
size the ORM's converters and the csv module cost more than the query does.

CSV text cells are always quoted (a CR or LF stays inside its row) and follow
tokenpak_site.text.spreadsheet_cell, in SQL: a value starting with `=`, `+`, `-`, `@`, TAB or CR
gets a leading `'`, so no spreadsheet runs it as a formula. JSON keeps every value exact.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Generator, Iterable, Iterator
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from django.core.exceptions import EmptyResultSet
from django.db import connections, transaction
from django.db.models import CharField, F, Func, QuerySet

from telemetry.models import Event
from tokenpak_site.text import FORMULA_STARTS, spreadsheet_cell

if TYPE_CHECKING:
    from _typeshed import SupportsWrite
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.db.models.sql.compiler import SQLCompiler

CHUNK = 5000
FORMATS = ("csv", "json")

# (column, ORM path, kind). Usage and cost details are joined in. Kinds: text (quoted in CSV),
# num, time (ts → ISO 8601 UTC), usd (billionths → exact decimal string), flag (true/false).
COLUMNS: list[tuple[str, str, str]] = [
    ("trace_id", "trace_id", "text"),
    ("time", "ts", "time"),
    ("provider", "provider", "text"),
    ("event_type", "event_type", "text"),
    ("model", "model", "text"),
    ("requested_model", "requested_model", "text"),
    ("sent_model", "sent_model", "text"),
    ("endpoint", "endpoint", "text"),
    ("agent_id", "agent_id", "text"),
    ("session_id", "session_id", "text"),
    ("status", "status", "text"),
    ("error_class", "error_class", "text"),
    ("upstream_status", "upstream_status", "num"),
    ("stream", "stream", "flag"),
    ("duration_ms", "duration_ms", "num"),
    ("ttfb_ms", "ttfb_ms", "num"),
    ("input_tokens", "input_tokens", "num"),
    ("output_tokens", "output_tokens", "num"),
    ("cache_read_tokens", "usage__cache_read_tokens", "num"),
    ("cache_write_tokens", "usage__cache_write_tokens", "num"),
    ("cache_write_1h_tokens", "usage__cache_write_1h_tokens", "num"),
    ("reasoning_tokens", "usage__reasoning_tokens", "num"),
    ("tokens_saved", "tokens_saved", "num"),
    ("estimated", "usage__estimated", "flag"),
    ("usage_source", "usage_source", "text"),
    ("cost_usd", "cost_nano_usd", "usd"),
    ("cost_saved_usd", "saved_nano_usd", "usd"),
    ("pricing_source", "cost__pricing_source", "text"),
    ("priced_as", "cost__priced_as", "text"),
    ("request_id", "request_id", "text"),
    # Added later: at the end, so scripts reading columns by position keep working.
    ("upstream", "upstream", "text"),
    ("failover", "failover", "text"),
]
NAMES = [name for name, _, _ in COLUMNS]


def _formula_safe(sql: str, vendor: str) -> str:
    """SQL for a text value as spreadsheet_cell writes it (NULL stays NULL). It compares the
    first character's code, not substr(): an integer, no string made (on SQLite, 15% more CPU
    for a whole export where substr() costs 40%)."""
    first = f"unicode({sql})" if vendor == "sqlite" else f"ascii({sql})"
    codes = ", ".join(str(ord(c)) for c in FORMULA_STARTS)
    return f"CASE WHEN {first} IN ({codes}) THEN '''' || {sql} ELSE {sql} END"


def _value(kind: str, sql: str, vendor: str) -> str:
    """SQL for one value, formatted the same way on SQLite and PostgreSQL."""
    pg = vendor == "postgresql"
    if kind == "time":
        if pg:
            iso = 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'
            return f"to_char(to_timestamp({sql}) AT TIME ZONE 'UTC', '{iso}')"
        return f"strftime('%%Y-%%m-%%dT%%H:%%M:%%fZ', {sql}, 'unixepoch')"
    if kind == "usd":  # costs are never negative
        if pg:
            return (f"(({sql}) / 1000000000)::text || '.' || "
                    f"lpad((({sql}) %% 1000000000)::text, 9, '0')")
        return f"printf('%%d.%%09d', ({sql}) / 1000000000, ({sql}) %% 1000000000)"
    return sql


class _Row(Func):
    """One whole output row, built by the database."""

    output_field = CharField()

    def __init__(self, fmt: str) -> None:
        super().__init__(*[F(path) for _, path, _ in COLUMNS])
        self.fmt = fmt

    def as_sqlite(
        self, compiler: SQLCompiler, connection: BaseDatabaseWrapper, **extra: Any
    ) -> tuple[str, Any]:
        if self.fmt == "json":
            return self.as_sql(compiler, connection, **extra)
        # One printf per row: half the time of concatenating 25 formatted pieces.
        spec = {"text": '"%%w"', "num": "%%s", "flag": "%%s", "time": "%%s", "usd": "%%d.%%09d"}
        fmt: list[str] = []
        args: list[str] = []
        params: list[Any] = []
        for (_, _, kind), expr in zip(COLUMNS, self.source_expressions, strict=True):
            sql, p = compiler.compile(expr)
            fmt.append(spec[kind])
            if kind == "usd":
                args += [f"({sql}) / 1000000000", f"({sql}) %% 1000000000"]
                params += list(p) * 2
            elif kind == "text":
                args.append(f"COALESCE({_formula_safe(sql, 'sqlite')}, '')")
                params += list(p) * 3
            elif kind == "flag":
                args.append(f"CASE WHEN {sql} THEN 'true' WHEN NOT {sql} THEN 'false' END")
                params += list(p) * 2
            else:
                args.append(_value(kind, sql, "sqlite"))
                params += list(p)
        return f"printf('{','.join(fmt)}', {', '.join(args)})", params

    def as_sql(  # type: ignore[override]  # writes its SQL: none of Func's template args
        self, compiler: SQLCompiler, connection: BaseDatabaseWrapper, **extra: Any
    ) -> tuple[str, Any]:
        vendor = connection.vendor
        parts: list[str] = []
        params: list[Any] = []
        for (name, _, kind), expr in zip(COLUMNS, self.source_expressions, strict=True):
            sql, p = compiler.compile(expr)
            uses = 2 if kind == "usd" else 1
            params += list(p) * uses
            value = _value(kind, sql, vendor)
            if self.fmt == "json":
                if kind == "flag" and vendor == "sqlite":  # SQLite booleans are 0/1
                    value = f"json(CASE WHEN {sql} THEN 'true' WHEN NOT {sql} THEN 'false' END)"
                    params += list(p)
                parts.append(f"'{name}', {value}")
            elif kind == "text":
                value = _formula_safe(value, vendor)
                params += list(p) * 2
                parts.append(f"""COALESCE('"' || replace({value}, '"', '""') || '"', '')""")
            elif kind == "flag":
                parts.append(f"CASE WHEN {sql} THEN 'true' WHEN NOT {sql} THEN 'false' ELSE '' END")
                params += list(p)
            elif kind == "num":
                cast = f"({value})::text" if vendor == "postgresql" else f"CAST({value} AS TEXT)"
                parts.append(f"COALESCE({cast}, '')")
            else:
                parts.append(value)
        if self.fmt == "json":
            function = "json_build_object" if vendor == "postgresql" else "json_object"
            cast = "::text" if vendor == "postgresql" else ""
            return f"{function}({', '.join(parts)}){cast}", params
        return " || ',' || ".join(parts), params


def csv_table(keys: list[str], rows: Iterable[list[str]], text: Collection[str]) -> str:
    """A small CSV made in Python (the dashboard's tables), its cells as the SQL above makes
    them: the text columns quoted, inner quotes doubled, formula starts neutralised (a CR or LF
    stays inside its row); the others, numbers, bare."""
    quoted = [key in text for key in keys]
    lines = [",".join(keys)]
    for row in rows:
        lines.append(",".join('"' + spreadsheet_cell(v).replace('"', '""') + '"' if q else v
                              for v, q in zip(row, quoted, strict=True)))
    return "\n".join(lines) + "\n"


def rows(qs: QuerySet[Event], fmt: str) -> Iterator[str]:
    """Formatted rows, oldest first, straight off the cursor in chunks."""
    query = qs.order_by("ts").annotate(row=_Row(fmt)).values_list("row").query
    try:
        sql, params = query.sql_with_params()
    except EmptyResultSet:  # Django proved no row can match (a bound past a column's range)
        return
    connection = connections[qs.db]
    # On PostgreSQL a server-side cursor (what QuerySet.iterator() uses), inside a transaction:
    # a plain cursor fetches every row into memory before the first chunk can go out, and a
    # server-side one outside a transaction is WITH HOLD, which computes the whole result
    # first. On SQLite a transaction would take the write lock (IMMEDIATE): none there.
    streaming = connection.vendor == "postgresql" and not connection.in_atomic_block
    with (transaction.atomic(using=qs.db) if streaming else nullcontext(),
          connection.chunked_cursor() as cursor):
        cursor.execute(sql, params)
        while chunk := cursor.fetchmany(CHUNK):
            for (row,) in chunk:
                yield row


def _pieces(lines: Iterator[str], fmt: str, batch: int) -> Generator[str, None, None]:
    """Rows framed as a CSV file (header first) or one JSON array, in pieces of ~batch chars."""
    pieces = [",".join(NAMES) + "\n" if fmt == "csv" else "["]
    size, first = 0, True
    for line in lines:
        if fmt == "csv":
            pieces.append(line + "\n")
        else:
            pieces.append(("\n" if first else ",\n") + line)
        first = False
        size += len(line)
        if size >= batch:
            yield "".join(pieces)
            pieces, size = [], 0
    if fmt == "json":
        pieces.append("]\n" if first else "\n]\n")
    yield "".join(pieces)


def stream(qs: QuerySet[Event], fmt: str, batch: int = 64 * 1024
           ) -> Generator[str, None, None]:
    return _pieces(rows(qs, fmt), fmt, batch)


async def astream(qs: QuerySet[Event], fmt: str) -> AsyncIterator[str]:
    """stream() for an ASGI response: each database chunk is read in Django's sync thread, so
    a download of any size is sent as it is read, never held whole."""
    pieces = stream(qs, fmt)
    try:
        # (The ignore: asgiref's typing keeps one overload of next(), the one-argument one.)
        while (piece := await sync_to_async(next)(pieces, None)) is not None:  # type: ignore[call-arg]
            yield piece
    finally:
        # A download cut short (the client left): end the cursor and its transaction in the
        # thread that opened them, not wherever the generator is collected.
        await sync_to_async(pieces.close)()


def write(qs: QuerySet[Event], fmt: str, out: SupportsWrite[str]) -> int:
    """Write every row of qs to out; returns how many."""
    n = 0

    def counted() -> Iterator[str]:
        nonlocal n
        for row in rows(qs, fmt):
            n += 1
            yield row

    for piece in _pieces(counted(), fmt, 64 * 1024):
        out.write(piece)
    return n
