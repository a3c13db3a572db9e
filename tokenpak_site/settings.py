"""Django settings. Every value a user can change is read through tokenpak_site.conf."""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

from budgets import declared
from proxy.compression import recipes
from tokenpak_site import conf, logs

BASE_DIR = Path(__file__).resolve().parent.parent

try:
    TOKENPAK_HOME = conf.home()
    _cfg = conf.Config(os.environ, conf.load_file(TOKENPAK_HOME / "config.yaml"))

    _db_url = _cfg.get("db.url")
    _db_path = _cfg.get("db.path", str(TOKENPAK_HOME / "monitor.db"))
    # /dev/null means "no disk writes": the proxy forwards, the ledger writer drops rows,
    # nothing is created under TOKENPAK_HOME, and the log goes to stdout unless told otherwise.
    TELEMETRY_ENABLED = _db_url != "" or _db_path != os.devnull
    if TELEMETRY_ENABLED:
        conf.ensure_home(TOKENPAK_HOME)
    TOKENPAK_PORT = _cfg.get("server.port")
    # Where serve and runserver listen; beyond loopback they refuse unless REQUIRE_TOKEN.
    TOKENPAK_HOST = _cfg.get("server.host")
    # Every proxy request must then send the local token (telemetry/access.py) in
    # X-TokenPak-Token (proxy/auth.py).
    REQUIRE_TOKEN = _cfg.get("server.require_token")
    _extra_hosts = _cfg.get("server.allowed_hosts")
    _file = conf.load_yaml(TOKENPAK_HOME / "config.yaml")
    # Each provider of the registry (conf.PROVIDERS): its base URL, and its fallbacks, tried in
    # order when it fails before answering (proxy/forward.py).
    PROVIDERS = conf.provider_settings(_cfg, _file, os.environ)
    # The names from before the registry, for scripts that read them; TokenPak reads PROVIDERS.
    OPENAI_BASE_URL = PROVIDERS["openai"].base_url
    ANTHROPIC_BASE_URL = PROVIDERS["anthropic"].base_url
    OPENAI_FALLBACKS = PROVIDERS["openai"].fallbacks
    ANTHROPIC_FALLBACKS = PROVIDERS["anthropic"].fallbacks
    UPSTREAM_CONNECT_TIMEOUT = _cfg.get("providers.connect_timeout")
    UPSTREAM_READ_TIMEOUT = _cfg.get("providers.read_timeout")
    UPSTREAM_TOTAL_TIMEOUT = _cfg.get("providers.total_timeout")
    STORE_PROMPTS = _cfg.get("telemetry.store_prompts")
    STATS_FOOTER = _cfg.get("telemetry.stats_footer")
    BUDGET_WEBHOOK_URL = _cfg.get("budget.webhook_url")
    COMPRESSION_PROFILE = _cfg.get("compression.profile")
    COMPRESSION_RECIPES_DIR = _cfg.get("compression.recipes_dir", str(TOKENPAK_HOME / "recipes"))
    # Shipped and user recipes, checked now: a typo stops the start, naming file and rule.
    COMPRESSION_RECIPES = recipes.load(Path(COMPRESSION_RECIPES_DIR))
    # config.yaml's budget block, checked now; serving processes write it into tp_budgets.
    BUDGETS_DECLARED = declared.parse(_file.get("budget"))
    RETENTION_DAYS = _cfg.get("telemetry.retention_days")
    TIME_ZONE = _cfg.get("time_zone")
    LOG_ENABLED = _cfg.get("log.enabled")
    LOG_DESTINATION = _cfg.get("log.destination", "file" if TELEMETRY_ENABLED else "stdout")
    TOKENPAK_DEBUG = _cfg.get("debug")
    LOG_LEVEL = _cfg.get("log.level", "DEBUG" if TOKENPAK_DEBUG else "INFO")
    # How long the ledger writer gathers rows into one transaction.
    LEDGER_FLUSH_SECONDS = _cfg.get("telemetry.flush_seconds")
    # Without a database there are no sessions to keep across restarts.
    SECRET_KEY = conf.secret_key(TOKENPAK_HOME) if TELEMETRY_ENABLED else secrets.token_urlsafe(50)
    if LOG_ENABLED and LOG_DESTINATION == "file":
        conf.ensure_home(TOKENPAK_HOME)
except (conf.ConfigError, recipes.RecipeError, OSError) as e:
    sys.stderr.write(f"tokenpak: configuration error: {e}\n")
    raise SystemExit(2) from None

if _db_url:
    _default_db = conf.database_from_url(_db_url)
    TOKENPAK_DB_LABEL = _db_url.split("@")[-1]  # never show a password
elif TELEMETRY_ENABLED:
    # The ledger is private: create it 0600 before SQLite does with the umask's mode.
    if not os.path.exists(_db_path) and os.path.isdir(os.path.dirname(_db_path) or "."):
        os.close(os.open(_db_path, os.O_WRONLY | os.O_CREAT, 0o600))
    _default_db = {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": _db_path,
        "OPTIONS": {
            # IMMEDIATE takes the write lock at BEGIN, so two writers wait on busy_timeout
            # instead of failing with "database is locked" on lock upgrade.
            "transaction_mode": "IMMEDIATE",
            "timeout": _cfg.get("db.busy_timeout"),
            # mmap: reports over a big ledger read pages without a read() call each.
            "init_command": (
                "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA mmap_size=1073741824;"
            ),
        },
        "TEST": {"NAME": str(Path(_db_path).with_name("test_" + Path(_db_path).name))},
    }
    TOKENPAK_DB_LABEL = _db_path
else:
    _default_db = {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}
    TOKENPAK_DB_LABEL = os.devnull

DATABASES = {"default": _default_db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

DEBUG = False
# The Host check stays on whatever the address: a web page whose name an attacker points at
# this machine (DNS rebinding) sends its own Host and gets 400. Listening on one specific
# address answers to that address too; other names clients use go in server.allowed_hosts.
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]", "::1"]
if not conf.is_loopback(TOKENPAK_HOST) and TOKENPAK_HOST not in ("0.0.0.0", "::"):
    ALLOWED_HOSTS.append(conf.client_host(TOKENPAK_HOST))
ALLOWED_HOSTS += [h for h in _extra_hosts if h not in ALLOWED_HOSTS]

INSTALLED_APPS = [
    "daphne",  # first, so `manage.py runserver` is the ASGI server
    "tokenpak_site.apps.AdminConfig",  # django.contrib.admin, sign-in guarded
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "tokenpak_site",  # site-wide commands: config, serve, runserver (see its apps.py)
    "proxy",
    "telemetry",
    "budgets",
    # Only for its templates and static files: the API docs page (/api/docs) then loads
    # Swagger UI from this server instead of a CDN.
    "ninja",
    # After ours: its own `export` command must not shadow telemetry's.
    "import_export",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
# CommonMiddleware must never redirect an SDK's POST.
APPEND_SLASH = False

ROOT_URLCONF = "tokenpak_site.urls"
ASGI_APPLICATION = "tokenpak_site.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

# Agents send whole repositories as context; the provider, not Django, decides what is too big.
DATA_UPLOAD_MAX_MEMORY_SIZE = 32 * 1024 * 1024
MAX_BODY_BYTES = DATA_UPLOAD_MAX_MEMORY_SIZE

LANGUAGE_CODE = "en-us"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = TOKENPAK_HOME / "static"

# Where clients on this machine reach the server: the printed endpoints and sign-in link.
URL_HOST = conf.client_host(TOKENPAK_HOST)

# Ledger writer: rows are batched off the request path.
LEDGER_BATCH_SIZE = 500

LOGGING = logs.build(
    enabled=LOG_ENABLED,
    destination=LOG_DESTINATION,
    level=LOG_LEVEL,
    log_file=TOKENPAK_HOME / "tokenpak.log",
)
