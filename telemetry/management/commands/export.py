from pathlib import Path
from typing import Any

from django.core.management.base import CommandError, CommandParser

from telemetry import exporting, reports
from telemetry.commandline import ReportCommand, add_filters, filters, raw, telemetry_off


class Command(ReportCommand):
    help = "Write ledger rows (with usage and cost) to a CSV or JSON file, streamed in chunks."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--format", choices=exporting.FORMATS, required=True)
        parser.add_argument("--out", required=True, metavar="FILE", help="- for stdout")
        add_filters(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        if telemetry_off(self):
            return
        label, f = filters(options)
        qs = reports.events(f)
        out = options["out"]
        if out == "-":
            exporting.write(qs, options["format"], raw(self.stdout))
            return
        path = Path(out)
        if not path.parent.is_dir():
            raise CommandError(f"cannot write {out}: folder {path.parent} does not exist")
        tmp = path.with_name(path.name + ".partial")
        try:
            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                n = exporting.write(qs, options["format"], fh)
            tmp.replace(path)  # never leave a half-written export under the real name
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise CommandError(f"cannot write {out}: {e.strerror}") from None
        self.stdout.write(f"export: {reports.count(n)} requests ({label.lower()}) to {out}")
