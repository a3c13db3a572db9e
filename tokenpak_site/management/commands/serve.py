import os
import sys
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = "Migrate and serve the proxy on 127.0.0.1, exactly as `make run` does."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, help="default: TOKENPAK_PORT (8766)")
        parser.add_argument("--db", metavar="PATH", help="SQLite ledger; /dev/null: telemetry off")

    def handle(self, *args: Any, **options: Any) -> None:
        env = {}
        if options["port"] is not None and options["port"] != settings.TOKENPAK_PORT:
            env["TOKENPAK_PORT"] = str(options["port"])
        if options["db"] is not None and options["db"] != settings.TOKENPAK_DB_LABEL:
            env["TOKENPAK_DB"] = options["db"]
            env["DATABASE_URL"] = ""
        if env:
            # Settings (database, port) are fixed at startup: start again with them set, so
            # they are validated and applied like any other setting.
            sys.stdout.flush()
            os.execve(sys.executable, [sys.executable, "-m", "tokenpak_site.cli", "serve"],
                      {**os.environ, **env})
        call_command("migrate", verbosity=0)
        call_command("endpoints")
        call_command("runserver", use_reloader=False)
