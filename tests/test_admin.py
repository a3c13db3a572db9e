"""The admin: price overrides are editable and apply to the next row; the ledger is a
read-only audit browser whose figures agree with the `cost` command."""

import csv
import io
import json
import re
import time
from datetime import UTC, date, datetime, timedelta
from datetime import time as dt_time
from decimal import Decimal

import openpyxl
import pytest
from asgiref.sync import async_to_sync
from django.urls import NoReverseMatch, reverse

from telemetry import pricing, reports
from telemetry.models import Cost, Event, ModelPrice, Segment, Usage
from telemetry.reports import money, usd


@pytest.mark.django_db
def test_it_adds_a_price_override_in_the_admin(admin_client):
    assert pricing.resolve("claude-haiku-4-5").source == "catalog"
    response = admin_client.post(
        "/admin/telemetry/modelprice/add/",
        {"model": "claude-haiku-4-5", "provider": "anthropic", "input_per_mtok": "0.5",
         "output_per_mtok": "2.5", "source": "ignored"},
    )
    assert response.status_code == 302, response.content
    row = ModelPrice.objects.get()
    assert row.source == "admin"
    price = pricing.resolve("claude-haiku-4-5-20251001")
    assert (price.source, price.input, price.output) == ("override", Decimal("0.5"),
                                                         Decimal("2.5"))
    # Anthropic's cache multipliers follow the overridden input price.
    assert price.cache_read == Decimal("0.05")


@pytest.mark.django_db
def test_it_lists_price_overrides(admin_client):
    ModelPrice.objects.create(model="gpt-4o", input_per_mtok=1, output_per_mtok=2)
    response = admin_client.get("/admin/telemetry/modelprice/")
    assert response.status_code == 200
    assert b"gpt-4o" in response.content


@pytest.mark.django_db
def test_it_brands_the_admin(admin_client):
    assert b"TokenPak" in admin_client.get("/admin/").content


# --- the ledger's audit browser: real proxy traffic, read back through the admin -------------

URL = "/admin/telemetry/event/"
DAY = 86400


@pytest.fixture
def browser(server, client, django_user_model):
    """A logged-in superuser. Not admin_client: its `db` fixture conflicts with the live
    server's transactional_db."""
    user = django_user_model.objects.create_superuser("auditor", "auditor@localhost", "pw")
    client.force_login(user)
    return client


@pytest.fixture
def ledger(traffic) -> list[Event]:
    """The traffic, with some rows moved into the past (3, 10 and 40 days ago) so time filters
    have something to tell apart, and one row compressed (with segments), as the compressor
    will write them."""
    now = time.time()
    for event, age in zip(traffic[3:6], (3, 10, 40), strict=True):
        ts = now - age * DAY
        Event.objects.filter(pk=event.pk).update(ts=ts, created_at=datetime.fromtimestamp(ts, UTC))
    squeezed = traffic[0]
    Event.objects.filter(pk=squeezed.pk).update(tokens_saved=400, saved_nano_usd=60_000)
    Usage.objects.filter(pk=squeezed.pk).update(tokens_saved=400, savings_pct=28.57)
    Cost.objects.filter(pk=squeezed.pk).update(cost_saved_usd=Decimal("0.00006"))
    Segment.objects.create(trace=squeezed, segment_type="tool_output", tokens_raw=900,
                           tokens_after=500)
    Segment.objects.create(trace=squeezed, segment_type="system_prompt", tokens_raw=300,
                           tokens_after=300)
    return list(Event.objects.select_related("usage", "cost").order_by("ts"))


def shown(response) -> set[str]:
    assert response.status_code == 200, response.content[:2000]
    return {e.trace_id for e in response.context_data["cl"].result_list}


def local_midnight(d: date) -> float:
    return datetime.combine(d, dt_time.min, reports.zone()).timestamp()


def in_days(first: date, last: date):
    """Rows whose local day is in [first, last], worked out here rather than by the admin."""
    since, until = local_midnight(first), local_midnight(last + timedelta(days=1))
    return lambda e: since <= e.ts < until


def today() -> date:
    return datetime.now(reports.zone()).date()


def test_it_lists_requests_with_formatted_cost(browser, ledger):
    response = browser.get(URL)
    assert shown(response) == {e.trace_id for e in ledger}
    html = response.content.decode()
    for e in ledger:
        assert f"/admin/telemetry/event/{e.trace_id}/change/" in html
        assert f'<td class="field-cost_usd">{money(usd(e.cost_nano_usd))}</td>' in html
        assert f'<td class="field-tokens_in">{e.input_tokens:,}</td>' in html
    # 1,000 × $3 + 1,000 × $15 per MTok at the default price.
    assert '<td class="field-cost_usd">$0.018</td>' in html
    # Newest first.
    assert [e.trace_id for e in response.context_data["cl"].result_list] == [
        e.trace_id for e in sorted(ledger, key=lambda e: -e.ts)]


COLUMN_FILTERS = {
    "provider": ({"provider": "anthropic"}, lambda e: e.provider == "anthropic"),
    "model": ({"model": "gpt-4o"}, lambda e: e.model == "gpt-4o"),
    "agent": ({"agent_id": "reviewer"}, lambda e: e.agent_id == "reviewer"),
    "no agent": ({"agent_id": ""}, lambda e: e.agent_id == ""),
    "status": ({"status__exact": "error"}, lambda e: e.status == "error"),
    "compressed": ({"compressed": "yes"}, lambda e: e.tokens_saved > 0),
    "not compressed": ({"compressed": "no"}, lambda e: e.tokens_saved == 0),
    "default-priced": ({"default_priced": "yes"}, lambda e: e.cost.pricing_source == "default"),
    "not default-priced": ({"default_priced": "no"},
                           lambda e: e.cost.pricing_source != "default"),
    "two filters": ({"provider": "openai", "agent_id": "coder"},
                    lambda e: e.provider == "openai" and e.agent_id == "coder"),
}


@pytest.mark.parametrize("name", COLUMN_FILTERS)
def test_it_filters_by_each_column(browser, ledger, name):
    params, keep = COLUMN_FILTERS[name]
    expected = {e.trace_id for e in ledger if keep(e)}
    assert expected and expected != {e.trace_id for e in ledger}
    assert shown(browser.get(URL, params)) == expected


def time_filters() -> dict[str, tuple[dict[str, str], object]]:
    d = today()
    ten, three = d - timedelta(days=10), d - timedelta(days=3)
    monday = d - timedelta(days=d.weekday())
    return {
        "today": ({"period": "today"}, in_days(d, d)),
        "this week": ({"period": "week"}, in_days(monday, monday + timedelta(days=6))),
        "last 7 days": ({"period": "7d"}, in_days(d - timedelta(days=6), d)),
        "this month": ({"period": "month"},
                       in_days(d.replace(day=1), (d.replace(day=28) + timedelta(days=4))
                               .replace(day=1) - timedelta(days=1))),
        "since/until": ({"since": ten.isoformat(), "until": three.isoformat()},
                        in_days(ten, three)),
        "since only": ({"since": three.isoformat()}, in_days(three, d + timedelta(days=1))),
        "until only": ({"until": ten.isoformat()}, in_days(date(2000, 1, 1), ten)),
        "date hierarchy month": ({"created_at__year": str(d.year), "created_at__month":
                                  str(d.month)}, in_days(d.replace(day=1), d)),
        # The since/until form submitted empty, with another filter carried along.
        "empty since/until": ({"since": "", "until": "", "agent_id": "coder"},
                              lambda e: e.agent_id == "coder"),
    }


@pytest.mark.parametrize("name", list(time_filters()))
def test_it_filters_by_time(browser, ledger, name):
    params, keep = time_filters()[name]
    expected = {e.trace_id for e in ledger if keep(e)}
    assert expected != {e.trace_id for e in ledger}  # the row 40 days back is always out
    assert shown(browser.get(URL, params)) == expected


@pytest.mark.parametrize("params", [
    {"since": "2026-02-30"}, {"until": "yesterday"}, {"since": "2026-1-5"},
    {"period": "fortnight"}, {"created_at__year": "x"},
])
def test_it_reports_a_bad_date_instead_of_failing(browser, ledger, params):
    response = browser.get(URL, params, follow=True)
    assert response.status_code == 200
    if "created_at__year" not in params:  # Django's own parameter: it resets the list
        html = response.content.decode()
        assert "ignored" in html
        assert shown(response) == {e.trace_id for e in ledger}


def test_it_shows_filter_counts_only_when_asked(browser, ledger):
    plain = browser.get(URL, {"provider": "openai"}).content.decode()
    assert "Show counts" in plain and "gpt-4o-mini (" not in plain
    counted = browser.get(URL, {"provider": "openai", "_facets": "True"}).content.decode()
    assert f"gpt-4o-mini ({sum(e.model == 'gpt-4o-mini' for e in ledger)})" in counted


def test_it_searches_by_trace_id_request_id_model_and_agent(browser, ledger):
    target = ledger[2]
    assert shown(browser.get(URL, {"q": target.trace_id})) == {target.trace_id}
    assert shown(browser.get(URL, {"q": target.trace_id[:12]})) == {target.trace_id}
    assert target.request_id.startswith("req_fake_")
    assert shown(browser.get(URL, {"q": target.request_id})) == {target.trace_id}
    assert shown(browser.get(URL, {"q": "gpt-4o"})) == {
        e.trace_id for e in ledger if e.model.startswith("gpt-4o")}
    assert shown(browser.get(URL, {"q": "review"})) == {
        e.trace_id for e in ledger if e.agent_id == "reviewer"}
    # Every word must match: a model and an agent.
    assert shown(browser.get(URL, {"q": "gpt-4o-mini coder"})) == {
        e.trace_id for e in ledger if e.model == "gpt-4o-mini" and e.agent_id == "coder"}
    assert shown(browser.get(URL, {"q": "nothing-like-this"})) == set()


def test_it_never_adds_changes_or_deletes_requests(browser, ledger):
    target = ledger[0]
    change = f"{URL}{target.trace_id}/change/"
    listing = browser.get(URL).content.decode()
    assert f"{URL}add/" not in listing
    assert 'name="action"' not in listing  # no bulk delete
    assert browser.get(f"{URL}add/").status_code == 403
    assert browser.post(f"{URL}add/", {"trace_id": "x" * 32}).status_code == 403
    page = browser.get(change)
    assert page.status_code == 200
    assert b'name="_save"' not in page.content
    assert f"{target.trace_id}/delete/".encode() not in page.content
    assert browser.post(change, {"status": "ok", "model": "free"}).status_code == 403
    assert browser.get(f"{URL}{target.trace_id}/delete/").status_code == 403
    assert browser.post(f"{URL}{target.trace_id}/delete/", {"post": "yes"}).status_code == 403
    assert browser.post(URL, {"action": "delete_selected", "_selected_action": [target.pk],
                              "post": "yes"}).status_code in (200, 302, 403)
    assert Event.objects.count() == len(ledger)
    assert Event.objects.get(pk=target.pk).model == target.model


def test_it_shows_usage_cost_and_segments_on_the_detail_page(browser, ledger):
    cached = next(e for e in ledger if e.usage.cache_read_tokens == 2000)  # gpt-4o-mini stream
    html = browser.get(f"{URL}{cached.trace_id}/change/").content.decode()
    for heading in ("Usage (tp_usage)", "Cost (tp_costs)", "Segments (tp_segments)"):
        assert heading in html
    assert '<div class="readonly">2000</div>' in html  # cache_read_tokens
    assert f'<div class="readonly">{cached.cost.cost_usd:.9f}</div>' in html
    assert money(cached.cost.cost_usd) in html
    assert "Catalog" in html
    squeezed = next(e for e in ledger if e.tokens_saved)
    html = browser.get(f"{URL}{squeezed.trace_id}/change/").content.decode()
    assert "tool_output" in html and "system_prompt" in html
    assert re.search(r'field-tokens_raw">\s*<p>900</p>', html)
    assert re.search(r'field-tokens_after">\s*<p>500</p>', html)
    assert "$0.000060" in html  # saved, from the copy on tp_events


TOTALS = re.compile(r'data-name="([^"]+)">\s*[^<]*<strong>([^<]*)</strong>')


def this_month(**filters: str) -> reports.Filters:
    since, until = reports.period("month")
    return reports.Filters(since=since, until=until, **filters)


TOTALS_CASES = {
    "everything": ({}, reports.Filters),
    "provider": ({"provider": "openai"}, lambda: reports.Filters(provider="openai")),
    "agent this month": ({"agent_id": "coder", "period": "month"},
                         lambda: this_month(agent="coder")),
    "compressed": ({"compressed": "yes"}, lambda: reports.Filters(compressed_only=True)),
    "default-priced": ({"default_priced": "yes"},
                       lambda: reports.Filters(default_priced_only=True)),
}


@pytest.mark.parametrize("name", TOTALS_CASES)
def test_it_shows_the_filtered_totals_as_the_cost_command_counts_them(browser, ledger, name):
    params, filters = TOTALS_CASES[name]
    t = reports.totals(reports.events(filters()))
    assert t.requests
    html = browser.get(URL, params).content.decode()
    block = html[html.index('id="ledger-totals"'):]
    assert dict(TOTALS.findall(block)) == {
        "requests": reports.count(t.requests),
        "tokens in": reports.count(t.input_tokens),
        "tokens out": reports.count(t.output_tokens),
        "cost": reports.money(t.cost_usd),
        "saved": reports.money(t.cost_saved_usd),
        "tokens saved": f"{reports.count(t.tokens_saved)} ({reports.pct(t.savings_pct)})",
    }


def body(response) -> bytes:
    """CSV and JSON downloads stream; XLSX comes whole."""
    if response.streaming:
        async def collect() -> bytes:
            return b"".join([piece async for piece in response.streaming_content])

        return async_to_sync(collect)()
    return response.content


def read_export(fmt: str, content: bytes) -> list[dict]:
    if fmt == "csv":
        return list(csv.DictReader(io.StringIO(content.decode("utf-8-sig"))))
    if fmt == "json":
        return json.loads(content)
    sheet = openpyxl.load_workbook(io.BytesIO(content), read_only=True).active
    header, *rows = [list(r) for r in sheet.iter_rows(values_only=True)]
    return [dict(zip(header, r, strict=True)) for r in rows]


@pytest.mark.parametrize("fmt,index", [("csv", "0"), ("json", "1"), ("xlsx", "2")])
def test_it_exports_the_filtered_list_with_usage_and_cost(browser, ledger, fmt, index):
    response = browser.post(f"{URL}export/?provider=openai&period=month", {"format": index})
    assert response.status_code == 200
    assert response["Content-Disposition"].endswith(f'.{fmt}"')
    assert response.streaming is (fmt != "xlsx")
    rows = read_export(fmt, body(response))
    since, until = reports.period("month")
    qs = reports.events(reports.Filters(provider="openai", since=since, until=until))
    expected = {e.trace_id: e for e in ledger if e.trace_id in set(qs.values_list("pk", flat=True))}
    assert {r["trace_id"] for r in rows} == set(expected) and len(rows) == len(expected)
    for r in rows:
        e = expected[r["trace_id"]]
        assert int(r["cache_read_tokens"]) == e.usage.cache_read_tokens
        assert int(r["cache_write_tokens"]) == e.usage.cache_write_tokens
        assert int(r["reasoning_tokens"]) == e.usage.reasoning_tokens
        assert str(r["estimated"]) in ("False", "false", "0")
        assert r["pricing_source"] == e.cost.pricing_source
        assert int(r["input_tokens"]) == e.input_tokens
        assert "request_body" not in r
    total = reports.totals(qs).cost_usd
    if fmt == "xlsx":  # spreadsheet cells are binary floats
        assert abs(sum(Decimal(repr(r["cost_usd"])) for r in rows) - total) < Decimal("1e-9")
    else:  # the exact Decimal digits
        assert sum(Decimal(r["cost_usd"]) for r in rows) == total
        assert {r["cost_usd"] for r in rows} == {f"{e.cost.cost_usd:.9f}" for e in
                                                 expected.values()}


def test_it_exports_but_never_imports(browser, ledger):
    listing = browser.get(URL, {"model": "gpt-4o"}).content.decode()
    assert f'href="{URL}export/?model=gpt-4o"' in listing
    form = browser.get(f"{URL}export/?model=gpt-4o").content.decode()
    assert all(f">{name}</option>" in form for name in ("csv", "json", "xlsx"))
    assert "import_link" not in listing
    with pytest.raises(NoReverseMatch):
        reverse("admin:telemetry_event_import")
    everything = browser.post(f"{URL}export/", {"format": "0"})
    assert len(read_export("csv", body(everything))) == len(ledger)


def test_it_streams_a_csv_export_through_the_asgi_server(server, traffic, django_user_model):
    """The download path users take: uvicorn, a signed-in session, a streamed response."""
    import re as _re

    import httpx

    django_user_model.objects.create_superuser("auditor", "a@example.com", "pw-for-test")
    with httpx.Client(base_url=server.url, follow_redirects=False) as c:
        login = c.get("/admin/login/")
        token = _re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login.text).group(1)
        signed_in = c.post("/admin/login/?next=/admin/", data={
            "csrfmiddlewaretoken": token, "username": "auditor", "password": "pw-for-test"})
        assert signed_in.status_code == 302
        form = c.get(f"{URL}export/?provider=anthropic")
        token = _re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text).group(1)
        with c.stream("POST", f"{URL}export/?provider=anthropic",
                      data={"csrfmiddlewaretoken": token, "format": "0"},
                      headers={"referer": server.url + URL}) as response:
            assert response.status_code == 200
            assert "content-length" not in response.headers  # streamed, not buffered
            text = response.read().decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    expected = [e for e in traffic if e.provider == "anthropic"]
    assert {r["trace_id"] for r in rows} == {e.trace_id for e in expected}
    assert sum(Decimal(r["cost_usd"]) for r in rows) == sum(
        (e.cost.cost_usd for e in expected), Decimal("0"))


@pytest.mark.parametrize("query", [
    "format=0", "format=xlsx", "nope=1", "model__nope=1", "created_at__year=abc",
    "ts__gt=abc", "model=%00", "agent_id=a%00b", "trace_id__regex=(",
])
def test_it_answers_a_bad_export_parameter_with_400(browser, ledger, query):
    # The export page's query string is the list's filters; its own choice is the form's.
    assert browser.get(f"{URL}export/?{query}").status_code == 400
    assert browser.post(f"{URL}export/?{query}", {"format": "0"}).status_code == 400
    # The list itself refuses the same parameter (400, or back to itself with ?e=1).
    assert browser.get(f"{URL}?{query}").status_code in (302, 400)

