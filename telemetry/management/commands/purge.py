"""Delete all telemetry: every ledger row (tp_events and the rows that hang off it).

    python manage.py purge --telemetry          # asks first
    python manage.py purge --telemetry --yes    # scripts, cron: no question

Price overrides (tp_pricing), config.yaml, the admin's users and the log are kept.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from django.conf import settings
from django.core.management.base import CommandError, CommandParser
from django.db import DatabaseError

from telemetry import reports, retention
from telemetry.commandline import Progress, ReportCommand, add_chunk, check_chunk
from telemetry.models import Event

WHAT = "deletes every ledger row (tp_events, tp_usage, tp_costs, tp_segments, tp_recipe_hits)"


class Command(ReportCommand):
    help = f"Delete all telemetry: --telemetry {WHAT}; prices, settings and users are kept."
    # Tests hand in a terminal-like stdin, as with createsuperuser.
    stealth_options = ("stdin",)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--telemetry", action="store_true", help=WHAT)
        parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")
        add_chunk(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        if not options["telemetry"]:
            raise CommandError(
                f"purge: nothing chosen: purge --telemetry {WHAT}; "
                "prices, settings and users are kept"
            )
        check_chunk("purge", options)
        if not settings.TELEMETRY_ENABLED:
            self.stdout.write(f"purge: telemetry is off (TOKENPAK_DB={settings.TOKENPAK_DB_LABEL})"
                              ", there is no ledger to purge")
            return
        total = Event.objects.count()
        if not total:
            self.stdout.write("purge: the ledger is already empty")
            return
        if not options["yes"] and not self._confirm(total, options.get("stdin") or sys.stdin):
            self.stdout.write("purge: cancelled, nothing deleted")
            return

        progress = Progress(self.stderr, "purged", options["chunk"])

        try:
            n = retention.purge_all(chunk=options["chunk"], progress=progress)
        except DatabaseError as e:
            raise CommandError(
                f"purge: stopped after deleting {reports.count(progress.done)} requests: "
                f"database error: {e} (run it again to finish)"
            ) from None
        self.stdout.write(
            f"purge: deleted {reports.count(n)} requests with their usage, cost and segment rows; "
            "prices, settings and users kept"
        )

    def _confirm(self, total: int, stdin: TextIO) -> bool:
        # No terminal (cron, a pipe, CI): nobody can answer, and silence must not mean yes.
        if not stdin.isatty():
            raise CommandError(
                f"purge: would delete all {reports.count(total)} ledger rows, but stdin is not "
                "a terminal to confirm: pass --yes"
            )
        self.stdout.write(f"Delete all {reports.count(total)} ledger rows? [y/N] ", ending="")
        self.stdout.flush()
        try:
            answer = input()
        except (EOFError, KeyboardInterrupt):
            answer = ""
        return answer.strip().lower() in ("y", "yes")
