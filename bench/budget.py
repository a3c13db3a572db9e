"""What the spend guard costs a request: the same traffic with no budget and with budgets.

    .venv/bin/python bench/budget.py [--requests N] [--database-url postgres://…]

Starts the fake provider (tests/fakeprovider.py) and the production server (uvicorn, as
`serve`) on 127.0.0.1 with a fresh ledger in a temporary TOKENPAK_HOME (SQLite unless
--database-url), then sends the same sequential chat completions three ways: no budget, a
global monthly budget, and a global plus an agent budget. Prints median and p99 latency of each
and what the budgets add; exits non-zero only on errors. The p50s include the server and the
fake provider, so only differences matter.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.overhead import ensure_database  # noqa: E402
from tests.fakeprovider import FakeProvider  # noqa: E402
from tests.live import LiveServer, answers  # noqa: E402

BODY = {"model": "gpt-4o-mini", "max_tokens": 100,
        "messages": [{"role": "user", "content": "Say hello"}]}
HEADERS = {"authorization": "Bearer sk-bench-0000", "x-tokenpak-agent": "coder"}


def manage(env: dict[str, str], *args: str) -> None:
    subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL)


def measure(url: str, n: int) -> list[float]:
    times = []
    with httpx.Client(timeout=30) as client:
        for i in range(n + 50):  # the first 50 warm up
            started = time.perf_counter()
            r = client.post(url + "/v1/chat/completions", json=BODY, headers=HEADERS)
            elapsed = time.perf_counter() - started
            if r.status_code != 200:
                raise SystemExit(f"request failed: HTTP {r.status_code} {r.text[:200]}")
            if i >= 50:
                times.append(elapsed * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()
    if args.database_url:
        ensure_database(args.database_url)
    home = Path(tempfile.mkdtemp(prefix="tp-bench-budget-"))
    env = {**os.environ, "TOKENPAK_HOME": str(home), "DJANGO_SETTINGS_MODULE":
           "tokenpak_site.settings", "DATABASE_URL": args.database_url,
           "TOKENPAK_RETENTION_DAYS": "0"}
    env.pop("TOKENPAK_DB", None)
    manage(env, "migrate", "--verbosity", "0")
    rows = []
    with FakeProvider() as fake:
        server_env = {"TOKENPAK_OPENAI_BASE_URL": fake.url, "TOKENPAK_LOG_ENABLED": "false",
                      "DATABASE_URL": args.database_url}
        setups: list[tuple[str, list[tuple[str, ...]]]] = [
            ("no budget", []),
            ("global monthly budget", [("--monthly", "1000000")]),
            ("global + agent budget", [("--monthly", "1000000"),
                                       ("--daily", "1000000", "--agent", "coder")]),
        ]
        for label, budgets in setups:
            for spec in budgets:
                manage(env, "budget", "set", *spec)
            server = LiveServer(server_env, home).start()
            try:
                deadline = time.monotonic() + 10
                while not answers(server.url) and time.monotonic() < deadline:
                    time.sleep(0.05)
                times = sorted(measure(server.url, args.requests))
            finally:
                server.stop()
            rows.append((label, statistics.median(times), times[int(len(times) * 0.99) - 1]))
    base = rows[0][1]
    db = "PostgreSQL" if args.database_url else "SQLite"
    print(f"{args.requests} sequential chat completions through the production server, {db}")
    print(f"{'':<24} {'p50 ms':>8} {'p99 ms':>8} {'added p50':>10}")
    for label, p50, p99 in rows:
        print(f"{label:<24} {p50:>8.2f} {p99:>8.2f} {p50 - base:>+10.2f}")


if __name__ == "__main__":
    main()
