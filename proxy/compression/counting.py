"""Token figures for an Outcome, counted only where text changed, memoised by content.

Runs in the ledger writer (or, with the stats footer on, once before forwarding). A history
that is re-sent every turn is counted once: its texts are already in the cache.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

from telemetry import tokens

if TYPE_CHECKING:
    from proxy.compression import Outcome, Savings

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


def savings(outcome: Outcome, model: str) -> Savings:
    from proxy.compression import Savings

    encoding = tokens.encoding_for(model)
    result = Savings(estimated=not _exact_for(model))
    per_kind: dict[str, list[int]] = {}
    for piece in outcome.pieces:
        raw = count(piece.before, encoding)
        after = raw if piece.after is piece.before else count(piece.after, encoding)
        slot = per_kind.setdefault(piece.kind, [0, 0])
        slot[0] += raw
        slot[1] += after
        saved = raw - after
        result.tokens_saved += saved
        if piece.message < outcome.new_from:
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


def footer_figures(outcome: Outcome, model: str) -> tuple[int, int]:
    s = savings(outcome, model)
    encoding = tokens.encoding_for(model)
    covered = {p.message for p in outcome.pieces}
    before = sum(raw for raw, _ in s.segments.values())
    for i, message in enumerate(outcome.payload.get("messages") or []):
        if i not in covered and isinstance(message, dict):
            content = message.get("content")
            if isinstance(content, str):
                before += count(content, encoding)
    system = outcome.payload.get("system")
    if isinstance(system, str):
        before += count(system, encoding)
    return max(0, s.tokens_saved), before
