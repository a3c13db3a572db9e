"""Hostile bodies: refused before they are read, never held past the limit, and a big one does
not hold up anyone else's request (proxy/intake.py, proxy/handler.py, proxy/forward.py).

Through real sockets against the production server; the server's memory is read from
/proc/<pid>/status, its peak (VmHWM) reset through /proc/<pid>/clear_refs before each measure."""

from __future__ import annotations

import fcntl
import json
import socket
import struct
import termios
import threading
from pathlib import Path

import httpx
import pytest
from django.conf import settings

from tests.conftest import wait_for
from tests.live import LiveServer
from tests.test_proxy_auth import HEADER, make_token, no_rows

KEY = "sk-test-intake-0000"
LIMIT = settings.MAX_BODY_BYTES
DECLARED = 400 * 1024 * 1024  # what a hostile client declares; only a little of it is sent
MB = 1024 * 1024


def head(path: str, *headers: str) -> bytes:
    """A request line and headers, written by hand: httpx would send the whole body it declares."""
    lines = [f"POST {path} HTTP/1.1", "host: 127.0.0.1", "content-type: application/json",
             f"authorization: Bearer {KEY}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def answer(conn: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """The response on conn: its head and the body its content-length says. (A server that closes
    while the client is still sending resets the connection after its answer.)"""
    data = b""
    while True:
        top, end, body = data.partition(b"\r\n\r\n")
        if end:
            status_line, *header_lines = top.decode("latin-1").split("\r\n")
            headers = dict(line.lower().split(": ", 1) for line in header_lines)
            if len(body) >= int(headers["content-length"]):
                return int(status_line.split()[1]), headers, body
        try:
            chunk = conn.recv(65536)
        except ConnectionResetError:
            chunk = b""
        assert chunk, f"the connection ended before a whole answer: {data!r}"
        data += chunk


def ask(server: LiveServer, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Sends only the start of what the request declares, then waits for the answer: one before
    the rest is sent (the socket times out otherwise) proves the server did not wait for it."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as conn:
        conn.sendall(request)
        return answer(conn)


def memory(server: LiveServer, field: str) -> int:
    """VmRSS (now) or VmHWM (peak since the last reset) of the server process, in bytes."""
    assert server.proc is not None
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for the server")


def reset_peak(server: LiveServer) -> int:
    """Starts a new VmHWM measure from the present RSS; returns that RSS."""
    assert server.proc is not None
    Path(f"/proc/{server.proc.pid}/clear_refs").write_text("5")
    return memory(server, "VmRSS")


def chat(server: LiveServer, content: str = "hi", **headers: str) -> httpx.Response:
    return httpx.post(server.url + "/v1/chat/completions", timeout=120,
                      json={"model": "gpt-4o-mini",
                            "messages": [{"role": "user", "content": content}]},
                      headers={"authorization": f"Bearer {KEY}", **headers})


@pytest.fixture
def guarded(start_server, tmp_path) -> tuple[LiveServer, str]:
    """A server of its own (its memory is measured) with server.require_token on, and the token."""
    home = tmp_path / "guarded"
    token = make_token(home)
    return start_server(home, TOKENPAK_REQUIRE_TOKEN="1"), token


def test_it_refuses_a_tokenless_body_before_reading_it(guarded, fake):
    server, _ = guarded
    status, headers, body = ask(server, head("/v1/chat/completions", f"content-length: {DECLARED}")
                                + b'{"model": "gpt-4o-mini", "messages": [' + b" " * 4096)
    assert status == 401
    assert "requires its local token" in json.loads(body)["error"]["message"]
    assert headers["connection"] == "close"  # the other 400 MB are not read
    assert fake.log == []
    assert no_rows()


def test_it_refuses_a_declared_body_over_the_limit_before_reading_it(guarded, fake, rows):
    server, token = guarded
    status, headers, body = ask(server, head("/v1/chat/completions", f"content-length: {DECLARED}",
                                             f"{HEADER}: {token}") + b"{" + b" " * 4096)
    assert status == 413
    error = json.loads(body)["error"]
    assert error["type"] == "invalid_request_error" and "larger than 32 MB" in error["message"]
    assert headers["connection"] == "close"
    assert fake.log == []
    [event] = rows(1)
    assert (event.status, event.error_class) == ("invalid_request", "http_413")
    assert headers["x-tokenpak-trace-id"] == event.trace_id


def test_it_stops_reading_a_chunked_body_at_the_limit(guarded, fake, rows):
    server, token = guarded
    assert chat(server, **{HEADER: token}).status_code == 200  # warm: imports, pools, ledger
    before = reset_peak(server)
    total = 5 * LIMIT  # what buffering it would hold; read to the end, it would be sent whole
    piece = b"x" * MB
    sent = 0

    def send_all(conn: socket.socket) -> None:
        nonlocal sent
        try:
            conn.sendall(head("/v1/chat/completions", "transfer-encoding: chunked",
                              f"{HEADER}: {token}") + b"6\r\n{\"a\":\"\r\n")
            while sent < total:
                conn.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                sent += len(piece)
            conn.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server closed the connection: what this test expects

    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as conn:
        sender = threading.Thread(target=send_all, args=(conn,))
        sender.start()
        status, headers, body = answer(conn)
        sender.join(60)
    assert status == 413 and "larger than 32 MB" in json.loads(body)["error"]["message"]
    # At most the limit, held once (and a copy while it grows): buffering would take 5 to 10
    # times the limit.
    assert memory(server, "VmHWM") - before < 3 * LIMIT
    assert sent < total  # the server stopped reading: the rest could not be sent
    assert headers["connection"] == "close"
    assert len(fake.log) == 1  # the warm-up's
    assert [(e.status, e.error_class) for e in rows(2)] == [
        ("ok", ""), ("invalid_request", "http_413")]


def test_it_refuses_a_page_body_over_the_limit_before_django_reads_it(server, fake):
    for path in ("/admin/login/", "/dashboard/login/", "/v1/telemetry/events"):
        status, headers, body = ask(server, head(path, f"content-length: {DECLARED}") + b"x" * 9)
        assert (status, body) == (413, b"Request body is larger than 32 MB.")
        assert headers["connection"] == "close"
    # Chunked, on Django's own paths too: refused once past the limit.
    response = httpx.post(server.url + "/admin/login/", timeout=60,
                          content=(b"x" * MB for _ in range(40)))
    assert response.status_code == 413
    assert httpx.get(server.url + "/admin/login/").status_code == 200


def unsent(conn: socket.socket) -> int:
    """Bytes written to conn that the server's side has not acknowledged yet (Linux)."""
    return struct.unpack("I", fcntl.ioctl(conn.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]


def test_it_answers_small_requests_while_a_big_one_is_compressed(start_server, fake, rows):
    server = start_server()
    prose = "The build printed this line, and then the same line again, for a long while. \n"
    text = prose * (MB // len(prose))
    body = json.dumps({"model": "gpt-4o-mini", "messages": [
        {"role": "user", "content": f"file {k}:\n{text}"} for k in range(30)]}).encode()
    assert chat(server).status_code == 200  # warm
    before = reset_peak(server)
    with socket.create_connection(("127.0.0.1", server.port), timeout=120) as conn:
        conn.sendall(head("/v1/chat/completions", f"content-length: {len(body)}", "x-test: big")
                     + body[:-1])
        # Everything but the last byte is in: the server has read it (a request through its event
        # loop after the socket is drained shows it), and holds an incomplete body.
        wait_for(lambda: unsent(conn) == 0)
        assert chat(server).status_code == 200
        conn.sendall(body[-1:])  # now the big body is whole: parsed and compressed from here on
        answered_first = chat(server, "while the big one is compressed").status_code == 200
        began = [h for h in fake.started if h.get("x-test") == "big"]
        status, _, _ = answer(conn)
    assert status == 200
    # The small request went through the server and the provider and came back before the big
    # one even began to go upstream: on the event loop, its compression held everyone up.
    assert answered_first and not began
    [big] = [r for r in fake.log if r.headers.get("x-test") == "big"]
    assert len(big.body) < len(body)  # compressed all the same
    assert [e.status for e in rows(4)] == ["ok"] * 4
    # Bounded by copies of the body: as received, parsed, compressed, re-encoded (str and bytes),
    # and the compressed texts kept for the next turn (not 50 times it, as below).
    assert memory(server, "VmHWM") - before < 12 * len(body)


def test_it_counts_a_body_of_one_repeated_character_in_bounded_memory(start_server, fake, rows):
    server = start_server()
    assert chat(server).status_code == 200  # warm: the tokenizer is loaded with the first count
    rows(1)
    before = reset_peak(server)
    response = chat(server, "a" * (30 * MB))
    assert response.status_code == 200
    # The ledger writer counted its tokens (tiktoken took 30 s and 1.5 GB on such a run)…
    [_, event] = rows(2, timeout=60)
    assert event.status == "ok" and event.usage.tokens_saved == 0
    # …and the server never held more than a few copies of the body.
    assert memory(server, "VmHWM") - before < 8 * 30 * MB
