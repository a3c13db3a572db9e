"""The spool (telemetry/spool.py) through the front door: a live server under load, killed with
SIGKILL, its database taken away, its disk full; then the rows, all of them, exactly once."""

from __future__ import annotations

import contextlib
import io
import json
import resource
import signal
import socket
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest
from django.core.management import call_command
from django.db import connection
from django.test import override_settings

from telemetry.spool import STATE_BYTES
from tests.conftest import wait_for
from tests.test_ledger import ANTHROPIC, OPENAI

REQUESTS = [
    ("/v1/chat/completions", OPENAI, {"model": "gpt-4o-mini", "messages": []}),
    ("/v1/chat/completions", OPENAI, {"model": "gpt-4o-mini", "messages": [], "stream": True}),
    ("/v1/messages", ANTHROPIC, {"model": "claude-haiku-4-5", "max_tokens": 5, "messages": []}),
    ("/v1/messages", ANTHROPIC,
     {"model": "claude-haiku-4-5", "max_tokens": 5, "messages": [], "stream": True}),
]


class Load:
    """Clients sending the four kinds of request in a loop; `answered` holds the trace id of
    every response that arrived whole."""

    def __init__(self, url: str, clients: int = 12) -> None:
        self.url, self.answered, self.failed = url, [], 0
        self.wrong: list[str] = []  # answers that were not a whole 200
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(i,)) for i in range(clients)]

    def _client(self, i: int) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as c:
            n = i
            while not self.stopping.is_set():
                path, headers, body = REQUESTS[n % len(REQUESTS)]
                n += 1
                try:
                    r = c.post(path, headers=headers, json=body)  # reads the body to its end
                except httpx.HTTPError:
                    self.failed += 1
                    time.sleep(0.01)
                    continue
                end = "data: [DONE]" if "chat" in path else '{"type":"message_stop"}'
                if r.status_code != 200 or (body.get("stream") and
                                            not r.text.rstrip().endswith(end)):
                    self.wrong.append(f"{r.status_code} {r.text[-200:]}")
                    continue
                self.answered.append(r.headers["x-tokenpak-trace-id"])

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join()


def stored() -> set[str]:
    from telemetry.models import Event

    return set(Event.objects.values_list("trace_id", flat=True))


def assert_whole(answered: list[str]) -> None:
    """Every answered request has exactly one complete row: event, usage and cost."""
    from telemetry.models import Cost, Event, Usage

    assert Event.objects.count() == len(set(Event.objects.values_list("trace_id", flat=True)))
    assert set(answered) <= stored()
    assert Usage.objects.count() == Cost.objects.count() == Event.objects.count()
    assert not Event.objects.filter(status="ok", output_tokens=0).exists()


def status_text(home: Path) -> str:
    out = io.StringIO()
    with override_settings(TOKENPAK_HOME=home):
        call_command("status", stdout=out)
    return out.getvalue()


def test_it_loses_no_answered_request_to_a_kill_9_under_load(start_server, fake, tmp_path):
    home = tmp_path / "home"
    # A batch window longer than the load: at the kill, rows sit queued in memory.
    server = start_server(home=home, TOKENPAK_FLUSH_SECONDS="5")
    with Load(server.url) as load:
        wait_for(lambda: len(load.answered) >= 200, timeout=60)
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait()
    answered = list(load.answered)
    assert answered and not load.wrong and server.proc.returncode == -signal.SIGKILL
    lost_without_spool = set(answered) - stored()
    assert lost_without_spool  # not written when the process died: only the spool has them
    if connection.vendor == "sqlite":
        with sqlite3.connect(connection.settings_dict["NAME"]) as db:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert "waiting in the spool of a stopped process" in status_text(home)

    restarted = start_server(home=home)
    wait_for(lambda: set(answered) <= stored(), timeout=30)
    assert_whole(answered)
    assert "rows a stopped process" in (home / "tokenpak.log").read_text()
    assert [p.name for p in (home / "spool").iterdir()] != []  # the new process's own state
    restarted.stop()
    assert list((home / "spool").iterdir()) == []  # a clean stop leaves nothing behind
    assert "Ledger:" not in status_text(home)


def test_it_keeps_no_prompt_or_key_in_the_spool(start_server, fake, tmp_path):
    home = tmp_path / "home"
    server = start_server(home=home, TOKENPAK_FLUSH_SECONDS="60")
    r = httpx.post(server.url + "/v1/chat/completions", headers=OPENAI, json={
        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "a secret prompt"}]})
    assert r.status_code == 200
    [spooled] = (home / "spool").glob("*.jsonl")
    line = json.loads(spooled.read_text())
    assert line["r"]["trace_id"] == r.headers["x-tokenpak-trace-id"]
    assert line["r"]["usage"]["input_tokens"] == 21
    text = spooled.read_text()
    assert "a secret prompt" not in text and "sk-test" not in text
    assert oct(spooled.stat().st_mode & 0o777) == "0o600"
    assert oct((home / "spool").stat().st_mode & 0o777) == "0o700"
    server.stop()


class DatabaseDown:
    """The ledger's database stops taking writes, for real: on SQLite another process holds
    the write lock (longer than the server's busy timeout); on PostgreSQL a relay the server
    reaches it through drops every connection and refuses new ones."""

    def __init__(self) -> None:
        self.vendor = connection.vendor
        self.relay = Relay(connection.settings_dict) if self.vendor == "postgresql" else None

    def env(self) -> dict[str, str]:
        return ({"DATABASE_URL": self.relay.url} if self.relay
                else {"TOKENPAK_DB_BUSY_TIMEOUT": "0.5"})

    def __enter__(self) -> DatabaseDown:
        if self.relay:
            self.relay.cut()
        else:
            self.lock = sqlite3.connect(connection.settings_dict["NAME"], isolation_level=None)
            self.lock.execute("BEGIN IMMEDIATE")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.relay:
            self.relay.restore()
        else:
            self.lock.execute("ROLLBACK")
            self.lock.close()


class Relay:
    """A TCP relay to PostgreSQL that can be cut and restored."""

    def __init__(self, db: dict) -> None:
        self.target = (db["HOST"] or "127.0.0.1", int(db["PORT"] or 5432))
        self.listener = socket.create_server(("127.0.0.1", 0))
        port = self.listener.getsockname()[1]
        self.url = f"postgres://{db['USER']}@127.0.0.1:{port}/{db['NAME']}"
        self.up = True
        self.pairs: list = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            if not self.up:
                client.close()
                continue
            server = socket.create_connection(self.target)
            self.pairs.append((client, server))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                b.sendall(data)
        # shutdown, not just close: the other direction's thread is blocked in recv() on these,
        # and a socket closed under a blocked recv() lingers without telling its peer.
        for s in (a, b):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def cut(self) -> None:
        self.up = False
        for pair in self.pairs:
            for s in pair:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
        self.pairs = []

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        self.cut()
        self.listener.close()


def test_it_keeps_forwarding_while_the_database_is_down_and_catches_up(start_server, fake,
                                                                      tmp_path):
    home = tmp_path / "home"
    down = DatabaseDown()
    server = start_server(home=home, TOKENPAK_FLUSH_SECONDS="0.05", **down.env())
    with Load(server.url, clients=4) as load:
        wait_for(lambda: len(load.answered) >= 20)
        with down:
            seen = len(load.answered)
            wait_for(lambda: len(load.answered) >= seen + 100, timeout=60)  # still forwarded
            log = home / "tokenpak.log"
            wait_for(lambda: "the database refused" in log.read_text(), timeout=60)
            wait_for(lambda: "FAILING since" in status_text(home), timeout=30)
            report = status_text(home)
            assert "Requests are still forwarded" in report
        # The database is back: everything that was answered meanwhile goes in.
        wait_for(lambda: "the database takes rows again" in log.read_text(), timeout=60)
    answered = list(load.answered)
    assert load.failed == 0 and load.wrong == []
    wait_for(lambda: set(answered) <= stored(), timeout=30)
    assert_whole(answered)
    assert "FAILING" not in status_text(home)
    server.stop()
    if down.relay:
        down.relay.close()


def test_it_keeps_forwarding_on_a_full_disk_and_catches_up(start_server, fake, tmp_path):
    home = tmp_path / "home"
    server = start_server(home=home, TOKENPAK_FLUSH_SECONDS="0.05")
    with Load(server.url, clients=4) as load:
        wait_for(lambda: len(load.answered) >= 20)
        # No write past a file's first KB: the ledger (on SQLite), the spool and the log are
        # full. The spool's state file, written in place within it, still says why, as on a
        # full disk, where blocks a file has are rewritten without taking new ones.
        resource.prlimit(server.proc.pid, resource.RLIMIT_FSIZE,
                         (STATE_BYTES, resource.RLIM_INFINITY))
        seen = len(load.answered)
        wait_for(lambda: len(load.answered) >= seen + 100, timeout=60)
        if connection.vendor == "sqlite":
            wait_for(lambda: "FAILING since" in status_text(home), timeout=30)
        resource.prlimit(server.proc.pid, resource.RLIMIT_FSIZE,
                         (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        wait_for(lambda: len(load.answered) >= seen + 150, timeout=60)
    answered = list(load.answered)
    assert load.failed == 0 and load.wrong == []
    wait_for(lambda: set(answered) <= stored(), timeout=30)
    assert_whole(answered)
    wait_for(lambda: "FAILING" not in status_text(home), timeout=30)
    assert server.proc.poll() is None
    server.stop()


@pytest.mark.parametrize("kind", ["r", "w"])
def test_it_skips_rows_the_database_already_holds(kind, start_server, fake, tmp_path):
    """A kill -9 between the commit and the emptying of the spool: the restart writes nothing
    twice."""
    home = tmp_path / "home"
    server = start_server(home=home)
    r = httpx.post(server.url + "/v1/messages", headers=ANTHROPIC, json={
        "model": "claude-haiku-4-5", "max_tokens": 5, "messages": []})
    trace_id = r.headers["x-tokenpak-trace-id"]
    wait_for(lambda: trace_id in stored())
    server.stop(signal.SIGKILL)
    spool_dir = home / "spool"
    files = list(spool_dir.glob("*.jsonl"))
    assert files == [] or all(f.stat().st_size == 0 for f in files)
    name = next(spool_dir.glob("*.state")).name.removesuffix(".state")
    from telemetry.models import Event
    from telemetry.record import Record
    from telemetry.rows import rows_of

    event = Event.objects.get(trace_id=trace_id)
    line = {"r": {"trace_id": trace_id, "provider": "anthropic", "event_type": "messages",
                  "endpoint": "/v1/messages", "ts": event.ts, "status": "ok",
                  "usage": {"input_tokens": 1, "output_tokens": 1}}}
    if kind == "w":
        row = rows_of(Record(**{k: v for k, v in line["r"].items() if k != "usage"}))
        line = {"w": row, "held": False}
    (spool_dir / f"{name}.000001.jsonl").write_text(json.dumps(line, default=str) + "\n")
    start_server(home=home).stop()
    assert list(Event.objects.values_list("trace_id", flat=True)) == [trace_id]
    assert list(spool_dir.iterdir()) == []


def test_it_moves_to_a_new_file_when_one_is_full_and_deletes_files_whose_rows_are_in(tmp_path):
    from telemetry import spool

    s = spool.Spool(tmp_path / "spool")
    s.start()
    line = json.dumps({"r": {"trace_id": "x" * 32, "pad": "p" * 500}}).encode() + b"\n"
    seqs = [s.append(line) for _ in range(spool.SEGMENT_BYTES // len(line) + 10)]
    assert sorted(set(seqs)) == [1, 2]
    files = sorted((tmp_path / "spool").glob("*.jsonl"))
    assert len(files) == 2 and files[0].stat().st_size >= spool.SEGMENT_BYTES
    [me] = spool.owners(tmp_path / "spool")
    assert me.alive and me.files == files and me.waiting() == 1  # one trace id, many lines

    s.done([q for q in seqs if q == 1])  # the full file's rows are committed: it goes
    assert sorted((tmp_path / "spool").glob("*.jsonl")) == files[1:]
    s.done([q for q in seqs if q == 2])  # the current one is emptied, and kept for appends
    assert files[1].stat().st_size == 0
    assert s.append(line) == 2 and files[1].stat().st_size == len(line)
    s.done([2])
    s.close()
    assert list((tmp_path / "spool").iterdir()) == []
    assert spool.owners(tmp_path / "spool") == []
