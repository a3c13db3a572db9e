"""An answer's text as a person reads it, from either provider's JSON body or event stream.

What `trace` and `replay` show of a response: the assistant's text, tool calls as
`[tool call NAME] ARGUMENTS`, an error as `error: MESSAGE`. Never used to relay anything.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from proxy.sse import EventSplitter, parse_event


def text(body: bytes | str | None) -> str:
    """The text of a whole response body: JSON, or server-sent events."""
    if not body:
        return ""
    raw = body.encode("utf-8") if isinstance(body, str) else body
    if raw.lstrip()[:1] in (b"{", b"["):
        payload = _json(raw)
        if payload is not None:
            return of_json(payload)
    if b"data:" in raw:
        splitter = EventSplitter()
        # The closing blank line ends a last event that a cut stream left open.
        events = [*splitter.feed(raw), *splitter.feed(b"\n\n")]
        return of_events(parse_event(e)[1] for e in events)
    return raw.decode("utf-8", "replace")


def of_json(payload: Any) -> str:
    if not isinstance(payload, dict):
        return ""
    if payload.get("error"):
        return _error(payload["error"])
    parts: list[str] = []
    for choice in _list(payload.get("choices")):  # OpenAI chat completions, completions
        message = choice.get("message") or {}
        parts.append(_content(message.get("content")))
        if isinstance(choice.get("text"), str):
            parts.append(choice["text"])
        for call in _list(message.get("tool_calls")):
            fn = call.get("function") or {}
            parts.append(_call(fn.get("name"), fn.get("arguments")))
    for item in _list(payload.get("output")):  # OpenAI Responses
        if item.get("type") == "message":
            parts.append(_content(item.get("content")))
        elif item.get("type") == "function_call":
            parts.append(_call(item.get("name"), item.get("arguments")))
    if payload.get("type") == "message":  # Anthropic messages
        for block in _list(payload.get("content")):
            if block.get("type") == "text":
                parts.append(str(block.get("text") or ""))
            elif block.get("type") == "tool_use":
                parts.append(_call(block.get("name"), json.dumps(block.get("input"))))
    return "\n".join(p for p in parts if p)


def of_events(datas: Iterable[bytes]) -> str:
    """The text of a stream, from its events' data payloads in order."""
    out: list[str] = []
    for data in datas:
        if not data or data == b"[DONE]":
            continue
        payload = _json(data)
        if not isinstance(payload, dict):
            continue
        if payload.get("error"):
            out.append(("\n" if out else "") + _error(payload["error"]))
        for choice in _list(payload.get("choices")):  # OpenAI chat chunks
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str):
                out.append(delta["content"])
            for call in _list(delta.get("tool_calls")):
                fn = call.get("function") or {}
                if fn.get("name"):
                    out.append(("\n" if out else "") + f"[tool call {fn['name']}] ")
                if isinstance(fn.get("arguments"), str):
                    out.append(fn["arguments"])
        kind = payload.get("type")
        if kind == "response.output_text.delta" and isinstance(payload.get("delta"), str):
            out.append(payload["delta"])  # OpenAI Responses
        elif kind == "content_block_start":  # Anthropic
            block = payload.get("content_block") or {}
            if block.get("type") == "tool_use":
                out.append(("\n" if out else "") + f"[tool call {block.get('name')}] ")
        elif kind == "content_block_delta":
            delta = payload.get("delta") or {}
            for key in ("text", "partial_json"):
                if isinstance(delta.get(key), str):
                    out.append(delta[key])
    return "".join(out)


def _content(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(str(part.get("text") or "") for part in _list(content))


def _call(name: Any, arguments: Any) -> str:
    return f"[tool call {name}] {arguments if isinstance(arguments, str) else ''}".rstrip()


def _error(error: Any) -> str:
    if isinstance(error, dict):
        return f"error: {error.get('message') or error.get('type') or json.dumps(error)}"
    return f"error: {error}"


def _list(value: Any) -> list[dict]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None
