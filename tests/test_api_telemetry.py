"""GET /v1/telemetry/…: real HTTP against the uvicorn server, on rows made by real proxy
traffic (tests/conftest.py TRAFFIC), checked against the commands on the same ledger."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from django.core.management import call_command
from django.test import override_settings

from telemetry import exporting, reports
from tests.live import ROOT, database_env
from tests.test_command_cost import age, exact_total
from tests.test_command_debug import chat

API = "/v1/telemetry"
PATHS = [f"{API}/summary", f"{API}/sessions", f"{API}/export", f"{API}/traces/{{trace_id}}"]


def command(*args: str, home: Path | None = None) -> str:
    out = io.StringIO()
    if home is None:
        call_command(*args, stdout=out)
    else:
        with override_settings(TOKENPAK_HOME=home):
            call_command(*args, stdout=out)
    return out.getvalue()


def cost(*args: str) -> dict:
    return json.loads(command("cost", "--json", *args))


def today() -> str:
    return datetime.now(tz=reports.zone()).date().isoformat()


def days_ago(n: int) -> str:
    return (datetime.now(tz=reports.zone()) - timedelta(days=n)).date().isoformat()


@pytest.fixture
def api(server, token) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url + API,
                      headers={"authorization": f"Bearer {token}"}) as client:
        yield client


def get(api: httpx.Client, path: str, **params: object) -> dict:
    response = api.get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def totals(api: httpx.Client, **params: object) -> dict:
    return get(api, "/summary", **params)["totals"]


def export(api: httpx.Client, fmt: str, **params: object) -> httpx.Response:
    response = api.get("/export", params={"format": fmt, **params})
    assert response.status_code == 200, response.text
    return response


def walk(api: httpx.Client, limit: int, **params: object) -> list[dict]:
    """Every page of /sessions, following next_cursor."""
    items: list[dict] = []
    cursor = ""
    while True:
        page = get(api, "/sessions", limit=limit, cursor=cursor, **params)
        items += page["items"]
        if page["next_cursor"] is None:
            return items
        cursor = page["next_cursor"]


@pytest.fixture
def compressed(server, traffic, rows) -> list:
    """TRAFFIC plus one compressible chat in session s-42; returns all eight events."""
    chat(server, **{"x-tokenpak-session": "s-42"})
    return rows(len(traffic) + 1)


# --- figures ---------------------------------------------------------------------------------


def test_it_sums_exactly_as_cost_json_does(traffic, api):
    for period in ("today", "week", "month"):
        summary = get(api, "/summary", period=period)
        expected = cost(f"--{period}")
        assert {k: summary[k] for k in expected} == expected
        for by in ("model", "agent", "day"):
            assert summary[f"by_{by}"] == cost(f"--{period}", f"--by-{by}")["rows"]
    assert Decimal(summary["totals"]["cost_usd"]) == exact_total(traffic)
    assert summary["totals"]["requests"] == 7
    assert {r["key"]: r["requests"] for r in summary["by_agent"]} == {
        "coder": 4, "reviewer": 2, "(none)": 1}


def test_it_answers_for_the_last_7_days_without_a_period_or_dates(traffic, api):
    age([traffic[0].trace_id], days=400)
    summary = get(api, "/summary")
    assert (summary["period"], summary["until"], summary["filters"]) == ("Last 7 days", None, "")
    assert summary["since"] == (reports.period("today")[0] - timedelta(days=6)).isoformat()
    assert summary["totals"] == cost("--since", days_ago(6))["totals"]
    assert summary["totals"]["requests"] == 6
    everything = get(api, "/summary", since=days_ago(401))
    assert everything["totals"] == cost("--since", days_ago(401))["totals"]
    assert everything["totals"]["requests"] == 7
    assert totals(api, period="today")["requests"] == 6


def test_it_narrows_by_model_agent_and_min_cost_as_cost_does(traffic, api):
    for params, flags in [
        ({"model": "gpt-4o"}, ["--model", "gpt-4o"]),
        ({"agent": "reviewer"}, ["--agent", "reviewer"]),
        ({"min_cost": "0.005"}, ["--min-cost", "0.005"]),
        ({"min_cost": "$0.005", "agent": "coder"}, ["--min-cost", "0.005", "--agent", "coder"]),
    ]:
        summary = get(api, "/summary", period="today", **params)
        expected = cost("--today", *flags)
        assert {k: summary[k] for k in expected} == expected
        assert summary["by_model"] == cost("--today", "--by-model", *flags)["rows"]
        page = get(api, "/sessions", period="today", **params)
        assert page["count"] == len(page["items"]) == expected["totals"]["requests"]
    assert totals(api, model="gpt-4o")["requests"] == 2
    assert totals(api, agent="reviewer")["requests"] == 2
    expensive = [e for e in traffic if e.cost.cost_usd >= Decimal("0.005")]
    assert 0 < len(expensive) < 7
    narrowed = totals(api, min_cost="0.005")
    assert narrowed["requests"] == len(expensive)
    assert Decimal(narrowed["cost_usd"]) == exact_total(expensive)


def test_it_narrows_by_dates_and_periods_as_cost_does(traffic, api):
    age([e.trace_id for e in traffic[:2]], days=40)
    since, until = days_ago(45), days_ago(35)
    for params, flags, requests in [
        ({"since": since, "until": until}, ["--since", since, "--until", until], 2),
        ({"since": since}, ["--since", since], 7),
        ({"until": until}, ["--until", until], 2),
        ({"since": today()}, ["--since", today()], 5),
        # until is inclusive of its day, as on the command line
        ({"until": today()}, ["--until", today()], 7),
        ({"period": "today"}, ["--today"], 5),
        ({"since": f"{since}T00:00:00", "until": f"{until}T23:59:59"},
         ["--since", f"{since}T00:00:00", "--until", f"{until}T23:59:59"], 2),
    ]:
        summary = get(api, "/summary", **params)
        expected = cost(*flags)
        assert {k: summary[k] for k in expected} == expected, params
        assert summary["by_day"] == cost(*flags, "--by-day")["rows"]
        assert summary["totals"]["requests"] == requests
        assert get(api, "/sessions", **params)["count"] == requests
    window = get(api, "/summary", since=since, until=until)
    assert window["period"] == f"{since} to {until}"
    assert [r["key"] for r in window["by_day"]] == [days_ago(40)]


def test_it_narrows_by_status_session_and_compression(compressed, api):
    [error] = [e for e in compressed if e.status == "error"]
    [squeezed] = [e for e in compressed if e.tokens_saved > 0]
    assert squeezed.session_id == "s-42"
    for params, expected in [
        ({"status": "error"}, [error]),
        ({"status": "ok"}, [e for e in compressed if e.status == "ok"]),
        ({"session": "s-42"}, [squeezed]),
        ({"compressed_only": "true"}, [squeezed]),
        ({"compressed_only": "false"}, compressed),
        ({"session": "s-42", "status": "error"}, []),
    ]:
        summary = get(api, "/summary", **params)
        assert summary["totals"]["requests"] == len(expected), params
        assert Decimal(summary["totals"]["cost_usd"]) == exact_total(expected)
        ids = {i["trace_id"] for i in get(api, "/sessions", **params)["items"]}
        assert ids == {e.trace_id for e in expected}
        exported = json.loads(export(api, "json", **params).text)
        assert {r["trace_id"] for r in exported} == ids
    filtered = get(api, "/summary", session="s-42", status="ok", compressed_only="true")
    assert filtered["filters"] == "session s-42, status ok, compressed only"
    saved = totals(api, compressed_only="true")
    assert saved["tokens_saved"] == squeezed.tokens_saved > 0
    assert saved["savings_pct"] > 0


# --- the request list ------------------------------------------------------------------------


def test_it_pages_through_every_request_newest_first(traffic, api):
    first = get(api, "/sessions", limit=3)
    assert (len(first["items"]), first["count"]) == (3, 7) and first["next_cursor"]
    items = walk(api, limit=3)
    ids = [i["trace_id"] for i in items]
    newest_first = sorted(traffic, key=lambda e: (e.ts, e.trace_id), reverse=True)
    assert ids == [e.trace_id for e in newest_first]  # none missed, none twice
    assert walk(api, limit=1) == items == walk(api, limit=1000)
    whole = get(api, "/sessions", limit=7)
    assert (whole["next_cursor"], len(whole["items"])) == (None, 7)
    assert get(api, "/sessions")["items"] == items  # default limit 50

    e = newest_first[0]
    assert items[0] == {
        "trace_id": e.trace_id, "time": json.loads(command("trace", "--id", e.trace_id,
                                                           "--json"))["time"],
        "provider": e.provider, "model": e.model, "requested_model": e.requested_model,
        "agent_id": e.agent_id, "session_id": e.session_id, "endpoint": e.endpoint,
        "status": e.status, "error_class": e.error_class,
        "upstream_status": e.upstream_status, "stream": e.stream,
        "duration_ms": e.duration_ms, "ttfb_ms": e.ttfb_ms, "input_tokens": e.input_tokens,
        "output_tokens": e.output_tokens, "tokens_saved": e.tokens_saved,
        "cost_usd": reports.plain(reports.usd(e.cost_nano_usd)),
        "cost_saved_usd": reports.plain(reports.usd(e.saved_nano_usd)),
        "usage_source": e.usage_source,
    }
    costs = {i["trace_id"]: i["cost_usd"] for i in items}
    assert {t: Decimal(c) for t, c in costs.items()} == {
        e.trace_id: e.cost.cost_usd for e in traffic}
    assert "0.000000000" in costs.values()  # the provider error, written as digits


def test_it_pages_a_filtered_list_with_its_own_count(traffic, api):
    coder = walk(api, limit=2, agent="coder")
    assert [i["agent_id"] for i in coder] == ["coder"] * 4
    assert get(api, "/sessions", agent="coder", limit=2)["count"] == 4


# --- downloads -------------------------------------------------------------------------------


def test_it_exports_csv_and_json_as_the_export_command_does(traffic, api):
    response = export(api, "csv")
    assert response.headers["content-type"].startswith("text/csv")
    assert response.headers["content-disposition"] == (
        'attachment; filename="tokenpak-requests.csv"')
    assert "content-length" not in response.headers  # streamed
    assert response.text == command("export", "--format", "csv", "--out", "-")
    table = list(csv.reader(io.StringIO(response.text)))
    assert table[0] == exporting.NAMES and len(table) == 1 + 7

    response = export(api, "json")
    assert response.headers["content-type"] == "application/json"
    assert response.headers["content-disposition"] == (
        'attachment; filename="tokenpak-requests.json"')
    assert response.text == command("export", "--format", "json", "--out", "-")
    items = json.loads(response.text)
    assert len(items) == 7 and all(list(i) == exporting.NAMES for i in items)
    assert sum(Decimal(i["cost_usd"]) for i in items) == exact_total(traffic)

    assert export(api, "csv").text == export(api, "csv", format="csv").text  # csv by default
    mini = list(csv.DictReader(io.StringIO(export(api, "csv", model="gpt-4o-mini").text)))
    assert [r["model"] for r in mini] == ["gpt-4o-mini"] * 2
    assert json.loads(export(api, "json", model="nothing").text) == []


# --- traces ----------------------------------------------------------------------------------


def test_it_shows_each_trace_as_the_trace_command_does(traffic, api):
    for e in traffic:
        assert get(api, f"/traces/{e.trace_id}") == json.loads(
            command("trace", "--id", e.trace_id, "--json"))
    [error] = [e for e in traffic if e.status == "error"]
    shown = get(api, f"/traces/{error.trace_id}")
    assert (shown["upstream_status"], shown["cost_usd"]) == (429, "0.000000000")


def test_it_shows_what_debug_captured_in_a_trace(server, api, rows):
    command("debug", "on", "--requests", "1")
    trace_id = chat(server, **{"x-tokenpak-session": "s-7"})
    rows(1)
    shown = get(api, f"/traces/{trace_id}")
    assert shown == json.loads(command("trace", "--id", trace_id, "--json"))
    assert shown["capture"]["path"] == "/v1/chat/completions"
    assert shown["segments"] and shown["session_id"] == "s-7"


def test_it_answers_404_for_an_unknown_trace(server, api):
    response = api.get("/traces/no-such-trace")
    assert response.status_code == 404
    assert response.json() == {"detail": "no request with trace id 'no-such-trace' in the ledger"}
    nul = api.get("/traces/a%00b")  # PostgreSQL refuses a NUL byte: this was a 500 there
    assert (nul.status_code, nul.json()) == (
        404, {"detail": "no request with trace id 'a\\x00b' in the ledger"})


def test_it_answers_nothing_above_the_dearest_cost_a_ledger_can_hold(traffic, api):
    # One more billionth is refused (above); this much is a filter that matches nothing.
    top = {"min_cost": str(reports.MAX_COST)}
    assert export(api, "csv", **top).text == ",".join(exporting.NAMES) + "\n"
    assert json.loads(export(api, "json", **top).text) == []
    assert get(api, "/sessions", **top)["count"] == totals(api, **top)["requests"] == 0


# --- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, params, message",
    [
        ("/sessions", {"cursor": "garbage"}, "bad cursor 'garbage'"),
        ("/sessions", {"cursor": "1.5_"}, "bad cursor '1.5_'"),
        ("/sessions", {"limit": 0}, "limit: "),
        ("/sessions", {"limit": 1001}, "limit: "),
        ("/sessions", {"limit": "many"}, "limit: "),
        ("/summary", {"since": "yesterday"}, "bad date 'yesterday'"),
        ("/summary", {"until": "2026-13-01"}, "bad date '2026-13-01'"),
        ("/summary", {"period": "week", "since": "2026-01-01"},
         "week and since/until cannot be combined"),
        ("/summary", {"since": "2026-02-01", "until": "2026-01-01"},
         "since must be before until"),
        ("/summary", {"period": "year"}, "period: "),
        ("/summary", {"min_cost": "cheap"}, "bad min-cost 'cheap'"),
        ("/summary", {"min_cost": "-1"}, "min-cost must be a positive number"),
        ("/summary", {"status": "fine"}, "status: "),
        ("/summary", {"compressed_only": "maybe"}, "compressed_only: "),
        ("/sessions", {"since": "soon"}, "bad date 'soon'"),
        ("/export", {"format": "xml"}, "format: "),
        ("/export", {"model": "x", "until": "never"}, "bad date 'never'"),
        # Found by tests/test_api_fuzz.py, each a 500 before (PostgreSQL refuses a NUL byte).
        ("/summary", {"until": "9999-12-31"}, "bad date '9999-12-31': out of range"),
        ("/export", {"since": "2026-01-01", "until": "9999-12-31"}, "bad date '9999-12-31'"),
        ("/sessions", {"min_cost": "1e999999999"}, "min-cost must be at most 9223372036.85"),
        ("/export", {"min_cost": "9223372036.854775808"}, "min-cost must be at most"),
        ("/summary", {"model": "a\x00b"}, "bad model 'a\\x00b': a NUL byte cannot be"),
        ("/sessions", {"agent": "\x00"}, "bad agent '\\x00'"),
        ("/export", {"session": "s\x00"}, "bad session 's\\x00'"),
        ("/sessions", {"cursor": "nan_0"}, "bad cursor 'nan_0'"),
        ("/sessions", {"cursor": "-inf_0"}, "bad cursor '-inf_0'"),
        ("/sessions", {"cursor": "1e999_0"}, "bad cursor '1e999_0'"),
        ("/sessions", {"cursor": "1.5_\x00"}, "bad cursor '1.5_\\x00'"),
    ],
)
def test_it_refuses_a_bad_parameter_with_400_and_one_line(server, api, path, params, message):
    response = api.get(path, params=params)
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail
    assert detail.startswith(message), detail


def test_it_takes_an_empty_period_or_status_as_none_given(server, api):
    assert get(api, "/summary", period="", status="")["period"] == "Last 7 days"


def test_it_answers_401_without_the_token(server, token):
    with httpx.Client(base_url=server.url + API) as anonymous:
        for path in ("/summary", "/sessions", "/export", "/traces/x"):
            response = anonymous.get(path)
            assert (response.status_code, response.json()) == (401, {"detail": "Unauthorized"})
            for wrong in (f"Bearer {token}x", "Bearer", f"Basic {token}", token):
                assert anonymous.get(path, headers={"authorization": wrong}).status_code == 401
        right = anonymous.get("/summary", headers={"authorization": f"Bearer {token}"})
        assert right.status_code == 200


def test_it_makes_the_token_file_private_and_prints_it(server):
    path = server.home / "api_token"
    path.unlink(missing_ok=True)  # as on a first run
    env = {**os.environ, "TOKENPAK_HOME": str(server.home), **database_env()}
    env.pop("DJANGO_SETTINGS_MODULE", None)  # the real settings, as users run it
    printed = subprocess.run([sys.executable, "manage.py", "token"], cwd=ROOT, env=env,
                             capture_output=True, text=True, check=True).stdout.strip()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert printed == path.read_text().strip() and len(printed) >= 32
    with httpx.Client(base_url=server.url + API) as client:
        ok = client.get("/summary", headers={"authorization": f"Bearer {printed}"})
        assert ok.status_code == 200


def test_it_refuses_the_old_token_after_a_rotation(server, api, token):
    assert api.get("/summary").status_code == 200
    new = command("token", "--rotate", home=server.home).strip()
    assert new != token
    assert api.get("/summary").status_code == 401
    fresh = api.get("/summary", headers={"authorization": f"Bearer {new}"})
    assert fresh.status_code == 200


def test_it_lets_a_signed_in_staff_user_in(server, django_user_model):
    django_user_model.objects.create_user("auditor", password="pw-for-test", is_staff=True)
    with httpx.Client(base_url=server.url) as browser:
        assert browser.get(f"{API}/summary").status_code == 401
        login = browser.get("/admin/login/")
        csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login.text).group(1)
        signed_in = browser.post("/admin/login/?next=/admin/", data={
            "csrfmiddlewaretoken": csrf, "username": "auditor", "password": "pw-for-test"})
        assert signed_in.status_code == 302 and "sessionid" in browser.cookies
        assert browser.get(f"{API}/summary").json()["period"] == "Last 7 days"
        assert browser.get(f"{API}/sessions").json()["count"] == 0
        browser.post("/admin/logout/", data={"csrfmiddlewaretoken": browser.cookies["csrftoken"]},
                     headers={"referer": server.url + "/admin/"})
        assert browser.get(f"{API}/summary").status_code == 401


def test_it_answers_503_when_telemetry_is_off(start_server, tmp_path):
    home = tmp_path / "off"
    off = start_server(home=home, TOKENPAK_DB="/dev/null", DATABASE_URL="")
    token = command("token", home=home).strip()
    response = httpx.get(off.url + f"{API}/summary",
                         headers={"authorization": f"Bearer {token}"})
    assert response.status_code == 503
    assert response.json()["detail"].startswith("Telemetry is off")


# --- one API, two kinds of route -------------------------------------------------------------


def test_it_documents_the_four_paths_in_the_openapi_schema(server):
    schema = httpx.get(server.url + "/api/openapi.json").json()
    assert [p for p in schema["paths"] if p.startswith(API)] == PATHS
    assert set(schema["components"]["securitySchemes"]) == {"LocalToken", "SessionAuthIsStaff"}
    sessions = schema["paths"][f"{API}/sessions"]["get"]
    assert {"cursor", "limit", "since", "until", "period", "model", "agent", "min_cost",
            "compressed_only", "session", "status"} <= {p["name"] for p in sessions["parameters"]}
    assert "/v1/chat/completions" not in schema["paths"]  # the proxy's routes stay out
    # An empty period or status is taken as none given: the schema says so (a fuzzer found
    # `period=` accepted where the schema's enum had no "").
    params = {p["name"]: p["schema"] for p in sessions["parameters"]}
    for name in ("period", "status"):
        assert {"const": "", "type": "string"} in params[name]["anyOf"]


def test_it_serves_the_docs_page_and_its_assets_itself(server):
    page = httpx.get(server.url + "/api/docs")
    assert page.status_code == 200
    assert "https://" not in page.text  # nothing from a CDN: works offline
    assets = re.findall(r'(?:src|href)="(/static/ninja/[^"]+)"', page.text)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets)
    for asset in assets:
        assert httpx.get(server.url + asset).status_code == 200


def test_it_leaves_the_proxy_routes_to_the_proxy(server, api, fake, rows):
    assert api.get("/summary").status_code == 200
    assert api.post("/summary").status_code == 405
    for method in ("GET", "POST"):
        for path in (f"{API}/nothing-here", f"{API}/"):  # /v1/telemetry/ was the proxy's
            unknown = httpx.request(method, server.url + path, json={})
            assert unknown.status_code == 404
            assert unknown.json() == {"detail": f"no telemetry endpoint '{path}'"}
    assert fake.log == []  # none of that went upstream
    response = httpx.post(server.url + "/v1/chat/completions",
                          json={"model": "gpt-4o-mini", "messages": []},
                          headers={"authorization": "Bearer sk-test-api-0000"})
    assert response.status_code == 200
    assert [r.path for r in fake.log] == ["/v1/chat/completions"]
    [event] = rows(1)
    assert totals(api)["requests"] == 1 and event.status == "ok"


def test_it_ends_an_export_the_client_leaves_early(server, api):
    """A download cut short closes its cursor (and on PostgreSQL its transaction) at once."""
    import time as _time

    from django.db import connection

    from telemetry.models import Event

    now = _time.time()
    Event.objects.bulk_create([
        Event(trace_id=f"{i:032x}", event_type="chat.completions", ts=now - i, provider="openai",
              model="gpt-4o-mini", status="ok") for i in range(3000)])
    for _ in range(3):
        with api.stream("GET", "/export", params={"format": "csv"}) as r:
            assert r.status_code == 200
            first = next(r.iter_bytes())
            assert first.startswith(b"trace_id,")  # then the client hangs up
    whole = api.get("/export", params={"format": "csv"})
    assert whole.text.count("\n") == 3001  # the server goes on serving exports
    _time.sleep(0.5)
    assert "Traceback" not in server.output() and "SynchronousOnly" not in server.output()
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                           "current_database() AND state LIKE 'idle in transaction%%'")
            assert cursor.fetchone()[0] == 0
