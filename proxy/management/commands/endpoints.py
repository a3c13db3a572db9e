from django.conf import settings
from django.core.management.base import BaseCommand

from proxy.providers import REGISTRY
from tokenpak_site import conf


class Command(BaseCommand):
    help = "Print where to point each SDK and where the ledger is kept."

    def handle(self, *args: object, **options: object) -> None:
        base = f"http://{settings.URL_HOST}:{settings.TOKENPAK_PORT}"
        for provider in REGISTRY.values():
            for client, how in provider.client_lines(base):
                self.stdout.write(f"{client + ':':<16}{how}")
        if not conf.is_loopback(settings.TOKENPAK_HOST):
            self.stdout.write(f"Listening on:   {settings.TOKENPAK_HOST} (Host names answered: "
                              f"{', '.join(settings.ALLOWED_HOSTS)})")
        if settings.REQUIRE_TOKEN:
            self.stdout.write("Token:          every proxy request sends X-TokenPak-Token "
                              "(`tokenpak token` prints it)")
        upstreams = ", ".join(provider.base_url for provider in REGISTRY.values())
        self.stdout.write(f"Upstreams:      {upstreams}")
        ledger = settings.TOKENPAK_DB_LABEL if settings.TELEMETRY_ENABLED else "off (/dev/null)"
        self.stdout.write(f"Ledger:         {ledger}")
        if settings.TELEMETRY_ENABLED:
            from telemetry import access

            # The first-run path: one link signs this browser in (the token is this machine
            # account's; `tokenpak token --rotate` replaces it).
            self.stdout.write(f"Dashboard:      {base}/dashboard/  (admin: {base}/admin/)")
            self.stdout.write(f"Sign in:        {access.sign_in_url(access.token())}")
