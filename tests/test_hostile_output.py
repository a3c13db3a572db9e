"""Issue 16, items 5–7: model and agent names chosen by an attacker, sent through the live proxy,
leave through every export and every command's output without becoming a spreadsheet formula,
a split row, a failed export or a terminal control sequence."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator

import httpx
import openpyxl
import pytest
from openpyxl.utils.escape import unescape

from telemetry import exporting
from telemetry.models import Event
from tests.conftest import send
from tests.test_admin import URL as ADMIN
from tests.test_admin import (
    body,
    browser,  # noqa: F401 (the signed-in admin, a fixture)
    read_export,
)
from tests.test_api_telemetry import command
from tests.test_command_debug import run as debug
from tokenpak_site.text import FORMULA_STARTS, shown, spreadsheet_cell

# Model names (the fake provider answers with the model it was asked for, so each is both the
# requested and the answered model) and agent ids a client may send.
MODELS = [
    '=HYPERLINK("http://evil.example/","click")',
    "+cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(1+1)",
    "\tgpt-tab",
    "\rgpt-cr",
    "gpt\rsplit\nrow",
    "\x1b]0;owned\x07\x1b[2Jgpt-esc",
    "gpt\u202eevil\x85\x9b31m",
]
AGENTS = ["=agent", "@agent", "-agent", "+agent"]
TEXT = [name for name, _, kind in exporting.COLUMNS if kind == "text"]
# What a terminal acts on: C0 but the line feed, DEL, C1, bidirectional controls, separators.
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e"
                         "\u2066-\u2069\u2028\u2029]")


@pytest.fixture
def hostile(server, rows) -> list[Event]:
    with httpx.Client(timeout=30) as client:
        for i, model in enumerate(MODELS):
            assert send(server.url, "openai", model, AGENTS[i % len(AGENTS)],
                        client=client) == 200
    events = rows(len(MODELS))
    assert sorted(e.model for e in events) == sorted(MODELS)
    return events


@pytest.fixture
def script(server, token) -> Iterator[httpx.Client]:
    """The dashboard and the telemetry API, with the local token as a bearer."""
    with httpx.Client(base_url=server.url, timeout=30,
                      headers={"authorization": f"Bearer {token}"}) as client:
        yield client


def check_csv(text: str, events: list[Event]) -> None:
    """One row per request, every text cell as spreadsheet_cell writes it."""
    table = list(csv.DictReader(io.StringIO(text)))
    assert len(table) == len(events)
    by_id = {e.trace_id: e for e in events}
    for row in table:
        e = by_id[row["trace_id"]]
        for name in ("model", "requested_model", "sent_model", "agent_id"):
            assert row[name] == spreadsheet_cell(getattr(e, name)), name
        assert not [name for name in TEXT if row[name].startswith(FORMULA_STARTS)]
    assert {row["model"] for row in table} == {spreadsheet_cell(m) for m in MODELS}
    assert "'=HYPERLINK(\"http://evil.example/\",\"click\")" in {row["model"] for row in table}


def check_json(items: list[dict], events: list[Event]) -> None:
    """The exact values, formula or not."""
    by_id = {e.trace_id: e for e in events}
    assert len(items) == len(events)
    for item in items:
        e = by_id[item["trace_id"]]
        assert (item["model"], item["agent_id"]) == (e.model, e.agent_id)


@pytest.mark.parametrize("door", ["export", "cost --export", "api", "admin", "sessions"])
def test_it_neutralises_formulas_in_every_csv_export_and_keeps_json_exact(
        hostile, script, browser, door):  # noqa: F811 (browser: test_admin's signed-in admin)
    def download(fmt: str) -> str:
        if door == "export":
            return command("export", "--format", fmt, "--out", "-")
        if door == "cost --export":
            return command("cost", "--export", fmt)
        if door == "api":
            return script.get("/v1/telemetry/export", params={"format": fmt}).text
        if door == "admin":
            response = browser.post(f"{ADMIN}export/", {"format": {"csv": "0", "json": "1"}[fmt]})
            return body(response).decode()
        return script.get("/dashboard/sessions", params={"format": fmt}).text

    check_csv(download("csv"), hostile)
    check_json(json.loads(download("json")), hostile)


def test_it_neutralises_the_dashboards_csvs_and_keeps_a_cr_inside_its_row(hostile, script):
    for view, section in (("finops", "by_model"), ("finops", "by_agent"), ("", "recent")):
        data = script.get(f"/dashboard/{view}", params={"format": "json"}).json()
        shown_rows = data["sections"][section]["rows"]
        r = script.get(f"/dashboard/{view}", params={"format": "csv", "section": section})
        assert r.status_code == 200, r.text
        table = list(csv.DictReader(io.StringIO(r.text)))
        assert len(table) == len(shown_rows), (view, section)
        key = {"by_model": "model", "by_agent": "agent", "recent": "model"}[section]
        assert [row[key] for row in table] == [spreadsheet_cell(row[key]) for row in shown_rows]
        for row in table:
            assert not any(cell.startswith(FORMULA_STARTS) for cell in row.values())
    models = {row["model"] for row in csv.DictReader(io.StringIO(script.get(
        "/dashboard/finops", params={"format": "csv", "section": "by_model"}).text))}
    assert models == {spreadsheet_cell(m) for m in MODELS}


def test_it_writes_the_admin_xlsx_with_text_cells_that_read_back(hostile, browser):  # noqa: F811
    response = browser.post(f"{ADMIN}export/", {"format": "2"})
    assert response.status_code == 200
    sheet = openpyxl.load_workbook(io.BytesIO(response.content)).active
    assert not [c.coordinate for row in sheet.iter_rows() for c in row if c.data_type == "f"]
    rows = read_export("xlsx", response.content)
    assert len(rows) == len(hostile)
    by_id = {e.trace_id: e for e in hostile}
    for row in rows:
        e = by_id[row["trace_id"]]
        for name in ("model", "requested_model", "sent_model", "agent_id"):
            # Characters XLSX cannot hold are written as OOXML escapes (_x001B_), which Excel
            # shows as the character and openpyxl leaves to unescape().
            assert unescape(row[name]) == spreadsheet_cell(getattr(e, name)), name
    assert {unescape(row["model"]) for row in rows} == {spreadsheet_cell(m) for m in MODELS}


def test_it_prints_hostile_names_escaped_in_every_command(hostile, server, rows):
    debug("on", "--requests", "1")
    send(server.url, "openai", MODELS[-2], "=agent")
    captured = rows(len(MODELS) + 1)[-1]
    outputs = {
        "cost --by-model": command("cost", "--by-model"),
        "cost --by-agent": command("cost", "--by-agent"),
        "trace --last": command("trace", "--last"),
        "replay list": command("replay", "list"),
        "status --full": command("status", "--full"),
        "savings": command("savings"),
        **{f"trace --id {e.model!r}": command("trace", "--id", e.trace_id) for e in hostile},
    }
    for name, text in outputs.items():
        assert not RAW_CONTROL.findall(text), (name, text)
    by_model = outputs["cost --by-model"].splitlines()
    assert len(by_model) == 1 + len(MODELS)  # the totals, then one line a model
    assert {line.split()[0] for line in by_model[1:]} >= {shown(m).split()[0] for m in MODELS}
    assert len({line.index(" $") for line in by_model[1:]}) == 1  # the figures stay aligned
    by_agent = outputs["cost --by-agent"].splitlines()
    assert len(by_agent) == 1 + len(AGENTS)
    trace = outputs["trace --last"]
    assert f"Model:      {shown(captured.model)} via openai" in trace
    assert shown(captured.model) in outputs["replay list"]
    listing = outputs["replay list"].splitlines()
    assert len(listing) == 3  # the header, the captured request, the hint
