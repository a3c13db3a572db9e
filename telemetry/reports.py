"""The one place that computes ledger figures. Commands, admin, exports and the dashboard
format what these functions return, so their numbers agree to the cent.

Everything here is SQL aggregation on tp_* tables: no network, no Python loops over rows.
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from datetime import date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, cast

from django.conf import settings
from django.db import connection
from django.db.models import Count, F, QuerySet, Sum
from django.db.models.functions import Coalesce, Collate

from telemetry.models import NANO, QUARTER_HOUR, Event, PricingSource, QuarterHour

if TYPE_CHECKING:
    from django.db.models import Field

ZERO = Decimal("0")
# The dearest cost a filter can name: tp_events.cost_nano_usd is a 64-bit integer.
MAX_COST = Decimal(2**63 - 1) / NANO
PERIODS = ("today", "week", "month")
LABELS = {"today": "Today", "week": "This week", "month": "This month"}


class ReportError(ValueError):
    """Bad report input (a date, a duration, conflicting flags); the message is one line."""


def zone() -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(settings.TIME_ZONE)


@dataclass(frozen=True)
class Filters:
    since: datetime | None = None
    until: datetime | None = None  # exclusive
    model: str = ""
    agent: str = ""
    session: str = ""
    provider: str = ""
    status: str = ""
    min_cost: Decimal | None = None
    compressed_only: bool = False
    default_priced_only: bool = False

    def __post_init__(self) -> None:
        # No ledger value holds a NUL byte, and PostgreSQL refuses one in a query's text.
        for name in ("model", "agent", "session", "provider", "status"):
            value = getattr(self, name)
            if "\x00" in value:
                raise ReportError(f"bad {name} {value!r}: a NUL byte cannot be in a filter")

    def describe(self) -> str:
        parts = []
        if self.model:
            parts.append(f"model {self.model}")
        if self.agent:
            parts.append(f"agent {self.agent}")
        if self.session:
            parts.append(f"session {self.session}")
        if self.provider:
            parts.append(f"provider {self.provider}")
        if self.status:
            parts.append(f"status {self.status}")
        if self.min_cost is not None:
            parts.append(f"cost ≥ {money(self.min_cost)}")
        if self.compressed_only:
            parts.append("compressed only")
        return ", ".join(parts)


def events(f: Filters | None = None) -> QuerySet[Event]:
    f = f or Filters()
    qs = Event.objects.all()
    if f.since is not None:
        qs = qs.filter(ts__gte=f.since.timestamp())
    if f.until is not None:
        qs = qs.filter(ts__lt=f.until.timestamp())
    if f.model:
        qs = qs.filter(model=f.model)
    if f.agent:
        qs = qs.filter(agent_id=f.agent)
    if f.session:
        qs = qs.filter(session_id=f.session)
    if f.provider:
        qs = qs.filter(provider=f.provider)
    if f.status:
        qs = qs.filter(status=f.status)
    if f.min_cost is not None:
        qs = qs.filter(cost_nano_usd__gte=int(f.min_cost * NANO))
    if f.compressed_only:
        qs = qs.filter(tokens_saved__gt=0)
    if f.default_priced_only:
        qs = qs.filter(cost__pricing_source=PricingSource.DEFAULT)
    return qs


@dataclass
class Totals:
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    tokens_saved: int = 0
    cost_usd: Decimal = ZERO
    cost_saved_usd: Decimal = ZERO

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def savings_pct(self) -> float:
        """Share of the input the client sent that TokenPak did not have to send."""
        before = self.input_tokens + self.tokens_saved
        return 100.0 * self.tokens_saved / before if before else 0.0

    def minus(self, part: Totals) -> Totals:
        """What is left of these totals without `part` (the rest of a breakdown's top rows)."""
        return Totals(**{f.name: getattr(self, f.name) - getattr(part, f.name)
                         for f in fields(self)})

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["tokens"] = self.tokens
        data["savings_pct"] = round(self.savings_pct, 2)
        data["cost_usd"] = plain(self.cost_usd)
        data["cost_saved_usd"] = plain(self.cost_saved_usd)
        return data


def plain(value: Decimal) -> str:
    """Dollars as digits for JSON: str() writes a zero quantized to 1e-9 as '0E-9'."""
    return format(value, "f")


def _sums() -> dict[str, Any]:
    # Integer columns on tp_events (see Event): no joins, exact sums on SQLite and PostgreSQL.
    return {
        # COUNT(*) is answered from the covering index; COUNT(trace_id) reads the table.
        "requests": Count("*"),
        "input_tokens": Coalesce(Sum("input_tokens"), 0),
        "output_tokens": Coalesce(Sum("output_tokens"), 0),
        "tokens_saved": Coalesce(Sum("tokens_saved"), 0),
        "cost_nano_usd": Coalesce(Sum("cost_nano_usd"), 0),
        "saved_nano_usd": Coalesce(Sum("saved_nano_usd"), 0),
    }


def _totals(row: dict[str, Any]) -> Totals:
    return Totals(
        requests=row["requests"],
        input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"],
        tokens_saved=row["tokens_saved"],
        cost_usd=usd(row["cost_nano_usd"]),
        cost_saved_usd=usd(row["saved_nano_usd"]),
    )


def usd(nano: int) -> Decimal:
    return (Decimal(nano) / NANO).quantize(Decimal("0.000000001"))


def totals(qs: QuerySet[Event]) -> Totals:
    return _totals(qs.aggregate(**_sums()))


def combined(parts: Iterable[Totals]) -> Totals:
    """The sum of a breakdown's rows: the totals, without scanning the rows again."""
    out = Totals(cost_usd=usd(0), cost_saved_usd=usd(0))  # as totals() writes a zero
    for t in parts:
        out.requests += t.requests
        out.input_tokens += t.input_tokens
        out.output_tokens += t.output_tokens
        out.tokens_saved += t.tokens_saved
        out.cost_usd += t.cost_usd
        out.cost_saved_usd += t.cost_saved_usd
    return out


BREAKDOWNS = {
    "model": "model", "agent": "agent_id", "provider": "provider", "status": "status", "day": "day"
}
# Rows a breakdown shows by default before the rest are added up as one: anyone can send a new
# X-TokenPak-Agent (or model, or session) with every request, so the number of groups is the
# client's to choose, and no page, answer or report may grow with it.
TOP = 20
OTHER = "(other)"


def breakdown(qs: QuerySet[Event], by: str, limit: int | None = None, offset: int = 0
              ) -> list[tuple[str, Totals]]:
    """Totals per model, agent, provider or day; biggest spend first, days in order. With a
    limit, only that many groups from offset, chosen by the database (the rest never leave it).
    """
    if by == "day":
        return _by_day(qs)
    key = BREAKDOWNS[by]
    rows = qs.order_by().values(key).annotate(**_sums())
    if limit is not None:
        # Ties in spend in code point order, as sorted() below orders them, on both databases.
        name = Collate(key, "C") if connection.vendor == "postgresql" else F(key)
        rows = rows.order_by("-cost_nano_usd", name)[offset:offset + limit]
    result = [(str(r[key]) if r[key] not in (None, "") else "(none)", _totals(r)) for r in rows]
    return sorted(result, key=lambda kv: (-kv[1].cost_usd, kv[0]))


def groups(qs: QuerySet[Event], by: str) -> int:
    """How many rows breakdown(qs, by) has in all."""
    return qs.order_by().values(BREAKDOWNS[by]).distinct().count()


@dataclass
class Top:
    """A breakdown's biggest groups, and the rest added up as one row (when there is a rest)."""

    rows: list[tuple[str, Totals]]
    others: int = 0  # groups added up in other
    other: Totals | None = None


def top(qs: QuerySet[Event], by: str, total: Totals, n: int = TOP) -> Top:
    """The n biggest groups by spend and the rest as one: rows and other add up to total."""
    rows = breakdown(qs, by, limit=n)
    if len(rows) < n:
        return Top(rows)
    count = groups(qs, by)
    if count <= n:
        return Top(rows)
    return Top(rows, count - n, total.minus(combined(t for _, t in rows)))


def _by_day(qs: QuerySet[Event]) -> list[tuple[str, Totals]]:
    # Group by quarter hour in SQL (no per-row date functions), then fold the buckets into
    # local calendar days here: exact in every zone, DST included.
    first, last = span(qs)
    if first is None or last is None:
        return []
    # (The ignore: django-stubs checks values() against the model's fields; q is annotated.)
    rows = (quarter_hours(qs, first, last)).values("q").annotate(**_sums())  # type: ignore[misc]
    keys = list(_sums())
    days: dict[str, dict[str, int]] = {}
    for r in rows:
        acc = days.setdefault(local_day(r["q"]), dict.fromkeys(keys, 0))
        for k in keys:
            acc[k] += r[k]
    return sorted((day, _totals(acc)) for day, acc in days.items())


def quarter_hours(qs: QuerySet[Event], first: float, last: float) -> QuerySet[Event]:
    """qs with each row's quarter-hour bucket as q, and the range of buckets between the first
    and last rows spelled out: that range is what lets the database read the
    tp_events_quarter index in order instead of sorting (the rows stay the same)."""
    return (qs.order_by().annotate(q=QuarterHour("ts"))
            .filter(q__gte=int(first) // QUARTER_HOUR, q__lte=int(last) // QUARTER_HOUR))


def local_day(quarter_hour: int) -> str:
    """A QuarterHour bucket's calendar day in the configured zone, as YYYY-MM-DD."""
    return datetime.fromtimestamp(int(quarter_hour) * QUARTER_HOUR, tz=zone()).date().isoformat()


def distinct_values(column: str, limit: int, start: str = "") -> list[str]:
    """Up to limit values of an indexed tp_events column, in index order from start on, by
    hopping through its index from one value to the next (a loose index scan): a few lookups
    per value, where SELECT DISTINCT reads the whole index on PostgreSQL (0.15 s a column at a
    million rows). The limit stops the hops: a column can hold as many values as clients send.
    """
    field = cast("Field[Any, Any]", Event._meta.get_field(column))  # a column, not a relation
    col = connection.ops.quote_name(field.column)
    table = connection.ops.quote_name(Event._meta.db_table)
    sql = (
        f"WITH RECURSIVE v(x, n) AS (SELECT MIN({col}), 1 FROM {table} WHERE {col} >= %s "
        f"UNION ALL SELECT (SELECT MIN({col}) FROM {table} WHERE {col} > v.x), n + 1 FROM v "
        f"WHERE v.x IS NOT NULL AND n < %s) SELECT x FROM v WHERE x IS NOT NULL"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [start, limit])
        return [row[0] for row in cursor.fetchall()]


def span(qs: QuerySet[Event]) -> tuple[float | None, float | None]:
    # Two index lookups: MIN and MAX in one query make SQLite scan the whole index.
    ts = qs.order_by("ts").values_list("ts", flat=True)
    return ts.first(), ts.last()


def parse_filters(
    *,
    period: str | None = None,
    since: str = "",
    until: str = "",
    model: str = "",
    agent: str = "",
    min_cost: str | None = None,
    compressed_only: bool = False,
    default_period: str | None = None,
    flag: str = "",
) -> tuple[str, Filters]:
    """The seed's filters as text (command-line flags, URL parameters) → (label, Filters).
    One definition for the commands, the dashboard and the REST API; `flag` prefixes names in
    error messages ("--" on the command line)."""
    since, until = since.strip(), until.strip()
    if period and (since or until):
        raise ReportError(f"{flag}{period} and {flag}since/{flag}until cannot be combined")
    start = end = None
    if since:
        start = parse_date(since)
    if until:
        end = parse_date(until, end=True)
    if start and end and start >= end:
        raise ReportError(f"{flag}since must be before {flag}until")
    if not (start or end):
        period = period or default_period
    if period:
        if period not in PERIODS:
            raise ReportError(f"unknown period {period!r}: use today, week or month")
        start, end = period_bounds(period)
        label = LABELS[period]
    elif start and end:
        label = f"{since} to {until}"
    elif start:
        label = f"Since {since}"
    elif end:
        label = f"Until {until}"
    else:
        label = "All time"
    cost = None
    if min_cost is not None and str(min_cost).strip() != "":
        try:
            cost = Decimal(str(min_cost).strip().lstrip("$"))
        except InvalidOperation:
            raise ReportError(
                f"bad {flag}min-cost {min_cost!r}: use a number of dollars, like 0.05"
            ) from None
        if not cost.is_finite() or cost < 0:
            raise ReportError(f"{flag}min-cost must be a positive number of dollars")
        if cost > MAX_COST:
            raise ReportError(f"{flag}min-cost must be at most {MAX_COST} dollars")
    filters = Filters(since=start, until=end, model=model.strip(), agent=agent.strip(),
                      min_cost=cost, compressed_only=compressed_only)
    return label, filters


# --- periods, dates, durations -------------------------------------------------------------


def period(name: str, now: datetime | None = None) -> tuple[datetime, datetime]:
    """[start, end) of today, this week (Monday first) or this month, in the configured zone."""
    now = (now or datetime.now(tz=zone())).astimezone(zone())
    day = now.date()
    if name == "today":
        start = day
        end = day + timedelta(days=1)
    elif name == "week":
        start = day - timedelta(days=day.weekday())
        end = start + timedelta(days=7)
    elif name == "month":
        start = day.replace(day=1)
        end = (start + timedelta(days=32)).replace(day=1)
    else:
        raise ReportError(f"unknown period {name!r}")
    return _midnight(start), _midnight(end)


period_bounds = period  # parse_filters has a parameter named period


def _midnight(d: date) -> datetime:
    return datetime.combine(d, time.min, tzinfo=zone())


def parse_date(text: str, *, end: bool = False) -> datetime:
    """YYYY-MM-DD (a whole day in the configured zone; as an end, the day is included) or an
    ISO date-time."""
    text = text.strip()
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            d = date.fromisoformat(text)
            return _midnight(d + timedelta(days=1) if end else d)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ReportError(
            f"bad date {text!r}: use YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS]"
        ) from None
    except OverflowError:  # the day after 9999-12-31
        raise ReportError(f"bad date {text!r}: out of range") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=zone())


_DURATION = re.compile(r"(\d+)([dwm])")


def parse_age(text: str, now: datetime | None = None) -> datetime:
    """'30d', '12w', '3m' → the moment that long ago (months are calendar months)."""
    m = _DURATION.fullmatch(text.strip().lower())
    if not m or int(m.group(1)) == 0:
        raise ReportError(
            f"bad duration {text!r}: use a whole number and d, w or m, like 30d, 12w or 3m"
        )
    n, unit = int(m.group(1)), m.group(2)
    now = (now or datetime.now(tz=zone())).astimezone(zone())
    if unit == "d":
        return now - timedelta(days=n)
    if unit == "w":
        return now - timedelta(weeks=n)
    month = now.month - 1 - n
    year = now.year + month // 12
    month = month % 12 + 1
    last_day = (date(year + (month == 12), month % 12 + 1, 1) - timedelta(days=1)).day
    return now.replace(year=year, month=month, day=min(now.day, last_day))


# --- formatting shared by every text output --------------------------------------------------


def money(value: Decimal) -> str:
    if value == 0:
        return "$0.00"
    if abs(value) >= 1:
        return f"${value:,.2f}"
    text = f"${value:.3f}"
    return text if text not in ("$0.000", "$-0.000") else f"${value:.6f}"


def count(n: int) -> str:
    return f"{n:,}"


def pct(value: float) -> str:
    return f"{value:.0f}%" if value >= 10 or value == 0 else f"{value:.1f}%"


def summary(t: Totals) -> str:
    return (
        f"{money(t.cost_usd)} | {count(t.requests)} requests | "
        f"{count(t.tokens)} tokens | saved {pct(t.savings_pct)}"
    )


def line(label: str, t: Totals) -> str:
    """The seed's one-line summary: `Today: $0.042 | 23 requests | 18,341 tokens | saved 37%`."""
    return f"{label}: {summary(t)}"


def ledger_size() -> int:
    """Bytes the ledger takes on disk (SQLite file + WAL, or the PostgreSQL database)."""
    if connection.vendor == "sqlite":
        from pathlib import Path

        db = Path(str(connection.settings_dict["NAME"]))
        return sum(p.stat().st_size for p in (db, db.with_name(db.name + "-wal")) if p.exists())
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_database_size(current_database())")
        return int(cursor.fetchone()[0])


def size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
