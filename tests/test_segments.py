"""segmentize(): typed segments that join back to the text, exactly.

Segment types decide which rules may touch what (code is never changed), so a misread here is
either a missed saving or, worse, a safe rule let loose on code.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.compression.segments import KINDS, segmentize
from tests.conversations import TRACEBACK, text

EXAMPLES: dict[str, tuple[str, bool, list[tuple[str, str]]]] = {
    "prose": (
        "The deploy failed after the cache was cleared. Can you check why?", False,
        [("prose", "The deploy failed after the cache was cleared. Can you check why?")],
    ),
    "markdown heading": (
        "# Plan\nFirst we read the config file.\n", False,
        [("markdown", "# Plan\nFirst we read the config file.\n")],
    ),
    "markdown list": (
        "Steps:\n- read the config\n- write the cache\n", False,
        [("markdown", "Steps:\n- read the config\n- write the cache\n")],
    ),
    "fenced code between prose": (
        'Look:\n```python\ndef f():\n    return "a  b"\n```\nThanks a lot for checking this.\n',
        False,
        [("prose", "Look:\n"), ("code", '```python\ndef f():\n    return "a  b"\n```\n'),
         ("prose", "Thanks a lot for checking this.\n")],
    ),
    "tilde fence": ("~~~\nx = 1\n~~~\n", False, [("code", "~~~\nx = 1\n~~~\n")]),
    "indented fence": ("  ```sh\n  ls -la\n  ```\n", False,
                       [("code", "  ```sh\n  ls -la\n  ```\n")]),
    "longer closing fence": ("a\n```\nx\n````\nafter\n", False,
                             [("prose", "a\n"), ("code", "```\nx\n````\n"), ("prose", "after\n")]),
    "fence inside a longer fence": ("````md\n```\nx\n```\n````\n", False,
                                    [("code", "````md\n```\nx\n```\n````\n")]),
    "unclosed fence runs to the end": (
        "It stops here:\n```python\nx = 1   \n\n\n\n", False,
        [("prose", "It stops here:\n"), ("code", "```python\nx = 1   \n\n\n\n")],
    ),
    "fence with CRLF line ends": (
        "Fix:\r\n```python\r\nx = 1   \r\n```\r\nThanks.\r\n", False,
        [("prose", "Fix:\r\n"), ("code", "```python\r\nx = 1   \r\n```\r\n"),
         ("prose", "Thanks.\r\n")],
    ),
    "tilde fence closes at a line as long": ("~~~~\nx\n~~~\ny\n~~~~\n", False,
                                             [("code", "~~~~\nx\n~~~\ny\n~~~~\n")]),
    "bare json": ('{\n  "a": [1, 2]\n}\n', False, [("json", '{\n  "a": [1, 2]\n}\n')]),
    "fenced json": ('```json\n{"a": 1}\n```\n', False, [("json", '```json\n{"a": 1}\n```\n')]),
    "fenced json ending the text": (
        'See:\n```json\n{\n  "a": 1\n}\n```', False,
        [("prose", "See:\n"), ("json", '```json\n{\n  "a": 1\n}\n```')],
    ),
    "fenced json that is not json": ("```json\n{not json}\n```\n", False,
                                     [("code", "```json\n{not json}\n```\n")]),
    "log lines in a user message": (
        "2024-05-01 10:00:00 INFO start\n2024-05-01 10:00:01 WARN slow\n"
        "2024-05-01 10:00:02 INFO done\n", False,
        [("tool", "2024-05-01 10:00:00 INFO start\n2024-05-01 10:00:01 WARN slow\n"
                  "2024-05-01 10:00:02 INFO done\n")],
    ),
    "a traceback in a user message": (TRACEBACK, False, [("tool", TRACEBACK)]),
    "a tool result": ("Done.", True, [("tool", "Done.")]),
    "json tool result": ("[1, 2, 3]", True, [("json", "[1, 2, 3]")]),
    "numbered view in a tool result": (
        "$ cat -n app.py\n12:    x = 1\n13:    y = 2\nexit 0\n", True,
        [("tool", "$ cat -n app.py\n"), ("code", "12:    x = 1\n13:    y = 2\n"),
         ("tool", "exit 0\n")],
    ),
    "cat -n and pipe views": (
        "     1\tdef f():\n     2\t    pass\n  3|x = 1\n", True,
        [("code", "     1\tdef f():\n     2\t    pass\n  3|x = 1\n")],
    ),
    "numbered view pasted by the user": (
        "1457:    x = 1\n1458:    y = 2\n1459:    z = 3\n", False,
        [("code", "1457:    x = 1\n1458:    y = 2\n1459:    z = 3\n")],
    ),
}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_it_cuts_each_kind_of_text_into_its_segments(name: str) -> None:
    given_text, tool, expected = EXAMPLES[name]
    assert segmentize(given_text, tool) == expected


def test_it_gives_no_segments_for_an_empty_text() -> None:
    assert segmentize("", False) == [] and segmentize("", True) == []


@pytest.mark.parametrize("marker", ["    ~~~~^^^^^^", "    ~~~", "Title\n~~~~~"])
def test_it_reads_tilde_lines_in_output_as_output_not_a_fence(marker: str) -> None:
    # Python 3.11 traceback markers and reStructuredText underlines: never an unclosed fence,
    # which would turn the rest of the output into code.
    output = f"Traceback (most recent call last):\n{marker}\nValueError: bad\nmore   \n"
    assert segmentize(output, True) == [("tool", output)]


@pytest.mark.parametrize(
    ("given_text", "tool"),
    [
        # Three 40,000-character lines of words ending in a number: the sentence test searched
        # each from every start (83 s before).
        (("word " * 8000 + "5\n") * 3, False),
        # 10,000 Python traceback markers, each a fence-like line that never closes: each was
        # a scan of the rest of the text for its closer (about 100 s before).
        (('  File "a.py", line 3, in f\n    return g(x)\n           ~~~^^^\n') * 10_000, True),
    ],
    ids=["long lines", "many unclosed fence-like lines"],
)
def test_it_segments_big_texts_in_linear_time(given_text: str, tool: bool) -> None:
    started = time.perf_counter()
    segments = segmentize(given_text, tool)
    assert time.perf_counter() - started < 3  # well under a second here; the lock is global
    assert "".join(seg for _, seg in segments) == given_text


# Lines of every shape the segmenter looks at: fences, numbers, prompts, markdown, JSON-ish.
_line = st.one_of(
    st.sampled_from([
        "```", "```python", "~~~", "````", "  ```", "{", "}", "[1, 2]", '{"a": 1}',
        "12:    x = 1", "   3\tpass", "4|y", "$ ls", "# Title", "- item", "> quote",
        "2024-05-01 10:00:00 INFO x", "Traceback (most recent call last):", "", "   ",
        "The deploy failed after the cache was cleared.", "    ~~~~^^^^",
    ]),
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12),
)
_line_end = st.sampled_from(["\n", "\r\n", "\r", "\x0c", "\u2028", ""])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_line, _line_end), max_size=14), st.booleans())
def test_it_always_joins_back_to_the_original_text(
    lines: list[tuple[str, str]], tool: bool
) -> None:
    original = "".join(line + end for line, end in lines)
    segments = segmentize(original, tool)
    assert "".join(seg for _, seg in segments) == original
    assert all(seg and kind in KINDS for kind, seg in segments)


@settings(max_examples=100, deadline=None)
@given(text(), st.booleans())
def test_it_joins_back_conversation_texts_and_finds_their_fenced_code(
    message: str, tool: bool
) -> None:
    segments = segmentize(message, tool)
    assert "".join(seg for _, seg in segments) == message
    # Every line written inside a fence (marked "# c<n>") lands in a code or json segment.
    for kind, seg in segments:
        if "# c" in seg:
            assert kind == "code", (kind, seg)
