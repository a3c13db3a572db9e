"""Recipe files: the user's added to the shipped ones, and every mistake refused at start.

A refused file must say which file and which rule, because the alternative is a rule that
silently never fires (or fires on every request and fails it).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy import compression
from proxy.compression import recipes
from proxy.compression.recipes import RecipeError
from tests.test_conf import assert_config_error, run

SHIPPED_NAMES = [
    "json-minify", "trailing-whitespace", "blank-lines", "repeated-log-lines", "ansi-colours",
    "curl-progress", "seen-lines", "long-output", "swe-agent-status", "long-output-short",
    "seen-lines-short",
]
LOG = "start\n" + "WARN retrying connection\n" * 3 + "done   \n"


@pytest.fixture(autouse=True)
def _restore_recipes() -> Iterator[None]:
    yield
    compression.use_recipes(None)


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def compress_tool_output(rules: list[recipes.Recipe], text: str,
                         profile: str = "safe") -> compression.Outcome:
    compression.use_recipes(rules)
    return compression.compress(
        "openai", {"messages": [{"role": "tool", "tool_call_id": "c", "content": text}]}, profile)


# --- loading -----------------------------------------------------------------------------------


def test_it_loads_the_shipped_recipes_in_file_order() -> None:
    loaded = recipes.load(None)
    assert [r.name for r in loaded] == SHIPPED_NAMES
    assert {Path(r.source).name for r in loaded} == {
        "10-safe.yaml", "20-balanced.yaml", "30-aggressive.yaml"}


def test_it_ignores_a_recipes_folder_that_does_not_exist(tmp_path: Path) -> None:
    assert [r.name for r in recipes.load(tmp_path / "none")] == SHIPPED_NAMES


def test_it_adds_a_users_rule_after_the_shipped_ones(tmp_path: Path) -> None:
    path = write(tmp_path, "mine.yaml",
                 "- name: drop-heartbeats\n"
                 "  description: the worker's heartbeat says nothing\n"
                 "  profile: safe\n  segments: [tool]\n  action: drop_lines\n"
                 "  pattern: '^heartbeat '\n")
    loaded = recipes.load(tmp_path)

    assert [r.name for r in loaded] == [*SHIPPED_NAMES, "drop-heartbeats"]
    assert loaded[-1].source == str(path)
    outcome = compress_tool_output(loaded, "heartbeat 1\nheartbeat 2\njob done\nheartbeat 3\n")
    assert outcome.payload["messages"][0]["content"] == "job done\n"
    assert outcome.recipes == {"drop-heartbeats": 3}


def test_it_reads_a_recipes_mapping_and_yml_files_and_skips_empty_ones(tmp_path: Path) -> None:
    write(tmp_path, "a.yml",
          "recipes:\n  - name: no-tabs\n    profile: safe\n    segments: [prose]\n"
          "    action: replace\n    pattern: '\\t'\n    with: ''\n")
    write(tmp_path, "b.yaml", "# nothing here yet\n")
    assert [r.name for r in recipes.load(tmp_path)] == [*SHIPPED_NAMES, "no-tabs"]


def test_it_replaces_a_shipped_rule_of_the_same_name_in_place(tmp_path: Path) -> None:
    write(tmp_path, "override.yaml",
          "- name: repeated-log-lines\n  profile: safe\n  segments: [tool]\n"
          "  action: fold_repeated_lines\n  min_lines: 4\n")
    loaded = recipes.load(tmp_path)

    assert [r.name for r in loaded] == SHIPPED_NAMES  # same place in the order
    assert loaded[3].min_lines == 4
    # Three repeats no longer fold; the shipped rule would have.
    outcome = compress_tool_output(loaded, LOG)
    assert outcome.payload["messages"][0]["content"] == "start\n" + (
        "WARN retrying connection\n" * 3) + "done\n"
    assert outcome.recipes == {"trailing-whitespace": 1}
    assert compress_tool_output(recipes.load(None), LOG).recipes == {
        "trailing-whitespace": 1, "repeated-log-lines": 1}


def test_it_turns_off_a_shipped_rule_with_enabled_false(tmp_path: Path) -> None:
    write(tmp_path, "off.yaml", "- name: trailing-whitespace\n  enabled: false\n")
    loaded = recipes.load(tmp_path)

    assert "trailing-whitespace" not in [r.name for r in loaded]
    outcome = compress_tool_output(loaded, LOG)
    assert outcome.payload["messages"][0]["content"] == (
        "start\nWARN retrying connection\n[previous line repeated 2 more times]\ndone   \n")


def test_it_applies_user_files_in_name_order(tmp_path: Path) -> None:
    # 20- turns off what 10- added; a later file sees every earlier one.
    write(tmp_path, "10-add.yaml",
          "- name: mine\n  profile: safe\n  segments: [tool]\n  action: fold_repeated_lines\n")
    write(tmp_path, "20-off.yaml", "- name: mine\n  enabled: false\n")
    assert [r.name for r in recipes.load(tmp_path)] == SHIPPED_NAMES


# --- every mistake, refused with file and rule ---------------------------------------------------

RULE = "- name: my-rule\n  profile: safe\n  segments: [tool]\n"
KNOWN_ACTIONS = ("drop_lines, fold_repeated_lines, fold_repeated_match, head_tail, minify_json, "
                 "refer_seen_lines, replace, squeeze_blank_lines, strip_trailing_whitespace")
KNOWN_FIELDS = ("action, description, enabled, head, keep, max_lines, min_lines, name, note, "
                "pattern, profile, segments, tail, with")

# mistake → (file text, what follows "<file> (recipe 'my-rule'): ")
MISTAKES: dict[str, tuple[str, str]] = {
    "unknown action": (RULE + "  action: squash\n", f"'action' must be one of {KNOWN_ACTIONS}"),
    "bad regex": (
        RULE + "  action: drop_lines\n  pattern: '(unclosed'\n",
        "'pattern' is not a valid regular expression: missing ), unterminated subpattern at "
        "position 0",
    ),
    "bad keep regex": (
        RULE + "  action: head_tail\n  max_lines: 10\n  keep: '[a-'\n",
        "'keep' is not a valid regular expression: unterminated character set at position 0",
    ),
    "pattern not text": (RULE + "  action: drop_lines\n  pattern: 5\n",
                         "'pattern' must be a regular expression string"),
    "unknown segment type": (
        "- name: my-rule\n  profile: safe\n  segments: [tool, logs]\n"
        "  action: fold_repeated_lines\n",
        "'segments' must list some of code, json, markdown, tool, prose",
    ),
    "no segments": (
        "- name: my-rule\n  profile: safe\n  segments: []\n  action: fold_repeated_lines\n",
        "'segments' must list some of code, json, markdown, tool, prose",
    ),
    "code-unsafe action on code": (
        "- name: my-rule\n  profile: safe\n  segments: [prose, code]\n"
        "  action: strip_trailing_whitespace\n",
        "action strip_trailing_whitespace cannot apply to code segments (code indentation and "
        "string literals are never changed)",
    ),
    "minify_json beyond json": (
        "- name: my-rule\n  profile: safe\n  segments: [json, tool]\n  action: minify_json\n",
        "minify_json applies to json segments only",
    ),
    "missing required field": (RULE + "  action: fold_repeated_match\n  pattern: x\n",
                               "action fold_repeated_match needs note"),
    "missing pattern": (RULE + "  action: drop_lines\n", "action drop_lines needs pattern"),
    "missing max_lines": (RULE + "  action: head_tail\n", "action head_tail needs max_lines"),
    "bad profile": (
        "- name: my-rule\n  profile: extreme\n  segments: [tool]\n  action: fold_repeated_lines\n",
        "'profile' must be one of safe, balanced, aggressive",
    ),
    "profile off": (
        "- name: my-rule\n  profile: 'off'\n  segments: [tool]\n  action: fold_repeated_lines\n",
        "'profile' must be one of safe, balanced, aggressive",
    ),
    "unknown field": (RULE + "  action: fold_repeated_lines\n  min_line: 4\n",
                      f"unknown field(s) min_line; known: {KNOWN_FIELDS}"),
    "enabled not a boolean": (RULE + "  action: fold_repeated_lines\n  enabled: 'no'\n",
                              "'enabled' must be true or false"),
    "negative number": (RULE + "  action: fold_repeated_lines\n  min_lines: -1\n",
                        "'min_lines' must be a whole number from 0 to 100000"),
    "boolean number": (RULE + "  action: fold_repeated_lines\n  min_lines: true\n",
                       "'min_lines' must be a whole number from 0 to 100000"),
    "head and tail cover it all": (
        RULE + "  action: head_tail\n  max_lines: 10\n  head: 5\n  tail: 5\n",
        "head + tail must be less than max_lines",
    ),
    "seen lines under a window": (RULE + "  action: refer_seen_lines\n  min_lines: 2\n",
                                  "refer_seen_lines needs min_lines of at least 3"),
    "note not text": (RULE + "  action: drop_lines\n  pattern: x\n  note: [a]\n",
                      "'note' must be a string"),
    "bad replacement": (
        RULE + "  action: replace\n  pattern: 'v(\\d)'\n  with: '\\2'\n",
        "'with' is not a valid replacement for the pattern: invalid group reference 2 at "
        "position 1",
    ),
}


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_it_refuses_a_bad_rule_naming_the_file_and_the_rule(
    tmp_path: Path, mistake: str
) -> None:
    text, problem = MISTAKES[mistake]
    path = write(tmp_path, "bad.yaml", text)
    with pytest.raises(RecipeError) as refused:
        recipes.load(tmp_path)
    assert str(refused.value) == f"{path} (recipe 'my-rule'): {problem}"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("- name: My Rule\n  profile: safe\n", " (recipe 2): 'name' must be lowercase letters, "
         "digits, '-', '_' or '.'"),
        ("- profile: safe\n", " (recipe 2): 'name' must be lowercase letters, digits, '-', '_' "
         "or '.'"),
        ("- just a string\n", " (recipe 2): each recipe is a mapping with name, profile, "
         "segments, action"),
    ],
)
def test_it_names_a_rule_without_a_usable_name_by_its_place(
    tmp_path: Path, text: str, problem: str
) -> None:
    good = "- name: fine\n  profile: safe\n  segments: [tool]\n  action: fold_repeated_lines\n"
    path = write(tmp_path, "bad.yaml", good + text)
    with pytest.raises(RecipeError) as refused:
        recipes.load(tmp_path)
    assert str(refused.value) == f"{path}{problem}"


def test_it_refuses_turning_off_a_rule_that_does_not_exist(tmp_path: Path) -> None:
    path = write(tmp_path, "off.yaml", "- name: trailing-whitspace\n  enabled: false\n")
    with pytest.raises(RecipeError) as refused:
        recipes.load(tmp_path)
    assert str(refused.value) == (
        f"{path} (recipe 'trailing-whitspace'): enabled: false names no shipped or earlier "
        f"rule; known: {', '.join(SHIPPED_NAMES)}")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("name: my-rule\n", "expected a list of recipes (or a 'recipes:' list)"),
        ("- name: my-rule\n  segments: [tool\n",
         "not valid YAML at line 3, column 1 (expected ',' or ']', but got '<stream end>')"),
    ],
)
def test_it_refuses_a_file_that_is_not_a_list_of_recipes(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = write(tmp_path, "bad.yaml", text)
    with pytest.raises(RecipeError) as refused:
        recipes.load(tmp_path)
    assert str(refused.value) == f"{path}: {problem}"


def test_it_refuses_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"- name: \xff\n")
    with pytest.raises(RecipeError, match="cannot read recipes") as refused:
        recipes.load(tmp_path)
    assert str(refused.value).startswith(f"{path}: ")


# --- settings: a bad file stops the start --------------------------------------------------------


@pytest.mark.live
def test_it_stops_manage_py_on_a_bad_recipe_in_the_home_recipes_folder(tmp_path: Path) -> None:
    home = tmp_path / "home"
    path = write(home / "recipes", "bad.yaml", MISTAKES["unknown action"][0])

    proc = run(["manage.py", "check"], home)

    assert_config_error(proc, f"{path} (recipe 'my-rule'): 'action' must be one of")


@pytest.mark.live
def test_it_stops_manage_py_on_invalid_yaml_in_one_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    path = write(home / "recipes", "bad.yaml", "- name: my-rule\n  segments: [tool\n")

    proc = run(["manage.py", "check"], home)

    assert_config_error(proc, f"{path}: not valid YAML at line 3, column 1")


@pytest.mark.live
def test_it_reads_recipes_from_tokenpak_recipes_dir(tmp_path: Path) -> None:
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    write(home / "recipes", "good.yaml", "")  # the default folder is not read any more
    path = write(elsewhere, "bad.yaml", MISTAKES["bad profile"][0])

    proc = run(["manage.py", "check"], home, TOKENPAK_RECIPES_DIR=str(elsewhere))

    assert_config_error(proc, f"{path} (recipe 'my-rule'): 'profile' must be one of")


@pytest.mark.live
def test_it_starts_with_the_users_recipes_loaded(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write(home / "recipes", "mine.yaml",
          "- name: drop-heartbeats\n  profile: safe\n  segments: [tool]\n"
          "  action: drop_lines\n  pattern: '^heartbeat '\n"
          "- name: blank-lines\n  enabled: false\n")
    show = ("import django; django.setup(); from django.conf import settings as s; "
            "print(' '.join(r.name for r in s.COMPRESSION_RECIPES))")

    proc = run(["-c", show], home)

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [n for n in SHIPPED_NAMES if n != "blank-lines"] + [
        "drop-heartbeats"]
