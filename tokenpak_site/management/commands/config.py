import os
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from tokenpak_site import conf


class Command(BaseCommand):
    help = "Read or change a setting in $TOKENPAK_HOME/config.yaml (values are validated)."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        get = sub.add_parser("get", help="the effective value and where it comes from")
        get.add_argument("key", nargs="?", help="e.g. db.path; omit to list every setting")
        put = sub.add_parser("set", help="validate and write a value")
        put.add_argument("key")
        put.add_argument("value")

    def handle(self, *args: Any, **options: Any) -> None:
        path = settings.TOKENPAK_HOME / "config.yaml"
        try:
            if options["action"] == "set":
                conf.ensure_home(settings.TOKENPAK_HOME)
                value = conf.set_in_file(path, options["key"], options["value"])
                key = conf.KEYS[options["key"]]
                note = (f" (the environment variable {key.env} is set and still wins)"
                        if key.env in os.environ else "")
                self.stdout.write(f"config: {options['key']} = {_show(value)} in {path}{note}")
                return
            config = conf.Config(os.environ, conf.load_file(path))
            keys = [options["key"]] if options["key"] else sorted(conf.KEYS)
            for name in keys:
                if name not in conf.KEYS:
                    raise conf.ConfigError(
                        f"unknown setting {name!r}; known: {', '.join(sorted(conf.KEYS))}")
                home_default = str(settings.TOKENPAK_HOME / "monitor.db")
                value = config.get(name, home_default if name == "db.path" else None)
                if options["key"]:
                    self.stdout.write(_show(value))
                else:
                    self.stdout.write(f"{name:<28} {_show(value):<32} "
                                      f"({conf.source_of(config, name)})")
        except conf.ConfigError as e:
            raise CommandError(str(e)) from None


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)
