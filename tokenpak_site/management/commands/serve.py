"""`tokenpak serve`: the production command. Migrates, prints the endpoints, serves with uvicorn.

uvicorn on uvloop with the httptools parser measured best of daphne, uvicorn and granian for
this app on the proxy routes (bench/overhead.py; docs/PERFORMANCE.md). `runserver` stays
daphne's, for development. `--workers N` runs N processes on one listening socket, each with
its own event loop, upstream client and ledger writer; they share the ledger (SQLite in WAL
mode with IMMEDIATE transactions, or PostgreSQL) and the budgets (their leases).
"""

import os
import sys
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from tokenpak_site import conf


class Command(BaseCommand):
    help = ("Migrate and serve the proxy on 127.0.0.1, or --host (uvicorn; --workers N "
            "processes).")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", help="address to listen on (default: TOKENPAK_HOST, "
                                           "127.0.0.1); beyond loopback needs "
                                           "TOKENPAK_REQUIRE_TOKEN=1")
        parser.add_argument("--port", type=int, help="default: TOKENPAK_PORT (8766)")
        parser.add_argument("--db", metavar="PATH", help="SQLite ledger; /dev/null: telemetry off")
        parser.add_argument("--workers", type=int, default=1,
                            help="server processes (default 1; up to one per core is useful)")

    def handle(self, *args: Any, **options: Any) -> None:
        workers = options["workers"]
        if not 1 <= workers <= 64:
            raise CommandError(f"--workers must be between 1 and 64, not {workers}")
        env = {}
        if options["host"] is not None and options["host"] != settings.TOKENPAK_HOST:
            env["TOKENPAK_HOST"] = options["host"]
        if options["port"] is not None and options["port"] != settings.TOKENPAK_PORT:
            env["TOKENPAK_PORT"] = str(options["port"])
        if options["db"] is not None and options["db"] != settings.TOKENPAK_DB_LABEL:
            env["TOKENPAK_DB"] = options["db"]
            env["DATABASE_URL"] = ""
        if env:
            # Settings (database, port) are fixed at startup: start again with them set, so
            # they are validated and applied like any other setting.
            sys.stdout.flush()
            os.execve(sys.executable,
                      [sys.executable, "-m", "tokenpak_site.cli", "serve", "--workers",
                       str(workers)], {**os.environ, **env})
        if refused := conf.listen_refusal(settings.TOKENPAK_HOST, settings.REQUIRE_TOKEN):
            raise CommandError(refused)
        call_command("migrate", verbosity=0)
        call_command("endpoints")
        self.stdout.write(f"Serving with uvicorn, {workers} worker(s). Quit with CONTROL-C.")
        sys.stdout.flush()
        import uvicorn

        uvicorn.run("tokenpak_site.asgi:application", host=settings.TOKENPAK_HOST,
                    port=settings.TOKENPAK_PORT, workers=workers, **UVICORN)


# How `serve` runs uvicorn; tests start their servers with the same.
UVICORN: dict[str, Any] = {
    "loop": "uvloop",
    "http": "httptools",
    "lifespan": "on",  # proxy/handler.py answers it: a stop writes queued rows first
    "access_log": False,  # the ledger writer logs one line per request already
    "log_level": "warning",
    "timeout_keep_alive": 75,  # agents keep connections open between turns
    "backlog": 2048,
}
