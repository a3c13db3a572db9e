"""`manage.py runserver` with no address serves the proxy on 127.0.0.1:$TOKENPAK_PORT."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from tests.conftest import wait_for
from tests.live import ROOT, answers, database_env, default_signals, free_port


def test_it_serves_on_the_configured_port_by_default(transactional_db, fake, rows, tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tokenpak_site.settings",
        "TOKENPAK_HOME": str(tmp_path),
        "TOKENPAK_PORT": str(port),
        "TOKENPAK_OPENAI_BASE_URL": fake.url,
        **database_env(),
    }
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", "--noreload"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        preexec_fn=default_signals,
    )
    try:
        wait_for(lambda: answers(f"http://127.0.0.1:{port}"), timeout=30)
        [event] = rows(1)
        assert event.event_type == "models"
    finally:
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=15)[0].decode()
    assert f"http://127.0.0.1:{port}/" in output
