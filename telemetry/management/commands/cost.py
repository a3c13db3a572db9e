import json
from typing import Any

from django.core.management.base import CommandParser

from telemetry import exporting, reports
from telemetry.commandline import ReportCommand, add_filters, filters, raw, telemetry_off
from tokenpak_site.text import shown


class Command(ReportCommand):
    help = "What requests cost: a period's totals, optionally by model, agent or day."

    def add_arguments(self, parser: CommandParser) -> None:
        add_filters(parser)
        by = parser.add_mutually_exclusive_group()
        by.add_argument("--by-model", dest="by", action="store_const", const="model")
        by.add_argument("--by-agent", dest="by", action="store_const", const="agent")
        by.add_argument("--by-day", dest="by", action="store_const", const="day")
        parser.add_argument("--all", action="store_true",
                            help=f"every model or agent; without it, the {reports.TOP} biggest "
                                 "by spend and the rest added up on one line")
        out = parser.add_mutually_exclusive_group()
        out.add_argument("--json", action="store_true", help="machine-readable output")
        out.add_argument("--export", choices=exporting.FORMATS,
                         help="the matching requests themselves, to stdout")

    def handle(self, *args: Any, **options: Any) -> None:
        if telemetry_off(self, options["json"]):
            return
        label, f = filters(options, default_period="today")
        qs = reports.events(f)
        if options["export"]:
            exporting.write(qs, options["export"], raw(self.stdout))
            return
        total = reports.totals(qs)
        top = reports.Top([])
        if options["by"] == "day" or (options["by"] and options["all"]):
            top = reports.Top(reports.breakdown(qs, options["by"]))
        elif options["by"]:  # clients name agents and models freely: the rest is one line
            top = reports.top(qs, options["by"], total)
        rows = top.rows
        if top.other is not None:
            rows = [*rows, (f"({top.others:,} others)", top.other)]
        if options["json"]:
            data: dict[str, Any] = {"period": label, "since": f.since and f.since.isoformat(),
                    "until": f.until and f.until.isoformat(), "filters": f.describe(),
                    "totals": total.as_json()}
            if options["by"]:
                data["by"] = options["by"]
                data["rows"] = [{"key": key, **t.as_json()} for key, t in top.rows]
                data["other"] = top.other and {"groups": top.others, **top.other.as_json()}
            self.stdout.write(json.dumps(data, indent=2))
            return
        suffix = f" ({f.describe()})" if f.describe() else ""
        self.stdout.write(reports.line(label, total) + suffix)
        # A name holding a newline or ESC is escaped before the column is measured: one line a
        # row, the figures aligned.
        keys = [shown(key) for key, _ in rows]
        width = max(map(len, keys), default=0)
        for key, (_, t) in zip(keys, rows, strict=True):
            self.stdout.write(f"  {key:<{width}}  {reports.summary(t)}")
