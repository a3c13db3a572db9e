"""`manage.py runserver`: daphne's development server, on TokenPak's address and port.

With no address it listens on TOKENPAK_HOST:TOKENPAK_PORT (127.0.0.1:8766), where the SDKs are
pointed. An address beyond loopback (0.0.0.0, ::, a LAN address), given or configured, is
refused unless server.require_token is on, as `serve` refuses it.

Django runs the command of the *first* installed app that has one (get_commands() walks the
apps in reverse and lets each overwrite the last), and daphne is first, so this one is
registered in its place by tokenpak_site's AppConfig.ready (tokenpak_site/apps.py).
"""

from typing import Any

from daphne.management.commands.runserver import Command as DaphneRunserver
from django.conf import settings
from django.core.management.base import CommandError

from tokenpak_site import conf


class Command(DaphneRunserver):
    help = ("Development server (daphne) on TOKENPAK_HOST:TOKENPAK_PORT, 127.0.0.1:8766 by "
            "default; beyond loopback only with TOKENPAK_REQUIRE_TOKEN=1.")

    def handle(self, *args: Any, **options: Any) -> None:
        if not options["addrport"]:
            host = settings.TOKENPAK_HOST
            options["addrport"] = (f"[{host}]" if ":" in host else host) + (
                f":{settings.TOKENPAK_PORT}")
        super().handle(*args, **options)

    def run(self, **options: Any) -> None:
        # Django's handle() has parsed the address into self.addr; nothing listens yet.
        try:
            host = conf.check_host(self.addr, "runserver's address")
        except conf.ConfigError as e:
            raise CommandError(str(e)) from None
        if refused := conf.listen_refusal(host, settings.REQUIRE_TOKEN):
            raise CommandError(refused)
        super().run(**options)
