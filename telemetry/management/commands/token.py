from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from telemetry import access


class Command(BaseCommand):
    help = ("Print the local API token (made on first use, kept 0600 in TOKENPAK_HOME): "
            "scripts send it as `Authorization: Bearer TOKEN`; a browser signs in with it.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--rotate", action="store_true",
                            help="make a new token; the old one and its browser sessions stop "
                                 "working")
        parser.add_argument("--url", action="store_true",
                            help="print the dashboard's sign-in link instead")

    def handle(self, *args: Any, **options: Any) -> None:
        value = access.rotate() if options["rotate"] else access.token()
        if options["url"]:
            self.stdout.write(access.sign_in_url(value))
        else:
            self.stdout.write(value)

