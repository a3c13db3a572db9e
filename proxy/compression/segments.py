"""Segmentize: cut one message text into typed segments that join back to the same text.

Types: code (fenced blocks, numbered file views), json, markdown, tool (tool output and logs),
prose. Recipes pick segments by type, so this is where "never touch code" is decided.
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass

CODE, JSON, MARKDOWN, TOOL, PROSE = "code", "json", "markdown", "tool", "prose"
KINDS = (CODE, JSON, MARKDOWN, TOOL, PROSE)


@dataclass(frozen=True)
class Piece:
    """One segment of one message's text, before and after compression."""

    message: int
    kind: str
    before: str
    after: str

# A line that may open or close a fence: indent, three or more ` or ~, the rest of the line.
_FENCE_LINE = re.compile(r"^([ \t]*)(`{3,}|~{3,})([^\n]*)(\n|\Z)", re.M)
# A backtick fence that never closes runs to the end of the text (CommonMark), so code cut off
# mid-block is still code. Only ``` with a language tag or none: tilde lines are common in
# output (Python's "~~~~^^^^" traceback markers, reStructuredText underlines) and open nothing.
_UNCLOSED = re.compile(r"^[ \t]*`{3,}[\w.+#-]*[ \t]*\r?\n", re.M)
# Editor views and `cat -n`: "1457:    code" or "  12|code" or "  12\tcode".
_NUMBERED = re.compile(r"^[ \t]*\d+(?::|\||\t)")
# What tells output from writing: prompts, log levels, timestamps, tracebacks, progress meters.
# Both are counted over a whole text at once (re.M): one scan in C instead of one per line.
_OUTPUT_LINE = re.compile(
    r"^(?:\S*[$#>] ?$|\(\w[^)\n]*: [^)\n]*\)$|\d{4}-\d\d-\d\d[ T]\d\d:\d\d|Traceback "
    r"|[ \t]+File \"|[ \t]*%[ \t]+Total|[ \t]*\d+[ \t]+\d+[ \t]+\d+|[-rwxdls]{10}[ \t]"
    r"|[ \t]*at \S+\(|[<{\[]|[ \t]*\d+(?::|\||\t)"
    r"|[^\n]*\b(?:ERROR|WARN(?:ING)?|INFO|DEBUG|FATAL)\b)",
    re.M,
)
# A line of writing: starts with a word, runs on for a while, ends like a sentence.
_SENTENCE = re.compile(r"^[ \t]*[\"'(*_]?[A-Za-z][a-z]*[ ,][^\n]{16,}[.?!:][\"')*_]*[ \t]*$", re.M)
_SAMPLE = 8192  # what a text is decided on; long outputs do not change character halfway
_MARKDOWN = re.compile(r"^(?:#{1,6} |\s*(?:[-*+]|\d+\.) \S|\|.*\|\s*$|> )")


def segmentize(text: str, tool: bool) -> list[tuple[str, str]]:
    """[(kind, text), ...] whose texts concatenate to `text` exactly.

    `tool` says the text is a tool result (OpenAI role "tool", Anthropic tool_result).
    """
    out: list[tuple[str, str]] = []
    pos = 0
    for start, end, info in _fenced_blocks(text):
        if start > pos:
            out.extend(_unfenced(text[pos:start], tool))
        block = text[start:end]
        lang = info.strip().lower()
        out.append((JSON if lang == "json" and _fenced_json(block) else CODE, block))
        pos = end
    unclosed = _UNCLOSED.search(text, pos)
    if unclosed is not None:  # every fence before it closed, so none after it can
        if unclosed.start() > pos:
            out.extend(_unfenced(text[pos : unclosed.start()], tool))
        out.append((CODE, text[unclosed.start() :]))
    elif pos < len(text):
        out.extend(_unfenced(text[pos:], tool))
    return out


def _fenced_blocks(text: str) -> Iterator[tuple[int, int, str]]:
    """(start, end, info string) of each closed fenced block, in order. A fence closes at the
    next line of the same character, at least as long, at the same indent, with only
    whitespace after it (a CRLF line end included).

    Closing lines are indexed first, so a fence-like line that never closes (a traceback marker)
    costs a lookup: a search for its closer through the rest of the text, for each such line,
    was quadratic (1,000 markers in 170 kB of output took a second under the lock).
    """
    lines = list(_FENCE_LINE.finditer(text))
    closers: dict[tuple[str, str], list[int]] = {}  # (indent, character) → indexes in lines
    for k, m in enumerate(lines):
        if not m.group(3).strip():
            closers.setdefault((m.group(1), m.group(2)[0]), []).append(k)
    k = 0
    while k < len(lines):
        indent, fence, info, newline = lines[k].groups()
        close = None
        # An opening line ends in a newline, and its info string has no backtick.
        if newline and "`" not in info:
            same = closers.get((indent, fence[0]), [])
            close = next((same[j] for j in range(bisect.bisect_right(same, k), len(same))
                          if len(lines[same[j]].group(2)) >= len(fence)), None)
        if close is None:
            k += 1
            continue
        yield lines[k].start(), lines[close].end(), info
        k = close + 1


def _fenced_json(block: str) -> bool:
    # The lines between the opening line and the closing fence, whether or not a newline
    # follows the fence (a message often ends right after it).
    body = block.split("\n", 1)[1].rstrip("\n").rpartition("\n")[0] if "\n" in block else ""
    return _is_json(body)


def _is_json(text: str) -> bool:
    s = text.strip()
    if len(s) < 2 or s[0] not in "{[":
        return False
    try:
        json.loads(s)
    except ValueError:
        return False
    return True


def _unfenced(text: str, tool: bool) -> list[tuple[str, str]]:
    if _is_json(text):
        return [(JSON, text)]
    lines = text.splitlines(keepends=True)
    kind = TOOL if tool or _looks_like_output(text) else _writing_kind(lines)
    if kind != TOOL:
        return [(kind, text)]
    # Numbered file views inside tool output are code: their indentation is never touched.
    out: list[tuple[str, str]] = []
    run: list[str] = []
    run_kind = ""
    for line in lines:
        k = CODE if _NUMBERED.match(line) else TOOL
        if k != run_kind and run:
            out.append((run_kind, "".join(run)))
            run = []
        run_kind = k
        run.append(line)
    if run:
        out.append((run_kind, "".join(run)))
    return out


def _looks_like_output(text: str) -> bool:
    sample = text[:_SAMPLE]
    body = len(sample.split("\n")) - sample.count("\n\n")  # roughly: lines with something on
    if body < 3:
        return False
    output = len(_OUTPUT_LINE.findall(sample))
    sentences = len(_SENTENCE.findall(sample))
    return output * 4 >= body and sentences * 2 < body


def _writing_kind(lines: list[str]) -> str:
    marks = sum(1 for line in lines if _MARKDOWN.match(line))
    return MARKDOWN if marks >= 2 or any(line.startswith("#") and " " in line[:7]
                                        for line in lines[:1]) else PROSE
