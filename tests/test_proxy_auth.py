"""server.require_token: every proxy request must carry the local token in X-TokenPak-Token.

Through the front door: the official SDKs against a live server with the setting on, the fake
provider behind it. A refused request gets 401 in its provider's shape, reaches no provider and
leaves no row; the dashboard, the admin and the telemetry API keep their own sign-in."""

from __future__ import annotations

import io
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
from django.core.management import call_command
from django.test import RequestFactory, override_settings

from tests.conftest import _server_env, wait_for
from tests.fakeprovider import DEFAULT_TEXT
from tests.live import LiveServer

OPENAI_KEY = "sk-proj-AUTHTEST0123456789abcdef"
ANTHROPIC_KEY = "sk-ant-AUTHTEST0123456789abcdef"
MESSAGES = [{"role": "user", "content": "hi"}]
HEADER = "X-TokenPak-Token"


def make_token(home: Path, *args: str) -> str:
    """What a user runs on the server: `tokenpak token` (or `token --rotate`)."""
    out = io.StringIO()
    with override_settings(TOKENPAK_HOME=home):
        call_command("token", *args, stdout=out)
    return out.getvalue().strip()


@pytest.fixture(scope="module")
def _guarded(django_db_setup, django_db_blocker, fake_provider, tmp_path_factory
             ) -> Iterator[LiveServer]:
    # One server for the module: a server start per test is slow.
    with django_db_blocker.unblock():
        env = _server_env(fake_provider, TOKENPAK_REQUIRE_TOKEN="1")
    server = LiveServer(env, tmp_path_factory.mktemp("guarded") / "home").start()
    yield server
    server.stop()


@pytest.fixture
def guarded(_guarded, transactional_db, fake) -> LiveServer:
    """The server with require_token on: an empty ledger and provider log for each test."""
    return _guarded


def oai(server: LiveServer, token: str | None = None) -> openai.OpenAI:
    headers = {HEADER: token} if token is not None else None
    return openai.OpenAI(base_url=server.url + "/v1", api_key=OPENAI_KEY, max_retries=0,
                         default_headers=headers)


def ant(server: LiveServer, token: str | None = None) -> anthropic.Anthropic:
    headers = {HEADER: token} if token is not None else None
    return anthropic.Anthropic(base_url=server.url, api_key=ANTHROPIC_KEY, max_retries=0,
                               default_headers=headers)


def no_rows(wait: float = 0.5) -> bool:
    from telemetry.models import Event

    time.sleep(wait)  # the writer batches every 50 ms: a row would be there by now
    return Event.objects.count() == 0


def test_it_refuses_sdk_clients_without_the_token_in_their_providers_shape(guarded, fake):
    make_token(guarded.home)
    for token, words in [(None, "requires its local token"), ("not-the-token", "is not")]:
        with pytest.raises(openai.AuthenticationError) as caught:
            oai(guarded, token).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        e = caught.value
        assert e.status_code == 401
        assert e.body["type"] == "authentication_error"  # the SDK's body is {"error": …}'s value
        assert words in e.body["message"] and HEADER in e.body["message"]
        assert e.response.json()["error"]["code"] == "tokenpak_401"

        with pytest.raises(anthropic.AuthenticationError) as caught:
            ant(guarded, token).messages.create(model="claude-sonnet-4-6", max_tokens=10,
                                                messages=MESSAGES)
        e = caught.value
        assert e.status_code == 401
        assert e.body["type"] == "error"
        assert e.body["error"]["type"] == "authentication_error"
        assert words in e.body["error"]["message"] and HEADER in e.body["error"]["message"]
    assert fake.log == []  # nothing reached the provider
    assert no_rows()  # and the ledger holds nothing of it


def test_it_answers_sdk_clients_that_send_the_token(guarded, fake, rows):
    token = make_token(guarded.home)
    reply = oai(guarded, token).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert reply.choices[0].message.content == DEFAULT_TEXT
    with ant(guarded, token).messages.stream(model="claude-sonnet-4-6", max_tokens=10,
                                             messages=MESSAGES) as stream:
        assert "".join(stream.text_stream) == DEFAULT_TEXT
    events = rows(2)
    assert [(e.provider, e.status) for e in events] == [("openai", "ok"), ("anthropic", "ok")]
    assert events[0].usage.input_tokens > 0 and events[1].usage.output_tokens > 0
    # The token is TokenPak's: the provider never sees it, the client's own key it does.
    assert len(fake.log) == 2
    for received in fake.log:
        assert not [h for h in received.headers if h.startswith("x-tokenpak")]
        assert token not in str(received.headers)
    assert fake.log[0].headers["authorization"] == f"Bearer {OPENAI_KEY}"


# Every kind of proxy route: (method, path, body, provider).
ROUTES = [
    ("POST", "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": MESSAGES}, "openai"),
    ("POST", "/v1/chat/completions",
     {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}, "openai"),
    ("POST", "/openai/v1/chat/completions", {"model": "gpt-4o-mini", "messages": MESSAGES},
     "openai"),
    ("POST", "/v1/messages", {"model": "claude-haiku-4-5", "max_tokens": 5, "messages": MESSAGES},
     "anthropic"),
    ("POST", "/anthropic/v1/messages",
     {"model": "claude-haiku-4-5", "max_tokens": 5, "messages": MESSAGES, "stream": True},
     "anthropic"),
    ("POST", "/v1/messages/count_tokens", {"model": "claude-haiku-4-5", "messages": MESSAGES},
     "anthropic"),
    ("POST", "/v1/messages/batches", {"requests": []}, "anthropic"),
    ("POST", "/anthropic/v1/complete", {"model": "claude-2"}, "anthropic"),
    ("POST", "/v1/embeddings", {"model": "text-embedding-3-small", "input": "hi"}, "openai"),
    ("POST", "/v1/responses", {"model": "gpt-4o-mini", "input": "hi"}, "openai"),
    ("POST", "/openai/v1/audio/speech", {"model": "tts-1", "input": "hi"}, "openai"),
    ("GET", "/v1/models", None, "openai"),
    ("GET", "/v1/models/gpt-4o", None, "openai"),
    ("GET", "/anthropic/v1/models", None, "anthropic"),
    ("GET", "/openai/v1/models/gpt-4o-mini", None, "openai"),
]


def test_it_guards_every_proxy_route_but_not_the_signed_in_api(guarded, fake, rows):
    token = make_token(guarded.home)
    keys = {"openai": {"authorization": f"Bearer {OPENAI_KEY}"},
            "anthropic": {"x-api-key": ANTHROPIC_KEY, "anthropic-version": "2023-06-01"}}
    for method, path, body, provider in ROUTES:
        for sent in ({}, {HEADER: "wrong"}, {HEADER: ""}):
            r = httpx.request(method, guarded.url + path, json=body,
                              headers={**keys[provider], **sent})
            assert r.status_code == 401, (path, sent, r.text)
            assert r.headers["content-type"] == "application/json"
            answer = r.json()
            if provider == "openai":
                assert answer["error"]["type"] == "authentication_error", path
                assert HEADER in answer["error"]["message"]
            else:
                assert answer["type"] == "error", path
                assert answer["error"]["type"] == "authentication_error"
                assert HEADER in answer["error"]["message"]
            assert "x-tokenpak-trace-id" not in r.headers  # no row, so no trace
    assert fake.log == []
    assert no_rows()

    # With the token, each goes to the provider as before (what the fake answers it answers).
    for method, path, body, provider in ROUTES:
        r = httpx.request(method, guarded.url + path, json=body,
                          headers={**keys[provider], HEADER: token})
        assert r.status_code != 401, (path, r.text)
        assert "x-tokenpak-trace-id" in r.headers
    rows(len(ROUTES))
    assert len(fake.log) == len(ROUTES)

    # TokenPak's own pages keep their own sign-in: the token header is neither needed nor
    # enough there.
    api = guarded.url + "/v1/telemetry/summary"
    assert httpx.get(api, headers={"authorization": f"Bearer {token}"}).status_code == 200
    assert httpx.get(api).status_code == 401
    assert httpx.get(api, headers={HEADER: token}).status_code == 401
    assert httpx.get(guarded.url + "/dashboard/").status_code == 302
    assert httpx.get(guarded.url + "/dashboard/login/", params={"token": token}).status_code == 302
    assert httpx.get(guarded.url + "/admin/login/").status_code == 200


def test_it_logs_refusals_once_a_minute_and_never_the_token(start_server, fake, tmp_path, caplog):
    home = tmp_path / "home"
    token = make_token(home)
    wrong = "tp-wrong-SECRETLOOKING-0123456789"
    server = start_server(home=home, TOKENPAK_REQUIRE_TOKEN="1")
    for sent in [{}, {HEADER: wrong}, {HEADER: wrong}, {}, {HEADER: token + "x"}]:
        r = httpx.post(server.url + "/v1/chat/completions", headers=sent,
                       json={"model": "gpt-4o-mini", "messages": MESSAGES})
        assert r.status_code == 401
    log = home / "tokenpak.log"
    wait_for(lambda: "refused" in log.read_text())
    time.sleep(0.3)
    lines = [line for line in log.read_text().splitlines() if "refused" in line]
    # One line for the five: a guesser cannot fill the disk with them.
    assert len(lines) == 1, lines
    assert re.search(r"WARNING tokenpak\.requests refused POST /v1/chat/completions from "
                     r"127\.0\.0\.1: no X-TokenPak-Token header \(server\.require_token\)$",
                     lines[0]), lines[0]
    everything = log.read_text() + server.output()
    assert token not in everything and wrong not in everything

    # The next line, a minute on, says how many were held back (the same code, in this process,
    # on a clock the test moves).
    from proxy import auth

    now = [1000.0]
    throttle = auth._Throttle(auth.LOG_EVERY, clock=lambda: now[0])
    request = RequestFactory().post("/v1/messages", headers={HEADER: wrong},
                                    REMOTE_ADDR="192.0.2.7")
    with override_settings(TOKENPAK_HOME=home), caplog.at_level(logging.WARNING):
        auth._throttle, saved = throttle, auth._throttle
        try:
            for t in (1000.0, 1001.0, 1030.0, 1059.9, 1060.0, 1061.0):
                now[0] = t
                assert auth.refusal(request) == auth.WRONG
        finally:
            auth._throttle = saved
    messages = [r.getMessage() for r in caplog.records if r.name == "tokenpak.requests"]
    assert messages == [
        "refused POST /v1/messages from 192.0.2.7: a wrong X-TokenPak-Token "
        "(server.require_token)",
        "refused POST /v1/messages from 192.0.2.7: a wrong X-TokenPak-Token "
        "(server.require_token); 3 more refused since the last line",
    ]
    assert not any(wrong in m or token in m for m in messages)


def test_it_takes_a_rotated_token_at_once(guarded, fake, rows):
    old = make_token(guarded.home)
    assert oai(guarded, old).models.list().data
    new = make_token(guarded.home, "--rotate")
    assert new != old
    # No restart, no wait: the very next request needs the new token.
    with pytest.raises(openai.AuthenticationError, match="may have been rotated"):
        oai(guarded, old).models.list()
    with pytest.raises(anthropic.AuthenticationError):
        ant(guarded, old).messages.create(model="claude-haiku-4-5", max_tokens=5,
                                          messages=MESSAGES)
    assert oai(guarded, new).models.list().data
    reply = ant(guarded, new).messages.create(model="claude-haiku-4-5", max_tokens=5,
                                              messages=MESSAGES)
    assert reply.content[0].text == DEFAULT_TEXT
    assert [e.event_type for e in rows(3)] == ["models", "models", "messages"]


def test_it_refuses_everyone_until_a_token_exists_and_never_makes_one(start_server, fake,
                                                                         tmp_path, rows):
    home = tmp_path / "home"
    server = start_server(home=home, TOKENPAK_REQUIRE_TOKEN="1")
    for token in (None, "", "anything", "x" * 43):
        with pytest.raises(openai.AuthenticationError, match="none has been made yet") as caught:
            oai(server, token).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert "tokenpak token" in caught.value.body["message"]
        with pytest.raises(anthropic.AuthenticationError, match="none has been made yet"):
            ant(server, token).messages.create(model="claude-haiku-4-5", max_tokens=5,
                                               messages=MESSAGES)
    assert not (home / "api_token").exists()  # refusing never makes one
    assert fake.log == [] and no_rows()

    token = make_token(home)  # what the message says to do
    reply = oai(server, token).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert reply.choices[0].message.content == DEFAULT_TEXT
    assert [e.status for e in rows(1)] == ["ok"]
