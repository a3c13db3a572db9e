"""`debug on --requests N` / `debug off`: the next N requests captured whole, by whichever
server process the ledger writer runs in; keys never."""

from __future__ import annotations

import io
import json
import threading
import uuid
from decimal import Decimal

import anthropic
import httpx
import openai
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from budgets.models import Budget
from telemetry.models import Capture, DebugSwitch, Event, RecipeHit
from tests.fakeprovider import DEFAULT_TEXT, TOOL_NAME
from tests.test_privacy import database_text
from tests.test_prune import age

OPENAI_KEY = "sk-proj-DEBUGKEYopenai0123456789"
ANTHROPIC_KEY = "sk-ant-api03-DEBUGKEYanthropic0123456789"
PLANTED = "DEBUGKEY"

LOG = "\n".join(["2026-01-01 12:00:00 ERROR upstream connection refused, retrying"] * 8)
DOC = ("TokenPak keeps one ledger row per request and never stores an API key. " * 6).strip()
# What the default profile (safe) changes: eight identical log lines folded to one and a count,
# trailing spaces, a run of blank lines, and a ≥300-character text an earlier message carried,
# which becomes a reference to it.
CONVERSATION = [
    {"role": "user", "content": f"Here is the build log:\n{LOG}\n\n\n\nWhat failed?   "},
    {"role": "assistant", "content": "The upstream refused the connection."},
    {"role": "user", "content": DOC},
    {"role": "assistant", "content": "Noted."},
    {"role": "user", "content": DOC},
]


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("debug", *args, stdout=out)
    return out.getvalue()


def oai(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=OPENAI_KEY, max_retries=0)


def claude(server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key=ANTHROPIC_KEY, max_retries=0)


def chat(server, stream: bool = False, model: str = "gpt-4o-mini",
         messages: list[dict] = CONVERSATION, **headers: str) -> str:
    """One compressible conversation through the proxy; returns its trace id."""
    raw = oai(server).chat.completions.with_raw_response.create(
        model=model, messages=messages, stream=stream, extra_headers=headers)
    if stream:
        list(raw.parse())  # read to the end: the row is written when the stream is
    return raw.headers["x-tokenpak-trace-id"]


def test_it_captures_the_next_n_requests_whole_and_no_more(server, fake, rows):
    assert run("on", "--requests", "2") == (
        "debug: on, capturing the next 2 requests whole; see them with `trace --last`, send "
        "one again with `replay ID` (bodies stay in the ledger until pruned)\n")
    # Compression is memoised per conversation prefix: a new one runs every stage.
    new = [{"role": "system", "content": f"Session {uuid.uuid4()}"}, *CONVERSATION]
    ids = [chat(server, messages=new), chat(server, stream=True), chat(server)]
    events = rows(3)
    assert [e.trace_id for e in events] == ids
    assert set(Capture.objects.values_list("trace_id", flat=True)) == set(ids[:2])
    assert DebugSwitch.objects.get().remaining == 0
    assert run("status") == "debug: off; 2 captures in the ledger (replay list)\n"

    for i, trace_id in enumerate(ids[:2]):
        c = Capture.objects.get(trace_id=trace_id)
        # The original as the SDK sent it; the sent body byte for byte what the provider got.
        assert json.loads(c.original_body)["messages"] == [new, CONVERSATION][i]
        assert c.sent_body.encode() == fake.log[i].body
        assert c.sent_body != c.original_body
        sent = json.loads(c.sent_body)["messages"][-5:]
        assert sent[4]["content"].startswith("[TokenPak: identical to the text in message")
        assert sent[0]["content"] == (
            "Here is the build log:\n" + LOG.split("\n")[0]
            + "\n[previous line repeated 7 more times]\n\nWhat failed?")
        assert (c.method, c.path, c.profile) == ("POST", "/v1/chat/completions", "safe")
        assert c.recipes == {"trailing-whitespace": 1, "blank-lines": 1, "repeat-output": 1,
                             "repeated-log-lines": 1}
        assert c.recipes == {h.recipe: h.hits for h in RecipeHit.objects.filter(trace_id=trace_id)}
        assert all(ms >= 0 for _, ms in c.stages)
        assert c.route_note == "sent as requested"
        assert c.response_text == DEFAULT_TEXT  # whole JSON answer and streamed deltas alike
        assert dict(c.headers)["content-type"] == "application/json"
        assert dict(c.headers)["user-agent"].startswith("OpenAI/Python")
    assert {s for s, _ in Capture.objects.get(trace_id=ids[0]).stages} == {
        "reuse", "dedup", "segmentize", "recipes"}
    # The stream went out asking for usage, as TokenPak sends every OpenAI stream.
    assert json.loads(Capture.objects.get(trace_id=ids[1]).sent_body)["stream_options"] == {
        "include_usage": True}


def test_it_stops_capturing_when_turned_off(server, fake, rows):
    run("on", "--requests", "5")
    assert run("status") == (
        "debug: on, capturing the next 5 requests; 0 captures in the ledger (replay list)\n")
    first = chat(server)
    rows(1)
    assert run("off") == "debug: off (4 requests not captured); 1 capture in the ledger " \
                         "(replay list)\n"
    chat(server)
    rows(2)
    assert list(Capture.objects.values_list("trace_id", flat=True)) == [first]
    assert run("off") == "debug: off; 1 capture in the ledger (replay list)\n"


def test_it_captures_only_requests_with_a_body_worth_replaying(server, fake, rows):
    run("on", "--requests", "2")
    oai(server).models.list()
    claude(server).messages.count_tokens(model="claude-haiku-4-5", messages=CONVERSATION)
    answer = claude(server).messages.create(
        model="claude-haiku-4-5", max_tokens=50, messages=CONVERSATION, stream=True,
        extra_headers={"x-fake-scenario": "tool_call"})
    list(answer)
    events = rows(3)
    [c] = Capture.objects.all()
    assert c.trace_id == events[2].trace_id and events[2].event_type == "messages"
    assert c.response_text == (
        f'{DEFAULT_TEXT}\n[tool call {TOOL_NAME}] {{"city": "Paris"}}'.replace('": "', '":"'))
    assert "anthropic-version" in dict(c.headers)
    assert DebugSwitch.objects.get().remaining == 1


def test_it_captures_responses_api_answers_and_provider_errors(server, fake, rows):
    run("on", "--requests", "3")
    client = oai(server)
    client.responses.create(model="gpt-4o-mini", input="Say hello",
                            extra_headers={"x-fake-text": "Whole answer."})
    list(client.responses.create(model="gpt-4o-mini", input="Say hello", stream=True,
                                 extra_headers={"x-fake-text": "Streamed answer."}))
    with pytest.raises(openai.BadRequestError):
        chat(server, **{"x-fake-scenario": "status=400"})
    events = rows(3)
    texts = [Capture.objects.get(trace_id=e.trace_id).response_text for e in events]
    assert texts[:2] == ["Whole answer.", "Streamed answer."]
    assert texts[2].startswith("error: ")
    # Not a conversation TokenPak compresses: no profile, the body went as it came.
    c = Capture.objects.get(trace_id=events[0].trace_id)
    assert (c.profile, c.stages, c.recipes, c.sent_body) == ("", [], {}, c.original_body)


def test_it_never_stores_a_key(server, fake, rows):
    run("on", "--requests", "10")
    chat(server, **{"x-custom-token": f"t-{PLANTED}", "x-note": f"Bearer {PLANTED}"})
    claude(server).messages.create(model="claude-haiku-4-5", max_tokens=5, messages=CONVERSATION)
    r = httpx.post(f"{server.url}/v1/chat/completions?api_key=k-{PLANTED}&trace=1",
                   headers={"api-key": f"k-{PLANTED}", "cookie": f"s={PLANTED}",
                            "authorization": f"Bearer {OPENAI_KEY}"},
                   json={"model": "gpt-4o-mini", "messages": CONVERSATION})
    assert r.status_code == 200
    rows(3)
    assert Capture.objects.count() == 3
    # The keys did reach the provider: TokenPak forwarded them and kept none.
    assert PLANTED in fake.log[0].headers["authorization"]
    assert PLANTED in fake.log[1].headers["authorization"]  # this Anthropic SDK's way
    assert PLANTED in fake.log[2].headers["api-key"] and PLANTED in fake.log[2].path
    assert Capture.objects.get(trace_id=r.headers["x-tokenpak-trace-id"]).path == (
        "/v1/chat/completions?trace=1")
    assert PLANTED not in database_text()


def test_it_says_what_a_budget_did(start_server, fake, rows):
    Budget.objects.create(period="monthly", limit_usd=Decimal("0"), on_exceeded="route-cheap")
    Budget.objects.create(agent="capped", period="monthly", limit_usd=Decimal("0"),
                          on_exceeded="block")
    server = start_server()
    run("on", "--requests", "2")
    routed = chat(server, model="gpt-4o")
    with pytest.raises(openai.RateLimitError):
        chat(server, **{"x-tokenpak-agent": "capped"})
    rows(2)
    c = Capture.objects.get(trace_id=routed)
    assert c.route_note == ("routed gpt-4o → gpt-4o-mini: over the monthly budget $0.00, "
                            "$0.00 spent, on exceeded route-cheap")
    assert json.loads(c.sent_body)["model"] == fake.log[0].json["model"] == "gpt-4o-mini"
    blocked = Capture.objects.exclude(trace_id=routed).get()
    assert blocked.route_note == ("blocked: over the monthly (agent capped) budget $0.00, "
                                  "$0.00 spent, on exceeded block")
    assert blocked.sent_body is None and json.loads(blocked.original_body)["model"] == (
        "gpt-4o-mini")
    assert len(fake.log) == 1


def test_it_takes_n_captures_between_all_servers_sharing_the_ledger(
        server, start_server, fake, rows):
    other = start_server()
    run("on", "--requests", "5")

    def burst(url: str) -> None:
        with httpx.Client() as c:
            for _ in range(10):
                c.post(url + "/v1/chat/completions", headers={"authorization": "Bearer sk-x"},
                       json={"model": "gpt-4o-mini", "messages": CONVERSATION})

    threads = [threading.Thread(target=burst, args=(s.url,)) for s in (server, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows(20)
    assert Capture.objects.count() == 5
    assert DebugSwitch.objects.get().remaining == 0


def test_it_prunes_and_purges_captures_with_their_requests(server, fake, rows):
    run("on", "--requests", "3")
    ids = [chat(server) for _ in range(3)]
    rows(3)
    age(ids[:1], 40)
    call_command("prune", "--days", "30", stdout=io.StringIO())
    assert set(Capture.objects.values_list("trace_id", flat=True)) == set(ids[1:])
    call_command("purge", "--telemetry", "--yes", stdout=io.StringIO())
    assert (Event.objects.count(), Capture.objects.count(), RecipeHit.objects.count()) == (
        0, 0, 0)


def test_it_refuses_a_count_below_one(db):
    with pytest.raises(CommandError, match="debug on: --requests must be at least 1, got 0"):
        run("on", "--requests", "0")
    assert not DebugSwitch.objects.exists()


