"""An answer's text as a person reads it, from a JSON body or an event stream.

What `trace` and `replay` show of a response: the assistant's text, tool calls as
`[tool call NAME] ARGUMENTS`, an error as `error: MESSAGE`. Never used to relay anything.
Where the text sits in each provider's answer is the provider's (`Provider.answer_parts`,
`Provider.answer_event`); this module reads the body and holds the shared pieces.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from proxy.sse import EventSplitter, parse_event

JsonParts = Callable[[dict], list[str]]  # a whole JSON answer → its text, in parts
EventText = Callable[[dict, list[str]], None]  # one event's data → appended to the text so far


def text(body: bytes | str | None, of_json: JsonParts, of_event: EventText) -> str:
    """The text of a whole response body: JSON, or server-sent events."""
    if not body:
        return ""
    raw = body.encode("utf-8") if isinstance(body, str) else body
    if raw.lstrip()[:1] in (b"{", b"["):
        payload = _json(raw)
        if payload is not None:
            return _of_json(payload, of_json)
    if b"data:" in raw:
        splitter = EventSplitter()
        # The closing blank line ends a last event that a cut stream left open.
        events = [*splitter.feed(raw), *splitter.feed(b"\n\n")]
        return of_events((parse_event(e)[1] for e in events), of_event)
    return raw.decode("utf-8", "replace")


def _of_json(payload: Any, of_json: JsonParts) -> str:
    if not isinstance(payload, dict):
        return ""
    if payload.get("error"):
        return _error(payload["error"])
    return "\n".join(p for p in of_json(payload) if p)


def of_events(datas: Iterable[bytes], of_event: EventText) -> str:
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
        of_event(payload, out)
    return "".join(out)


def content(value: Any) -> str:
    """A message's content: a string, or the texts of its parts."""
    if isinstance(value, str):
        return value
    return "".join(str(part.get("text") or "") for part in dicts(value))


def call(name: Any, arguments: Any) -> str:
    """A whole tool call."""
    return f"[tool call {name}] {arguments if isinstance(arguments, str) else ''}".rstrip()


def call_start(name: Any, out: list[str]) -> str:
    """A streamed tool call's head, on a line of its own; its arguments follow as they come."""
    return ("\n" if out else "") + f"[tool call {name}] "


def _error(error: Any) -> str:
    if isinstance(error, dict):
        return f"error: {error.get('message') or error.get('type') or json.dumps(error)}"
    return f"error: {error}"


def dicts(value: Any) -> list[dict]:
    """The objects of a JSON list; nothing when it is not a list."""
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None
