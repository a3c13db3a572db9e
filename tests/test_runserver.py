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
