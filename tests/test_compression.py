"""compress(): profiles, each shipped recipe, dedup, what passes through untouched, the memo.

Every expected text is written out in full: a test that only checks "shorter" would pass a rule
that cuts the wrong lines.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy import compression
from proxy.compression import recipes
from tests.conversations import (
    EPHEMERAL,
    FILE,
    PNG,
    Call,
    Reply,
    Result,
    User,
    anthropic_payload,
    cold,
    dumps,
    openai_payload,
)


@pytest.fixture(autouse=True)
def _shipped_recipes() -> Iterator[None]:
    """The shipped rules and an empty memo for each test, whatever ran before."""
    compression.use_recipes(recipes.load(None))
    yield
    compression.use_recipes(None)


def compress(payload: dict[str, Any], profile: str = "safe",
             provider: str = "openai") -> compression.Outcome:
    return compression.compress(provider, payload, profile)


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def tool(text: str, call_id: str = "call_1") -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": text}


def call(call_id: str = "call_1") -> dict[str, Any]:
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": call_id, "type": "function", "function": {"name": "run", "arguments": "{}"}}]}


def last_text(outcome: compression.Outcome) -> str:
    return outcome.payload["messages"][-1]["content"]


def view(first: int, last: int) -> str:
    """Lines first..last of FILE as an editor tool shows them: "1405:    value_5 = ..."."""
    return "".join(f"{1400 + n}:{FILE[n - 1]}\n" for n in range(first, last + 1))


# --- profiles ----------------------------------------------------------------------------------

ANSI_OUTPUT = "\x1b[32mPASSED\x1b[0m test_a   \n\x1b[31mFAILED\x1b[0m test_b\n"


def test_it_returns_the_clients_own_payload_when_the_profile_is_off() -> None:
    payload = {"model": "gpt-4o", "messages": [user("Hello   \n\n\n\nthere")]}
    outcome = compress(payload, "off")
    assert outcome.payload is payload
    assert not outcome.changed and outcome.recipes == {} and outcome.pieces == []


def test_it_runs_the_rules_of_the_profile_and_of_every_lower_one() -> None:
    payload = {"messages": [tool(ANSI_OUTPUT)]}
    safe, balanced = compress(payload, "safe"), compress(payload, "balanced")
    assert last_text(safe) == "\x1b[32mPASSED\x1b[0m test_a\n\x1b[31mFAILED\x1b[0m test_b\n"
    assert safe.recipes == {"trailing-whitespace": 1}
    assert last_text(balanced) == "PASSED test_a\nFAILED test_b\n"
    assert balanced.recipes == {"trailing-whitespace": 1, "ansi-colours": 4}


def test_it_reads_the_profile_header_and_refuses_an_unknown_one() -> None:
    assert compression.parse_profile(None, "safe") == ("safe", "")
    assert compression.parse_profile("  ", "balanced") == ("balanced", "")
    assert compression.parse_profile(" Aggressive ", "safe") == ("aggressive", "")
    assert compression.parse_profile("max", "safe") == (
        "safe", "X-TokenPak-Compress must be one of off, safe, balanced, aggressive; got 'max'.")


# --- each shipped recipe, through compress() ---------------------------------------------------

LONG = [f"test_case_{n} PASSED" for n in range(450)]
LONG[150] = "tests/test_api.py::test_login FAILED"
LONG[200:205] = [
    "Traceback (most recent call last):",
    '  File "/srv/app/api.py", line 12, in login',
    "    user = find(name)",
    "    ~~~~^^^^^^",
    "KeyError: 'name'",
]
LONG[300] = "src/app/api.py:12: warning: unused import"
LONG_BALANCED = [
    *LONG[:100], "[... 50 lines omitted ...]", LONG[150], "[... 49 lines omitted ...]",
    *LONG[200:205], "[... 95 lines omitted ...]", LONG[300], "[... 89 lines omitted ...]",
    *LONG[390:],
]
# Aggressive cuts the balanced cut again; each gap counts the original lines it stands for.
LONG_AGGRESSIVE = [
    *LONG[:12], "[... 138 lines omitted ...]", LONG[150], "[... 49 lines omitted ...]",
    *LONG[200:205], "[... 95 lines omitted ...]", LONG[300], "[... 139 lines omitted ...]",
    *LONG[440:],
]
SWE_STATUS = "(Open file: /repo/src/app.py)\n(Current directory: /repo)\n"
CURL = (
    "$ curl -O https://example.com/file.tgz\n"
    "  % Total    % Received % Xferd  Average Speed   Time    Time     Time  Current\n"
    "                                 Dload  Upload   Total   Spent    Left  Speed\n"
    "100  1256  100  1256    0     0   5230      0 --:--:-- --:--:-- --:--:--  5233\n"
    "saved file.tgz\n"
)
LOG = (
    "2024-05-01 10:00:00 INFO starting\n"
    + "2024-05-01 10:00:01 WARN retrying connection\n" * 5
    + "2024-05-01 10:00:02 INFO done\n"
)

# recipe → (profile, messages, what the last message's text becomes, the recipes that fired)
RECIPE_EXAMPLES: dict[str, tuple[str, list[dict[str, Any]], str, dict[str, int]]] = {
    "json-minify": (
        "safe",
        [user('Why does this fail?\n```json\n{\n  "name": "a  b",\n  "tags": [1, 2]\n}\n```')],
        'Why does this fail?\n```json\n{"name":"a  b","tags":[1,2]}\n```',
        {"json-minify": 1},
    ),
    "trailing-whitespace": (
        "safe", [user("Please look at this.   \nIt fails on start.\t\n")],
        "Please look at this.\nIt fails on start.\n", {"trailing-whitespace": 2},
    ),
    "blank-lines": (
        "safe", [user("First paragraph of the note.\n\n\n\n\nSecond paragraph of the note.\n")],
        "First paragraph of the note.\n\nSecond paragraph of the note.\n", {"blank-lines": 1},
    ),
    "repeated-log-lines": (
        "safe", [tool(LOG)],
        "2024-05-01 10:00:00 INFO starting\n2024-05-01 10:00:01 WARN retrying connection\n"
        "[previous line repeated 4 more times]\n2024-05-01 10:00:02 INFO done\n",
        {"repeated-log-lines": 1},
    ),
    "ansi-colours": (
        "balanced", [tool("\x1b[1;32mok\x1b[0m build\n\x1b[31mERROR\x1b[0m lint\n\x1b[2K")],
        "ok build\nERROR lint\n", {"ansi-colours": 5},
    ),
    "curl-progress": (
        "balanced", [tool(CURL)],
        "$ curl -O https://example.com/file.tgz\n[curl progress meter removed]\nsaved file.tgz\n",
        {"curl-progress": 3},
    ),
    "seen-lines": (
        "balanced",
        [user("Open app.py"), call("c1"), tool(view(1, 20), "c1"), call("c2"),
         tool(view(10, 30), "c2")],
        "[lines 1410-1420 as shown in message 2 above]\n" + view(21, 30),
        {"seen-lines": 1},
    ),
    "seen-lines-short": (
        "aggressive",
        [user("Open app.py"), call("c1"), tool(view(1, 20), "c1"), call("c2"),
         tool(view(18, 30), "c2")],
        "[lines 1418-1420 as shown in message 2 above]\n" + view(21, 30),
        {"seen-lines-short": 1},
    ),
    "long-output": (
        "balanced", [tool("\n".join(LONG))], "\n".join(LONG_BALANCED), {"long-output": 1},
    ),
    "long-output-short": (
        "aggressive", [tool("\n".join(LONG))], "\n".join(LONG_AGGRESSIVE),
        {"long-output": 1, "long-output-short": 1},
    ),
    "swe-agent-status": (
        "balanced",
        [user("Fix the bug."), call("c1"), tool("File updated.\n" + SWE_STATUS, "c1"),
         call("c2"), tool("No output.\n" + SWE_STATUS, "c2")],
        "No output.\n(open file and directory unchanged)\n", {"swe-agent-status": 1},
    ),
}


def test_it_has_an_example_for_every_shipped_recipe() -> None:
    assert sorted(RECIPE_EXAMPLES) == sorted(r.name for r in recipes.load(None))


@pytest.mark.parametrize("name", sorted(RECIPE_EXAMPLES))
def test_it_applies_each_shipped_recipe(name: str) -> None:
    profile, messages, expected, fired = RECIPE_EXAMPLES[name]
    outcome = compress({"model": "gpt-4o", "messages": messages}, profile)
    assert last_text(outcome) == expected
    assert outcome.recipes == fired
    assert outcome.changed


@pytest.mark.parametrize("name", sorted(RECIPE_EXAMPLES))
def test_it_applies_no_recipe_below_its_profile(name: str) -> None:
    profile, messages, _expected, _fired = RECIPE_EXAMPLES[name]
    lower = recipes.PROFILES[recipes.RANK[profile] - 1]
    outcome = compress({"messages": messages}, lower)
    assert name not in outcome.recipes


def test_it_keeps_every_error_line_traceback_failing_test_and_file_line_in_a_cut() -> None:
    out = last_text(compress({"messages": [tool("\n".join(LONG))]}, "aggressive"))
    for line in ("tests/test_api.py::test_login FAILED", *LONG[200:205], LONG[300]):
        assert line in out.split("\n")


def test_it_refers_to_seen_lines_without_numbers_by_count() -> None:
    shown = "".join(f"{line}\n" for line in FILE[:8])
    messages = [tool("$ cat app.py\n" + shown, "c1"), call("c2"),
                tool("$ cat app.py | head -6\n" + "".join(f"{x}\n" for x in FILE[:6]), "c2")]
    assert last_text(compress({"messages": messages}, "balanced")) == (
        "$ cat app.py | head -6\n[6 lines as shown in message 0 above]\n")


# --- dedup -------------------------------------------------------------------------------------

BIG = "".join(f"line {n} of the build log, with some words\n" for n in range(20))  # > 300 chars


def test_it_replaces_a_tool_output_sent_earlier_with_a_reference_to_it() -> None:
    messages = [user("Build it."), call("c1"), tool(BIG, "c1"), call("c2"), tool(BIG, "c2")]
    outcome = compress({"messages": messages})
    assert outcome.payload["messages"][2]["content"] == BIG
    assert last_text(outcome) == "[TokenPak: identical to the tool output in message 2 above]"
    assert outcome.recipes == {"repeat-output": 1}


def test_it_replaces_a_pasted_text_sent_earlier_and_names_the_first_message() -> None:
    messages = [user(BIG), {"role": "assistant", "content": "ok"}, user(BIG), user(BIG)]
    sent = compress({"messages": messages}).payload["messages"]
    assert [m["content"] for m in sent] == [
        BIG, "ok", "[TokenPak: identical to the text in message 0 above]",
        "[TokenPak: identical to the text in message 0 above]",
    ]


def test_it_keeps_a_short_repeated_text_as_it_is() -> None:
    short = "line 1 of the build log\nline 2\n"
    outcome = compress({"messages": [tool(short, "c1"), call("c2"), tool(short, "c2")]})
    assert last_text(outcome) == short and not outcome.changed


def test_it_finds_a_repeated_tool_result_in_anthropic_blocks() -> None:
    turns = [User("Build it."), Call("toolu_1"), Result("toolu_1", BIG),
             Call("toolu_2"), Result("toolu_2", BIG, blocks=True, cache=True)]
    sent = compress(anthropic_payload(turns), provider="anthropic").payload["messages"]
    assert sent[-1] == {"role": "user", "content": [{
        "type": "tool_result", "tool_use_id": "toolu_2", "cache_control": EPHEMERAL,
        "content": [{"type": "text",
                     "text": "[TokenPak: identical to the tool output in message 2 above]"}],
    }]}


# --- code is never changed ---------------------------------------------------------------------

CODE_BLOCK = (
    "```python\n"
    "def greet(name):   \n"
    "    message = 'hello,   %s'  \n"
    "\n\n\n\n"
    "    pass\n    pass\n    pass\n"
    '    return """two\n\n\n\n  spaces  """\n'
    "```\n"
)


@pytest.mark.parametrize("profile", ["safe", "balanced", "aggressive"])
def test_it_never_changes_a_fenced_code_block(profile: str) -> None:
    text = "Can you fix this?   \n\n\n\n" + CODE_BLOCK + "Thanks.  "
    outcome = compress({"messages": [user(text)]}, profile)
    assert last_text(outcome) == "Can you fix this?\n\n" + CODE_BLOCK + "Thanks."


def test_it_never_changes_code_in_a_message_with_crlf_line_ends() -> None:
    text = "Fix this:   \r\n```python\r\nx = 'a   '   \r\n\r\n\r\n\r\ny = 1\r\n```\r\n"
    assert last_text(compress({"messages": [user(text)]})) == (
        "Fix this:\r\n```python\r\nx = 'a   '   \r\n\r\n\r\n\r\ny = 1\r\n```\r\n")


def test_it_never_changes_code_after_a_fence_that_does_not_close() -> None:
    text = "It stops here:   \n```python\nx = 'a   '   \n\n\n\ny = 1\n"
    assert last_text(compress({"messages": [user(text)]})) == (
        "It stops here:\n```python\nx = 'a   '   \n\n\n\ny = 1\n")


def test_it_never_changes_a_numbered_file_view_inside_tool_output() -> None:
    output = "$ open app.py   \n1457:    if x:   \n1458:\n1459:\n1460:\n1461:        return 'a  '\n"
    assert last_text(compress({"messages": [tool(output)]})) == (
        "$ open app.py\n1457:    if x:   \n1458:\n1459:\n1460:\n1461:        return 'a  '\n")


def test_it_minifies_json_but_keeps_its_strings() -> None:
    doc = '{\n  "query": "select  *\\n from t",\n  "rows": [ 1 , 2 ]\n}'
    assert last_text(compress({"messages": [tool(doc)]})) == (
        '{"query":"select  *\\n from t","rows":[1,2]}')


# --- what passes through untouched -------------------------------------------------------------


def test_it_changes_only_user_text_and_tool_results_in_an_openai_request() -> None:
    payload = {
        "model": "gpt-4o",
        "temperature": 0,
        "tools": [{"type": "function", "function": {"name": "ls", "parameters": {}}}],
        "messages": [
            {"role": "system", "content": "Be brief.   \n\n\n\nReally.  "},
            {"role": "developer", "content": [{"type": "text", "text": "Use tools.   "}]},
            {"role": "user", "name": "ann", "content": [
                {"type": "text", "text": "What is in this image?   "},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}",
                                                    "detail": "low"}},
            ]},
            {"role": "assistant", "content": "Let me look.   \n\n\n\n", "tool_calls": [
                {"id": "call_abc", "type": "function",
                 "function": {"name": "ls", "arguments": '{"path": "  .  "}'}}]},
            {"role": "tool", "tool_call_id": "call_abc", "content": "a.txt   \nb.txt\n"},
            {"role": "tool", "tool_call_id": "call_def",
             "content": [{"type": "text", "text": "c.txt   "}]},
        ],
    }
    original = copy.deepcopy(payload)
    expected = copy.deepcopy(payload)
    expected["messages"][2]["content"][0]["text"] = "What is in this image?"
    expected["messages"][4]["content"] = "a.txt\nb.txt\n"
    expected["messages"][5]["content"][0]["text"] = "c.txt"

    outcome = compress(payload)

    assert json.dumps(outcome.payload) == json.dumps(expected)  # key order included
    assert payload == original  # the client's dict is never written to


def test_it_changes_only_user_text_and_tool_results_in_an_anthropic_request() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": PNG}}
    payload = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "system": [{"type": "text", "text": "Be brief.   \n\n\n\n", "cache_control": EPHEMERAL}],
        "tools": [{"name": "ls", "input_schema": {"type": "object"},
                   "cache_control": EPHEMERAL}],
        "messages": [
            {"role": "user", "content": [
                image,
                {"type": "text", "text": "List it.   ", "cache_control": EPHEMERAL},
                {"type": "document", "source": {"type": "text", "media_type": "text/plain",
                                                "data": "notes   \n\n\n\n"}},
            ]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Run ls.   \n\n\n", "signature": "c2ln"},
                {"type": "text", "text": "Listing.   "},
                {"type": "tool_use", "id": "toolu_01", "name": "ls", "input": {"p": "  .  "}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01", "is_error": True,
                 "cache_control": EPHEMERAL,
                 "content": [{"type": "text", "text": "denied   \n\n\n\nretry"}, image]},
                {"type": "tool_result", "tool_use_id": "toolu_02", "content": "ok   "},
                {"type": "text", "text": "Now what?   "},
            ]},
        ],
    }
    original = copy.deepcopy(payload)
    expected = copy.deepcopy(payload)
    expected["messages"][0]["content"][1]["text"] = "List it."
    expected["messages"][2]["content"][0]["content"][0]["text"] = "denied\n\nretry"
    expected["messages"][2]["content"][1]["content"] = "ok"
    expected["messages"][2]["content"][2]["text"] = "Now what?"

    outcome = compress(payload, provider="anthropic")

    assert json.dumps(outcome.payload) == json.dumps(expected)
    assert payload == original


def test_it_compresses_text_the_same_when_the_cache_breakpoint_moves() -> None:
    # Claude Code moves its cache_control marker to the newest turn on every request: the
    # text at the old breakpoint must go out exactly as it did when it carried the marker.
    def turn(text: str, marked: bool) -> dict[str, Any]:
        block: dict[str, Any] = {"type": "text", "text": text}
        if marked:
            block["cache_control"] = EPHEMERAL
        return {"role": "user", "content": [block]}

    reply = {"role": "assistant", "content": [{"type": "text", "text": "Running."}]}
    first = [turn("Run the tests.   \n\n\n\n", True), reply, turn(LOG, True)]
    then = [turn("Run the tests.   \n\n\n\n", False), reply, turn(LOG, False), reply,
            turn("And now?   ", True)]
    sent_first = compress({"messages": first}, provider="anthropic").payload["messages"]
    sent_then = compress({"messages": then}, provider="anthropic").payload["messages"]

    assert sent_first[0]["content"] == [{"type": "text", "text": "Run the tests.\n\n",
                                         "cache_control": EPHEMERAL}]
    assert sent_then[0]["content"] == [{"type": "text", "text": "Run the tests.\n\n"}]
    assert sent_first[2]["content"][0]["text"] == sent_then[2]["content"][0]["text"] == (
        RECIPE_EXAMPLES["repeated-log-lines"][2])


UNREADABLE: list[dict[str, Any]] = [
    {"model": "x"},
    {"messages": "hello   \n\n\n\n"},
    {"messages": {"role": "user", "content": "hello   "}},
    {"messages": []},
    {"messages": ["hello   \n\n\n\n", 7, None]},
    {"messages": [{"role": "user", "content": 42}]},
    {"messages": [{"role": "user", "content": None}]},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": None}, "raw   ", 7]}]},
    {"messages": [{"role": "user", "content": [{"type": "tool_result", "content": 5}]}]},
    {"messages": [{"role": "assistant", "content": "mine   \n\n\n\n"}]},
    {"messages": [{"role": "system", "content": "rules   \n\n\n\n"}]},
    {"messages": [{"content": "no role   \n\n\n\n"}]},
]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize("payload", UNREADABLE, ids=range(len(UNREADABLE)))
def test_it_sends_what_it_cannot_read_unchanged(provider: str, payload: dict[str, Any]) -> None:
    outcome = compress(payload, "aggressive", provider)
    assert outcome.payload is payload
    assert not outcome.changed


def test_it_sends_the_request_unchanged_when_compression_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    payload = {"messages": [user("hello   ")]}
    outcome = compress(payload, "maximum")  # no such profile: the pipeline raises inside
    assert outcome.payload is payload and not outcome.changed
    assert outcome.skipped == "compression error"
    assert "compression failed; the request is forwarded unchanged" in caplog.text


# --- cache-aware: the memo, prefixes, branches -------------------------------------------------

SESSION = [
    User("Fix the failing test.   \n\n\n\n"), Call("t1"), Result("t1", view(1, 20)),
    Call("t2"), Result("t2", LOG + SWE_STATUS), Call("t3"), Result("t3", view(10, 40)),
    User(BIG), Call("t4"), Result("t4", LOG + SWE_STATUS, error=True),
    Call("t5"), Result("t5", "\n".join(LONG)), Reply("Done."), User(BIG),
]


def session(provider: str, upto: int) -> dict[str, Any]:
    build = openai_payload if provider == "openai" else anthropic_payload
    return build(SESSION[:upto])


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize("profile", ["safe", "balanced", "aggressive"])
def test_it_sends_the_same_bytes_warm_as_cold_and_every_earlier_message_unchanged(
    provider: str, profile: str
) -> None:
    previous: list[str] = []
    for upto in range(1, len(SESSION) + 1):  # the client re-sends its history each turn
        warm = compression.compress(provider, session(provider, upto), profile)
        sent = dumps(warm.payload["messages"])
        assert sent[: len(previous)] == previous
        fresh = cold(provider, session(provider, upto), profile)
        assert dumps(fresh.payload["messages"]) == sent
        assert fresh.recipes == warm.recipes
        previous = sent
        # The memo above was emptied by cold(); warm it again for the next, longer request.
        compression.compress(provider, session(provider, upto), profile)


@pytest.mark.parametrize(("memo_chars", "tips"), [(2_000, 256), (10**9, 0), (1, 0)])
def test_it_sends_the_same_bytes_when_the_memo_forgets(
    monkeypatch: pytest.MonkeyPatch, memo_chars: int, tips: int
) -> None:
    # A small memo drops old prefixes (a later message can outlive an earlier one); no tips
    # means every new turn rebuilds the state from the memoised deltas.
    expected = [dumps(cold("openai", session("openai", n), "balanced").payload["messages"])
                for n in range(1, len(SESSION) + 1)]
    monkeypatch.setattr(compression, "MEMO_CHARS", memo_chars)
    monkeypatch.setattr(compression, "_MAX_TIPS", tips)
    compression.use_recipes(None)
    for n in range(1, len(SESSION) + 1):
        got = compression.compress("openai", session("openai", n), "balanced")
        assert dumps(got.payload["messages"]) == expected[n - 1]


def test_it_compresses_each_branch_of_a_conversation_as_if_it_were_the_only_one() -> None:
    # A regenerated or edited turn: the second branch must not refer to what only the first
    # one showed, and going back to the first gives what it gave before.
    prefix = [User("Build it."), Call("t1"), Result("t1", LOG)]
    a = [*prefix, Call("t2"), Result("t2", BIG)]
    b = [*prefix, Reply("Shall I?"), User("Yes."), Call("t3"), Result("t3", BIG)]
    a_then = [*a, Call("t4"), Result("t4", BIG)]

    sent = {name: dumps(compress(openai_payload(turns), "balanced").payload["messages"])
            for name, turns in (("prefix", prefix), ("a", a), ("b", b), ("a_then", a_then))}
    again_a = dumps(compress(openai_payload(a), "balanced").payload["messages"])

    assert sent["a"][:4] == sent["b"][:4] == sent["prefix"]
    assert json.loads(sent["b"][-1])["content"] == BIG  # first time in this branch
    assert json.loads(sent["a_then"][-1])["content"] == (
        "[TokenPak: identical to the tool output in message 5 above]")
    assert again_a == sent["a"] == sent["a_then"][: len(sent["a"])]
    for turns, name in ((a, "a"), (b, "b"), (a_then, "a_then")):
        assert dumps(cold("openai", openai_payload(turns), "balanced").payload["messages"]) == (
            sent[name])


def test_it_keeps_the_memo_of_one_provider_apart_from_the_other() -> None:
    # The same messages have different texts to compress in each shape (tool_result blocks
    # are Anthropic's): reading them as OpenAI first must not change the Anthropic result.
    payload = anthropic_payload([User("Go."), Call("toolu_1"), Result("toolu_1", LOG)])
    expected = dumps(cold("anthropic", payload, "safe").payload["messages"])
    compression.use_recipes(None)
    compression.compress("openai", payload, "safe")
    assert dumps(compression.compress("anthropic", payload, "safe").payload["messages"]) == (
        expected)


def test_it_never_sends_another_requests_message_for_one_without_a_role() -> None:
    compress({"messages": [{"content": "hi", "name": "a"}]})
    outcome = compress({"messages": [{"content": "hi", "name": "b"}, user("x   ")]})
    assert outcome.payload["messages"] == [{"content": "hi", "name": "b"}, user("x")]


def test_it_counts_the_recipes_that_shaped_the_request_history_included() -> None:
    first = [tool(ANSI_OUTPUT, "c1")]
    then = [*first, call("c2"), tool(LOG, "c2")]
    assert compress({"messages": first}, "balanced").recipes == {
        "trailing-whitespace": 1, "ansi-colours": 4}
    assert compress({"messages": then}, "balanced").recipes == {
        "trailing-whitespace": 1, "ansi-colours": 4, "repeated-log-lines": 1}


def test_it_counts_user_recipes_by_their_own_name(tmp_path: Path) -> None:
    (tmp_path / "mine.yaml").write_text(
        "- name: drop-debug\n  profile: safe\n  segments: [tool]\n  action: drop_lines\n"
        "  pattern: '^DEBUG '\n  note: '[debug lines dropped]'\n")
    compression.use_recipes(recipes.load(tmp_path))
    output = "DEBUG polling queue jobs\n" * 2 + "started\n" + "DEBUG polling queue jobs\n"
    outcome = compress({"messages": [tool(output)]})
    assert last_text(outcome) == "[debug lines dropped]\nstarted\n[debug lines dropped]\n"
    assert outcome.recipes == {"drop-debug": 3}
