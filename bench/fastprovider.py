"""A fast fake OpenAI + Anthropic upstream for bench/overhead.py: fixed small answers, keep-alive.

    python bench/fastprovider.py PORT

tests/fakeprovider.py is the faithful one (scenarios, cuts, odd chunk boundaries) but runs a
thread per connection; a benchmark needs an upstream that is never the bottleneck, so this one
is a bare asyncio protocol that answers from pre-built bytes. What it says comes from the same
wire modules as the test fake's (tests/fakes/): JSON or SSE as the body's `"stream": true` asks,
OpenAI's usage chunk only when the request asks for it, as OpenAI does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import fakes
from tests.fakes.wire import Ctx, StreamReply, dumps

# Six words and six output tokens: the answer the benchmark has always timed.
TEXT = "Hello from the fast fake provider."
USAGE = {"openai": {"completion_tokens": 6}, "anthropic": {"output_tokens": 6}}


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _head(kind: bytes, headers: dict[str, str], length: int | None) -> bytes:
    framing = b"transfer-encoding: chunked" if length is None else b"content-length: %d" % length
    extra = b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in headers.items())
    return b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\n%s%s\r\n\r\n" % (kind, extra, framing)


_cache: dict[tuple, tuple[bytes, bytes]] = {}


def reply(path: bytes, body: bytes) -> tuple[bytes, bytes]:
    """(first write, rest): a stream's first event goes out before the others, as upstream."""
    stream = b'"stream":true' in body or b'"stream": true' in body
    usage = b'"include_usage":true' in body or b'"include_usage": true' in body
    key = (path, stream, usage)
    if key not in _cache:
        # Built once per kind of request, from the first one's body (and so its model).
        wire = fakes.wire_for(path.decode(), {})
        ctx = Ctx(0, json.loads(body), text=TEXT, usage_override=USAGE[wire.name], created=1)
        answer = wire.routes[("POST", path.decode())](ctx)
        headers = wire.response_headers("req_fast")
        if isinstance(answer, StreamReply):
            events = [e.data for e in answer.events]
            _cache[key] = (_head(b"text/event-stream", headers, None) + _chunk(events[0]),
                           b"".join(_chunk(e) for e in events[1:]) + b"0\r\n\r\n")
        else:
            data = dumps(answer.payload).encode()
            _cache[key] = (_head(b"application/json", headers, len(data)) + data, b"")
    return _cache[key]


class Upstream(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (The ignore: a TCP server's transport is a Transport; the Protocol API says Base.)
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            length = 0
            at = head.find(b"content-length:")
            if at >= 0:
                length = int(head[at + 15:].split(b"\r\n", 1)[0])
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4:end + 4 + length]
            path = head.split(b" ", 2)[1]
            self.buf = self.buf[end + 4 + length:]
            first, rest = reply(path, body)
            self.transport.write(first)
            if rest:
                asyncio.get_running_loop().call_soon(self.transport.write, rest)


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Upstream, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def run(port: int) -> None:
    try:
        import uvloop

        uvloop.run(serve(port))
    except ImportError:
        asyncio.run(serve(port))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        run(int(sys.argv[1]))
