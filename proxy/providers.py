"""Provider adapters: what differs between OpenAI and Anthropic, and nothing else.

Each adapter knows its upstream base URL, its error shape, its request-id header, where usage
lives in a JSON body, and how to read usage from its stream (a `StreamTap`). A third provider
is one more class here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from django.conf import settings
from django.http import HttpResponse

from proxy import footer
from proxy.sse import parse_event
from telemetry import tokens
from telemetry.usage import TokenUsage
from tokenpak_site.conf import Fallback

_USAGE_NULL = re.compile(rb',\s*"usage"\s*:\s*null|"usage"\s*:\s*null\s*,?')
_MODEL = re.compile(rb'"model"\s*:\s*"([^"\\]{1,128})"')


def _json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None


class StreamTap:
    """Reads one provider stream on the side; `event()` returns the bytes to forward."""

    def __init__(self, model: str, stats_footer: footer.StreamFooter | None = None) -> None:
        self.model = model
        self.stats_footer = stats_footer  # adds TokenPak's footer line to the answer's end
        self.usage: TokenUsage | None = None
        self.complete = False  # the provider said the response was finished
        self.error_class = ""  # an error event inside a 200 stream
        self.response_model = ""
        self.seen: list[bytes] = []  # delta payloads, parsed only if usage never arrives

    def event(self, raw: bytes) -> bytes:
        out = self.read(raw)
        return self.stats_footer.relay(out) if self.stats_footer and out else out

    def flush(self) -> bytes:
        """What the footer still holds back when the stream stops early: forward it first."""
        return self.stats_footer.flush() if self.stats_footer else b""

    def read(self, raw: bytes) -> bytes:
        """Take what the ledger needs from one event; return the bytes the provider meant."""
        raise NotImplementedError

    def delta_text(self, payload: Any) -> str:
        raise NotImplementedError

    @property
    def needs_estimate(self) -> bool:
        return self.usage is None

    def estimate(self, count_input: Callable[[], int]) -> TokenUsage:
        """Usage for a stream that ended early: what the provider said, the rest counted."""
        base = self.usage or TokenUsage(input_tokens=count_input())
        text = "".join(self.delta_text(_json(d)) for d in self.seen)
        return replace(base, output_tokens=tokens.count(text, self.model), estimated=True)


class OpenAITap(StreamTap):
    """Chat completions chunks, and Responses API events (usage in response.completed)."""

    def __init__(
        self, model: str, strip_usage: bool, stats_footer: footer.StreamFooter | None
    ) -> None:
        super().__init__(model, stats_footer)
        # True when TokenPak added stream_options.include_usage: the client must not see
        # the extra usage chunk or the "usage": null TokenPak's request caused.
        self.strip_usage = strip_usage

    def read(self, raw: bytes) -> bytes:
        name, data = parse_event(raw)
        if data == b"[DONE]":
            self.complete = True
            return raw
        if not self.response_model:
            m = _MODEL.search(data)
            if m:
                # The provider's bytes: not always UTF-8, never a reason to break the stream.
                self.response_model = m.group(1).decode("utf-8", "replace")
        if b'"usage"' in data and _USAGE_NULL.search(data) is None:
            payload = _json(data)
            if isinstance(payload, dict):
                usage = payload.get("usage")
                if usage is None and isinstance(payload.get("response"), dict):
                    usage = payload["response"].get("usage")
                if isinstance(usage, dict):
                    self.usage = TokenUsage.from_openai(usage)
                    if self.strip_usage and payload.get("choices") == []:
                        return b""
        elif b'"error"' in data:
            payload = _json(data)
            if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
                self.error_class = str(payload["error"].get("type") or "error")
        else:
            self.seen.append(data)
        if name in ("response.completed", "response.incomplete", "response.failed"):
            self.complete = True
        if self.strip_usage and b'"usage"' in data:
            return _USAGE_NULL.sub(b"", raw, count=1)
        return raw

    def delta_text(self, payload: Any) -> str:
        if not isinstance(payload, dict):
            return ""
        if isinstance(payload.get("delta"), str):  # Responses API text deltas
            return payload["delta"]
        parts: list[str] = []
        for choice in payload.get("choices") or []:
            delta = choice.get("delta") or {}
            for key in ("content", "reasoning_content", "refusal"):
                if isinstance(delta.get(key), str):
                    parts.append(delta[key])
            for call in delta.get("tool_calls") or []:
                fn = call.get("function") or {}
                parts.append(str(fn.get("name") or "") + str(fn.get("arguments") or ""))
        return "".join(parts)


class AnthropicTap(StreamTap):
    def __init__(self, model: str, stats_footer: footer.StreamFooter | None) -> None:
        super().__init__(model, stats_footer)
        self.final_output = False  # a message_delta (cumulative output count) has arrived

    def read(self, raw: bytes) -> bytes:
        name, data = parse_event(raw)
        if name in ("content_block_delta", "content_block_start"):  # start: a tool call's name
            self.seen.append(data)
        elif name == "message_start":
            payload = _json(data)
            message = payload.get("message") if isinstance(payload, dict) else None
            if isinstance(message, dict):
                self.response_model = str(message.get("model") or "")
                if isinstance(message.get("usage"), dict):
                    self.usage = TokenUsage.from_anthropic(message["usage"])
        elif name == "message_delta":
            payload = _json(data)
            usage = payload.get("usage") if isinstance(payload, dict) else None
            if isinstance(usage, dict):
                self._merge(usage)
        elif name == "message_stop":
            self.complete = True
        elif name == "error":
            payload = _json(data)
            error = payload.get("error") if isinstance(payload, dict) else None
            self.error_class = str(error.get("type") if isinstance(error, dict) else "error")
        return raw

    def _merge(self, delta_usage: dict) -> None:
        # message_delta usage is cumulative: the latest value replaces, never adds.
        current = self.usage or TokenUsage()
        start = {
            "input_tokens": current.uncached_input_tokens,
            "cache_read_input_tokens": current.cache_read_tokens,
            "cache_creation_input_tokens": current.cache_write_tokens,
            "output_tokens": current.output_tokens,
        }
        start.update({k: v for k, v in delta_usage.items() if v is not None})
        if "cache_creation" not in delta_usage and current.cache_write_1h_tokens:
            start["cache_creation"] = {
                "ephemeral_1h_input_tokens": current.cache_write_1h_tokens,
                "ephemeral_5m_input_tokens": current.cache_write_5m_tokens,
            }
        self.usage = TokenUsage.from_anthropic(start)
        self.final_output = True

    @property
    def needs_estimate(self) -> bool:
        # message_start carries exact input; output is exact only once message_delta arrived.
        return self.usage is None or not self.final_output

    def delta_text(self, payload: Any) -> str:
        if not isinstance(payload, dict):
            return ""
        delta = payload.get("delta") or {}
        for key in ("text", "partial_json", "thinking"):
            if isinstance(delta.get(key), str):
                return delta[key]
        return ""


class Provider:
    name: ClassVar[str]
    request_id_header: ClassVar[str]
    quota_error: ClassVar[str]  # error type of a request a budget blocked

    @property
    def base_url(self) -> str:
        raise NotImplementedError

    @property
    def fallbacks(self) -> tuple[Fallback, ...]:
        raise NotImplementedError

    def with_key(self, headers: list[tuple[str, str]], key: str) -> list[tuple[str, str]]:
        """headers with the client's credential replaced by a fallback's own key."""
        raise NotImplementedError

    def error_body(self, status: int, message: str, error_type: str) -> dict:
        raise NotImplementedError

    _types: ClassVar[dict[int, str]]
    _server_error: ClassVar[str]
    _parse_usage: ClassVar[Callable[[dict], TokenUsage]]

    def error_type(self, status: int) -> str:
        default = self._server_error if status >= 500 else "invalid_request_error"
        return self._types.get(status, default)

    def error(self, status: int, message: str, error_type: str = "") -> HttpResponse:
        body = self.error_body(status, message, error_type or self.error_type(status))
        return HttpResponse(json.dumps(body), status=status, content_type="application/json")

    def usage_from_body(self, body: Any) -> TokenUsage | None:
        if isinstance(body, dict) and isinstance(body.get("usage"), dict):
            return type(self)._parse_usage(body["usage"])
        return None

    def error_class_from_body(self, body: Any) -> str:
        raise NotImplementedError

    def add_footer(self, answer: Any, text: str) -> bool:
        """Append the stats footer to a JSON answer in place; True when the answer changed."""
        raise NotImplementedError

    def tap(self, model: str, strip_usage: bool, footer_text: str = "") -> StreamTap:
        raise NotImplementedError

    def cut_event(self, message: str) -> bytes:
        """The event that ends a stream the provider cut, so the client's SDK raises."""
        raise NotImplementedError

    def estimate_input(self, request: Any, model: str) -> int:
        """Local count of a request's text, for streams cut before usage arrived."""
        if not isinstance(request, dict):
            return 0
        texts: list[str] = []
        _collect_text(request.get("system"), texts)
        _collect_text(request.get("messages"), texts)
        _collect_text(request.get("input"), texts)
        _collect_text(request.get("tools"), texts)
        return tokens.count("\n".join(texts), model)


def _collect_text(value: Any, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, list):
        for item in value:
            _collect_text(item, out)
    elif isinstance(value, dict):
        for key, item in value.items():
            if key in ("text", "content", "input", "arguments", "description", "name"):
                _collect_text(item, out)
            elif key in ("parameters", "input_schema", "function"):
                out.append(json.dumps(item))


class OpenAI(Provider):
    name = "openai"
    request_id_header = "x-request-id"
    quota_error = "insufficient_quota"  # what OpenAI answers when an account's quota is spent
    _server_error = "server_error"
    _parse_usage = TokenUsage.from_openai
    _types: ClassVar[dict[int, str]] = {
        400: "invalid_request_error",
        401: "authentication_error",
        404: "not_found_error",
        413: "invalid_request_error",
        429: "rate_limit_error",
        502: "upstream_error",
        504: "timeout_error",
    }

    @property
    def base_url(self) -> str:
        return settings.OPENAI_BASE_URL

    @property
    def fallbacks(self) -> tuple[Fallback, ...]:
        return settings.OPENAI_FALLBACKS

    def with_key(self, headers: list[tuple[str, str]], key: str) -> list[tuple[str, str]]:
        return [*((k, v) for k, v in headers if k != "authorization"),
                ("authorization", f"Bearer {key}")]


    def error_body(self, status: int, message: str, error_type: str) -> dict:
        return {
            "error": {
                "message": message,
                "type": error_type,
                "param": None,
                "code": f"tokenpak_{status}",
            }
        }

    def error_class_from_body(self, body: Any) -> str:
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            return str(body["error"].get("type") or body["error"].get("code") or "")
        return ""

    def add_footer(self, answer: Any, text: str) -> bool:
        return footer.add_to_chat_completion(answer, text)

    def tap(self, model: str, strip_usage: bool, footer_text: str = "") -> StreamTap:
        stats_footer = footer.OpenAIChatFooter(footer_text) if footer_text else None
        return OpenAITap(model, strip_usage, stats_footer)

    def cut_event(self, message: str) -> bytes:
        body = self.error_body(502, message, "upstream_error")
        return b"data: " + json.dumps(body).encode() + b"\n\n"


class Anthropic(Provider):
    name = "anthropic"
    request_id_header = "request-id"
    quota_error = "rate_limit_error"  # Anthropic's only 429 type
    _server_error = "api_error"
    _parse_usage = TokenUsage.from_anthropic
    _types: ClassVar[dict[int, str]] = {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
        502: "api_error",
        504: "timeout_error",
        529: "overloaded_error",
    }

    @property
    def base_url(self) -> str:
        return settings.ANTHROPIC_BASE_URL

    @property
    def fallbacks(self) -> tuple[Fallback, ...]:
        return settings.ANTHROPIC_FALLBACKS

    def with_key(self, headers: list[tuple[str, str]], key: str) -> list[tuple[str, str]]:
        # Anthropic takes either header: send only the fallback's, as x-api-key.
        return [*((k, v) for k, v in headers if k not in ("authorization", "x-api-key")),
                ("x-api-key", key)]


    def error_body(self, status: int, message: str, error_type: str) -> dict:
        return {"type": "error", "error": {"type": error_type, "message": message}}

    def error_class_from_body(self, body: Any) -> str:
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            return str(body["error"].get("type") or "")
        return ""

    def add_footer(self, answer: Any, text: str) -> bool:
        return footer.add_to_message(answer, text)

    def tap(self, model: str, strip_usage: bool, footer_text: str = "") -> StreamTap:
        stats_footer = footer.AnthropicFooter(footer_text) if footer_text else None
        return AnthropicTap(model, stats_footer)

    def cut_event(self, message: str) -> bytes:
        body = self.error_body(502, message, "api_error")
        return b"event: error\ndata: " + json.dumps(body).encode() + b"\n\n"


OPENAI = OpenAI()
ANTHROPIC = Anthropic()


@dataclass(frozen=True)
class Route:
    provider: Provider
    event_type: str
    upstream_path: str
    billable: bool = True  # count_tokens and model lists cost nothing
    requires_model: bool = False
    # The provider takes only a JSON body here: any other body is refused, not forwarded.
    json_body: bool = False
    stats_footer: bool = False  # chat completions and messages: answers a person reads
    compress: bool = False  # chat completions and messages: conversations worth compressing
