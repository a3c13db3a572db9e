"""Requests newest first, a page at a time, for the dashboard's audit table and the REST API.

Pages are keyed by a cursor (the last row's ts and trace id), not an offset: the thousandth
page of a million-row ledger costs what the first does, one range scan of the ts index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from django.db.models import QuerySet

from telemetry.models import Event
from telemetry.reports import ReportError

MAX_LIMIT = 1000


@dataclass(frozen=True)
class Page:
    rows: list[Event]
    next_cursor: str  # "" on the last page


def cursor_of(event: Event) -> str:
    return f"{event.ts!r}_{event.trace_id}"


def parse_cursor(text: str) -> tuple[float, str]:
    ts, sep, trace_id = text.partition("_")
    try:
        # cursor_of never writes nan or inf, nor a NUL byte (PostgreSQL refuses one in text).
        if not sep or not trace_id or "\x00" in trace_id or not math.isfinite(float(ts)):
            raise ValueError
        return float(ts), trace_id
    except ValueError:
        raise ReportError(
            f"bad cursor {text!r}: use the next_cursor of the previous page"
        ) from None


def page(qs: QuerySet[Event], cursor: str = "", limit: int = 50) -> Page:
    if not 1 <= limit <= MAX_LIMIT:
        raise ReportError(f"limit must be between 1 and {MAX_LIMIT}, not {limit}")
    qs = qs.order_by("-ts", "-trace_id")
    if cursor:
        ts, trace_id = parse_cursor(cursor)
        # Spelled as a range on ts (not ts < x OR …), so the ts index serves it.
        qs = qs.filter(ts__lte=ts).exclude(ts=ts, trace_id__gte=trace_id)
    rows = list(qs.defer("request_body", "response_body")[: limit + 1])
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows, cursor_of(rows[-1]) if more else "")
