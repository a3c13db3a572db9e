"""`replay`: a stored request sent again through the whole pipeline, to the fake provider,
with the key from the environment; `replay list` shows what can be."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from telemetry.models import Capture, Event
from tests.fakeprovider import DEFAULT_TEXT
from tests.live import ROOT, database_env
from tests.test_command_debug import CONVERSATION, chat, claude, database_text
from tests.test_command_debug import run as debug

REPLAY_OPENAI_KEY = "sk-proj-REPLAYKEYopenai0123456789"
REPLAY_ANTHROPIC_KEY = "sk-ant-api03-REPLAYKEYanthropic0123456789"


@pytest.fixture
def cli(fake, tmp_path, transactional_db) -> dict[str, str]:
    """`manage.py replay` as a user runs it, in a process of its own (its ledger writer and
    budget threads end with it): pointed at the fake, on the test database, keys in its
    environment."""
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tokenpak_site.settings",
        "TOKENPAK_HOME": str(tmp_path / "cli-home"),
        "TOKENPAK_OPENAI_BASE_URL": fake.url,
        "TOKENPAK_ANTHROPIC_BASE_URL": fake.url,
        "OPENAI_API_KEY": REPLAY_OPENAI_KEY,
        "ANTHROPIC_API_KEY": REPLAY_ANTHROPIC_KEY,
        **database_env(),
    }


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "manage.py", "replay", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def replay(env: dict[str, str], *args: str) -> str:
    done = manage(env, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def refused(env: dict[str, str], *args: str) -> str:
    done = manage(env, *args)
    assert done.returncode == 1, done.stdout
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("CommandError: "), done.stderr
    return last.removeprefix("CommandError: ")


def captured(server, rows, n: int = 1, **headers: str) -> str:
    """One conversation sent through the live server with `debug on`; its trace id."""
    debug("on", "--requests", str(n))
    trace_id = chat(server, **headers)
    rows(1)
    assert Capture.objects.filter(trace_id=trace_id).exists()
    return trace_id


def test_it_replays_a_captured_request_through_the_pipeline(server, fake, rows, cli):
    original = captured(server, rows, n=2)
    out = replay(cli, original)
    # Compressed again on the way, as the first time: the provider gets the same bytes.
    first, again = fake.log
    assert again.body == first.body
    assert again.headers["authorization"] == f"Bearer {REPLAY_OPENAI_KEY}"
    assert again.path == "/v1/chat/completions"
    assert "x-tokenpak-agent" not in again.headers
    new = Event.objects.exclude(trace_id=original).select_related("usage").get()
    assert (new.agent_id, new.model, new.status) == ("replay", "gpt-4o-mini", "ok")
    assert new.tokens_saved > 0
    assert out.splitlines() == [
        f"Trace:      {new.trace_id} (replay of {original}, captured)",
        "Model:      gpt-4o-mini via openai /v1/chat/completions",
        "Profile:    safe",
        "Status:     ok (HTTP 200)",
        f"Tokens:     input 21 (saved {new.tokens_saved:,}) | output 7",
        "Cost:       $0.000007",
        f"Answer:     {DEFAULT_TEXT}",
        f"replay: {original} sent again as {new.trace_id}: 21 tokens in, 7 out, $0.000007 "
        "(original: 21 tokens in, 7 out, $0.000007; input +0 tokens, cost +$0.00)",
    ]
    # debug was still on: the replay was captured too, and its key is nowhere in the ledger.
    assert Capture.objects.filter(trace_id=new.trace_id).exists()
    assert "REPLAYKEY" not in database_text()


def test_it_sends_the_baseline_uncompressed(server, fake, rows, cli):
    original = captured(server, rows)
    replay(cli, original, "--no-compress")
    sent = fake.log[-1].json
    assert sent["messages"] == CONVERSATION
    assert sent == json.loads(Capture.objects.get(trace_id=original).original_body)
    new = Event.objects.exclude(trace_id=original).get()
    assert (new.tokens_saved, new.agent_id) == (0, "replay")


def test_it_compresses_the_replay_as_the_original_was(server, fake, rows, cli):
    original = captured(server, rows, **{"x-tokenpak-compress": "off"})
    assert Capture.objects.get(trace_id=original).profile == "off"
    out = replay(cli, original)
    assert fake.log[-1].json["messages"] == fake.log[0].json["messages"] == CONVERSATION
    assert "Profile:    off\n" in out


def test_it_sends_another_model_and_shows_both_sides(server, fake, rows, cli):
    original = captured(server, rows, **{"x-fake-text": "Answer one."})
    out = replay(cli, original, "--model", "gpt-4o", "--diff")
    assert fake.log[-1].json["model"] == "gpt-4o"
    assert fake.log[-1].json["messages"] == fake.log[0].json["messages"]  # compressed alike
    o = Event.objects.get(trace_id=original)
    r = Event.objects.exclude(trace_id=original).get()
    assert r.model == "gpt-4o" and r.cost_nano_usd > o.cost_nano_usd
    lines = out.splitlines()
    assert lines[:8] == [
        "            original                            replay",
        f"Trace       {original}    {r.trace_id}",
        "Model       gpt-4o-mini                         gpt-4o",
        "Profile     safe                                safe",
        "Status      ok (HTTP 200)                       ok (HTTP 200)",
        f"Tokens in   {f'21 (saved {o.tokens_saved})':<36}21 (saved {r.tokens_saved})",
        "Tokens out  7                                   7",
        "Cost        $0.000007                           $0.000122",
    ]
    # The stored x-fake-text header goes along: the fake answers the same words.
    assert lines[8:12] == ["Answer, original:", "Answer one.", "Answer, replay:", "Answer one."]
    assert lines[-1] == (f"replay: {original} sent again as {r.trace_id}: 21 tokens in, 7 out, "
                         "$0.000122 (original: 21 tokens in, 7 out, $0.000007; input +0 tokens, "
                         "cost +$0.000115)")


def test_it_replays_a_streamed_anthropic_request(server, fake, rows, cli):
    debug("on", "--requests", "1")
    raw = claude(server).messages.with_raw_response.create(
        model="claude-haiku-4-5", max_tokens=50, messages=CONVERSATION, stream=True)
    original = raw.headers["x-tokenpak-trace-id"]
    list(raw.parse())
    rows(1)
    out = replay(cli, original, "--diff")
    again = fake.log[-1]
    assert again.headers["x-api-key"] == REPLAY_ANTHROPIC_KEY
    assert "authorization" not in again.headers  # the original's bearer key was never kept
    assert again.json["stream"] is True and again.body == fake.log[0].body
    r = Event.objects.exclude(trace_id=original).get()
    assert (r.stream, r.status, r.output_tokens) == (True, "ok", 7)
    assert f"Answer, original:\n{DEFAULT_TEXT}\nAnswer, replay:\n{DEFAULT_TEXT}\n" in out


def test_it_replays_a_request_stored_by_store_prompts(start_server, fake, rows, cli):
    server = start_server(TOKENPAK_STORE_PROMPTS="1")
    original = chat(server, stream=True)
    rows(1)
    assert not Capture.objects.exists()
    listed = replay(cli, "list").splitlines()
    assert listed[1].startswith(original) and listed[1].endswith("  stored")
    out = replay(cli, original, "--diff", "--no-compress")
    assert fake.log[-1].json["messages"] == CONVERSATION
    assert fake.log[-1].headers["content-type"] == "application/json"
    assert "Profile     unknown                             off (--no-compress)" in out
    assert f"Answer, original:\n{DEFAULT_TEXT}\nAnswer, replay:\n{DEFAULT_TEXT}\n" in out


def test_it_lists_the_newest_replayable_requests(server, fake, rows, cli):
    assert replay(cli, "list") == (
        "replay: nothing to replay: no request body was kept; capture the next requests with "
        "`python manage.py debug on --requests N`, or keep every request's body with "
        "`telemetry.store_prompts: true` in config.yaml, then send it again\n")
    debug("on", "--requests", "3")
    ids = [chat(server) for _ in range(4)]
    rows(4)
    lines = replay(cli, "list", "--last", "2").splitlines()
    assert lines[0].split() == ["TRACE", "ID", "TIME", "MODEL", "IN", "OUT", "COST", "BODY"]
    assert [line.split()[0] for line in lines[1:3]] == [ids[2], ids[1]]
    assert lines[1].split()[3:] == ["gpt-4o-mini", "21", "7", "$0.000007", "captured"]
    assert lines[3] == ("replay: 2 requests to replay, newest first; send one again with "
                        "`replay TRACE_ID` (--no-compress, --model M, --diff)")
    # 3 captured, the 4th not: the header, 3 rows and the summary.
    assert len(replay(cli, "list").splitlines()) == 5


def test_it_says_how_to_capture_a_request_that_was_not(server, fake, rows, cli):
    trace_id = chat(server)
    rows(1)
    assert refused(cli, trace_id) == (
        f"replay: request {trace_id} was not captured, so there is no body to send again: "
        "TokenPak keeps none unless asked; capture the next requests with `python manage.py "
        "debug on --requests N`, or keep every request's body with `telemetry.store_prompts: "
        "true` in config.yaml, then send it again")
    assert len(fake.log) == 1


def test_it_names_the_key_missing_from_the_environment(server, fake, rows, cli):
    original = captured(server, rows)
    del cli["OPENAI_API_KEY"]
    assert refused(cli, original) == (
        "replay: OPENAI_API_KEY is not set: TokenPak never stores API keys, so a replay sends "
        "yours from the environment (export OPENAI_API_KEY=…)")
    assert len(fake.log) == 1 and Event.objects.count() == 1


def test_it_fails_loudly_when_the_provider_refuses_the_replay(server, fake, rows, cli):
    original = captured(server, rows)
    # The stored headers go along; a scenario header the fake reads makes it refuse this time.
    Capture.objects.filter(trace_id=original).update(
        headers=[["content-type", "application/json"], ["x-fake-scenario", "status=401"]])
    message = refused(cli, original)
    r = Event.objects.exclude(trace_id=original).get()
    assert (r.status, r.upstream_status, r.agent_id) == ("error", 401, "replay")
    assert message.startswith(f"replay: {original} sent again as {r.trace_id}, which ended "
                              "error: error: ")


@pytest.mark.parametrize("args, message", [
    (("nope",), "replay: no request with trace id 'nope' in the ledger (replay list shows the "
                "ones that can be sent again)"),
    (("list", "--diff"), "replay list: --diff goes with one request: replay TRACE_ID --diff"),
    (("list", "--model", "gpt-4o"), "replay list: --model goes with one request: replay "
                                    "TRACE_ID --model"),
    (("list", "--last", "0"), "replay list: --last must be at least 1, got 0"),
    (("abc", "--last", "3"), "replay: --last goes with list: replay list --last N"),
])
def test_it_refuses_what_it_cannot_do(cli, args, message):
    assert refused(cli, *args) == message
