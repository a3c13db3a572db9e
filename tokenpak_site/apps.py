from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps


class SiteConfig(AppConfig):
    """tokenpak_site's own app: site-wide commands (config, serve, runserver)."""

    name = "tokenpak_site"
    default = True

    def ready(self) -> None:
        from django.core.management import get_commands

        # Django runs the command of the first installed app that has one, and daphne must be
        # first (ahead of staticfiles, whose runserver is WSGI). So `runserver` is pointed at
        # ours, a subclass of daphne's (tokenpak_site/management/commands/runserver.py), in
        # the registry Django reads when it runs a command (computed once per process).
        get_commands()["runserver"] = self.name


class AdminConfig(admin_apps.AdminConfig):
    """django.contrib.admin with TokenPak's site (tokenpak_site/admin.py). Imported as a module,
    not a class: Django takes an AppConfig class found in apps.py for this package's own."""

    default = False  # not this package's own app config
    default_site = "tokenpak_site.admin.Site"
