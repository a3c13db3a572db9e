"""proxy.sse: the relay forwards whole events only, so the splitter must never lose, add or
reorder a byte however the provider's stream happens to be cut into chunks.

Property tests build real-looking SSE streams (event names, multi-line data, comments, LF or
CRLF line endings), cut them at random places and check the events come back byte-for-byte.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.sse import EventSplitter, parse_event

# The same blank-line rule sse.py uses; the tests state it again so a change there is noticed.
EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")


@dataclass(frozen=True)
class Event:
    raw: bytes
    name: str
    data: bytes  # what parse_event must return: data lines joined with \n


# Field values never hold a line break (that would start a new field). Everything else, including
# spaces, colons and non-ASCII, is fair game.
_value = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=20
)
_name = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=12
)


@st.composite
def events(draw: st.DrawFn) -> Event:
    eol = draw(st.sampled_from([b"\n", b"\r\n"]))
    lines: list[bytes] = []
    name = draw(st.one_of(st.none(), _name))
    if draw(st.booleans()):
        lines.append(b": ping")
    if name is not None:
        lines.append(b"event: " + name.encode())
    expected: list[bytes] = []
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        value = draw(_value).encode()
        if draw(st.booleans()):
            lines.append(b"data: " + value)
            expected.append(value)
        else:
            # Without the space the value is taken as is, except that the spec strips one
            # leading space, which is what parse_event must do too.
            lines.append(b"data:" + value)
            expected.append(value[1:] if value.startswith(b" ") else value)
    if draw(st.booleans()):
        lines.append(b"id: " + str(draw(st.integers(0, 10**6))).encode())
    raw = b"".join(line + eol for line in lines) + eol
    return Event(raw=raw, name=name or "", data=b"\n".join(expected))


@st.composite
def chunked(draw: st.DrawFn, payload: bytes) -> list[bytes]:
    """payload cut at random places; empty chunks are allowed because sockets deliver them."""
    cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=30)))
    bounds = [0, *cuts, len(payload)]
    return [payload[a:b] for a, b in itertools.pairwise(bounds)]


def feed_all(chunks: list[bytes]) -> tuple[list[bytes], bytes]:
    splitter = EventSplitter()
    out: list[bytes] = []
    for chunk in chunks:
        out.extend(splitter.feed(chunk))
    return out, splitter.pending


@given(st.data(), st.lists(events(), max_size=8))
@settings(max_examples=300)
def test_it_yields_every_event_exactly_once_in_order_however_the_stream_is_cut(
    data: st.DataObject, evs: list[Event]
) -> None:
    stream = b"".join(e.raw for e in evs)
    chunks = data.draw(chunked(stream))

    out, pending = feed_all(chunks)

    assert out == [e.raw for e in evs]
    assert pending == b""


@given(st.data(), st.lists(events(), max_size=6))
@settings(max_examples=300)
def test_it_parses_the_name_and_data_of_every_generated_event(
    data: st.DataObject, evs: list[Event]
) -> None:
    # Round trip through the splitter too: the relay parses what the splitter yields.
    out, _ = feed_all(data.draw(chunked(b"".join(e.raw for e in evs))))

    assert [parse_event(raw) for raw in out] == [(e.name, e.data) for e in evs]


@given(st.data(), st.lists(events(), max_size=5), events(), st.integers(min_value=1))
@settings(max_examples=300)
def test_it_keeps_a_trailing_incomplete_event_in_pending(
    data: st.DataObject, evs: list[Event], last: Event, cut_seed: int
) -> None:
    # A stream cut by the provider: the last event lost at least its final line break, so it
    # has not ended and must not be forwarded.
    cut = 1 + cut_seed % (len(last.raw) - 1)  # keep 1 .. len-1 bytes of it
    partial = last.raw[:cut]
    stream = b"".join(e.raw for e in evs) + partial

    out, pending = feed_all(data.draw(chunked(stream)))

    assert out == [e.raw for e in evs]
    assert pending == partial


# Garbage rich in the bytes that matter (CR, LF) so separators straddle chunk boundaries often.
_garbage = st.binary(max_size=300) | st.lists(
    st.sampled_from([b"\r", b"\n", b"\r\n", b"a", b"data: x", b":", b"\x00", b"\xff"]),
    max_size=60,
).map(b"".join)


@given(st.data(), _garbage)
@settings(max_examples=500)
def test_it_never_raises_or_loses_a_byte_on_garbage(data: st.DataObject, payload: bytes) -> None:
    chunks = data.draw(chunked(payload))

    out, pending = feed_all(chunks)

    assert b"".join(out) + pending == payload
    # Each event ends at the first separator in it, and pending holds no complete separator:
    # an event is forwarded as soon as it ends, and never two glued together.
    for raw in out:
        m = EVENT_END.search(raw)
        assert m is not None and m.end() == len(raw)
    assert EVENT_END.search(pending) is None
    # How the bytes were cut never changes where events end.
    assert (out, pending) == feed_all([payload])
    for raw in out:
        parse_event(raw)  # must not raise either


def test_it_waits_for_a_separator_split_across_chunks() -> None:
    # The CRLF blank line cut after every byte: the search must look back into the buffer.
    splitter = EventSplitter()
    got: list[bytes] = []
    for chunk in (b"data: 1\r", b"\n", b"\r", b"\n"):
        got.extend(splitter.feed(chunk))
    assert got == [b"data: 1\r\n\r\n"]
    assert splitter.pending == b""


def test_it_parses_data_with_and_without_the_space() -> None:
    assert parse_event(b"data: hello\n\n") == ("", b"hello")
    assert parse_event(b"data:hello\n\n") == ("", b"hello")
    # Only one space belongs to the syntax; the rest is data.
    assert parse_event(b"data:  two\n\n") == ("", b" two")


def test_it_joins_multiple_data_lines_with_lf() -> None:
    assert parse_event(b"data: a\r\ndata: b\r\ndata:\r\n\r\n") == ("", b"a\nb\n")


def test_it_reads_the_event_name() -> None:
    raw = b'event: message_start\ndata: {"type":"message_start"}\n\n'
    assert parse_event(raw) == ("message_start", b'{"type":"message_start"}')
    assert parse_event(b"event:ping\r\n\r\n") == ("ping", b"")


def test_it_ignores_comments_and_other_fields() -> None:
    # Anthropic and proxies send ": ping" keep-alives; they carry no data.
    assert parse_event(b": ping\n\n") == ("", b"")
    assert parse_event(b": ping\nid: 7\nretry: 100\ndata: x\n\n") == ("", b"x")


# --- the providers' taps read what a provider sends, whatever it is -------------------------

# JSON values as a provider might get them wrong: absurd numbers (1e400 parses as infinity),
# other types where a string or a count belongs, and strings holding raw bytes that are not UTF-8.
_json_value = st.one_of(
    st.sampled_from([b"1e400", b"-1", b"99999999999999999999999", b"null", b"true", b"{}",
                     b"[]", b'"x"', b'"\\u0000"', b'"\\udc80"', b"1.5"]),
    st.binary(max_size=40).map(lambda b: b'"' + b.replace(b'"', b"").replace(b"\\", b"")
                               + b'"'),
)
_FIELDS = {
    "openai": [b'{"model":%s,"choices":[{"delta":{"content":%s}}]}',
               b'{"model":"m","choices":[],"usage":{"prompt_tokens":%s,"completion_tokens":%s}}',
               b'{"error":{"type":%s,"message":%s}}',
               b'{"type":"response.completed","response":{"usage":{"input_tokens":%s,'
               b'"output_tokens":%s}}}'],
    "anthropic": [b'{"type":"message_start","message":{"model":%s,"usage":{"input_tokens":%s}}}',
                  b'{"type":"content_block_delta","delta":{"text":%s,"x":%s}}',
                  b'{"type":"message_delta","usage":{"output_tokens":%s,"x":%s}}',
                  b'{"type":"error","error":{"type":%s,"message":%s}}'],
}
_NAMES = {"anthropic": [b"message_start", b"content_block_delta", b"message_delta", b"error"]}


@st.composite
def _provider_events(draw: st.DrawFn, provider: str) -> list[bytes]:
    events = []
    for _ in range(draw(st.integers(min_value=1, max_value=6))):
        i = draw(st.integers(min_value=0, max_value=3))
        data = _FIELDS[provider][i] % (draw(_json_value), draw(_json_value))
        name = b"event: " + _NAMES[provider][i] + b"\n" if provider in _NAMES else b""
        events.append(name + b"data: " + data + b"\n\n")
    return events


@given(st.sampled_from(["openai", "anthropic"]), st.data())
@settings(max_examples=300)
def test_it_relays_whatever_a_provider_streams_without_raising(provider: str,
                                                               data: st.DataObject) -> None:
    from proxy.providers import ANTHROPIC, OPENAI

    events = data.draw(_provider_events(provider))
    tap = (OPENAI if provider == "openai" else ANTHROPIC).tap("m", False)

    out = [tap.event(raw) for raw in events]

    assert out == events  # forwarded as the provider sent them
    assert isinstance(tap.response_model, str)
    usage = tap.estimate(lambda: 0) if tap.needs_estimate else tap.usage
    assert usage is not None and usage.input_tokens >= 0 and usage.output_tokens >= 0
