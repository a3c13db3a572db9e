import json
from typing import Any

from django.core.management.base import CommandError, CommandParser

from telemetry import traces
from telemetry.commandline import ReportCommand, telemetry_off
from tokenpak_site.text import shown


class Command(ReportCommand):
    help = ("One request in full: model, timing, status, tokens, what was saved, what it cost; "
            "for a request `debug on` captured, also its bodies, recipes, stages and routing.")

    def add_arguments(self, parser: CommandParser) -> None:
        which = parser.add_mutually_exclusive_group(required=True)
        which.add_argument("--last", action="store_true", help="the newest request")
        which.add_argument("--id", metavar="TRACE_ID", help="X-TokenPak-Trace-Id of a response")
        parser.add_argument("--json", action="store_true", help="machine-readable output")

    def handle(self, *args: Any, **options: Any) -> None:
        if telemetry_off(self, options["json"]):
            return
        if options["last"]:
            event = traces.find()
            if event is None:
                raise CommandError("the ledger is empty: no request has gone through TokenPak yet")
        else:
            event = traces.find(options["id"])
            if event is None:
                raise CommandError(f"no request with trace id {options['id']!r} in the ledger")
        data = traces.trace(event)
        if options["json"]:
            self.stdout.write(json.dumps(data, indent=2))
            return
        # Each ledger value on one line (a newline in a model name is escaped, not obeyed); the
        # captured bodies below their labels keep their lines (escaped by ReportCommand).
        data = {k: shown(v) if isinstance(v, str) else v for k, v in data.items()}
        for label, value in traces.layout(data):
            self.stdout.write(f"{label + ':':<12}{value}")
