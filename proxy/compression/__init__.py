"""Compression: the request's messages in, shorter messages out, as a pure function.

Stages, each optional by profile: dedup (a text that an earlier message already carried
becomes a reference to it) → segmentize (code, json, markdown, tool, prose) → recipes (the
rules in recipes/*.yaml for that segment type).

Cache-aware by construction: message i's compressed form depends only on messages 0..i and
the profile, so when a client re-sends its history with one new turn, everything already sent
goes out byte-identical to last time and the provider's prompt cache keeps hitting. Results are
memoised per prefix (a hash chain over the messages), so re-sent history costs a hash and a
lookup; only new messages are compressed.

Bounded: a text over MAX_TEXT_CHARS goes out as it came (its repeats still become references),
and the lock guards only the shared memo, never the work itself, so a big request compressed on
a worker thread (proxy/work.py) never makes a small one on the event loop wait for it.

Only user text and tool results change. System prompts, assistant turns (tool calls, thinking),
images, documents and every key other than the text itself pass through as they came. A request
whose shape is not understood goes out unchanged.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from proxy.compression import counting
from proxy.compression import recipes as recipes_mod
from proxy.compression.counting import Savings
from proxy.compression.recipes import (
    PROFILES,
    RANK,
    Context,
    Delta,
    Recipe,
    RecipeError,
    State,
    index_lines,
)
from proxy.compression.segments import CODE, KINDS, PROSE, TOOL, Piece, segmentize

__all__ = ["PROFILES", "Outcome", "Piece", "RecipeError", "Savings", "Slots", "compress",
           "parse_profile", "register_slots"]

log = logging.getLogger("tokenpak.compression")

# A text this long that an earlier message already carried is replaced by a reference.
DEDUP_MIN_CHARS = 300
# Longer texts are not compressed: a regular expression holds the GIL for a whole text (some
# 60 ms a MB here, every thread waiting), and a MB of text is about 250,000 tokens already.
MAX_TEXT_CHARS = 1024 * 1024


@dataclass
class Outcome:
    profile: str
    payload: dict[str, Any]  # what to send: the client's own dict when nothing changed
    changed: bool = False
    pieces: list[Piece] = field(default_factory=list)
    recipes: dict[str, int] = field(default_factory=dict)  # rule name → times it fired
    stages: list[tuple[str, float]] = field(default_factory=list)  # (stage, milliseconds)
    new_from: int = 0  # messages from here on were not in the previous turn's request
    skipped: str = ""  # why the request went out unchanged, when it could not be read

    def savings(self, model: str) -> Savings:
        """Token figures, counting only text (cached by content: re-sent history is free)."""
        return counting.savings(self.pieces, self.new_from, model)

    def footer_figures(self, model: str) -> tuple[int, int]:
        """(tokens saved, tokens of the messages before compression), for the stats footer."""
        return counting.footer_figures(self.pieces, self.new_from, self.payload, model)


def parse_profile(value: str | None, default: str) -> tuple[str, str]:
    """(profile, problem) for an X-TokenPak-Compress header value."""
    if value is None or not value.strip():
        return default, ""
    profile = value.strip().lower()
    if profile not in RANK:
        return default, (f"X-TokenPak-Compress must be one of {', '.join(PROFILES)}; "
                         f"got {value.strip()!r}.")
    return profile, ""


def compress(provider: str, payload: dict[str, Any], profile: str,
             slots: Slots | None = None) -> Outcome:
    """The request as compressed by `profile`; `slots` says where its provider keeps the text
    (by default the rule registered for `provider`)."""
    messages = payload.get("messages")
    outcome = Outcome(profile=profile, payload=payload)
    if profile == "off" or not isinstance(messages, list) or not messages:
        return outcome
    try:
        return _compress(provider, payload, messages, profile, outcome, slots or _slots[provider])
    except Exception:  # never fail a request for compression's sake: send it as it came
        log.exception("compression failed; the request is forwarded unchanged")
        return Outcome(profile=profile, payload=payload, skipped="compression error")


# --- the pipeline ---------------------------------------------------------------------------


@dataclass
class _Node:
    """A message's compressed form, memoised under the hash chain of its prefix."""

    message: Any  # the message to send (the original object when unchanged)
    changed: bool
    pieces: tuple[Piece, ...]
    hits: tuple[tuple[str, int], ...]
    delta: Delta
    size: int


class _Timer:
    def __init__(self) -> None:
        self.ms: dict[str, float] = defaultdict(float)

    def add(self, stage: str, since: float) -> float:
        now = time.perf_counter()
        self.ms[stage] += (now - since) * 1000.0
        return now


def _compress(
    provider: str, payload: dict, messages: list, profile: str, outcome: Outcome, slots_of: Slots
) -> Outcome:
    with _lock:
        rules = _rules(profile)
        version = _version
    timer = _Timer()
    t = time.perf_counter()
    # The provider is part of the key: the same messages have different text slots in each
    # shape (tool_result blocks are Anthropic's, role tool is OpenAI's).
    chain = hash((provider, profile, version))
    chains: list[int] = []
    nodes: list[_Node] = []
    state: State | None = None
    for i, message in enumerate(messages):
        chain = hash((chain, _fingerprint(message)))
        chains.append(chain)
        with _lock:
            node = _memo.get(chain)
            if node is not None:
                _memo.move_to_end(chain)
        if node is not None:
            if state is not None:  # after a miss every prefix is new; only a hash twin lands here
                state.apply(node.delta)
        else:
            if state is None:
                t = timer.add("reuse", t)
                state = _state_before(chains, nodes)
            # Outside the lock: the State is this request's own, the rules are read only. Two
            # requests with the same new message both compress it, to the same result.
            node = _process(i, message, slots_of, rules, state, timer)
            _remember(chain, node)
            t = time.perf_counter()
        nodes.append(node)
    if state is not None:
        with _lock:
            _tips[chains[-1]] = state
            while len(_tips) > _MAX_TIPS:
                _tips.popitem(last=False)
    else:
        timer.add("reuse", t)

    changed = any(n.changed for n in nodes)
    hits: Counter[str] = Counter()
    for n in nodes:
        for name, count in n.hits:
            hits[name] += count
    outcome.changed = changed
    outcome.pieces = [p for n in nodes for p in n.pieces]
    outcome.recipes = dict(hits)
    outcome.stages = [(s, round(ms, 3)) for s, ms in timer.ms.items()]
    outcome.new_from = _last_assistant(messages)
    if changed:
        outcome.payload = {**payload, "messages": [n.message for n in nodes]}
    return outcome


def _process(
    i: int, message: Any, slots_of: Slots, rules: _Rules, state: State, timer: _Timer
) -> _Node:
    t = time.perf_counter()
    slots = slots_of(message)
    delta = Delta()
    ctx = Context(message=i, state=state, delta=delta)
    pieces: list[Piece] = []
    hits: Counter[str] = Counter()
    texts: list[str] = []
    for _path, text, tool in slots:
        new, t = _one_text(text, tool, ctx, rules, pieces, hits, timer, t)
        texts.append(new)
    changed = any(new is not old for new, (_p, old, _t) in zip(texts, slots, strict=True))
    out = _rebuild(message, [(p, new) for (p, _o, _t), new in zip(slots, texts, strict=True)]
                   ) if changed else message
    timer.add("recipes", t)
    size = sum(len(p.before) + (len(p.after) if p.after is not p.before else 0) for p in pieces)
    return _Node(out, changed, tuple(pieces), tuple(hits.items()), delta, size)


def _one_text(
    text: str, tool: bool, ctx: Context, rules: _Rules, pieces: list[Piece],
    hits: Counter[str], timer: _Timer, t: float,
) -> tuple[str, float]:
    i, state = ctx.message, ctx.state
    whole = len(text) > MAX_TEXT_CHARS  # not compressed, so not cut into segments either
    # Stage 1, dedup: the whole text was already sent in an earlier message.
    if len(text) >= DEDUP_MIN_CHARS:
        key = hash(text)
        seen = state.outputs.get(key)
        if seen is None:
            state.outputs[key] = i
            ctx.delta.outputs.append((key, i))
        elif seen != i:
            what = "tool output" if tool else "text"
            ref = f"[TokenPak: identical to the {what} in message {seen} above]"
            t = timer.add("dedup", t)
            parts = [(TOOL if tool else PROSE, text)] if whole else segmentize(text, tool)
            t = timer.add("segmentize", t)
            pieces.append(Piece(i, parts[0][0], parts[0][1], ref))
            pieces.extend(Piece(i, kind, seg, "") for kind, seg in parts[1:])
            hits["repeat-output"] += 1
            return ref, t
    t = timer.add("dedup", t)
    if whole:
        pieces.append(Piece(i, TOOL if tool else PROSE, text, text))  # counted, as it is sent
        return text, t
    # Stage 2: segments.
    parts = segmentize(text, tool)
    t = timer.add("segmentize", t)
    # Stage 3: recipes for each segment's type.
    out: list[str] = []
    for kind, seg in parts:
        new = seg
        for rule in rules.by_kind[kind]:
            tried, n = rule.apply(new, ctx)
            if n and len(tried) < len(new):  # a rule never makes a text longer
                new = tried
                hits[rule.name] += n
        if new == seg:
            new = seg
        pieces.append(Piece(i, kind, seg, new))
        out.append(new)
        if rules.index_lines and kind in (TOOL, CODE):
            index_lines(new, ctx)
    joined = "".join(out)
    return (text if joined == text else joined), t


def _state_before(chains: list[int], nodes: list[_Node]) -> State:
    """The State after the known prefix: the previous request's, or rebuilt from the memo."""
    if not nodes:
        return State()
    with _lock:
        state = _tips.pop(chains[len(nodes) - 1], None)
    if state is None:
        state = State()
        for node in nodes:
            state.apply(node.delta)
    return state


def _last_assistant(messages: list) -> int:
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        if isinstance(m, dict) and m.get("role") == "assistant":
            return i
    return 0


# --- where the text is, per provider ---------------------------------------------------------

Path_ = tuple[Any, ...]
# A provider's rule for one message: where compression may change text, as (path, text, whether
# it is a tool's output). The provider's own (Provider.compression_slots): compression knows no
# provider's shape.
Slots = Callable[[Any], list[tuple[Path_, str, bool]]]
_slots: dict[str, Slots] = {}


def register_slots(provider: str, slots: Slots) -> None:
    """The slot rule compress() uses for `provider` when none is passed (proxy's AppConfig.ready
    registers each provider's)."""
    _slots[provider] = slots


def _rebuild(message: Any, changes: list[tuple[Path_, str]]) -> Any:
    """A copy of the message with new texts at the given paths; the rest is shared."""
    for path, text in changes:
        message = _set(message, path, text)
    return message


def _set(obj: Any, path: Path_, value: Any) -> Any:
    if not path:
        return value
    head = path[0]
    copy = list(obj) if isinstance(obj, list) else dict(obj)
    copy[head] = _set(obj[head], path[1:], value)
    return copy


def _fingerprint(message: Any) -> int:
    # The fast path is for {"role", "content"} only: a two-key dict without "role" has some
    # other key the hash would leave out (and a memo hit would send another request's value).
    if (type(message) is dict and len(message) == 2 and "role" in message
            and type(message.get("content")) is str):
        return hash((message["role"], message["content"]))
    return hash(json.dumps(message, sort_keys=True, ensure_ascii=False, default=str))


# --- recipes and memo ------------------------------------------------------------------------


@dataclass
class _Rules:
    by_kind: dict[str, tuple[Recipe, ...]]
    index_lines: bool


_lock = threading.RLock()
_loaded: list[Recipe] | None = None
_by_profile: dict[str, _Rules] = {}
_version = 0  # part of every memo key: new recipes never reuse old results
_memo: OrderedDict[int, _Node] = OrderedDict()
_memo_size = 0
_tips: OrderedDict[int, State] = OrderedDict()
_MAX_TIPS = 256
MEMO_CHARS = 64 * 1024 * 1024  # text kept for re-sent history; older prefixes are dropped


def loaded_recipes() -> list[Recipe]:
    global _loaded
    with _lock:
        if _loaded is None:
            from django.conf import settings

            # settings loaded and checked them at start; outside Django, the shipped ones
            _loaded = list(getattr(settings, "COMPRESSION_RECIPES", None)
                           or recipes_mod.load(None))
        return _loaded


def use_recipes(rules: Iterable[Recipe] | None) -> None:
    """Replace the loaded rules (None: load again from disk) and forget every memoised result."""
    global _loaded, _version, _memo_size
    with _lock:
        _loaded = None if rules is None else list(rules)
        _by_profile.clear()
        _memo.clear()
        _tips.clear()
        _memo_size = 0
        _version += 1


def _rules(profile: str) -> _Rules:
    rules = _by_profile.get(profile)
    if rules is None:
        active = [r for r in loaded_recipes() if RANK[r.profile] <= RANK[profile]]
        rules = _Rules(
            by_kind={k: tuple(r for r in active if k in r.segments) for k in KINDS},
            index_lines=any(r.action == "refer_seen_lines" for r in active),
        )
        _by_profile[profile] = rules
    return rules


def _remember(chain: int, node: _Node) -> None:
    global _memo_size
    with _lock:
        if (twin := _memo.pop(chain, None)) is not None:  # compressed meanwhile by another
            _memo_size -= twin.size
        _memo[chain] = node
        _memo_size += node.size
        while _memo_size > MEMO_CHARS and len(_memo) > 1:
            _, old = _memo.popitem(last=False)
            _memo_size -= old.size
