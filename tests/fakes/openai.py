"""OpenAI's wire format, for the test fake and the benchmark: chat completions, embeddings, the
Responses API and the model list, JSON and SSE, with usage (cached and reasoning tokens) and
OpenAI's error bodies. Shapes follow the API reference and what the official SDK parses."""

from __future__ import annotations

import base64
import struct
import time
from collections.abc import Callable
from typing import Any, ClassVar

from tests.fakes.wire import (
    TOOL_ARGUMENTS,
    TOOL_NAME,
    Ctx,
    Event,
    JsonReply,
    Reply,
    Route,
    StreamReply,
    Wire,
    dumps,
    sse,
    usage_with_total,
    words,
)

DEFAULT_USAGE: dict[str, Any] = {
    "prompt_tokens": 21,
    "completion_tokens": 7,
    "total_tokens": 28,
    "prompt_tokens_details": {"cached_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0},
}

RESPONSES_DEFAULT_USAGE: dict[str, Any] = {
    "input_tokens": 21,
    "input_tokens_details": {"cached_tokens": 0},
    "output_tokens": 7,
    "output_tokens_details": {"reasoning_tokens": 0},
    "total_tokens": 28,
}

EMBEDDINGS_DEFAULT_USAGE: dict[str, Any] = {"prompt_tokens": 21, "total_tokens": 21}

EMBEDDING_DIMENSIONS = 8

MODELS: list[dict[str, Any]] = [
    {"id": "gpt-4o-mini", "object": "model", "created": 1721172741, "owned_by": "system"},
    {"id": "gpt-4o", "object": "model", "created": 1715367049, "owned_by": "system"},
]

# Status -> (type, code).
ERRORS: dict[int, tuple[str, str | None]] = {
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

# The error a stream_error stream ends with.
STREAM_ERROR_TYPE = "server_error"
STREAM_ERROR_MESSAGE = "The server had an error while processing your request."


def error(message: str, type_: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def chat(ctx: Ctx) -> Reply:
    """Chat completions: the usage chunk only when the request asks for it, as OpenAI sends."""
    usage = usage_with_total(DEFAULT_USAGE, ctx.usage_override,
                             ("prompt_tokens", "completion_tokens"))
    cid = f"chatcmpl-fake{ctx.n}"
    created = int(time.time()) if ctx.created is None else ctx.created
    if not ctx.body.get("stream"):
        message: dict[str, Any] = {"role": "assistant", "content": ctx.text, "refusal": None,
                                   "annotations": []}
        if ctx.scenario.tool_call:
            message |= {"content": None, "tool_calls": [_tool_call(ctx.n)]}
        return JsonReply(
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
        call = _tool_call(ctx.n)
        arguments = call["function"]["arguments"]
        call["function"]["arguments"] = ""
        first = {"role": "assistant", "content": None, "tool_calls": [{"index": 0, **call}],
                 "refusal": None}
        events = [sse(chunk(choice(first)), nl, content=True)]
        for i in range(0, len(arguments), 8):
            piece = {"index": 0, "function": {"arguments": arguments[i : i + 8]}}
            events.append(sse(chunk(choice({"tool_calls": [piece]})), nl))
        events.append(sse(chunk(choice({}, "tool_calls")), nl))
        if include_usage:
            events.append(sse(chunk([], usage), nl))
        events.append(sse("[DONE]", nl))
        return StreamReply(events)
    events = [sse(chunk(choice({"role": "assistant", "content": "", "refusal": None})), nl)]
    for i, word in enumerate(words(ctx.text)):
        events.append(sse(chunk(choice({"content": word})), nl, content=i == 0))
        if ctx.scenario.stream_error:
            # Mid-stream failures arrive as a bare error object on a data line.
            events.append(sse(error(STREAM_ERROR_MESSAGE, ctx.error_type(STREAM_ERROR_TYPE)), nl))
            return StreamReply(events)
    events.append(sse(chunk(choice({}, "stop")), nl))
    if include_usage:
        events.append(sse(chunk([], usage), nl))
    events.append(sse("[DONE]", nl))
    return StreamReply(events)


def _tool_call(n: int) -> dict[str, Any]:
    return {
        "id": f"call_fake{n}",
        "type": "function",
        "function": {"name": TOOL_NAME, "arguments": dumps(TOOL_ARGUMENTS)},
    }


def embeddings(ctx: Ctx) -> Reply:
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
    usage = usage_with_total(EMBEDDINGS_DEFAULT_USAGE, ctx.usage_override,
                             ("prompt_tokens", "prompt_tokens"))
    if "total_tokens" not in ctx.usage_override:
        usage["total_tokens"] = usage["prompt_tokens"]
    return JsonReply(200, {"object": "list", "data": data, "model": ctx.model, "usage": usage})


def responses(ctx: Ctx) -> Reply:
    """The Responses API: usage in the final response.completed event."""
    usage = usage_with_total(RESPONSES_DEFAULT_USAGE, ctx.usage_override,
                             ("input_tokens", "output_tokens"))
    rid = f"resp_fake{ctx.n}"
    mid = f"msg_fake{ctx.n}"
    created = int(time.time()) if ctx.created is None else ctx.created
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
        return JsonReply(200, response("completed", [item_done], usage))

    nl = ctx.nl
    events: list[Event] = []

    def emit(type_: str, content: bool = False, **fields: Any) -> None:
        events.append(
            sse({"type": type_, "sequence_number": len(events), **fields}, nl, type_, content)
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
    for i, word in enumerate(words(ctx.text)):
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
            emit("error", code="server_error", message=STREAM_ERROR_MESSAGE, param=None)
            return StreamReply(events)
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
    return StreamReply(events)


def models(ctx: Ctx) -> Reply:
    return JsonReply(200, {"object": "list", "data": MODELS})


class OpenAIWire(Wire):
    name = "openai"
    routes: ClassVar[dict[tuple[str, str], Route]] = {
        ("POST", "/v1/chat/completions"): chat,
        ("POST", "/v1/embeddings"): embeddings,
        ("POST", "/v1/responses"): responses,
        ("GET", "/v1/models"): models,
    }
    request_id_header = "x-request-id"
    ratelimit_header = "x-ratelimit-remaining-requests"
    reports = frozenset({"cache_read", "reasoning"})
    stream_error_type = STREAM_ERROR_TYPE
    stream_error_message = STREAM_ERROR_MESSAGE

    def claims(self, path: str, headers: dict[str, str]) -> bool:
        return any(path == route_path for _, route_path in self.routes)

    def error(self, message: str, type_: str, request_id: str | None = None) -> dict[str, Any]:
        return error(message, type_)  # OpenAI's body carries no request id

    def status_error(self, status: int, request_id: str,
                     error_type: Callable[[str], str] = str) -> JsonReply:
        headers = {"retry-after": "7"} if status == 429 else {}
        default = ("server_error", None) if status >= 500 else ("invalid_request_error", None)
        type_, code = ERRORS.get(status, default)
        if status == 529:
            type_ = "overloaded_error"
        payload = error(f"Fake provider error {status}", error_type(type_), code)
        return JsonReply(status, payload, headers)

    def not_found(self, message: str, request_id: str) -> JsonReply:
        return JsonReply(404, error(message, "invalid_request_error"))

    def usage(self, *, input: int, output: int, cache_read: int = 0, cache_write: int = 0,
              reasoning: int = 0) -> dict[str, Any]:
        if cache_write:
            raise ValueError("OpenAI does not report cache writes")
        # prompt_tokens counts cached tokens too, as TokenPak's input does.
        return {"prompt_tokens": input, "completion_tokens": output,
                "prompt_tokens_details": {"cached_tokens": cache_read},
                "completion_tokens_details": {"reasoning_tokens": reasoning}}


WIRE = OpenAIWire()
