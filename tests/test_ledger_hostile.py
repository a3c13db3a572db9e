"""The ledger survives any value (issue 16, item 1): NUL bytes, lone surrogates, over-long text
and absurd numbers, from clients, providers and spool files, never stop the rows that follow;
a row the database refuses anyway is set aside with its reason while the rest of its batch
lands."""

from __future__ import annotations

import json
import time
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
from django.db import connection

from tests.conftest import wait_for
from tests.test_ledger import ANTHROPIC, OPENAI
from tests.test_spool import status_text

INT_MAX = 2**31 - 1


def assert_in_step(home: Path) -> None:
    """`status` promises nothing: no FAILING, no rows waiting."""
    report = status_text(home)
    assert "FAILING" not in report and "waiting" not in report, report


def land_a_plain_request(server, rows, n: int) -> None:
    """A later, plain request still lands: the writer goes on."""
    r = httpx.post(server.url + "/v1/chat/completions", headers=OPENAI,
                   json={"model": "gpt-4o-mini", "messages": []})
    assert r.status_code == 200
    assert rows(n)[-1].model == "gpt-4o-mini"


def _openai_sdk(server, model: str) -> None:
    c = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-test-hostile", max_retries=0)
    c.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])


def _anthropic_sdk_stream(server, model: str) -> None:
    c = anthropic.Anthropic(base_url=server.url, api_key="sk-ant-test-hostile", max_retries=0)
    with c.messages.stream(model=model, max_tokens=10,
                           messages=[{"role": "user", "content": "hi"}]) as stream:
        stream.until_done()


def _json_escaped(server, model: str) -> None:
    # A lone surrogate has no UTF-8: a client sends it escaped, as json.dumps does.
    r = httpx.post(server.url + "/v1/chat/completions", headers=OPENAI | {
        "content-type": "application/json"}, content=json.dumps(
        {"model": model, "messages": []}))
    assert r.status_code == 200


@pytest.mark.parametrize(("send", "model", "stored"), [
    (_openai_sdk, "gpt-4o-mini\x00x", "gpt-4o-mini\ufffdx"),
    (_anthropic_sdk_stream, "claude-haiku-4-5\x00x", "claude-haiku-4-5\ufffdx"),
    (_json_escaped, "gpt-4o-mini\udc80x", "gpt-4o-mini\ufffdx"),
    (_json_escaped, "gpt-4o-mini-" + "x" * 300, "gpt-4o-mini-" + "x" * 116),
], ids=["openai-nul", "anthropic-stream-nul", "surrogate", "over-long"])
def test_it_records_a_request_whose_model_no_database_takes_as_it_is(send, model, stored,
                                                                     server, rows):
    send(server, model)
    [event] = rows(1)
    # The provider echoes the model: both the requested and the reported one are made storable.
    assert (event.requested_model, event.model, event.status) == (stored, stored, "ok")
    assert event.usage.input_tokens == 21 and event.cost.cost_usd > 0
    land_a_plain_request(server, rows, 2)
    assert_in_step(server.home)


CASES = {
    "model-nul": ("/v1/chat/completions", OPENAI, False, {"x-fake-model": '"gpt\\u0000x"'}),
    "model-nul-stream": ("/v1/messages", ANTHROPIC, True,
                         {"x-fake-model": '"claude\\u0000x"'}),
    "error-type-nul": ("/v1/chat/completions", OPENAI, False,
                       {"x-fake-scenario": "status=429",
                        "x-fake-error-type": '"rate\\u0000limit"'}),
    "error-type-surrogate-stream": ("/v1/messages", ANTHROPIC, True,
                                    {"x-fake-scenario": "stream_error",
                                     "x-fake-error-type": '"over\\ud800loaded"'}),
    "absurd-usage": ("/v1/chat/completions", OPENAI, False,
                     {"x-fake-usage": '{"prompt_tokens": 1e30, "completion_tokens": 1e400,'
                                      ' "prompt_tokens_details": {"cached_tokens": 10}}'}),
    "huge-integers-stream": ("/v1/messages", ANTHROPIC, True,
                             {"x-fake-usage": json.dumps({"input_tokens": 10**30,
                                                          "output_tokens": 2**63})}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_it_records_a_provider_answer_holding_values_no_database_takes(case, server, fake,
                                                                       rows):
    path, headers, stream, fake_headers = CASES[case]
    body = {"model": "gpt-4o-mini" if "chat" in path else "claude-haiku-4-5", "messages": [],
            "max_tokens": 5, "stream": stream}
    httpx.post(server.url + path, headers=headers | fake_headers, json=body)
    [event] = rows(1)
    expected = {
        "model-nul": ("model", "gpt\ufffdx"),
        "model-nul-stream": ("model", "claude\ufffdx"),
        "error-type-nul": ("error_class", "rate\ufffdlimit"),
        "error-type-surrogate-stream": ("error_class", "over\ufffdloaded"),
        "absurd-usage": ("input_tokens", INT_MAX),
        "huge-integers-stream": ("input_tokens", INT_MAX),
    }[case]
    assert getattr(event, expected[0]) == expected[1]
    if case == "absurd-usage":  # 1e400 is inf: no count at all
        assert (event.output_tokens, event.usage.cache_read_tokens) == (0, 10)
    if case == "huge-integers-stream":
        assert event.output_tokens == event.usage.output_tokens == INT_MAX
        assert 0 < event.cost_nano_usd <= 2**63 - 1
    land_a_plain_request(server, rows, 2)
    assert_in_step(server.home)


def _rows_line(trace_id: str, **values: object) -> dict:
    """A `w` line as the writer of any version spools it when the database is down."""
    from telemetry.record import Record
    from telemetry.rows import rows_of

    r = Record(trace_id=trace_id, provider="openai", event_type="chat.completions",
                      endpoint="/v1/chat/completions", ts=time.time(), status="ok")
    row = rows_of(r)
    row[0].update(values)
    return {"w": row, "held": False}


def test_it_writes_the_spool_of_a_killed_process_whatever_its_lines_hold(start_server, rows,
                                                                        tmp_path):
    """Files a killed process left, as an old version wrote them (json.dumps: NUL and lone
    surrogates escaped, lengths and counts unchecked): every row goes in at the next start;
    a line no row can be made of and a row no database takes are set aside, with why."""
    home = tmp_path / "home"
    spool_dir = home / "spool"
    spool_dir.mkdir(parents=True)
    now = time.time()
    orphan = _rows_line("d" * 32)  # its usage row names an event no line holds
    orphan["w"][1]["trace_id"] = "f" * 32
    facts = {"provider": "openai", "event_type": "chat.completions",
             "endpoint": "/v1/chat/completions", "ts": now, "status": "ok"}
    lines = [
        {"r": {**facts, "trace_id": "a" * 32, "model": "gpt-4o-mini\x00x",
               "agent_id": "agent\udc80", "session_id": "s" * 500,
               "usage": {"input_tokens": 10**30, "output_tokens": 7}}},
        _rows_line("b" * 32, model="gpt\x00\ud800", event_type="e" * 100,
                   error_class="c" * 300, input_tokens=10**20, upstream_status=10**12),
        {"r": {**facts, "trace_id": "c" * 32, "model": "gpt-4o-mini"}},
        # No cleaning makes these storable: a usage row for an event that is not there, and a
        # line no version wrote.
        orphan,
        {"r": {**facts, "trace_id": "e" * 32, "no_such_fact": 1}},
    ]
    (spool_dir / "4242-1700000000000.000001.jsonl").write_text(
        "".join(json.dumps(line, default=str) + "\n" for line in lines))
    assert "waiting in the spool of a stopped process" in status_text(home)

    server = start_server(home=home)
    events = {e.trace_id: e for e in rows(3)}
    assert set(events) == {"a" * 32, "b" * 32, "c" * 32}
    a, b = events["a" * 32], events["b" * 32]
    assert (a.model, a.agent_id, a.session_id) == ("gpt-4o-mini\ufffdx", "agent\ufffd", "s" * 128)
    assert (a.input_tokens, a.usage.input_tokens, a.output_tokens) == (INT_MAX, INT_MAX, 7)
    assert (b.model, b.event_type, b.error_class) == ("gpt\ufffd\ufffd", "e" * 32, "c" * 64)
    assert (b.input_tokens, b.upstream_status) == (INT_MAX, INT_MAX)
    assert not list(spool_dir.glob("4242-*"))  # the dead process's files are gone

    kept = spool_dir / "rejected.ndjson"
    rejected = [json.loads(line) for line in kept.read_text().splitlines()]
    assert sorted(r.get("w", [{}])[0].get("trace_id") or r["line"]["r"]["trace_id"]
                  for r in rejected) == ["d" * 32, "e" * 32]
    assert all(r["reason"] for r in rejected)
    assert "IntegrityError" in " ".join(r["reason"] for r in rejected)
    assert oct(kept.stat().st_mode & 0o777) == "0o600"
    log = (home / "tokenpak.log").read_text()
    assert log.count("set aside") == 2
    report = status_text(home)
    assert "2 rows set aside" in report and str(kept) in report
    assert "FAILING" not in report and "waiting" not in report
    land_a_plain_request(server, rows, 4)


# The database refuses text outside printable ASCII (as a LATIN1 or SQL_ASCII one refuses what
# its encoding lacks), and one model whatever its spelling.
REFUSED = {"sqlite": "NEW.model GLOB '*[^ -~]*' OR NEW.model = 'refused-by-the-database'",
           "postgresql": "NEW.model ~ '[^ -~]' OR NEW.model = 'refused-by-the-database'"}


@pytest.fixture
def refuse(transactional_db):
    """refuse(condition): a trigger makes the database refuse the tp_events rows it matches
    (NEW.model …); refuse(None) drops it, as the end of the test does."""

    def install(condition: str | None) -> None:
        with connection.cursor() as cursor:
            if connection.vendor == "sqlite":
                cursor.execute("DROP TRIGGER IF EXISTS tp_refuse")
                if condition:
                    cursor.execute(f"""CREATE TRIGGER tp_refuse BEFORE INSERT ON tp_events
                        WHEN {condition} BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END""")
                return
            cursor.execute("DROP TRIGGER IF EXISTS tp_refuse ON tp_events")
            cursor.execute("DROP FUNCTION IF EXISTS tp_refuse()")
            if condition:
                cursor.execute(f"""CREATE FUNCTION tp_refuse() RETURNS trigger AS $$ BEGIN
                    IF {condition} THEN RAISE EXCEPTION 'refused by a trigger'
                    USING ERRCODE = 'check_violation'; END IF; RETURN NEW; END $$
                    LANGUAGE plpgsql""")
                cursor.execute("""CREATE TRIGGER tp_refuse BEFORE INSERT ON tp_events
                    FOR EACH ROW EXECUTE FUNCTION tp_refuse()""")

    yield install
    install(None)


def test_it_sets_aside_a_row_the_database_refuses_and_writes_the_rest_of_its_batch(
        refuse, start_server, rows, tmp_path):
    refuse(REFUSED[connection.vendor])
    home = tmp_path / "home"
    # A window long enough for the five requests to be one batch.
    server = start_server(home=home, TOKENPAK_FLUSH_SECONDS="3")
    models = ["gpt-4o-mini", "gpt-4o-mini-\u00e9t\u00e9", "refused-by-the-database",
              "gpt-4o", "gpt-4o-mini"]
    with httpx.Client(base_url=server.url) as c:
        for model in models:
            r = c.post("/v1/chat/completions", headers=OPENAI,
                       json={"model": model, "messages": []})
            assert r.status_code == 200
    stored = rows(4)
    # The refused non-ASCII model is stored in plain ASCII; the rest as they came.
    assert sorted(e.model for e in stored) == sorted(
        ["gpt-4o-mini", "gpt-4o-mini-?t?", "gpt-4o", "gpt-4o-mini"])
    assert all(e.usage.input_tokens == 21 and e.cost.cost_usd > 0 for e in stored)
    kept = home / "spool" / "rejected.ndjson"
    [rejected] = [json.loads(line) for line in kept.read_text().splitlines()]
    assert rejected["w"][0]["model"] == "refused-by-the-database"
    assert "refused by a trigger" in rejected["reason"]
    log = (home / "tokenpak.log").read_text()
    assert log.count(" ERROR ") == 1 and "set aside" in log and "refused by a trigger" in log
    report = status_text(home)
    assert "1 row set aside" in report and "refused by a trigger" in report
    assert "FAILING" not in report and "waiting" not in report
    land_a_plain_request(server, rows, 5)


def test_it_keeps_rows_waiting_instead_of_setting_them_aside_when_no_row_goes_in(
        refuse, start_server, rows, tmp_path):
    """A database that refuses every row (a trigger here; a table gone, a schema out of date)
    is the database's fault, not the rows': they wait, as in an outage, and go in after."""
    refuse("1 = 1")
    home = tmp_path / "home"
    server = start_server(home=home)
    for model in ("gpt-4o-mini", "gpt-4o"):
        r = httpx.post(server.url + "/v1/chat/completions", headers=OPENAI,
                       json={"model": model, "messages": []})
        assert r.status_code == 200
    wait_for(lambda: "FAILING since" in status_text(home), timeout=30)
    assert "refused by a trigger" in status_text(home)
    refuse(None)
    assert sorted(e.model for e in rows(2, timeout=30)) == ["gpt-4o", "gpt-4o-mini"]
    assert not (home / "spool" / "rejected.ndjson").exists()
    wait_for(lambda: "FAILING" not in status_text(home), timeout=30)


def test_it_settles_budgets_once_for_each_written_part_of_a_split_batch(refuse, start_server,
                                                                        rows, tmp_path):
    """Spend is the ledger's sum: the parts of a split batch settle their own rows once, the
    row stored in plain ASCII counts, the row set aside counts nowhere; no hold outlives its
    request."""
    from budgets import standings
    from budgets.models import Hold, Spend
    from telemetry import reports
    from tests.test_budget_guard import ASK, budget, claude, usage

    budget("100", "warn")
    budget("100", "warn", period="daily", agent="coder")
    refuse(REFUSED[connection.vendor])
    server = start_server(home=tmp_path / "home", TOKENPAK_FLUSH_SECONDS="3")
    for model in ("claude-sonnet-4-6", "claude-sonnet-4-6-\u00e9", "refused-by-the-database",
                  "claude-haiku-4-5", "claude-sonnet-4-6"):
        claude(server).messages.create(
            model=model, max_tokens=100, messages=ASK,
            extra_headers=usage(input_tokens=10, output_tokens=1000) | {
                "x-tokenpak-agent": "coder"})
    events = rows(4)
    assert sorted(e.model for e in events) == sorted(
        ["claude-sonnet-4-6", "claude-sonnet-4-6-?", "claude-haiku-4-5", "claude-sonnet-4-6"])
    total = sum(e.cost_nano_usd for e in events)
    assert total > 0
    month = Spend.objects.get(agent="", period="monthly",
                              period_start=reports.period("month")[0].timestamp())
    today = Spend.objects.get(agent="coder", period="daily",
                              period_start=reports.period("today")[0].timestamp())
    assert month.spent_nano == today.spent_nano == total
    wait_for(lambda: not Hold.objects.exclude(trace_id__startswith=standings.LEASE_PREFIX).exists())
