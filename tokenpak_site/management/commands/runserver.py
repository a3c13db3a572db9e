"""`manage.py runserver`: daphne's development server, on TokenPak's address and port.

With no address it listens on TOKENPAK_HOST:TOKENPAK_PORT (127.0.0.1:8766), where the SDKs are
pointed. An address beyond loopback (0.0.0.0, ::, a LAN address), given or configured, is
refused unless server.require_token is on, as `serve` refuses it.

Django runs the command of the *first* installed app that has one (get_commands() walks the
apps in reverse and lets each overwrite the last), and daphne is first, so this one is
registered in its place by tokenpak_site's AppConfig.ready (tokenpak_site/apps.py).

daphne's HTTP parser (Twisted) takes header values with control characters that uvicorn's
(httptools, under `serve`) refuses with 400 before the app sees them: an ESC in
X-TokenPak-Agent would be recorded under `runserver` and refused under `serve`. The request is
refused here too, with uvicorn's answer, so both servers take the same requests.
"""

import re
from typing import Any

from daphne.management.commands.runserver import Command as DaphneRunserver
from django.conf import settings
from django.core.management.base import CommandError

from tokenpak_site import conf
from tokenpak_site.text import HEADER_FORBIDDEN


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

    def get_application(self, options: dict[str, Any]) -> Any:
        return StrictHeaders(super().get_application(options))


# What httptools refuses in a header value (RFC 9110: no control character but HTAB).
_CONTROL = re.compile(HEADER_FORBIDDEN.encode())
_REFUSAL = b"Invalid HTTP request received."  # uvicorn's words


class StrictHeaders:
    """ASGI middleware: a request with a control character in a header value gets uvicorn's
    plain 400 and the connection closed, before the app (so no row, as under `serve`)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and any(_CONTROL.search(v) for _, v in scope["headers"]):
            await send({"type": "http.response.start", "status": 400, "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(_REFUSAL)).encode()), (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": _REFUSAL})
            return
        await self.app(scope, receive, send)
