"""The docs stay true to the tree: links resolve, the settings page is the registry's, and every
test RELIABILITY.md cites exists.

In-process and quick: no server, no database. Each failure says what to fix.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tokenpak_site import conf, settings_doc

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

_FENCE = re.compile(r"^(```|~~~)")
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks (a `# comment` in a shell block is no heading)."""
    out, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if not fenced:
            out.append(line)
    return out


def slug(heading: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation but - and _ dropped, spaces to -."""
    text = _CODE_SPAN.sub(lambda m: m.group(2), heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link in a heading: its text
    text = "".join(c for c in text.lower() if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in prose_lines(path.read_text()):
        m = _HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")  # GitHub numbers repeats: x, x-1, x-2
    return found


def links(path: Path) -> list[str]:
    targets = []
    for line in prose_lines(path.read_text()):
        line = _CODE_SPAN.sub("", line)  # `[x](y)` in code is an example, not a link
        targets += _LINK.findall(line)
    return targets


def test_it_links_only_to_files_and_headings_that_exist() -> None:
    broken = []
    for path in markdown_files():
        where = path.relative_to(ROOT)
        for target in links(path):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            file_part, _, fragment = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            if not dest.exists():
                broken.append(f"{where}: {target} (no file {file_part})")
            elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
                broken.append(f"{where}: {target} (no heading #{fragment} in {dest.name})")
    assert not broken, "broken links in the docs:\n  " + "\n  ".join(broken)


def test_it_keeps_the_settings_reference_current() -> None:
    page = DOCS / "SETTINGS.md"
    current = page.read_text() if page.exists() else ""
    assert current == settings_doc.render(), (
        f"docs/SETTINGS.md is not what the settings registry (tokenpak_site/conf.py KEYS) "
        f"generates. Regenerate it: {settings_doc.COMMAND}"
    )


def test_it_keeps_notes_only_for_settings_that_exist() -> None:
    stale = sorted(set(settings_doc.NOTES) - set(conf.KEYS))
    assert not stale, (f"tokenpak_site/settings_doc.py NOTES names settings KEYS no longer has: "
                       f"{', '.join(stale)}; move or remove those notes")


# --- RELIABILITY.md's tests ------------------------------------------------------------------

_CITED = re.compile(r"^(?:(test_\w+\.py)|…)?(?:::(\w+(?:::\w+)?)|(_\w+))?(?:\[.*\])?$")


def collected_tests() -> dict[str, set[str]]:
    """Test names by file name, read from tests/ with ast (nothing is imported): functions as
    `name`, a test class's methods as `Class::name`, inherited ones (a shared contract in
    another module of tests/) included."""
    trees = {path: ast.parse(path.read_text(), str(path))
             for path in sorted((ROOT / "tests").rglob("*.py"))}
    classes = {node.name: node for tree in trees.values() for node in ast.walk(tree)
               if isinstance(node, ast.ClassDef)}

    def methods(cls: ast.ClassDef) -> set[str]:
        own = {n.name for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
               and n.name.startswith("test")}
        for base in cls.bases:
            if isinstance(base, ast.Name) and base.id in classes:
                own |= methods(classes[base.id])
        return own

    found: dict[str, set[str]] = {}
    for path, tree in trees.items():
        if not path.name.startswith("test_"):
            continue
        names = found.setdefault(path.name, set())
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if node.name.startswith("test"):
                    names.add(node.name)
            elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
                names |= {f"{node.name}::{m}" for m in methods(node)}
    return found


def cited_tests(text: str) -> list[tuple[str, str, str]]:
    """(file, name, how it was written) for each test the markdown names in a code span.

    Written as `test_x.py::test_name[params]`, `test_x.py` alone (the whole file), `…::name`
    (the file named just before) or `…_end` (a test in that file whose name ends so)."""
    cited: list[tuple[str, str, str]] = []
    last_file = ""
    for span in re.findall(r"`([^`]+)`", text):
        span = span.replace("\\|", "|").strip()
        if not (span.startswith(("test_", "…")) and ("::" in span or span.endswith(".py")
                                                     or span.startswith("…_"))):
            continue
        m = _CITED.match(span)
        if m is None:
            cited.append(("", "", span))
            continue
        file, name, ending = m.groups()
        file = file or last_file
        last_file = file
        cited.append((file, name or (f"*{ending}" if ending else ""), span))
    return cited


def test_it_names_only_tests_that_exist_in_reliability_md() -> None:
    tests = collected_tests()
    missing = []
    for file, name, span in cited_tests((DOCS / "RELIABILITY.md").read_text()):
        if not file:
            missing.append(f"{span} (not read as file::test)")
        elif file not in tests:
            missing.append(f"{span} (no tests/{file})")
        elif name.startswith("*"):
            if not any(t.endswith(name[1:]) for t in tests[file]):
                missing.append(f"{span} (no test in {file} ending {name[1:]})")
        elif name and name not in tests[file]:
            elsewhere = sorted(f for f, names in tests.items() if name in names)
            hint = f"; it is in {', '.join(elsewhere)}" if elsewhere else ""
            written = "" if span == f"{file}::{name}" else f"written {span}; "
            missing.append(f"{file}::{name} ({written}no such test in {file}{hint})")
    assert not missing, ("docs/RELIABILITY.md names tests that do not exist:\n  "
                         + "\n  ".join(missing))


def test_it_reads_every_way_reliability_md_names_a_test() -> None:
    text = ("`test_a.py::test_one`, `…::test_two[x\\|y]`, `…_ctrl_c` and `test_b.py` "
            "(cases), property test `test_c.py::test_three[end=3…]`, `not_a_test`, `/v1/…`")
    assert cited_tests(text) == [
        ("test_a.py", "test_one", "test_a.py::test_one"),
        ("test_a.py", "test_two", "…::test_two[x|y]"),
        ("test_a.py", "*_ctrl_c", "…_ctrl_c"),
        ("test_b.py", "", "test_b.py"),
        ("test_c.py", "test_three", "test_c.py::test_three[end=3…]"),
    ]
