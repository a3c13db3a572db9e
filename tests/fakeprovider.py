"""A fake OpenAI + Anthropic upstream: a real HTTP/1.1 server on 127.0.0.1.

The proxy under test talks to real sockets, so the fake has to be a real server:
only then do keep-alive, chunk boundaries, half-written events and vanished
clients behave the way they do against the real providers.  Everything is
stdlib so the fixture cannot drift with a third-party server's behaviour.

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
    ``stream_error``, ``tool_call``, ``late_ping``.  See ``_Scenario``.
"""

import base64
import contextlib
import copy
import json
import re
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import urlsplit

DEFAULT_TEXT = "Hello from the fake provider."

OPENAI_DEFAULT_USAGE: dict[str, Any] = {
    "prompt_tokens": 21,
    "completion_tokens": 7,
    "total_tokens": 28,
    "prompt_tokens_details": {"cached_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0},
}

ANTHROPIC_DEFAULT_USAGE: dict[str, Any] = {
    "input_tokens": 21,
    "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 0,
    "output_tokens": 7,
}

RESPONSES_DEFAULT_USAGE: dict[str, Any] = {
    "input_tokens": 21,
    "input_tokens_details": {"cached_tokens": 0},
    "output_tokens": 7,
    "output_tokens_details": {"reasoning_tokens": 0},
    "total_tokens": 28,
}

EMBEDDINGS_DEFAULT_USAGE: dict[str, Any] = {"prompt_tokens": 21, "total_tokens": 21}

COUNT_TOKENS_DEFAULT = 21
EMBEDDING_DIMENSIONS = 8

OPENAI_MODELS: list[dict[str, Any]] = [
    {"id": "gpt-4o-mini", "object": "model", "created": 1721172741, "owned_by": "system"},
    {"id": "gpt-4o", "object": "model", "created": 1715367049, "owned_by": "system"},
]

# The call every tool_call answer makes.
TOOL_NAME = "get_weather"
TOOL_ARGUMENTS: dict[str, Any] = {"city": "Paris"}

ANTHROPIC_MODELS: list[dict[str, Any]] = [
    {
        "type": "model",
        "id": "claude-sonnet-4-5",
        "display_name": "Claude Sonnet 4.5",
        "created_at": "2025-09-29T00:00:00Z",
    },
    {
        "type": "model",
        "id": "claude-haiku-4-5",
        "display_name": "Claude Haiku 4.5",
        "created_at": "2025-10-15T00:00:00Z",
    },
]

# Maximum time the "gate" and "hang" scenarios hold a response, so a test that
# forgets to release them cannot wedge the suite.
GATE_TIMEOUT = 10.0
HANG_TIMEOUT = 30.0

_OPENAI_ERRORS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "model_not_found"),
    409: ("invalid_request_error", None),
    422: ("invalid_request_error", None),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    500: ("server_error", None),
    502: ("server_error", None),
    503: ("server_error", "service_unavailable"),
    504: ("server_error", None),
}

# Status -> type as documented for the Anthropic API.
_ANTHROPIC_ERRORS: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


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

    def start(self) -> "FakeProvider":
        if self._server is not None:
            return self
        self._stopping.clear()
        server = _Server(("127.0.0.1", 0), _Handler, self)
        host, port = cast(tuple[str, int], server.server_address[:2])  # an AF_INET server
        self.url = f"http://{host}:{port}"
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

    def __enter__(self) -> "FakeProvider":
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


@dataclass
class _Scenario:
    """Parsed ``x-fake-scenario``.

    status=NNN    reply NNN with the route's error body (429 adds retry-after: 7)
    split=N       write the body in N-byte pieces, each its own chunk/write;
                  pieces straddle event boundaries unless a pause intervenes
    crlf          SSE lines end with CRLF instead of LF
    delay=S       pause S seconds between events, and before a JSON response
    cut=K         stream: K whole events, half of the next, then FIN with no
                  terminating chunk (K >= event count: all events, no end);
                  JSON: half the body (K ignored)
    gate          stream: after the first content event wait for
                  ``FakeProvider.release`` (at most GATE_TIMEOUT)
    hang          read the request, then say nothing until stop(), the client
                  leaving, or HANG_TIMEOUT; then close
    malformed     200 application/json with body ``{not json``
    stream_error  stream: after the first content event send the provider's
                  mid-stream error event and end the stream cleanly
    tool_call     chat completions and messages answer with a call of TOOL_NAME
                  (TOOL_ARGUMENTS): OpenAI with no content and finish_reason
                  tool_calls; Anthropic with the text block, then a tool_use
                  block, and stop_reason tool_use
    late_ping     Anthropic stream: one more ping between the last
                  content_block_stop and message_delta
    end=K         stream: K whole events, then a clean end of the body (the
                  provider's final event never comes)
    linger=S      stream: after the last event, hold the body open S seconds
                  (or until the client leaves) before ending it
    """

    status: int | None = None
    split: int | None = None
    crlf: bool = False
    delay: float = 0.0
    cut: int | None = None
    gate: bool = False
    hang: bool = False
    malformed: bool = False
    stream_error: bool = False
    tool_call: bool = False
    late_ping: bool = False
    linger: float = 0.0
    end: int | None = None

    @classmethod
    def parse(cls, raw: str) -> "_Scenario":
        sc = cls()
        for item in (part.strip() for part in raw.split(",")):
            if not item:
                continue
            name, _, value = item.partition("=")
            name = name.strip().lower()
            value = value.strip()
            try:
                if name == "status":
                    sc.status = int(value)
                elif name == "split":
                    sc.split = int(value)
                    if sc.split < 1:
                        raise ValueError
                elif name == "delay":
                    sc.delay = float(value)
                elif name == "cut":
                    sc.cut = int(value)
                elif name == "end":
                    sc.end = int(value)
                elif name == "linger":
                    sc.linger = float(value)
                elif name in _FLAGS and not value:
                    setattr(sc, name, True)
                else:
                    raise ValueError
            except ValueError:
                # Fail loudly: a typo in a scenario silently producing a happy
                # response would make the test pass for the wrong reason.
                raise ValueError(f"bad x-fake-scenario option {item!r}") from None
        return sc


_FLAGS = ("crlf", "gate", "hang", "malformed", "stream_error", "tool_call", "late_ping")


@dataclass
class _Ctx:
    req: Received
    n: int
    scenario: _Scenario
    text: str
    usage_override: dict[str, Any]
    body: dict[str, Any]

    @property
    def nl(self) -> str:
        return "\r\n" if self.scenario.crlf else "\n"

    @property
    def model(self) -> str:
        model = self.body.get("model")
        return _header_json(self.req.headers, "x-fake-model",
                            model if isinstance(model, str) else "fake-model")

    def error_type(self, default: str) -> str:
        return _header_json(self.req.headers, "x-fake-error-type", default)


@dataclass
class _Event:
    data: bytes
    # The gate scenario pauses right after the first event marked as content.
    content: bool = False


@dataclass
class _JsonReply:
    status: int
    payload: Any
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _StreamReply:
    events: list[_Event]


_Reply = _JsonReply | _StreamReply


def _dumps(obj: Any) -> str:
    # Compact like the real APIs; raw UTF-8 so split=1 can land inside a
    # multi-byte character, which is exactly what a careless proxy breaks on.
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    if not text.isascii() and re.search("[\ud800-\udfff]", text):
        # A lone surrogate has no UTF-8: escaped (\udc80), as a JSON encoder sends it.
        return json.dumps(obj, separators=(",", ":"))
    return text


def _sse(obj: Any, nl: str, event: str | None = None, content: bool = False) -> _Event:
    data = obj if isinstance(obj, str) else _dumps(obj)
    head = f"event: {event}{nl}" if event else ""
    return _Event(f"{head}data: {data}{nl}{nl}".encode(), content)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _usage(default: dict[str, Any], over: dict[str, Any], parts: tuple[str, str]) -> dict[str, Any]:
    usage = _merge(default, over)
    # Overriding only the token counts should still give a consistent total.
    if "total_tokens" in usage and "total_tokens" not in over:
        usage["total_tokens"] = usage[parts[0]] + usage[parts[1]]
    return usage


def _words(text: str) -> list[str]:
    # Leading-space pieces, like real tokenizers emit; joining gives the text back.
    pieces = re.findall(r"\s*\S+", text)
    tail = text[len("".join(pieces)) :]
    if tail:
        if pieces:
            pieces[-1] += tail
        else:
            pieces = [tail]
    return pieces


def openai_error(message: str, type_: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def anthropic_error(message: str, type_: str, request_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "error", "error": {"type": type_, "message": message}}
    if request_id is not None:
        body["request_id"] = request_id
    return body


def _status_error(status: int, anthropic: bool, request_id: str,
                  error_type: Callable[[str], str] = str) -> _JsonReply:
    headers = {"retry-after": "7"} if status == 429 else {}
    message = f"Fake provider error {status}"
    if anthropic:
        default = "api_error" if status >= 500 else "invalid_request_error"
        payload = anthropic_error(message, error_type(_ANTHROPIC_ERRORS.get(status, default)),
                                  request_id)
    else:
        fallback = ("server_error", None) if status >= 500 else ("invalid_request_error", None)
        type_, code = _OPENAI_ERRORS.get(status, fallback)
        if status == 529:
            type_ = "overloaded_error"
        payload = openai_error(message, error_type(type_), code)
    return _JsonReply(status, payload, headers)


# --- OpenAI ------------------------------------------------------------------


def _openai_chat(ctx: _Ctx) -> _Reply:
    usage = _usage(OPENAI_DEFAULT_USAGE, ctx.usage_override, ("prompt_tokens", "completion_tokens"))
    cid = f"chatcmpl-fake{ctx.n}"
    created = int(time.time())
    if not ctx.body.get("stream"):
        message: dict[str, Any] = {"role": "assistant", "content": ctx.text, "refusal": None,
                                   "annotations": []}
        if ctx.scenario.tool_call:
            message |= {"content": None, "tool_calls": [_openai_tool_call(ctx.n)]}
        return _JsonReply(
            200,
            {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": ctx.model,
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "logprobs": None,
                        "finish_reason": "tool_calls" if ctx.scenario.tool_call else "stop",
                    }
                ],
                "usage": usage,
                "service_tier": "default",
                "system_fingerprint": "fp_fake",
            },
        )

    options = ctx.body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True

    def chunk(choices: list[dict[str, Any]], usage_value: Any = None) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": ctx.model,
            "service_tier": "default",
            "system_fingerprint": "fp_fake",
            "choices": choices,
        }
        # The key is only present at all when include_usage was requested.
        if include_usage:
            obj["usage"] = usage_value
        return obj

    def choice(delta: dict[str, Any], finish: str | None = None) -> list[dict[str, Any]]:
        return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]

    nl = ctx.nl
    if ctx.scenario.tool_call:
        # As OpenAI streams a call: the name first, then the arguments in pieces.
        call = _openai_tool_call(ctx.n)
        arguments = call["function"]["arguments"]
        call["function"]["arguments"] = ""
        first = {"role": "assistant", "content": None, "tool_calls": [{"index": 0, **call}],
                 "refusal": None}
        events = [_sse(chunk(choice(first)), nl, content=True)]
        for i in range(0, len(arguments), 8):
            piece = {"index": 0, "function": {"arguments": arguments[i : i + 8]}}
            events.append(_sse(chunk(choice({"tool_calls": [piece]})), nl))
        events.append(_sse(chunk(choice({}, "tool_calls")), nl))
        if include_usage:
            events.append(_sse(chunk([], usage), nl))
        events.append(_sse("[DONE]", nl))
        return _StreamReply(events)
    events = [_sse(chunk(choice({"role": "assistant", "content": "", "refusal": None})), nl)]
    for i, word in enumerate(_words(ctx.text)):
        events.append(_sse(chunk(choice({"content": word})), nl, content=i == 0))
        if ctx.scenario.stream_error:
            # Mid-stream failures arrive as a bare error object on a data line.
            events.append(
                _sse(
                    openai_error(
                        "The server had an error while processing your request.",
                        ctx.error_type("server_error"),
                    ),
                    nl,
                )
            )
            return _StreamReply(events)
    events.append(_sse(chunk(choice({}, "stop")), nl))
    if include_usage:
        events.append(_sse(chunk([], usage), nl))
    events.append(_sse("[DONE]", nl))
    return _StreamReply(events)


def _openai_tool_call(n: int) -> dict[str, Any]:
    return {
        "id": f"call_fake{n}",
        "type": "function",
        "function": {"name": TOOL_NAME, "arguments": _dumps(TOOL_ARGUMENTS)},
    }


def _openai_embeddings(ctx: _Ctx) -> _Reply:
    raw = ctx.body.get("input")
    inputs = raw if isinstance(raw, list) else [raw]
    as_base64 = ctx.body.get("encoding_format") == "base64"
    data = []
    for i in range(len(inputs)):
        vector = [round(0.1 * (i + 1) + 0.01 * d, 4) for d in range(EMBEDDING_DIMENSIONS)]
        # The openai SDK asks for base64 by default and decodes little-endian float32.
        value: Any = (
            base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            if as_base64
            else vector
        )
        data.append({"object": "embedding", "index": i, "embedding": value})
    usage = _usage(EMBEDDINGS_DEFAULT_USAGE, ctx.usage_override, ("prompt_tokens", "prompt_tokens"))
    if "total_tokens" not in ctx.usage_override:
        usage["total_tokens"] = usage["prompt_tokens"]
    return _JsonReply(200, {"object": "list", "data": data, "model": ctx.model, "usage": usage})


def _openai_responses(ctx: _Ctx) -> _Reply:
    usage = _usage(RESPONSES_DEFAULT_USAGE, ctx.usage_override, ("input_tokens", "output_tokens"))
    rid = f"resp_fake{ctx.n}"
    mid = f"msg_fake{ctx.n}"
    created = int(time.time())
    part_done = {"type": "output_text", "text": ctx.text, "annotations": [], "logprobs": []}
    item_done = {
        "id": mid,
        "type": "message",
        "status": "completed",
        "role": "assistant",
        "content": [part_done],
    }

    def response(status: str, output: list[Any], usage_value: Any) -> dict[str, Any]:
        return {
            "id": rid,
            "object": "response",
            "created_at": created,
            "status": status,
            "error": None,
            "incomplete_details": None,
            "instructions": None,
            "max_output_tokens": None,
            "model": ctx.model,
            "output": output,
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "store": True,
            "temperature": 1.0,
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": usage_value,
            "user": None,
            "metadata": {},
        }

    if not ctx.body.get("stream"):
        return _JsonReply(200, response("completed", [item_done], usage))

    nl = ctx.nl
    events: list[_Event] = []

    def emit(type_: str, content: bool = False, **fields: Any) -> None:
        events.append(
            _sse({"type": type_, "sequence_number": len(events), **fields}, nl, type_, content)
        )

    emit("response.created", response=response("in_progress", [], None))
    emit("response.in_progress", response=response("in_progress", [], None))
    emit(
        "response.output_item.added",
        output_index=0,
        item={
            "id": mid,
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        },
    )
    emit(
        "response.content_part.added",
        item_id=mid,
        output_index=0,
        content_index=0,
        part={"type": "output_text", "text": "", "annotations": [], "logprobs": []},
    )
    for i, word in enumerate(_words(ctx.text)):
        emit(
            "response.output_text.delta",
            content=i == 0,
            item_id=mid,
            output_index=0,
            content_index=0,
            delta=word,
            logprobs=[],
        )
        if ctx.scenario.stream_error:
            emit(
                "error",
                code="server_error",
                message="The server had an error while processing your request.",
                param=None,
            )
            return _StreamReply(events)
    emit(
        "response.output_text.done",
        item_id=mid,
        output_index=0,
        content_index=0,
        text=ctx.text,
        logprobs=[],
    )
    emit("response.content_part.done", item_id=mid, output_index=0, content_index=0, part=part_done)
    emit("response.output_item.done", output_index=0, item=item_done)
    emit("response.completed", response=response("completed", [item_done], usage))
    return _StreamReply(events)


def _models(ctx: _Ctx) -> _Reply:
    if "anthropic-version" in ctx.req.headers:
        return _JsonReply(
            200,
            {
                "data": ANTHROPIC_MODELS,
                "has_more": False,
                "first_id": ANTHROPIC_MODELS[0]["id"],
                "last_id": ANTHROPIC_MODELS[-1]["id"],
            },
        )
    return _JsonReply(200, {"object": "list", "data": OPENAI_MODELS})


# --- Anthropic ---------------------------------------------------------------


def _anthropic_messages(ctx: _Ctx) -> _Reply:
    usage = _merge(ANTHROPIC_DEFAULT_USAGE, ctx.usage_override)
    mid = f"msg_fake{ctx.n}"
    if not ctx.body.get("stream"):
        content: list[dict[str, Any]] = [{"type": "text", "text": ctx.text}]
        if ctx.scenario.tool_call:
            content.append(_anthropic_tool_use(ctx.n, TOOL_ARGUMENTS))
        return _JsonReply(
            200,
            {
                "id": mid,
                "type": "message",
                "role": "assistant",
                "model": ctx.model,
                "content": content,
                "stop_reason": "tool_use" if ctx.scenario.tool_call else "end_turn",
                "stop_sequence": None,
                "usage": usage,
            },
        )

    nl = ctx.nl
    # message_start reports the input side up front and a placeholder output
    # count; the real total only arrives in message_delta.
    start_usage = {**usage, "output_tokens": 1}
    events = [
        _sse(
            {
                "type": "message_start",
                "message": {
                    "id": mid,
                    "type": "message",
                    "role": "assistant",
                    "model": ctx.model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": start_usage,
                },
            },
            nl,
            "message_start",
        ),
        _sse(
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
            nl,
            "content_block_start",
        ),
        _sse({"type": "ping"}, nl, "ping"),
    ]
    for i, word in enumerate(_words(ctx.text)):
        delta = {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": word},
        }
        events.append(_sse(delta, nl, "content_block_delta", content=i == 0))
        if ctx.scenario.stream_error:
            events.append(_sse(anthropic_error("Overloaded", ctx.error_type("overloaded_error")),
                               nl, "error"))
            return _StreamReply(events)
    events.append(_sse({"type": "content_block_stop", "index": 0}, nl, "content_block_stop"))
    if ctx.scenario.tool_call:
        # As Anthropic streams a call: the block with empty input, then the input as JSON pieces.
        start = {"type": "content_block_start", "index": 1,
                 "content_block": _anthropic_tool_use(ctx.n, {})}
        events.append(_sse(start, nl, "content_block_start"))
        arguments = _dumps(TOOL_ARGUMENTS)
        for i in range(0, len(arguments), 8):
            delta = {"type": "content_block_delta", "index": 1,
                     "delta": {"type": "input_json_delta", "partial_json": arguments[i : i + 8]}}
            events.append(_sse(delta, nl, "content_block_delta"))
        events.append(_sse({"type": "content_block_stop", "index": 1}, nl, "content_block_stop"))
    if ctx.scenario.late_ping:
        events.append(_sse({"type": "ping"}, nl, "ping"))
    stop_reason = "tool_use" if ctx.scenario.tool_call else "end_turn"
    events += [
        _sse(
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": usage["output_tokens"]},
            },
            nl,
            "message_delta",
        ),
        _sse({"type": "message_stop"}, nl, "message_stop"),
    ]
    return _StreamReply(events)


def _anthropic_tool_use(n: int, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": f"toolu_fake{n}", "name": TOOL_NAME, "input": arguments}


def _anthropic_count_tokens(ctx: _Ctx) -> _Reply:
    count = ctx.usage_override.get("input_tokens", COUNT_TOKENS_DEFAULT)
    return _JsonReply(200, {"input_tokens": count})


_ROUTES: dict[tuple[str, str], Callable[[_Ctx], _Reply]] = {
    ("POST", "/v1/chat/completions"): _openai_chat,
    ("POST", "/v1/embeddings"): _openai_embeddings,
    ("POST", "/v1/responses"): _openai_responses,
    ("GET", "/v1/models"): _models,
    ("POST", "/v1/messages"): _anthropic_messages,
    ("POST", "/v1/messages/count_tokens"): _anthropic_count_tokens,
}


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
        anthropic = route_path.startswith("/v1/messages") or (
            route_path == "/v1/models" and "anthropic-version" in received.headers
        )
        request_id = f"req_fake_{n}"
        if anthropic:
            ids = {"request-id": request_id, "anthropic-ratelimit-requests-remaining": "99"}
        else:
            ids = {"x-request-id": request_id, "x-ratelimit-remaining-requests": "99"}
        # As the CDN in front of both real providers does: a cookie for whoever called.
        ids["set-cookie"] = f"__cf_bm=caller{n}; path=/; HttpOnly"

        try:
            scenario = _Scenario.parse(received.headers.get("x-fake-scenario", ""))
            usage_override = json.loads(received.headers.get("x-fake-usage") or "{}")
            if not isinstance(usage_override, dict):
                raise ValueError("x-fake-usage must be a JSON object")
            extra = json.loads(received.headers.get("x-fake-reply-headers") or "{}")
            if not isinstance(extra, dict):
                raise ValueError("x-fake-reply-headers must be a JSON object")
            ids.update(extra)
        except ValueError as exc:
            self._write_json(_bad_request(str(exc), anthropic, request_id), ids, _Scenario())
            return

        if scenario.hang:
            self._wait(None, HANG_TIMEOUT)
            self.close_connection = True
            return
        if scenario.status is not None:
            def error_type(default: str) -> str:
                return _header_json(received.headers, "x-fake-error-type", default)

            self._write_json(_status_error(scenario.status, anthropic, request_id, error_type),
                             ids, scenario)
            return

        route = _ROUTES.get((received.method, route_path))
        if route is None:
            message = f"Invalid URL ({received.method} {route_path})"
            payload = (
                anthropic_error(message, "not_found_error", request_id)
                if anthropic
                else openai_error(message, "invalid_request_error")
            )
            self._write_json(_JsonReply(404, payload), ids, scenario)
            return
        if scenario.malformed:
            self._write_json(_JsonReply(200, None), ids, scenario, raw=b"{not json")
            return

        body = received.json if isinstance(received.json, dict) else None
        if body is None and received.method == "POST":
            self._write_json(
                _bad_request("Request body must be a JSON object", anthropic, request_id),
                ids,
                scenario,
            )
            return
        ctx = _Ctx(
            received, n, scenario, _header_text(received.headers), usage_override, body or {}
        )
        reply = route(ctx)
        if isinstance(reply, _StreamReply):
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
        self, reply: _JsonReply, ids: dict[str, str], scenario: _Scenario, raw: bytes | None = None
    ) -> None:
        if scenario.delay:
            self._wait(None, scenario.delay)
        body = raw if raw is not None else _dumps(reply.payload).encode()
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

    def _write_stream(self, reply: _StreamReply, ids: dict[str, str], scenario: _Scenario) -> None:
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


def _bad_request(message: str, anthropic: bool, request_id: str) -> _JsonReply:
    if anthropic:
        return _JsonReply(400, anthropic_error(message, "invalid_request_error", request_id))
    return _JsonReply(400, openai_error(message, "invalid_request_error"))


def _header_json(headers: dict[str, str], name: str, default: Any) -> Any:
    raw = headers.get(name)
    return default if raw is None else json.loads(raw)


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
