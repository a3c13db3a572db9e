"""What each dashboard view shows, as data: cards, then sections (a table, maybe a chart).

The views render these, the JSON and CSV downloads serialise the same objects, and every figure
comes from SQL aggregates (telemetry.reports and the queries here), so a page, its download and
the `cost` command agree to the cent. Money stays Decimal until it is formatted.

Latency and timing distributions come from telemetry.distribution (one GROUP BY each).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db.models import (
    Case,
    Count,
    F,
    FloatField,
    IntegerField,
    QuerySet,
    Sum,
    When,
)
from django.db.models.functions import Coalesce

from telemetry import listing, reports
from telemetry.distribution import Bucket, bins, distribution, percentiles, range_names
from telemetry.models import Event, RecipeHit, Segment, Status

# The serving process's start: "this session" on the overview.
STARTED = time.time()
DEFAULT_DAYS = 7
FILTERS = ("since", "until", "model", "agent", "min_cost", "compressed_only")
RECENT = 20
PAGE = 50


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    kind: str = "text"  # text, int, usd, pct, ms, link (a trace id)


@dataclass(frozen=True)
class Chart:
    kind: str  # bars, hbars, lines, gauges
    x: str
    ys: tuple[str, ...]
    unit: str = "int"  # how values are written: int, usd, pct, ms


@dataclass
class Section:
    name: str
    title: str
    columns: list[Column]
    rows: list[dict[str, Any]]
    chart: Chart | None = None
    empty: str = "Nothing in this range."
    note: str = ""


@dataclass(frozen=True)
class Card:
    label: str
    value: Any
    kind: str = "usd"
    hint: str = ""


@dataclass
class View:
    name: str
    title: str
    label: str  # the range, in words
    filters: reports.Filters
    cards: list[Card] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)
    next_cursor: str = ""

    def section(self, name: str) -> Section | None:
        return next((s for s in self.sections if s.name == name), None)


# --- filters ---------------------------------------------------------------------------------


def form_values(params: Mapping[str, str]) -> dict[str, str]:
    return {name: str(params.get(name, "")).strip() for name in FILTERS}


def parse(params: Mapping[str, str]) -> tuple[str, reports.Filters]:
    """The seed's URL filters → (label, Filters); no dates means the last 7 days (today
    included), so a page over a big ledger reads a week, not everything. ReportError on a bad
    value."""
    form = form_values(params)
    label, f = reports.parse_filters(
        since=form["since"], until=form["until"], model=form["model"], agent=form["agent"],
        min_cost=form["min_cost"] or None,
        compressed_only=form["compressed_only"].lower() in ("1", "on", "true", "yes"),
    )
    return default_range(label, f)


def default_range(label: str, f: reports.Filters) -> tuple[str, reports.Filters]:
    """No dates and no period: the last 7 days, today included (the REST API's default too)."""
    if f.since is None and f.until is None:
        today = reports.period("today")[0]
        f = replace(f, since=today - timedelta(days=DEFAULT_DAYS - 1))
        label = f"Last {DEFAULT_DAYS} days"
    return label, f


# --- the views -------------------------------------------------------------------------------

# Sections other apps put on the overview, ahead of the latest requests, in the order they were
# added: the budgets' (budgets/apps.py). The dashboard shows them without importing those apps.
_OVERVIEW: list[Callable[[], Section]] = []


def add_to_overview(make: Callable[[], Section]) -> None:
    """Show the section make() returns on every overview."""
    if make not in _OVERVIEW:
        _OVERVIEW.append(make)



def overview(label: str, f: reports.Filters) -> View:
    qs = reports.events(f)
    today = reports.totals(reports.events(replace(f, since=reports.period("today")[0],
                                                  until=None)))
    session = reports.totals(reports.events(replace(
        f, since=datetime.fromtimestamp(STARTED, tz=reports.zone()), until=None)))
    ranged = reports.totals(qs)
    started = datetime.fromtimestamp(STARTED, tz=reports.zone())
    view = View("overview", "Overview", label, f, cards=[
        Card("Today", today.cost_usd, hint=f"{today.requests:,} requests"),
        Card("This session", session.cost_usd,
             hint=f"{session.requests:,} requests since the proxy started, "
                  f"{started:%Y-%m-%d %H:%M}"),
        Card(label, ranged.cost_usd, hint=f"{ranged.requests:,} requests"),
        Card("Compression rate", ranged.savings_pct, "pct",
             hint=f"{ranged.tokens_saved:,} input tokens saved"),
    ])
    view.sections = [*(make() for make in _OVERVIEW), recent_section(qs)]
    return view


def live(label: str, f: reports.Filters) -> View:
    """The part of the overview the page refreshes while it is open."""
    view = overview(label, f)
    view.sections = [s for s in view.sections if s.name == "recent"]
    return view


def finops(label: str, f: reports.Filters) -> View:
    qs = reports.events(f)
    by_day = reports.breakdown(qs, "day")
    days = day_rows(f, by_day)
    total = reports.combined(t for _, t in by_day)
    per = total.cost_usd / total.requests if total.requests else Decimal(0)
    return View("finops", "FinOps", label, f, cards=[
        Card("Spend", total.cost_usd, hint=f"{total.requests:,} requests"),
        Card("Saved by compression", total.cost_saved_usd,
             hint=f"{total.tokens_saved:,} input tokens"),
        Card("Per request", per.quantize(Decimal("0.000000001"))),
        Card("Tokens", total.tokens, "int",
             hint=f"{total.input_tokens:,} in, {total.output_tokens:,} out"),
    ], sections=[
        Section("cost_per_day", "Cost per day", DAY_COLUMNS, days,
                Chart("bars", "day", ("cost_usd",), "usd")),
        breakdown_section(qs, "model", "Top models by spend", total),
        breakdown_section(qs, "agent", "Spend by agent", total),
        Section("savings_per_day", "Savings over time", [
            Column("day", "Day"), Column("cost_saved_usd", "Saved", "usd"),
            Column("tokens_saved", "Input tokens saved", "int")], days,
                Chart("lines", "day", ("cost_saved_usd",), "usd")),
    ])


def engineering(label: str, f: reports.Filters) -> View:
    qs = reports.events(f)
    duration = distribution(qs, "duration_ms")
    ttfb = distribution(qs.filter(ttfb_ms__isnull=False), "ttfb_ms")
    d, t = percentiles(duration), percentiles(ttfb)
    statuses, errors = error_rows(qs, f)
    total_errors = sum(r["errors"] for r in errors)
    requests = sum(r["requests"] for r in errors)
    return View("engineering", "Engineering", label, f, cards=[
        Card("Latency p50 / p95 / p99", [d[50], d[95], d[99]], "ms"),
        Card("First byte p50 / p95 / p99", [t[50], t[95], t[99]], "ms"),
        Card("Error rate", 100.0 * total_errors / requests if requests else 0.0, "pct",
             hint=f"{total_errors:,} of {requests:,} requests"),
    ], sections=[
        Section("latency", "Latency distribution", [
            Column("range", "Time"), Column("requests", "Requests", "int"),
            Column("first_byte", "First byte within", "int")],
            latency_rows(duration, ttfb), Chart("bars", "range", ("requests", "first_byte"))),
        Section("percentiles", "Percentiles", [
            Column("metric", "Metric"), Column("p50", "p50", "ms"), Column("p95", "p95", "ms"),
            Column("p99", "p99", "ms"), Column("requests", "Requests", "int")], [
            {"metric": "duration", **_named(d), "requests": sum(x.n for x in duration)},
            {"metric": "first byte", **_named(t), "requests": sum(x.n for x in ttfb)}],
            note="From a log-scale histogram: within 0.5 % + 0.01 ms of the exact value."),
        Section("errors_per_day", "Error rate over time, by status", [
            *ERROR_COLUMNS, *(Column(f"rate_{s}", s, "pct") for s in statuses)], errors,
            Chart("lines", "day", tuple(f"rate_{s}" for s in statuses) or ("error_rate",),
                  "pct")),
        Section("errors_by_class", "Errors by status and class", [
            Column("status", "Status"), Column("error_class", "Error class"),
            Column("requests", "Requests", "int")], error_classes(qs, total_errors),
            Chart("hbars", "status", ("requests",)), empty="No errors in this range."),
        efficiency_section(qs),
    ])


def sessions(label: str, f: reports.Filters, cursor: str = "", limit: int = PAGE) -> View:
    qs = reports.events(f)
    page = listing.page(qs, cursor, limit)
    view = View("sessions", "Sessions", label, f, next_cursor=page.next_cursor)
    view.sections = [Section("requests", "Requests", REQUEST_COLUMNS,
                             [request_row(e) for e in page.rows])]
    return view


def compression(label: str, f: reports.Filters) -> View:
    ran = reports.events(f).filter(compress_ms__isnull=False)
    total = reports.totals(ran)
    timing = distribution(ran, "compress_ms")
    p = percentiles(timing)
    empty = "Compression has not run on a request in this range."
    return View("compression", "Compression", label, f, cards=[
        Card("Requests compressed", total.requests, "int"),
        Card("Input tokens saved", total.tokens_saved, "int",
             hint=f"{reports.pct(total.savings_pct)} of what clients sent"),
        Card("Saved", total.cost_saved_usd),
        Card("Pipeline p50 / p95 / p99", [p[50], p[95], p[99]], "ms"),
    ], sections=[
        Section("savings", "Token savings per request", [
            Column("range", "Saved"), Column("requests", "Requests", "int")],
            savings_rows(ran) if total.requests else [], Chart("bars", "range", ("requests",)),
            empty=empty),
        Section("recipes", "Recipe hit rates", [
            Column("recipe", "Recipe"), Column("requests", "Requests", "int"),
            Column("hits", "Hits", "int"), Column("hit_rate", "Hit rate", "pct")],
            recipe_rows(ran, total.requests), Chart("hbars", "recipe", ("hit_rate",), "pct"),
            empty=empty),
        Section("pipeline", "Pipeline timing", [
            Column("range", "Time"), Column("requests", "Requests", "int")],
            bins(timing, PIPELINE_EDGES, "ms"), Chart("bars", "range", ("requests",)),
            empty=empty),
        Section("segments", "Savings by content", [
            Column("segment_type", "Content"), Column("tokens_raw", "Tokens before", "int"),
            Column("tokens_after", "Tokens after", "int"),
            Column("savings_pct", "Saved", "pct")], segment_rows(ran), empty=empty),
    ])


VIEWS = {"overview": overview, "finops": finops, "engineering": engineering,
         "compression": compression}


# --- sections and their queries --------------------------------------------------------------

DAY_COLUMNS = [
    Column("day", "Day"), Column("requests", "Requests", "int"),
    Column("cost_usd", "Cost", "usd"), Column("cost_saved_usd", "Saved", "usd"),
    Column("tokens_saved", "Tokens saved", "int"),
]
REQUEST_COLUMNS = [
    Column("trace_id", "Trace", "link"), Column("time", "Time"), Column("model", "Model"),
    Column("agent_id", "Agent"), Column("status", "Status"),
    Column("duration_ms", "Duration", "ms"), Column("input_tokens", "In", "int"),
    Column("output_tokens", "Out", "int"), Column("tokens_saved", "Saved", "int"),
    Column("cost_usd", "Cost", "usd"),
]
ERROR_COLUMNS = [
    Column("day", "Day"), Column("requests", "Requests", "int"),
    Column("errors", "Errors", "int"), Column("error_rate", "Error rate", "pct"),
]
LATENCY_EDGES = [10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000]
PIPELINE_EDGES = [0.5, 1, 2, 5, 10, 20, 50]
SAVINGS_EDGES = [5, 10, 20, 30, 50]


def totals_row(key: str, value: str, t: reports.Totals) -> dict[str, Any]:
    return {key: value, "requests": t.requests, "input_tokens": t.input_tokens,
            "output_tokens": t.output_tokens, "tokens_saved": t.tokens_saved,
            "cost_usd": t.cost_usd, "cost_saved_usd": t.cost_saved_usd}


def day_rows(f: reports.Filters, by_day: list[tuple[str, reports.Totals]]
             ) -> list[dict[str, Any]]:
    """One row per day of the range, days without requests included (a chart shows gaps)."""
    found = dict(by_day)
    return [totals_row("day", d, found.get(d, reports.Totals())) for d in range_days(f, found)]


def range_days(f: reports.Filters, found: Iterable[str]) -> list[str]:
    days = set(found)
    if f.since is not None:
        first = f.since.astimezone(reports.zone()).date()
        last = (f.until - timedelta(microseconds=1)).astimezone(reports.zone()).date() \
            if f.until else datetime.now(tz=reports.zone()).date()
        if (last - first).days <= 400:
            days |= {(first + timedelta(days=i)).isoformat()
                     for i in range((last - first).days + 1)}
    return sorted(days)


def breakdown_section(qs: QuerySet[Event], by: str, title: str, total: reports.Totals
                      ) -> Section:
    """The reports.TOP biggest by spend, and the rest added up in one last row ("others" says
    how many it holds): the page, its CSV and its JSON stay the same size however many agents
    or models clients invent. /v1/telemetry/summary pages through all of them."""
    top = reports.top(qs, by, total)
    rows = [totals_row(by, key, t) for key, t in top.rows]
    note = ""
    if top.other is not None:
        rows.append({**totals_row(by, reports.OTHER, top.other), "others": top.others})
        note = (f"The {len(top.rows)} biggest by spend; the other {top.others:,} are added up "
                f"as {reports.OTHER}. `tokenpak cost --by-{by} --all` or "
                f"/v1/telemetry/summary lists every one.")
    return Section(f"by_{by}", title, [
        Column(by, by.capitalize()), Column("requests", "Requests", "int"),
        Column("input_tokens", "In", "int"), Column("output_tokens", "Out", "int"),
        Column("cost_usd", "Cost", "usd"), Column("cost_saved_usd", "Saved", "usd")],
        rows, Chart("hbars", by, ("cost_usd",), "usd"), note=note)


def recent_section(qs: QuerySet[Event]) -> Section:
    rows = [request_row(e) for e in listing.page(qs, "", RECENT).rows]
    return Section("recent", "Latest requests", REQUEST_COLUMNS, rows,
                   empty="No requests in this range yet: point an SDK at the proxy.")


def request_row(e: Event) -> dict[str, Any]:
    return {
        "trace_id": e.trace_id,
        "time": datetime.fromtimestamp(e.ts, tz=reports.zone()).strftime("%Y-%m-%d %H:%M:%S"),
        "provider": e.provider, "model": e.model, "agent_id": e.agent_id,
        "session_id": e.session_id, "status": e.status, "error_class": e.error_class,
        "duration_ms": e.duration_ms, "ttfb_ms": e.ttfb_ms, "input_tokens": e.input_tokens,
        "output_tokens": e.output_tokens, "tokens_saved": e.tokens_saved,
        "cost_usd": reports.usd(e.cost_nano_usd), "cost_saved_usd": reports.usd(e.saved_nano_usd),
    }


def _named(p: dict[int, float | None]) -> dict[str, float | None]:
    return {f"p{k}": v for k, v in p.items()}


def latency_rows(duration: list[Bucket], ttfb: list[Bucket]
                 ) -> list[dict[str, Any]]:
    d, t = bins(duration, LATENCY_EDGES, "ms"), bins(ttfb, LATENCY_EDGES, "ms")
    if not d:
        return []
    firsts = {r["range"]: r["requests"] for r in t}
    return [{**r, "first_byte": firsts.get(r["range"], 0)} for r in d]


def error_rows(qs: QuerySet[Event], f: reports.Filters) -> tuple[list[str], list[dict[str, Any]]]:
    """Requests, errors and each error status's rate per local day; and the statuses seen."""
    days = {day: t.requests for day, t in reports.breakdown(qs, "day")}
    errors: dict[str, dict[str, int]] = {}
    # ts + 0 is not the tp_events_quarter expression: errors are few, and are read from the
    # status index (covering) instead of looked up row by row from the quarter-hour one.
    failed = (qs.filter(status__in=ERRORS).order_by()
              .annotate(q=reports.QuarterHour(F("ts") + 0)).values("q", "status")
              .annotate(n=Count("*")))
    for r in failed:
        per = errors.setdefault(reports.local_day(r["q"]), {})
        per[r["status"]] = per.get(r["status"], 0) + r["n"]
    statuses = sorted({status for per in errors.values() for status in per})
    out = []
    for day in range_days(f, days):
        n, per = days.get(day, 0), errors.get(day, {})
        e = sum(per.values())
        out.append({"day": day, "requests": n, "errors": e,
                    "error_rate": round(100.0 * e / n, 2) if n else 0.0,
                    **{f"rate_{s}": round(100.0 * per.get(s, 0) / n, 2) if n else 0.0
                       for s in statuses}})
    return statuses, out


# A client that hung up is not the provider's or the proxy's failure. Listed, not excluded,
# so the database reads them from the status index.
ERRORS = [s for s in Status.values if s not in (Status.OK, Status.CLIENT_CLOSED)]


def error_classes(qs: QuerySet[Event], errors: int) -> list[dict[str, Any]]:
    """The reports.TOP commonest; the rest (a provider names its error types) as one row."""
    rows = list(qs.filter(status__in=ERRORS).order_by().values("status", "error_class")
                .annotate(n=Count("*")).order_by("-n", "status", "error_class")[:reports.TOP])
    out = [{"status": r["status"], "error_class": r["error_class"] or "(none)",
            "requests": r["n"]} for r in rows]
    rest = errors - sum(r["n"] for r in rows)
    if rest > 0:
        out.append({"status": reports.OTHER, "error_class": reports.OTHER, "requests": rest})
    return out


def efficiency_section(qs: QuerySet[Event]) -> Section:
    sums = qs.filter(compress_ms__isnull=False).aggregate(
        requests=Count("*"), tokens_saved=Coalesce(Sum("tokens_saved"), 0),
        input_tokens=Coalesce(Sum("input_tokens"), 0),
        ms=Coalesce(Sum("compress_ms"), 0.0, output_field=FloatField()))
    t = reports.Totals(requests=sums["requests"], input_tokens=sums["input_tokens"],
                       tokens_saved=sums["tokens_saved"])
    spent = sums["ms"]
    rows = [{
        "requests": t.requests, "tokens_saved": t.tokens_saved, "savings_pct": t.savings_pct,
        "compress_ms": round(spent, 1),
        "tokens_per_ms": round(t.tokens_saved / spent, 1) if spent else 0.0,
    }] if t.requests else []
    return Section("efficiency", "Compression efficiency", [
        Column("requests", "Requests compressed", "int"),
        Column("tokens_saved", "Tokens saved", "int"), Column("savings_pct", "Saved", "pct"),
        Column("compress_ms", "Time spent", "ms"),
        Column("tokens_per_ms", "Tokens saved per ms", "int")], rows,
        empty="Compression has not run on a request in this range.")


def savings_rows(ran: QuerySet[Event]) -> list[dict[str, Any]]:
    """Requests by the share of their input compression removed."""
    share = 100.0 * F("tokens_saved") / (F("input_tokens") + F("tokens_saved"))
    whens = [When(tokens_saved__lte=0, then=0)]
    whens += [When(**{"share__lt": edge}, then=i + 1) for i, edge in enumerate(SAVINGS_EDGES)]
    rows = (ran.order_by().annotate(share=Case(When(tokens_saved__lte=0, then=0.0),
                                               default=share, output_field=FloatField()))
            .annotate(bin=Case(*whens, default=len(SAVINGS_EDGES) + 1,
                               output_field=IntegerField()))
            .values("bin").annotate(n=Count("*")))
    counts = {r["bin"]: r["n"] for r in rows}
    names = ["none", *range_names(SAVINGS_EDGES, "%")]
    names[1] = f"0% – {SAVINGS_EDGES[0]}%"
    return [{"range": name, "requests": counts.get(i, 0)} for i, name in enumerate(names)]


def recipe_rows(ran: QuerySet[Event], compressed: int) -> list[dict[str, Any]]:
    rows = (RecipeHit.objects.filter(trace__in=ran.values("trace_id")).values("recipe")
            .annotate(requests=Count("*"), hits=Sum("hits")).order_by("-requests", "recipe"))
    return [{"recipe": r["recipe"], "requests": r["requests"], "hits": r["hits"],
             "hit_rate": round(100.0 * r["requests"] / compressed, 2) if compressed else 0.0}
            for r in rows]


def segment_rows(ran: QuerySet[Event]) -> list[dict[str, Any]]:
    rows = (Segment.objects.filter(trace__in=ran.values("trace_id")).values("segment_type")
            .annotate(raw=Sum("tokens_raw"), after=Sum("tokens_after")).order_by("-raw"))
    return [{"segment_type": r["segment_type"], "tokens_raw": r["raw"],
             "tokens_after": r["after"],
             "savings_pct": round(100.0 * (r["raw"] - r["after"]) / r["raw"], 2)
             if r["raw"] else 0.0} for r in rows]

