"""The `tokenpak` command: Django's manage.py for this project, with the seed's spellings.

    tokenpak cost --today          = python manage.py cost --today
    tokenpak metrics export …      = python manage.py export …
    tokenpak maintenance prune …   = python manage.py prune …
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ALIASES = {("metrics", "export"): "export", ("maintenance", "prune"): "prune"}


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) >= 2 and (args[0], args[1]) in ALIASES:
        args = [ALIASES[(args[0], args[1])], *args[2:]]
    if args[:1] == ["serve"]:
        _serve_environment(args)
    # Installed editable or run from a checkout: the project root is this file's parent's.
    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tokenpak_site.settings")
    from django.core.management import execute_from_command_line

    try:
        execute_from_command_line(["tokenpak", *args])
    except BrokenPipeError:
        # `tokenpak export --out - | head` closed the pipe: a normal end, not an error.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(0)


def _serve_environment(args: list[str]) -> None:
    """`serve --host/--port/--db` are settings: put them in the environment before settings
    load."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--host")
    parser.add_argument("--port")
    parser.add_argument("--db")
    known, _ = parser.parse_known_args(args[1:])
    if known.host is not None:
        os.environ["TOKENPAK_HOST"] = known.host
    if known.port is not None:
        os.environ["TOKENPAK_PORT"] = known.port
    if known.db is not None:
        os.environ["TOKENPAK_DB"] = known.db
        os.environ["DATABASE_URL"] = ""


if __name__ == "__main__":
    main()
