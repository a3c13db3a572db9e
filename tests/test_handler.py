"""proxy/handler.py: proxy routes go straight to their view; everything else is Django's."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import httpx
import openai
import pytest

from tests.conftest import _server_env
from tests.fakeprovider import DEFAULT_TEXT
from tests.live import ROOT

KEY = "sk-test-handler-0000"


def test_it_refuses_a_host_it_does_not_serve(server, fake, rows):
    # A page on attacker.example that rebinds its name to 127.0.0.1 sends its own Host.
    response = httpx.post(server.url + "/v1/chat/completions",
                          json={"model": "gpt-4o-mini", "messages": []},
                          headers={"authorization": f"Bearer {KEY}", "host": "attacker.example"})
    assert response.status_code == 400
    assert fake.log == []  # nothing went upstream


def test_it_leaves_pages_to_django_and_its_middleware(server, fake, rows):
    page = httpx.get(server.url + "/admin/login/")
    assert page.status_code == 200 and page.headers["x-frame-options"] == "DENY"
    models = httpx.get(server.url + "/v1/models", headers={"authorization": f"Bearer {KEY}"})
    assert models.status_code == 200 and models.json()["data"]
    # No session, CSRF or clickjacking machinery on an API route: SDKs send no cookies.
    assert "x-frame-options" not in models.headers and "set-cookie" not in models.headers
    assert rows(1)[0].event_type == "models"


def test_it_sends_json_answers_with_their_length(server, fake, rows):
    response = httpx.post(server.url + "/v1/chat/completions",
                          json={"model": "gpt-4o-mini", "messages": []},
                          headers={"authorization": f"Bearer {KEY}"})
    assert response.status_code == 200
    assert int(response.headers["content-length"]) == len(response.content)
    assert "transfer-encoding" not in response.headers
    assert response.json()["choices"][0]["message"]["content"] == DEFAULT_TEXT
    assert rows(1)[0].status == "ok"


def test_it_answers_a_path_no_route_takes_with_404(server, fake, rows):
    response = httpx.get(server.url + "/v1/", headers={"authorization": f"Bearer {KEY}"})
    assert (response.status_code, response.text) == (404, "Not Found")
    # A route that takes only POST says so instead.
    other = httpx.get(server.url + "/openai/v1/embeddings",
                      headers={"authorization": f"Bearer {KEY}"})
    assert other.status_code == 405
    assert fake.log == []


def test_it_serves_sdk_streams_whole(server, fake, rows):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY)
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True,
        extra_headers={"x-fake-scenario": "split=7"})
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == DEFAULT_TEXT
    [event] = rows(1)
    assert event.status == "ok" and event.stream and event.usage.output_tokens > 0


ABSURD = "absurd-" + "x" * 100_000


def test_it_refuses_absurd_headers_and_urls_on_pages_in_plain_text(server, fake, rows):
    for response, status in [
        (httpx.get(server.url + "/admin/login/", cookies={"jar": ABSURD}), 431),
        (httpx.get(server.url + "/dashboard/", headers={f"x-h{i}": "v" for i in range(10_000)}),
         431),
        (httpx.get(server.url + "/v1/telemetry/events", headers={"authorization": ABSURD}), 431),
        (httpx.get(server.url + "/admin/login/?next=" + "x" * 20_000), 414),
    ]:
        assert response.status_code == status
        assert response.headers["content-type"] == "text/plain"
        assert "TokenPak takes at most" in response.text and "absurd" not in response.text
    # Still serving, and what went before left no row: the only one is the next request's.
    assert httpx.get(server.url + "/admin/login/").status_code == 200
    assert httpx.post(server.url + "/v1/chat/completions",
                      json={"model": "gpt-4o-mini", "messages": []},
                      headers={"authorization": f"Bearer {KEY}"}).status_code == 200
    assert [e.status for e in rows(1)] == ["ok"]
    assert "absurd" not in server.output()


def test_it_leaves_a_url_longer_than_uvicorn_parses_to_uvicorn(server, fake, rows):
    # httptools refuses URLs over 64 KB itself, before the app: plain 400, connection closed.
    # (httpx will not send one: a raw socket does, as a broken client would.)
    body = b'{"model": "gpt-4o-mini", "messages": []}'
    request = (b"POST /v1/chat/completions?q=" + b"q" * 100_000 + b" HTTP/1.1\r\n"
               b"host: 127.0.0.1\r\ncontent-type: application/json\r\n"
               b"authorization: Bearer " + KEY.encode() + b"\r\n"
               b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(request)
        answer = b""
        while chunk := s.recv(65536):  # until uvicorn closes the connection
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert answer.endswith(b"\r\n\r\nInvalid HTTP request received.")
    assert fake.log == []
    assert httpx.post(server.url + "/v1/chat/completions",
                      json={"model": "gpt-4o-mini", "messages": []},
                      headers={"authorization": f"Bearer {KEY}"}).status_code == 200
    assert [e.status for e in rows(1)] == ["ok"]


# The ASGI server of this process fails the response start as uvicorn does for a header value
# it cannot send (RuntimeError; the client is left with an empty reply), around the real app
# with its real ledger writer. No header TokenPak sends makes uvicorn itself refuse any more.
FAILING_SERVER = """
import asyncio, json, sys
from tokenpak_site.asgi import application

body = json.dumps({"model": "gpt-4o-mini", "messages": [], "stream": sys.argv[1] == "1"})
scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
         "raw_path": b"/v1/chat/completions", "query_string": b"", "root_path": "",
         "scheme": "http", "server": ("127.0.0.1", 8766), "client": ("127.0.0.1", 5000),
         "headers": [(b"host", b"127.0.0.1:8766"), (b"content-type", b"application/json"),
                     (b"authorization", b"Bearer sk-test-handler-0000")]}
messages = [{"type": "http.request", "body": body.encode(), "more_body": False}]

async def receive():
    if messages:
        return messages.pop()
    await asyncio.Event().wait()  # the client waits for an answer

async def send(message):
    if message["type"] == "http.response.start":
        raise RuntimeError("Invalid HTTP header value.")

try:
    asyncio.run(application(scope, receive, send))
except RuntimeError as e:
    print("the server failed the start:", e)
application.on_stop()
"""


@pytest.mark.parametrize("stream", ["0", "1"])
def test_it_records_an_answer_whose_start_could_not_be_sent_as_not_delivered(
        transactional_db, fake, rows, tmp_path, stream):
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tokenpak_site.settings",
           "TOKENPAK_HOME": str(tmp_path), **_server_env(fake)}
    done = subprocess.run([sys.executable, "-c", FAILING_SERVER, stream], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert "the server failed the start: Invalid HTTP header value." in done.stdout, done.stderr
    assert len(fake.log) == 1  # the provider answered…
    [event] = rows(1)
    assert (event.status, event.error_class, event.upstream_status) == (
        "client_closed", "not_sent: RuntimeError", 200)  # …and the client got none of it
