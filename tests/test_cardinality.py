"""Unbounded cardinality (issue 16, item 4): X-TokenPak-Agent, X-TokenPak-Session and the model
are the client's to choose, so a ledger can hold any number of them. Every page, API answer,
download and report stays the same size whether there are a hundred or ten thousand, and its
figures still add up to the totals, the rest counted in one "(other)" row."""

from __future__ import annotations

import csv
import io
import json
import time
from decimal import Decimal

import httpx
import pytest
from django.core.management import call_command

from telemetry import reports
from telemetry.models import Event
from tests.conftest import send
from tests.test_dashboard import browser, card, page_json  # noqa: F401 - browser: a fixture

SINCE = {"since": "2000-01-01"}
PAGES = [("/dashboard/", {}), ("/dashboard/finops", {}), ("/dashboard/engineering", {}),
         ("/dashboard/sessions", {}), ("/dashboard/compression", {}),
         ("/dashboard/finops", {"format": "json"}),
         ("/dashboard/finops", {"format": "csv", "section": "by_agent"}),
         ("/dashboard/finops", {"format": "csv", "section": "by_model"}),
         ("/dashboard/engineering", {"format": "json"}),
         ("/admin/telemetry/event/", {}), ("/admin/telemetry/event/", {"_facets": "1"})]


def invent(first: int, last: int) -> None:
    """Requests first..last-1, each with an agent, model, session and error type of its own
    (names of one width, so only their number changes), inserted the way bench/seed.py does."""
    now = time.time()
    Event.objects.bulk_create([
        Event(trace_id=f"{i:032x}", event_type="chat.completions", ts=now - 60 - i,
              provider="openai", model=f"model-{i:05d}", agent_id=f"agent-{i:05d}",
              session_id=f"session-{i:05d}", status="error" if i % 2 else "ok",
              error_class=f"type-{i:05d}" if i % 2 else "", duration_ms=100.0 + i % 50,
              input_tokens=10, output_tokens=1, cost_nano_usd=1000 + i * 7)
        for i in range(first, last)], batch_size=2000)


def sizes(browser: httpx.Client, api: httpx.Client) -> dict[str, int]:  # noqa: F811
    out = {}
    for path, params in PAGES:
        r = browser.get(path, params={**SINCE, **params})
        assert r.status_code == 200, (path, params, r.text[-300:])
        out[f"{path} {params}"] = len(r.content)
    r = api.get("/v1/telemetry/summary", params=SINCE)
    assert r.status_code == 200, r.text
    out["summary"] = len(r.content)
    for by in ("--by-agent", "--by-model"):
        text = io.StringIO()
        call_command("cost", "--since", "2000-01-01", by, stdout=text)
        out[by] = len(text.getvalue())
    return out


@pytest.fixture
def api(server, token) -> httpx.Client:
    with httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {token}"},
                      timeout=60) as client:
        yield client


def test_it_keeps_every_page_the_same_size_for_ten_thousand_agents(
        server, browser, api, rows):  # noqa: F811
    # A few through the proxy, as an attacker would send them; the rest inserted.
    for i in range(3):
        send(server.url, "openai", "gpt-4o-mini", f"via-proxy-{i}", session=f"s{i}")
    rows(3)
    invent(0, 100)
    small = sizes(browser, api)
    invent(100, 10_000)
    big = sizes(browser, api)
    for name, n in big.items():
        # The same rows but for numbers one or two digits longer: well under 10 % more.
        assert n <= small[name] * 1.1 + 2000, (name, small[name], n)
        assert n < 200_000, (name, n)


def test_it_adds_up_to_the_totals_with_the_rest_as_one_row(server, browser, api):  # noqa: F811
    invent(0, 10_000)
    finops = page_json(browser, "finops", **SINCE)
    spend, requests = Decimal(card(finops, "Spend")), 10_000
    for by in ("agent", "model"):
        table = finops["sections"][f"by_{by}"]["rows"]
        assert len(table) == reports.TOP + 1
        assert table[-1][by] == reports.OTHER and table[-1]["others"] == 10_000 - reports.TOP
        # The biggest spenders first: the names invent() gave the dearest requests.
        assert [r[by] for r in table[:3]] == [f"{by}-{i:05d}" for i in (9999, 9998, 9997)]
        assert sum(Decimal(r["cost_usd"]) for r in table) == spend
        assert sum(r["requests"] for r in table) == requests
        downloaded = list(csv.DictReader(io.StringIO(browser.get(
            "/dashboard/finops", params={**SINCE, "format": "csv",
                                         "section": f"by_{by}"}).text)))
        assert [r[by] for r in downloaded] == [r[by] for r in table]
    errors = page_json(browser, "engineering", **SINCE)["sections"]["errors_by_class"]["rows"]
    assert len(errors) == reports.TOP + 1 and sum(r["requests"] for r in errors) == 5_000
    # The admin's filters offer the first few and keep the facet counts' query small.
    page = browser.get("/admin/telemetry/event/", params={"_facets": "1"})
    assert page.status_code == 200 and "agent-00000 (1)" in page.text
    assert "agent-09999" not in page.text and "search for others" in page.text
    chosen = browser.get("/admin/telemetry/event/", params={"agent_id": "agent-09999"}).text
    assert 'class="selected"' in chosen and "agent-09999" in chosen


def test_it_pages_the_summary_breakdowns_and_counts_them(server, api):
    invent(0, 2_500)
    first = api.get("/v1/telemetry/summary", params=SINCE).json()
    assert (len(first["by_agent"]), first["by_agent_count"], first["next_offset"]) == (
        100, 2_500, 100)
    seen, offset = [], 0
    while offset is not None:
        page = api.get("/v1/telemetry/summary",
                       params={**SINCE, "limit": 1000, "offset": offset}).json()
        assert page["totals"] == first["totals"] and page["by_model_count"] == 2_500
        seen += page["by_agent"]
        offset = page["next_offset"]
    assert [r["key"] for r in seen] == [f"agent-{i:05d}" for i in reversed(range(2_500))]
    assert sum(Decimal(r["cost_usd"]) for r in seen) == Decimal(first["totals"]["cost_usd"])
    assert api.get("/v1/telemetry/summary", params={"limit": 0}).status_code == 400
    assert api.get("/v1/telemetry/summary", params={"limit": 1001}).status_code == 400


def test_it_prints_the_biggest_agents_and_the_rest_on_one_line(server):
    invent(0, 1_000)
    out = io.StringIO()
    call_command("cost", "--since", "2000-01-01", "--by-agent", stdout=out)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 + reports.TOP + 1 and "(980 others)" in lines[-1]
    everything = io.StringIO()
    call_command("cost", "--since", "2000-01-01", "--by-agent", "--all", stdout=everything)
    assert len(everything.getvalue().splitlines()) == 1 + 1_000
    out = io.StringIO()
    call_command("cost", "--since", "2000-01-01", "--by-model", "--json", stdout=out)
    data = json.loads(out.getvalue())
    assert len(data["rows"]) == reports.TOP and data["other"]["groups"] == 980
    assert sum(Decimal(r["cost_usd"]) for r in [*data["rows"], data["other"]]) == Decimal(
        data["totals"]["cost_usd"])
