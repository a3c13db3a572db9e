"""Token figures for a compressed request, counted only where text changed, memoised by content.

Runs in the ledger writer (or, with the stats footer on, once before forwarding). A history
that is re-sent every turn is counted once: its texts are already in the cache.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from proxy.compression.segments import Piece
from telemetry import tokens

_lock = threading.Lock()
_counts: OrderedDict[tuple[str, int, int], int] = OrderedDict()
MAX_ENTRIES = 200_000


def count(text: str, encoding: str) -> int:
    if not text:
        return 0
    key = (encoding, len(text), hash(text))
    with _lock:
        n = _counts.get(key)
        if n is not None:
            _counts.move_to_end(key)
            return n
    n = tokens.count_in(encoding, text)  # bounded, whatever the text (telemetry/tokens.py)
    with _lock:
        _counts[key] = n
        if len(_counts) > MAX_ENTRIES:
            _counts.popitem(last=False)
    return n


@dataclass
class Savings:
    tokens_saved: int = 0
    saved_prior: int = 0  # in messages the previous request already carried (cache reads)
    saved_new: int = 0
    new_after: int = 0  # tokens of the new messages' text as sent
    segments: dict[str, tuple[int, int]] = field(default_factory=dict)  # kind → (raw, after)
    estimated: bool = False  # counted with an approximate tokenizer (Claude)


def savings(pieces: Sequence[Piece], new_from: int, model: str) -> Savings:
    """What compression saved in `pieces`; messages from `new_from` on are new this turn."""
    encoding = tokens.encoding_for(model)
    result = Savings(estimated=not _exact_for(model))
    per_kind: dict[str, list[int]] = {}
    for piece in pieces:
        raw = count(piece.before, encoding)
        after = raw if piece.after is piece.before else count(piece.after, encoding)
        slot = per_kind.setdefault(piece.kind, [0, 0])
        slot[0] += raw
        slot[1] += after
        saved = raw - after
        result.tokens_saved += saved
        if piece.message < new_from:
            result.saved_prior += saved
        else:
            result.saved_new += saved
            result.new_after += after
    result.segments = {kind: (raw, after) for kind, (raw, after) in per_kind.items()}
    return result


def _exact_for(model: str) -> bool:
    """tiktoken is OpenAI's own tokenizer; for every other provider's model it approximates."""
    m = model.lower().split("/")[-1]
    return m.startswith(("gpt-", "o1", "o3", "o4", "chatgpt", "text-embedding"))


def footer_figures(pieces: Sequence[Piece], new_from: int, payload: dict[str, Any], model: str,
                   ) -> tuple[int, int]:
    """(tokens saved, tokens of the messages before compression) of a compressed payload."""
    s = savings(pieces, new_from, model)
    encoding = tokens.encoding_for(model)
    covered = {p.message for p in pieces}
    before = sum(raw for raw, _ in s.segments.values())
    for i, message in enumerate(payload.get("messages") or []):
        if i not in covered and isinstance(message, dict):
            content = message.get("content")
            if isinstance(content, str):
                before += count(content, encoding)
    system = payload.get("system")
    if isinstance(system, str):
        before += count(system, encoding)
    return max(0, s.tokens_saved), before
