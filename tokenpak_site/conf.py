"""Typed configuration: environment first, then `$TOKENPAK_HOME/config.yaml`, then defaults.

Every setting has an environment name and a dotted key in config.yaml (e.g. TOKENPAK_PORT and
`server.port`). Bad values stop the process with one clear line instead of limping on.

Over 500 lines because it is the one registry of settings: the KEYS table, the providers' registry
lines and the parsers they name are read together; split, a new setting would land in two places.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import zoneinfo
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml


class ConfigError(ValueError):
    """A setting has a value TokenPak refuses; the message names the setting and the fix."""


@dataclass(frozen=True)
class Key:
    env: str
    path: str  # dotted key inside config.yaml
    help: str
    kind: str = "str"  # str | int | float | bool | choice | url | dburl | zone | host | hosts
    default: Any = ""
    lo: float = 0
    hi: float = 0
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProviderEntry:
    """One line of the provider registry. Strings only, like INSTALLED_APPS: this layer imports
    no app; proxy/providers loads the class."""

    name: str  # the ledger's provider column; config keys providers.NAME.*
    label: str  # how people name it
    base_url: str  # its API, the default of providers.NAME.base_url
    implementation: str  # dotted path of its proxy.providers.base.Provider subclass


# The provider registry: settings (settings.PROVIDERS), these KEYS and the proxy's routes are
# generated from it. A provider is one module under proxy/providers and one line here.
PROVIDERS: tuple[ProviderEntry, ...] = (
    ProviderEntry("openai", "OpenAI", "https://api.openai.com", "proxy.providers.openai.OpenAI"),
    ProviderEntry("anthropic", "Anthropic", "https://api.anthropic.com",
                  "proxy.providers.anthropic.Anthropic"),
)


def _provider_keys() -> list[Key]:
    return [Key(f"TOKENPAK_{p.name.upper()}_BASE_URL", f"providers.{p.name}.base_url",
                f"{p.label} upstream", kind="url", default=p.base_url) for p in PROVIDERS]


_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

# The single list of settings: settings.py, docs/SETTINGS.md (tokenpak_site/settings_doc.py)
# and `config get/set` read it.
KEYS: dict[str, Key] = {
    k.path: k
    for k in [
        Key("TOKENPAK_DB", "db.path", "SQLite file; /dev/null turns telemetry off",
            default="$TOKENPAK_HOME/monitor.db"),
        Key("DATABASE_URL", "db.url", "postgres://user@host:port/name (overrides db.path)",
            kind="dburl"),
        Key("TOKENPAK_DB_BUSY_TIMEOUT", "db.busy_timeout",
            "seconds a SQLite write waits for another writer's lock before it fails",
            kind="float", default=20.0, lo=0.1, hi=600.0),
        Key("TOKENPAK_PORT", "server.port", "port for runserver / make run",
            kind="int", default=8766, lo=1, hi=65535),
        Key("TOKENPAK_HOST", "server.host",
            "address serve / make run / runserver listen on; beyond loopback needs "
            "server.require_token", kind="host", default="127.0.0.1"),
        Key("TOKENPAK_REQUIRE_TOKEN", "server.require_token",
            "every proxy request must send the local token as X-TokenPak-Token",
            kind="bool", default=False),
        Key("TOKENPAK_ALLOWED_HOSTS", "server.allowed_hosts",
            "Host names this server answers to besides the loopback ones (comma-separated)",
            kind="hosts", default=()),
        *_provider_keys(),  # TOKENPAK_OPENAI_BASE_URL, providers.openai.base_url, ...
        Key("TOKENPAK_CONNECT_TIMEOUT", "providers.connect_timeout", "seconds to connect upstream",
            kind="float", default=10.0, lo=0.1, hi=600.0),
        # Reasoning models can think for minutes before the first byte.
        Key("TOKENPAK_READ_TIMEOUT", "providers.read_timeout", "seconds between upstream bytes",
            kind="float", default=600.0, lo=0.1, hi=3600.0),
        Key("TOKENPAK_TOTAL_TIMEOUT", "providers.total_timeout",
            "seconds a request may take in all, stream included; 0: no limit",
            kind="float", default=0.0, lo=0.0, hi=86400.0),
        Key("TOKENPAK_STORE_PROMPTS", "telemetry.store_prompts", "store request/response bodies",
            kind="bool", default=False),
        Key("TOKENPAK_STATS_FOOTER", "telemetry.stats_footer",
            "end each answer with TokenPak's savings line", kind="bool", default=False),
        Key("TOKENPAK_BUDGET_WEBHOOK_URL", "budget.webhook_url",
            "POST a JSON alert here when a budget crosses its alert or its limit", kind="url"),
        Key("TOKENPAK_COMPRESSION_PROFILE", "compression.profile",
            "off | safe | balanced | aggressive (X-TokenPak-Compress overrides per request)",
            kind="choice", default="safe", choices=("off", "safe", "balanced", "aggressive")),
        Key("TOKENPAK_RECIPES_DIR", "compression.recipes_dir",
            "your compression recipes (*.yaml), added to the shipped ones",
            default="$TOKENPAK_HOME/recipes"),
        Key("TOKENPAK_FLUSH_SECONDS", "telemetry.flush_seconds", "ledger batch window",
            kind="float", default=0.05, lo=0.0, hi=60.0),
        Key("TOKENPAK_RETENTION_DAYS", "telemetry.retention_days",
            "days of ledger kept; 0 keeps everything", kind="int", default=90, lo=0, hi=36500),
        Key("TOKENPAK_TIME_ZONE", "time_zone", "zone for today/week/month (IANA name)",
            kind="zone", default="UTC"),
        Key("TOKENPAK_LOG_ENABLED", "log.enabled", "write the log", kind="bool", default=True),
        Key("TOKENPAK_LOG_DESTINATION", "log.destination", "file | stdout | syslog",
            kind="choice", default="file", choices=("file", "stdout", "syslog")),
        Key("TOKENPAK_LOG_LEVEL", "log.level", "DEBUG | INFO | WARNING | ERROR",
            kind="choice", default="INFO", choices=_LEVELS),
        Key("TOKENPAK_DEBUG", "debug", "verbose logging (headers redacted)",
            kind="bool", default=False),
    ]
}

# Config files are shared and backed up; credentials belong in the client's environment only.
_AGENT_NAME = re.compile(r"^budget\.agents\..*(?=\.)")
_SECRET_WORDS = ("api_key", "apikey", "secret", "password", "token", "authorization")


def home() -> Path:
    raw = os.environ.get("TOKENPAK_HOME", "").strip()
    path = Path(raw).expanduser() if raw else Path.home() / ".tokenpak"
    if not path.is_absolute():
        path = path.resolve()
    return path


def ensure_home(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    # mkdir's mode is masked by umask and ignored for an existing folder: set it explicitly.
    os.chmod(path, 0o700)
    return path


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value


def load_yaml(path: Path) -> dict[str, Any]:
    """config.yaml as YAML gave it ({} when there is no file)."""
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        # str(e) spans several lines and quotes the offending line, which may hold a secret:
        # report the position and the problem only, on one line.
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise ConfigError(f"{path}: not valid YAML{where} ({problem})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    return data


def load_file(path: Path) -> dict[str, Any]:
    """config.yaml as a flat {dotted.key: value} dict; env-style names are accepted too."""
    flat: dict[str, Any] = {}
    _flatten("", load_yaml(path), flat)
    by_env = {k.env: k.path for k in KEYS.values()}
    result: dict[str, Any] = {}
    for key, value in flat.items():
        name = by_env.get(key, key)
        # Checked after mapping env-style names: every TOKENPAK_* name contains "token". Agent
        # names under budget.agents are the user's labels, not setting names; a known setting
        # (server.require_token) holds no credential.
        checked = _AGENT_NAME.sub("budget.agents.*", name)
        if name not in KEYS and any(word in checked.lower() for word in _SECRET_WORDS):
            raise ConfigError(
                f"{path}: '{key}' looks like a credential; config.yaml never holds API keys "
                "(clients send their own keys, fallbacks name an environment variable)"
            )
        result[name] = value
    return result


class Config:
    """Reads one setting at a time, typed, with the source named in every error."""

    def __init__(self, environ: dict[str, str] | os._Environ[str], file_values: dict[str, Any]):
        self.environ = environ
        self.file_values = file_values

    def _raw(self, path: str) -> tuple[Any, str] | None:
        key = KEYS[path]
        if key.env in self.environ and self.environ[key.env].strip() != "":
            return self.environ[key.env].strip(), f"environment variable {key.env}"
        if path in self.file_values and self.file_values[path] is not None:
            return self.file_values[path], f"config.yaml key {path}"
        return None

    def get(self, path: str, default: Any = None) -> Any:
        """The setting typed as KEYS declares it; `default` replaces a computed default."""
        key = KEYS[path]
        value = key.default if default is None else default
        if key.kind == "int":
            return self.int(path, value, int(key.lo), int(key.hi))
        if key.kind == "float":
            return self.float(path, value, key.lo, key.hi)
        if key.kind == "bool":
            return self.bool(path, value)
        if key.kind == "choice":
            return self.choice(path, value, key.choices)
        if key.kind == "url":
            return self.url(path, value)
        if key.kind == "dburl":
            return self.url(path, value, schemes=("postgres", "postgresql"))
        if key.kind == "zone":
            return self.zone(path, value)
        if key.kind == "host":
            return self.host(path, value)
        if key.kind == "hosts":
            return self.hosts(path, value)
        return self.str(path, value)

    def host(self, path: str, default: str) -> str:
        raw = self._raw(path)
        if raw is None:
            return default
        value, source = raw
        return check_host(str(value), source)

    def hosts(self, path: str, default: tuple[str, ...]) -> tuple[str, ...]:
        raw = self._raw(path)
        if raw is None:
            return default
        value, source = raw
        # config.yaml may give a YAML list
        items = [str(v) for v in value] if isinstance(value, list) else str(value).split(",")
        return tuple(check_host_name(item.strip(), source) for item in items if item.strip())

    def zone(self, path: str, default: str) -> str:
        raw = self._raw(path)
        if raw is None:
            return default
        value, source = raw
        try:
            zoneinfo.ZoneInfo(str(value))
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ConfigError(
                f"{source}: unknown time zone {value!r} (use an IANA name like Europe/Paris)"
            ) from None
        return str(value)

    def int(self, path: str, default: int, lo: int, hi: int) -> int:
        raw = self._raw(path)
        if raw is None:
            return default
        value, source = raw
        try:
            number = int(str(value), 10)
        except ValueError:
            raise ConfigError(f"{source}: expected a whole number, got {value!r}") from None
        if not lo <= number <= hi:
            raise ConfigError(f"{source}: {number} is outside {lo}..{hi}")
        return number

    def float(self, path: str, default: float, lo: float, hi: float) -> float:
        raw = self._raw(path)
        if raw is None:
            return default
        value, source = raw
        try:
            number = float(str(value))
        except ValueError:
            raise ConfigError(f"{source}: expected a number of seconds, got {value!r}") from None
        if not lo <= number <= hi:
            raise ConfigError(f"{source}: {number} is outside {lo}..{hi}")
        return number

    def bool(self, path: str, default: bool) -> bool:
        raw = self._raw(path)
        if raw is None:
            return default
        value, source = raw
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{source}: expected 1/0, true/false, yes/no or on/off, got {value!r}")

    def choice(self, path: str, default: str, choices: tuple[str, ...]) -> str:
        raw = self._raw(path)
        if raw is None:
            return default
        value, source = raw
        text = str(value).strip()
        for choice in choices:
            if text.lower() == choice.lower():
                return choice
        raise ConfigError(f"{source}: expected one of {', '.join(choices)}, got {value!r}")

    def url(self, path: str, default: str, schemes: tuple[str, ...] = ("http", "https")) -> str:
        raw = self._raw(path)
        if raw is None:
            return default
        value, source = raw
        return check_url(str(value), source, schemes)

    # Last: a method named `str` hides the builtin from the annotations of the methods after it.
    def str(self, path: str, default: str) -> str:
        raw = self._raw(path)
        return default if raw is None else str(raw[0])


@dataclass(frozen=True)
class Fallback:
    """Where to send a request when the provider before it fails."""

    base_url: str
    key: str = ""  # read from the environment variable named in key_env; never from the file
    key_env: str = ""

    @property
    def host(self) -> str:
        parts = urlsplit(self.base_url)
        return parts.netloc


@dataclass(frozen=True)
class ProviderSettings:
    """A provider's registry line with its values for this process (settings.PROVIDERS)."""

    name: str
    label: str
    base_url: str
    fallbacks: tuple[Fallback, ...]  # tried in order when it fails before answering
    implementation: str


def provider_settings(config: Config, file: dict[str, Any], environ: Any,
                      ) -> dict[str, ProviderSettings]:
    """{name: ProviderSettings} in registry order: providers.NAME.base_url, .fallbacks."""
    # Every base URL before any fallback: the first bad value reported is the same as ever.
    urls = {p.name: config.get(f"providers.{p.name}.base_url") for p in PROVIDERS}
    return {p.name: ProviderSettings(p.name, p.label, urls[p.name],
                                     fallbacks(file, p.name, environ), p.implementation)
            for p in PROVIDERS}


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def fallbacks(file: dict[str, Any], provider: str, environ: Any) -> tuple[Fallback, ...]:
    """config.yaml `providers.NAME.fallbacks`: a list of base URLs, or of
    {base_url, api_key_env}. A key itself is refused: the file names the variable."""
    where = f"config.yaml key providers.{provider}.fallbacks"
    section = file.get("providers")
    section = section.get(provider) if isinstance(section, dict) else None
    raw = section.get("fallbacks") if isinstance(section, dict) else None
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: expected a list of base URLs or of "
                          "{base_url, api_key_env} entries")
    out = []
    for i, item in enumerate(raw):
        at = f"{where}[{i}]"
        if isinstance(item, str):
            item = {"base_url": item}
        if not isinstance(item, dict):
            raise ConfigError(f"{at}: expected a base URL or {{base_url, api_key_env}}")
        unknown = sorted(set(map(str, item)) - {"base_url", "api_key_env"})
        if unknown:
            # The value is never repeated: it may be a key someone pasted.
            raise ConfigError(
                f"{at}: unknown key {unknown[0]!r}; a fallback takes base_url and api_key_env "
                "(the name of an environment variable holding its key, never the key)")
        url = check_url(str(item.get("base_url") or ""), f"{at}.base_url")
        env = str(item.get("api_key_env") or "").strip()
        key = ""
        if env:
            if not _ENV_NAME.fullmatch(env):
                raise ConfigError(f"{at}.api_key_env: expected an environment variable name "
                                  "like BACKUP_OPENAI_KEY")
            key = str(environ.get(env, "")).strip()
            if not key:
                raise ConfigError(f"{at}.api_key_env: environment variable {env} is not set "
                                  "(it holds this fallback's API key)")
        out.append(Fallback(url, key, env))
    return tuple(out)


def check_url(text: str, source: str, schemes: tuple[str, ...] = ("http", "https")) -> str:
    text = text.strip()
    parts = urlsplit(text)
    if parts.scheme not in schemes or not parts.hostname:
        raise ConfigError(f"{source}: expected a URL like {schemes[0]}://host[:port], got "
                          f"{text!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ConfigError(f"{source}: bad port in {text!r}") from None
    return text.rstrip("/")


LOOPBACK_NAMES = ("localhost",)


def check_host(text: str, source: str) -> str:
    """An address to listen on: an IP address (brackets around IPv6 allowed) or localhost.

    A name other than localhost is refused: it can resolve to several addresses, and whether
    listening there reaches beyond this machine is then a guess."""
    text = text.strip()
    if text.lower() in LOOPBACK_NAMES:
        return text.lower()
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        raise ConfigError(
            f"{source}: expected an IP address to listen on (127.0.0.1, ::1, 0.0.0.0, ::, a LAN "
            f"address) or localhost, got {text!r}") from None


def is_loopback(host: str) -> bool:
    """True when only this machine can connect to host (as check_host returns it)."""
    if host in LOOPBACK_NAMES:
        return True
    return ipaddress.ip_address(host).is_loopback


_HOST_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def check_host_name(text: str, source: str) -> str:
    """One Host name for ALLOWED_HOSTS: a DNS name, an IP address, or .domain (the domain and
    its subdomains, as Django reads it). '*' and ports are refused: the first would turn off
    the Host check that keeps browser pages out (DNS rebinding), the second never matches."""
    name = text.strip().lower()
    bare = name[1:-1] if name.startswith("[") and name.endswith("]") else name
    try:
        ip = ipaddress.ip_address(bare)
    except ValueError:
        pass
    else:
        return f"[{ip}]" if ip.version == 6 else str(ip)
    labels = name.removeprefix(".").removesuffix(".").split(".")
    if name and name != "*" and all(_HOST_LABEL.fullmatch(label) for label in labels):
        return name
    why = ("'*' would answer any Host and let web pages reach the proxy (DNS rebinding)"
           if "*" in name else "a port is not part of a Host name here" if ":" in name
           else "expected a host name like box.lan, an IP address or .example.lan")
    raise ConfigError(f"{source}: {text!r} is not a host name to answer to: {why}")


def client_host(host: str) -> str:
    """Where clients on this machine reach a server listening on host, for URLs."""
    if host == "localhost":
        return "127.0.0.1"
    ip = ipaddress.ip_address(host)
    if ip.is_unspecified:
        return "127.0.0.1" if ip.version == 4 else "[::1]"
    return f"[{ip}]" if ip.version == 6 else str(ip)


def listen_refusal(host: str, require_token: bool) -> str:
    """Why serving on host is refused ('' when it is not): beyond loopback, only with the
    token required."""
    if require_token or is_loopback(host):
        return ""
    return (
        f"Refusing to listen on {host} without authentication: anyone who can reach this "
        "machine could use the proxy (with your fallback keys, against your budgets, into "
        "your ledger). Set TOKENPAK_REQUIRE_TOKEN=1 (or server.require_token: true in "
        "config.yaml), run `tokenpak token` (or `python manage.py token`) to make the token, "
        "and have clients send it as the X-TokenPak-Token header.")


def database_from_url(url: str) -> dict[str, Any]:
    """DATABASE_URL → Django DATABASES entry. Only PostgreSQL: SQLite is TOKENPAK_DB's job."""
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    if not name:
        raise ConfigError(f"DATABASE_URL: no database name in {url!r}")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": name,
        "USER": parts.username or "",
        "PASSWORD": parts.password or "",
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
        "CONN_MAX_AGE": 0,
        # For TokenPak's sessions only. Reports read a day or a month of rows and join usage
        # and cost by primary key: with the default random_page_cost (4, for spinning disks)
        # PostgreSQL hashes both whole tables instead, and JIT compiling such a query costs
        # more than running it. Measured in bench/dashboard.py: an export's first rows 1.0 s →
        # 0.2 s.
        "OPTIONS": {"options": "-c random_page_cost=1.1 -c jit=off"},
    }


def secret_key(home_dir: Path) -> str:
    """Generated once, kept 0600 beside the ledger, so sessions survive restarts."""
    return kept_secret(home_dir / "secret_key", size=50)


def kept_secret(path: Path, *, size: int = 32, renew: bool = False) -> str:
    """A random secret kept in a 0600 file, made on first use (or made anew with renew)."""
    if path.exists() and not renew:
        return path.read_text().strip()
    key = secrets.token_urlsafe(size)
    if renew:
        # A new file renamed over the old: a reader sees the old secret or the new, never half.
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key)
        os.replace(tmp, path)
        return key
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process won the race: use its secret
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(key)
    return key


def set_in_file(path: Path, key: str, text: str) -> Any:
    """Validate `text` as setting `key`, then write it into config.yaml (comments are lost).

    The value is read as YAML (so `true` and `8766` are a bool and a number) and checked with
    the same typed helper settings.py uses; nothing is written when it is refused.
    """
    if key not in KEYS:
        raise ConfigError(f"unknown setting {key!r}; known: {', '.join(sorted(KEYS))}")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    if KEYS[key].kind in ("host", "hosts"):
        value = text.strip()  # '::' and 'a, b' are addresses, not YAML
    if isinstance(value, (dict, list)):
        raise ConfigError(f"{key}: expected a single value, got {text!r}")
    checked = Config({}, {key: value}).get(key)
    if any(word in str(value).lower() for word in ("sk-", "bearer ")):
        raise ConfigError(f"{key}: that looks like a credential; config.yaml never holds keys")
    data: dict[str, Any] = {}
    if path.exists():
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of settings at the top level")
        data = loaded
    by_env = {k.env: k.path for k in KEYS.values()}
    for env_name in [k for k in data if k in by_env and by_env[k] == key]:
        del data[env_name]  # one spelling per setting
    data.pop(key, None)
    node = data
    *parents, leaf = key.split(".")
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[leaf] = value
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))
    tmp.replace(path)
    return checked


def source_of(config: Config, key: str) -> str:
    raw = config._raw(key)
    return "default" if raw is None else raw[1]
