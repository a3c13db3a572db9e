"""savings, status, trace and export on rows made by real proxy traffic; the zero-token
principle (no socket but the database's) and agreement of every report to the cent."""

from __future__ import annotations

import csv
import io
import json
import socket
from decimal import Decimal
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from telemetry import exporting, reports
from telemetry.models import Event, Usage


def run(name: str, *args: str) -> str:
    out = io.StringIO()
    call_command(name, *args, stdout=out)
    return out.getvalue()


def give_savings(events, saved: int = 500) -> None:
    """Compression is issue 5; until it runs, mark savings on real rows the way it will."""
    for e in events:
        Event.objects.filter(pk=e.pk).update(tokens_saved=saved, saved_nano_usd=saved * 3000)
        Usage.objects.filter(pk=e.pk).update(tokens_saved=saved)


def test_it_reports_savings_for_the_month_and_lifetime(traffic):
    give_savings(traffic[:2])
    line = run("savings")
    inputs = sum(e.input_tokens for e in traffic)
    pct = reports.pct(100.0 * 1000 / (inputs + 1000))
    assert line == (f"This month: saved 1,000 tokens ({pct} of input) | $0.003 saved | "
                    f"2 of 7 requests compressed\n")
    data = json.loads(run("savings", "--lifetime", "--json"))
    assert (data["period"], data["tokens_saved"], data["cost_saved_usd"]) == (
        "Lifetime", 1000, "0.003000000")
    assert data["compressed_requests"] == 2


def test_it_shows_status_with_database_size_and_retention(traffic, settings):
    text = run("status")
    assert "Telemetry:  on" in text
    assert "Requests:   7 (today 7)" in text
    assert f"Retention:  {settings.RETENTION_DAYS} days" in text
    assert reports.size(reports.ledger_size()).split()[1] in text
    full = json.loads(run("status", "--full", "--json"))
    assert full["lifetime"]["requests"] == 7
    assert {r["key"] for r in full["by_provider"]} == {"openai", "anthropic"}
    assert {r["key"]: r["requests"] for r in full["by_status"]} == {"ok": 6, "error": 1}
    assert "By status:" in run("status", "--full")


def test_it_says_telemetry_is_off_when_it_is(db, settings):
    settings.TELEMETRY_ENABLED = False
    assert run("status").startswith("Telemetry:  off")
    assert json.loads(run("status", "--json"))["telemetry"] is False


def test_it_traces_the_last_request_and_one_by_id(traffic):
    last = max(traffic, key=lambda e: e.ts)
    text = run("trace", "--last")
    assert text.startswith(f"Trace:      {last.trace_id}")
    first = traffic[1]  # gpt-4o-mini, stream, cached
    data = json.loads(run("trace", "--id", first.trace_id, "--json"))
    assert (data["model"], data["stream"], data["cache_read_tokens"]) == ("gpt-4o-mini", True,
                                                                          2000)
    assert Decimal(data["cost_usd"]) == first.cost.cost_usd
    text = run("trace", "--id", first.trace_id)
    for label in ("Model:", "Time:", "Status:", "Duration:", "Pipeline:", "Tokens:", "Cost:"):
        assert label in text
    assert "raw 3,000 → compressed 3,000" in text
    assert "Pipeline:   forward → ledger" in text  # nothing to compress in the test traffic
    assert "catalog price of gpt-4o-mini" in text
    assert data["capture"] is None and "Captured:" not in text  # no `debug on`, no capture


def test_it_traces_what_debug_captured_after_the_ledger_figures(server, fake, rows):
    from tests.test_command_debug import CONVERSATION, chat

    run("debug", "on", "--requests", "1")
    trace_id = chat(server, **{"x-fake-text": "The upstream refused it."})
    [event] = rows(1)
    text = run("trace", "--last")
    c = json.loads(run("trace", "--id", trace_id, "--json"))["capture"]
    assert (c["method"], c["path"], c["route"], c["profile"]) == (
        "POST", "/v1/chat/completions", "sent as requested", "safe")
    assert json.loads(c["original_body"])["messages"] == CONVERSATION
    assert c["sent_body"].encode() == fake.log[0].body
    assert c["recipes"] == {"blank-lines": 1, "repeat-output": 1, "repeated-log-lines": 1,
                            "trailing-whitespace": 1}
    assert {s["stage"] for s in c["stages"]} <= {"reuse", "dedup", "segmentize", "recipes"}
    assert c["response_text"] == "The upstream refused it."
    pipeline = next(line for line in text.splitlines() if line.startswith("Pipeline:"))
    segments = json.loads(run("trace", "--id", trace_id, "--json"))["segments"]
    assert pipeline == "Pipeline:   compress (" + ", ".join(
        f"{k} {v['raw']:,}→{v['after']:,}" for k, v in sorted(segments.items())
    ) + ") → forward → ledger"
    assert sum(v["raw"] - v["after"] for v in segments.values()) == event.tokens_saved > 0
    assert ["authorization"] not in [h[:1] for h in c["headers"]]

    lines = text.splitlines()
    assert lines[0] == f"Trace:      {trace_id} (provider request {event.request_id})"
    at = lines.index("Captured:   POST /v1/chat/completions (debug capture; replay it with "
                     "`replay ID`)")
    assert [line[:12] for line in lines[:at]] == [
        "Trace:      ", "Model:      ", "Time:       ", "Status:     ", "Duration:   ",
        "Pipeline:   ", "Tokens:     ", "Cache:      ", "Cost:       "]
    original, sent = len(c["original_body"].encode()), len(c["sent_body"].encode())
    assert lines[at + 1:] == [
        "Route:      sent as requested",
        "Profile:    safe: " + " → ".join(f"{s['stage']} {s['ms']:.2f} ms" for s in c["stages"]),
        "Recipes:    blank-lines ×1, repeat-output ×1, repeated-log-lines ×1, "
        "trailing-whitespace ×1",
        "Headers:    " + ", ".join(h[0] for h in c["headers"]) + " (credentials are never kept)",
        f"Original:   {original:,} bytes as the client sent them",
        c["original_body"],
        f"Sent:       {sent:,} bytes upstream ({100 * (sent - original) / original:+.1f}%)",
        c["sent_body"],
        "Answer:     The upstream refused it.",
    ]


def test_it_refuses_an_unknown_trace_and_an_empty_ledger(db):
    with pytest.raises(CommandError, match="the ledger is empty"):
        run("trace", "--last")
    with pytest.raises(CommandError, match="no request with trace id 'nope'"):
        run("trace", "--id", "nope")


def test_it_exports_csv_and_json_files_with_filters(traffic, tmp_path):
    out = tmp_path / "all.csv"
    assert run("export", "--format", "csv", "--out", str(out)) == (
        f"export: 7 requests (all time) to {out}\n")
    rows = list(csv.DictReader(out.open()))
    assert [r["trace_id"] for r in rows] == [e.trace_id for e in sorted(traffic,
                                                                         key=lambda e: e.ts)]
    assert sum(Decimal(r["cost_usd"]) for r in rows) == reports.totals(reports.events()).cost_usd
    cached = next(r for r in rows if r["cache_read_tokens"] == "2000")
    assert (cached["model"], cached["stream"], cached["pricing_source"]) == (
        "gpt-4o-mini", "true", "catalog")

    out = tmp_path / "coder.json"
    run("export", "--format", "json", "--out", str(out), "--agent", "coder", "--today")
    items = json.loads(out.read_text())
    assert len(items) == 4 and all(i["agent_id"] == "coder" for i in items)
    assert all(isinstance(i["stream"], bool) for i in items)
    assert not list(tmp_path.glob("*.partial"))


def test_it_exports_an_empty_file_when_no_row_can_match(traffic):
    # A bound past a column's range: Django knows nothing matches without asking the database,
    # and the export's query raised EmptyResultSet instead (the REST API's fuzzing found it).
    qs = Event.objects.filter(cost_nano_usd__gte=2**63)
    assert "".join(exporting.stream(qs, "csv")) == ",".join(exporting.NAMES) + "\n"
    assert json.loads("".join(exporting.stream(qs, "json"))) == []
    assert exporting.write(qs, "csv", io.StringIO()) == 0


def test_it_refuses_an_export_to_a_missing_folder(db, tmp_path):
    with pytest.raises(CommandError, match="does not exist"):
        run("export", "--format", "csv", "--out", str(tmp_path / "nowhere" / "x.csv"))


def test_every_report_agrees_to_the_cent_and_opens_no_socket(traffic, tmp_path, monkeypatch):
    """The zero-token principle: reports read the ledger and nothing else."""
    db = connection.settings_dict
    allowed = {(db.get("HOST") or "", int(db.get("PORT") or 5432))}

    def guard(self: socket.socket, address: object) -> None:
        if address not in allowed:
            raise AssertionError(f"network access attempted: {address}")
        return real_connect(self, address)

    real_connect = socket.socket.connect
    monkeypatch.setattr(socket.socket, "connect", guard)
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: (_ for _ in ()).throw(
        AssertionError("DNS lookup attempted")))

    exact = sum((e.cost.cost_usd for e in traffic), Decimal("0"))
    cost = Decimal(json.loads(run("cost", "--month", "--json"))["totals"]["cost_usd"])
    status = Decimal(json.loads(run("status", "--json"))["lifetime"]["cost_usd"])
    savings = json.loads(run("savings", "--json"))
    out = tmp_path / "x.csv"
    run("export", "--format", "csv", "--out", str(out))
    exported = sum(Decimal(r["cost_usd"]) for r in csv.DictReader(out.open()))
    run("trace", "--last")
    run("cost", "--by-day")
    run("status", "--full")
    assert cost == status == exported == exact
    assert savings["requests"] == 7
    assert Path(out).exists()


def test_it_quotes_awkward_values_in_csv_and_json(server, rows, tmp_path):
    from tests.conftest import send

    awkward = 'team "a", night shift'
    send(server.url, "openai", "gpt-4o-mini", agent=awkward)
    rows(1)
    out = tmp_path / "x.csv"
    run("export", "--format", "csv", "--out", str(out))
    [row] = list(csv.DictReader(out.open()))
    assert row["agent_id"] == awkward
    assert row["stream"] == "false" and row["upstream_status"] == "200"
    run("export", "--format", "json", "--out", str(tmp_path / "x.json"))
    [item] = json.loads((tmp_path / "x.json").read_text())
    assert item["agent_id"] == awkward and item["upstream_status"] == 200


@pytest.mark.parametrize("args", [["cost"], ["cost", "--json"], ["savings"], ["trace", "--last"],
                                  ["export", "--format", "csv", "--out", "-"]])
def test_it_says_telemetry_is_off_in_every_report(db, settings, args):
    settings.TELEMETRY_ENABLED = False
    text = run(*args)
    assert "Telemetry is off" in text or text.strip() == '{"telemetry": false}'


@pytest.mark.live
def test_it_says_when_the_ledger_cannot_be_read(tmp_path):
    import os
    import subprocess
    import sys

    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    (home / "monitor.db").write_bytes(b"not a database, " * 400)
    done = subprocess.run(
        [sys.executable, "-m", "tokenpak_site.cli", "status"], capture_output=True, text=True,
        env={**{k: v for k, v in os.environ.items() if k != "TOKENPAK_DB"},
             "DJANGO_SETTINGS_MODULE": "tokenpak_site.settings", "TOKENPAK_HOME": str(home),
             "DATABASE_URL": ""},
        timeout=60)
    assert done.returncode == 1
    assert done.stdout == (f"Telemetry:  on, ledger {home / 'monitor.db'}: UNAVAILABLE "
                           "(file is not a database)\n")
