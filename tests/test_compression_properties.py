"""Properties of compress() over random conversations, in both provider shapes.

Random mixes of prose, markdown, fenced code (indentation, string literals, trailing spaces,
blank runs), JSON, repeated log lines, numbered file views, curl meters, tracebacks and tool
outputs repeated from earlier turns; tool calls, images, thinking and cache_control blocks.

The memo is process-wide and deliberately not cleared between examples: a warm memo full of
other conversations is the state the proxy is in, and must never change an answer.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy import compression
from tests.conversations import (
    HOLE,
    SHAPES,
    Turn,
    cold,
    conversation,
    dumps,
    kept_intact,
    mask,
)

PROFILES = ("safe", "balanced", "aggressive")
FAST = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

shapes = st.sampled_from(sorted(SHAPES))
profiles = st.sampled_from(PROFILES)


def payload_of(provider: str, turns: list[Turn]) -> dict[str, Any]:
    return SHAPES[provider](turns)


def sent(outcome: compression.Outcome) -> list[str]:
    return dumps(outcome.payload["messages"])


@FAST
@given(provider=shapes, profile=profiles, turns=conversation())
def test_it_sends_every_earlier_message_byte_identical_when_one_more_is_added(
    provider: str, profile: str, turns: list[Turn]
) -> None:
    payload = payload_of(provider, turns)
    messages = payload["messages"]
    warm: list[list[str]] = []
    for k in range(1, len(messages) + 1):  # the client re-sends its history, one turn longer
        warm.append(sent(compression.compress(provider, {**payload, "messages": messages[:k]},
                                              profile)))
    for k in range(1, len(messages) + 1):
        # With the memo cleared before each call: the same bytes come from the pure function.
        assert sent(cold(provider, {**payload, "messages": messages[:k]}, profile)) == warm[k - 1]
    for k in range(1, len(warm)):
        assert warm[k][:k] == warm[k - 1]


@FAST
@given(provider=shapes, profile=profiles, turns=conversation(),
       other=conversation(max_turns=3))
def test_it_gives_the_same_result_cold_and_warm_across_branches(
    provider: str, profile: str, turns: list[Turn], other: list[Turn]
) -> None:
    # Two continuations of one prefix (a regenerated answer, an edited last turn): whichever
    # ran first, each gets what it gets from scratch, and the shared prefix goes out the same.
    cut = len(turns) // 2
    a, b = payload_of(provider, turns), payload_of(provider, turns[:cut] + other)
    # The same messages read as the other provider's shape first: a memo shared between
    # shapes would hand this provider the other one's result.
    compression.compress("anthropic" if provider == "openai" else "openai", a, profile)
    warm_a = compression.compress(provider, a, profile)
    warm_b = compression.compress(provider, b, profile)
    again_a = compression.compress(provider, a, profile)
    cold_a, cold_b = cold(provider, a, profile), cold(provider, b, profile)

    assert sent(warm_a) == sent(again_a) == sent(cold_a)
    assert sent(warm_b) == sent(cold_b)
    assert warm_a.recipes == again_a.recipes == cold_a.recipes
    assert warm_b.recipes == cold_b.recipes
    assert warm_a.pieces == cold_a.pieces
    shared = len(payload_of(provider, turns[:cut])["messages"])
    assert sent(warm_a)[:shared] == sent(warm_b)[:shared]


@FAST
@given(provider=shapes, profile=profiles, turns=conversation())
def test_it_keeps_every_kept_line_of_code_byte_identical(
    provider: str, profile: str, turns: list[Turn]
) -> None:
    outcome = compression.compress(provider, payload_of(provider, turns), profile)
    by_message: dict[int, list[compression.Piece]] = {}
    for piece in outcome.pieces:
        by_message.setdefault(piece.message, []).append(piece)
    for pieces in by_message.values():
        for piece in pieces:
            if piece.kind != "code" or piece.after == "" or piece.after.startswith(
                    "[TokenPak: identical"):  # the whole text became a reference to an earlier one
                continue
            assert kept_intact(piece.before, piece.after), (piece.before, piece.after)
    # Every code line written with a marker ("# c17") is in the output as it was, or not at all.
    _, before = mask(provider, payload_of(provider, turns))
    _, after = mask(provider, outcome.payload)
    originals = {line for t in before for line in t.split("\n") if "# c" in line}
    for t in after:
        for line in t.split("\n"):
            if "# c" in line:
                assert line in originals, line


@FAST
@given(provider=shapes, profile=profiles, turns=conversation())
def test_it_changes_nothing_but_user_text_and_tool_results(
    provider: str, profile: str, turns: list[Turn]
) -> None:
    payload = payload_of(provider, turns)
    untouched = copy.deepcopy(payload)
    outcome = compression.compress(provider, payload, profile)

    assert payload == untouched  # the client's own dict is never written to
    skeleton_in, texts_in = mask(provider, payload)
    skeleton_out, texts_out = mask(provider, outcome.payload)
    # Tool calls and ids, tool_use/tool_result, is_error, images, thinking, cache_control,
    # system: all of it equal, key for key.
    assert json.dumps(skeleton_out) == json.dumps(skeleton_in)
    assert HOLE not in json.dumps([texts_in, texts_out])
    assert len(texts_out) == len(texts_in)
    for old, new in zip(texts_in, texts_out, strict=True):
        assert len(new) <= len(old)
    assert outcome.changed == (texts_out != texts_in)


@FAST
@given(provider=shapes, profile=profiles, turns=conversation())
def test_it_accounts_for_every_text_in_its_pieces(
    provider: str, profile: str, turns: list[Turn]
) -> None:
    # The ledger's per-segment figures come from pieces: they must add up to what was sent.
    payload = payload_of(provider, turns)
    outcome = compression.compress(provider, payload, profile)
    for i, (m_in, m_out) in enumerate(zip(payload["messages"], outcome.payload["messages"],
                                          strict=True)):
        _, texts_in = mask(provider, {"messages": [m_in]})
        _, texts_out = mask(provider, {"messages": [m_out]})
        pieces = [p for p in outcome.pieces if p.message == i]
        assert "".join(p.before for p in pieces) == "".join(texts_in)
        assert "".join(p.after for p in pieces) == "".join(texts_out)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(provider=shapes, turns=conversation())
def test_it_returns_the_payload_itself_when_the_profile_is_off(
    provider: str, turns: list[Turn]
) -> None:
    payload = payload_of(provider, turns)
    outcome = compression.compress(provider, payload, "off")
    assert outcome.payload is payload
    assert not outcome.changed and outcome.pieces == [] and outcome.recipes == {}


@pytest.fixture(autouse=True, scope="module")
def _shipped_recipes() -> None:
    """The shipped rules, loaded afresh for this module (another test may have replaced them)."""
    compression.use_recipes(None)
