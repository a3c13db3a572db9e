import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import CommandParser
from django.db import DatabaseError

from telemetry import reports, spool
from telemetry.commandline import ReportCommand
from telemetry.models import ModelPrice
from tokenpak_site.text import shown


class Command(ReportCommand):
    help = "Where the ledger is, how big, what it holds, and what TokenPak saved."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--full", action="store_true", help="also by provider and status")
        parser.add_argument("--json", action="store_true", help="machine-readable output")

    def handle(self, *args: Any, **options: Any) -> None:
        data = self.gather(options["full"])
        if options["json"]:
            self.stdout.write(json.dumps(data, indent=2, default=str))
            return
        w = self.stdout.write
        if not data["telemetry"]:
            w("Telemetry:  off (TOKENPAK_DB=/dev/null): requests are forwarded, none recorded")
            return
        for owner in data["spool"]:
            w(_spool_line(owner))
        if data["set_aside"]["rows"]:
            w(_set_aside_line(data["set_aside"]))
        if "unavailable" in data:
            w(f"Telemetry:  on, ledger {data['database']}: UNAVAILABLE ({data['unavailable']})")
            raise SystemExit(1)  # for scripts and monitors: the ledger cannot be read
        t = data["lifetime"]
        w(f"Telemetry:  on, ledger {data['database']} ({reports.size(data['size_bytes'])})")
        w(f"Requests:   {reports.count(t['requests'])} (today "
          f"{reports.count(data['today']['requests'])})")
        w(f"Tokens:     {reports.count(t['tokens'])} ({reports.count(t['input_tokens'])} in, "
          f"{reports.count(t['output_tokens'])} out)")
        w(f"Cost:       {reports.money(Decimal(t['cost_usd']))} lifetime, "
          f"{reports.money(Decimal(data['today']['cost_usd']))} today")
        saved_usd = reports.money(Decimal(t["cost_saved_usd"]))
        w(f"Saved:      {reports.count(t['tokens_saved'])} tokens (avg "
          f"{reports.pct(t['savings_pct'])}), {saved_usd}")
        retention = (f"{data['retention_days']} days" if data["retention_days"]
                     else "off (keeps everything)")
        oldest = data["oldest"] or "-"
        w(f"Retention:  {retention} (oldest row {oldest})")
        if options["full"]:
            w(f"Newest row: {data['newest'] or '-'}")
            w(f"Prices:     {data['price_overrides']} override(s) over the shipped catalog")
            w(f"Upstreams:  {', '.join(p.base_url for p in settings.PROVIDERS.values())}")
            w(f"Home:       {settings.TOKENPAK_HOME}")
            for title, key in (("By provider", "by_provider"), ("By status", "by_status")):
                w(f"{title}:")
                for row in data[key]:
                    w(f"  {row['key']:<22} {reports.count(row['requests']):>10} requests  "
                      f"{reports.money(Decimal(row['cost_usd']))}")

    def gather(self, full: bool) -> dict[str, Any]:
        data: dict[str, Any] = {
            "telemetry": settings.TELEMETRY_ENABLED,
            "database": settings.TOKENPAK_DB_LABEL,
            "retention_days": settings.RETENTION_DAYS,
        }
        if not settings.TELEMETRY_ENABLED:
            return data
        directory = Path(settings.TOKENPAK_HOME) / "spool"
        data["spool"] = [
            {"process": o.name, "running": o.alive, "waiting": o.waiting(),
             "failing_since": o.state.get("failing_since"), "error": o.state.get("error", "")}
            for o in spool.owners(directory)
            if o.state.get("failing_since") or (not o.alive and o.files)]
        rows, reason = spool.set_aside_so_far(directory)
        data["set_aside"] = {"rows": rows, "file": str(directory / spool.REJECTED),
                             "last_reason": reason}
        try:
            return data | self.ledger(full)
        except DatabaseError as e:
            return data | {"unavailable": " ".join(str(e).split())}

    def ledger(self, full: bool) -> dict[str, Any]:
        data: dict[str, Any] = {}
        everything = reports.events()
        since, until = reports.period("today")
        first, last = reports.span(everything)
        data |= {
            "size_bytes": reports.ledger_size(),
            "lifetime": reports.totals(everything).as_json(),
            "today": reports.totals(reports.events(reports.Filters(since=since,
                                                                   until=until))).as_json(),
            "oldest": _when(first),
            "newest": _when(last),
        }
        if full:
            data["price_overrides"] = ModelPrice.objects.count()
            data["by_provider"] = [{"key": k, **t.as_json()}
                                   for k, t in reports.breakdown(everything, "provider")]
            data["by_status"] = [{"key": k, **t.as_json()}
                                 for k, t in reports.breakdown(everything, "status")]
        return data


def _spool_line(owner: dict[str, Any]) -> str:
    n = owner["waiting"]
    if owner["running"]:
        since = datetime.fromtimestamp(owner["failing_since"], tz=UTC).astimezone(
            reports.zone()).strftime("%Y-%m-%d %H:%M:%S")
        return (f"Ledger:     FAILING since {since}: {owner['error']}. Requests are still "
                f"forwarded; {reports.count(n)} rows wait to be written (process "
                f"{owner['process']}) and go in when the database takes them.")
    return (f"Ledger:     {reports.count(n)} rows waiting in the spool of a stopped process "
            f"({owner['process']}); the next start of the server writes them.")


def _set_aside_line(kept: dict[str, Any]) -> str:
    n = kept["rows"]
    return (f"Ledger:     {reports.count(n)} {'row' if n == 1 else 'rows'} set aside, "
            f"that could not be written even with text cleaned (last: "
            f"{shown(kept['last_reason'])}); kept in {kept['file']}, not in the ledger.")


def _when(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=UTC).astimezone(reports.zone()).strftime(
        "%Y-%m-%d %H:%M")
