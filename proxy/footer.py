"""The stats footer: TokenPak's savings line as the last text of each assistant answer.

    ⚡ TokenPak: -3,349 tokens (40.6%) | $0.050 saved

Off by default (settings.STATS_FOOTER). Only 2xx chat completions and messages answers get it,
and only answers that end in text: a tool call is read by a program, not by a person. It is
added as ordinary content, so both official SDKs parse it like the rest of the answer; the
ledger keeps the provider's usage, since the footer is TokenPak's text and nobody is billed
for it.

forward.py computes the line once per request (`text_for`), rewrites JSON bodies through the
provider (`Provider.add_footer`), and hands streams to the provider's tap, which runs every
forwarded event through the provider's `StreamFooter` (proxy/providers/openai.py, anthropic.py).
Here: the line, and what every provider's footer writes with.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any, Protocol

from asgiref.sync import sync_to_async

from telemetry import pricing
from telemetry.record import Record

SEPARATOR = "\n\n"
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


# --- Streams --------------------------------------------------------------------------------


class StreamFooter(Protocol):
    def relay(self, out: bytes) -> bytes:
        """What the client gets for one event the tap forwards: maybe more, maybe nothing yet."""
        ...

    def flush(self) -> bytes:
        """Whatever is still held back when the stream stops early; the relay never loses it."""
        ...


def loads(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None


def newline(raw: bytes) -> bytes:
    """The line ending of an event as the provider wrote it, for events written beside it."""
    if raw.endswith(b"\r\n"):
        return b"\r\n"
    return b"\r" if raw.endswith(b"\r\r") else b"\n"


def encode_event(payload: Any, nl: bytes, name: str = "") -> bytes:
    """One event written beside the provider's, compact and in UTF-8 like theirs."""
    head = f"event: {name}".encode() + nl if name else b""
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return head + b"data: " + data + nl + nl
