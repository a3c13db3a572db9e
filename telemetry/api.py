"""The telemetry REST API: GET /v1/telemetry/…, for a signed-in staff user or the local API
token (`Authorization: Bearer $(tokenpak token)`). Figures come from telemetry.reports, as the
`cost` command's do, so they agree to the cent.

proxy/handler.py leaves /v1/telemetry/ to Django (sessions and auth middleware); this router is
added before the proxy's so its GET routes are matched before the proxy's catch-alls.

Errors are JSON {"detail": "one line"}: 400 for a bad parameter, 401 without a valid token or
staff session, 404 for an unknown trace id or path, 503 when telemetry is off (no ledger).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any, Literal, NoReturn

from django.conf import settings
from django.http import HttpRequest, JsonResponse, StreamingHttpResponse
from ninja import Field, Query, Router, Schema
from ninja.errors import HttpError, ValidationError
from ninja.security import HttpBearer, SessionAuthIsStaff
from pydantic import field_validator

from telemetry import access, dashboard, exporting, listing, reports, traces
from telemetry.commandline import TELEMETRY_OFF
from telemetry.models import Event, Status


class LocalToken(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str) -> str | None:
        return "token" if access.token_matches(token) else None


router = Router(tags=["telemetry"], auth=[LocalToken(), SessionAuthIsStaff()])


# --- parameters ------------------------------------------------------------------------------


BREAKDOWN_PAGE = 100
MAX_BREAKDOWN_PAGE = 1000


def _or_blank(schema: dict[str, Any]) -> None:
    """The schema of a choice that also takes "" for none (see _blank_is_unset): a client
    reading the schema, or fuzzing from it, must know that `period=` is taken."""
    schema["anyOf"].insert(-1, {"const": "", "type": "string"})


class Filtering(Schema):
    """The `cost` command's filters, plus session and status. No period and no dates: the last
    7 days, as on the dashboard (all time is since=2000-01-01)."""

    period: Literal["today", "week", "month"] | None = Field(
        None, description="calendar period in the configured time zone (weeks start Monday)",
        json_schema_extra=_or_blank)
    since: str = Field("", description="YYYY-MM-DD (from the day's start) or an ISO date-time")
    until: str = Field("", description="YYYY-MM-DD (through the day's end) or an ISO date-time")
    model: str = Field("", description="exact model name, as the ledger has it")
    agent: str = Field("", description="X-TokenPak-Agent value")
    session: str = Field("", description="X-TokenPak-Session value")
    status: Status | None = Field(None, description="how the request ended",
                                  json_schema_extra=_or_blank)
    min_cost: str = Field("", description="only requests costing at least this many dollars")
    compressed_only: bool = Field(False, description="only requests compression made smaller")

    @field_validator("period", "status", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        # An HTML form's empty <select> sends `period=`: no period, not a bad one.
        return None if value == "" else value


class Paging(Filtering):
    cursor: str = Field("", description="next_cursor of the previous page; empty for the first")
    limit: int = Field(50, ge=1, le=listing.MAX_LIMIT)


class Breakdowns(Filtering):
    """by_model and by_agent come a page at a time: clients name agents (and models) freely,
    so there can be any number of them."""

    limit: int = Field(BREAKDOWN_PAGE, ge=1, le=MAX_BREAKDOWN_PAGE,
                       description="rows of by_model and of by_agent in one answer, biggest "
                                   "spend first")
    offset: int = Field(0, ge=0, le=2**31,
                        description="rows of by_model and of by_agent to skip: the previous "
                                    "answer's next_offset")


class ExportFormat(Filtering):
    format: Literal["csv", "json"] = "csv"


# --- answers ---------------------------------------------------------------------------------


class Error(Schema):
    detail: str


ERRORS: dict[int, type[Schema]] = {400: Error, 401: Error, 503: Error}


class TotalsOut(Schema):
    requests: int
    input_tokens: int
    output_tokens: int
    tokens_saved: int
    cost_usd: str = Field(description="dollars, exact decimal string")
    cost_saved_usd: str = Field(description="dollars, exact decimal string")
    tokens: int
    savings_pct: float


class RowOut(TotalsOut):
    key: str = Field(description="the model, agent or local day (YYYY-MM-DD); '(none)' if unset")


class SummaryOut(Schema):
    period: str
    since: str | None
    until: str | None = Field(description="exclusive")
    filters: str
    totals: TotalsOut
    by_model: list[RowOut] = Field(description="a page of the models: see limit and offset")
    by_agent: list[RowOut] = Field(description="a page of the agents: see limit and offset")
    by_day: list[RowOut]
    by_model_count: int = Field(description="models in all, on every page")
    by_agent_count: int = Field(description="agents in all, on every page")
    next_offset: int | None = Field(
        description="pass as offset for the next page of by_model and by_agent; null: last")


class RequestOut(Schema):
    trace_id: str
    time: str
    provider: str
    model: str
    requested_model: str
    agent_id: str
    session_id: str
    endpoint: str
    status: str
    error_class: str
    upstream_status: int | None
    stream: bool
    duration_ms: float
    ttfb_ms: float | None
    input_tokens: int
    output_tokens: int
    tokens_saved: int
    cost_usd: str
    cost_saved_usd: str
    usage_source: str


class PageOut(Schema):
    items: list[RequestOut]
    next_cursor: str | None = Field(description="pass as cursor for the next page; null: last")
    count: int = Field(description="requests matching the filters, on every page")


class SegmentOut(Schema):
    raw: int
    after: int


class TraceOut(Schema):
    trace_id: str
    request_id: str
    time: str
    provider: str
    endpoint: str
    model: str
    requested_model: str
    agent_id: str
    session_id: str
    status: str
    error_class: str
    upstream_status: int | None
    upstream: str = Field(description="host:port the answer came from")
    failover: str = Field(description="upstreams that failed before it, and why; empty if none")
    stream: bool
    duration_ms: float
    ttfb_ms: float | None
    segments: dict[str, SegmentOut]
    tokens_raw: int
    tokens_compressed: int
    tokens_saved: int
    savings_pct: float
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    usage_source: str
    cost_usd: str
    cost_saved_usd: str
    pricing_source: str
    priced_as: str
    capture: dict[str, Any] | None = Field(
        description="what `debug on` captured of the request (bodies, headers, stages), or null")


# --- views -----------------------------------------------------------------------------------


@router.get("/summary", response={200: SummaryOut, **ERRORS})
def summary(request: HttpRequest, q: Query[Breakdowns]) -> dict[str, Any]:
    """Totals for the matching requests, by model, agent and day: `cost --json`'s figures.
    The models and agents come `limit` at a time, biggest spend first."""
    label, f = _filters(q)
    qs = reports.events(f)
    by = {name: reports.breakdown(qs, name, q.limit, q.offset) for name in ("model", "agent")}
    by["day"] = reports.breakdown(qs, "day")  # one row per day: bounded by the range
    # Counted only when a page is full: a small ledger's answer costs no more than before.
    counts = {name: reports.groups(qs, name) if len(by[name]) == q.limit
              else q.offset + len(by[name]) if by[name] or not q.offset
              else reports.groups(qs, name) for name in ("model", "agent")}
    more = any(q.offset + q.limit < n for n in counts.values())
    return {
        "period": label, "since": _iso(f.since), "until": _iso(f.until),
        "filters": f.describe(),
        # The days add up to the totals: one scan fewer.
        "totals": reports.combined(t for _, t in by["day"]).as_json(),
        **{f"by_{name}": [{"key": key, **t.as_json()} for key, t in rows]
           for name, rows in by.items()},
        **{f"by_{name}_count": n for name, n in counts.items()},
        "next_offset": q.offset + q.limit if more else None,
    }


@router.get("/sessions", response={200: PageOut, **ERRORS})
def sessions(request: HttpRequest, q: Query[Paging]) -> dict[str, Any]:
    """The matching requests, newest first, a page at a time."""
    _, f = _filters(q)
    qs = reports.events(f)
    page = listing.page(qs, q.cursor.strip(), q.limit)
    return {"items": [_item(e) for e in page.rows], "next_cursor": page.next_cursor or None,
            "count": qs.count()}


@router.get(
    "/export",
    response=ERRORS,
    openapi_extra={"responses": {200: {
        "description": "the matching requests, oldest first, as `export` writes them",
        "content": {"text/csv": {"schema": {"type": "string"}},
                    "application/json": {"schema": {"type": "array",
                                                    "items": {"type": "object"}}}},
    }}},
)
async def export(request: HttpRequest, q: Query[ExportFormat]) -> StreamingHttpResponse:
    """The matching requests as a CSV or JSON download, streamed: any size, flat memory."""
    _, f = _filters(q)
    response = StreamingHttpResponse(
        exporting.astream(reports.events(f), q.format),
        content_type="text/csv; charset=utf-8" if q.format == "csv" else "application/json",
    )
    response["Content-Disposition"] = f'attachment; filename="tokenpak-requests.{q.format}"'
    return response


@router.get("/traces/{trace_id}", response={200: TraceOut, 401: Error, 404: Error, 503: Error})
def trace(request: HttpRequest, trace_id: str) -> dict[str, Any]:
    """One request in full, as `trace --id ID --json` shows it."""
    _require_ledger()
    event = traces.find(trace_id)
    if event is None:
        raise HttpError(404, f"no request with trace id {trace_id!r} in the ledger")
    return traces.trace(event)


def unknown(request: HttpRequest, rest: str) -> NoReturn:
    """Anything else under /v1/telemetry/: without this the proxy's POST catch-all would
    forward it to OpenAI, which has no such API."""
    raise HttpError(404, f"no telemetry endpoint {request.path!r}")


def unknown_root(request: HttpRequest) -> NoReturn:
    """/v1/telemetry/ itself (the path a trace id of '..' comes to)."""
    unknown(request, "")


# (Two calls, not a loop over the pair: mypy types that list's views as `function`.)
router.add_api_operation("/", ["GET", "POST", "PUT", "PATCH", "DELETE"], unknown_root,
                         auth=None, include_in_schema=False)
router.add_api_operation("/{path:rest}", ["GET", "POST", "PUT", "PATCH", "DELETE"], unknown,
                         auth=None, include_in_schema=False)


# --- helpers ---------------------------------------------------------------------------------


def _require_ledger() -> None:
    if not settings.TELEMETRY_ENABLED:
        raise HttpError(503, TELEMETRY_OFF)


def _filters(q: Filtering) -> tuple[str, reports.Filters]:
    _require_ledger()
    label, f = reports.parse_filters(
        period=q.period, since=q.since, until=q.until, model=q.model, agent=q.agent,
        min_cost=q.min_cost, compressed_only=q.compressed_only,
    )
    status = q.status.value if q.status else ""
    return dashboard.default_range(label, replace(f, session=q.session.strip(), status=status))


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _item(e: Event) -> dict[str, Any]:
    return {
        "trace_id": e.trace_id, "time": traces.moment(e.ts), "provider": e.provider,
        "model": e.model, "requested_model": e.requested_model, "agent_id": e.agent_id,
        "session_id": e.session_id, "endpoint": e.endpoint, "status": e.status,
        "error_class": e.error_class, "upstream_status": e.upstream_status, "stream": e.stream,
        "duration_ms": e.duration_ms, "ttfb_ms": e.ttfb_ms, "input_tokens": e.input_tokens,
        "output_tokens": e.output_tokens, "tokens_saved": e.tokens_saved,
        "cost_usd": reports.plain(reports.usd(e.cost_nano_usd)),
        "cost_saved_usd": reports.plain(reports.usd(e.saved_nano_usd)),
        "usage_source": e.usage_source,
    }


# --- errors (installed on the NinjaAPI by tokenpak_site/api.py) -------------------------------


def bad_report_input(request: HttpRequest, exc: reports.ReportError) -> JsonResponse:
    return JsonResponse({"detail": str(exc)}, status=400)


def bad_parameter(request: HttpRequest, exc: ValidationError) -> JsonResponse:
    """One line, like every other error here, instead of ninja's 422 with pydantic's list."""
    problems = [f"{_name(e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in exc.errors]
    return JsonResponse({"detail": "; ".join(problems) or "bad parameter"}, status=400)


def _name(loc: Any) -> str:
    # pydantic puts where the value came from first: ("query", "limit").
    parts = [str(p) for p in loc if p not in ("query", "path", "body")]
    return ".".join(parts) or "parameter"
