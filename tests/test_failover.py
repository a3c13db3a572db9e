"""Failover: the provider's fallbacks (config.yaml) are tried in order when it fails before a
byte reaches the client; never after. The row says where the request went and what failed."""

from __future__ import annotations

import http.server
import io
import threading
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
import yaml
from django.core.management import call_command

from tests.fakeprovider import FakeProvider
from tests.live import free_port
from tokenpak_site import conf

KEY = "sk-proj-CLIENTKEY0123456789"
MESSAGES = [{"role": "user", "content": "hi"}]


class _Failing(http.server.BaseHTTPRequestHandler):
    status = 503

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        # (The ignores: `hits` is this test's counter, set on the server by `failing`.)
        self.server.hits += 1  # type: ignore[attr-defined]
        body = b'{"error": {"message": "overloaded", "type": "server_error"}}'
        self.send_response(self.status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def failing() -> Iterator[http.server.ThreadingHTTPServer]:
    """A provider that answers every request with 503."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    server.hits = 0  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def second() -> Iterator[FakeProvider]:
    with FakeProvider() as other:
        yield other


def url_of(server: http.server.HTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def served(start_server, tmp_path: Path, openai_url: str, fallbacks: list, **env: str):
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.yaml").write_text(yaml.safe_dump({"providers": {
        "openai": {"fallbacks": fallbacks}, "anthropic": {"fallbacks": fallbacks}}}))
    return start_server(home=home, TOKENPAK_OPENAI_BASE_URL=openai_url,
                        TOKENPAK_ANTHROPIC_BASE_URL=openai_url, **env)


def chat(server, **kwargs):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
    return client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, **kwargs)


def test_it_fails_over_when_the_provider_refuses_connections(start_server, fake, rows, tmp_path):
    down = f"http://127.0.0.1:{free_port()}"
    server = served(start_server, tmp_path, down, [fake.url])
    assert chat(server).choices[0].message.content
    [event] = rows(1)
    assert event.status == "ok"
    assert event.upstream == fake.url.removeprefix("http://")
    assert event.failover == f"{down.removeprefix('http://')}: ConnectError"
    # The client's own key went to the fallback: it names no key of its own.
    assert fake.log[-1].headers["authorization"] == f"Bearer {KEY}"
    server.stop()  # the log is complete
    log = (server.home / "tokenpak.log").read_text()
    assert f"{event.trace_id} failover: {event.failover}; answered by {event.upstream}" in log


def test_it_fails_over_on_a_5xx_and_streams_from_the_next(start_server, fake, rows, tmp_path,
                                                          failing):
    server = served(start_server, tmp_path, url_of(failing), [fake.url])
    text = "".join(c.choices[0].delta.content or "" for c in chat(server, stream=True)
                   if c.choices)
    assert text
    [event] = rows(1)
    assert (event.status, event.upstream_status) == ("ok", 200)
    assert event.failover == f"127.0.0.1:{failing.server_address[1]}: http_503"
    assert failing.hits == 1


def test_it_uses_a_fallbacks_own_key_from_the_environment(start_server, fake, rows, tmp_path,
                                                          failing):
    fallbacks = [{"base_url": fake.url, "api_key_env": "BACKUP_PROVIDER_KEY"}]
    server = served(start_server, tmp_path, url_of(failing), fallbacks,
                    BACKUP_PROVIDER_KEY="sk-backup-0000")
    chat(server)
    assert fake.log[-1].headers["authorization"] == "Bearer sk-backup-0000"
    anthropic.Anthropic(base_url=server.url, api_key="sk-ant-client", max_retries=0
                        ).messages.create(model="claude-haiku-4-5", max_tokens=5,
                                          messages=MESSAGES)
    sent = fake.log[-1].headers
    assert sent["x-api-key"] == "sk-backup-0000" and "authorization" not in sent
    rows(2)


def test_it_tries_each_fallback_in_order_and_answers_with_the_last(start_server, fake, rows,
                                                                   tmp_path, failing):
    down = f"http://127.0.0.1:{free_port()}"
    server = served(start_server, tmp_path, down, [url_of(failing), url_of(failing)])
    with pytest.raises(openai.InternalServerError) as info:
        chat(server)
    assert info.value.status_code == 503  # the last one's answer, as it gave it
    [event] = rows(1)
    assert event.status == "error" and event.upstream_status == 503
    port = failing.server_address[1]
    assert event.failover == (f"{down.removeprefix('http://')}: ConnectError; "
                              f"127.0.0.1:{port}: http_503")
    assert failing.hits == 2


def test_it_answers_502_when_every_upstream_is_down(start_server, fake, rows, tmp_path):
    downs = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    server = served(start_server, tmp_path, downs[0], [downs[1]])
    r = httpx.post(server.url + "/v1/chat/completions", headers={"authorization": f"Bearer {KEY}"},
                   json={"model": "gpt-4o-mini", "messages": MESSAGES})
    assert r.status_code == 502 and r.json()["error"]["type"] == "upstream_error"
    [event] = rows(1)
    assert event.status == "upstream_unreachable"
    assert event.upstream == downs[1].removeprefix("http://")
    assert event.failover == f"{downs[0].removeprefix('http://')}: ConnectError"


@pytest.fixture
def silent() -> Iterator[str]:
    """A port that takes connections (the kernel's backlog) and never answers."""
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def test_it_fails_over_when_the_provider_does_not_answer_in_time(start_server, fake, rows,
                                                                 tmp_path, silent):
    server = served(start_server, tmp_path, silent, [fake.url], TOKENPAK_READ_TIMEOUT="0.5")
    assert chat(server).choices[0].message.content
    [event] = rows(1)
    assert event.failover == f"{silent.removeprefix('http://')}: ReadTimeout"
    assert event.upstream == fake.url.removeprefix("http://")


def test_it_never_fails_over_once_bytes_reached_the_client(start_server, fake, rows, tmp_path,
                                                          second):
    server = served(start_server, tmp_path, fake.url, [second.url])
    stream = chat(server, stream=True, extra_headers={"x-fake-scenario": "cut=3"})
    with pytest.raises(openai.APIError):
        list(stream)
    [event] = rows(1)
    assert event.status == "stream_cut" and event.failover == ""
    assert second.log == []


def test_it_does_not_fail_over_on_a_client_error(start_server, fake, rows, tmp_path, second):
    server = served(start_server, tmp_path, fake.url, [second.url])
    with pytest.raises(openai.RateLimitError):
        chat(server, extra_headers={"x-fake-scenario": "status=429"})
    rows(1)
    assert second.log == []


def test_it_shows_the_failover_in_the_trace(start_server, fake, rows, tmp_path, failing,
                                            settings):
    server = served(start_server, tmp_path, url_of(failing), [fake.url])
    chat(server)
    [event] = rows(1)
    out = io.StringIO()
    call_command("trace", "--id", event.trace_id, stdout=out)
    port = failing.server_address[1]
    assert (f"Upstream:   {fake.url.removeprefix('http://')}, after failover from "
            f"127.0.0.1:{port}: http_503") in out.getvalue()


# --- configuration ------------------------------------------------------------------------


def test_it_reads_fallbacks_as_urls_or_entries() -> None:
    file = {"providers": {"openai": {"fallbacks": [
        "https://backup.example.com/", {"base_url": "http://127.0.0.1:9000",
                                        "api_key_env": "K1"}]}}}
    assert conf.fallbacks(file, "openai", {"K1": " sk-1 "}) == (
        conf.Fallback("https://backup.example.com"),
        conf.Fallback("http://127.0.0.1:9000", "sk-1", "K1"))
    assert conf.fallbacks(file, "anthropic", {}) == ()
    assert conf.fallbacks({}, "openai", {}) == ()


@pytest.mark.parametrize("fallbacks, message", [
    ("https://x.example.com", "expected a list"),
    ([{"base_url": "https://x.example.com", "api_key": "sk-live-SECRET"}],
     "unknown key 'api_key'; a fallback takes base_url and api_key_env"),
    ([{"base_url": "ftp://x.example.com"}], "fallbacks[0].base_url: expected a URL"),
    ([{"base_url": "https://x.example.com", "api_key_env": "NOT SET"}],
     "expected an environment variable name"),
    ([{"base_url": "https://x.example.com", "api_key_env": "MISSING_KEY_VAR"}],
     "environment variable MISSING_KEY_VAR is not set"),
    ([42], "fallbacks[0]: expected a base URL"),
])
def test_it_refuses_a_bad_fallback_in_one_line(fallbacks, message) -> None:
    file = {"providers": {"openai": {"fallbacks": fallbacks}}}
    with pytest.raises(conf.ConfigError) as info:
        conf.fallbacks(file, "openai", {})
    assert message in str(info.value)
    assert "SECRET" not in str(info.value)  # a pasted key is never repeated
    assert str(info.value).startswith("config.yaml key providers.openai.fallbacks")


@pytest.mark.live
def test_it_stops_at_startup_on_a_bad_fallback(tmp_path) -> None:
    import os
    import subprocess
    import sys

    from tests.live import ROOT

    home = tmp_path / "home"
    home.mkdir()
    (home / "config.yaml").write_text(yaml.safe_dump({"providers": {"anthropic": {
        "fallbacks": [{"base_url": "https://x.example.com", "api_key_env": "NO_SUCH_VAR"}]}}}))
    env = {**os.environ, "TOKENPAK_HOME": str(home), "DJANGO_SETTINGS_MODULE":
           "tokenpak_site.settings"}
    env.pop("NO_SUCH_VAR", None)
    proc = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "tokenpak: configuration error: config.yaml key providers.anthropic.fallbacks[0]"
        ".api_key_env: environment variable NO_SUCH_VAR is not set (it holds this fallback's "
        "API key)")


def test_it_keeps_serving_others_while_one_provider_hangs(start_server, fake, rows, silent):
    import concurrent.futures

    server = start_server(TOKENPAK_ANTHROPIC_BASE_URL=silent, TOKENPAK_READ_TIMEOUT="5")
    finished: list[str] = []

    def hung() -> None:
        r = httpx.post(server.url + "/v1/messages", timeout=30,
                       headers={"x-api-key": "sk-ant-x", "anthropic-version": "2023-06-01"},
                       json={"model": "claude-haiku-4-5", "max_tokens": 5, "messages": MESSAGES})
        assert r.status_code == 504
        finished.append("anthropic")

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        waiting = pool.submit(hung)
        for _ in range(20):
            assert chat(server).choices[0].message.content
            finished.append("openai")
        waiting.result()
    # Every OpenAI answer came while the Anthropic request was still waiting on its provider.
    assert finished == ["openai"] * 20 + ["anthropic"]
    rows(21)


# --- the total timeout -------------------------------------------------------------------------


def test_it_ends_a_request_at_the_total_timeout_without_failing_over(start_server, fake, rows,
                                                                     tmp_path, second):
    server = served(start_server, tmp_path, fake.url, [second.url],
                    TOKENPAK_TOTAL_TIMEOUT="1", TOKENPAK_READ_TIMEOUT="60")
    r = httpx.post(server.url + "/v1/chat/completions", timeout=30,
                   headers={"authorization": f"Bearer {KEY}", "x-fake-scenario": "hang"},
                   json={"model": "gpt-4o-mini", "messages": MESSAGES})
    assert r.status_code == 504
    assert r.json()["error"]["message"] == (
        "TokenPak: the request took longer than providers.total_timeout (1 s).")
    [event] = rows(1)
    assert (event.status, event.error_class) == ("upstream_timeout", "TotalTimeout")
    assert second.log == []  # no time was left for a fallback


def test_it_cuts_a_stream_that_outlasts_the_total_timeout(start_server, fake, rows):
    server = start_server(TOKENPAK_TOTAL_TIMEOUT="1")
    body = b""
    with httpx.stream("POST", server.url + "/v1/chat/completions", timeout=30,
                      headers={"authorization": f"Bearer {KEY}",
                               "x-fake-scenario": "delay=0.4"},
                      json={"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}) as r:
        assert r.status_code == 200
        for chunk in r.iter_bytes():
            body += chunk
    assert b"providers.total_timeout (1 s)" in body  # said in the stream, as an error event
    [event] = rows(1)
    assert (event.status, event.error_class) == ("upstream_timeout", "TotalTimeout")
    assert event.usage.estimated  # the tokens that did arrive are counted
