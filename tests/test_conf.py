"""tokenpak_site.conf and the settings built from it.

Every bad value must stop the process with one line naming where it came from (environment
variable or config.yaml key), because a proxy that starts on a wrong port or a wrong upstream
fails far from the cause. The end-to-end tests run manage.py in a child process, as users do.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tokenpak_site import conf
from tokenpak_site.conf import Config, ConfigError

ROOT = Path(__file__).resolve().parent.parent


def cfg(env: dict[str, str] | None = None, **file_values: Any) -> Config:
    """A Config over a fake environment; file values are given by dotted key (a__b for a.b)."""
    return Config(env or {}, {k.replace("__", "."): v for k, v in file_values.items()})


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def write_yaml(folder: Path, text: str) -> Path:
    path = folder / "config.yaml"
    path.write_text(text)
    return path


# --- Typed helpers -------------------------------------------------------------------------


def test_it_reads_whole_numbers_from_the_environment_and_the_file() -> None:
    assert cfg({"TOKENPAK_PORT": "8080"}).int("server.port", 1, 1, 65535) == 8080
    assert cfg({"TOKENPAK_PORT": " 8080 "}).int("server.port", 1, 1, 65535) == 8080
    assert cfg(server__port=9999).int("server.port", 1, 1, 65535) == 9999
    assert cfg().int("server.port", 8766, 1, 65535) == 8766


@pytest.mark.parametrize("bad", ["abc", "80.5", "0x50", "", "1e3"])
def test_it_refuses_a_port_that_is_not_a_whole_number(bad: str) -> None:
    if bad == "":
        # An empty variable means "unset", as shells make it easy to export one by accident.
        assert cfg({"TOKENPAK_PORT": bad}).int("server.port", 8766, 1, 65535) == 8766
        return
    with pytest.raises(ConfigError, match="environment variable TOKENPAK_PORT: expected a whole"):
        cfg({"TOKENPAK_PORT": bad}).int("server.port", 8766, 1, 65535)


@pytest.mark.parametrize("bad", ["0", "-1", "65536"])
def test_it_refuses_a_port_out_of_range(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"TOKENPAK_PORT: .* is outside 1\.\.65535"):
        cfg({"TOKENPAK_PORT": bad}).int("server.port", 8766, 1, 65535)


@pytest.mark.parametrize("bad", ["abc", 80.5, True, [1]])
def test_it_names_the_config_yaml_key_for_a_bad_file_value(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"^config\.yaml key server\.port: "):
        cfg(server__port=bad).int("server.port", 8766, 1, 65535)


def test_it_reads_seconds_as_floats_in_range() -> None:
    assert cfg({"TOKENPAK_CONNECT_TIMEOUT": "2.5"}).float(
        "providers.connect_timeout", 10.0, 0.1, 600.0
    ) == 2.5
    assert cfg(providers__read_timeout=30).float("providers.read_timeout", 600.0, 0.1, 3600) == 30


@pytest.mark.parametrize(
    ("bad", "message"),
    [("soon", "expected a number"), ("0", "outside"), ("601", "outside"),
     ("nan", "outside"), ("inf", "outside")],
)
def test_it_refuses_bad_timeouts(bad: str, message: str) -> None:
    # nan compares false with everything: it must not slip through the range check as "valid".
    with pytest.raises(ConfigError, match=f"TOKENPAK_CONNECT_TIMEOUT: .*{message}"):
        cfg({"TOKENPAK_CONNECT_TIMEOUT": bad}).float("providers.connect_timeout", 10, 0.1, 600)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1", True), ("true", True), ("YES", True), ("On", True), (True, True),
     ("0", False), ("false", False), ("no", False), ("OFF", False), (False, False)],
)
def test_it_reads_booleans_in_the_usual_spellings(raw: object, expected: bool) -> None:
    env = {} if isinstance(raw, bool) else {"TOKENPAK_DEBUG": str(raw)}
    file = {"debug": raw} if isinstance(raw, bool) else {}
    assert Config(env, file).bool("debug", not expected) is expected


def test_it_refuses_an_unknown_boolean() -> None:
    with pytest.raises(ConfigError, match="environment variable TOKENPAK_STORE_PROMPTS: expected"):
        cfg({"TOKENPAK_STORE_PROMPTS": "maybe"}).bool("telemetry.store_prompts", False)
    with pytest.raises(ConfigError, match=r"config\.yaml key telemetry\.store_prompts: expected"):
        cfg(telemetry__store_prompts=2).bool("telemetry.store_prompts", False)


def test_it_matches_choices_case_insensitively_and_returns_the_canonical_spelling() -> None:
    choices = ("DEBUG", "INFO", "WARNING", "ERROR")
    assert cfg({"TOKENPAK_LOG_LEVEL": "warning"}).choice("log.level", "INFO", choices) == "WARNING"
    assert cfg(log__destination="STDOUT").choice(
        "log.destination", "file", ("file", "stdout", "syslog")
    ) == "stdout"


def test_it_refuses_an_unknown_choice_and_lists_the_valid_ones() -> None:
    with pytest.raises(
        ConfigError,
        match="environment variable TOKENPAK_LOG_DESTINATION: expected one of file, stdout, "
        "syslog, got 'nowhere'",
    ):
        cfg({"TOKENPAK_LOG_DESTINATION": "nowhere"}).choice(
            "log.destination", "file", ("file", "stdout", "syslog")
        )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("http://127.0.0.1:9000", "http://127.0.0.1:9000"),
     ("https://api.openai.com/", "https://api.openai.com"),
     ("https://gateway.example/v1/", "https://gateway.example/v1"),
     ("http://[::1]:8080", "http://[::1]:8080")],
)
def test_it_accepts_http_urls_without_a_trailing_slash(raw: str, expected: str) -> None:
    # Paths are appended to the base URL, so a trailing slash would make "//v1/...".
    url = cfg({"TOKENPAK_OPENAI_BASE_URL": raw}).url("providers.openai.base_url", "x")
    assert url == expected


@pytest.mark.parametrize(
    ("bad", "message"),
    [("ftp://x", "expected a URL like http://host"), ("api.openai.com", "expected a URL"),
     ("http://", "expected a URL"), ("http://x:99999", "bad port"), ("http://x:abc", "bad port")],
)
def test_it_refuses_bad_urls(bad: str, message: str) -> None:
    source = "environment variable TOKENPAK_OPENAI_BASE_URL"
    with pytest.raises(ConfigError, match=f"{source}: {message}"):
        cfg({"TOKENPAK_OPENAI_BASE_URL": bad}).url("providers.openai.base_url", "x")


def test_it_checks_database_urls_against_their_own_schemes() -> None:
    schemes = ("postgres", "postgresql")
    good = "postgres://u@db:5432/ledger"
    assert cfg({"DATABASE_URL": good}).url("db.url", "", schemes=schemes) == good
    with pytest.raises(ConfigError, match="DATABASE_URL: expected a URL like postgres://"):
        cfg({"DATABASE_URL": "mysql://u@db/ledger"}).url("db.url", "", schemes=schemes)


def test_it_reads_strings_and_falls_back_to_the_default() -> None:
    assert cfg({"TOKENPAK_DB": "/srv/ledger.db"}).str("db.path", "d") == "/srv/ledger.db"
    assert cfg(db__path="/srv/other.db").str("db.path", "d") == "/srv/other.db"
    assert cfg().str("db.path", "d") == "d"
    # "key:" with nothing after it in YAML is None: treated as not set, not as "None".
    assert cfg(db__path=None).str("db.path", "d") == "d"


def test_it_prefers_the_environment_over_config_yaml() -> None:
    c = cfg({"TOKENPAK_PORT": "7000", "TOKENPAK_LOG_LEVEL": ""}, server__port=9999,
            log__level="ERROR")
    assert c.int("server.port", 1, 1, 65535) == 7000
    # A blank variable does not hide the file's value.
    assert c.choice("log.level", "INFO", ("INFO", "ERROR")) == "ERROR"
    # And a bad environment value is reported even though the file's value is good.
    with pytest.raises(ConfigError, match="TOKENPAK_PORT"):
        cfg({"TOKENPAK_PORT": "x"}, server__port=9999).int("server.port", 1, 1, 65535)


@pytest.mark.parametrize(("raw", "expected"), [
    ("127.0.0.1", "127.0.0.1"), (" 0.0.0.0 ", "0.0.0.0"), ("::", "::"), ("[::1]", "::1"),
    ("192.168.1.20", "192.168.1.20"), ("LocalHost", "localhost"), ("fe80:0::1", "fe80::1")])
def test_it_reads_the_listening_address(raw: str, expected: str) -> None:
    assert cfg({"TOKENPAK_HOST": raw}).get("server.host") == expected
    assert cfg().get("server.host") == "127.0.0.1"


@pytest.mark.parametrize("bad", ["myhost.lan", "0.0.0.0:8766", "256.1.1.1", "*", "127.0.0.1,::1",
                                 "http://0.0.0.0", "[::1"])
def test_it_refuses_a_listening_address_that_is_not_one(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"^environment variable TOKENPAK_HOST: expected an IP "
                       r"address to listen on .* or localhost, got "):
        cfg({"TOKENPAK_HOST": bad}).get("server.host")
    with pytest.raises(ConfigError, match=r"^config\.yaml key server\.host: expected an IP"):
        cfg(server__host=bad).get("server.host")


@pytest.mark.parametrize("bad", ["maybe", "2", "enabled"])
def test_it_refuses_a_require_token_that_is_not_a_boolean(bad: str) -> None:
    assert cfg().get("server.require_token") is False
    assert cfg({"TOKENPAK_REQUIRE_TOKEN": "1"}).get("server.require_token") is True
    with pytest.raises(ConfigError, match="environment variable TOKENPAK_REQUIRE_TOKEN: expected "
                       "1/0, true/false"):
        cfg({"TOKENPAK_REQUIRE_TOKEN": bad}).get("server.require_token")
    with pytest.raises(ConfigError, match=r"config\.yaml key server\.require_token: expected"):
        cfg(server__require_token=bad).get("server.require_token")


def test_it_reads_the_extra_host_names() -> None:
    assert cfg().get("server.allowed_hosts") == ()
    assert cfg({"TOKENPAK_ALLOWED_HOSTS": " Box.LAN, .example.lan,,10.0.0.5, fe80::1 ,[::2]"}).get(
        "server.allowed_hosts") == ("box.lan", ".example.lan", "10.0.0.5", "[fe80::1]", "[::2]")
    # config.yaml may give a list
    assert cfg(server__allowed_hosts=["a.lan", "b"]).get("server.allowed_hosts") == ("a.lan", "b")


@pytest.mark.parametrize(("bad", "why"), [
    ("*", "would answer any Host"), ("box.lan,*", "would answer any Host"),
    ("*.example.lan", "would answer any Host"), ("box.lan:8766", "a port is not part"),
    ("http://box.lan", "a port is not part"), ("box lan", "expected a host name"),
    ("-box.lan", "expected a host name"), ("box..lan", "expected a host name"),
    ("box_lan", "expected a host name"), ("x" * 64 + ".lan", "expected a host name")])
def test_it_refuses_extra_host_names_that_are_not_host_names(bad: str, why: str) -> None:
    with pytest.raises(ConfigError, match=f"^environment variable TOKENPAK_ALLOWED_HOSTS: .* is "
                       f"not a host name to answer to: .*{why}"):
        cfg({"TOKENPAK_ALLOWED_HOSTS": bad}).get("server.allowed_hosts")
    with pytest.raises(ConfigError, match=r"^config\.yaml key server\.allowed_hosts: "):
        cfg(server__allowed_hosts=bad.split(",")).get("server.allowed_hosts")


@pytest.mark.parametrize(("host", "token", "refused"), [
    ("127.0.0.1", False, False), ("127.0.0.2", False, False), ("::1", False, False),
    ("localhost", False, False), ("0.0.0.0", False, True), ("::", False, True),
    ("192.168.1.20", False, True), ("0.0.0.0", True, False), ("::", True, False)])
def test_it_refuses_to_listen_beyond_loopback_only_without_the_token(
    host: str, token: bool, refused: bool
) -> None:
    message = conf.listen_refusal(host, token)
    assert bool(message) is refused
    if refused:
        assert message.startswith(f"Refusing to listen on {host} without authentication")


# --- config.yaml ---------------------------------------------------------------------------


def test_it_reads_nested_keys_as_dotted_paths(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path,
        "server:\n  port: 9999\nproviders:\n  openai:\n    base_url: http://127.0.0.1:1\n"
        "log:\n  enabled: false\n",
    )
    assert conf.load_file(path) == {
        "server.port": 9999,
        "providers.openai.base_url": "http://127.0.0.1:1",
        "log.enabled": False,
    }


def test_it_reads_flat_dotted_keys_and_environment_style_names(tmp_path: Path) -> None:
    # The module docstring promises env-style names work in the file too, so users can move
    # a setting between their shell profile and config.yaml unchanged.
    path = write_yaml(
        tmp_path,
        "server.port: 9999\nTOKENPAK_LOG_LEVEL: ERROR\nTOKENPAK_OPENAI_BASE_URL: http://h:1\n"
        "DATABASE_URL: postgres://u@db/x\n",
    )
    values = conf.load_file(path)
    assert values == {
        "server.port": 9999,
        "log.level": "ERROR",
        "providers.openai.base_url": "http://h:1",
        "db.url": "postgres://u@db/x",
    }
    assert Config({}, values).int("server.port", 1, 1, 65535) == 9999


def test_it_treats_a_missing_or_empty_file_as_no_settings(tmp_path: Path) -> None:
    assert conf.load_file(tmp_path / "config.yaml") == {}
    assert conf.load_file(write_yaml(tmp_path, "# nothing yet\n")) == {}


@pytest.mark.parametrize(
    "text",
    ["openai_api_key: sk-abcdef123456\n",
     "providers:\n  openai:\n    api_key: sk-abcdef123456\n",
     "providers:\n  anthropic:\n    apiKey: x\n",
     "client_secret: x\n",
     "db:\n  password: x\n",
     "github_token: x\n",
     "Authorization: Bearer x\n",
     "TOKENPAK_API_KEY: x\n"],
)
def test_it_refuses_a_config_yaml_holding_a_credential(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="looks like a credential") as exc:
        conf.load_file(write_yaml(tmp_path, text))
    # The error is printed and logged: it must name the key but never echo the secret.
    assert "sk-abcdef" not in str(exc.value)


@pytest.mark.parametrize(
    "text",
    ["server: [port\n", "a: b: c\n", "\tport: 1\n", 'note: "sk-proj-abcdef123456\n',
     "x: sk-proj-abcdef123456: y\n"],
)
def test_it_refuses_invalid_yaml_in_one_line_without_quoting_the_file(
    tmp_path: Path, text: str
) -> None:
    with pytest.raises(ConfigError, match=r"config\.yaml: not valid YAML at line \d+") as exc:
        conf.load_file(write_yaml(tmp_path, text))
    # settings prints this as the one error line; PyYAML's own message spans several lines
    # and quotes the broken line, which could be a pasted key.
    assert "\n" not in str(exc.value)
    assert "sk-proj" not in str(exc.value)


@pytest.mark.parametrize("text", ["- server.port\n- 9999\n", "just a string\n", "42\n"])
def test_it_refuses_a_config_yaml_that_is_not_a_mapping(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="expected a mapping of settings"):
        conf.load_file(write_yaml(tmp_path, text))


# --- Home folder, secret key, DATABASE_URL --------------------------------------------------


def test_it_creates_the_home_folder_private(tmp_path: Path) -> None:
    home = tmp_path / "a" / "b" / "tokenpak"
    assert conf.ensure_home(home) == home
    assert home.is_dir()
    assert mode(home) == 0o700


def test_it_makes_an_existing_home_folder_private(tmp_path: Path) -> None:
    home = tmp_path / "tokenpak"
    home.mkdir(mode=0o755)
    os.chmod(home, 0o755)
    conf.ensure_home(home)
    assert mode(home) == 0o700


def test_it_reads_the_home_folder_from_tokenpak_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOKENPAK_HOME", str(tmp_path / "h"))
    assert conf.home() == tmp_path / "h"
    monkeypatch.setenv("TOKENPAK_HOME", "  ")
    assert conf.home() == Path.home() / ".tokenpak"
    # A relative value is pinned to an absolute path now, not re-read from each new cwd.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TOKENPAK_HOME", "rel")
    assert conf.home() == (tmp_path / "rel").resolve()


def test_it_creates_the_secret_key_once_and_private(tmp_path: Path) -> None:
    key = conf.secret_key(tmp_path)
    path = tmp_path / "secret_key"

    assert len(key) >= 50
    assert path.read_text() == key
    assert mode(path) == 0o600
    # Restarts reuse it: sessions and signed values survive.
    assert conf.secret_key(tmp_path) == key
    assert conf.secret_key(tmp_path) == key
    # A fresh home gets a different key.
    other = tmp_path / "other"
    other.mkdir()
    assert conf.secret_key(other) != key


def test_it_parses_a_postgres_database_url() -> None:
    assert conf.database_from_url("postgres://tp:s3cret@db.internal:5433/ledger") == {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "ledger",
        "USER": "tp",
        "PASSWORD": "s3cret",
        "HOST": "db.internal",
        "PORT": "5433",
        "CONN_MAX_AGE": 0,
        "OPTIONS": {"options": "-c random_page_cost=1.1 -c jit=off"},
    }
    minimal = conf.database_from_url("postgresql://localhost/tokenpak")
    assert (minimal["NAME"], minimal["USER"], minimal["PASSWORD"], minimal["PORT"]) == (
        "tokenpak", "", "", ""
    )


def test_it_tunes_its_postgresql_sessions_for_reports(db) -> None:
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL only (DATABASE_URL)")
    with connection.cursor() as cursor:
        cursor.execute("SHOW random_page_cost")
        assert cursor.fetchone()[0] == "1.1"
        cursor.execute("SHOW jit")
        assert cursor.fetchone()[0] == "off"


@pytest.mark.parametrize("url", ["postgres://u@db:5432/", "postgres://u@db:5432"])
def test_it_refuses_a_database_url_without_a_database_name(url: str) -> None:
    with pytest.raises(ConfigError, match="DATABASE_URL: no database name"):
        conf.database_from_url(url)


# --- End to end: settings in a child process ------------------------------------------------


def child_env(home: Path, **extra: str) -> dict[str, str]:
    """The user's environment minus anything TokenPak reads, so only the test's values count."""
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith("TOKENPAK_") and k not in ("DATABASE_URL", "DJANGO_SETTINGS_MODULE")
    }
    env.update(TOKENPAK_HOME=str(home), DJANGO_SETTINGS_MODULE="tokenpak_site.settings", **extra)
    return env


def run(args: list[str], home: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=child_env(home, **extra), capture_output=True,
        text=True, timeout=120, umask=0o022,
    )


def assert_config_error(proc: subprocess.CompletedProcess[str], *names: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    # One line, no traceback: the user sees the cause, not Django's import machinery.
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("tokenpak: configuration error: ")
    for name in names:
        assert name in lines[0]


@pytest.mark.live
@pytest.mark.parametrize(
    ("name", "value"),
    [("TOKENPAK_PORT", "abc"), ("TOKENPAK_OPENAI_BASE_URL", "ftp://x"),
     ("TOKENPAK_LOG_DESTINATION", "nowhere"), ("TOKENPAK_READ_TIMEOUT", "-1"),
     ("DATABASE_URL", "mysql://u@h/x"), ("TOKENPAK_HOST", "my.box"),
     ("TOKENPAK_REQUIRE_TOKEN", "maybe"), ("TOKENPAK_ALLOWED_HOSTS", "*")],
)
def test_it_stops_manage_py_with_one_line_naming_a_bad_variable(
    tmp_path: Path, name: str, value: str
) -> None:
    proc = run(["manage.py", "check"], tmp_path / "home", **{name: value})
    assert_config_error(proc, f"environment variable {name}", value)


@pytest.mark.live
def test_it_stops_manage_py_when_config_yaml_holds_an_api_key(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    write_yaml(home, "openai_api_key: sk-proj-abcdefghijklmnop\n")

    proc = run(["manage.py", "check"], home)

    assert_config_error(proc, "config.yaml", "'openai_api_key' looks like a credential")
    assert "sk-proj" not in proc.stderr + proc.stdout


@pytest.mark.live
def test_it_stops_manage_py_on_a_bad_config_yaml_value(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    write_yaml(home, "server:\n  port: 70000\n")
    assert_config_error(run(["manage.py", "check"], home), "config.yaml key server.port")


@pytest.mark.live
def test_it_stops_manage_py_on_invalid_yaml(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    write_yaml(home, "server: [port\n")
    assert_config_error(run(["manage.py", "check"], home), "not valid YAML")


@pytest.mark.live
def test_it_passes_manage_py_check_with_good_settings(tmp_path: Path) -> None:
    proc = run(["manage.py", "check"], tmp_path / "home")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.live
def test_it_takes_server_require_token_in_config_yaml_though_its_name_says_token(
    tmp_path: Path,
) -> None:
    # Names with "token" in them are refused as credentials, but not TokenPak's own settings.
    home = tmp_path / "home"
    home.mkdir()
    write_yaml(home, "server:\n  require_token: true\n  host: 0.0.0.0\n"
               "  allowed_hosts: [box.lan, 192.168.1.20]\nTOKENPAK_REQUIRE_TOKEN: true\n")
    proc = run(["-c", "import django; django.setup(); from django.conf import settings as s; "
                "print(s.REQUIRE_TOKEN, s.TOKENPAK_HOST, s.ALLOWED_HOSTS[4:], s.URL_HOST)"], home)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True 0.0.0.0 ['box.lan', '192.168.1.20'] 127.0.0.1"
    write_yaml(home, "server:\n  api_token: abc\n")
    assert_config_error(run(["manage.py", "check"], home), "looks like a credential")


@pytest.mark.live
def test_it_answers_to_a_specific_listening_address_as_a_host(tmp_path: Path) -> None:
    proc = run(["-c", "import django; django.setup(); from django.conf import settings as s; "
                "print(s.ALLOWED_HOSTS, s.URL_HOST)"], tmp_path / "home",
               TOKENPAK_HOST="fe80::1", TOKENPAK_ALLOWED_HOSTS="box.lan")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (
        "['127.0.0.1', 'localhost', '[::1]', '::1', '[fe80::1]', 'box.lan'] [fe80::1]")


PRINT_SETTINGS = (
    "import django; django.setup(); from django.conf import settings as s; "
    "print(s.TOKENPAK_PORT, s.LOG_LEVEL, s.OPENAI_BASE_URL)"
)


@pytest.mark.live
def test_it_applies_a_good_config_yaml(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    write_yaml(
        home,
        "server:\n  port: 9999\nlog:\n  level: warning\n"
        "providers:\n  openai:\n    base_url: http://127.0.0.1:1234/\n",
    )

    proc = run(["-c", PRINT_SETTINGS], home)

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["9999", "WARNING", "http://127.0.0.1:1234"]


@pytest.mark.live
def test_it_lets_the_environment_override_config_yaml_in_settings(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    write_yaml(home, "server:\n  port: 9999\n")

    proc = run(["-c", PRINT_SETTINGS], home, TOKENPAK_PORT="7001")

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == "7001"


@pytest.mark.live
def test_it_accepts_environment_style_names_in_config_yaml_in_settings(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    write_yaml(home, "TOKENPAK_PORT: 9998\n")

    proc = run(["-c", PRINT_SETTINGS], home)

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == "9998"


@pytest.mark.live
def test_it_creates_a_private_home_and_secret_key_from_settings(tmp_path: Path) -> None:
    home = tmp_path / "new" / "home"

    proc = run(["manage.py", "check"], home)

    assert proc.returncode == 0, proc.stderr
    assert mode(home) == 0o700
    assert mode(home / "secret_key") == 0o600


@pytest.mark.live
def test_it_creates_the_sqlite_ledger_private_and_in_wal_mode(tmp_path: Path) -> None:
    home = tmp_path / "home"

    proc = run(["manage.py", "migrate", "-v0"], home)

    assert proc.returncode == 0, proc.stderr
    db = home / "monitor.db"
    # The ledger can hold prompts and costs: no other local user may read it.
    assert mode(db) == 0o600
    # SQLite gives -wal/-shm the main file's mode; check any that outlived the process.
    for side in home.glob("monitor.db-*"):
        assert mode(side) == 0o600, side
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        # migrate really ran against this file.
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "django_migrations" in tables
