"""The stats footer: TokenPak's savings line as the last text of each assistant answer.

    ⚡ TokenPak: -3,349 tokens (40.6%) | $0.050 saved

Off by default (settings.STATS_FOOTER). Only 2xx chat completions and messages answers get it,
and only answers that end in text: a tool call is read by a program, not by a person. It is
added as ordinary content, so both official SDKs parse it like the rest of the answer; the
ledger keeps the provider's usage, since the footer is TokenPak's text and nobody is billed
for it.

forward.py computes the line once per request (`text_for`), rewrites JSON bodies through the
provider adapter (`add_to_chat_completion`, `add_to_message`), and hands streams to the
provider's tap, which runs every forwarded event through `OpenAIChatFooter` or
`AnthropicFooter`.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any, Protocol

from asgiref.sync import sync_to_async

from proxy.sse import parse_event
from telemetry import pricing
from telemetry.record import Record

SEPARATOR = "\n\n"
# Finishes where the answer is a tool call: a program reads it, so it gets no footer.
_TOOL_FINISHES = frozenset({"tool_calls", "function_call"})
_TOOL_STOP = "tool_use"
_MTOK = Decimal(1_000_000)


def format_footer(tokens_saved: int, tokens_before: int, input_usd_per_mtok: Decimal) -> str:
    """The footer line for a request's compression figures and its model's input price."""
    saved = max(0, tokens_saved)  # compression never grows a request; never print "--5"
    pct = 100 * saved / tokens_before if tokens_before > 0 else 0.0
    dollars = saved * Decimal(input_usd_per_mtok) / _MTOK
    return f"⚡ TokenPak: -{saved:,} tokens ({pct:.1f}%) | ${dollars:.3f} saved"


async def text_for(rec: Record, provider_name: str) -> str:
    """This request's footer line, from the figures compression left on its record."""
    price = Decimal(0)
    if rec.tokens_saved > 0:  # nothing saved costs nothing: no price needed
        # resolve() may read tp_pricing (its overrides are cached for seconds, then reloaded):
        # the ORM must not run on the event loop.
        model = rec.sent_model or rec.requested_model
        price = (await sync_to_async(pricing.resolve)(model, provider_name)).input
    return format_footer(rec.tokens_saved, rec.tokens_before, price)


def dumps(answer: Any) -> bytes:
    """A rewritten JSON answer, as UTF-8 (the footer's ⚡ stays one character, not an escape)."""
    return json.dumps(answer, ensure_ascii=False).encode("utf-8")


# --- JSON answers ---------------------------------------------------------------------------


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
            message["content"] += SEPARATOR + text
            changed = True
    return changed


def add_to_message(answer: Any, text: str) -> bool:
    """Append the footer to a message's last block when it is text; True when it changed."""
    if not isinstance(answer, dict) or answer.get("stop_reason") == _TOOL_STOP:
        return False
    content = answer.get("content")
    last = content[-1] if isinstance(content, list) and content else None
    if isinstance(last, dict) and last.get("type") == "text" and isinstance(last.get("text"), str):
        last["text"] += SEPARATOR + text
        return True
    return False


# --- Streams --------------------------------------------------------------------------------


class StreamFooter(Protocol):
    def relay(self, out: bytes) -> bytes:
        """What the client gets for one event the tap forwards: maybe more, maybe nothing yet."""
        ...

    def flush(self) -> bytes:
        """Whatever is still held back when the stream stops early; the relay never loses it."""
        ...


def _json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None


def _newline(raw: bytes) -> bytes:
    """The line ending of an event as the provider wrote it, for events written beside it."""
    if raw.endswith(b"\r\n"):
        return b"\r\n"
    return b"\r" if raw.endswith(b"\r\r") else b"\n"


def _event(payload: Any, nl: bytes, name: str = "") -> bytes:
    head = f"event: {name}".encode() + nl if name else b""
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return head + b"data: " + data + nl + nl


class OpenAIChatFooter:
    """Sends the footer as one more content delta just before a text choice's finish chunk."""

    def __init__(self, text: str) -> None:
        self.content = SEPARATOR + text
        self._texts: set[int] = set()  # choices that streamed content, like a JSON string

    def relay(self, out: bytes) -> bytes:
        payload = _json(parse_event(out)[1])
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
        nl = _newline(out)
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
            before = _event(chunk, nl)
        return before + (_event(payload, nl) if rewritten else out)

    def flush(self) -> bytes:
        return b""  # nothing is ever held back


class AnthropicFooter:
    """Adds a text delta to the answer's last text block once the stop reason says it ended.

    Whether a text block ends the answer is only known from the event after its
    content_block_stop, so that stop is held back until the next event (pings pass by meanwhile).
    """

    def __init__(self, text: str) -> None:
        self.text = SEPARATOR + text
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
                released = _event(delta, _newline(released), "content_block_delta") + released
        if name == "content_block_start":
            payload = _json(data)
            block = payload.get("content_block") if isinstance(payload, dict) else None
            index = payload.get("index") if isinstance(payload, dict) else None
            if isinstance(block, dict) and block.get("type") == "text" and isinstance(index, int):
                self._text_blocks.add(index)
        elif name == "content_block_stop":
            payload = _json(data)
            index = payload.get("index") if isinstance(payload, dict) else None
            if isinstance(index, int) and index in self._text_blocks:
                self._held, self._held_index = out, index
                return released
        return released + out

    def flush(self) -> bytes:
        held, self._held = self._held, b""
        return held


def _stop_reason(data: bytes) -> Any:
    payload = _json(data)
    delta = payload.get("delta") if isinstance(payload, dict) else None
    return delta.get("stop_reason") if isinstance(delta, dict) else None
