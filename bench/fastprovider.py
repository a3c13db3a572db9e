"""A fast fake OpenAI + Anthropic upstream for bench/overhead.py: fixed small answers, keep-alive.

    python bench/fastprovider.py PORT

tests/fakeprovider.py is the faithful one (scenarios, cuts, odd chunk boundaries) but runs a
thread per connection; a benchmark needs an upstream that is never the bottleneck, so this one
is a bare asyncio protocol that answers from pre-built bytes. JSON or SSE follows the body's
`"stream": true`; OpenAI's usage chunk is sent only when the request asks for it, as OpenAI does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys

TEXT = ["Hello", " from", " the", " fast", " fake", " provider."]


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _json_response(obj: dict) -> bytes:
    body = json.dumps(obj, separators=(",", ":")).encode()
    return (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            b"x-request-id: req_fast\r\nrequest-id: req_fast\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body))


SSE_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"x-request-id: req_fast\r\nrequest-id: req_fast\r\n"
            b"transfer-encoding: chunked\r\n\r\n")
OPENAI_USAGE = {"prompt_tokens": 21, "completion_tokens": 6, "total_tokens": 27,
                "prompt_tokens_details": {"cached_tokens": 0}}
ANTHROPIC_USAGE = {"input_tokens": 21, "cache_creation_input_tokens": 0,
                   "cache_read_input_tokens": 0, "output_tokens": 6}


def _openai_json(model: str) -> bytes:
    return _json_response({
        "id": "chatcmpl-fast", "object": "chat.completion", "created": 1, "model": model,
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "".join(TEXT)}}],
        "usage": OPENAI_USAGE,
    })


def _openai_events(model: str, usage: bool) -> list[bytes]:
    def data(obj: dict) -> bytes:
        return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

    base = {"id": "chatcmpl-fast", "object": "chat.completion.chunk", "created": 1, "model": model}
    events = [data({**base, "choices": [{"index": 0, "delta": {"role": "assistant"}}]})]
    events += [data({**base, "choices": [{"index": 0, "delta": {"content": t}}]}) for t in TEXT]
    events.append(data({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
    if usage:
        events.append(data({**base, "choices": [], "usage": OPENAI_USAGE}))
    events.append(b"data: [DONE]\n\n")
    return events


def _anthropic_message(model: str) -> dict:
    return {"id": "msg_fast", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": "".join(TEXT)}], "stop_reason": "end_turn",
            "stop_sequence": None, "usage": ANTHROPIC_USAGE}


def _anthropic_events(model: str) -> list[bytes]:
    def ev(name: str, obj: dict) -> bytes:
        return b"event: %s\ndata: %s\n\n" % (name.encode(),
                                             json.dumps(obj, separators=(",", ":")).encode())

    start = {**_anthropic_message(model), "content": [], "stop_reason": None,
             "usage": {**ANTHROPIC_USAGE, "output_tokens": 1}}
    events = [ev("message_start", {"type": "message_start", "message": start}),
              ev("content_block_start", {"type": "content_block_start", "index": 0,
                                         "content_block": {"type": "text", "text": ""}})]
    events += [ev("content_block_delta", {"type": "content_block_delta", "index": 0,
                                          "delta": {"type": "text_delta", "text": t}})
               for t in TEXT]
    events += [ev("content_block_stop", {"type": "content_block_stop", "index": 0}),
               ev("message_delta", {"type": "message_delta",
                                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                    "usage": {"output_tokens": 6}}),
               ev("message_stop", {"type": "message_stop"})]
    return events


_cache: dict[tuple, tuple[bytes, bytes]] = {}


def reply(path: bytes, body: bytes) -> tuple[bytes, bytes]:
    """(first write, rest): a stream's first event goes out before the others, as upstream."""
    stream = b'"stream":true' in body or b'"stream": true' in body
    usage = b'"include_usage":true' in body or b'"include_usage": true' in body
    anthropic = path.endswith(b"/messages")
    model = "claude-haiku-4-5" if anthropic else "gpt-4o-mini"
    key = (anthropic, stream, usage)
    if key not in _cache:
        if not stream:
            whole = _json_response(_anthropic_message(model)) if anthropic else _openai_json(model)
            _cache[key] = (whole, b"")
        else:
            events = _anthropic_events(model) if anthropic else _openai_events(model, usage)
            _cache[key] = (SSE_HEAD + _chunk(events[0]),
                           b"".join(_chunk(e) for e in events[1:]) + b"0\r\n\r\n")
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
