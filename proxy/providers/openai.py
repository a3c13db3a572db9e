"""OpenAI: chat completions, the Responses API, and every other /v1 path, forwarded as it is.

OpenAI SDKs use base_url http://127.0.0.1:8766/v1; /openai/v1 is the explicit alias. A bare
/v1 path no other provider declares is OpenAI's (the catch-all comes last).
"""

from __future__ import annotations

import json
import re
from typing import Any, ClassVar

from budgets.routes import costs_less
from proxy import answers, footer
from proxy.providers.base import Endpoint, Provider, Route, Slot, StreamTap, model_list
from proxy.sse import parse_event
from telemetry.pricing import Price
from telemetry.usage import TokenUsage

_USAGE_NULL = re.compile(rb',\s*"usage"\s*:\s*null|"usage"\s*:\s*null\s*,?')
_MODEL = re.compile(rb'"model"\s*:\s*"([^"\\]{1,128})"')
# Finishes where the answer is a tool call: a program reads it, so it gets no footer.
_TOOL_FINISHES = frozenset({"tool_calls", "function_call"})
# Model calls besides chat take JSON only. The other endpoints (files, audio, image edits,
# uploads, …) take multipart forms too, and more of them keep coming: a body declared as
# anything but JSON goes to those as it is, for the provider to judge.
JSON_ONLY = frozenset({"chat", "completions", "embeddings", "moderations", "responses"})


class OpenAI(Provider):
    name = "openai"
    alias = "/openai"
    request_id_header = "x-request-id"
    quota_error = "insufficient_quota"  # what OpenAI answers when an account's quota is spent
    api_key_env = "OPENAI_API_KEY"
    key_headers = ("authorization",)
    # chat completions (max_completion_tokens, formerly max_tokens); Responses (max_output_)
    output_limit_fields = ("max_tokens", "max_completion_tokens", "max_output_tokens")
    _server_error = "server_error"
    _types: ClassVar[dict[int, str]] = {
        400: "invalid_request_error",
        401: "authentication_error",
        402: "insufficient_quota",  # OpenAI has no 402; its type for an account out of credit
        404: "not_found_error",
        413: "invalid_request_error",
        429: "rate_limit_error",
        502: "upstream_error",
        504: "timeout_error",
    }

    def endpoints(self) -> list[Endpoint]:
        chat = Route(self, "chat.completions", "/v1/chat/completions", requires_model=True,
                     json_body=True, stats_footer=True, compress=True)
        return [
            Endpoint("/v1/chat/completions", chat),
            *model_list(self),
            # embeddings, responses, completions, …: forwarded as they are, usage as reported
            Endpoint("/v1/{path:rest}", self._other),
        ]

    def _other(self, rest: str) -> Route:
        first = rest.split("/")[0]
        return Route(self, first[:32], f"/v1/{rest}", json_body=first in JSON_ONLY)

    def client_lines(self, base: str) -> list[tuple[str, str]]:
        return [("OpenAI SDK", f"base_url={base}/v1  (OPENAI_BASE_URL={base}/v1)")]

    def ask_for_stream_usage(self, route: Route, payload: dict) -> bool:
        """Chat completions stream usage only when asked (stream_options.include_usage)."""
        if route.event_type != "chat.completions":
            return False
        options = payload.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") is True:
            return False
        payload["stream_options"] = {**(options if isinstance(options, dict) else {})}
        payload["stream_options"]["include_usage"] = True
        return True

    @staticmethod
    def compression_slots(message: Any) -> list[Slot]:
        """User text and tool results of chat completions; every other role passes through."""
        if not isinstance(message, dict):
            return []
        role = message.get("role")
        if role not in ("user", "tool", "function"):
            return []
        tool = role != "user"
        content = message.get("content")
        if isinstance(content, str):
            return [(("content",), content, tool)]
        if isinstance(content, list):
            return [
                (("content", j, "text"), part["text"], tool)
                for j, part in enumerate(content)
                if isinstance(part, dict) and part.get("type") == "text"
                and isinstance(part.get("text"), str)
            ]
        return []

    def parse_usage(self, usage: dict) -> TokenUsage:
        return TokenUsage.from_openai(usage)

    def key_header(self, key: str) -> tuple[str, str]:
        return ("authorization", f"Bearer {key}")

    def error_body(self, status: int, message: str, error_type: str) -> dict:
        return {
            "error": {
                "message": message,
                "type": error_type,
                "param": None,
                "code": f"tokenpak_{status}",
            }
        }

    def cut_event(self, message: str) -> bytes:
        body = self.error_body(502, message, "upstream_error")
        return b"data: " + json.dumps(body).encode() + b"\n\n"

    def error_class_from_body(self, body: Any) -> str:
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            return str(body["error"].get("type") or body["error"].get("code") or "")
        return ""

    def add_footer(self, answer: Any, text: str) -> bool:
        return add_to_chat_completion(answer, text)

    def tap(self, model: str, strip_usage: bool, footer_text: str = "") -> StreamTap:
        stats_footer = OpenAIChatFooter(footer_text) if footer_text else None
        return OpenAITap(model, strip_usage, stats_footer)

    def answer_parts(self, payload: dict) -> list[str]:
        parts: list[str] = []
        for choice in answers.dicts(payload.get("choices")):  # chat completions, completions
            message = choice.get("message") or {}
            parts.append(answers.content(message.get("content")))
            if isinstance(choice.get("text"), str):
                parts.append(choice["text"])
            for call in answers.dicts(message.get("tool_calls")):
                fn = call.get("function") or {}
                parts.append(answers.call(fn.get("name"), fn.get("arguments")))
        for item in answers.dicts(payload.get("output")):  # Responses
            if item.get("type") == "message":
                parts.append(answers.content(item.get("content")))
            elif item.get("type") == "function_call":
                parts.append(answers.call(item.get("name"), item.get("arguments")))
        return parts

    def answer_event(self, payload: dict, out: list[str]) -> None:
        for choice in answers.dicts(payload.get("choices")):  # chat chunks
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str):
                out.append(delta["content"])
            for call in answers.dicts(delta.get("tool_calls")):
                fn = call.get("function") or {}
                if fn.get("name"):
                    out.append(answers.call_start(fn["name"], out))
                if isinstance(fn.get("arguments"), str):
                    out.append(fn["arguments"])
        if payload.get("type") == "response.output_text.delta" and isinstance(
                payload.get("delta"), str):
            out.append(payload["delta"])  # Responses

    def cheap_routes(self, catalog: dict[str, Price]) -> dict[str, str]:
        """A model's own `-mini` (gpt-4o → gpt-4o-mini, gpt-5.4-pro → gpt-5.4-mini), else its
        major version's (gpt-5.2 → gpt-5-mini), else the one named in _EXTRA."""
        routes: dict[str, str] = {}
        for name, price in catalog.items():
            if _SKIP.search(name):
                continue
            stem = _TIER.sub("", name)
            major = _MAJOR.match(name)  # gpt-5.2 has no -mini of its own: gpt-5-mini
            family = f"{major[1]}-mini" if major else ""
            for target in (f"{name}-mini", f"{stem}-mini", family, _EXTRA.get(name, "")):
                if target in catalog and costs_less(catalog[target], price):
                    routes[name] = target
                    break
        return routes


# --- route-cheap ------------------------------------------------------------------------------

# Older models with no `-mini` of their own.
_EXTRA = {
    "gpt-4": "gpt-4o-mini",
    "gpt-4-turbo": "gpt-4o-mini",
    "gpt-4-1106-preview": "gpt-4o-mini",
    "gpt-3.5-turbo-16k": "gpt-4o-mini",
    "o1": "o4-mini",
    "o1-pro": "o4-mini",
    "chat-latest": "gpt-5-mini",
}
_SKIP = re.compile(r"^ft:|mini|nano|audio|search|embedding|realtime|transcribe|tts|image")
_TIER = re.compile(r"-(?:pro|max)$")
_MAJOR = re.compile(r"^(gpt-\d+)[.-]")


# --- the stats footer ---------------------------------------------------------------------------


def add_to_chat_completion(answer: Any, text: str) -> bool:
    """Append the footer to each text choice of a chat completion; True when any changed."""
    changed = False
    choices = answer.get("choices") if isinstance(answer, dict) else None
    for choice in choices if isinstance(choices, list) else []:
        message = choice.get("message") if isinstance(choice, dict) else None
        if (
            isinstance(message, dict)
            and isinstance(message.get("content"), str)
            and choice.get("finish_reason") not in _TOOL_FINISHES
        ):
            message["content"] += footer.SEPARATOR + text
            changed = True
    return changed


class OpenAIChatFooter:
    """Sends the footer as one more content delta just before a text choice's finish chunk."""

    def __init__(self, text: str) -> None:
        self.content = footer.SEPARATOR + text
        self._texts: set[int] = set()  # choices that streamed content, like a JSON string

    def relay(self, out: bytes) -> bytes:
        payload = footer.loads(parse_event(out)[1])
        choices = payload.get("choices") if isinstance(payload, dict) else None
        if not isinstance(choices, list):
            return out
        own_chunk: list[Any] = []  # choices whose footer goes in a chunk just before this one
        rewritten = False
        for choice in choices:
            index = choice.get("index", 0) if isinstance(choice, dict) else None
            if not isinstance(index, int):
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict) and isinstance(delta.get("content"), str):
                self._texts.add(index)
            finish = choice.get("finish_reason")
            if not finish or finish in _TOOL_FINISHES or index not in self._texts:
                continue
            if isinstance(delta, dict) and delta.get("content"):
                # Some compatible servers send the last words with the finish: the footer
                # must follow them, so it joins them in this chunk.
                delta["content"] += self.content
                rewritten = True
            else:
                own_chunk.append(index)
        nl = footer.newline(out)
        before = b""
        if own_chunk:
            footers = [
                {"index": i, "delta": {"content": self.content}, "finish_reason": None}
                for i in own_chunk
            ]
            # The fields of the chunk it precedes (id, created, model, ...), in their order.
            chunk = {**payload, "choices": footers}
            if chunk.get("usage") is not None:
                chunk["usage"] = None  # usage is counted once, on the provider's own chunk
            before = footer.encode_event(chunk, nl)
        return before + (footer.encode_event(payload, nl) if rewritten else out)

    def flush(self) -> bytes:
        return b""  # nothing is ever held back


# --- the stream tap -----------------------------------------------------------------------------


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
            payload = footer.loads(data)
            if isinstance(payload, dict):
                usage = payload.get("usage")
                if usage is None and isinstance(payload.get("response"), dict):
                    usage = payload["response"].get("usage")
                if isinstance(usage, dict):
                    self.usage = TokenUsage.from_openai(usage)
                    if self.strip_usage and payload.get("choices") == []:
                        return b""
        elif b'"error"' in data:
            payload = footer.loads(data)
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
