"""The report commands' shared flags: a period, dates and filters → (label, reports.Filters)."""

from __future__ import annotations

import argparse
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.core.management.base import CommandError

from telemetry import reports

LABELS = {"today": "Today", "week": "This week", "month": "This month"}
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
        return _filters(options, default_period)
    except reports.ReportError as e:
        raise CommandError(str(e)) from None


def _filters(options: dict[str, Any], default_period: str | None) -> tuple[str, reports.Filters]:
    period = options.get("period")
    since_text, until_text = options.get("since"), options.get("until")
    if period and (since_text or until_text):
        raise reports.ReportError(f"--{period} and --since/--until cannot be combined")
    since = until = None
    if since_text:
        since = reports.parse_date(since_text)
    if until_text:
        until = reports.parse_date(until_text, end=True)
    if since and until and since >= until:
        raise reports.ReportError("--since must be before --until")
    if not (since or until):
        period = period or default_period
    if period:
        since, until = reports.period(period)
        label = LABELS[period]
    elif since and until:
        label = f"{since_text} to {until_text}"
    elif since:
        label = f"Since {since_text}"
    elif until:
        label = f"Until {until_text}"
    else:
        label = "All time"

    min_cost = None
    if options.get("min_cost") is not None:
        try:
            min_cost = Decimal(str(options["min_cost"]).lstrip("$"))
        except InvalidOperation:
            raise reports.ReportError(
                f"bad --min-cost {options['min_cost']!r}: use a number of dollars, like 0.05"
            ) from None
        if not min_cost.is_finite() or min_cost < 0:
            raise reports.ReportError("--min-cost must be a positive number of dollars")
    f = reports.Filters(
        since=since,
        until=until,
        model=options.get("model") or "",
        agent=options.get("agent") or "",
        min_cost=min_cost,
    )
    return label, f


class raw:
    """A file-like view of a command's stdout that adds no newlines (for CSV/JSON streams)."""

    def __init__(self, wrapper: Any) -> None:
        self._wrapper = wrapper

    def write(self, text: str) -> int:
        self._wrapper.write(text, ending="")
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
