"""A fake OpenAI + Anthropic upstream: a real HTTP/1.1 server on 127.0.0.1.

The proxy under test talks to real sockets, so the fake has to be a real server:
only then do keep-alive, chunk boundaries, half-written events and vanished
clients behave the way they do against the real providers.  Everything is
stdlib so the fixture cannot drift with a third-party server's behaviour.

What each provider says is its wire module's (``tests/fakes/``, shared with
bench/); this module is the HTTP around it: routing a request to its provider,
the ``x-fake-*`` controls, chunking, cuts, pauses and the request log. Over 500 lines because
the controls' reference below is most of it: one place a test writer reads them all.

Per-request behaviour is driven by request headers (not by attributes on the
provider) so that tests running concurrently against one instance cannot
step on each other:

``x-fake-text``
    The assistant text.  Raw UTF-8 bytes are accepted (http.server decodes
    header bytes as latin-1; we undo that).
``x-fake-usage``
    JSON object deep-merged over the route's default usage.
``x-fake-model``, ``x-fake-error-type``
    A JSON string the answer names as its model (instead of the request's) or
    as its error type (in ``status=NNN`` answers and ``stream_error`` events):
    JSON, so that a header can carry a NUL or a lone surrogate.
``x-fake-reply-headers``
    JSON object of headers added to the answer, each value's characters written
    as the latin-1 bytes they stand for (``"\\u001b"`` is an ESC byte).
``x-fake-scenario``
    Comma-separated options: ``status=NNN``, ``split=N``, ``crlf``,
    ``delay=S``, ``cut=K``, ``gate``, ``hang``, ``malformed``,
    ``stream_error``, ``tool_call``, ``late_ping``, ``end=K``, ``linger=S``.
    See ``tests.fakes.wire.Scenario``.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from tests import fakes
from tests.fakes import anthropic as anthropic_wire
from tests.fakes import openai as openai_wire
from tests.fakes.wire import (
    DEFAULT_TEXT,
    TOOL_ARGUMENTS,
    TOOL_NAME,
    Ctx,
    JsonReply,
    Scenario,
    StreamReply,
    dumps,
    header_json,
)

# The names tests import from here; the wire formats themselves live in tests/fakes/.
__all__ = ["ANTHROPIC_DEFAULT_USAGE", "DEFAULT_TEXT", "OPENAI_DEFAULT_USAGE", "TOOL_ARGUMENTS",
           "TOOL_NAME", "FakeProvider", "Received"]

OPENAI_DEFAULT_USAGE = openai_wire.DEFAULT_USAGE
ANTHROPIC_DEFAULT_USAGE = anthropic_wire.DEFAULT_USAGE

# Maximum time the "gate" and "hang" scenarios hold a response, so a test that
# forgets to release them cannot wedge the suite.
GATE_TIMEOUT = 10.0
HANG_TIMEOUT = 30.0


@dataclass
class Received:
    """One request as the fake saw it on the wire."""

    method: str
    path: str  # raw request target, query string included
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", "
    body: bytes
    json: Any | None  # parsed body, or None when empty or not JSON
    peer_port: int = 0  # the caller's port: the same for requests on one kept-alive connection


class FakeProvider:
    """Background-thread HTTP server impersonating OpenAI and Anthropic."""

    def __init__(self) -> None:
        self.url: str = ""
        self.log: list[Received] = []
        # Each request's headers as soon as they arrive, before its body: when a request *began*
        # to reach the provider (log has it once its body is whole).
        self.started: list[dict[str, str]] = []
        self.release = threading.Event()
        self.sent_last = threading.Event()
        self.client_gone = threading.Event()
        self._lock = threading.Lock()
        self._counter = 0
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> FakeProvider:
        if self._server is not None:
            return self
        self._stopping.clear()
        server = _Server(("127.0.0.1", 0), _Handler, self)
        host, port = server.server_address[:2]  # an IPv4 address: (str, int)
        self.url = f"http://{host!s}:{port}"
        self._server = server
        # A short poll interval keeps stop() snappy; the cost is negligible idle wakeups.
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fakeprovider:{port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        # Set first so gated/hung/delayed handlers bail out instead of writing.
        self._stopping.set()
        server.shutdown()
        # Idle keep-alive connections would otherwise keep their handler
        # threads blocked in readline() for as long as the client holds them.
        server.close_all_connections()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = None
        self._thread = None

    def reset(self) -> None:
        with self._lock:
            self.log.clear()
            self.started.clear()
        self.release.clear()
        self.sent_last.clear()
        self.client_gone.clear()

    def __enter__(self) -> FakeProvider:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _record(self, received: Received) -> int:
        with self._lock:
            self.log.append(received)
            self._counter += 1
            return self._counter


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Tests restart providers quickly; don't let TIME_WAIT block a rebind.
    allow_reuse_address = True
    # Concurrency tests open hundreds of connections at once; the default backlog of 5
    # would turn a burst into SYN retries.
    request_queue_size = 1024

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        provider: FakeProvider,
    ) -> None:
        self.provider = provider
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def track(self, conn: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(conn)

    def untrack(self, conn: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(conn)

    def close_all_connections(self) -> None:
        with self._connections_lock:
            conns = list(self._connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients vanishing between keep-alive requests is normal in these
        # tests; a traceback per occurrence would only bury real failures.
        # Anything else is a bug in the fake and must stay loud.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class _ClientGone(Exception):
    """The peer went away while we still had something to say."""


class _Stopping(Exception):
    """stop() was called while a response was in flight."""


# --- HTTP plumbing -----------------------------------------------------------


class _BodyWriter:
    """Writes a body in exactly the pieces the scenario asks for.

    With split=N, bytes are re-cut into N-byte pieces regardless of event
    boundaries (a piece may straddle two events), so a proxy's SSE parser
    sees realistic ragged reads.  Each piece is its own chunk and its own
    socket write.
    """

    def __init__(self, send: Callable[[bytes], None], split: int | None, chunked: bool) -> None:
        self._send = send
        self._split = split
        self._chunked = chunked
        self._pending = b""

    def write(self, data: bytes) -> None:
        if self._split is None:
            self._emit(data)
            return
        self._pending += data
        while len(self._pending) >= self._split:
            piece, self._pending = self._pending[: self._split], self._pending[self._split :]
            self._emit(piece)

    def flush(self) -> None:
        """Push out a partial piece, e.g. before pausing, so the client has everything so far."""
        if self._pending:
            piece, self._pending = self._pending, b""
            self._emit(piece)

    def end(self) -> None:
        self.flush()
        if self._chunked:
            self._send(b"0\r\n\r\n")

    def _emit(self, piece: bytes) -> None:
        if not piece:
            # An empty chunk would terminate the chunked body early.
            return
        if self._chunked:
            self._send(b"%x\r\n%b\r\n" % (len(piece), piece))
        else:
            self._send(piece)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fakeprovider/1"
    sys_version = ""
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Without this, Nagle + delayed ACK can hold a small gated/delayed
        # event back ~40 ms, which makes timing-based tests flaky.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        # One stderr line per request would drown pytest's output.
        return

    def do_GET(self) -> None:
        self._handle()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    @property
    def provider(self) -> FakeProvider:
        return self.server.provider

    def _handle(self) -> None:
        with self.provider._lock:
            self.provider.started.append({k.lower(): v for k, v in self.headers.items()})
        body = self._read_body()
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        try:
            parsed: Any | None = json.loads(body) if body else None
        except ValueError:
            parsed = None
        received = Received(self.command, self.path, headers, body, parsed,
                            self.client_address[1])
        n = self.provider._record(received)
        try:
            self._respond(received, n)
        except _ClientGone:
            if not self.provider._stopping.is_set():
                self.provider.client_gone.set()
            self.close_connection = True
        except _Stopping:
            self.close_connection = True

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    # Skip trailers up to the blank line.
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _respond(self, received: Received, n: int) -> None:
        route_path = urlsplit(received.path).path
        wire = fakes.wire_for(route_path, received.headers)
        request_id = f"req_fake_{n}"
        ids = wire.response_headers(request_id)
        # As the CDN in front of both real providers does: a cookie for whoever called.
        ids["set-cookie"] = f"__cf_bm=caller{n}; path=/; HttpOnly"

        try:
            scenario = Scenario.parse(received.headers.get("x-fake-scenario", ""))
            usage_override = json.loads(received.headers.get("x-fake-usage") or "{}")
            if not isinstance(usage_override, dict):
                raise ValueError("x-fake-usage must be a JSON object")
            extra = json.loads(received.headers.get("x-fake-reply-headers") or "{}")
            if not isinstance(extra, dict):
                raise ValueError("x-fake-reply-headers must be a JSON object")
            ids.update(extra)
        except ValueError as exc:
            self._write_json(wire.bad_request(str(exc), request_id), ids, Scenario())
            return

        if scenario.hang:
            self._wait(None, HANG_TIMEOUT)
            self.close_connection = True
            return
        if scenario.status is not None:
            def error_type(default: str) -> str:
                return header_json(received.headers, "x-fake-error-type", default)

            self._write_json(wire.status_error(scenario.status, request_id, error_type),
                             ids, scenario)
            return

        route = wire.routes.get((received.method, route_path))
        if route is None:
            message = f"Invalid URL ({received.method} {route_path})"
            self._write_json(wire.not_found(message, request_id), ids, scenario)
            return
        if scenario.malformed:
            self._write_json(JsonReply(200, None), ids, scenario, raw=b"{not json")
            return

        body = received.json if isinstance(received.json, dict) else None
        if body is None and received.method == "POST":
            self._write_json(wire.bad_request("Request body must be a JSON object", request_id),
                             ids, scenario)
            return
        ctx = Ctx(n, body or {}, received.headers, _header_text(received.headers),
                  usage_override, scenario)
        reply = route(ctx)
        if isinstance(reply, StreamReply):
            self._write_stream(reply, ids, scenario)
        else:
            self._write_json(reply, ids, scenario)

    def _send(self, data: bytes) -> None:
        if self.provider._stopping.is_set():
            raise _Stopping
        try:
            self.wfile.write(data)
            self.wfile.flush()
        except OSError as exc:
            raise _ClientGone from exc

    def _start(self, status: int, headers: dict[str, str]) -> None:
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
        except OSError as exc:
            raise _ClientGone from exc

    def _write_json(
        self, reply: JsonReply, ids: dict[str, str], scenario: Scenario, raw: bytes | None = None
    ) -> None:
        if scenario.delay:
            self._wait(None, scenario.delay)
        body = raw if raw is not None else dumps(reply.payload).encode()
        self._start(
            reply.status,
            {
                "Content-Type": "application/json",
                "Content-Length": str(len(body)),
                **ids,
                **reply.headers,
            },
        )
        writer = _BodyWriter(self._send, scenario.split, chunked=False)
        if scenario.cut is not None:
            writer.write(body[: len(body) // 2])
            writer.flush()
            self._abort()
            return
        writer.write(body)
        writer.end()
        self.provider.sent_last.set()

    def _write_stream(self, reply: StreamReply, ids: dict[str, str], scenario: Scenario) -> None:
        self._start(
            200,
            {
                "Content-Type": "text/event-stream",
                "Transfer-Encoding": "chunked",
                "Cache-Control": "no-cache",
                **ids,
            },
        )
        writer = _BodyWriter(self._send, scenario.split, chunked=True)
        gated = False
        for i, event in enumerate(reply.events):
            if i and scenario.delay:
                writer.flush()
                self._wait(None, scenario.delay)
            if scenario.end is not None and i == scenario.end:
                break
            if scenario.cut is not None and i == scenario.cut:
                writer.write(event.data[: len(event.data) // 2])
                writer.flush()
                self._abort()
                return
            writer.write(event.data)
            if scenario.gate and event.content and not gated:
                gated = True
                writer.flush()
                self._wait(self.provider.release, GATE_TIMEOUT)
        if scenario.cut is not None:
            # cut beyond the last event: every event went out, but the body
            # never terminates.
            writer.flush()
            self._abort()
            return
        if scenario.linger:
            writer.flush()
            self._wait(None, scenario.linger)
        writer.end()
        self.provider.sent_last.set()

    def _abort(self) -> None:
        # FIN without the terminating zero-length chunk: the client sees a
        # truncated body rather than a clean end of stream.  (A RST could
        # discard bytes the client has not read yet, making tests racy.)
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _wait(self, event: threading.Event | None, timeout: float) -> bool:
        """Wait for `event` (or just `timeout`), noticing stop() and a vanished client.

        Watching the socket while idle lets tests see a client disconnect
        (client_gone) without waiting for the next write to fail.
        """
        deadline = time.monotonic() + timeout
        watch_peer = True
        while True:
            if event is not None and event.is_set():
                return True
            if self.provider._stopping.is_set():
                raise _Stopping
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            step = min(remaining, 0.02)
            if not watch_peer:
                time.sleep(step)
                continue
            readable, _, _ = select.select([self.connection], [], [], step)
            if readable:
                try:
                    peeked = self.connection.recv(1, socket.MSG_PEEK)
                except OSError:
                    peeked = b""
                if not peeked:
                    raise _ClientGone
                # Pipelined bytes are not ours to consume; stop watching so the
                # always-readable socket does not turn this into a busy loop.
                watch_peer = False


def _header_text(headers: dict[str, str]) -> str:
    raw = headers.get("x-fake-text")
    if raw is None:
        return DEFAULT_TEXT
    try:
        # http.server decodes header bytes as latin-1; clients that sent UTF-8
        # bytes meant UTF-8.
        return raw.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return raw
