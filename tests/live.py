"""The app as users run it: the production server (uvicorn), on the test database."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def default_signals() -> None:
    """preexec_fn for servers the tests stop with SIGINT: a suite started in the background of
    a non-interactive shell ignores SIGINT, and children would inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def database_env() -> dict[str, str]:
    """Point a server process at the database pytest-django created for this run."""
    db = connection.settings_dict
    if db["ENGINE"].endswith("postgresql"):
        auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
        return {
            "DATABASE_URL": f"postgres://{auth}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}"
        }
    return {"TOKENPAK_DB": str(db["NAME"]), "DATABASE_URL": ""}


UVICORN = (
    "import sys, uvicorn; "
    "from tokenpak_site.management.commands.serve import UVICORN; "
    "uvicorn.run('tokenpak_site.asgi:application', host='127.0.0.1', port=int(sys.argv[1]), "
    "**UVICORN)"
)


class LiveServer:
    """The proxy in a process of its own: uvicorn with `serve`'s options, what users run.
    (`runserver`, daphne, has a test of its own.)"""

    def __init__(self, env: dict[str, str], home: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.home = home
        # Beside TOKENPAK_HOME, not in it: some tests prove nothing is written in there.
        self.log_path = home.parent / f"server-{self.port}.out"
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tokenpak_site.settings",
            "TOKENPAK_HOME": str(home),
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> LiveServer:
        out = open(self.log_path, "wb")  # noqa: SIM115 - the child writes it until stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", UVICORN, str(self.port)],
            cwd=ROOT,
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=default_signals,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.output()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server did not listen within 30 s:\n{self.output()}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def listening(port: int) -> bool:
    """True while something accepts connections on 127.0.0.1:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def answers(url: str) -> bool:
    """True once a server at url answers the proxy's model list."""
    import httpx

    try:
        return httpx.get(f"{url}/v1/models").status_code == 200
    except httpx.TransportError:
        return False
