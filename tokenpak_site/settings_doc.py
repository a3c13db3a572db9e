"""docs/SETTINGS.md, generated from the settings registry (`conf.KEYS`).

    python -m tokenpak_site.settings_doc > docs/SETTINGS.md

The registry says what each key is (name, environment variable, type, default, one-line help);
`NOTES` adds what one line cannot (links, computed defaults, what a value does) and an example
where the one made from the type would read oddly. `tests/test_docs.py` fails when the page
differs from `render()`, so a new setting cannot ship undocumented.

KEYS is read generically (any attribute may be missing, any `kind` may be new): per-provider keys
are produced from the provider registry and appear here without a change to this module.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from tokenpak_site import conf

COMMAND = "python -m tokenpak_site.settings_doc > docs/SETTINGS.md"


@dataclass(frozen=True)
class Note:
    more: str = ""  # markdown, after the registry's help
    example: str = ""  # a value to show; else one is made from the key's type
    default: str = ""  # how to show a default the registry cannot say (computed at start)


NOTES: dict[str, Note] = {
    "db.path": Note(
        "The SQLite ledger (created 0600). `/dev/null`: no disk writes at all — the proxy still "
        "forwards, nothing is created under `$TOKENPAK_HOME`, the log (stdout unless set "
        "otherwise) says telemetry is off. See [the ledger](LEDGER.md).",
        example="/srv/tokenpak/monitor.db"),
    "db.url": Note(
        "Wins over `TOKENPAK_DB`. TokenPak's own sessions run with `random_page_cost=1.1` and "
        "`jit=off` (reports join by primary key; the defaults made PostgreSQL hash whole "
        "tables)."),
    "db.busy_timeout": Note(
        "Another writer is a `prune` or a second process. Past this, the write counts as failed "
        "and its rows go to the spool (see [the ledger](LEDGER.md#when-things-go-wrong))."),
    "server.port": Note("`tokenpak serve --port N` overrides it for one run.", example="9000"),
    "server.host": Note(
        "An IP address or `localhost`. Beyond loopback (`0.0.0.0`, `::`, a LAN address) only "
        "with `server.require_token` (see "
        "[Serving to other machines](SERVING.md#serving-to-other-machines)).",
        example="0.0.0.0"),
    "server.require_token": Note(
        "The token is the one `tokenpak token` prints; without it a proxy request gets 401 in "
        "its provider's error shape (see "
        "[Serving to other machines](SERVING.md#serving-to-other-machines))."),
    "server.allowed_hosts": Note(
        "Besides `127.0.0.1`, `localhost`, `[::1]` (and the listening address when it is one "
        "specific address). Comma-separated, or a list in `config.yaml`; `.lan` takes a domain "
        "and its subdomains; `*` and ports are refused."),
    "providers.read_timeout": Note(
        "Upstream silence this long gets 504 (reasoning models think long)."),
    "providers.total_timeout": Note(
        "Then 504, or an error event ending the stream; no failover after it "
        "(see [Failover](ROUTES.md#failover)).",
        example="900", default="`0` (no limit)"),
    "telemetry.store_prompts": Note(
        "Bodies as the client sent them and as relayed; never keys (see "
        "[Privacy](PRIVACY.md))."),
    "telemetry.stats_footer": Note("See [Stats footer](ROUTES.md#stats-footer)."),
    "budget.webhook_url": Note(
        "See [Budgets](BUDGETS.md#what-the-proxy-does) for the JSON it sends.",
        example="http://127.0.0.1:9000/tokenpak-alerts"),
    "compression.profile": Note("See [Compression](COMPRESSION.md)."),
    "compression.recipes_dir": Note(
        "See [Recipes are data](COMPRESSION.md#recipes-are-data).", example="~/my-recipes"),
    "telemetry.flush_seconds": Note(
        "How long the ledger writer gathers rows into one batch (one transaction).",
        example="0.2"),
    "telemetry.retention_days": Note(
        "See [Retention](LEDGER.md#retention).", example="30"),
    "time_zone": Note("Used for today / this week / this month and `--by-day`."),
    "log.destination": Note(
        "`file` is `$TOKENPAK_HOME/tokenpak.log` (0600).",
        default="`file` (`stdout` when `TOKENPAK_DB=/dev/null`)"),
    "log.level": Note(default="`INFO` (`DEBUG` with `TOKENPAK_DEBUG`)"),
    "debug": Note(
        "Debug logging: also each request's upstream URL and headers (credentials shown as "
        "`***`)."),
}

# Read by the process but not registered in KEYS; shown only while KEYS lacks them.
_OUTSIDE = """\
- `TOKENPAK_HOME` (environment only; default `~/.tokenpak`): everything TokenPak writes,
  created 0700. `config.yaml` is read from it.
"""

_FALLBACKS = """\
- `providers.NAME.fallbacks` (config.yaml only, e.g. `providers.openai.fallbacks`; default none):
  upstreams to try in order when the provider fails before answering. Each entry is a base URL,
  or `{base_url, api_key_env}`; see [Failover](ROUTES.md#failover).
"""

_HEAD = f"""\
<!-- Generated from tokenpak_site/conf.py KEYS by `{COMMAND}`.
     Edit KEYS (or NOTES in tokenpak_site/settings_doc.py), then run that command. -->
# Settings

Read from the environment first, then `$TOKENPAK_HOME/config.yaml` (nested keys, or the
environment names at the top level), then the defaults. A bad value stops the process with one
line naming the setting, e.g. `tokenpak: configuration error: environment variable
TOKENPAK_PORT: expected a whole number, got 'abc'`. A boolean takes `1`/`0`, `true`/`false`,
`yes`/`no` or `on`/`off`; an empty environment variable counts as unset.

`tokenpak config get` lists every setting with its value and where it comes from;
`tokenpak config set KEY VALUE` checks a value with the same rules and writes it into
`config.yaml` (see [Settings from the terminal](REPORTS.md#settings-from-the-terminal)).

```yaml
# ~/.tokenpak/config.yaml
server:
  port: 8766
providers:
  anthropic:
    base_url: https://api.anthropic.com
telemetry:
  store_prompts: false
log:
  destination: file
```

`config.yaml` never holds API keys: a key that looks like a credential (`api_key`, `secret`,
`token`, `password`, …; TokenPak's own settings such as `server.require_token` excepted) is
refused at startup. `SECRET_KEY` (Django's, for admin sessions) is generated once into
`$TOKENPAK_HOME/secret_key` with mode 0600. Budgets have a block of their own in `config.yaml`
(`budget.monthly_usd`, `budget.agents.NAME…`): see [Budgets](BUDGETS.md).
"""


def _attr(key: Any, name: str, fallback: Any = None) -> Any:
    return getattr(key, name, fallback)


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _show(value: Any) -> str:
    """A value as config.yaml and the environment spell it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    return _number(value)


def kind_text(key: Any) -> str:
    kind = _attr(key, "kind", "str") or "str"
    lo, hi = _attr(key, "lo", 0), _attr(key, "hi", 0)
    span = f", {_number(lo)} to {_number(hi)}" if isinstance(hi, (int, float)) and hi > lo else ""
    if kind == "int":
        return f"whole number{span}"
    if kind == "float":
        return f"number{span}"
    if kind == "bool":
        return "boolean"
    if kind == "choice":
        return "one of " + ", ".join(f"`{c}`" for c in _attr(key, "choices", ()) or ())
    return {
        "str": "text",
        "url": "http(s) URL",
        "dburl": "`postgres://` URL",
        "zone": "IANA time zone",
        "host": "IP address or `localhost`",
        "hosts": "host names, comma-separated (a list in config.yaml)",
    }.get(kind, str(kind))


def default_text(key: Any) -> str:
    note = NOTES.get(_attr(key, "path", ""))
    if note is not None and note.default:
        return note.default
    value = _attr(key, "default", "")
    if value in ("", (), [], None):
        return "—"
    return f"`{_show(value)}`"


def example_value(key: Any) -> str:
    note = NOTES.get(_attr(key, "path", ""))
    if note is not None and note.example:
        return note.example
    kind = _attr(key, "kind", "str")
    default = _attr(key, "default", "")
    if kind == "bool":
        return "false" if default else "true"
    if kind == "choice":
        others = [c for c in _attr(key, "choices", ()) or () if c != default]
        return others[0] if others else _show(default)
    if kind in ("int", "float") and isinstance(default, (int, float)):
        lo, hi = _attr(key, "lo", 0), _attr(key, "hi", 0)
        for candidate in (default * 2, default + 1, lo, hi):
            if lo <= candidate <= hi and candidate != default:
                return _number(int(candidate) if kind == "int" else candidate)
        return _number(default)
    made = {
        "url": "http://127.0.0.1:4000",
        "dburl": "postgres://postgres@127.0.0.1:5432/tokenpak",
        "zone": "Europe/Paris",
        "host": "0.0.0.0",
        "hosts": "box.lan,.lan",
    }.get(kind)
    return made if made is not None else _show(default)


def anchor(path: str) -> str:
    """The heading id GitHub gives `### `path``: lower case, punctuation (dots) dropped."""
    return "".join(c for c in path.lower() if c.isalnum() or c in "-_")


def _keys() -> list[Any]:
    return list(conf.KEYS.values())  # the registry's order: related keys stay together


def _row(key: Any) -> str:
    path = _attr(key, "path", "")
    env = _attr(key, "env", "")
    env_cell = f"`{env}`" if env else "—"
    help_text = " ".join(str(_attr(key, "help", "")).split()).replace("|", "\\|")
    return (f"| [`{path}`](#{anchor(path)}) | {env_cell} | {kind_text(key)} | "
            f"{default_text(key)} | {help_text} |")


def _section(key: Any) -> str:
    path = _attr(key, "path", "")
    env = _attr(key, "env", "")
    help_text = " ".join(str(_attr(key, "help", "")).split())
    lines = [f"### `{path}`", "", help_text]
    note = NOTES.get(path)
    if note is not None and note.more:
        lines += ["", note.more]
    lines += [
        "",
        f"- config.yaml key: `{path}`",
        f"- environment variable: `{env}`" if env else "- environment variable: none",
        f"- type: {kind_text(key)}",
        f"- default: {default_text(key)}",
    ]
    value = example_value(key)
    if value:
        shown = f"'{value}'" if any(c in value for c in " :*") else value
        lines.append(f"- example: `tokenpak config set {path} {shown}`"
                     + (f", or `{env}={shown}`" if env else ""))
    return "\n".join(lines)


def render() -> str:
    keys = _keys()
    paths = {str(_attr(k, "path", "")) for k in keys}
    envs = {str(_attr(k, "env", "")) for k in keys}
    parts = [_HEAD]
    parts.append("## Every setting\n\n"
                 "| config.yaml | environment | type | default | what |\n"
                 "|---|---|---|---|---|\n" + "\n".join(_row(k) for k in keys) + "\n")
    outside = "" if "TOKENPAK_HOME" in envs else _OUTSIDE
    if not any(p.endswith(".fallbacks") for p in paths):
        outside += _FALLBACKS
    if outside:
        parts.append("## Read outside the registry\n\n" + outside)
    parts.append("## Each setting\n\n" + "\n\n".join(_section(k) for k in keys) + "\n")
    return "\n".join(parts)


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
