"""Delete ledger rows older than a cutoff, with their usage, cost and segment rows.

    python manage.py prune                      # telemetry.retention_days (default 90)
    python manage.py prune --days 30
    python manage.py prune --older-than 12w     # d, w or m (calendar months)
    python manage.py prune --older-than 3m --dry-run

Chunked (one transaction per chunk), so it is safe while the server runs, and an interrupted
prune keeps what it already deleted. `tokenpak maintenance prune` is the same command.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.management.base import CommandError, CommandParser
from django.db import DatabaseError

from telemetry import reports, retention
from telemetry.commandline import Progress, ReportCommand, add_chunk, check_chunk

_UNITS = {"d": "day", "w": "week", "m": "month"}


class Command(ReportCommand):
    help = "Delete ledger rows older than --days N or --older-than 30d|12w|3m."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--days", type=int, help="delete requests older than this many days"
        )
        parser.add_argument(
            "--older-than", metavar="AGE", help="delete requests older than 30d, 12w or 3m"
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="count what would be deleted, delete nothing"
        )
        add_chunk(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        check_chunk("prune", options)
        try:
            cutoff = self._cutoff(options["days"], options["older_than"])
        except OverflowError:
            raise CommandError("prune: that is further back than the calendar goes") from None
        if cutoff is None:
            self.stdout.write("prune: retention is off (telemetry.retention_days = 0), "
                              "nothing pruned")
            return
        before, label = cutoff
        if not settings.TELEMETRY_ENABLED:
            self.stdout.write(f"prune: telemetry is off (TOKENPAK_DB={settings.TOKENPAK_DB_LABEL})"
                              ", there is no ledger to prune")
            return
        older = f"older than {retention.describe(before)} ({label})"

        progress = Progress(self.stderr, "pruned", options["chunk"])

        try:
            n = retention.prune(
                before, chunk=options["chunk"], dry_run=options["dry_run"], progress=progress
            )
        except DatabaseError as e:
            # Each chunk is its own transaction: what was deleted before the error stays deleted.
            raise CommandError(
                f"prune: stopped after deleting {reports.count(progress.done)} requests: "
                f"database error: {e}"
            ) from None

        if not n:
            self.stdout.write(f"prune: nothing {older} to delete")
        elif options["dry_run"]:
            self.stdout.write(f"prune: would delete {reports.count(n)} requests {older} "
                              "(dry run, nothing deleted)")
        else:
            self.stdout.write(f"prune: deleted {reports.count(n)} requests {older}")

    def _cutoff(self, days: int | None, age: str | None) -> tuple[datetime, str] | None:
        """(cutoff, how it was asked for), or None when retention is off."""
        if days is not None and age is not None:
            raise CommandError("prune: give --days or --older-than, not both")
        now = datetime.now(tz=reports.zone())
        if age is not None:
            try:
                before = reports.parse_age(age, now)
            except reports.ReportError as e:
                raise CommandError(f"prune: {e}") from None
            n, unit = int(age.strip()[:-1]), _UNITS[age.strip()[-1].lower()]
            return before, f"{n} {unit}{'s' if n != 1 else ''}"
        if days is not None:
            if days < 1:
                raise CommandError(f"prune: --days must be a whole number of days ≥ 1, got {days}")
        else:
            days = settings.RETENTION_DAYS
            if not days:
                return None
        return now - timedelta(days=days), f"{days} day{'s' if days != 1 else ''}"
