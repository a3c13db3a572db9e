"""`tokenpak serve`: the production command, one process or several sharing one ledger.

The servers write to the suite's database, SQLite or PostgreSQL, like any other live server."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import wait_for
from tests.live import ROOT, answers, database_env, default_signals, free_port, listening

TOKENPAK = Path(sys.executable).parent / "tokenpak"


def serve(tmp_path: Path, fake, *args: str, **extra: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "TOKENPAK_HOME": str(tmp_path / "home"),
           "DJANGO_SETTINGS_MODULE": "tokenpak_site.settings", "TOKENPAK_PORT": str(port),
           "TOKENPAK_OPENAI_BASE_URL": fake.url, "TOKENPAK_ANTHROPIC_BASE_URL": fake.url,
           "TOKENPAK_RETENTION_DAYS": "0", **database_env(), **extra}
    proc = subprocess.Popen([str(TOKENPAK), "serve", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=default_signals)
    return proc, f"http://127.0.0.1:{port}"


def workers_of(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children]


def chats() -> list:
    from telemetry.models import Event

    return list(Event.objects.filter(event_type="chat.completions").select_related("usage"))


def test_it_runs_several_workers_that_write_one_ledger(transactional_db, tmp_path, fake):
    proc, url = serve(tmp_path, fake, "--workers", "2")
    try:
        wait_for(lambda: answers(url), timeout=60)
        wait_for(lambda: len(workers_of(proc.pid)) >= 2, timeout=30)

        async def burst() -> list[str]:
            client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="sk-serve-0000",
                                        max_retries=0)
            replies = await asyncio.gather(*(
                client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": f"n{i}"}],
                    extra_headers={"x-fake-usage": '{"prompt_tokens": 1000}'})
                for i in range(60)))
            await client.close()
            return [r.choices[0].message.content for r in replies]

        assert all(asyncio.run(burst()))
        # Every request a row with its usage, none twice, from whichever worker served it.
        wait_for(lambda: len(chats()) == 60, timeout=20)
        events = chats()
        assert len({e.trace_id for e in events}) == 60
        assert sum(e.usage.input_tokens for e in events) == 60_000
    finally:
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0, output
    assert "Serving with uvicorn, 2 worker(s)" in output
    assert "Traceback" not in output


@pytest.mark.parametrize("workers", ["1", "2"])
def test_it_writes_the_rows_still_queued_when_stopped(transactional_db, tmp_path, fake, workers):
    # A 30 s batch window: every row is still in its worker's queue when the stop comes.
    proc, url = serve(tmp_path, fake, "--workers", workers, TOKENPAK_FLUSH_SECONDS="30")
    try:
        wait_for(lambda: answers(url), timeout=60)
        client = openai.OpenAI(base_url=url + "/v1", api_key="sk-serve-0000", max_retries=0)
        for i in range(12):
            client.chat.completions.create(model="gpt-4o-mini",
                                           messages=[{"role": "user", "content": f"n{i}"}])
        started = time.monotonic()
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0].decode()
    assert time.monotonic() - started < 20, "the stop waited for the batch window"
    assert len(chats()) == 12, output
    assert "Traceback" not in output


def test_it_refuses_a_worker_count_it_cannot_run(tmp_path, fake):
    proc, _ = serve(tmp_path, fake, "--workers", "0")
    output = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode != 0
    assert output.strip().splitlines()[-1] == (
        "CommandError: --workers must be between 1 and 64, not 0")


REFUSAL = ("CommandError: Refusing to listen on {host} without authentication: anyone who can "
           "reach this machine could use the proxy")


@pytest.mark.parametrize(("args", "extra", "host"), [
    (["--host", "0.0.0.0"], {}, "0.0.0.0"),
    (["--host", "::", "--port", "0"], {}, "::"),  # --port restarts the command: checked after too
    ([], {"TOKENPAK_HOST": "192.0.2.10"}, "192.0.2.10"),
    (["--host", "0.0.0.0"], {"TOKENPAK_REQUIRE_TOKEN": "0"}, "0.0.0.0"),
])
def test_it_refuses_to_listen_beyond_loopback_without_the_token(tmp_path, fake, args, extra,
                                                                  host):
    if "--port" in args:
        args[args.index("--port") + 1] = str(free_port())
    proc, url = serve(tmp_path, fake, *args, **extra)
    output = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 1, output
    lines = output.strip().splitlines()
    assert len(lines) == 1, output  # one line: no migration, no endpoints, no traceback
    assert lines[0].startswith(REFUSAL.format(host=host)), output
    assert "TOKENPAK_REQUIRE_TOKEN=1" in lines[0] and "X-TokenPak-Token" in lines[0]
    assert "tokenpak token" in lines[0]
    assert not listening(int(url.rsplit(":", 1)[1]))


def test_it_refuses_a_listening_address_set_in_config_yaml_too(tmp_path, fake):
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.yaml").write_text("server:\n  host: 0.0.0.0\n")
    proc, _ = serve(tmp_path, fake)
    output = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 1 and output.startswith(REFUSAL.format(host="0.0.0.0")), output


def this_machines_address() -> str:
    """An address of this machine beyond loopback, if it has one (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
            return s.getsockname()[0]
        except OSError:
            return ""


def test_it_listens_beyond_loopback_with_the_token_required(transactional_db, tmp_path, fake):
    from tests.test_proxy_auth import make_token

    token = make_token(tmp_path / "home")
    proc, url = serve(tmp_path, fake, "--host", "0.0.0.0", TOKENPAK_REQUIRE_TOKEN="1",
                      TOKENPAK_ALLOWED_HOSTS="tokenpak.lan, .example.lan")
    port = int(url.rsplit(":", 1)[1])
    headers = {"X-TokenPak-Token": token, "authorization": "Bearer sk-serve-0000"}
    try:
        wait_for(lambda: listening(port), timeout=60)
        client = openai.OpenAI(base_url=url + "/v1", api_key="sk-serve-0000", max_retries=0,
                               default_headers={"X-TokenPak-Token": token})
        reply = client.chat.completions.create(model="gpt-4o-mini",
                                               messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="sk-serve-0000",
                          max_retries=0).models.list()
        # The Host check stays on: a name not allowed gets 400 even with the token …
        r = httpx.get(url + "/v1/models", headers={**headers, "host": "attacker.example"})
        assert r.status_code == 400
        # … and the names in TOKENPAK_ALLOWED_HOSTS are served (.example.lan: and subdomains).
        for name in ("tokenpak.lan", f"tokenpak.lan:{port}", "box.example.lan"):
            r = httpx.get(url + "/v1/models", headers={**headers, "host": name})
            assert r.status_code == 200, (name, r.text)
        # It really listens beyond loopback: this machine's own network address answers.
        if (address := this_machines_address()) and not address.startswith("127."):
            r = httpx.get(f"http://{address}:{port}/v1/models",
                          headers={**headers, "host": "tokenpak.lan"})
            assert r.status_code == 200
            r = httpx.get(f"http://{address}:{port}/v1/models", headers=headers)
            assert r.status_code == 400  # its address is not a name it was told to answer to
    finally:
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0, output
    assert "Listening on:   0.0.0.0" in output and "tokenpak.lan" in output
    assert "Token:          every proxy request sends X-TokenPak-Token" in output
    assert "Traceback" not in output
