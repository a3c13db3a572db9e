import json
from typing import Any

from django.core.management.base import CommandParser

from telemetry import reports
from telemetry.commandline import LABELS, ReportCommand, telemetry_off


class Command(ReportCommand):
    help = "What TokenPak saved: tokens kept out of requests and what they would have cost."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--lifetime", action="store_true", help="every row in the ledger")
        parser.add_argument("--json", action="store_true", help="machine-readable output")

    def handle(self, *args: Any, **options: Any) -> None:
        if telemetry_off(self, options["json"]):
            return
        if options["lifetime"]:
            label, f = "Lifetime", reports.Filters()
        else:
            since, until = reports.period("month")
            label, f = LABELS["month"], reports.Filters(since=since, until=until)
        qs = reports.events(f)
        total = reports.totals(qs)
        compressed = reports.totals(reports.events(reports.Filters(
            since=f.since, until=f.until, compressed_only=True))).requests
        if options["json"]:
            data = {"period": label, **total.as_json(), "compressed_requests": compressed}
            self.stdout.write(json.dumps(data, indent=2))
            return
        self.stdout.write(
            f"{label}: saved {reports.count(total.tokens_saved)} tokens "
            f"({reports.pct(total.savings_pct)} of input) | {reports.money(total.cost_saved_usd)} "
            f"saved | {reports.count(compressed)} of {reports.count(total.requests)} requests "
            f"compressed"
        )
