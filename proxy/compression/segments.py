"""Segmentize: cut one message text into typed segments that join back to the same text.

Types: code (fenced blocks, numbered file views), json, markdown, tool (tool output and logs),
prose. Recipes pick segments by type, so this is where "never touch code" is decided.
"""

from __future__ import annotations

import json
import re

CODE, JSON, MARKDOWN, TOOL, PROSE = "code", "json", "markdown", "tool", "prose"
KINDS = (CODE, JSON, MARKDOWN, TOOL, PROSE)

# A fence closes at a line of the same character, at least as long, at the same indent.
_FENCE = re.compile(
    r"^(?P<indent>[ \t]*)(?P<fence>(?P<char>[`~])(?P=char){2,})(?P<info>[^\n`]*)\n.*?"
    r"^(?P=indent)(?P=fence)(?P=char)*[ \t]*(?:\n|\Z)",
    re.M | re.S,
)
# A backtick fence that never closes runs to the end of the text (CommonMark), so code cut off
# mid-block is still code. Only ``` with a language tag or none: tilde lines are common in
# output (Python's "~~~~^^^^" traceback markers, reStructuredText underlines) and open nothing.
_UNCLOSED = re.compile(r"^[ \t]*`{3,}[\w.+#-]*[ \t]*\n", re.M)
# Editor views and `cat -n`: "1457:    code" or "  12|code" or "  12\tcode".
_NUMBERED = re.compile(r"^[ \t]*\d+(?::|\||\t)")
# What tells output from writing: prompts, log levels, timestamps, tracebacks, progress meters.
_OUTPUT_LINE = re.compile(
    r"^\S*[$#>] ?$|^\(\w[^)]*: [^)]*\)$|\b(?:ERROR|WARN(?:ING)?|INFO|DEBUG|FATAL)\b"
    r"|^\d{4}-\d\d-\d\d[ T]\d\d:\d\d|^Traceback |^\s+File \"|^\s*%\s+Total|^\s*\d+\s+\d+\s+\d+"
    r"|^[-rwxdls]{10}\s|^\s*at \S+\(|^[<{\[]"
)
# Possessive (++): a word never gives letters back (the next thing is a space or the ending),
# so a line that is no sentence fails without trying every shorter word.
_SENTENCE = re.compile(r"[A-Za-z][a-z]++(?: [A-Za-z'’,()-]++){3,}+[.?!:]?[\"')]*\s*$")
# A sentence ends the line ($), so only the end is searched: searched from every start, a long
# line that is no sentence costs quadratic time (three 40,000-character lines of words ending
# in a number took 80 s, under the compression lock).
_SENTENCE_TAIL = 240
_MARKDOWN = re.compile(r"^(?:#{1,6} |\s*(?:[-*+]|\d+\.) \S|\|.*\|\s*$|> )")


def segmentize(text: str, tool: bool) -> list[tuple[str, str]]:
    """[(kind, text), ...] whose texts concatenate to `text` exactly.

    `tool` says the text is a tool result (OpenAI role "tool", Anthropic tool_result).
    """
    out: list[tuple[str, str]] = []
    pos = 0
    for m in _FENCE.finditer(text):
        if m.start() > pos:
            out.extend(_unfenced(text[pos : m.start()], tool))
        lang = m.group("info").strip().lower()
        out.append((JSON if lang == "json" and _fenced_json(m.group(0)) else CODE, m.group(0)))
        pos = m.end()
    unclosed = _UNCLOSED.search(text, pos)
    if unclosed is not None:  # every fence before it closed, so none after it can
        if unclosed.start() > pos:
            out.extend(_unfenced(text[pos : unclosed.start()], tool))
        out.append((CODE, text[unclosed.start() :]))
    elif pos < len(text):
        out.extend(_unfenced(text[pos:], tool))
    return out


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
    kind = TOOL if tool or _looks_like_output(lines) else _writing_kind(lines)
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


def _looks_like_output(lines: list[str]) -> bool:
    body = [line for line in lines if line.strip()]
    if len(body) < 3:
        return False
    output = sum(1 for line in body if _OUTPUT_LINE.search(line) or _NUMBERED.match(line))
    sentences = sum(1 for line in body if _SENTENCE.search(line[-_SENTENCE_TAIL:]))
    return output * 4 >= len(body) and sentences * 2 < len(body)


def _writing_kind(lines: list[str]) -> str:
    marks = sum(1 for line in lines if _MARKDOWN.match(line))
    return MARKDOWN if marks >= 2 or any(line.startswith("#") and " " in line[:7]
                                        for line in lines[:1]) else PROSE
