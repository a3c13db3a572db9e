"""The dashboard: server-rendered pages over telemetry.dashboard, with CSV and JSON downloads of
what each page shows. Views parse the filters, call, and render or serialise."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from functools import wraps
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib.auth import authenticate, login, logout
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    HttpResponseRedirect,
    JsonResponse,
    StreamingHttpResponse,
)
from django.shortcuts import render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from telemetry import access, charts, dashboard, exporting, reports, traces

# Suggestions in each filter field's list: any client can invent agents and models by the
# thousand, and every page carries the lists.
SUGGEST = 100
NAV = [("overview", "Overview"), ("finops", "FinOps"), ("engineering", "Engineering"),
       ("sessions", "Sessions"), ("compression", "Compression")]


def signed_in(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
    """A staff user's session or the local API token; a browser without either is sent to
    the sign-in page, a script gets 401."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if not settings.TELEMETRY_ENABLED:  # no ledger, no users, no token: nothing to guard
            return render(request, "dashboard/off.html", {"nav": NAV}, status=503)
        if not access.allowed(request):
            if access.bearer(request) or request.GET.get("format"):
                return JsonResponse({"detail": "Unauthorized"}, status=401)
            return HttpResponseRedirect(
                reverse("dashboard-login") + "?" + urlencode({"next": request.get_full_path()}))
        return view(request, *args, **kwargs)

    return wrapper


@signed_in
def page(request: HttpRequest, name: str) -> HttpResponseBase:
    build = dashboard.VIEWS[name]
    try:
        label, f = dashboard.parse(request.GET)
        view = (dashboard.live if request.GET.get("partial") == "live" else build)(label, f)
    except reports.ReportError as e:
        return _bad(request, name, str(e))
    return _respond(request, view)


@signed_in
def sessions(request: HttpRequest) -> HttpResponseBase:
    try:
        label, f = dashboard.parse(request.GET)
        fmt = request.GET.get("format", "")
        if fmt:
            # The whole filtered list the table pages through, as `export` writes it.
            if fmt not in exporting.FORMATS:
                raise reports.ReportError(f"unknown format {fmt!r}: use csv or json")
            return _download(exporting.astream(reports.events(f), fmt), fmt, "requests")
        view = dashboard.sessions(label, f, request.GET.get("cursor", ""),
                                  _limit(request.GET.get("limit", "")))
    except reports.ReportError as e:
        return _bad(request, "sessions", str(e))
    return _respond(request, view)


def _limit(text: str) -> int:
    if not text:
        return dashboard.PAGE
    try:
        return int(text)
    except ValueError:
        raise reports.ReportError(f"bad limit {text!r}: use a whole number of rows") from None


@signed_in
def trace(request: HttpRequest, trace_id: str) -> HttpResponseBase:
    event = traces.find(trace_id)
    if event is None:
        raise Http404(f"no request with trace id {trace_id!r} in the ledger")
    data = traces.trace(event)
    if request.GET.get("format") == "json":
        return JsonResponse(data)
    return render(request, "dashboard/trace.html", {
        "nav": NAV, "current": "sessions", "data": data, "lines": traces.layout(data),
        "title": f"Trace {trace_id}"})


def sign_in(request: HttpRequest) -> HttpResponseBase:
    """The local token (typed, or in the link `tokenpak token --url` prints) or a user's name
    and password."""
    target = request.POST.get("next") or request.GET.get("next") or reverse("dashboard")
    if not url_has_allowed_host_and_scheme(target, {request.get_host()}):
        target = reverse("dashboard")
    token = request.POST.get("token") or request.GET.get("token") or ""
    # Only passwords are rate-limited: the token (256 random bits) cannot be guessed, and a
    # wrong one arrives from any web page (`<img src=…/login/?token=x>`). Counting those would
    # let any site lock the owner out, their own link included.
    if token:
        if access.sign_in(request, token):
            access.note_sign_in(request, ok=True)
            return HttpResponseRedirect(target)
        return render(request, "dashboard/login.html", {
            "next": target,
            "error": "That is not this TokenPak's token: `tokenpak token` prints it."},
            status=400)
    if request.method != "POST":
        return render(request, "dashboard/login.html", {"next": target, "error": ""})
    if wait := access.sign_in_wait(request):
        return render(request, "dashboard/login.html",
                      {"next": target, "error": access.too_many(wait)}, status=429)
    user = authenticate(request, username=request.POST.get("username", ""),
                        password=request.POST.get("password", ""))
    if user is not None and user.is_active and user.is_staff:
        login(request, user)
        access.note_sign_in(request, ok=True)
        return HttpResponseRedirect(target)
    access.note_sign_in(request, ok=False)
    return render(request, "dashboard/login.html", {
        "next": target, "error": "Wrong user name or password, or the user is not staff."},
        status=400)


@require_POST
def sign_out(request: HttpRequest) -> HttpResponseBase:
    logout(request)
    return HttpResponseRedirect(reverse("dashboard-login"))


# --- rendering and downloads -----------------------------------------------------------------


def _bad(request: HttpRequest, name: str, message: str) -> HttpResponseBase:
    if request.GET.get("format"):
        return JsonResponse({"detail": message}, status=400)
    return render(request, "dashboard/view.html", {
        "nav": NAV, "current": name, "title": dict(NAV)[name], "error": message,
        "form": dashboard.form_values(request.GET)}, status=400)


def _respond(request: HttpRequest, view: dashboard.View) -> HttpResponseBase:
    fmt = request.GET.get("format", "")
    if fmt == "json":
        return JsonResponse(serialise(view), json_dumps_params={"indent": 1})
    if fmt == "csv":
        return _section_csv(view, request.GET.get("section", ""))
    if fmt:
        return _bad(request, view.name, f"unknown format {fmt!r}: use csv or json")
    template = "dashboard/_live.html" if request.GET.get("partial") == "live" else \
        "dashboard/view.html"
    form = dashboard.form_values(request.GET)
    query = {k: v for k, v in form.items() if v}
    if request.GET.get("limit"):
        query["limit"] = request.GET["limit"]
    return render(request, template, {
        "nav": NAV, "current": view.name, "title": view.title, "view": view,
        "form": form,
        # The form suggests the ledger's models and agents (read from their indexes): all of
        # them up to SUGGEST, else the SUGGEST that follow what the field holds, in order.
        "models": reports.distinct_values("model", SUGGEST, form["model"]),
        "agents": [a for a in reports.distinct_values("agent_id", SUGGEST, form["agent"]) if a],
        "cards": [(c, charts.display(c.value, c.kind), _raw(c.value)) for c in view.cards],
        "sections": [_table(s, query) for s in view.sections],
        "query": urlencode(query),
        "older": urlencode({**query, "cursor": view.next_cursor}) if view.next_cursor else "",
    })


def _table(s: dashboard.Section, query: dict[str, str]) -> dict[str, Any]:
    rows = [[{"text": charts.display(r.get(c.key), c.kind), "raw": _raw(r.get(c.key)),
              "kind": c.kind, "key": c.key} for c in s.columns] for r in s.rows]
    return {"section": s, "chart": charts.render(s), "rows": rows,
            "csv": urlencode({**query, "format": "csv", "section": s.name})}


def _raw(value: Any) -> str:
    if isinstance(value, Decimal):
        return reports.plain(value)
    if isinstance(value, list):
        return " ".join(_raw(v) for v in value)
    return "" if value is None else str(value)


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return reports.plain(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def serialise(view: dashboard.View) -> dict[str, Any]:
    f = view.filters
    return {
        "view": view.name,
        "range": view.label,
        "since": f.since and f.since.isoformat(),
        "until": f.until and f.until.isoformat(),
        "filters": f.describe(),
        "cards": [{"label": c.label, "value": _plain(c.value), "kind": c.kind}
                  for c in view.cards],
        "sections": {s.name: {"title": s.title,
                              "rows": [{k: _plain(v) for k, v in r.items()} for r in s.rows]}
                     for s in view.sections},
        **({"next_cursor": view.next_cursor} if view.name == "sessions" else {}),
    }


def _section_csv(view: dashboard.View, name: str) -> HttpResponse:
    section = view.section(name) if name else view.sections[0]
    if section is None:
        names = ", ".join(s.name for s in view.sections)
        return JsonResponse({"detail": f"no section {name!r} here: use one of {names}"},
                            status=400)
    keys = [c.key for c in section.columns]
    text = {c.key for c in section.columns if c.kind in ("text", "link")}
    content = exporting.csv_table(keys, ([_raw(r.get(k)) for k in keys] for r in section.rows),
                                  text)
    response = HttpResponse(content, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = (
        f'attachment; filename="tokenpak-{view.name}-{section.name}.csv"')
    return response


def _download(content: Any, fmt: str, name: str) -> StreamingHttpResponse:
    response = StreamingHttpResponse(
        content, content_type="text/csv; charset=utf-8" if fmt == "csv" else "application/json")
    response["Content-Disposition"] = f'attachment; filename="tokenpak-{name}.{fmt}"'
    return response

