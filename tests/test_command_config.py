"""`config get` / `config set`: validated edits of $TOKENPAK_HOME/config.yaml."""

from __future__ import annotations

import io

import pytest
import yaml
from django.core.management import call_command
from django.core.management.base import CommandError


@pytest.fixture
def home(tmp_path, settings, monkeypatch):
    settings.TOKENPAK_HOME = tmp_path
    for name in ("TOKENPAK_PORT", "TOKENPAK_STORE_PROMPTS", "TOKENPAK_DB", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("config", *args, stdout=out)
    return out.getvalue()


def test_it_sets_and_gets_values_with_their_types(home):
    assert run("set", "telemetry.store_prompts", "true") == (
        f"config: telemetry.store_prompts = true in {home / 'config.yaml'}\n")
    run("set", "server.port", "9001")
    run("set", "db.path", "/srv/tokenpak/ledger.db")
    data = yaml.safe_load((home / "config.yaml").read_text())
    assert data == {"telemetry": {"store_prompts": True}, "server": {"port": 9001},
                    "db": {"path": "/srv/tokenpak/ledger.db"}}
    assert run("get", "server.port") == "9001\n"
    assert run("get", "telemetry.store_prompts") == "true\n"
    listing = run("get")
    assert "server.port                  9001" in listing
    assert "(config.yaml key server.port)" in listing
    assert "(default)" in listing


def test_it_shows_the_real_ledger_path_by_default(home):
    assert run("get", "db.path") == f"{home / 'monitor.db'}\n"


def test_it_says_when_the_environment_still_wins(home, monkeypatch):
    monkeypatch.setenv("TOKENPAK_PORT", "7000")
    assert "TOKENPAK_PORT is set and still wins" in run("set", "server.port", "9001")
    assert run("get", "server.port") == "7000\n"


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("server.port", "abc", "expected a whole number"),
        ("server.port", "70000", "outside 1..65535"),
        ("log.destination", "nowhere", "expected one of file, stdout, syslog"),
        ("telemetry.store_prompts", "perhaps", "expected 1/0, true/false"),
        ("providers.openai.base_url", "ftp://x", "expected a URL"),
        ("time_zone", "Mars/Olympus", "unknown time zone"),
        ("no.such.key", "1", "unknown setting 'no.such.key'"),
        ("providers.openai.base_url", "https://sk-abc@evil", "looks like a credential"),
    ],
)
def test_it_refuses_bad_values_and_writes_nothing(home, key, value, message):
    run("set", "server.port", "9001")
    before = (home / "config.yaml").read_text()
    with pytest.raises(CommandError, match=message):
        run("set", key, value)
    assert (home / "config.yaml").read_text() == before


def test_it_replaces_an_environment_style_spelling(home):
    (home / "config.yaml").write_text("TOKENPAK_PORT: 9100\n")
    run("set", "server.port", "9200")
    assert yaml.safe_load((home / "config.yaml").read_text()) == {"server": {"port": 9200}}
