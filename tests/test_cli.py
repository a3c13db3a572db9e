"""The `tokenpak` console script: the same commands, with the seed's spellings."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.conftest import wait_for
from tests.live import ROOT, answers, database_env, default_signals, free_port

TOKENPAK = Path(sys.executable).parent / "tokenpak"


def tokenpak(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(TOKENPAK), *args], capture_output=True, text=True, cwd="/",
                          env={**os.environ, **(env or {})}, timeout=60)


def test_it_is_installed_with_the_project():
    assert TOKENPAK.exists(), "make installs the project (pip install -e .)"


def test_it_runs_report_commands_and_the_seed_aliases(traffic):
    env = {"DJANGO_SETTINGS_MODULE": "tokenpak_site.settings", **database_env()}
    result = tokenpak("cost", "--today", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Today: $") and "| 7 requests |" in result.stdout
    exported = tokenpak("metrics", "export", "--format", "csv", "--out", "-", env=env)
    assert exported.returncode == 0 and len(exported.stdout.splitlines()) == 8
    dry = tokenpak("maintenance", "prune", "--days", "30", "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    bad = tokenpak("cost", "--since", "someday", env=env)
    assert bad.returncode != 0
    assert bad.stderr.strip().splitlines()[-1] == (
        "CommandError: bad date 'someday': use YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS]")


def test_it_serves_like_make_run_on_the_port_and_db_given(tmp_path, fake):
    port = free_port()
    db = tmp_path / "elsewhere.db"
    env = {**os.environ, "TOKENPAK_HOME": str(tmp_path / "home"),
           "DJANGO_SETTINGS_MODULE": "tokenpak_site.settings",
           "TOKENPAK_OPENAI_BASE_URL": fake.url, "DATABASE_URL": ""}
    proc = subprocess.Popen([str(TOKENPAK), "serve", "--port", str(port), "--db", str(db)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                preexec_fn=default_signals)
    try:
        wait_for(lambda: answers(f"http://127.0.0.1:{port}"), timeout=40)
        wait_for(lambda: sqlite3.connect(db).execute(
            "select count(*) from tp_events").fetchone()[0] == 1)
    finally:
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=20)[0].decode()
    assert f"base_url=http://127.0.0.1:{port}/v1" in output
    assert f"Ledger:         {db}" in output
    assert not (tmp_path / "home" / "monitor.db").exists()  # only the ledger it was given
