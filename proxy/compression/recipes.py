"""Recipes: declarative rules (a segment type and a pattern → a transformation), read from YAML.

The shipped files live in proxy/compression/recipes/; a user adds or overrides rules with
files in `compression.recipes_dir` (default $TOKENPAK_HOME/recipes). A rule with the name of a
shipped one replaces it; `enabled: false` turns one off. Every rule is checked when loaded:
a typo stops the process with the file and the rule named, instead of silently not firing.

The transformations themselves are the functions in ACTIONS: data chooses and configures them,
code defines what each may do. Only actions that keep every kept line intact may touch code.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from proxy.compression.segments import CODE, JSON, KINDS

PROFILES = ("off", "safe", "balanced", "aggressive")
RANK = {name: rank for rank, name in enumerate(PROFILES)}
SHIPPED = Path(__file__).resolve().parent / "recipes"
WINDOW = 3  # lines per key in the index of lines already shown (refer_seen_lines)


class RecipeError(ValueError):
    """A recipe file TokenPak refuses; the message names the file, the rule and the fix."""


@dataclass
class State:
    """What earlier messages showed, for rules that refer back. Built only from messages before
    the current one, so a message's compressed form never depends on what comes after it."""

    outputs: dict[int, int] = field(default_factory=dict)  # hash of a whole text → message
    windows: dict[int, int] = field(default_factory=dict)  # hash of WINDOW lines → message
    last: dict[str, str] = field(default_factory=dict)  # rule name → its latest match

    def apply(self, delta: Delta) -> None:
        for key, where in delta.outputs:
            self.outputs.setdefault(key, where)
        for key, where in delta.windows:
            self.windows.setdefault(key, where)
        self.last.update(delta.last)


@dataclass
class Delta:
    """What one message added to the State: kept with the message's memo entry, so the State
    of any known prefix can be rebuilt without recompressing it."""

    outputs: list[tuple[int, int]] = field(default_factory=list)
    windows: list[tuple[int, int]] = field(default_factory=list)
    last: dict[str, str] = field(default_factory=dict)


@dataclass
class Context:
    message: int
    state: State
    delta: Delta


@dataclass(frozen=True)
class Recipe:
    name: str
    profile: str
    segments: tuple[str, ...]
    action: str
    source: str
    description: str = ""
    pattern: re.Pattern[str] | None = None
    keep: re.Pattern[str] | None = None
    note: str = ""
    replacement: str = ""
    min_lines: int = 3
    max_lines: int = 0
    head: int = 0
    tail: int = 0

    def apply(self, text: str, ctx: Context) -> tuple[str, int]:
        return ACTIONS[self.action].run(text, self, ctx)


# --- actions ----------------------------------------------------------------------------------

# The lookbehind starts a match only at the first blank of a run: linear on long blank runs.
_TRAILING = re.compile(r"(?<![ \t])[ \t]+(?=\r?\n|\Z)")
_BLANKS = re.compile(r"\n(?:[ \t]*\r?\n){2,}")
_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[ \t\r\n]+')
_NUMBER = re.compile(r"^\s*(\d+)[:|\t]")


def strip_trailing_whitespace(text: str, r: Recipe, ctx: Context) -> tuple[str, int]:
    out, n = _TRAILING.subn("", text)
    return out, n


def squeeze_blank_lines(text: str, r: Recipe, ctx: Context) -> tuple[str, int]:
    out, n = _BLANKS.subn("\n\n", text)
    return out, n


def minify_json(text: str, r: Recipe, ctx: Context) -> tuple[str, int]:
    """Whitespace between JSON tokens goes; strings are copied as they are. A fenced block keeps
    its fences, a bare document its surrounding whitespace (segments join back exactly)."""
    if text.lstrip().startswith(("```", "~~~")):
        head, rest = text.split("\n", 1)
        body, sep, fence = rest.rpartition("\n")
        if not sep:
            return text, 0
        tail = ""
        if not fence.strip():  # the block ended with a newline after the closing fence
            body, _, fence = body.rpartition("\n")
            tail = "\n"
        minified = _minify(body)
        return (f"{head}\n{minified}\n{fence}{tail}", 1) if minified != body else (text, 0)
    core = text.strip()
    start = text.index(core[0]) if core else 0
    minified = _minify(core)
    if minified == core:
        return text, 0
    return text[:start] + minified + text[start + len(core) :], 1


def _minify(text: str) -> str:
    return _JSON_TOKEN.sub(lambda m: m.group(0) if m.group(0)[0] == '"' else "", text)


def fold_repeated_lines(text: str, r: Recipe, ctx: Context) -> tuple[str, int]:
    lines = text.split("\n")
    out: list[str] = []
    hits = i = 0
    while i < len(lines):
        j = i + 1
        while j < len(lines) and lines[j] == lines[i]:
            j += 1
        run = j - i
        out.append(lines[i])
        if run >= r.min_lines and lines[i].strip():
            out.append(f"[previous line repeated {run - 1} more times]")
            hits += 1
        else:
            out.extend(lines[i + 1 : j])
        i = j
    return ("\n".join(out), hits) if hits else (text, 0)


def drop_lines(text: str, r: Recipe, ctx: Context) -> tuple[str, int]:
    """Lines matching the pattern go; each run of them leaves the note once (if there is one)."""
    assert r.pattern is not None
    if not r.pattern.search(text):  # the usual case, found in one scan
        return text, 0
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    hits = 0
    dropping = False
    for line in lines:
        if r.pattern.search(line.rstrip("\r\n")):
            if not dropping and r.note:
                out.append(r.note + ("\n" if line.endswith("\n") else ""))
            dropping = True
            hits += 1
        else:
            dropping = False
            out.append(line)
    return ("".join(out), hits) if hits else (text, 0)


def replace(text: str, r: Recipe, ctx: Context) -> tuple[str, int]:
    assert r.pattern is not None
    return r.pattern.subn(r.replacement, text)


def fold_repeated_match(text: str, r: Recipe, ctx: Context) -> tuple[str, int]:
    """A match equal to this rule's latest match in an earlier message becomes the note."""
    assert r.pattern is not None
    hits = 0
    previous = ctx.state.last.get(r.name)

    def one(m: re.Match[str]) -> str:
        nonlocal hits, previous
        found = m.group(0)
        same = found == previous
        previous = found
        if same:
            hits += 1
            return r.note + ("\n" if found.endswith("\n") and not r.note.endswith("\n") else "")
        return found

    out = r.pattern.sub(one, text)
    if previous is not None:
        ctx.delta.last[r.name] = previous
        ctx.state.last[r.name] = previous
    return (out, hits) if hits else (text, 0)


def refer_seen_lines(text: str, r: Recipe, ctx: Context) -> tuple[str, int]:
    """Runs of at least min_lines lines that an earlier message already showed, in the same
    order, become one line saying where they are. Kept lines are left exactly as they were."""
    body, newline = _split_end(text)
    lines = body.split("\n")
    if len(lines) < r.min_lines:
        return text, 0
    windows = ctx.state.windows
    # where[k]: the earlier message showing lines[k : k + WINDOW], if any
    where = [windows.get(_window_key(lines, k), -1) for k in range(len(lines) - WINDOW + 1)]
    out: list[str] = []
    hits = k = 0
    while k < len(lines):
        j = where[k] if k < len(where) else -1
        if j < 0:
            out.append(lines[k])
            k += 1
            continue
        end = k + 1  # windows k..end-1 all seen in message j: lines k .. end-1+WINDOW-1
        while end < len(where) and where[end] == j:
            end += 1
        last = end - 1 + WINDOW  # one past the last covered line
        if last - k >= r.min_lines:
            out.append(_reference(lines[k], lines[last - 1], last - k, j))
            hits += 1
            k = last
        else:
            out.append(lines[k])
            k += 1
    return ("\n".join(out) + newline, hits) if hits else (text, 0)


def _split_end(text: str) -> tuple[str, str]:
    """The text without its final newline, and that newline: lines, not an empty last one."""
    return (text[:-1], "\n") if text.endswith("\n") else (text, "")


def _reference(first: str, last: str, n: int, message: int) -> str:
    a, b = _NUMBER.match(first), _NUMBER.match(last)
    if a and b:
        return f"[lines {a.group(1)}-{b.group(1)} as shown in message {message} above]"
    return f"[{n} lines as shown in message {message} above]"


def _window_key(lines: list[str], k: int) -> int:
    return hash(tuple(lines[k : k + WINDOW]))


def index_lines(text: str, ctx: Context) -> None:
    """Remember every WINDOW-line stretch of what this message shows, for later messages."""
    lines = _split_end(text)[0].split("\n")
    windows = ctx.state.windows
    for k in range(len(lines) - WINDOW + 1):
        chunk = lines[k : k + WINDOW]
        if sum(len(line.strip()) for line in chunk) < 24:  # braces and blank lines match anything
            continue
        key = hash(tuple(chunk))
        if key not in windows:
            windows[key] = ctx.message
            ctx.delta.windows.append((key, ctx.message))


def head_tail(text: str, r: Recipe, ctx: Context) -> tuple[str, int]:
    """Long output keeps its head, its tail and every line the keep pattern marks (errors,
    tracebacks, failing tests, file:line); each gap says how many lines it left out."""
    lines = text.split("\n")
    if len(lines) <= r.max_lines:
        return text, 0
    keep = [k < r.head or k >= len(lines) - r.tail for k in range(len(lines))]
    if r.keep is not None:
        for k, line in enumerate(lines):
            if not keep[k] and r.keep.search(line):
                keep[k] = True
    out: list[str] = []
    k = 0
    while k < len(lines):
        if keep[k]:
            out.append(lines[k])
            k += 1
            continue
        end = k
        while end < len(lines) and not keep[end]:
            end += 1
        if end - k < 3:  # a note would cost about what it saves
            out.extend(lines[k:end])
        else:
            omitted = sum(_stands_for(line) for line in lines[k:end])
            out.append(f"[... {omitted} lines omitted ...]")
        k = end
    result = "\n".join(out)
    return (result, 1) if result != text else (text, 0)


# Notes an earlier rule wrote in place of several lines (an earlier head_tail's gap, a folded
# run, lines shown before): a gap that swallows one counts the lines it stood for, so a cut of a
# cut says how much of the original output is missing, not how many lines of the first cut.
_NOTE = re.compile(
    r"^\[(?:\.\.\. (\d+) lines omitted \.\.\.|previous line repeated (\d+) more times"
    r"|(\d+) lines as shown in message \d+ above"
    r"|lines (\d+)-(\d+) as shown in message \d+ above)\]$"
)


def _stands_for(line: str) -> int:
    m = _NOTE.match(line)
    if m is None:
        return 1
    omitted, repeated, shown, first, last = m.groups()
    if first is not None:
        return max(1, int(last) - int(first) + 1)
    return int(omitted or repeated or shown)


@dataclass(frozen=True)
class Action:
    run: Callable[[str, Recipe, Context], tuple[str, int]]
    needs: frozenset[str] = frozenset()  # required fields
    code_safe: bool = False  # leaves every kept line byte-identical


ACTIONS: dict[str, Action] = {
    "strip_trailing_whitespace": Action(strip_trailing_whitespace),
    "squeeze_blank_lines": Action(squeeze_blank_lines),
    "minify_json": Action(minify_json),
    "fold_repeated_lines": Action(fold_repeated_lines),
    "drop_lines": Action(drop_lines, frozenset({"pattern"})),
    "replace": Action(replace, frozenset({"pattern"})),
    "fold_repeated_match": Action(fold_repeated_match, frozenset({"pattern", "note"})),
    "refer_seen_lines": Action(refer_seen_lines, code_safe=True),
    "head_tail": Action(head_tail, frozenset({"max_lines"}), code_safe=True),
}

_FIELDS = {
    "name", "profile", "segments", "action", "description", "pattern", "keep", "note", "with",
    "min_lines", "max_lines", "head", "tail", "enabled",
}
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


def load(user_dir: Path | None) -> list[Recipe]:
    """Shipped rules, then the user's (same name replaces, enabled: false removes), in order."""
    rules: dict[str, Recipe | None] = {}
    files = sorted(SHIPPED.glob("*.yaml"))
    if user_dir is not None and user_dir.is_dir():
        files += sorted([*user_dir.glob("*.yaml"), *user_dir.glob("*.yml")])
    for path in files:
        for recipe in read_file(path):
            if isinstance(recipe, str):  # disabled
                if recipe not in rules:  # a misspelt name would leave the rule it meant firing
                    known = ", ".join(name for name, rule in rules.items() if rule is not None)
                    raise RecipeError(f"{path} (recipe {recipe!r}): enabled: false names no "
                                      f"shipped or earlier rule; known: {known}")
                rules[recipe] = None
            else:
                rules[recipe.name] = recipe
    return [r for r in rules.values() if r is not None]


def read_file(path: Path) -> list[Recipe | str]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        # str(e) spans several lines; the start refuses with one (as config.yaml's errors do).
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise RecipeError(f"{path}: not valid YAML{at} ({problem})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"{path}: cannot read recipes ({e})") from None
    if data is None:
        return []
    if isinstance(data, dict) and "recipes" in data:
        data = data["recipes"]
    if not isinstance(data, list):
        raise RecipeError(f"{path}: expected a list of recipes (or a 'recipes:' list)")
    return [parse(item, f"{path} (recipe {n + 1})") for n, item in enumerate(data)]


def parse(item: Any, where: str) -> Recipe | str:
    if not isinstance(item, dict):
        raise RecipeError(f"{where}: each recipe is a mapping with name, profile, segments, action")
    name = item.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise RecipeError(f"{where}: 'name' must be lowercase letters, digits, '-', '_' or '.'")
    where = f"{where.rsplit(' (', 1)[0]} (recipe {name!r})"
    unknown = set(item) - _FIELDS
    if unknown:
        raise RecipeError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}; "
                          f"known: {', '.join(sorted(_FIELDS))}")
    enabled = item.get("enabled", True)
    if not isinstance(enabled, bool):
        raise RecipeError(f"{where}: 'enabled' must be true or false")
    if not enabled:
        return name
    profile = item.get("profile")
    if profile not in PROFILES[1:]:
        raise RecipeError(f"{where}: 'profile' must be one of {', '.join(PROFILES[1:])}")
    action = item.get("action")
    if action not in ACTIONS:
        raise RecipeError(f"{where}: 'action' must be one of {', '.join(sorted(ACTIONS))}")
    spec = ACTIONS[action]
    segments = item.get("segments")
    if isinstance(segments, str):
        segments = [segments]
    if not isinstance(segments, list) or not segments or any(s not in KINDS for s in segments):
        raise RecipeError(f"{where}: 'segments' must list some of {', '.join(KINDS)}")
    if CODE in segments and not spec.code_safe:
        raise RecipeError(f"{where}: action {action} cannot apply to code segments (code "
                          f"indentation and string literals are never changed)")
    if action == "minify_json" and set(segments) != {JSON}:
        raise RecipeError(f"{where}: minify_json applies to json segments only")
    missing = {f for f in spec.needs if item.get(f) in (None, "")}
    if missing:
        raise RecipeError(f"{where}: action {action} needs {', '.join(sorted(missing))}")
    fields: dict[str, Any] = {}
    for key in ("pattern", "keep"):
        if key in item:
            if not isinstance(item[key], str):
                raise RecipeError(f"{where}: '{key}' must be a regular expression string")
            try:
                fields[key] = re.compile(item[key], re.M)
            except re.error as e:
                raise RecipeError(f"{where}: '{key}' is not a valid regular expression: {e}"
                                  ) from None
    for key, target in (("note", "note"), ("with", "replacement"), ("description", "description")):
        if key in item:
            if not isinstance(item[key], str):
                raise RecipeError(f"{where}: '{key}' must be a string")
            fields[target] = item[key]
    for key in ("min_lines", "max_lines", "head", "tail"):
        if key in item:
            value = item[key]
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 100000:
                raise RecipeError(f"{where}: '{key}' must be a whole number from 0 to 100000")
            fields[key] = value
    if action == "replace" and "pattern" in fields:
        try:  # checked now: a bad template (\2 with one group, \q) fails only when it matches
            _empty_match(fields["pattern"]).expand(fields.get("replacement", ""))
        except (re.error, IndexError) as e:
            raise RecipeError(f"{where}: 'with' is not a valid replacement for the pattern: {e}"
                              ) from None
    if action == "refer_seen_lines" and fields.get("min_lines", 3) < WINDOW:
        raise RecipeError(f"{where}: refer_seen_lines needs min_lines of at least {WINDOW}")
    if action == "head_tail" and fields.get("head", 0) + fields.get("tail", 0) >= fields[
            "max_lines"]:
        raise RecipeError(f"{where}: head + tail must be less than max_lines")
    return Recipe(name=name, profile=profile, segments=tuple(segments), action=action,
                  source=str(where.rsplit(" (", 1)[0]), **fields)


def _empty_match(pattern: re.Pattern[str]) -> re.Match[str]:
    """A match with the same groups (numbers and names) as `pattern` would have: it expands a
    replacement template exactly as a real match of `pattern` does."""
    names = {number: name for name, number in pattern.groupindex.items()}
    same_groups = re.compile("".join(f"(?P<{names[n]}>)" if n in names else "()"
                                     for n in range(1, pattern.groups + 1)))
    match = same_groups.match("")
    assert match is not None  # empty groups match the empty string
    return match
