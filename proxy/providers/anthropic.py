"""Anthropic: messages, count_tokens and message batches.

Anthropic SDKs (and Claude Code) use base_url http://127.0.0.1:8766; /anthropic/v1 is the
explicit alias. Everything under /v1/messages is JSON only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, ClassVar

from budgets.routes import costs_less
from proxy import answers, footer
from proxy.providers.base import Endpoint, Provider, Route, Slot, StreamTap, model_list
from proxy.sse import parse_event
from telemetry.pricing import Price
from telemetry.usage import TokenUsage

_TOOL_STOP = "tool_use"  # the answer is a tool call: a program reads it, so no footer
_CLAUDE = re.compile(r"^claude-(?P<family>[a-z]+)-(?P<major>\d+)(?:-(?P<minor>\d+))?$")
VERSION = "2023-06-01"  # the anthropic-version a replayed request without one is sent with


class Anthropic(Provider):
    name = "anthropic"
    alias = "/anthropic"
    request_id_header = "request-id"
    quota_error = "rate_limit_error"  # Anthropic's only 429 type
    api_key_env = "ANTHROPIC_API_KEY"
    # Anthropic takes either header: a key TokenPak holds replaces both, as x-api-key.
    key_headers = ("authorization", "x-api-key")
    required_headers = (("anthropic-version", VERSION),)
    _server_error = "api_error"
    _types: ClassVar[dict[int, str]] = {
        400: "invalid_request_error",
        401: "authentication_error",
        402: "billing_error",
        403: "permission_error",
        404: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
        502: "api_error",
        504: "timeout_error",
        529: "overloaded_error",
    }

    def endpoints(self) -> list[Endpoint]:
        messages = Route(self, "messages", "/v1/messages", requires_model=True, json_body=True,
                         stats_footer=True, compress=True)
        count = Route(self, "count_tokens", "/v1/messages/count_tokens", billable=False,
                      json_body=True)
        return [
            Endpoint("/v1/messages", messages),
            Endpoint("/v1/messages/count_tokens", count),
            *model_list(self),
            # message batches: JSON only, like everything under /v1/messages
            Endpoint("/v1/messages/{path:rest}", self._batches, alias=False),
            Endpoint("/v1/{path:rest}", self._prefixed, bare=False),
        ]

    def _batches(self, rest: str) -> Route:
        event_type = ("messages." + rest.split("/")[0])[:32]
        return Route(self, event_type, f"/v1/messages/{rest}", json_body=True)

    def _prefixed(self, rest: str) -> Route:
        first = rest.split("/")[0]
        return Route(self, first[:32], f"/v1/{rest}", json_body=first == "messages")

    def claims(self, headers: Mapping[str, str]) -> bool:
        # Only Anthropic's SDK sends anthropic-version; only its key header is x-api-key.
        return "anthropic-version" in headers or "x-api-key" in headers

    def client_lines(self, base: str) -> list[tuple[str, str]]:
        return [("Anthropic SDK", f"base_url={base}  (ANTHROPIC_BASE_URL={base})"),
                ("Claude Code", f"ANTHROPIC_BASE_URL={base} claude")]

    @staticmethod
    def compression_slots(message: Any) -> list[Slot]:
        """User text blocks and tool_result contents; tool_use, images, documents, thinking and
        cache_control markers are left as they are."""
        if not isinstance(message, dict) or message.get("role") != "user":
            return []
        content = message.get("content")
        if isinstance(content, str):
            return [(("content",), content, False)]
        if not isinstance(content, list):
            return []
        slots: list[Slot] = []
        for j, block in enumerate(content):
            if not isinstance(block, dict):
                continue
            kind = block.get("type")
            if kind == "text" and isinstance(block.get("text"), str):
                slots.append((("content", j, "text"), block["text"], False))
            elif kind == "tool_result":
                inner = block.get("content")
                if isinstance(inner, str):
                    slots.append((("content", j, "content"), inner, True))
                elif isinstance(inner, list):
                    slots.extend(
                        (("content", j, "content", k, "text"), b["text"], True)
                        for k, b in enumerate(inner)
                        if isinstance(b, dict) and b.get("type") == "text"
                        and isinstance(b.get("text"), str)
                    )
        return slots

    def parse_usage(self, usage: dict) -> TokenUsage:
        return TokenUsage.from_anthropic(usage)

    def key_header(self, key: str) -> tuple[str, str]:
        return ("x-api-key", key)

    def error_body(self, status: int, message: str, error_type: str) -> dict:
        return {"type": "error", "error": {"type": error_type, "message": message}}

    def cut_event(self, message: str) -> bytes:
        body = self.error_body(502, message, "api_error")
        return b"event: error\ndata: " + json.dumps(body).encode() + b"\n\n"

    def error_class_from_body(self, body: Any) -> str:
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            return str(body["error"].get("type") or "")
        return ""

    def add_footer(self, answer: Any, text: str) -> bool:
        return add_to_message(answer, text)

    def tap(self, model: str, strip_usage: bool, footer_text: str = "") -> StreamTap:
        stats_footer = AnthropicFooter(footer_text) if footer_text else None
        return AnthropicTap(model, stats_footer)

    def answer_parts(self, payload: dict) -> list[str]:
        parts: list[str] = []
        if payload.get("type") == "message":
            for block in answers.dicts(payload.get("content")):
                if block.get("type") == "text":
                    parts.append(str(block.get("text") or ""))
                elif block.get("type") == "tool_use":
                    parts.append(answers.call(block.get("name"), json.dumps(block.get("input"))))
        return parts

    def answer_event(self, payload: dict, out: list[str]) -> None:
        kind = payload.get("type")
        if kind == "content_block_start":
            block = payload.get("content_block") or {}
            if block.get("type") == "tool_use":
                out.append(answers.call_start(block.get("name"), out))
        elif kind == "content_block_delta":
            delta = payload.get("delta") or {}
            for key in ("text", "partial_json"):
                if isinstance(delta.get(key), str):
                    out.append(delta[key])

    def cheap_routes(self, catalog: dict[str, Price]) -> dict[str, str]:
        """A Claude Opus or Sonnet to the Haiku of its generation (the newest Haiku when its
        generation has none)."""
        haikus: dict[str, tuple[tuple[int, int], str]] = {}  # major → newest haiku of it
        for name in catalog:
            m = _CLAUDE.match(name)
            if m and m["family"] == "haiku":
                version = (int(m["major"]), int(m["minor"] or 0))
                if m["major"] not in haikus or version > haikus[m["major"]][0]:
                    haikus[m["major"]] = (version, name)
        if not haikus:
            return {}
        routes: dict[str, str] = {}
        newest = max(haikus.values())[1]
        for name, price in catalog.items():
            m = _CLAUDE.match(name)
            if not m or m["family"] == "haiku":
                continue
            target = haikus[m["major"]][1] if m["major"] in haikus else newest
            if costs_less(catalog[target], price):
                routes[name] = target
        return routes


# --- the stats footer ---------------------------------------------------------------------------


def add_to_message(answer: Any, text: str) -> bool:
    """Append the footer to a message's last block when it is text; True when it changed."""
    if not isinstance(answer, dict) or answer.get("stop_reason") == _TOOL_STOP:
        return False
    content = answer.get("content")
    last = content[-1] if isinstance(content, list) and content else None
    if isinstance(last, dict) and last.get("type") == "text" and isinstance(last.get("text"), str):
        last["text"] += footer.SEPARATOR + text
        return True
    return False


class AnthropicFooter:
    """Adds a text delta to the answer's last text block once the stop reason says it ended.

    Whether a text block ends the answer is only known from the event after its
    content_block_stop, so that stop is held back until the next event (pings pass by meanwhile).
    """

    def __init__(self, text: str) -> None:
        self.text = footer.SEPARATOR + text
        self._text_blocks: set[int] = set()
        self._held = b""  # a text block's content_block_stop, not yet forwarded
        self._held_index = 0

    def relay(self, out: bytes) -> bytes:
        name, data = parse_event(out)
        if name == "ping":
            return out
        released = b""
        if self._held:
            released, self._held = self._held, b""
            if name == "message_delta" and _stop_reason(data) != _TOOL_STOP:
                delta = {
                    "type": "content_block_delta",
                    "index": self._held_index,
                    "delta": {"type": "text_delta", "text": self.text},
                }
                released = footer.encode_event(delta, footer.newline(released),
                                               "content_block_delta") + released
        if name == "content_block_start":
            payload = footer.loads(data)
            block = payload.get("content_block") if isinstance(payload, dict) else None
            index = payload.get("index") if isinstance(payload, dict) else None
            if isinstance(block, dict) and block.get("type") == "text" and isinstance(index, int):
                self._text_blocks.add(index)
        elif name == "content_block_stop":
            payload = footer.loads(data)
            index = payload.get("index") if isinstance(payload, dict) else None
            if isinstance(index, int) and index in self._text_blocks:
                self._held, self._held_index = out, index
                return released
        return released + out

    def flush(self) -> bytes:
        held, self._held = self._held, b""
        return held


def _stop_reason(data: bytes) -> Any:
    payload = footer.loads(data)
    delta = payload.get("delta") if isinstance(payload, dict) else None
    return delta.get("stop_reason") if isinstance(delta, dict) else None


# --- the stream tap -----------------------------------------------------------------------------


class AnthropicTap(StreamTap):
    def __init__(self, model: str, stats_footer: footer.StreamFooter | None) -> None:
        super().__init__(model, stats_footer)
        self.final_output = False  # a message_delta (cumulative output count) has arrived

    def read(self, raw: bytes) -> bytes:
        name, data = parse_event(raw)
        if name in ("content_block_delta", "content_block_start"):  # start: a tool call's name
            self.seen.append(data)
        elif name == "message_start":
            payload = footer.loads(data)
            message = payload.get("message") if isinstance(payload, dict) else None
            if isinstance(message, dict):
                self.response_model = str(message.get("model") or "")
                if isinstance(message.get("usage"), dict):
                    self.usage = TokenUsage.from_anthropic(message["usage"])
        elif name == "message_delta":
            payload = footer.loads(data)
            usage = payload.get("usage") if isinstance(payload, dict) else None
            if isinstance(usage, dict):
                self._merge(usage)
        elif name == "message_stop":
            self.complete = True
        elif name == "error":
            payload = footer.loads(data)
            error = payload.get("error") if isinstance(payload, dict) else None
            self.error_class = str(error.get("type") if isinstance(error, dict) else "error")
        return raw

    def _merge(self, delta_usage: dict) -> None:
        # message_delta usage is cumulative: the latest value replaces, never adds.
        current = self.usage or TokenUsage()
        start: dict[str, Any] = {
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
