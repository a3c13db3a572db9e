"""`manage.py runserver` with no address serves the proxy on 127.0.0.1:$TOKENPAK_PORT, and, like
`serve`, refuses an address beyond loopback unless server.require_token is on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import wait_for
from tests.live import ROOT, answers, database_env, default_signals, free_port, listening


def runserver(tmp_path: Path, fake, *args: str, **extra: str
              ) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tokenpak_site.settings",
        "TOKENPAK_HOME": str(tmp_path),
        "TOKENPAK_PORT": str(port),
        "TOKENPAK_OPENAI_BASE_URL": fake.url,
        **database_env(),
        **extra,
    }
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", "--noreload",
         *(a.format(port=port) for a in args)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        preexec_fn=default_signals,
    )
    return proc, port


def test_it_serves_on_the_configured_port_by_default(transactional_db, fake, rows, tmp_path):
    proc, port = runserver(tmp_path, fake)
    try:
        wait_for(lambda: answers(f"http://127.0.0.1:{port}"), timeout=30)
        [event] = rows(1)
        assert event.event_type == "models"
    finally:
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=15)[0].decode()
    assert f"http://127.0.0.1:{port}/" in output
    assert "ASGI/Daphne" in output  # daphne's server, with TokenPak's defaults


@pytest.mark.parametrize(("args", "extra", "host"), [
    (["0.0.0.0:{port}"], {}, "0.0.0.0"),
    (["[::]:{port}"], {}, "::"),
    ([], {"TOKENPAK_HOST": "0.0.0.0"}, "0.0.0.0"),
])
def test_it_refuses_to_listen_beyond_loopback_without_the_token(tmp_path, fake, args, extra,
                                                                  host):
    proc, port = runserver(tmp_path, fake, *args, **extra)
    output = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 1, output
    assert output.strip().splitlines() == [
        f"CommandError: Refusing to listen on {host} without authentication: anyone who can "
        "reach this machine could use the proxy (with your fallback keys, against your budgets, "
        "into your ledger). Set TOKENPAK_REQUIRE_TOKEN=1 (or server.require_token: true in "
        "config.yaml), run `tokenpak token` (or `python manage.py token`) to make the token, "
        "and have clients send it as the X-TokenPak-Token header."], output
    assert not listening(port)


def test_it_listens_beyond_loopback_with_the_token_required(transactional_db, fake, rows,
                                                            tmp_path):
    from tests.test_proxy_auth import make_token

    token = make_token(tmp_path)
    proc, port = runserver(tmp_path, fake, "0.0.0.0:{port}", TOKENPAK_REQUIRE_TOKEN="1")
    url = f"http://127.0.0.1:{port}/v1/models"
    try:
        wait_for(lambda: listening(port), timeout=30)
        assert httpx.get(url).status_code == 401
        assert httpx.get(url, headers={"X-TokenPak-Token": token}).status_code == 200
        assert [e.event_type for e in rows(1)] == ["models"]
    finally:
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=15)[0].decode()
    assert f"http://0.0.0.0:{port}/" in output


@pytest.fixture
def daphne(transactional_db, fake, tmp_path):
    """runserver on a port of its own, in tmp_path, until the test ends: (server, process)."""
    from types import SimpleNamespace

    proc, port = runserver(tmp_path, fake, TOKENPAK_ANTHROPIC_BASE_URL=fake.url)
    try:
        wait_for(lambda: listening(port), timeout=30)
        yield SimpleNamespace(url=f"http://127.0.0.1:{port}", home=tmp_path), proc
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=15)


@pytest.mark.parametrize("which", ["serve", "runserver"])
def test_it_refuses_control_characters_in_header_values_on_both_servers(
        transactional_db, request, fake, rows, which):
    from tests.test_security import post

    server = (request.getfixturevalue("server") if which == "serve"
              else request.getfixturevalue("daphne")[0])
    for value in ("coder\x1b]0;owned\x07", "coder\x7f"):
        status, body = post(server, "/v1/chat/completions", b'{"model": "gpt-4o-mini"}',
                            "Authorization: Bearer sk-test-0", f"X-TokenPak-Agent: {value}")
        assert (status, body) == (400, b"Invalid HTTP request received.")  # uvicorn's answer
    status, _ = post(server, "/v1/chat/completions", b'{"model": "gpt-4o-mini"}',
                     "Authorization: Bearer sk-test-0", "X-TokenPak-Agent: coder\tteam")
    assert status == 200  # a tab is fine
    assert len(fake.log) == 1
    assert [e.agent_id for e in rows(1)] == ["coder\tteam"]


def test_it_refuses_paths_that_could_leave_their_route_under_runserver(daphne, fake, rows):
    from tests.test_security import post

    server, _ = daphne
    for target in ("/v1/../admin/", "/v1/%2e%2e/%2e%2e/secret", "/openai/v1/../../root",
                   "/v1/..%2f..%2fadmin"):
        status, body = post(server, target, b'{"model": "gpt-4o-mini"}',
                            "Authorization: Bearer sk-test-0")
        assert status == 400, target
        assert "TokenPak does not forward this path" in body.decode()
    assert fake.log == []
    assert [e.status for e in rows(4)] == ["invalid_request"] * 4


def test_it_masks_keys_in_daphnes_request_lines(daphne, fake):
    server, proc = daphne
    # Gemini's SDK sends its key in the query string; TokenPak has no such route: a 404, and
    # daphne logs the request line, query string included, at WARNING.
    response = httpx.post(server.url + "/v1beta/models/gemini-2.0-flash:generateContent"
                          "?key=AIzaPLANTEDgemini&alt=sse", json={})
    assert response.status_code == 404
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=15)[0].decode()
    log_text = (server.home / "tokenpak.log").read_text()
    assert ":generateContent?key=***&alt=sse 404" in log_text
    assert "PLANTED" not in log_text + output
