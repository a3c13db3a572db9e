"""Issue 16's property test: hostile text in every value a client or a provider controls.

Hypothesis draws the values (derandomized, a fixed number of examples): NUL, C0 and C1
controls, ESC/OSC sequences, bidirectional overrides, line separators, lone surrogates (sent
as the JSON escapes "\\udc80" a client or provider would send), markup, 100 KB strings, and
spreadsheet formula starts (= + - @ TAB CR). Each value goes through every door the ledger
records, against a server of this module's own (uvicorn, as `serve` runs it) and the fake
provider:

- the request's model (a JSON body, sent with httpx: the SDKs write raw UTF-8, which cannot
  carry a lone surrogate),
- the model the provider answers with and its error type (the fake's x-fake-model and
  x-fake-error-type, through the anthropic and openai SDKs),
- X-TokenPak-Agent and X-TokenPak-Session (raw header bytes: only what HTTP carries; uvicorn
  refuses C0 controls and DEL with 400 before the app).

The values are sent in two rounds: first as `storable` makes them (every other hostile
character kept), then, for those it changes, as they came. A ledger stopped by a NUL then
holds the first round, so the export, page and terminal properties still have hostile rows to
read. Each property is one test over every row: (a) the row lands with the values as stored,
(b) every export parses back to them, formula cells neutralised in CSV and XLSX, (c) every page
renders them escaped, (d) no terminal output or log line carries a raw control character.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import openpyxl
import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import connection
from django.template.defaultfilters import linebreaksbr
from django.test import override_settings
from django.utils.html import escape
from hypothesis import HealthCheck, Phase, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from openpyxl.utils.escape import unescape

from telemetry.models import Event
from tests.conftest import _server_env, wait_for
from tests.live import LiveServer
from tests.test_admin import URL as ADMIN
from tests.test_api_telemetry import API, get, walk
from tests.test_dashboard import VIEWS, page_json
from tokenpak_site.text import shown, shown_lines, spreadsheet_cell, storable

EXAMPLES = 30  # drawn values; each is sent through four doors, most of them twice

# The ledger's text columns a client or a provider chooses, and their widths (telemetry/models.py).
WIDTH = {"model": 128, "requested_model": 128, "sent_model": 128, "agent_id": 128,
         "session_id": 128, "error_class": 64}
TEXT = tuple(WIDTH)

MARKUP = "<script>alert(1)</script>"
PIECES = [
    "\x00", "\x1b[2J\x1b[H", "\x1b]0;owned\x07", "\x1b]8;;https://evil.example/\x1b\\link",
    "\u202e", "\u2066", "\u2028", "\u2029", "\r", "\n", "\r\n", "\t", "\x7f", "\x85", "\x9b31m",
    "\udc80", "\ud83d", MARKUP, "\"'&<>", ",;", "\ufeff", "\u0301", "é", "😀",
    "\n2026-12-02 01:00:00,000 INFO tokenpak.requests forged line",
]
FORMULAS = ["", "=", "+", "-", "@", "\t", "\r", '=HYPERLINK("https://evil.example/","x")', "=1+2",
            "+SUM(1)", "-3+4", "@A1"]
LONG = 100_000
# The provider's values travel in a header to the fake (TokenPak refuses headers over 64 KB).
PROVIDER_CHARS = 4000

# What uvicorn's parser takes in a header value: TAB, printable ASCII and every byte from 0x80.
ACCEPTED = [9, *range(0x20, 0x7F), *range(0x80, 0x100)]
REFUSED = [*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F]  # CR and LF end a header
HEADER_PIECES = [b"\x9b31m", b"\x85", b"\xa0", "\u202e".encode(), "\u2028".encode(),
                 "😀".encode(), MARKUP.encode(), b"\"'&<>", b'=HYPERLINK("https://evil.example/")']


@st.composite
def hostile_text(draw: st.DrawFn) -> str:
    start = draw(st.sampled_from(FORMULAS))
    parts = draw(st.lists(st.one_of(
        st.sampled_from(PIECES),
        st.text(st.characters(exclude_categories=()), min_size=1, max_size=10),  # surrogates too
    ), min_size=1, max_size=6))
    text = start + "".join(parts)
    # A middle value: hypothesis favours the bounds, and long values should stay a few.
    return text + "m" * LONG if draw(st.integers(0, 9)) == 7 else text


@st.composite
def header_value(draw: st.DrawFn) -> bytes:
    start = draw(st.sampled_from([b"", b"=", b"+", b"-", b"@", b"\t"]))
    parts = draw(st.lists(st.one_of(
        st.sampled_from(HEADER_PIECES),
        st.lists(st.sampled_from(ACCEPTED), min_size=1, max_size=12).map(bytes),
    ), min_size=1, max_size=5))
    value = start + b"".join(parts)
    if draw(st.integers(0, 4)) == 3:  # one byte HTTP cannot carry: uvicorn answers 400
        at = draw(st.integers(0, len(value)))
        value = value[:at] + bytes([draw(st.sampled_from(REFUSED))]) + value[at:]
    return value + b"h" * LONG if draw(st.integers(0, 9)) == 7 else value


@dataclass
class Case:
    text: str
    header: bytes


def draw_cases() -> list[Case]:
    cases: list[Case] = []

    @hypothesis_settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
                         phases=[Phase.explicit, Phase.generate],
                         suppress_health_check=list(HealthCheck))
    @given(text=hostile_text(), header=header_value())
    # The issue's own examples, and one of each kind whatever hypothesis draws.
    @example(text="gpt-4o-mini\x00x", header=b"coder")
    @example(text="\udc80", header=b"\x1b]0;owned\x07")  # ESC: uvicorn refuses it
    @example(text='=HYPERLINK("https://evil.example/","x")', header=b"=1+2")
    @example(text="+\x1b]0;owned\x07\x1b[2J", header=b"+\x9b31m")
    @example(text="-2+3\r\n2026-12-02 01:00:00,000 INFO forged", header=b"-2+3")
    @example(text="@SUM(A1)\u2028\x85", header=b"@SUM(A1)")
    @example(text="\tcmd\n", header=b"\tagent\x9b31m\xa0")
    @example(text="\r=1+2", header=b"h" * LONG)  # 431: headers over 64 KB
    @example(text="\u202egnp.exe" + MARKUP, header="\u202e".encode() + MARKUP.encode())
    @example(text="\x00" + "m" * LONG, header=b"\x00")
    def collect(text: str, header: bytes) -> None:
        cases.append(Case(text, header))

    collect()
    return cases


def stored(value: str, column: str) -> str:
    """What the ledger must hold for a value sent into this column (tokenpak_site.text)."""
    return storable(value)[: WIDTH[column]]


@dataclass
class Sent:
    door: str  # which client- or provider-controlled value carried it
    value: str  # as sent (header bytes as latin-1)
    trace_id: str
    expected: dict[str, str]


@dataclass
class Hostile:
    server: LiveServer
    sent: list[Sent] = field(default_factory=list)
    refused: list[bytes] = field(default_factory=list)  # header values uvicorn answered 400
    browser: httpx.Client | None = None  # the dashboard, signed in with the token link
    admin: httpx.Client | None = None  # the admin, signed in as a superuser
    api: httpx.Client | None = None  # the REST API, with the token

    def rows(self) -> list[Event]:
        """The hostile rows the ledger holds, whatever property (a) says of the others."""
        events = Event.objects.filter(trace_id__in=[s.trace_id for s in self.sent])
        return list(events.select_related("usage", "cost").order_by("ts"))


# --- sending ---------------------------------------------------------------------------------


MESSAGES = [{"role": "user", "content": "hi"}]


def via_model(client: httpx.Client, text: str) -> Sent:
    # httpx, not the SDK: the SDK writes raw UTF-8, which has no lone surrogate; JSON's
    # "\udc80" escape (json.dumps' default) carries one as any client may send it.
    body = json.dumps({"model": text, "messages": MESSAGES})
    r = client.post("/v1/chat/completions", content=body, headers={
        "content-type": "application/json", "authorization": "Bearer sk-test-hostile-0000"})
    expected = {c: stored(text, c) for c in ("model", "requested_model", "sent_model")}
    return Sent("model", text, r.headers["x-tokenpak-trace-id"], expected | {"status": "ok"})


def via_provider_model(ant: anthropic.Anthropic, text: str, stream: bool) -> Sent:
    text = text[:PROVIDER_CHARS]
    raw = ant.messages.with_raw_response.create(
        model="claude-haiku-4-5", max_tokens=10, messages=MESSAGES, stream=stream,
        extra_headers={"x-fake-model": json.dumps(text)})
    if stream:
        for _ in raw.parse():  # the row is written when the stream ends
            pass
    expected = {"model": stored(text, "model"), "requested_model": "claude-haiku-4-5",
                "status": "ok"}
    return Sent("provider model", text, raw.headers["x-tokenpak-trace-id"], expected)


def via_error_type(oai: openai.OpenAI, ant: anthropic.Anthropic, text: str, i: int) -> Sent:
    text = text[:PROVIDER_CHARS]
    extra = {"x-fake-scenario": "status=400", "x-fake-error-type": json.dumps(text)}
    try:
        if i % 2:
            ant.messages.create(model="claude-haiku-4-5", max_tokens=10, messages=MESSAGES,
                                extra_headers=extra)
        else:
            oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                        extra_headers=extra)
    except (openai.BadRequestError, anthropic.BadRequestError) as e:
        trace_id = e.response.headers["x-tokenpak-trace-id"]
    else:
        raise AssertionError("the fake provider did not answer 400")
    expected = {"error_class": stored(text, "error_class"), "status": "error"}
    return Sent("provider error type", text, trace_id, expected)


def via_headers(server: LiveServer, agent: bytes) -> Sent | None:
    """X-TokenPak-Agent and X-TokenPak-Session as raw bytes; None when uvicorn refused them."""
    session = bytes(reversed(agent))
    body = json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES}).encode()
    request = b"\r\n".join([
        b"POST /v1/chat/completions HTTP/1.1", b"Host: 127.0.0.1:%d" % server.port,
        b"Content-Type: application/json", b"Authorization: Bearer sk-test-hostile-0000",
        b"X-TokenPak-Agent: " + agent, b"X-TokenPak-Session: " + session,
        b"Content-Length: %d" % len(body), b"Connection: close", b"", body])
    head = exchange(server.port, request).split(b"\r\n\r\n", 1)[0].decode("latin-1")
    status = int(head.split(" ", 2)[1])
    trace = re.search(r"(?im)^x-tokenpak-trace-id: *([0-9a-f]+)", head)
    if trace is None:
        assert status == 400, head
        return None
    if status == 431:  # headers over 64 KB: refused by TokenPak, nothing from them is kept
        expected = {"agent_id": "", "session_id": "", "status": "invalid_request"}
    else:
        # As TokenPak reads a header: its bytes as latin-1, without surrounding whitespace.
        expected = {"agent_id": stored(agent.decode("latin-1").strip(), "agent_id"),
                    "session_id": stored(session.decode("latin-1").strip(), "session_id"),
                    "status": "ok"}
    return Sent("headers", agent.decode("latin-1"), trace.group(1), expected)


def exchange(port: int, request: bytes) -> bytes:
    """Send raw bytes, reading the answer meanwhile: a server refusing a 100 KB header answers
    and closes before it has read it all, and the reset would discard an answer read after."""
    received: list[bytes] = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        def read() -> None:
            with contextlib.suppress(OSError):
                while chunk := sock.recv(65536):
                    received.append(chunk)

        reader = threading.Thread(target=read)
        reader.start()
        with contextlib.suppress(OSError):
            sock.sendall(request)
        reader.join(10)
    return b"".join(received)


def send_all(h: Hostile, cases: list[Case]) -> None:
    url = h.server.url
    oai = openai.OpenAI(base_url=url + "/v1", api_key="sk-test-hostile-0000", max_retries=0)
    ant = anthropic.Anthropic(base_url=url, api_key="sk-ant-test-hostile-0000", max_retries=0)
    client = httpx.Client(base_url=url, timeout=60)

    def round_(texts: list[tuple[int, str]]) -> list[Sent]:
        sent = []
        for i, text in texts:
            sent += [via_model(client, text), via_provider_model(ant, text, stream=i % 2 == 0),
                     via_error_type(oai, ant, text, i)]
        return sent

    # Round one: what `storable` makes of each value, and the headers (never NUL or surrogates).
    first = round_([(i, storable(c.text)) for i, c in enumerate(cases)])
    for c in cases:
        if (one := via_headers(h.server, c.header)) is None:
            h.refused.append(c.header)
        else:
            first.append(one)
    h.sent += first
    landed(first)
    # Round two: the values storable changes, as they came.
    second = round_([(i, c.text) for i, c in enumerate(cases) if storable(c.text) != c.text])
    h.sent += second
    landed(second)
    client.close()


def landed(sent: list[Sent], timeout: float = 15.0) -> None:
    """Wait for these rows; a ledger that never writes them is property (a)'s failure."""
    ids = [s.trace_id for s in sent]
    with contextlib.suppress(AssertionError):
        wait_for(lambda: Event.objects.filter(trace_id__in=ids).count() == len(ids), timeout)


# --- signing in --------------------------------------------------------------------------------


def csrf(page: httpx.Response) -> str:
    return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)


def sign_in(h: Hostile) -> None:
    url = h.server.url
    out = io.StringIO()
    with override_settings(TOKENPAK_HOME=h.server.home):
        call_command("token", stdout=out)
    token = out.getvalue().strip()
    h.api = httpx.Client(base_url=url + API, headers={"authorization": f"Bearer {token}"},
                         timeout=60)
    h.browser = httpx.Client(base_url=url, follow_redirects=True, timeout=60)
    assert h.browser.get("/dashboard/login/", params={"token": token}).status_code == 200
    get_user_model().objects.create_superuser("hostile", "hostile@localhost", "pw-hostile")
    h.admin = httpx.Client(base_url=url, timeout=60)
    signed_in = h.admin.post("/admin/login/?next=/admin/", data={
        "csrfmiddlewaretoken": csrf(h.admin.get("/admin/login/")), "username": "hostile",
        "password": "pw-hostile"})
    assert signed_in.status_code == 302, signed_in.text


@pytest.fixture(scope="module")
def hostile(django_db_setup: None, django_db_blocker: Any, fake_provider: Any) -> Iterator[Hostile]:
    """A server of the module's own (a ledger a value stops must not stop other modules'
    tests), every drawn value sent through it, the clients signed in."""
    with django_db_blocker.unblock():
        if "tp_events" not in connection.introspection.table_names():
            pytest.fail("no test database: run the module whole, or with "
                        "test_it_draws_every_kind_of_hostile_value, which asks for it")
        env = _server_env(fake_provider)
        server = LiveServer(env, Path(settings.TOKENPAK_HOME) / "hostile").start()
        h = Hostile(server)
        try:
            send_all(h, draw_cases())
            sign_in(h)
            yield h
        finally:
            for client in (h.api, h.browser, h.admin):
                if client is not None:
                    client.close()
            server.stop()
            # As transactional_db leaves it for the next module: an empty ledger.
            call_command("flush", interactive=False, verbosity=0)


# --- checking ----------------------------------------------------------------------------------


def problems_in(found: list[str]) -> str:
    """The findings by output (what comes before the first colon): a count and two of each."""
    by_output: dict[str, list[str]] = {}
    for finding in found:
        by_output.setdefault(finding.split(":", 1)[0], []).append(finding)
    return f"{len(found)} problems in {len(by_output)} outputs:\n" + "\n".join(
        f"[{len(items)}] " + "\n    ".join(items[:2]) for items in by_output.values())


def short(value: Any) -> str:
    return repr(value if not isinstance(value, str) or len(value) < 70 else value[:70] + "…")


def raw_control(text: str) -> str | None:
    """The first character a terminal would act on (a line feed between lines is fine)."""
    if shown_lines(text) == text:
        return None
    return next(ch for ch in text if ch != "\n" and shown(ch) != ch)


@pytest.mark.django_db(transaction=True)
def test_it_draws_every_kind_of_hostile_value() -> None:
    """The examples hold each kind the issue names. (Marked for the database: pytest-django
    creates the test database only for tests that ask for it. The other tests read the rows
    the module's fixture sent outside any transaction: on SQLite a test's transaction would
    hold the write lock the server needs; this one runs first and leaves the ledger empty.)"""
    cases = draw_cases()
    texts = "".join(c.text for c in cases)
    for kind in ("\x00", "\udc80", "\x1b", "\x1b]", "\u202e", "\r", "\n", MARKUP):
        assert kind in texts, kind
    assert any(len(c.text) > LONG for c in cases) and any(len(c.header) > LONG for c in cases)
    for start in ("=", "+", "-", "@", "\t", "\r"):
        assert any(c.text.startswith(start) for c in cases), start
    assert any(set(c.header) & set(REFUSED) for c in cases)
    assert any(not set(c.header) & set(REFUSED) and c.header.strip() != c.header for c in cases)


def test_it_records_every_hostile_value_as_storable_text(hostile: Hostile) -> None:
    held = {e.trace_id: e for e in hostile.rows()}
    wrong = []
    for s in hostile.sent:
        event = held.get(s.trace_id)
        if event is None:
            wrong.append(f"{s.door}: no row for {short(s.value)}")
            continue
        for column, want in s.expected.items():
            if (got := getattr(event, column)) != want:
                wrong.append(f"{s.door}: {column} {short(got)}, expected {short(want)}")
    assert not wrong, problems_in(wrong)


def test_it_refuses_header_bytes_http_cannot_carry_and_serves_on(hostile: Hostile) -> None:
    assert hostile.refused, "the examples hold no header value uvicorn refuses"
    assert hostile.server.proc is not None and hostile.server.proc.poll() is None
    assert httpx.get(hostile.server.url + "/v1/models",
                     headers={"authorization": "Bearer sk-test-hostile-0000"}).status_code == 200
    assert "Exception in ASGI application" not in hostile.server.output()


def csv_cells(name: str, text: str, rows: list[Event], found: list[str]) -> None:
    """A CSV export: one record per row, every text cell the stored value, neutralised."""
    try:
        table = list(csv.DictReader(io.StringIO(text, newline="")))
    except csv.Error as e:
        found.append(f"{name}: does not parse ({e})")
        return
    if split := [r for r in table if None in r or None in r.values()]:
        found.append(f"{name}: {len(split)} records with the wrong number of cells "
                     f"(a value split its row), e.g. {short(str(split[0]))}")
    by_id = {r.get("trace_id"): r for r in table}
    for event in rows:
        if (record := by_id.get(event.trace_id)) is None:
            found.append(f"{name}: no record for {event.trace_id}")
            continue
        for column in TEXT:
            want = spreadsheet_cell(getattr(event, column))
            if record.get(column) != want:
                found.append(f"{name}: {column} {short(record.get(column))}, expected "
                             f"{short(want)}")


def json_values(name: str, text: str, rows: list[Event], found: list[str]) -> None:
    """A JSON export: the exact stored values."""
    try:
        by_id = {item["trace_id"]: item for item in json.loads(text)}
    except ValueError as e:
        found.append(f"{name}: does not parse ({e})")
        return
    for event in rows:
        if (item := by_id.get(event.trace_id)) is None:
            found.append(f"{name}: no item for {event.trace_id}")
            continue
        for column in TEXT:
            if item.get(column) != getattr(event, column):
                found.append(f"{name}: {column} {short(item.get(column))}, expected "
                             f"{short(getattr(event, column))}")


def xlsx_cells(name: str, content: bytes, rows: list[Event], found: list[str]) -> None:
    try:
        sheet = openpyxl.load_workbook(io.BytesIO(content), read_only=True).active
        header, *table = [list(r) for r in sheet.iter_rows()]
    except Exception as e:  # a zip, XML or openpyxl error: the file does not open
        found.append(f"{name}: does not open ({type(e).__name__}: {e})")
        return
    names = [c.value for c in header]
    by_id = {r[names.index("trace_id")].value: dict(zip(names, r, strict=False)) for r in table}
    for event in rows:
        if (record := by_id.get(event.trace_id)) is None:
            found.append(f"{name}: no row for {event.trace_id}")
            continue
        for column in TEXT:
            cell, value = record[column], getattr(event, column)
            if cell.data_type == "f":
                found.append(f"{name}: {column} {short(value)} is a live formula")
            # What XLSX cannot hold is written as its OOXML escape (_x001B_), which Excel
            # shows as the character and openpyxl leaves for unescape() (tokenpak_site/text.py).
            elif unescape(cell.value or "") != spreadsheet_cell(value):
                found.append(f"{name}: {column} {short(cell.value)}, expected "
                             f"{short(spreadsheet_cell(value))}")


def plain_cell(value: Any) -> str:
    """A dashboard JSON value as its section CSV writes it (telemetry/views.py)."""
    if isinstance(value, list):
        return " ".join(plain_cell(v) for v in value)
    text = "" if value is None else str(value)
    return spreadsheet_cell(text) if isinstance(value, str) else text


def section_csvs(browser: httpx.Client, found: list[str]) -> None:
    """Every dashboard section's CSV: the rows its JSON holds, one record each."""
    for view in VIEWS:
        if view == "sessions":  # its download is the request list, checked as an export
            continue
        for section, data in page_json(browser, view)["sections"].items():
            name = f"dashboard {view or 'overview'} {section} CSV"
            r = browser.get(f"/dashboard/{view}", params={"format": "csv", "section": section})
            try:
                header, *table = list(csv.reader(io.StringIO(r.text, newline="")))
            except (csv.Error, ValueError) as e:
                found.append(f"{name}: does not parse ({e})")
                continue
            if len(table) != len(data["rows"]):
                found.append(f"{name}: {len(table)} records for {len(data['rows'])} rows")
                continue
            for record, row in zip(table, data["rows"], strict=True):
                want = [plain_cell(row.get(key)) for key in header]
                if record != want:
                    found.append(f"{name}: {short(record)}, expected {short(want)}")


def admin_export(admin: httpx.Client, fmt: str) -> bytes:
    index = {"csv": "0", "json": "1", "xlsx": "2"}[fmt]
    token = csrf(admin.get(f"{ADMIN}export/"))
    r = admin.post(f"{ADMIN}export/", data={"csrfmiddlewaretoken": token, "format": index},
                   headers={"referer": str(admin.base_url) + ADMIN})
    if r.status_code != 200:
        raise AssertionError(f"admin {fmt} export answered {r.status_code}")
    return r.content


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_it_exports_every_value_back_with_formula_cells_neutralised(hostile: Hostile) -> None:
    rows = hostile.rows()
    assert rows, "no hostile row landed to export"
    api, found = hostile.api, []
    assert api is not None and hostile.browser is not None and hostile.admin is not None
    csvs: dict[str, Callable[[], str]] = {
        "REST export csv": lambda: api.get("/export", params={"format": "csv"}).text,
        "export --format csv": lambda: run("export", "--format", "csv", "--out", "-"),
        "cost --export csv": lambda: run("cost", "--export", "csv"),
        "dashboard sessions CSV": lambda: hostile.browser.get(
            "/dashboard/sessions", params={"format": "csv"}).text,
        "admin CSV export": lambda: admin_export(hostile.admin, "csv").decode("utf-8-sig"),
    }
    jsons: dict[str, Callable[[], str]] = {
        "REST export json": lambda: api.get("/export", params={"format": "json"}).text,
        "export --format json": lambda: run("export", "--format", "json", "--out", "-"),
        "cost --export json": lambda: run("cost", "--export", "json"),
        "admin JSON export": lambda: admin_export(hostile.admin, "json").decode(),
    }
    for checks, each in ((csvs, csv_cells), (jsons, json_values)):
        for name, read in checks.items():
            try:
                each(name, read(), rows, found)
            except Exception as e:  # an export that fails is one finding, not the end
                found.append(f"{name}: {type(e).__name__}: {e}")
    try:
        xlsx_cells("admin XLSX export", admin_export(hostile.admin, "xlsx"), rows, found)
    except AssertionError as e:
        found.append(str(e))
    section_csvs(hostile.browser, found)
    assert not found, problems_in(found)


def html_readings(value: str) -> set[str]:
    """How a page may show a value: escaped, escaped after `shown`, or as the admin shows
    read-only text (escaped, line breaks as <br>)."""
    return {escape(value), escape(shown(value)), linebreaksbr(value, autoescape=True)}


def shows(page: str, value: str) -> bool:
    return any(reading in page for reading in html_readings(value))


def traced(event: Event) -> list[str]:
    """The values a trace shows: model, agent, session, error type; the requested model
    where it differs."""
    columns = ["model", "agent_id", "session_id", "error_class"]
    if event.requested_model != event.model:
        columns.append("requested_model")
    return [getattr(event, c) for c in columns if getattr(event, c)]


def test_it_renders_every_page_with_each_value_escaped(hostile: Hostile) -> None:
    rows = hostile.rows()
    assert rows, "no hostile row landed to show"
    browser, admin, api, found = hostile.browser, hostile.admin, hostile.api, []
    assert browser is not None and admin is not None and api is not None
    pages = {f"dashboard /{view}": f"/dashboard/{view}" for view in VIEWS}
    pages["admin change list"] = ADMIN
    for name, path in pages.items():
        r = (admin if name.startswith("admin") else browser).get(path)
        if r.status_code != 200:
            found.append(f"{name}: {r.status_code}")
        elif MARKUP in r.text:
            found.append(f"{name}: markup from a value unescaped")
    for event in rows:
        for name, client, path, values in (
            ("trace page", browser, f"/dashboard/sessions/{event.trace_id}/", traced(event)),
            ("admin change list", admin, ADMIN + f"?q={event.trace_id}",
             [v for v in (event.model, event.agent_id) if v]),
            ("admin change page", admin, f"{ADMIN}{event.trace_id}/change/",
             [getattr(event, c) for c in TEXT if getattr(event, c)]),
        ):
            r = client.get(path)
            if r.status_code != 200:
                found.append(f"{name}: {r.status_code} ({event.trace_id})")
                continue
            found += [f"{name}: {short(v)} not shown escaped ({event.trace_id})"
                      for v in values if not shows(r.text, v)]
    try:
        items = {i["trace_id"]: i for i in walk(api, 500)}
        get(api, "/summary")
        get(api, "/summary", period="month")
    except AssertionError as e:
        found.append(f"REST API: {e}")
    else:
        for event in rows:
            item = items.get(event.trace_id, {})
            found += [f"REST /sessions: {c} {short(item.get(c))}, expected "
                      f"{short(getattr(event, c))}"
                      for c in TEXT if c in item and item[c] != getattr(event, c)]
    assert not found, problems_in(found)


# The request line's start; its model, shown, must be followed by the rest of the same line.
REQUEST_LINE = re.compile(r"^\S+ \S+ INFO tokenpak\.requests (?P<trace>[0-9a-f]{32}) (?P<rest>.*)")


def test_it_prints_every_value_escaped_in_terminals_and_the_log(hostile: Hostile) -> None:
    rows = hostile.rows()
    assert rows, "no hostile row landed to print"
    found = []
    outputs = [(" ".join(args), run(*args)) for args in (
        ("cost", "--by-model"), ("cost", "--by-agent"), ("status",), ("status", "--full"))]
    for event in rows:
        text = run("trace", "--id", event.trace_id)
        outputs.append((f"trace --id ({event.trace_id})", text))
        found += [f"trace --id: {short(v)} not shown as {short(shown(v))} ({event.trace_id})"
                  for v in traced(event) if shown(v) not in text]
    log = (hostile.server.home / "tokenpak.log").read_text(errors="replace")
    outputs.append(("tokenpak.log", log))
    for name, text in outputs:
        if (char := raw_control(text)) is not None:
            command, _, which = name.partition(" (")
            found.append(f"{command}: a raw {char!r} {which and '(' + which}")
    lines = {m["trace"]: m["rest"] for m in map(REQUEST_LINE.match, log.splitlines()) if m}
    for event in rows:
        model = f" model={shown(event.model) or '-'} status="
        if (line := lines.get(event.trace_id)) is None:
            found.append(f"tokenpak.log: no request line for {event.trace_id}")
        elif model not in line:
            found.append(f"tokenpak.log: {short(line)} lacks {short(model)} on the same line "
                         f"({event.trace_id})")
    assert not found, problems_in(found)
