"""The project's shape, read from its source: no import cycle, apps depend downward only, and
no module grows past 500 lines without saying why.

Every import counts, wherever it is written: at the top, inside a function (run later, but still
a dependency: the cycle it closes is only deferred), and under `if TYPE_CHECKING:` (never run,
but a module that names another's types depends on that module's design just the same; a type
that must cross a layer upward is a sign the type lives in the wrong module). An import of a
submodule (`from budgets import leases`) is an edge to that submodule, not to its package; the
package's `__init__` is not counted as imported along the way (a package importing its own
submodules would otherwise close a cycle with every one of them).

The layers, top to bottom (docs/ARCHITECTURE.md):

    the site's wiring   tokenpak_site: settings, urls, api, asgi, admin, apps, cli, commands
    proxy               the request path
    budgets             admission, leases, settlement, alerts
    telemetry           the ledger, reports, dashboard
    the site's base     tokenpak_site: conf, text, logs

A module may import its own app's modules and any layer below its own. An app's management
commands, admin and migrations belong to that app. tokenpak_site plays two parts: its base
modules (the typed settings registry and text helpers) sit under every app, and its wiring
(Django's settings module, the URL conf, the ASGI entry point, the admin site, the `tokenpak`
command) assembles the apps, so it sits above them and no app imports it. Apps read settings
through django.conf.settings, never by importing tokenpak_site.settings.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APPS = ("proxy", "budgets", "telemetry", "tokenpak_site")
MAX_LINES = 500
# A module past MAX_LINES says why in its first docstring, in these words: "Over 500 lines
# because …" (any case, the reason on the same or the next lines).
REASON = re.compile(r"over\s+500\s+lines\s+because\b", re.IGNORECASE)

SITE_BASE = frozenset({"tokenpak_site", "tokenpak_site.conf", "tokenpak_site.text",
                       "tokenpak_site.logs"})
LAYERS = {"site": 4, "proxy": 3, "budgets": 2, "telemetry": 1, "base": 0}


@dataclass(frozen=True)
class Import:
    target: str
    line: int


def modules() -> dict[str, Path]:
    """Every project module by dotted name."""
    found = {}
    for app in APPS:
        for path in sorted((ROOT / app).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> Iterator[Import]:
    """The project modules this one imports, at any depth of its code."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _project(alias.name, known)
                if target:
                    yield Import(target, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                # `from budgets import leases` imports the submodule; `from budgets.leases
                # import lessor`, the module.
                target = (_project(f"{base}.{alias.name}", known, exact=True)
                          or _project(base, known))
                if target:
                    yield Import(target, node.lineno)


def _project(dotted: str, known: dict[str, Path], exact: bool = False) -> str:
    if dotted in known:
        return dotted
    if exact:
        return ""
    # `import proxy.compression.counting` names a module; an unknown tail is an attribute.
    while "." in dotted:
        dotted = dotted.rpartition(".")[0]
        if dotted in known:
            return dotted
    return ""


def layer(name: str) -> str:
    app = name.partition(".")[0]
    if app == "tokenpak_site":
        return "base" if name in SITE_BASE else "site"
    return app


def graph() -> dict[str, list[Import]]:
    known = modules()
    return {name: [i for i in imports(name, path, known) if i.target != name]
            for name, path in known.items()}


def cycles(edges: dict[str, list[Import]]) -> list[list[str]]:
    """Each strongly connected group of two or more modules (Tarjan), as one cycle through it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for i in edges[v]:
            w = i.target
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return [_cycle_in(group, edges) for group in groups]


def _cycle_in(group: list[str], edges: dict[str, list[Import]]) -> list[str]:
    """A shortest cycle through the group's first module, to name in a failure."""
    members = set(group)
    start = group[0]
    paths = {start: [start]}
    todo = [start]
    while todo:
        v = todo.pop(0)
        for i in edges[v]:
            if i.target == start:
                return [*paths[v], start]
            if i.target in members and i.target not in paths:
                paths[i.target] = [*paths[v], i.target]
                todo.append(i.target)
    return group


def upward(edges: dict[str, list[Import]]) -> list[str]:
    return [
        f"{name}:{i.line} imports {i.target} ({layer(name)} -> {layer(i.target)})"
        for name, found in sorted(edges.items())
        for i in found
        if LAYERS[layer(i.target)] > LAYERS[layer(name)]
    ]


def too_long() -> list[str]:
    found = []
    for path in sorted(modules().values()):
        text = path.read_text()
        lines = len(text.splitlines())
        if lines <= MAX_LINES:
            continue
        doc = ast.get_docstring(ast.parse(text)) or ""
        if not REASON.search(doc):
            found.append(f"{path.relative_to(ROOT)}: {lines} lines")
    return found


def test_it_finds_no_import_cycle_between_project_modules():
    found = cycles(graph())
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_it_finds_every_app_depending_downward_only():
    found = upward(graph())
    assert not found, "imports against the layers:\n" + "\n".join(found)


def test_it_finds_no_module_over_500_lines_without_its_reason():
    found = too_long()
    assert not found, (f"over {MAX_LINES} lines, and the module's docstring does not say "
                       "why ('Over 500 lines because …'):\n" + "\n".join(found))


def test_it_sees_cycles_and_upward_imports_in_the_code_it_reads():
    """The checks above find what they look for: a made-up graph with one of each."""
    edges = {
        "telemetry.a": [Import("telemetry.b", 1)],
        "telemetry.b": [Import("budgets.c", 2)],
        "budgets.c": [Import("telemetry.a", 3)],
        "proxy.d": [Import("budgets.c", 4)],
    }
    assert cycles(edges) == [["budgets.c", "telemetry.a", "telemetry.b", "budgets.c"]]
    assert upward(edges) == ["telemetry.b:2 imports budgets.c (telemetry -> budgets)"]


def test_it_reads_imports_at_every_depth_of_a_module(tmp_path):
    """Top-level, function-level, TYPE_CHECKING and relative imports all count; an attribute
    imported from a module is an edge to the module."""
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "import budgets.leases\n"
        "from telemetry.writer import record\n"
        "if TYPE_CHECKING:\n"
        "    from telemetry.record import Record\n"
        "def f():\n"
        "    from . import settlement\n"
        "    from proxy import forward\n"
    )
    known = {name: tmp_path for name in ("budgets", "budgets.leases", "budgets.settlement",
                                         "budgets.m", "telemetry", "telemetry.writer",
                                         "telemetry.record", "proxy", "proxy.forward")}
    assert [i.target for i in imports("budgets.m", source, known)] == [
        "budgets.leases", "telemetry.writer", "telemetry.record", "budgets.settlement",
        "proxy.forward"]
