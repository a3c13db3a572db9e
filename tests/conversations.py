"""Conversations for the compression tests: one abstract conversation in both provider shapes,
hypothesis strategies for random ones, and a mask that hides exactly the texts compression may
change, so everything else can be compared as a whole.

The mask is written from the requirements (user text and tool results change, nothing else),
not from proxy.compression's own slot functions, so it checks them rather than repeats them.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from proxy import compression

# --- one conversation, both shapes ------------------------------------------------------------

PNG = (  # a 1x1 PNG
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
EPHEMERAL = {"type": "ephemeral"}
# Trailing spaces and a run of blank lines: what the safe rules would strip from user text.
SYSTEM = "You are a careful assistant.   \n\n\n\nAnswer briefly.  "


@dataclass(frozen=True)
class User:
    text: str
    cache: bool = False  # Anthropic: a cache_control breakpoint on this text block
    image: bool = False


@dataclass(frozen=True)
class Call:
    """The assistant asks for a tool (OpenAI tool_calls, Anthropic tool_use)."""

    id: str
    name: str = "run"
    args: dict[str, Any] = field(default_factory=lambda: {"cmd": "make test   \n\n\n"})
    text: str = ""  # text beside the call, with whitespace the safe rules would strip
    thinking: bool = False


@dataclass(frozen=True)
class Result:
    """The tool's answer (OpenAI role tool, Anthropic tool_result)."""

    id: str
    text: str
    error: bool = False
    cache: bool = False
    blocks: bool = False  # content as a list of text blocks rather than a string


@dataclass(frozen=True)
class Reply:
    text: str


Turn = User | Call | Result | Reply


def openai_payload(turns: list[Turn], system: str | None = SYSTEM) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    if system is not None:
        messages.append({"role": "system", "content": system})
    for turn in turns:
        if isinstance(turn, User):
            if turn.image:
                messages.append({"role": "user", "content": [
                    {"type": "text", "text": turn.text},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                ]})
            else:
                messages.append({"role": "user", "content": turn.text})
        elif isinstance(turn, Call):
            messages.append({
                "role": "assistant",
                "content": turn.text or None,
                "tool_calls": [{"id": turn.id, "type": "function", "function": {
                    "name": turn.name, "arguments": json.dumps(turn.args)}}],
            })
        elif isinstance(turn, Result):
            content: Any = [{"type": "text", "text": turn.text}] if turn.blocks else turn.text
            messages.append({"role": "tool", "tool_call_id": turn.id, "content": content})
        else:
            messages.append({"role": "assistant", "content": turn.text})
    return {"model": "gpt-4o-mini", "messages": messages}


def anthropic_payload(turns: list[Turn], system: str | None = SYSTEM) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    for turn in turns:
        if isinstance(turn, User):
            if not turn.cache and not turn.image:
                messages.append({"role": "user", "content": turn.text})
                continue
            block: dict[str, Any] = {"type": "text", "text": turn.text}
            if turn.cache:
                block["cache_control"] = dict(EPHEMERAL)
            blocks: list[dict[str, Any]] = [block]
            if turn.image:
                blocks.insert(0, {"type": "image", "source": {
                    "type": "base64", "media_type": "image/png", "data": PNG}})
            messages.append({"role": "user", "content": blocks})
        elif isinstance(turn, Call):
            content: list[dict[str, Any]] = []
            if turn.thinking:
                content.append({"type": "thinking", "thinking": "Run it.   \n\n\n",
                                "signature": "c2lnbmF0dXJl"})
            if turn.text:
                content.append({"type": "text", "text": turn.text})
            content.append({"type": "tool_use", "id": turn.id, "name": turn.name,
                            "input": turn.args})
            messages.append({"role": "assistant", "content": content})
        elif isinstance(turn, Result):
            inner: Any = [{"type": "text", "text": turn.text}] if turn.blocks else turn.text
            result: dict[str, Any] = {"type": "tool_result", "tool_use_id": turn.id,
                                      "content": inner}
            if turn.error:
                result["is_error"] = True
            if turn.cache:
                result["cache_control"] = dict(EPHEMERAL)
            messages.append({"role": "user", "content": [result]})
        else:
            messages.append({"role": "assistant", "content": turn.text})
    payload: dict[str, Any] = {"model": "claude-sonnet-4-5", "max_tokens": 1024,
                               "messages": messages}
    if system is not None:
        payload["system"] = [{"type": "text", "text": system, "cache_control": dict(EPHEMERAL)}]
    return payload


SHAPES = {"openai": openai_payload, "anthropic": anthropic_payload}


# --- the texts compression may change ---------------------------------------------------------

HOLE = "\x00text"


def mask(provider: str, payload: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(the payload with every compressible text replaced by HOLE, those texts in order)."""
    out = copy.deepcopy(payload)
    texts: list[str] = []

    def take(holder: dict[str, Any], key: str) -> None:
        texts.append(holder[key])
        holder[key] = HOLE

    def text_blocks(blocks: list[Any]) -> None:
        for b in blocks:
            if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str):
                take(b, "text")

    for m in out.get("messages") or []:
        if not isinstance(m, dict):
            continue
        roles = ("user", "tool", "function") if provider == "openai" else ("user",)
        if m.get("role") not in roles:
            continue
        content = m.get("content")
        if isinstance(content, str):
            take(m, "content")
        elif isinstance(content, list):
            text_blocks(content)
            if provider == "anthropic":
                for b in content:
                    if isinstance(b, dict) and b.get("type") == "tool_result":
                        if isinstance(b.get("content"), str):
                            take(b, "content")
                        elif isinstance(b.get("content"), list):
                            text_blocks(b["content"])
    return out, texts


def dumps(messages: list[Any]) -> list[str]:
    """Each message as the bytes a provider's prompt cache would see."""
    return [json.dumps(m, ensure_ascii=False) for m in messages]


def cold(provider: str, payload: dict[str, Any], profile: str) -> compression.Outcome:
    """compress() with nothing memoised: the pure function the memo must agree with."""
    compression.use_recipes(None)
    return compression.compress(provider, payload, profile)


# Lines the pipeline writes in place of lines it left out or referred to.
NOTE = re.compile(
    r"^\[(?:\.\.\. \d+ lines omitted \.\.\.|lines \d+-\d+ as shown in message \d+ above"
    r"|\d+ lines as shown in message \d+ above)\]$"
)


def kept_intact(before: str, after: str) -> bool:
    """after is before with some runs of whole lines each replaced by one NOTE line, and
    every other line byte-identical and in order."""
    src, out = before.split("\n"), after.split("\n")
    reach = {0}  # positions in src that the lines of out so far can end at
    for line in out:
        if NOTE.match(line):
            reach = set(range(min(reach) + 1, len(src) + 1)) if reach else set()
        else:
            reach = {i + 1 for i in reach if i < len(src) and src[i] == line}
        if not reach:
            return False
    return len(src) in reach


# --- random texts ------------------------------------------------------------------------------

SENTENCES = (
    "The deploy failed right after the cache was cleared.",
    "Can you look at why the worker keeps restarting?",
    "I think the config loader reads the wrong file.",
    "Please keep the public interface exactly as it is.",
    "Here is what I see when I run it locally:",
)
FILE = [
    f"{'    ' * (n % 3)}value_{n} = compute('item  {n}', \"x   y\")  # line {n}"
    for n in range(1, 121)
]
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/srv/app/main.py", line 42, in <module>\n'
    "    main()\n"
    '  File "/srv/app/main.py", line 17, in main\n'
    "    return load('settings  .yaml')\n"
    "           ~~~~^^^^^^^^^^^^^^^^^^^\n"
    "FileNotFoundError: [Errno 2] No such file or directory: 'settings  .yaml'"
)
CURL = (
    "  % Total    % Received % Xferd  Average Speed   Time    Time     Time  Current\n"
    "                                 Dload  Upload   Total   Spent    Left  Speed\n"
    "100  1256  100  1256    0     0   5230      0 --:--:-- --:--:-- --:--:--  5233"
)
SWE_STATUS = "(Open file: /repo/src/app.py)\n(Current directory: /repo)"

_code_line = st.builds(
    lambda indent, n, quote, trailing: f"{indent}v{n} = {quote}a  b{quote}  # c{n}{trailing}",
    st.sampled_from(["", "    ", "\t", "        "]),
    st.integers(0, 999),
    st.sampled_from(["'", '"']),
    st.sampled_from(["", "   ", "\t"]),
)


@st.composite
def fenced_code(draw: st.DrawFn) -> str:
    # Blank runs, identical lines and trailing spaces: each one a safe rule would change
    # outside code, so any of them reaching code shows up as a changed line.
    lines = draw(st.lists(st.one_of(_code_line, st.just(""), st.just("    pass")),
                          min_size=1, max_size=12))
    lang = draw(st.sampled_from(["python", "", "js"]))
    return f"```{lang}\n" + "\n".join(lines) + "\n```"


@st.composite
def json_doc(draw: st.DrawFn) -> str:
    value = draw(st.recursive(
        st.one_of(st.integers(-5, 500), st.sampled_from(["a  b", " x ", "", "tab\there"]),
                  st.booleans(), st.none()),
        lambda inner: st.one_of(st.lists(inner, max_size=3),
                                st.dictionaries(st.sampled_from(["id", "name", "k v"]), inner,
                                                max_size=3)),
        max_leaves=8,
    ).filter(lambda v: isinstance(v, (dict, list))))
    doc = json.dumps(value, indent=draw(st.sampled_from([None, 2, 4])))
    # Bare JSON is a JSON segment only when it is the whole text; fenced, anywhere.
    return draw(st.sampled_from([doc, f"```json\n{doc}\n```", f"```json\n{doc}\n```"]))


@st.composite
def log_lines(draw: st.DrawFn) -> str:
    runs = draw(st.lists(st.tuples(
        st.sampled_from(["INFO connecting to db", "WARN retrying in 5s", "DEBUG tick",
                         "\x1b[31mERROR\x1b[0m timeout"]),
        st.integers(1, 6)), min_size=1, max_size=5))
    return "\n".join(f"2024-05-01 10:00:0{n % 10} {line}"
                     for n, (line, times) in enumerate(runs) for _ in range(times))


@st.composite
def file_view(draw: st.DrawFn) -> str:
    start = draw(st.integers(1, len(FILE) - 5))
    end = draw(st.integers(start + 4, min(len(FILE), start + 30)))
    return "\n".join(f"{1400 + n}:{FILE[n - 1]}" for n in range(start, end + 1))


@st.composite
def long_output(draw: st.DrawFn) -> str:
    n = draw(st.sampled_from([70, 120, 420]))
    lines = [f"compiling module_{k} ok" for k in range(n)]
    at = draw(st.integers(25, n - 20))
    lines[at] = f"src/mod_{at}.py:{at}: error: undefined name"
    return "\n".join(lines)


prose = st.lists(st.sampled_from(SENTENCES), min_size=1, max_size=3).map(" ".join)
markdown = st.lists(st.sampled_from(SENTENCES), min_size=2, max_size=4).map(
    lambda items: "## Notes\n" + "\n".join(f"- {s}  " for s in items))
block = st.one_of(
    prose, markdown, fenced_code(), json_doc(), json_doc(), log_lines(), file_view(),
    long_output(), long_output(), st.just(TRACEBACK), st.just(CURL), st.just(SWE_STATUS),
)
# Each separator ends the block before it at a line end, so fences close on a line of their own.
separator = st.sampled_from(["\n", "\n\n", "\n\n\n\n", "   \n", "\n \n\t\n\n"])


@st.composite
def text(draw: st.DrawFn) -> str:
    blocks = draw(st.lists(block, min_size=1, max_size=4))
    out = blocks[0]
    for b in blocks[1:]:
        out += draw(separator) + b
    if draw(st.integers(0, 5)) == 0:  # cut off inside a code block: the fence never closes
        return out + "\n" + draw(fenced_code()).rsplit("\n", 1)[0] + "\n"
    return out + draw(st.sampled_from(["", "\n", "  \n\n\n"]))


@st.composite
def conversation(draw: st.DrawFn, max_turns: int = 8) -> list[Turn]:
    """User turns, tool calls and their results (sometimes an earlier result again), replies."""
    turns: list[Turn] = [User(draw(text()), cache=draw(st.booleans()))]
    outputs: list[str] = []
    calls = 0
    for _ in range(draw(st.integers(0, max_turns - 1))):
        kind = draw(st.sampled_from(["user", "tool", "tool", "reply"]))
        if kind == "user":
            turns.append(User(draw(text()), cache=draw(st.booleans()),
                              image=draw(st.booleans())))
        elif kind == "reply":
            turns.append(Reply("Done.   \n\n\n\nAnything else?"))
        else:
            calls += 1
            call_id = f"toolu_{calls:02d}"
            repeat = bool(outputs) and draw(st.booleans())
            output = draw(st.sampled_from(outputs)) if repeat else draw(text())
            if draw(st.booleans()):  # SWE-agent ends each tool output with the same footer
                output = output.rstrip("\n") + "\n" + SWE_STATUS + "\n"
            outputs.append(output)
            turns.append(Call(call_id, text=draw(st.sampled_from(["", "Running it.  \n\n\n"])),
                              thinking=draw(st.booleans())))
            turns.append(Result(call_id, output, error=draw(st.booleans()),
                                cache=draw(st.booleans()), blocks=draw(st.booleans())))
    return turns
