"""The report commands' shared flags (a period, dates and filters → (label, reports.Filters))
and their shared output: every command printing ledger values derives from ReportCommand, whose
stdout and stderr show control characters escaped (tokenpak_site.text)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, TextIO, cast

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, OutputWrapper

from telemetry import reports
from tokenpak_site.text import shown_lines

LABELS = reports.LABELS
TELEMETRY_OFF = "Telemetry is off (TOKENPAK_DB=/dev/null): requests are forwarded, none recorded"


def telemetry_off(command: Any, as_json: bool = False) -> bool:
    """Say so and return True when there is no ledger to report on."""
    if settings.TELEMETRY_ENABLED:
        return False
    command.stdout.write('{"telemetry": false}' if as_json else TELEMETRY_OFF)
    return True


def add_filters(parser: argparse.ArgumentParser, *, periods: bool = True) -> None:
    if periods:
        group = parser.add_mutually_exclusive_group()
        group.add_argument("--today", dest="period", action="store_const", const="today")
        group.add_argument("--week", dest="period", action="store_const", const="week",
                           help="this calendar week (Monday first)")
        group.add_argument("--month", dest="period", action="store_const", const="month",
                           help="this calendar month")
    parser.add_argument("--since", metavar="DATE", help="YYYY-MM-DD (from the day's start)")
    parser.add_argument("--until", metavar="DATE", help="YYYY-MM-DD (through the day's end)")
    parser.add_argument("--model", default="", help="exact model name, as the ledger has it")
    parser.add_argument("--agent", default="", help="X-TokenPak-Agent value")
    parser.add_argument("--min-cost", metavar="USD", help="only requests costing at least this")


def filters(
    options: dict[str, Any], default_period: str | None = None
) -> tuple[str, reports.Filters]:
    """Parse the flags; a bad date, amount or combination becomes a one-line CommandError."""
    try:
        return reports.parse_filters(
            period=options.get("period"), since=options.get("since") or "",
            until=options.get("until") or "", model=options.get("model") or "",
            agent=options.get("agent") or "", min_cost=options.get("min_cost"),
            default_period=default_period, flag="--",
        )
    except reports.ReportError as e:
        raise CommandError(str(e)) from None


class ShownOutput(OutputWrapper):
    """A command's stdout or stderr for a terminal: model names, agent ids, error texts and
    stored bodies may hold ESC/OSC sequences (clear the screen, retitle the window), CR (forge
    a line) or bidi overrides; every one is written escaped (`\\x1b`). Line feeds stay, for the
    lines commands lay out; a value inside a line is escaped with shown() where it is placed."""

    _style_func: Callable[[str], str]  # Django's private attribute: _Shown copies it

    # (The ignore: OutputWrapper.write's own signature, which Django's stubs ignore as well.)
    def write(  # type: ignore[override]
        self, msg: str = "", style_func: Any = None, ending: str | None = None
    ) -> None:
        # Escaped before styling: the colours Django adds on a terminal are its own.
        super().write(shown_lines(msg), style_func, ending)


class _Shown:
    """A command's stdout or stderr attribute: whatever OutputWrapper is set is kept as a
    ShownOutput writing to the same stream, with the same style."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = f"_shown_{name}"

    def __get__(self, command: Any, owner: type | None = None) -> Any:
        return self if command is None else getattr(command, self.slot)

    def __set__(self, command: Any, wrapper: OutputWrapper) -> None:
        if not isinstance(wrapper, ShownOutput):
            shown = ShownOutput(cast(TextIO, wrapper._out), wrapper.ending)
            shown._style_func = wrapper._style_func  # as set, not through the tty check again
            wrapper = shown
        setattr(command, self.slot, wrapper)


class ReportCommand(BaseCommand):
    """A management command whose text output shows control characters escaped. BaseCommand
    sets stdout and stderr in __init__ and again in execute() (call_command's stdout=): each
    becomes a ShownOutput as it is set."""

    stdout = _Shown()
    stderr = _Shown()


class raw:
    """A file-like view of a command's stdout that adds no newlines and escapes nothing: CSV
    and JSON streams are data, written as they are (CSV's own quoting keeps each row one)."""

    def __init__(self, wrapper: Any) -> None:
        self._wrapper = wrapper

    def write(self, text: str) -> int:
        OutputWrapper.write(self._wrapper, text, ending="")
        return len(text)


class Progress:
    """A chunked job's progress line on stderr; only worth printing past one chunk."""

    def __init__(self, stream: Any, verb: str, chunk: int) -> None:
        self.stream, self.verb, self.chunk = stream, verb, chunk
        self.done = 0

    def __call__(self, done: int, total: int) -> None:
        self.done = done
        if total > self.chunk:
            self.stream.write(f"{self.verb} {reports.count(done)} / {reports.count(total)}")


def add_chunk(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--chunk", type=int, default=10_000,
                        help="requests deleted per transaction (default: %(default)s)")


def check_chunk(command: str, options: dict[str, Any]) -> None:
    # Checked here, not by argparse: call_command passes keyword options through unparsed.
    if options["chunk"] < 1:
        raise CommandError(f"{command}: --chunk must be at least 1, got {options['chunk']}")
