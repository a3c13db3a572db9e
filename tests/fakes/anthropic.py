"""Anthropic's wire format, for the test fake and the benchmark: messages (JSON, and SSE in the
documented event order), count_tokens and the model list, with usage (cache reads and writes)
and Anthropic's error bodies. Shapes follow the API reference and what the official SDK parses."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from tests.fakes.wire import (
    TOOL_ARGUMENTS,
    TOOL_NAME,
    Ctx,
    JsonReply,
    Reply,
    Route,
    StreamReply,
    Wire,
    dumps,
    merge,
    sse,
    words,
)

DEFAULT_USAGE: dict[str, Any] = {
    "input_tokens": 21,
    "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 0,
    "output_tokens": 7,
}

COUNT_TOKENS_DEFAULT = 21

MODELS: list[dict[str, Any]] = [
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

# Status -> type as documented for the Anthropic API.
ERRORS: dict[int, str] = {
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

# The error a stream_error stream ends with.
STREAM_ERROR_TYPE = "overloaded_error"
STREAM_ERROR_MESSAGE = "Overloaded"


def error(message: str, type_: str, request_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "error", "error": {"type": type_, "message": message}}
    if request_id is not None:
        body["request_id"] = request_id
    return body


def messages(ctx: Ctx) -> Reply:
    """Messages; a stream states input up front (message_start) and the output count last."""
    usage = merge(DEFAULT_USAGE, ctx.usage_override)
    mid = f"msg_fake{ctx.n}"
    if not ctx.body.get("stream"):
        content: list[dict[str, Any]] = [{"type": "text", "text": ctx.text}]
        if ctx.scenario.tool_call:
            content.append(_tool_use(ctx.n, TOOL_ARGUMENTS))
        return JsonReply(
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
        sse(
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
        sse(
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
            nl,
            "content_block_start",
        ),
        sse({"type": "ping"}, nl, "ping"),
    ]
    for i, word in enumerate(words(ctx.text)):
        delta = {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": word},
        }
        events.append(sse(delta, nl, "content_block_delta", content=i == 0))
        if ctx.scenario.stream_error:
            events.append(sse(error(STREAM_ERROR_MESSAGE, ctx.error_type(STREAM_ERROR_TYPE)),
                              nl, "error"))
            return StreamReply(events)
    events.append(sse({"type": "content_block_stop", "index": 0}, nl, "content_block_stop"))
    if ctx.scenario.tool_call:
        # As Anthropic streams a call: the block with empty input, then the input as JSON pieces.
        start = {"type": "content_block_start", "index": 1,
                 "content_block": _tool_use(ctx.n, {})}
        events.append(sse(start, nl, "content_block_start"))
        arguments = dumps(TOOL_ARGUMENTS)
        for i in range(0, len(arguments), 8):
            delta = {"type": "content_block_delta", "index": 1,
                     "delta": {"type": "input_json_delta", "partial_json": arguments[i : i + 8]}}
            events.append(sse(delta, nl, "content_block_delta"))
        events.append(sse({"type": "content_block_stop", "index": 1}, nl, "content_block_stop"))
    if ctx.scenario.late_ping:
        events.append(sse({"type": "ping"}, nl, "ping"))
    stop_reason = "tool_use" if ctx.scenario.tool_call else "end_turn"
    events += [
        sse(
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": usage["output_tokens"]},
            },
            nl,
            "message_delta",
        ),
        sse({"type": "message_stop"}, nl, "message_stop"),
    ]
    return StreamReply(events)


def _tool_use(n: int, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": f"toolu_fake{n}", "name": TOOL_NAME, "input": arguments}


def count_tokens(ctx: Ctx) -> Reply:
    count = ctx.usage_override.get("input_tokens", COUNT_TOKENS_DEFAULT)
    return JsonReply(200, {"input_tokens": count})


def models(ctx: Ctx) -> Reply:
    return JsonReply(
        200,
        {
            "data": MODELS,
            "has_more": False,
            "first_id": MODELS[0]["id"],
            "last_id": MODELS[-1]["id"],
        },
    )


class AnthropicWire(Wire):
    name = "anthropic"
    routes: ClassVar[dict[tuple[str, str], Route]] = {
        ("POST", "/v1/messages"): messages,
        ("POST", "/v1/messages/count_tokens"): count_tokens,
        ("GET", "/v1/models"): models,
    }
    request_id_header = "request-id"
    ratelimit_header = "anthropic-ratelimit-requests-remaining"
    reports = frozenset({"cache_read", "cache_write"})
    stream_error_type = STREAM_ERROR_TYPE
    stream_error_message = STREAM_ERROR_MESSAGE

    def claims(self, path: str, headers: dict[str, str]) -> bool:
        # /v1/models is both providers' path: the SDK's anthropic-version header tells them apart.
        return path.startswith("/v1/messages") or (
            path == "/v1/models" and "anthropic-version" in headers
        )

    def error(self, message: str, type_: str, request_id: str | None = None) -> dict[str, Any]:
        return error(message, type_, request_id)

    def status_error(self, status: int, request_id: str,
                     error_type: Callable[[str], str] = str) -> JsonReply:
        headers = {"retry-after": "7"} if status == 429 else {}
        default = "api_error" if status >= 500 else "invalid_request_error"
        payload = error(f"Fake provider error {status}",
                        error_type(ERRORS.get(status, default)), request_id)
        return JsonReply(status, payload, headers)

    def not_found(self, message: str, request_id: str) -> JsonReply:
        return JsonReply(404, error(message, "not_found_error", request_id))

    def usage(self, *, input: int, output: int, cache_read: int = 0, cache_write: int = 0,
              reasoning: int = 0) -> dict[str, Any]:
        if reasoning:
            raise ValueError("Anthropic does not report reasoning tokens apart from output")
        # input_tokens leaves out what was read from or written to the cache.
        return {"input_tokens": input - cache_read - cache_write,
                "cache_read_input_tokens": cache_read,
                "cache_creation_input_tokens": cache_write, "output_tokens": output}


WIRE = AnthropicWire()
