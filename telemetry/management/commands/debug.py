"""`debug`: capture the next requests whole, for `trace` and `replay`.

    python manage.py debug on --requests 5   # the next 5 requests, whatever process serves them
    python manage.py debug off
    python manage.py debug status

Not the `debug` setting (TOKENPAK_DEBUG, verbose logging): this keeps requests, not log lines.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.db import transaction

from telemetry import reports
from telemetry.commandline import ReportCommand, telemetry_off
from telemetry.models import Capture, DebugSwitch

DEFAULT_REQUESTS = 10


class Command(ReportCommand):
    help = ("Capture the next requests whole (bodies before and after compression, recipes, "
            "stages, routing, answer) for `trace` and `replay`: debug on --requests N | off | "
            "status.")

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        on = sub.add_parser("on", help="capture the next N requests")
        on.add_argument("--requests", type=int, default=DEFAULT_REQUESTS, metavar="N",
                        help="how many (default: %(default)s)")
        sub.add_parser("off", help="capture no more requests; captures made are kept")
        sub.add_parser("status", help="how many requests are still to be captured")

    def handle(self, *args: Any, **options: Any) -> None:
        if telemetry_off(self):
            return
        action = options["action"]
        if action == "on":
            n = options["requests"]
            # Checked here, not by argparse: call_command passes keyword options unparsed.
            if n < 1:
                raise CommandError(f"debug on: --requests must be at least 1, got {n}")
            _set(n)
            self.stdout.write(
                f"debug: on, capturing the next {_requests(n)} whole; see them with "
                "`trace --last`, send one again with `replay ID` (bodies stay in the ledger "
                "until pruned)"
            )
        elif action == "off":
            left = _set(0)
            unused = f" ({_requests(left)} not captured)" if left else ""
            self.stdout.write(f"debug: off{unused}; {_kept()}")
        else:
            left = _remaining()
            state = f"on, capturing the next {_requests(left)}" if left else "off"
            self.stdout.write(f"debug: {state}; {_kept()}")


def _set(remaining: int) -> int:
    """Set what is left to capture; returns what was left before."""
    with transaction.atomic():
        switch, _ = DebugSwitch.objects.select_for_update().get_or_create(pk=1)
        before = switch.remaining
        switch.remaining = remaining
        switch.save()
    return max(0, before)


def _remaining() -> int:
    switch = DebugSwitch.objects.filter(pk=1).first()
    return max(0, switch.remaining) if switch else 0


def _requests(n: int) -> str:
    return f"{reports.count(n)} request{'' if n == 1 else 's'}"


def _kept() -> str:
    n = Capture.objects.count()
    return f"{reports.count(n)} capture{'' if n == 1 else 's'} in the ledger (replay list)"
