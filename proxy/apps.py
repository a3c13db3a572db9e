from django.apps import AppConfig


class ProxyConfig(AppConfig):
    name = "proxy"

    def ready(self) -> None:
        from daphne.management.commands.runserver import Command
        from django.conf import settings

        # `manage.py runserver` with no address serves where the SDKs are pointed. Daphne's
        # command is the one Django runs (daphne is first in INSTALLED_APPS), so its class
        # attributes are the place: the same ones Django's own runserver reads.
        Command.default_addr = settings.RUNSERVER_ADDR
        Command.default_port = str(settings.TOKENPAK_PORT)
