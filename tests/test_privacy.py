"""Keys never reach the database or the logs; nothing is written outside TOKENPAK_HOME."""

from __future__ import annotations

import logging
from pathlib import Path

import anthropic
import openai
import pytest
from django.db import connection

from telemetry.models import Capture, Cost, Event, RecipeHit, Segment, Usage
from tokenpak_site.logs import RedactingFilter, redact

OPENAI_KEY = "sk-proj-PLANTEDKEYopenai0123456789"
ANTHROPIC_KEY = "sk-ant-api03-PLANTEDKEYanthropic0123456789"
PLANTED = ("PLANTEDKEY",)


def _traffic(server) -> None:
    o = openai.OpenAI(base_url=server.url + "/v1", api_key=OPENAI_KEY, max_retries=0)
    o.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    list(o.chat.completions.create(model="gpt-4o-mini", messages=[], stream=True))
    a = anthropic.Anthropic(base_url=server.url, api_key=ANTHROPIC_KEY, max_retries=0)
    a.messages.create(model="claude-haiku-4-5", max_tokens=5, messages=[])
    old_style = anthropic.Anthropic(
        base_url=server.url, api_key="unused", max_retries=0,
        default_headers={"x-api-key": ANTHROPIC_KEY},
    )
    old_style.messages.count_tokens(model="claude-haiku-4-5", messages=[])
    with pytest.raises(openai.AuthenticationError):
        o.chat.completions.create(model="gpt-4o-mini", messages=[],
                                  extra_headers={"x-fake-scenario": "status=401"})


def database_text() -> str:
    """Every ledger and capture row as text, and on SQLite the file itself (and its WAL)."""
    parts = []
    for model in (Event, Usage, Cost, Segment, RecipeHit, Capture):
        parts += [repr(row) for row in model.objects.values_list()]
    if connection.vendor == "sqlite":
        db = Path(connection.settings_dict["NAME"])
        for path in (db, db.with_name(db.name + "-wal")):
            if path.exists():
                parts.append(path.read_bytes().decode("latin-1"))
    return "\n".join(parts)


def test_it_keeps_keys_out_of_the_ledger_and_debug_logs(start_server, fake, rows, tmp_path):
    home = tmp_path / "home"
    server = start_server(home=home, TOKENPAK_DEBUG="1", TOKENPAK_STORE_PROMPTS="1")
    _traffic(server)
    events = rows(5)
    server.stop()
    server_stop_output = server.output()

    log_text = (home / "tokenpak.log").read_text()
    # The request logger really ran, at debug level, with headers.
    for event in events:
        assert event.trace_id in log_text
    assert "headers=" in log_text and "'authorization': '***'" in log_text
    assert "'x-api-key': '***'" in log_text
    # The provider did receive the keys: TokenPak forwarded them, it just never kept them.
    assert any(OPENAI_KEY in r.headers.get("authorization", "") for r in fake.log)

    for text in (log_text, server_stop_output, database_text()):
        assert not any(p in text for p in PLANTED)


def test_it_masks_credentials_in_query_strings_and_any_header_in_debug_logs(start_server, fake,
                                                                          rows, tmp_path):
    import httpx

    home = tmp_path / "home"
    server = start_server(home=home, TOKENPAK_DEBUG="1")
    query = "?key=AIzaPLANTEDKEYgemini&access_token=PLANTEDKEYtoken&beta=true"
    response = httpx.post(server.url + "/v1/chat/completions" + query,
                          json={"model": "gpt-4o-mini", "messages": []},
                          headers={"authorization": f"Bearer {OPENAI_KEY}",
                                   "x-auth-token": "PLANTEDKEYxauth"})
    assert response.status_code == 200
    rows(1)
    server.stop()
    log_text = (home / "tokenpak.log").read_text()
    # The forwarded URL and headers, in TokenPak's debug line.
    assert "/v1/chat/completions?key=***&access_token=***&beta=true headers=" in log_text
    assert "'x-auth-token': '***'" in log_text
    assert fake.log[0].path.endswith(query)  # the provider still gets them
    assert fake.log[0].headers["x-auth-token"] == "PLANTEDKEYxauth"
    assert not any(p in log_text + server.output() for p in PLANTED)


def test_it_logs_request_lines_to_stdout_when_asked(start_server, fake, rows, tmp_path):
    home = tmp_path / "home"
    server = start_server(home=home, TOKENPAK_LOG_DESTINATION="stdout")
    _traffic(server)
    events = rows(5)
    server.stop()
    output = server.output()
    assert all(e.trace_id in output for e in events)
    assert not any(p in output for p in PLANTED)
    assert (home / "tokenpak.log").exists() is False


def test_it_writes_no_log_when_logging_is_off(start_server, fake, rows, tmp_path):
    home = tmp_path / "home"
    server = start_server(home=home, TOKENPAK_LOG_ENABLED="0", TOKENPAK_DEBUG="1")
    _traffic(server)
    events = rows(5)
    server.stop()
    assert not (home / "tokenpak.log").exists()
    assert not any(e.trace_id in server.output() for e in events)


def test_it_runs_without_telemetry_when_the_db_is_dev_null(start_server, fake, tmp_path):
    home = tmp_path / "home"
    server = start_server(home=home, TOKENPAK_DB="/dev/null", DATABASE_URL="")
    reply = openai.OpenAI(base_url=server.url + "/v1", api_key=OPENAI_KEY, max_retries=0
                          ).chat.completions.create(model="gpt-4o-mini", messages=[])
    assert reply.choices[0].message.content
    server.stop()
    assert Event.objects.count() == 0
    assert not home.exists()  # no disk writes: not even the folder
    assert "telemetry is off" in server.output()


def test_it_redacts_keys_in_any_log_record():
    record = logging.LogRecord(
        "x", logging.ERROR, __file__, 1,
        "sent %s with headers {'x-api-key': 'abc123secret'} Authorization: Bearer tok_123",
        (OPENAI_KEY,), None,
    )
    assert RedactingFilter().filter(record)
    message = record.getMessage()
    assert "PLANTEDKEY" not in message and "abc123secret" not in message
    assert "tok_123" not in message
    assert redact(f"key={ANTHROPIC_KEY}") == "key=sk-***"


def test_it_keeps_keys_out_of_every_page_download_and_trace(start_server, fake, rows, tmp_path):
    """Captures and stored bodies on: still no key in what the dashboard, the REST API, the
    admin or the report commands hand out."""
    import io
    import json

    import httpx
    from django.core.management import call_command
    from django.test import override_settings

    home = tmp_path / "home"
    server = start_server(home=home, TOKENPAK_DEBUG="1", TOKENPAK_STORE_PROMPTS="1")
    call_command("debug", "on", "--requests", "10", stdout=io.StringIO())
    _traffic(server)
    events = rows(5)
    captured = set(Capture.objects.values_list("trace_id", flat=True))
    assert len(captured) >= 4  # the captures really were taken
    out = io.StringIO()
    with override_settings(TOKENPAK_HOME=home):
        call_command("token", stdout=out)
    auth = {"authorization": f"Bearer {out.getvalue().strip()}"}
    texts = []
    with httpx.Client(base_url=server.url, headers=auth) as client:
        paths = ["/dashboard/", "/dashboard/sessions", "/dashboard/sessions?format=json",
                 "/dashboard/sessions?format=csv", "/dashboard/finops?format=json",
                 "/v1/telemetry/sessions?since=2000-01-01",
                 "/v1/telemetry/export?format=json&since=2000-01-01",
                 "/v1/telemetry/export?format=csv&since=2000-01-01"]
        for e in events:
            paths += [f"/dashboard/sessions/{e.trace_id}/",
                      f"/dashboard/sessions/{e.trace_id}/?format=json",
                      f"/v1/telemetry/traces/{e.trace_id}"]
        for path in paths:
            r = client.get(path)
            assert r.status_code == 200, path
            texts.append(r.text)
    # The bodies are there (store_prompts, captures): only the keys are not.
    assert any("original_body" in t and "messages" in t for t in texts)
    for e in events:
        out = io.StringIO()
        call_command("trace", "--id", e.trace_id, "--json", stdout=out)
        texts.append(out.getvalue())
        assert (json.loads(out.getvalue())["capture"] is not None) == (e.trace_id in captured)
    for args in (["export", "--format", "json", "--out", "-", "--since", "2000-01-01"],
                 ["replay", "list"]):
        out = io.StringIO()
        call_command(*args, stdout=out)
        texts.append(out.getvalue())
    for text in texts:
        assert not any(p in text for p in PLANTED)
