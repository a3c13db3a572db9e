"""`token`: the local API token, kept 0600 in TOKENPAK_HOME."""

from __future__ import annotations

import io
import stat
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import override_settings

from telemetry import access


@pytest.fixture
def home(tmp_path: Path):
    with override_settings(TOKENPAK_HOME=tmp_path / "home"):
        yield tmp_path / "home"


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("token", *args, stdout=out)
    return out.getvalue()


def test_it_makes_the_token_on_first_use_and_prints_the_same_one_after(db, home):
    assert not (home / "api_token").exists()
    printed = run().strip()
    assert len(printed) >= 32
    assert (home / "api_token").read_text().strip() == printed
    assert stat.S_IMODE((home / "api_token").stat().st_mode) == 0o600
    assert run().strip() == printed
    assert access.token_matches(printed) and not access.token_matches(printed + "x")


def test_it_rotates_the_token_and_ends_the_old_tokens_sessions(db, home):
    old = run().strip()
    user = access.local_user()
    before = user.password
    new = run("--rotate").strip()
    assert new != old and run().strip() == new
    assert stat.S_IMODE((home / "api_token").stat().st_mode) == 0o600
    assert not access.token_matches(old) and access.token_matches(new)
    # Sessions keep a hash of the password: a new one signs every old session out.
    assert get_user_model().objects.get(pk=user.pk).password != before


def test_it_prints_the_dashboard_sign_in_link(db, home, settings):
    settings.TOKENPAK_PORT = 8766
    value = run().strip()
    assert run("--url") == f"http://127.0.0.1:8766/dashboard/login/?token={value}\n"
    rotated = run("--rotate", "--url").strip()
    assert rotated == f"http://127.0.0.1:8766/dashboard/login/?token={run().strip()}"
    assert not rotated.endswith(value)


def test_it_matches_no_token_before_one_is_made(db, home):
    assert not access.token_matches("")
    assert not access.token_matches("anything")
    assert not (home / "api_token").exists()  # checking does not make one
