"""What every provider's fake wire shares: the answer's parts, the request it answers, the options.

A provider module (``tests/fakes/openai.py``, ``tests/fakes/anthropic.py``) subclasses `Wire`
and says, as that provider does on the wire, what a request gets: JSON answers with usage,
SSE event sequences, error bodies. It does not know about sockets: `tests/fakeprovider.py`
(the faithful HTTP server the tests use) and `bench/fastprovider.py` (the benchmark's bare
asyncio upstream) put its answers on the wire, each in its own way.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

DEFAULT_TEXT = "Hello from the fake provider."

# The call every tool_call answer makes.
TOOL_NAME = "get_weather"
TOOL_ARGUMENTS: dict[str, Any] = {"city": "Paris"}


@dataclass
class Scenario:
    """Parsed ``x-fake-scenario``. The wire reads the options that change *what* is said
    (tool_call, stream_error, late_ping, crlf); the server the ones that change *how*.

    status=NNN    reply NNN with the route's error body (429 adds retry-after: 7)
    split=N       write the body in N-byte pieces, each its own chunk/write;
                  pieces straddle event boundaries unless a pause intervenes
    crlf          SSE lines end with CRLF instead of LF
    delay=S       pause S seconds between events, and before a JSON response
    cut=K         stream: K whole events, half of the next, then FIN with no
                  terminating chunk (K >= event count: all events, no end);
                  JSON: half the body (K ignored)
    gate          stream: after the first content event wait for
                  ``FakeProvider.release`` (at most GATE_TIMEOUT)
    hang          read the request, then say nothing until stop(), the client
                  leaving, or HANG_TIMEOUT; then close
    malformed     200 application/json with body ``{not json``
    stream_error  stream: after the first content event send the provider's
                  mid-stream error event and end the stream cleanly
    tool_call     chat completions and messages answer with a call of TOOL_NAME
                  (TOOL_ARGUMENTS): OpenAI with no content and finish_reason
                  tool_calls; Anthropic with the text block, then a tool_use
                  block, and stop_reason tool_use
    late_ping     Anthropic stream: one more ping between the last
                  content_block_stop and message_delta
    end=K         stream: K whole events, then a clean end of the body (the
                  provider's final event never comes)
    linger=S      stream: after the last event, hold the body open S seconds
                  (or until the client leaves) before ending it
    """

    status: int | None = None
    split: int | None = None
    crlf: bool = False
    delay: float = 0.0
    cut: int | None = None
    gate: bool = False
    hang: bool = False
    malformed: bool = False
    stream_error: bool = False
    tool_call: bool = False
    late_ping: bool = False
    linger: float = 0.0
    end: int | None = None

    @classmethod
    def parse(cls, raw: str) -> Scenario:
        sc = cls()
        for item in (part.strip() for part in raw.split(",")):
            if not item:
                continue
            name, _, value = item.partition("=")
            name = name.strip().lower()
            value = value.strip()
            try:
                if name == "status":
                    sc.status = int(value)
                elif name == "split":
                    sc.split = int(value)
                    if sc.split < 1:
                        raise ValueError
                elif name == "delay":
                    sc.delay = float(value)
                elif name == "cut":
                    sc.cut = int(value)
                elif name == "end":
                    sc.end = int(value)
                elif name == "linger":
                    sc.linger = float(value)
                elif name in _FLAGS and not value:
                    setattr(sc, name, True)
                else:
                    raise ValueError
            except ValueError:
                # Fail loudly: a typo in a scenario silently producing a happy
                # response would make the test pass for the wrong reason.
                raise ValueError(f"bad x-fake-scenario option {item!r}") from None
        return sc


_FLAGS = ("crlf", "gate", "hang", "malformed", "stream_error", "tool_call", "late_ping")


@dataclass
class Ctx:
    """One request, as a wire needs it to answer."""

    n: int  # the request's number: ids are made from it
    body: dict[str, Any]  # the JSON body ({} for a GET)
    headers: dict[str, str] = field(default_factory=dict)  # lower-cased names
    text: str = DEFAULT_TEXT
    usage_override: dict[str, Any] = field(default_factory=dict)  # deep-merged over the default
    scenario: Scenario = field(default_factory=Scenario)
    created: int | None = None  # the answer's timestamp; None: now

    @property
    def nl(self) -> str:
        return "\r\n" if self.scenario.crlf else "\n"

    @property
    def model(self) -> str:
        model = self.body.get("model")
        return header_json(self.headers, "x-fake-model",
                           model if isinstance(model, str) else "fake-model")

    def error_type(self, default: str) -> str:
        return header_json(self.headers, "x-fake-error-type", default)


@dataclass
class Event:
    data: bytes
    # The gate scenario pauses right after the first event marked as content.
    content: bool = False


@dataclass
class JsonReply:
    status: int
    payload: Any
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class StreamReply:
    events: list[Event]


Reply = JsonReply | StreamReply
Route = Callable[[Ctx], Reply]


class Wire:
    """One provider's wire format. Subclasses fill in the class attributes and the methods."""

    name: ClassVar[str]
    routes: ClassVar[dict[tuple[str, str], Route]]  # (method, path) -> answer
    request_id_header: ClassVar[str]
    ratelimit_header: ClassVar[str]  # one of the rate-limit headers the provider answers with
    reports: ClassVar[frozenset[str]]  # which of cache_read, cache_write, reasoning usage says
    stream_error_type: ClassVar[str]  # the error event a stream_error stream ends with
    stream_error_message: ClassVar[str]

    def claims(self, path: str, headers: dict[str, str]) -> bool:
        """Whether this provider answers a request for `path` (the fake serves all of them)."""
        raise NotImplementedError

    def error(self, message: str, type_: str, request_id: str | None = None) -> dict[str, Any]:
        """The provider's error body."""
        raise NotImplementedError

    def status_error(self, status: int, request_id: str,
                     error_type: Callable[[str], str] = str) -> JsonReply:
        """The answer for ``status=NNN``; `error_type` may replace the type the status has."""
        raise NotImplementedError

    def bad_request(self, message: str, request_id: str) -> JsonReply:
        return JsonReply(400, self.error(message, "invalid_request_error", request_id))

    def not_found(self, message: str, request_id: str) -> JsonReply:
        raise NotImplementedError

    def response_headers(self, request_id: str) -> dict[str, str]:
        return {self.request_id_header: request_id, self.ratelimit_header: "99"}

    def usage(self, *, input: int, output: int, cache_read: int = 0, cache_write: int = 0,
              reasoning: int = 0) -> dict[str, Any]:
        """An ``x-fake-usage`` saying these counts in the provider's words: `input` is every
        input token (cached or not), as TokenPak's ledger counts it. A count the provider does
        not report (OpenAI's cache writes, Anthropic's reasoning) raises ValueError."""
        raise NotImplementedError


def dumps(obj: Any) -> str:
    # Compact like the real APIs; raw UTF-8 so split=1 can land inside a
    # multi-byte character, which is exactly what a careless proxy breaks on.
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    if not text.isascii() and re.search("[\ud800-\udfff]", text):
        # A lone surrogate has no UTF-8: escaped (\udc80), as a JSON encoder sends it.
        return json.dumps(obj, separators=(",", ":"))
    return text


def sse(obj: Any, nl: str, event: str | None = None, content: bool = False) -> Event:
    data = obj if isinstance(obj, str) else dumps(obj)
    head = f"event: {event}{nl}" if event else ""
    return Event(f"{head}data: {data}{nl}{nl}".encode(), content)


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def usage_with_total(default: dict[str, Any], over: dict[str, Any],
                     parts: tuple[str, str]) -> dict[str, Any]:
    usage = merge(default, over)
    # Overriding only the token counts should still give a consistent total.
    if "total_tokens" in usage and "total_tokens" not in over:
        usage["total_tokens"] = usage[parts[0]] + usage[parts[1]]
    return usage


def words(text: str) -> list[str]:
    # Leading-space pieces, like real tokenizers emit; joining gives the text back.
    pieces = re.findall(r"\s*\S+", text)
    tail = text[len("".join(pieces)) :]
    if tail:
        if pieces:
            pieces[-1] += tail
        else:
            pieces = [tail]
    return pieces


def header_json(headers: dict[str, str], name: str, default: Any) -> Any:
    raw = headers.get(name)
    return default if raw is None else json.loads(raw)
